"""Relays (any bus in, the outbox out) and the reactor (a command per matching event)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from tests.clirun import ROOT, tidings
from tidings import Bus
from tidings.config import parse_config
from tidings.errors import ConfigError
from tidings.event import Event
from tidings.formats.lava import LavaFormat, lava_event
from tidings.reactor import reactor_apps
from tidings.relay import HOPS_HEADER, Relay


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bus_of(tmp_path: Path, config: dict[str, Any]) -> Bus:
    return Bus(parse_config(config, base_dir=tmp_path))


def job(number: int, status: str = "Complete", device_type: str = "x15") -> Event:
    return lava_event("testjob", {"job": number, "status": status, "device_type": device_type})


# -- loops ------------------------------------------------------------------------------------


def test_two_relays_feeding_each_other_stop_after_one_round(tmp_path: Path) -> None:
    bus = bus_of(tmp_path, {"relays": {"a": {}, "b": {}}})
    a, b = Relay(bus, "a"), Relay(bus, "b")
    first = a.outgoing(job(1))
    assert first is not None and first.headers[HOPS_HEADER] == "a"
    second = b.outgoing(first)
    assert second is not None and second.headers[HOPS_HEADER] == "a,b"
    assert a.outgoing(second) is None and b.outgoing(second) is None
    assert first.id == second.id  # the outbox stores an id once: a round trip publishes nothing new


def test_an_event_through_too_many_relays_is_dropped(tmp_path: Path) -> None:
    bus = bus_of(tmp_path, {"relays": {"x": {"max_hops": 2}}})
    travelled = job(1)
    travelled.headers[HOPS_HEADER] = "p,q"
    assert Relay(bus, "x").outgoing(travelled) is None


async def test_only_what_reached_the_outbox_counts_as_relayed(tmp_path: Path) -> None:
    """The exit line's count: an event the outbox refuses (too large) was counted all the same."""
    from tidings.errors import InvalidEvent

    bus = bus_of(tmp_path, {"bus": {"max_body_bytes": 200}, "relays": {"x": {}}})
    relay = Relay(bus, "x")
    try:
        with pytest.raises(InvalidEvent):
            await relay.relay(lava_event("testjob", {"job": 1, "log": "x" * 500}))
        await relay.relay(job(2))
    finally:
        bus.close()
    assert relay.counters.relayed == 1


def test_the_topic_is_mapped_from_the_incoming_words(tmp_path: Path) -> None:
    bus = bus_of(tmp_path, {"relays": {"x": {"topic": "lab.{2}.{topic}"}}})
    out = Relay(bus, "x").outgoing(job(1))
    assert out is not None and out.topic == "lab.validation.org.linaro.validation.testjob"


def test_a_mapped_topic_that_is_no_topic_rejects_that_event_alone(tmp_path: Path) -> None:
    from tidings.handling import Reject

    relay = Relay(bus_of(tmp_path, {"relays": {"x": {"topic": "lab.{topic}"}}}), "x")
    with pytest.raises(Reject, match="makes"):
        relay.outgoing(Event.create("a" * 253, {}))  # a valid topic, too long once prefixed
    assert relay.outgoing(job(1)) is not None


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ({"filter": {"field": "data.x", "equal": 1}}, "[relays.x] filter: a field needs exactly one test"),
        ({"topic": "lab.{name}"}, "{name} is neither {topic} nor a word number"),
        ({"transport": "nowhere"}, "[relays.x] names transport 'nowhere'"),
        ({"app": "m:f"}, "[relays.x] app: a relay's handler is the relay itself"),
        ({"topic": "lab.#"}, "[relays.x] topic: 'lab.#' makes no valid topic"),
        ({"topic": "a..{topic}"}, "[relays.x] topic: 'a..{topic}' makes no valid topic"),
        ({"topic": "{0:d}"}, "[relays.x] topic: {0} takes no conversion or format spec"),
        ({"topic": "{topic"}, "[relays.x] topic: "),
        ({"bindings": ["a..b"]}, "[relays.x] bindings: "),
        ({"watch": {"bindings": ["a.#.#x"]}}, "[relays.x] watch bindings: "),
    ],
)
def test_a_relay_that_cannot_work_is_refused_naming_the_key(
    tmp_path: Path, relay: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Relay(bus_of(tmp_path, {"relays": {"x": relay}}), "x")
    assert message in str(info.value)


# -- a LAVA stream relayed -------------------------------------------------------------------


@pytest.fixture
async def lava_publisher() -> AsyncIterator[tuple[str, zmq.asyncio.Socket]]:
    """A LAVA server's event socket: a PUB that binds, publishing five-frame events."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.PUB)
    socket.bind(endpoint)
    yield endpoint, socket
    socket.close(linger=0)
    context.term()


async def attach(bus: Bus, publisher: zmq.asyncio.Socket, probe: Event) -> None:
    """ZeroMQ's slow joiner: publish ``probe`` until the relay has put it in the outbox."""
    frames = LavaFormat().encode(probe).frames or []
    for _ in range(200):
        if list(bus.outbox.history()):
            return
        await publisher.send_multipart(frames)
        await asyncio.sleep(0.05)
    pytest.fail("the relay never received the probe")


async def test_a_lava_stream_is_relayed_through_a_filter_into_the_outbox(
    tmp_path: Path, lava_publisher: tuple[str, zmq.asyncio.Socket]
) -> None:
    endpoint, publisher = lava_publisher
    bus = bus_of(
        tmp_path,
        {
            "transports": {"lab": {"kind": "zeromq", "endpoint": endpoint}},
            "relays": {
                "lab": {
                    "transport": "lab",
                    "format": "lava",
                    "bindings": ["org.linaro.validation.#"],
                    "filter": {
                        "all": [
                            {"field": "data.device_type", "equals": "x15"},
                            {"field": "data.status", "equals": "Complete"},
                        ]
                    },
                    "topic": "lab.{topic}",
                }
            },
        },
    )
    relaying = Relay(bus, "lab")
    stop = asyncio.Event()
    running = asyncio.create_task(relaying.app().run(bus, stop))
    fmt = LavaFormat()
    probe = job(0)
    await attach(bus, publisher, probe)
    sent = [
        job(n, status, device)
        for n in range(1, 301)
        for status, device in [("Complete", "x15"), ("Incomplete", "x15"), ("Complete", "bbb")]
    ]
    for event in sent:
        await publisher.send_multipart(fmt.encode(event).frames or [])
    wanted = {e.id for e in sent if e.body["status"] == "Complete" and e.body["device_type"] == "x15"}

    def relayed() -> dict[str, Event]:
        return {e.id: e for e in bus.outbox.history() if e.id != probe.id}

    for _ in range(200):
        if len(relayed()) >= len(wanted):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    got = relayed()
    assert set(got) == wanted  # lost 0 of those that passed, none of the others
    one = next(iter(got.values()))
    assert one.topic == "lab.org.linaro.validation.testjob" and one.headers[HOPS_HEADER] == "lab"
    assert relaying.counters.filtered >= 600


# -- the reactor ------------------------------------------------------------------------------

RECORDER = """
import json, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"argv": sys.argv[2:], "stdin": json.loads(sys.stdin.read())}) + "\\n")
"""


def reactor_bus(tmp_path: Path, rule: dict[str, Any]) -> Bus:
    (tmp_path / "recorder.py").write_text(RECORDER)
    return bus_of(
        tmp_path,
        {"reactor": {"workers": 2, "rules": {"finished": {"bindings": ["org.linaro.#"], **rule}}}},
    )


async def react(bus: Bus, events: list[Event], until: Any, timeout: float = 20) -> None:
    """Publish, dispatch and run the reactor until ``until()`` holds."""
    for event in events:
        bus.publish(event)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(app.run(bus, stop)) for app in reactor_apps(bus)]
    await asyncio.sleep(0.5)  # the rule queues are bound
    tasks.append(asyncio.create_task(bus.dispatcher().run(stop)))
    deadline = asyncio.get_running_loop().time() + timeout
    while not until() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)


HOSTILE = "; rm -rf / $(touch pwned) `id` 'quoted' \"double\"\nnewline"


async def test_a_rule_runs_its_command_once_per_matching_event_with_literal_arguments(tmp_path: Path) -> None:
    log = tmp_path / "ran.jsonl"
    bus = reactor_bus(
        tmp_path,
        {
            "match": {"field": "data.status", "equals": "Complete"},
            "command": [
                sys.executable,
                str(tmp_path / "recorder.py"),
                str(log),
                "$data.job",
                "job-${data.job}",
                "$data.note",
                "$topic",
                "pid $$, job ${data.job}, $${not.this}",  # $${: a literal ${ ($$ stays: the shell's)
            ],
        },
    )
    events = [
        lava_event("testjob", {"job": 1, "status": "Complete", "note": HOSTILE}),
        lava_event("testjob", {"job": 2, "status": "Incomplete", "note": "no"}),
        lava_event("testjob", {"job": 3, "status": "Complete", "note": "plain"}),
    ]
    await react(bus, events, lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["argv"][0] for r in ran) == ["1", "3"]
    first = next(r for r in ran if r["argv"][0] == "1")
    literal = "pid $$, job 1, ${not.this}"
    assert first["argv"] == ["1", "job-1", HOSTILE, "org.linaro.validation.testjob", literal]  # literal items
    assert first["stdin"]["body"]["job"] == 1  # the event as JSON on stdin
    assert not (tmp_path / "pwned").exists()


async def test_a_failing_command_is_retried_then_dead_lettered_for_that_rule(tmp_path: Path) -> None:
    counter = tmp_path / "tries"
    bus = reactor_bus(
        tmp_path,
        {
            "command": [sys.executable, "-c", f"open({str(counter)!r}, 'a').write('x'); raise SystemExit(3)"],
            "max_attempts": 3,
            "retry_schedule": [0.1],
        },
    )
    transport = bus.make_transport("local")

    async def dead() -> int:
        return await transport.queue_depth("reactor.finished.dead")  # type: ignore[attr-defined,no-any-return]

    depth = [0]

    def settled() -> bool:
        return counter.exists() and len(counter.read_text()) >= 3

    await react(bus, [job(7)], settled)
    await transport.connect()
    depth[0] = await dead()
    await transport.close()
    assert counter.read_text() == "xxx"  # three attempts, then no more
    assert depth[0] == 1


async def test_a_command_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    from tidings.config import ReactorRule
    from tidings.reactor import CommandFailed, Rule, run_command

    pids = tmp_path / "pids"
    # a shell whose background job keeps the output pipe open after the shell itself is killed
    script = f"sleep 60 & echo $! > {pids}; sleep 60"
    rule = Rule("slow", ReactorRule(command=["sh", "-c", script], timeout=0.5), lambda event: True)
    started = asyncio.get_running_loop().time()
    with pytest.raises(CommandFailed, match=r"did not finish within 0\.5 s"):
        await asyncio.wait_for(run_command(rule, ["sh", "-c", script], b""), 20)
    assert asyncio.get_running_loop().time() - started < 10
    assert ended(int(pids.read_text()))  # gone with the shell, not left running


async def test_a_command_done_in_time_is_done_though_what_it_started_runs_on(tmp_path: Path) -> None:
    from tidings.config import ReactorRule
    from tidings.reactor import Rule, run_command

    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}; exit 0"  # the shell is done; its job holds the output
    rule = Rule("quick", ReactorRule(command=["sh", "-c", script], timeout=0.5), lambda event: True)
    await asyncio.wait_for(run_command(rule, ["sh", "-c", script], b""), 20)  # no CommandFailed
    assert ended(int(pids.read_text()))


def ended(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` stops running within a few seconds (a SIGKILL takes effect asynchronously)."""
    deadline = time.monotonic() + within
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_a_missing_argument_dead_letters_without_running(tmp_path: Path) -> None:
    log = tmp_path / "ran.jsonl"
    bus = reactor_bus(
        tmp_path, {"command": [sys.executable, str(tmp_path / "recorder.py"), str(log), "$data.nothing.here"]}
    )
    transport = bus.make_transport("local")
    await react(bus, [job(1)], lambda: False, timeout=3)
    await transport.connect()
    assert await transport.queue_depth("reactor.finished.dead") == 1  # type: ignore[attr-defined]
    await transport.close()
    assert not log.exists()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_function_past_its_timeout_fails_that_try_and_holds_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A call rule's timeout was taken and ignored: one hung function held a worker for good,
    and with one worker every other rule waited behind it."""
    from tests.transports.conformance import take_from

    module = f"hanging_{kind}"
    hang = (
        "async def hang(event):\n    await asyncio.sleep(1000)\n"
        if kind == "async"
        else ("def hang(event):\n    time.sleep(3)\n")
    )
    (tmp_path / f"{module}.py").write_text(f"import asyncio, time\n{hang}")
    monkeypatch.syspath_prepend(str(tmp_path))
    log = tmp_path / "ran.jsonl"
    (tmp_path / "recorder.py").write_text(RECORDER)
    bus = bus_of(
        tmp_path,
        {
            "reactor": {
                "workers": 1,
                "rules": {
                    "finished": {
                        "bindings": ["org.hang.#"],
                        "call": f"{module}:hang",
                        "timeout": 0.5,
                        "max_attempts": 1,
                    },
                    "echo": {
                        "bindings": ["org.linaro.#"],
                        "command": [sys.executable, str(tmp_path / "recorder.py"), str(log), "$topic"],
                    },
                },
            }
        },
    )
    hung = Event.create("org.hang.one", {})
    await react(bus, [hung, job(1)], lambda: log.exists(), timeout=10)
    assert log.exists()  # the other rule ran: the hung function held its worker no longer
    (letter,) = await take_from(bus, "local", "reactor.finished.dead", 1)
    assert f"{module}:hang did not return within 0.5 s" in letter.message.headers["x-tidings-reason"]


async def test_an_argument_holding_a_nul_dead_letters_at_once(tmp_path: Path) -> None:
    """No program can be given it (exec refuses it): retrying would fail the same way every time."""
    from tests.transports.conformance import take_from

    log = tmp_path / "ran.jsonl"
    bus = reactor_bus(
        tmp_path, {"command": [sys.executable, str(tmp_path / "recorder.py"), str(log), "$data.status"]}
    )
    await react(bus, [job(1, status="Comp\0lete")], lambda: False, timeout=3)
    (letter,) = await take_from(bus, "local", "reactor.finished.dead", 1)
    assert "holds a NUL character" in letter.message.headers["x-tidings-reason"]
    assert letter.message.headers["x-tidings-attempts"] == 1  # not tried again and again
    assert not log.exists()


def test_reactor_dry_run_says_which_rules_would_fire(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        "[reactor.rules.notify]\n"
        'match = { field = "data.status", equals = "Complete" }\n'
        'command = ["notify", "$data.job", "$topic"]\n'
        "[reactor.rules.everything]\n"
        'call = "json:dumps"\n'
    )
    events = [job(1), job(2, "Incomplete")]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(e.to_json() for e in events))
    done = tidings(tmp_path, "reactor", "--dry-run", "events.jsonl")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        f"{events[0].id} org.linaro.validation.testjob → notify: notify 1 org.linaro.validation.testjob"
        in lines
    )
    assert sum("→ everything: json:dumps" in line for line in lines) == 2
    assert not any(events[1].id in line and "notify" in line for line in lines)
    assert "3 rule run(s) would fire" in done.stderr


def test_a_rule_with_a_bad_filter_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[reactor.rules.r]\nmatch = { field = "data.x", gt = "ten" }\ncommand = ["true"]\n'
    )
    done = tidings(tmp_path, "reactor", "--dry-run", "nothing.jsonl")
    assert done.returncode == 3
    assert "[reactor.rules.r] match.gt: a number to compare with" in done.stderr


# -- the migration view ---------------------------------------------------------------------------


async def test_the_migration_view_tells_old_only_both_and_new_only(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[connectors.local]\ntransport = "local"\nexchange = "new"\n'
        '[relays.fedmsg]\nexchange = "old"\nbindings = ["org.fedoraproject.#"]\n'
        'watch = { exchange = "new", bindings = ["org.fedoraproject.#"] }\n'
    )
    from tidings.config import load_config

    bus = Bus(load_config(tmp_path / "tidings.toml"))
    relaying = Relay(bus, "fedmsg")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(app.run(bus, stop)) for app in relaying.apps()]
    tasks.append(asyncio.create_task(bus.dispatcher().run(stop)))
    await asyncio.sleep(0.5)  # both queues bound
    transport, fmt = bus.make_transport("local"), bus.make_format("tidings")
    await transport.connect()

    def fedora(app: str, n: int) -> Event:
        return Event.create(f"org.fedoraproject.prod.{app}.thing.new", {"n": n})

    old = [fedora("koji", n) for n in range(3)] + [fedora("bodhi", n) for n in range(2)]
    new = [fedora("bodhi", n) for n in range(4)] + [fedora("pagure", 0)]
    await transport.send("old", [fmt.encode(e) for e in old])
    await transport.send("new", [fmt.encode(e) for e in new])
    for _ in range(100):
        relaying.sightings.flush()
        rows = {r.app: r for _, r in relaying.sightings.table()}
        if rows.get("koji") and rows["koji"].old == 3 and rows.get("pagure") and rows["bodhi"].new == 4:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the relayed copies reached the new bus too, and were not counted
    stop.set()
    await asyncio.gather(*tasks)
    await transport.close()
    relaying.sightings.close()
    bus.close()
    done = tidings(tmp_path, "migration", "status", "--json")
    assert done.returncode == 0, done.stderr
    table = {row["application"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert {app: (r["status"], r["old"], r["new"]) for app, r in table.items()} == {
        "bodhi": ("both", 2, 4),
        "koji": ("old only", 3, 0),
        "pagure": ("new only", 0, 1),
    }
    plain = tidings(tmp_path, "migration", "status").stdout.splitlines()
    assert plain[0].split()[:3] == ["relay", "application", "status"] and len(plain) == 4


async def test_garbage_and_oversize_frames_are_counted_and_skipped(
    tmp_path: Path, lava_publisher: tuple[str, zmq.asyncio.Socket]
) -> None:
    endpoint, publisher = lava_publisher
    bus = bus_of(
        tmp_path,
        {
            "transports": {"lab": {"kind": "zeromq", "endpoint": endpoint}},
            "relays": {"lab": {"transport": "lab", "format": "lava", "bindings": ["org.linaro.#"]}},
        },
    )
    relaying = Relay(bus, "lab")
    relay_app = relaying.app()
    stop = asyncio.Event()
    running = asyncio.create_task(relay_app.run(bus, stop))
    fmt = LavaFormat()
    probe = job(0)
    await attach(bus, publisher, probe)
    garbage = [
        [b"org.linaro.validation.testjob", b"not", b"five"],
        [b"org.linaro.validation.testjob", b"id", b"not a date", b"user", b"{}"],
        [b"org.linaro.validation.testjob", b"id", b"2026-12-01T00:00:00", b"user", b"{not json"],
        [b"org.linaro.validation.testjob", b"id", b"2026-12-01T00:00:00", b"user", b"[" * 100_000],
        [*(fmt.encode(job(1)).frames or [])[:4], b'{"x": "' + b"y" * (2 * 1024 * 1024) + b'"}'],  # oversize
    ]
    for frames in garbage:
        await publisher.send_multipart(frames)
    after = job(2)
    await publisher.send_multipart(fmt.encode(after).frames or [])
    for _ in range(100):
        if after.id in {e.id for e in bus.outbox.history()}:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert after.id in {e.id for e in bus.outbox.history()}  # the relay kept going
    assert relay_app.counters.rejected == len(garbage)  # each counted, none relayed
    assert {e.id for e in bus.outbox.history()} == {probe.id, after.id}


async def test_a_rule_can_be_a_python_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "labhooks.py").write_text(
        "import json\nseen = []\nasync def record(event):\n    seen.append(event.body['job'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    bus = reactor_bus(tmp_path, {"call": "labhooks:record", "match": {"field": "data.job", "ge": 2}})
    import labhooks  # type: ignore[import-not-found]

    await react(bus, [job(1), job(2), job(3)], lambda: len(labhooks.seen) >= 2)
    assert sorted(labhooks.seen) == [2, 3]


async def test_verify_missing_lists_what_passed_but_never_arrived(tmp_path: Path) -> None:
    from tidings.relay import verify_missing

    (tmp_path / "tidings.toml").write_text(
        '[connectors.local]\ntransport = "local"\nexchange = "new"\n'
        '[relays.up]\nexchange = "old"\nbindings = ["a.#"]\n'
        'filter = { field = "data.keep", equals = true }\n'
        'watch = { exchange = "new", bindings = ["a.#"] }\nmark = { bridged_by = "up" }\n'
    )
    from tidings.config import load_config

    bus = Bus(load_config(tmp_path / "tidings.toml"))
    relaying = Relay(bus, "up")
    transport, fmt = bus.make_transport("local"), bus.make_format("tidings")
    await transport.connect()

    async def round_trip(dispatching: bool) -> tuple[list[Event], dict[str, list[str]]]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(relaying.app().run(bus, stop))]
        if dispatching:
            tasks.append(asyncio.create_task(bus.dispatcher().run(stop)))
        checking = asyncio.create_task(verify_missing(relaying, 3.0, 0.5))
        await asyncio.sleep(1.0)  # the verification's queues are bound
        sent = [Event.create("a.b", {"keep": n % 2 == 0}) for n in range(6)]
        # a loop (another bridge's mark): dropped by the relay, so not missing either
        sent.append(Event.create("a.b", {"keep": True}, headers={"bridged_by": "other"}))
        await transport.send("old", [fmt.encode(e) for e in sent])
        missing = await checking
        stop.set()
        await asyncio.gather(*tasks)
        return sent, missing

    sent, missing = await round_trip(dispatching=True)
    assert missing == {"old": [], "new": []}
    sent, missing = await round_trip(dispatching=False)  # nothing carries the copies to the new bus
    passed = [e for e in sent if e.body["keep"] and not e.headers]
    assert missing["old"] == sorted(e.id for e in passed) and missing["new"] == []
    await transport.close()
    relaying.sightings.close()
    bus.close()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_verify_missing_stopped_early_still_says_what_it_found(tmp_path: Path, sig: int, code: int) -> None:
    (tmp_path / "tidings.toml").write_text('[relays.up]\nexchange = "old"\nwatch = { exchange = "new" }\n')
    checking = subprocess.Popen(
        [sys.executable, "-m", "tidings", "relay", "up", "--verify-missing", "600"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(3)  # its queues are declared, nothing arrives
        checking.send_signal(sig)
        out, err = checking.communicate(timeout=30)
    finally:
        checking.kill()
    assert checking.returncode == code, err
    assert out.decode().splitlines() == [
        "passed the filter, never arrived: 0",
        "arrived, never seen at the input: 0",
    ]


# -- bad input, one line each ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "args", "code", "said"),
    [
        ('[reactor.rules.r]\ncall = "os:sep"\n', ["reactor"], 3, "call 'os:sep' is not callable"),
        (
            '[reactor.rules.r]\ncommand = ["true"]\ntimeout = "x"\n',
            ["config", "check"],
            3,
            "[reactor.rules.r] timeout",
        ),
        ("[relays.x]\nformat_options = {frob = 1}\n", ["config", "check"], 3, "[relays.x] format_options"),
        (
            '[reactor]\nformat = "nope"\n[reactor.rules.r]\ncommand = ["true"]\n',
            ["config", "check"],
            3,
            "[reactor] format: unknown format 'nope'",
        ),
        ('[reactor.rules.r]\ncommand = [""]\n', ["config", "check"], 3, "the first item is the program"),
        ('[reactor.rules.r]\ncommand = ["true"]\ntimeout = inf\n', ["config", "check"], 3, "timeout"),
        (  # (every event was dead-lettered: "the event has no dat.job")
            '[reactor.rules.r]\ncommand = ["echo", "$dat.job"]\n',
            ["config", "check"],
            3,
            "[reactor.rules.r] command: '$dat.job': 'dat.job' is not a field: topic, id",
        ),
        (
            '[reactor.rules.r]\ncommand = ["sh", "-c", "echo ${HOME}"]\n',
            ["config", "check"],
            3,
            "'HOME' is not a field: topic, id, source, type, time, username, headers.NAME or data.PATH "
            "(a literal ${ is written $${)",
        ),
        ("[relays.x]\n", ["relay", "x", "--verify-missing", "nan"], 2, "not a number of seconds"),
        ("[relays.x]\n", ["relay", "x", "--grace", "-5"], 2, "not a number of seconds"),
    ],
)
def test_bad_relay_and_reactor_input_is_one_line(
    tmp_path: Path, config: str, args: list[str], code: int, said: str
) -> None:
    (tmp_path / "tidings.toml").write_text(config)
    done = tidings(tmp_path, *args)
    assert done.returncode == code, done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_dry_run_shows_events_whose_values_cannot_be_arguments(tmp_path: Path) -> None:
    rule = '[reactor.rules.r]\nbindings = ["#"]\ncommand = ["echo", "$data.a"]\n'
    (tmp_path / "tidings.toml").write_text(rule)
    hostile = "\x1b[2J\nrm -rf /"  # clears a terminal, and would look like a line of its own
    events = [
        Event.create("a.b", {"a": 10**30}),
        Event.create("a.b", {"a": "before\x00after"}),  # no program can be given a NUL
        Event.create("a.b", {"a": hostile}),
    ]
    lines = [json.dumps({**e.to_dict(), "time": "2026-12-01T00:00:00Z"}) for e in events]  # json: any depth
    (tmp_path / "events.jsonl").write_text("\n".join(lines))
    done = tidings(tmp_path, "reactor", "--dry-run", "events.jsonl")
    assert done.returncode == 0, done.stderr
    wide, nested, escaped = done.stdout.splitlines()
    assert escaped.endswith(f"echo {hostile!r}")
    assert wide.endswith("echo 1000000000000000000000000000000")  # exact, however wide
    assert "(would be dead-lettered: argument $data.a: the event's data.a holds a NUL character)" in nested


def test_migration_status_of_a_file_that_is_no_migration_database(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "tidings.toml").write_text("[relays.x]\n")
    assert "nothing seen yet" in tidings(tmp_path, "migration", "status").stdout
    assert not (tmp_path / ".tidings").exists()  # asking made nothing
    (tmp_path / ".tidings").mkdir()
    with sqlite3.connect(tmp_path / ".tidings" / "migration.db") as db:
        db.execute("CREATE TABLE sightings (a)")
    done = tidings(tmp_path, "migration", "status")
    assert done.returncode == 3 and "is not a migration database tidings can read" in done.stderr
