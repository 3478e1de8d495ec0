"""Garbage into the CLI, onto a RabbitMQ queue and into the configuration: only our own errors.

Garbage into each format's decoder is part of the format suite (tests/formats/conformance.py),
which every registered format runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiormq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.rig import Rig, queue_depth
from tests.formats.conformance import EXTREMES

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=25, deadline=None)
@given(
    topic=st.text(max_size=30),
    body=st.one_of(st.text(max_size=60), json_values.map(json.dumps)),
    type_=st.none() | st.text(max_size=20),
)
def test_cli_publish_with_garbage(
    topic: str, body: str, type_: str | None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Run in-process on the embedded default: exit code, never a traceback, errors on one line."""
    import contextlib
    import io
    import os

    from tidings.cli import main

    home = tmp_path_factory.mktemp("cli")
    args = ["tidings", "publish", topic, "--body", body]
    if type_ is not None:
        args += ["--type", type_]
    err = io.StringIO()
    saved = sys.argv, os.getcwd(), os.environ.pop("TIDINGS_CONFIG", None)
    sys.argv = args
    os.chdir(home)
    code: int | str | None = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
            except SystemExit as exited:
                code = exited.code
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        if saved[2] is not None:
            os.environ["TIDINGS_CONFIG"] = saved[2]
    text = err.getvalue()
    assert "Traceback" not in text
    if code not in (None, 0, 2):  # 2: usage errors are typer's own box
        assert len(text.strip().splitlines()) == 1, text
        assert code in (3, 4), (code, text)  # configuration or invalid input, nothing else


@pytest.mark.rabbitmq
async def test_garbage_on_a_rabbitmq_queue_is_dead_lettered_once(tmp_path: Path, rabbitmq: str) -> None:
    """Raw garbage put straight on a service's queue: to `<queue>.dead` once, never requeued in a
    loop, and the valid event behind it is handled."""
    rig = Rig(tmp_path)
    await rig.start(dispatcher=False)
    try:
        connection = await aiormq.connect(rabbitmq)
        channel = await connection.channel()
        for body in (EXTREMES["100,000-deep array"], EXTREMES["invalid UTF-8"], b"\x00\x01garbage"):
            await channel.basic_publish(body, routing_key=rig.queue)
        await connection.close()
        rig.dispatcher = rig.bus.dispatcher()
        rig.tasks.append(asyncio.create_task(rig.dispatcher.run(rig.stop)))
        await rig.publish(1)
        await rig.wait_all_delivered(timeout=30)
        await asyncio.sleep(1.0)  # a requeue loop would show as more rejections by now
    finally:
        await rig.close_keeping_queues()
    counters = rig.app.counters
    dead = await queue_depth(rabbitmq, f"{rig.queue}.dead")
    await rig.delete_topology()
    assert (counters.rejected, dead, counters.handled) == (3, 3, 1)


# -- configuration that cannot work: refused when it is read, naming the key --------------------

BAD_CONFIGS = {
    "connector topic with a mixed wildcard": (
        '[connectors.local]\ntransport = "local"\ntopics = ["load.#b", "load..x"]\n',
        "[connectors.local] topics: invalid pattern 'load.#b'",
    ),
    "consumer bindings with an empty word": (
        '[consumers.svc]\nbindings = ["a..b", "c#", ""]\n',
        "[consumers.svc] bindings: invalid pattern 'a..b'",
    ),
    "an empty retry schedule": ("[consumers.svc]\nretry_schedule = []\n", "[consumers.svc] retry_schedule:"),
    "a negative retry delay": ("[consumers.svc]\nretry_schedule = [-5]\n", "[consumers.svc] retry_schedule"),
    "max_depth -1": ("[bus]\nmax_depth = -1\n", "[bus] max_depth: expected int >= 1"),
    "max_depth 0": ("[bus]\nmax_depth = 0\n", "[bus] max_depth: expected int >= 1"),
    "max_depth 501": ("[bus]\nmax_depth = 501\n", "[bus] max_depth: expected int <= 500"),
    "max_body_bytes -5": ("[bus]\nmax_body_bytes = -5\n", "[bus] max_body_bytes: expected int >= 1"),
    "max_attempts -2": (
        "[consumers.svc]\nmax_attempts = -2\n",
        "[consumers.svc] max_attempts: expected int >= 1",
    ),
    "a negative lease": (
        '[transports.local]\nkind = "embedded"\nlease = -1\n',
        "[transports.local]: lease: expected float > 0.0",
    ),
    "a negative poll": ('[transports.local]\nkind = "embedded"\npoll = -3\n', "[transports.local]: poll:"),
    "a lease that is a word": (
        '[transports.local]\nkind = "embedded"\nlease = "soon"\n',
        "[transports.local]: lease: expected float, got str",
    ),
    "a heartbeat that is a word": (
        '[transports.r]\nkind = "amqp"\nheartbeat = "fast"\n',
        "[transports.r]: heartbeat: expected float, got str",
    ),
    "a key password that is a number": (
        '[transports.r]\nkind = "amqp"\nkey_password = 12345\n',
        "[transports.r]: key_password: expected str | null, got int",
    ),
    "a zeromq mode that does not exist": (
        '[transports.z]\nkind = "zeromq"\nendpoint = "tcp://127.0.0.1:1"\nmode = "listen"\n',
        "[transports.z]: mode: invalid enum value 'listen'",
    ),
    "a format option the format does not have": (
        '[connectors.local]\ntransport = "local"\nformat = "lava"\nformat_options = {legacy = true}\n',
        "[connectors.local] format_options: unknown key 'legacy'",
    ),
    "an unknown format": (
        '[connectors.local]\ntransport = "local"\nformat = "carrier-pigeon"\n',
        "[connectors.local] format: unknown format 'carrier-pigeon'",
    ),
    "a queue kind that does not exist": (
        '[consumers.svc]\nqueue_kind = "lazy"\n',
        "[consumers.svc] queue_kind:",
    ),
    "a log level that does not exist": (
        '[bus]\nlog_level = "LOUD"\n',
        "[bus] log_level: invalid enum value 'LOUD' (one of: DEBUG, INFO, WARNING, ERROR)",
    ),
    "an archive store that does not exist": (
        '[archive]\nstore = "mysql"\n',
        "[archive] store: invalid enum value 'mysql' (one of: sqlite, postgresql)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_configuration_that_cannot_work_is_refused_naming_the_key(tmp_path: Path, case: str) -> None:
    from tests.clirun import tidings

    text, expected = BAD_CONFIGS[case]
    if "[transports.local]" not in text and "transport = " not in text and "[consumers" in text:
        text = '[transports.local]\nkind = "embedded"\n' + text
    (tmp_path / "tidings.toml").write_text(text)
    done = tidings(tmp_path, "doctor")
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "config: ok" not in done.stdout
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("tidings: error: tidings.toml: "), (
        done.stderr
    )
    assert expected in done.stderr, done.stderr


BAD_MODULES = {
    "a syntax error": ("def handle(event:\n", "cannot import 'badmod': SyntaxError"),
    "an exception at import": (
        "raise RuntimeError('no database')\n",
        "cannot import 'badmod': RuntimeError: no database",
    ),
    "a target that is not callable": ("handle = 42\n", "'badmod:handle' is not callable"),
    "a missing attribute": ("other = 1\n", "module 'badmod' has no attribute 'handle'"),
}


@pytest.mark.parametrize("case", list(BAD_MODULES))
def test_a_broken_callback_module_is_a_config_error(tmp_path: Path, case: str) -> None:
    from tests.clirun import tidings

    source, expected = BAD_MODULES[case]
    (tmp_path / "badmod.py").write_text(source)
    done = tidings(tmp_path, "consume", "--callback", "badmod:handle", "--bind", "a.#", timeout=30)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert expected in done.stderr, done.stderr
