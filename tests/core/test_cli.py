"""The command line as a user meets it: real processes, one-line errors, exit codes, nothing written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from tests.clirun import ROOT, started, tidings


def _count(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM events").fetchone()[0]


def deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["publish", "a.b", "--body", "{not json"], 4, "malformed JSON"),
        (["publish", "a.b", "--body", "[1, 2]"], 4, "must be a JSON object, not an array"),
        (["publish", "a.b", "--body", "null"], 4, "must be a JSON object, not null"),
        (
            ["publish", "a.b", "--body", '{"message": 3}', "--type", "tidings.demo.v1"],
            4,
            "tidings.demo.v1: message: 3 is not of type",
        ),
        (["publish", "a.b", "--body", "{}", "--type", "no.such.v1"], 4, "unknown event type 'no.such.v1'"),
        (["publish", "a.b", "--body", "@-"], 4, "the limit is 1048576"),
        (["publish", "a.b", "--body", deep(65)], 4, "nests 65 levels deep; the limit is 64"),
        (["publish", "a..b", "--body", "{}"], 4, "invalid topic"),
        (["publish", "a.*", "--body", "{}"], 4, "invalid topic"),
        (["publish", "a.b", "--body", "@missing.json"], 4, "cannot read body file"),
        (["publish", "a.b", "--body", "{}", "-H", "novalue"], 4, "is not KEY=VALUE"),
        (["publish", "a.b", "--body", "{}", "-H", "k=v", "-H", "k=w"], 4, "header 'k' is given twice"),
        (
            ["--config", "nope.toml", "publish", "a.b", "--body", "{}"],
            3,
            "config file 'nope.toml' (--config) does not exist",
        ),
        (["tail", "a.#b"], 4, "invalid pattern"),
        (["tail", "--last", "-1"], 2, "invalid value for '--last'"),
        (["backlog", "list", "--dead"], 2, "--dead lists one connector's dead letters: name the CONNECTOR"),
        (["consume", "--callback", "os:getcwd", "--bind", "a..b"], 4, "invalid pattern"),
        (["consume", "no_such_module:app"], 3, "cannot import 'no_such_module'"),
        (["consume", "a:b:c"], 3, "'a:b:c' is not MODULE:ATTRIBUTE"),
        (["consume", "triage"], 3, "'triage' is neither MODULE:APP nor a [consumers.triage] of the config"),
        (["consume", "json:dumps"], 3, "a function goes with --callback json:dumps --bind PATTERN"),
        (["backlog", "retry", "nobody"], 3, "no connector named 'nobody'"),
        (["consume", "--callback", "json:dumps", "--bind", "a", "--transport", "no"], 3, "no transport"),
        (["backlog", "retry", "local", "--seq", "999"], 4, "connector local has no dead letter with seq 999"),
        (["backlog", "drop", "local", "--seq", "1", "--backlog"], 4, "has no backlog entry with seq 1"),
        (["schemas", "show", "no.such.v1"], 4, "unknown event type"),
    ],
)
def test_bad_input_is_one_line_with_an_exit_code_and_writes_nothing(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    oversize = b'{"x": "' + b"y" * (1024 * 1024) + b'"}'
    result = tidings(tmp_path, *args, stdin=oversize)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tidings: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert _count_if_any(tmp_path) == 0


def test_a_module_that_exits_while_it_is_imported_is_named(tmp_path: Path) -> None:
    (tmp_path / "leaving.py").write_text("import sys\nsys.exit(3)\n")
    done = tidings(tmp_path, "consume", "leaving:app")
    said = "tidings: error: cannot import 'leaving': it called sys.exit(3)"
    assert (done.returncode, done.stderr.strip()) == (3, said)


def _count_if_any(cwd: Path) -> int:
    path = cwd / ".tidings" / "outbox.db"
    return _count(path) if path.exists() else 0


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text('[bus]\nsource = "x"\nsorce = "typo"\n')
    result = tidings(tmp_path, "publish", "a.b", "--body", "{}")
    assert result.returncode == 3
    assert result.stderr.strip() == (
        "tidings: error: tidings.toml: unknown key 'sorce' in [bus] (known: source, home, "
        "max_body_bytes, max_depth, require_schema, log_level, inbox_retention)"
    )


def test_config_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text('[connectors.x]\ntransport = "nowhere"\n')
    result = tidings(tmp_path, "backlog", "list", env={"TIDINGS_CONFIG": str(tmp_path / "other.toml")})
    assert result.returncode == 3
    assert "names transport 'nowhere'" in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert tidings(tmp_path, "publish", "a.b").returncode == 2
    assert tidings(tmp_path, "no-such-command").returncode == 2


def test_publish_dispatch_and_consume_with_a_callback(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(
        "import json, pathlib\n"
        "def handle(event):\n"
        "    with open('seen.jsonl', 'a') as f:\n"
        "        f.write(json.dumps({'topic': event.topic, 'body': event.body}) + '\\n')\n"
    )
    body = tmp_path / "body.json"
    body.write_text('{"message": "from a file"}')
    consumer = started(
        tmp_path,
        *("consume", "--callback", "handler:handle", "--bind", "demo.#", "--queue", "demo-q"),
        *("--concurrency", "1"),
    )
    try:
        _wait_for_queue(tmp_path, "demo-q")
        first = tidings(
            tmp_path, "publish", "demo.hello", "--body", '{"message": "hi"}', "--type", "tidings.demo.v1"
        )
        assert first.returncode == 0, first.stderr
        event_id = first.stdout.strip()
        assert len(event_id) == 36
        assert tidings(tmp_path, "publish", "demo.file", "--body", f"@{body}").returncode == 0
        assert tidings(tmp_path, "publish", "demo.stdin", "--body", "@-", stdin=b'{"n": 1}').returncode == 0
        assert tidings(tmp_path, "publish", "other.topic", "--body", "{}").returncode == 0
        dispatched = tidings(tmp_path, "dispatch", "--once")
        assert dispatched.returncode == 0
        assert "local: delivered 3, to backlog 1" in dispatched.stdout  # other.topic: no queue bound
        seen = tmp_path / "seen.jsonl"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not seen.exists() or len(seen.read_text().splitlines()) < 3):
            time.sleep(0.05)
        got = [orjson.loads(line) for line in seen.read_text().splitlines()]
        assert got == [
            {"topic": "demo.hello", "body": {"message": "hi"}},
            {"topic": "demo.file", "body": {"message": "from a file"}},
            {"topic": "demo.stdin", "body": {"n": 1}},
        ]
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(20) == 0, consumer.stderr.read().decode()  # type: ignore[union-attr]
    backlog = tidings(tmp_path, "backlog", "list", "local")
    assert "other.topic" in backlog.stdout and "unroutable" in backlog.stdout


def _wait_for_queue(cwd: Path, queue: str) -> None:
    import sqlite3

    broker = cwd / ".tidings" / "broker.db"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if broker.exists():
            try:
                with sqlite3.connect(broker) as db:
                    if db.execute("SELECT 1 FROM queues WHERE name = ?", (queue,)).fetchone():
                        return
            except sqlite3.OperationalError:
                pass  # the consumer is still creating the tables
        time.sleep(0.05)
    raise AssertionError(f"queue {queue} was never declared")


def test_schemas_commands(tmp_path: Path) -> None:
    listing = tidings(tmp_path, "schemas", "list")
    assert listing.returncode == 0 and "tidings.demo.v1" in listing.stdout
    good = tmp_path / "good.jsonl"
    good.write_text('{"message": "a"}\n{"message": "b"}\n')
    assert (
        "2 document(s) valid" in tidings(tmp_path, "schemas", "validate", "tidings.demo.v1", str(good)).stdout
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"message": "a"}\n{"nothing": 1}\n')
    result = tidings(tmp_path, "schemas", "validate", "tidings.demo.v1", str(bad))
    assert result.returncode == 4
    assert "(document 2)" in result.stderr and "message" in result.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"message": "a"}\n\n{"message": \n')
    result = tidings(tmp_path, "schemas", "validate", "tidings.demo.v1", str(broken))
    assert result.returncode == 4 and "line 3: malformed JSON" in result.stderr, result.stderr


def test_doctor_reports_the_embedded_default_healthy(tmp_path: Path) -> None:
    result = tidings(tmp_path, "doctor")
    assert result.returncode == 0, result.stderr
    assert "transport local (embedded): ok" in result.stdout


def test_demo_runs_and_loses_nothing(tmp_path: Path) -> None:
    result = tidings(tmp_path, "demo", "--duration", "2", "--rate", "50")
    assert result.returncode == 0, result.stderr
    assert "lost 0" in result.stdout
    assert "datawarehouse.checkout.new" in result.stdout


def test_serve_runs_the_dispatcher_and_configured_consumers(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(
        "from tidings import App\n"
        "app = App('svc')\n"
        "@app.subscribe('job.#')\n"
        "def done(event):\n"
        "    open('done.txt', 'a').write(event.topic + '\\n')\n"
        "def plain(event):\n"
        "    open('plain.txt', 'a').write(event.topic + '\\n')\n"
    )
    (tmp_path / "tidings.toml").write_text(
        '[consumers.svc]\napp = "svc:app"\n\n'
        '[consumers.plain]\napp = "svc:plain"\nbindings = ["job.finished"]\n'
    )
    server = started(tmp_path, "serve")
    try:
        _wait_for_queue(tmp_path, "plain")
        for topic in ("job.started", "job.finished"):
            assert tidings(tmp_path, "publish", topic, "--body", "{}").returncode == 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (tmp_path / "plain.txt").exists():
            time.sleep(0.05)
        while time.monotonic() < deadline and len((tmp_path / "done.txt").read_text().split()) < 2:
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.stderr.read().decode()  # type: ignore[union-attr]
    assert (tmp_path / "done.txt").read_text().split() == ["job.started", "job.finished"]
    assert (tmp_path / "plain.txt").read_text().split() == ["job.finished"]


def test_tail_shows_published_events(tmp_path: Path) -> None:
    for n in range(3):
        assert tidings(tmp_path, "publish", f"tail.t{n}", "--body", f'{{"n": {n}}}').returncode == 0
        for other in range(3):  # --last counts what matches, not what came last
            assert tidings(tmp_path, "publish", f"other.o{n}{other}", "--body", "{}").returncode == 0
    follower = started(tmp_path, "tail", "tail.#", "--json", "--last", "2")
    try:
        lines = [follower.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        assert tidings(tmp_path, "publish", "tail.live", "--body", "{}").returncode == 0
        lines.append(follower.stdout.readline())  # type: ignore[union-attr]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    assert [orjson.loads(line)["topic"] for line in lines] == ["tail.t1", "tail.t2", "tail.live"]


def test_what_users_named_prints_as_it_is_never_as_styles(tmp_path: Path) -> None:
    """'[/]' may be in a topic, a connector's name, a config's path: printed with rich's markup,
    one event broke every later ``tail`` (and a command failed after it had done its work)."""
    for topic in ("a.[/].x", "a.[bold].x"):
        assert tidings(tmp_path, "publish", topic, "--body", "{}").returncode == 0
    follower = started(tmp_path, "tail", "--last", "2")
    try:
        lines = [follower.stdout.readline().decode() for _ in range(2)]  # type: ignore[union-attr]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    assert "a.[/].x" in lines[0] and "a.[bold].x" in lines[1], lines
    (tmp_path / "[red]x.toml").write_text('[connectors."c[/]"]\ntransport = "local"\n')
    done = tidings(tmp_path, "-c", "[red]x.toml", "config", "check")
    assert done.returncode == 0 and "source: [red]x.toml" in done.stderr, done.stdout + done.stderr
    done = tidings(tmp_path, "-c", "[red]x.toml", "backlog", "list")
    assert done.returncode == 0 and "c[/]" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_tail_stops_on_a_signal_even_started_with_ctrl_c_ignored(tmp_path: Path, sig: int, code: int) -> None:
    # a non-interactive shell starts background jobs with SIGINT ignored; Python then has no Ctrl-C
    assert tidings(tmp_path, "publish", "tail.one", "--body", "{}").returncode == 0
    follower = started(
        tmp_path, "tail", "--json", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    try:
        assert b"tail.one" in follower.stdout.readline()  # type: ignore[union-attr]
        follower.send_signal(sig)
        assert follower.wait(10) == code
    finally:
        follower.kill()


def test_replay_from_a_file_and_from_the_outbox(tmp_path: Path) -> None:
    from tidings import Bus, Event
    from tidings.config import default_config

    old = Event.create("old.one", {"n": 0}, time=datetime.now(UTC) - timedelta(days=30))
    recent = [Event.create(f"keep.e{n}", {"n": n}) for n in range(3)]
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(b"\n".join(e.to_json() for e in [old, *recent]) + b"\n")
    result = tidings(tmp_path, "replay", "--from", str(dump), "--days", "14", "--topic", "keep.#")
    assert result.returncode == 0, result.stderr
    assert "published 3 event(s) from 3 in the window" in result.stdout
    again = tidings(tmp_path, "replay", "--topic", "keep.#", "--dry-run")  # the outbox's own history
    assert "would publish 3 event(s)" in again.stdout
    dead_letter = {"team": "a", "x-tidings-attempts": 4, "x-tidings-reason": "boom"}
    dead = Event.create("keep.dead", {"n": 9}, headers=dead_letter)
    (tmp_path / "dead.jsonl").write_bytes(dead.to_json() + b"\n")
    assert tidings(tmp_path, "replay", "--from", "dead.jsonl").returncode == 0
    bus = Bus(default_config(tmp_path))
    (again,) = [event for event in bus.outbox.history() if event.topic == "keep.dead"]
    bus.close()
    assert again.headers == {"team": "a"}  # a transport's count would count against the new event
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    bad = tidings(tmp_path, "replay", "--from", "bad.jsonl")
    assert bad.returncode == 4
    assert "bad.jsonl line 1" in bad.stderr


@pytest.mark.parametrize("command", [["replay", "--from"], ["reactor", "--dry-run"]])
def test_a_line_far_past_the_body_limit_is_refused_unread(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[bus]\nmax_body_bytes = 1000\n\n[reactor.rules.r]\ncommand = ["true"]\n'
    )
    # 1,000 bytes of body at most: 2 x 1,000 + 64 KiB of envelope is the longest line worth reading
    (tmp_path / "huge.jsonl").write_bytes(b'{"id": "' + b"x" * 200_000 + b'"}\n')
    done = tidings(tmp_path, *command, "huge.jsonl")
    assert done.returncode == 4, done.stderr
    assert done.stderr.strip().splitlines() == [
        "tidings: error: huge.jsonl line 1 is longer than 67536 bytes "
        "(twice [bus] max_body_bytes and the envelope)"
    ]


def test_replay_says_when_the_window_is_longer_than_the_outbox_keeps(tmp_path: Path) -> None:
    done = tidings(tmp_path, "replay", "--days", "14", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "keeps finished events for 7 days ([outbox] retention)" in done.stderr
    # not of the default window: every replay on the default config said it
    assert "warning" not in tidings(tmp_path, "replay", "--dry-run").stderr
    (tmp_path / "tidings.toml").write_text("[outbox]\nretention = 1296000\n")  # as docs/systems/cki.md says
    done = tidings(tmp_path, "replay", "--days", "14", "--dry-run")
    assert done.returncode == 0 and "warning" not in done.stderr


@pytest.mark.parametrize("number", ["123456789012345678901234567890", str(2**64), str(-(2**100))])
def test_publish_keeps_wide_integers_exactly(tmp_path: Path, number: str) -> None:
    done = tidings(tmp_path, "publish", "a.b", "--body", f'{{"f": {number}}}')
    assert done.returncode == 0, done.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / ".tidings" / "outbox.db") as db:
        (data,) = db.execute("SELECT data FROM events").fetchone()
    assert f'"f":{number}'.encode() in data


def test_publish_refuses_a_number_no_json_reader_takes(tmp_path: Path) -> None:
    done = tidings(tmp_path, "publish", "a.b", "--body", '{"f": ' + "9" * 5000 + "}")
    assert done.returncode == 4
    assert done.stderr.startswith("tidings: error: malformed JSON") and "4,300 digits" in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["publish", "a.b", "--body", "@/dev/zero"], 4, "body file '/dev/zero' is larger than"),
        (["publish", "a.b", "--body", "@"], 4, "--body @ needs a file name"),
        (["schemas", "validate", "base.message", "/dev/zero"], 4, "file '/dev/zero' is larger than"),
        (["schemas", "validate", "nope.v1", "/dev/null"], 4, "'/dev/null' holds no JSON document to check"),
        (["import-reactobus", "/dev/urandom"], 3, "'/dev/urandom' is larger than"),
        (["demo", "--rate", "nan", "--duration", "1"], 2, "nan is not a number above 0"),
        (["demo", "--rate", "0"], 2, "is not a number above 0"),
        (["replay", "--days", "nan", "--dry-run"], 2, "nan is not a number of days"),
        (["replay", "--days", "inf", "--dry-run"], 2, "inf is not a number of days"),
        (["dispatch", "--once", "--log-level", "LOUD"], 2, "DEBUG, INFO, WARNING or ERROR, not 'LOUD'"),
        (["backlog", "retry", "local", "--seq", "9" * 23], 2, "less than or equal to 9223372036854775807"),
        (["backlog", "list", "local", "--limit", "9" * 23], 2, "less than or equal to 1000000"),
        (["backlog", "list", "local", "--limit", "-5"], 2, "greater than or equal to 1"),
        (["backlog", "drop", "local", "--seq", "1", "--all"], 2, "or --all, one of the two"),
        (["dead", "list", "q", "--limit", "9" * 20], 2, "less than or equal to 1000000"),
        (["consume", "m:app", "--prefetch", "9" * 20], 2, "less than or equal to 1000000"),
        (["consume", "--callback", "m:f", "--bind", "a.#", "--queue", ""], 2, "--queue cannot be empty"),
        (["consume", "m:app", "--exchange", " "], 2, "--exchange cannot be empty"),
    ],
)
def test_endless_files_and_impossible_numbers_are_one_line(
    tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    done = tidings(tmp_path, *args, timeout=30)
    assert done.returncode == code, done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("transport", "said"),
    [
        ('kind = "kafka"\nmax_message_bytes = 1', "max_message_bytes: expected int >= 1000"),
        ('kind = "kafka"\ndelivery_timeout = inf', "delivery_timeout: expected float <= 86400"),
        ('kind = "kafka"\nlinger = 1e9', "linger: expected float <= 900"),
        ('kind = "embedded"\n[connectors.x]\ntransport = "t"\nbatch_size = 1e20', "batch_size"),
        (
            'kind = "embedded"\n[connectors.x]\ntransport = "t"\nbatch_size = 99999999999999999999',
            "<= 1000000",
        ),
        # librdkafka's own bounds, with the room tidings adds to each record for its copies
        ('kind = "kafka"\nmax_message_bytes = 1000000000', "max_message_bytes: expected int <= 999983616"),
        ('kind = "kafka"\nlinger = 60', "linger (60 s) must be shorter than delivery_timeout"),
        ('kind = "kafka"\nsession_timeout = 5000', "session_timeout: expected float <= 3600"),
        ('kind = "kafka"\npartitions = 100000000', "partitions: expected int <= 100000"),
        ('kind = "stomp"\nheartbeat = inf', "heartbeat: expected float <= 86400"),
        ('kind = "amqp"\nconfirm_timeout = nan', "confirm_timeout"),
    ],
)
def test_settings_a_client_library_cannot_take_are_refused_at_load(
    tmp_path: Path, transport: str, said: str
) -> None:
    (tmp_path / "tidings.toml").write_text(f'[transports.t]\n{transport}\n[connectors.t]\ntransport = "t"\n')
    done = tidings(tmp_path, "config", "check")
    assert done.returncode == 3 and said in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ('[transports.e]\nkind = "embedded"\npath = ""', "path: expected str of length >= 1"),
        ('[web]\nlisten = "127.0.0.1:99999"', "'127.0.0.1:99999' is not HOST:PORT with a port from 1 to"),
        ('[web]\nlisten = "8080"', "listen '8080' is not HOST:PORT"),
        ('[web]\nlisten = ":8080"', "listen ':8080' names no host (127.0.0.1 for this machine, 0.0.0.0 for"),
        ('[consumers.c]\napp = "justaname"', "app must be MODULE:ATTRIBUTE (myservice:app), not 'justaname'"),
        ('[consumers.c]\napp = "my-service:app"', "app must be MODULE:ATTRIBUTE"),
    ],
)
def test_a_setting_that_can_never_work_is_refused_by_config_check(
    tmp_path: Path, config: str, said: str
) -> None:
    (tmp_path / "tidings.toml").write_text(config + "\n")
    done = tidings(tmp_path, "config", "check")
    assert done.returncode == 3 and said in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["config", "check"], ["dispatch", "--once"], ["serve"]])
def test_an_exchange_that_can_be_no_kafka_topic_is_refused_before_anything_runs(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.k]\nkind = "kafka"\n[connectors.k]\ntransport = "k"\nexchange = "bad exchange"\n'
    )
    done = tidings(tmp_path, *command, timeout=30)
    assert done.returncode == 3, done.stderr
    assert "[connectors.k] exchange 'bad exchange': 'bad exchange' is not a Kafka topic name" in done.stderr


def test_a_consumers_exchange_that_can_be_no_kafka_topic_is_refused_by_config_check(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.k]\nkind = "kafka"\n[consumers.svc]\nexchange = "bad/ex"\nbindings = ["#"]\n'
    )
    done = tidings(tmp_path, "config", "check", timeout=30)
    assert done.returncode == 3, done.stderr
    assert "[consumers.svc] exchange 'bad/ex': 'bad/ex' is not a Kafka topic name" in done.stderr
    (tmp_path / "tidings.toml").write_text(
        '[transports.k]\nkind = "kafka"\n[connectors.k]\ntransport = "k"\nexchange = "svc.dead"\n'
    )
    done = tidings(tmp_path, "config", "check", timeout=30)  # it would write into svc's dead letters
    assert done.returncode == 3 and "'svc.dead' is a topic name kept for queues" in done.stderr, done.stderr


def test_dispatch_once_delivers_to_the_connectors_that_are_up_before_reporting_the_one_down(
    tmp_path: Path,
) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.away]\nkind = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:1/"\nconnect_timeout = 2\n'
        '[transports.file]\nkind = "file"\npath = "out/events.jsonl"\n'
        '[connectors.away]\ntransport = "away"\n[connectors.file]\ntransport = "file"\n'
    )
    assert tidings(tmp_path, "publish", "a.b", "--body", "{}").returncode == 0
    done = tidings(tmp_path, "dispatch", "--once", timeout=60)
    assert done.returncode == 6, done.stderr
    assert len((tmp_path / "out" / "events.jsonl").read_text().splitlines()) == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_output_that_cannot_be_written_is_one_line_and_publish_says_the_event_is_stored(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TIDINGS_CONFIG", None)
    for args, said in (
        (["publish", "a.full", "--body", "{}"], "was stored, but cannot write to standard output"),
        (["schemas", "list"], "cannot write to standard output: No space left on device"),
        (["config", "show"], "cannot write to standard output: No space left on device"),
    ):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "tidings", *args],
                cwd=tmp_path,
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                timeout=60,
            )
        assert done.returncode == 1, done.stderr
        assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    delivered = tidings(tmp_path, "dispatch", "--once")  # the event publish could not name is there
    assert "local: delivered 0, to backlog 1," in delivered.stdout, delivered.stderr  # no queue bound


def test_the_doctor_reports_an_outbox_it_cannot_open_and_checks_the_transports_still(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text('[bus]\nhome = "home"\n')
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "outbox.db").write_bytes(b"not a database, not at all, no" * 4)
    done = tidings(tmp_path, "doctor")
    assert done.returncode == 6, done.stderr
    assert "outbox: FAILED" in done.stderr and "not a database" in done.stderr
    assert "transport local (embedded): ok" in done.stdout and "doctor: 1 problem(s)" in done.stderr


def test_a_config_with_no_connector_says_its_events_go_nowhere(tmp_path: Path) -> None:
    """Transports and no [connectors]: every event published would stay in the outbox, silently."""
    (tmp_path / "tidings.toml").write_text('[transports.rabbit]\nkind = "amqp"\n')
    checked = tidings(tmp_path, "config", "check")
    assert checked.returncode == 0 and "note: no [connectors.NAME]" in checked.stderr, checked.stderr
    done = tidings(tmp_path, "dispatch", "--once")
    assert done.returncode == 3 and "there is nothing to deliver to" in done.stderr, done.stderr


def test_a_pipe_as_config_and_a_folder_as_the_lock_are_one_line_each(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.toml")  # reading it would wait for a writer forever
    piped = tidings(tmp_path, "--config", "pipe.toml", "config", "check", timeout=20)
    assert piped.returncode == 3 and "is a directory, a device or a pipe, not a file" in piped.stderr
    assert tidings(tmp_path, "publish", "a.b", "--body", "{}").returncode == 0
    (tmp_path / ".tidings" / "outbox.db.dispatch.lock").mkdir()
    locked = tidings(tmp_path, "dispatch", "--once")
    assert locked.returncode == 5, locked.stderr
    assert locked.stderr.strip().splitlines() == [
        "tidings: error: cannot open the dispatcher's lock .tidings/outbox.db.dispatch.lock: Is a directory"
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["consume", "svc:app"],  # its settings from [consumers.svc], as serve would give them
        [
            *("consume", "--callback", "svc:plain", "--bind", "job.#", "--queue", "svc"),
            *("--transport", "lab", "--exchange", "jobs"),
        ],
    ],
)
def test_consume_runs_where_the_config_or_its_options_say(tmp_path: Path, command: list[str]) -> None:
    """The README's tour with a transport that is not called "local": a consumer started by hand
    finds its transport and exchange in [consumers.NAME], or in --transport and --exchange."""
    (tmp_path / "svc.py").write_text(
        "from tidings import App\n"
        "app = App('svc')\n"
        "@app.subscribe('job.#')\n"
        "def plain(event):\n"
        "    open('done.txt', 'a').write(event.topic + '\\n')\n"
    )
    (tmp_path / "tidings.toml").write_text(
        '[transports.lab]\nkind = "embedded"\n\n[connectors.lab]\ntransport = "lab"\nexchange = "jobs"\n\n'
        '[consumers.svc]\ntransport = "lab"\nexchange = "jobs"\n'
    )
    consumer = started(tmp_path, *command)
    try:
        _wait_for_queue(tmp_path, "svc")
        assert tidings(tmp_path, "publish", "job.done", "--body", "{}").returncode == 0
        delivered = tidings(tmp_path, "dispatch", "--once")
        assert "lab: delivered 1," in delivered.stdout, delivered.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (tmp_path / "done.txt").exists():
            time.sleep(0.05)
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(20) == 0, consumer.stderr.read().decode()  # type: ignore[union-attr]
    assert (tmp_path / "done.txt").read_text().split() == ["job.done"]


def test_an_outbox_whose_lock_file_cannot_be_opened_is_one_line_exit_5(tmp_path: Path) -> None:
    """A read-only home (as a read-only mount has it) was "internal error: OSError", exit 1."""
    (tmp_path / ".tidings" / "outbox.db.writer-lock").mkdir(parents=True)  # os.open cannot take it
    for args in (["publish", "a.b", "--body", "{}"], ["backlog", "list"]):
        done = tidings(tmp_path, *args)
        assert done.returncode == 5, done.stderr
        assert done.stderr.strip().splitlines() == [
            "tidings: error: cannot open outbox.db.writer-lock beside outbox.db: Is a directory"
        ]


def test_an_empty_body_from_standard_input_says_so(tmp_path: Path) -> None:
    done = tidings(tmp_path, "publish", "a.b", "--body", "@-", stdin=b"")
    assert (done.returncode, done.stderr.strip()) == (
        4,
        "tidings: error: body file (standard input) is empty",
    )
