"""What a new user meets in the first hour, run as they run it: real processes, exit codes, output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.clirun import ROOT, tidings


def until(condition: object, timeout: float, what: str) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)


def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A long-running ``tidings`` command; its stdout and stderr go to files beside it."""
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{cwd}", "COLUMNS": "200", **(env or {})}
    full_env.pop("TIDINGS_CONFIG", None)
    name = args[0] if args else "tidings"
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", *args],
        cwd=cwd,
        env=full_env,
        stdout=(cwd / f"{name}.out").open("wb"),
        stderr=(cwd / f"{name}.err").open("wb"),
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> int:
    process.send_signal(sig)
    return process.wait(timeout=30)


def said(cwd: Path, name: str, stream: str = "err") -> str:
    return (cwd / f"{name}.{stream}").read_text()


# -- usage errors and help ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish"], "missing argument 'TOPIC'; see tidings publish --help"),
        (["publish", "a.b"], "missing option '--body' / '-b'; see tidings publish --help"),
        (["nope"], "no such command 'nope'; see tidings --help"),
        (["backlog", "drop", "local"], "see tidings backlog drop --help"),
        (["dispatch", "--once", "--bogus"], "no such option: --bogus"),
        (["consume"], "give either MODULE:APP or --callback MODULE:FUNC; see tidings consume --help"),
        (
            ["-c", "a.toml", "publish", "a.b", "-c", "b.toml", "--body", "{}"],
            "--config is given both before and after the command: give it once",
        ),
    ],
)
def test_a_usage_error_is_one_line_saying_where_to_read_more(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = tidings(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("tidings: error: "), done.stderr
    assert message in done.stderr
    assert not (tmp_path / ".tidings").exists()


def test_tidings_alone_prints_its_help(tmp_path: Path) -> None:
    done = tidings(tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: tidings [OPTIONS] COMMAND")
    assert "publish" in done.stdout and "dead" in done.stdout


def test_the_version_is_one_line(tmp_path: Path) -> None:
    from importlib.metadata import version

    for flag in ("--version", "-V"):
        done = tidings(tmp_path, flag)
        assert (done.returncode, done.stdout) == (0, f"tidings {version('tidings')}\n"), done.stderr


def test_every_command_s_help_shows_how_it_is_typed() -> None:
    """--help that teaches: each command's help has an example of its own command line."""
    import typer

    from tidings.cli import app, register_commands

    register_commands()
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import cli_docs
    finally:
        sys.path.pop(0)
    for path, command in cli_docs.commands(typer.main.get_command(app)):
        text = command.help or ""
        assert "Example" in text and " ".join(path) in text, " ".join(path)


def test_help_names_values_and_keeps_sentences_whole(tmp_path: Path) -> None:
    done = tidings(tmp_path, "publish", "--help", env={"COLUMNS": "100"})
    assert done.returncode == 0
    assert "-H, --header KEY=VALUE" in done.stdout
    assert "-b, --body BODY" in done.stdout
    assert re.search(r"^  --private +Mark", done.stdout, re.M), done.stdout  # a flag takes no value
    assert "<bool>" not in done.stdout and "<list[" not in done.stdout and "<str>" not in done.stdout
    # the docstring's line break in the middle of a sentence is not kept
    # (written "... (`tidings dispatch` or" / "`tidings serve`) ..." in the docstring)
    assert "(`tidings\n  dispatch` or `tidings serve`) delivers" in done.stdout


def test_every_command_and_option_is_in_docs_cli_md() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import cli_docs
    finally:
        sys.path.pop(0)
    assert cli_docs.DOC.read_text() == cli_docs.document(), "run: python scripts/cli_docs.py"
    overview = cli_docs.DOC.read_text().partition(cli_docs.MARKER)[0]
    reference = cli_docs.reference()
    for typed in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list[", "\\["):
        assert typed not in reference
    import typer

    from tidings.cli import app, register_commands

    register_commands()
    for path, _ in cli_docs.commands(typer.main.get_command(app)):
        assert f"`{' '.join(path)}" in overview, f"{' '.join(path)} is not in the table of docs/cli.md"


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["consume", "--callback", "json:dumps", "--bind", "a.#", "--queue", "q"],
        ["dispatch"],
        ["tail"],
    ],
    ids=lambda args: args[0],
)
def test_ctrl_c_stops_cleanly_with_exit_130(tmp_path: Path, args: list[str]) -> None:
    process = start(tmp_path, *args)
    until(lambda: said(tmp_path, args[0]) or args[0] == "tail", 20, "the command to start")
    time.sleep(1.0)
    assert stop(process, signal.SIGINT) == 130, said(tmp_path, args[0])
    assert "Traceback" not in said(tmp_path, args[0])


@pytest.mark.parametrize(
    "args",
    [["consume", "--callback", "json:dumps", "--bind", "a.#", "--queue", "q"], ["dispatch"]],
    ids=lambda args: args[0],
)
def test_sigterm_is_a_clean_stop_with_exit_0(tmp_path: Path, args: list[str]) -> None:
    process = start(tmp_path, *args)
    until(lambda: said(tmp_path, args[0]), 20, "the command to start")
    time.sleep(1.0)
    assert stop(process, signal.SIGTERM) == 0, said(tmp_path, args[0])


# -- the first event, published before any queue is bound ---------------------------------------

HANDLER = """
def handle(event):
    with open("handled.txt", "a") as seen:
        seen.write(event.id + "\\n")
"""


def test_an_event_no_queue_is_bound_for_is_told_and_goes_once_a_queue_is_bound(tmp_path: Path) -> None:
    # a first retry a minute away: the event must go because the queue was bound, not on schedule
    (tmp_path / "tidings.toml").write_text('[connectors.local]\ntransport = "local"\nretry_schedule = [60]\n')
    (tmp_path / "service.py").write_text(HANDLER)
    event_id = tidings(tmp_path, "publish", "datawarehouse.checkout.new", "--body", "{}").stdout.strip()
    dispatcher = start(tmp_path, "dispatch")
    consumer = None
    try:
        until(lambda: "kept in the backlog" in said(tmp_path, "dispatch"), 20, "the backlog warning")
        warning = said(tmp_path, "dispatch")
        assert "'datawarehouse.checkout.new'" in warning and "unroutable" in warning
        assert "tidings consume" in warning  # what to do about it
        listed = tidings(tmp_path, "backlog", "list", "--json")
        assert orjson.loads(listed.stdout)["backlog"] == 1
        bound_at = time.monotonic()
        consumer = start(
            tmp_path,
            "consume",
            "--callback",
            "service:handle",
            "--bind",
            "datawarehouse.#",
            "--queue",
            "q",
            "-v",
        )
        handled = tmp_path / "handled.txt"
        until(lambda: handled.exists() and handled.read_text().split() == [event_id], 30, "the event")
        assert time.monotonic() - bound_at < 20  # not the minute the schedule would have waited
        until(lambda: "attempt 1: handled" in said(tmp_path, "consume"), 10, "the per-event line of -v")
        until(lambda: "consumer q: handled 1" in said(tmp_path, "consume"), 10, "the activity line")
        until(lambda: "connector local: delivered 1" in said(tmp_path, "dispatch"), 10, "the activity line")
    finally:
        assert stop(dispatcher) == 130
        if consumer is not None:
            assert stop(consumer) == 130
    # a clean stop leaves no handling journal behind (each run left its 256 KiB file)
    assert not list((tmp_path / ".tidings" / "handling").glob("*.log"))


def test_two_callback_services_whose_functions_share_a_name_get_a_queue_each(tmp_path: Path) -> None:
    """``--callback svc_a:handle`` and ``--callback svc_b:handle`` without ``--queue``: named after
    the function alone, both read queue 'handle', and each acked the other's events unhandled."""
    for name in ("svc_a", "svc_b"):
        (tmp_path / f"{name}.py").write_text(HANDLER.replace("handled.txt", f"{name}.txt"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    env.pop("TIDINGS_CONFIG", None)
    consumers = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidings",
                "consume",
                "--callback",
                f"{name}:handle",
                "--bind",
                f"{pattern}.#",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{name}.err").open("wb"),
        )
        for name, pattern in (("svc_a", "a"), ("svc_b", "b"))
    }
    try:
        for name in consumers:
            until(lambda n=name: f"consuming queue '{n}.handle'" in said(tmp_path, n), 20, f"{name} to start")
        sent = {
            name: [tidings(tmp_path, "publish", f"{word}.e", "--body", "{}").stdout.strip() for _ in range(2)]
            for name, word in (("svc_a", "a"), ("svc_b", "b"))
        }
        assert tidings(tmp_path, "dispatch", "--once").returncode == 0
        for name, ids in sent.items():
            seen = tmp_path / f"{name}.txt"
            until(lambda f=seen, i=ids: f.exists() and sorted(f.read_text().split()) == sorted(i), 30, name)
    finally:
        for process in consumers.values():
            assert stop(process) == 130


def test_dispatch_once_sends_what_waited_for_a_queue_once_one_is_bound(tmp_path: Path) -> None:
    """The running dispatcher sees a binding come; ``--once``, a new process each time, did not:
    the event waited out its retry schedule although its queue was there."""
    import asyncio

    from tidings import App, Bus
    from tidings.config import load_config

    (tmp_path / "tidings.toml").write_text(
        '[bus]\nhome = "home"\n[connectors.local]\ntransport = "local"\nretry_schedule = [600]\n'
    )
    tidings(tmp_path, "publish", "nobody.listens.yet", "--body", "{}")
    first = tidings(tmp_path, "dispatch", "--once").stdout
    assert "to backlog 1" in first and re.search(r"; 1 waiting in the backlog, the next due in \d{3}s", first)
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    service = App("late", queue="late")  # a consumer starts: its queue is bound
    service.add_handler(["nobody.#"], lambda event: None)
    asyncio.run(service.declare(bus))
    bus.close()
    assert "delivered 1, to backlog 0" in tidings(tmp_path, "dispatch", "--once").stdout
    assert orjson.loads(tidings(tmp_path, "backlog", "list", "--json").stdout)["backlog"] == 0


def test_dispatch_once_from_cron_spends_the_attempts_of_an_event_no_queue_takes(tmp_path: Path) -> None:
    """Each ``--once`` connects anew and tried what waited for a queue at no cost of an attempt:
    an event no queue ever takes stayed in the backlog for good, at attempt 1."""
    (tmp_path / "tidings.toml").write_text(
        '[connectors.local]\ntransport = "local"\nretry_schedule = [0.2]\nmax_attempts = 3\n'
    )
    tidings(tmp_path, "publish", "nobody.listens", "--body", "{}")
    for _ in range(3):
        assert tidings(tmp_path, "dispatch", "--once").returncode == 0
        time.sleep(0.5)  # the retry is due by the next run, as between two runs of a cron job
    listed = tidings(tmp_path, "backlog", "list", "local", "--dead", "--json").stdout
    dead = [orjson.loads(line) for line in listed.splitlines()]
    assert [d["reason"].split(":")[0] for d in dead] == ["gave up after 3 attempts"], dead


def test_a_configured_consumer_runs_by_its_name(tmp_path: Path) -> None:
    """``tidings consume triage`` for ``[consumers.triage]``: as ``tidings serve`` would run it."""
    (tmp_path / "service.py").write_text(HANDLER)
    (tmp_path / "tidings.toml").write_text(
        '[consumers.triage]\napp = "service:handle"\nbindings = ["datawarehouse.#"]\n'
    )
    consumer = start(tmp_path, "consume", "triage")
    try:
        until(lambda: "consuming queue 'triage' (datawarehouse.#)" in said(tmp_path, "consume"), 20, "start")
        event_id = tidings(tmp_path, "publish", "datawarehouse.x", "--body", "{}").stdout.strip()
        assert tidings(tmp_path, "dispatch", "--once").returncode == 0
        handled = tmp_path / "handled.txt"
        until(lambda: handled.exists() and handled.read_text().split() == [event_id], 30, "the event")
    finally:
        assert stop(consumer) == 130


def test_the_backlog_warning_follows_the_configured_log_level(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text('[bus]\nlog_level = "ERROR"\n')
    tidings(tmp_path, "publish", "nobody.listens", "--body", "{}")
    dispatcher = start(tmp_path, "dispatch")
    until(
        lambda: orjson.loads(tidings(tmp_path, "backlog", "list", "--json").stdout)["backlog"] == 1,
        20,
        "the event in the backlog",
    )
    time.sleep(1.5)  # an activity line would have been written by now
    stop(dispatcher, signal.SIGTERM)
    assert "kept in the backlog" not in said(tmp_path, "dispatch")
    assert "connector local:" not in said(tmp_path, "dispatch")


# -- output in a pipe -------------------------------------------------------------------------


def test_piped_lists_are_plain_columns_never_cut(tmp_path: Path) -> None:
    done = tidings(tmp_path, "schemas", "list", env={"COLUMNS": "80"})
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["type", "title", "from"]
    assert not any(ch in done.stdout for ch in "┃│━…")
    assert max(len(line) for line in lines) > 80  # long names printed whole
    assert any(line.startswith("cki.datawarehouse.v1 ") for line in lines)


def test_list_commands_speak_json_lines(tmp_path: Path) -> None:
    schemas = [
        orjson.loads(line) for line in tidings(tmp_path, "schemas", "list", "--json").stdout.splitlines()
    ]
    assert {"type", "title", "from"} <= set(schemas[0])
    assert any(s["type"] == "tidings.demo.v1" for s in schemas)
    tidings(tmp_path, "publish", "nobody.listens", "--body", "{}")
    tidings(tmp_path, "dispatch", "--once")
    [status] = [
        orjson.loads(line) for line in tidings(tmp_path, "backlog", "list", "--json").stdout.splitlines()
    ]
    assert (
        status["connector"] == "local" and status["backlog"] == 1 and isinstance(status["next_retry"], float)
    )
    [entry] = [
        orjson.loads(line)
        for line in tidings(tmp_path, "backlog", "list", "local", "--json").stdout.splitlines()
    ]
    assert entry["topic"] == "nobody.listens" and entry["reason"].startswith("unroutable")


def test_the_demo_prints_one_event_per_line_in_a_pipe(tmp_path: Path) -> None:
    done = tidings(
        tmp_path, "demo", "--duration", "1", "--rate", "20", "--home", "demo", env={"COLUMNS": "60"}
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("ledger: published") and "lost 0" in lines[-1]
    events = lines[:-1]
    assert events and all(re.match(r"\d\d:\d\d:\d\d\.\d{6} datawarehouse\.", line) for line in events), lines
    assert done.stderr.count("\n") == 1  # the header is one line too


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_the_demo_stops_cleanly_on_a_signal_with_its_ledger_and_a_second_one_takes_nothing(
    tmp_path: Path, sig: int, code: int
) -> None:
    """The main job of the README: SIGTERM killed it (143) and Ctrl-C left no ledger; a second
    demo in the same folder bound its consumer first and took the first one's events."""
    demo = start(tmp_path, "demo", "--duration", "60", "--home", "demo")
    try:
        until(lambda: "datawarehouse." in said(tmp_path, "demo", "out"), 20, "the first event")
        second = tidings(tmp_path, "demo", "--duration", "5", "--home", "demo")
        assert second.returncode == 7 and "another dispatcher" in second.stderr, second.stderr
        shown = said(tmp_path, "demo", "out").count("datawarehouse.")
        # the first goes on: its events still arrive
        until(lambda: said(tmp_path, "demo", "out").count("datawarehouse.") > shown, 20, "more events")
    finally:
        assert stop(demo, sig) == code, said(tmp_path, "demo")
    last = said(tmp_path, "demo", "out").splitlines()[-1]
    assert last.startswith("ledger: published") and "lost 0" in last, last
    assert "Traceback" not in said(tmp_path, "demo")


# -- configuration ---------------------------------------------------------------------------


def show(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    done = tidings(cwd, *args, "config", "show", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_config_is_found_in_a_parent_folder_up_to_the_repository_root(tmp_path: Path) -> None:
    project = tmp_path / "project"
    deep = project / "services" / "triage"
    deep.mkdir(parents=True)
    (project / ".git").mkdir()
    (project / "tidings.toml").write_text('[bus]\nsource = "from-the-project"\n')
    (tmp_path / "tidings.toml").write_text('[bus]\nsource = "outside-the-repository"\n')
    found = show(deep)
    assert found["config"]["bus"]["source"] == "from-the-project"
    assert found["source"] == f"{project / 'tidings.toml'} (found in a parent folder)"
    # relative paths are the file's: the outbox is the project's, wherever the command runs
    assert tidings(deep, "publish", "a.b", "--body", "{}").returncode == 0
    assert (project / ".tidings" / "outbox.db").exists() and not (deep / ".tidings").exists()


def test_outside_a_repository_only_the_current_folder_counts(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text('[bus]\nsource = "parent"\n')
    (tmp_path / "child").mkdir()
    found = show(tmp_path / "child")
    assert found["source"] == "the embedded default (no config file found)"


def test_config_precedence_option_then_environment_then_folder(tmp_path: Path) -> None:
    for name in ("here", "env", "option"):
        (tmp_path / f"{name}.toml").write_text(f'[bus]\nsource = "{name}"\n')
    (tmp_path / "tidings.toml").write_text('[bus]\nsource = "here"\n')
    env = {"TIDINGS_CONFIG": str(tmp_path / "env.toml")}
    assert show(tmp_path)["config"]["bus"]["source"] == "here"
    assert show(tmp_path, env=env)["config"]["bus"]["source"] == "env"
    assert show(tmp_path, "--config", "option.toml", env=env)["config"]["bus"]["source"] == "option"
    said = tidings(tmp_path, "config", "check", env=env).stderr
    assert said.strip() == f"source: {tmp_path / 'env.toml'} ($TIDINGS_CONFIG)", said  # not "--config"


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.rabbit]\nkind = "amqp"\nurl = "amqp://svc:hunter2@broker.example:5671/%2F"\n'
        'key_password = "canary-key"\n'
        '[transports.kafka]\nkind = "kafka"\nurl = "kafka://svc:canary-sasl@127.0.0.1:9092"\n'
        'librdkafka = {"sasl.password" = "canary-lib"}\n'
        # a password with a space and a quote (it ends a URL found in running text, not an option's)
        '[transports.odd]\nkind = "amqp"\nurl = "amqp://svc:canary pass\'odd@h/"\n'
        '[archive]\nstore = "postgresql"\nurl = "host=h password=canary-pg dbname=x"\n'
    )
    for args in (("config", "show"), ("config", "show", "--json")):
        done = tidings(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        for secret in (
            "hunter2",
            "canary-key",
            "canary-sasl",
            "canary-lib",
            "canary pass",
            "odd@",
            "canary-pg",
        ):
            assert secret not in done.stdout
        assert "amqp://svc:***@broker.example:5671/%2F" in done.stdout


def test_config_check_and_doctor_name_a_missing_extra_before_saying_ok(tmp_path: Path) -> None:
    # a confluent_kafka that cannot be imported: as on a machine without tidings[kafka]
    shadow = tmp_path / "shadow" / "confluent_kafka"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named confluent_kafka')\n")
    (tmp_path / "tidings.toml").write_text('[transports.k]\nkind = "kafka"\nurl = "kafka://127.0.0.1:9"\n')
    env = {"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{ROOT}"}
    consume = ["consume", "--callback", "json:dumps", "--bind", "a.#", "--transport", "k"]
    for command in (["config", "check"], ["doctor"], consume):
        done = tidings(tmp_path, *command, env=env)
        assert done.returncode == 3, (command, done.stdout, done.stderr)
        assert "config: ok" not in done.stdout
        # one line: no "consuming queue ..." before it
        assert done.stderr.count("\n") == 1 and "tidings[kafka]" in done.stderr, done.stderr


def test_the_bridge_without_its_extra_names_it(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "cryptography"  # as on a machine without tidings[fedmsg]
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError('no cryptography', name='cryptography')\n")
    done = tidings(
        tmp_path, "bridge", "fedmsg", env={"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{ROOT}"}
    )
    assert (done.returncode, done.stderr) == (
        3,
        "tidings: error: tidings bridge needs a package that is not installed (cryptography): "
        "pip install 'tidings[fedmsg]'\n",
    )


def test_config_check_says_ok_without_connecting(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.rabbit]\nkind = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:9/"\n'
        '[connectors.rabbit]\ntransport = "rabbit"\n'
    )
    done = tidings(tmp_path, "config", "check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config: ok — 1 transport(s), 1 connector(s)")


def test_a_second_dispatcher_says_so_in_one_line_without_announcing_itself(tmp_path: Path) -> None:
    first = start(tmp_path, "dispatch")
    try:
        until(lambda: "dispatching from" in said(tmp_path, "dispatch"), 20, "the first dispatcher")
        second = tidings(tmp_path, "dispatch")
        assert second.returncode == 7, second.stderr
        assert second.stderr.strip().splitlines() == [
            f"tidings: error: another dispatcher (pid {first.pid}) is already delivering from "
            ".tidings/outbox.db"
        ]
    finally:
        assert stop(first, signal.SIGTERM) == 0


def test_config_show_fills_in_a_transport_s_defaults_and_what_it_prints_loads_again(tmp_path: Path) -> None:
    """ "Defaults filled in", said its help: the embedded default's lease and poll were left out."""
    local = show(tmp_path)["config"]["transports"]["local"]
    assert (local["lease"], local["poll"]) == (30.0, 0.01)
    (tmp_path / "tidings.toml").write_text(
        '[transports.rabbit]\nkind = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:9/"\n'
        '[connectors.rabbit]\ntransport = "rabbit"\n'
    )
    printed = tidings(tmp_path, "config", "show")
    assert printed.returncode == 0, printed.stderr
    assert "heartbeat = 15.0" in printed.stdout and "guest:***@" in printed.stdout
    again = tmp_path / "again"
    again.mkdir()
    (again / "tidings.toml").write_text(printed.stdout.replace("guest:***@", "guest:guest@"))
    assert tidings(again, "config", "check").returncode == 0
