"""Canary secrets never leak: not in a log line at DEBUG, an error, CLI output, or the outbox.

The canaries are a broker password (right and wrong), a password in a management-API URL and
a TLS key password. Everything the code under test says is collected and searched for the
canary itself and for its base64 (also of ``user:password``, as HTTP Basic sends it),
URL-encoded and hex forms.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from tests.clirun import ROOT, tidings
from tests.faults.rig import Rig
from tidings.errors import TidingsError
from tidings.transports.amqp import AmqpTransport

pytestmark = pytest.mark.rabbitmq


def encodings(user: str, secret: str) -> set[str]:
    forms = {secret, quote(secret), quote_plus(secret), secret.encode().hex()}
    for raw in (secret.encode(), f"{user}:{secret}".encode()):
        forms |= {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
        forms.add(base64.b64encode(raw).decode().rstrip("="))
    return forms


def assert_absent(text: str | bytes, user: str, secret: str, where: str) -> None:
    haystack = text.decode(errors="replace") if isinstance(text, bytes) else text
    for form in encodings(user, secret):
        assert form not in haystack, f"the secret leaked into {where} (as {form!r})"


class Everything(logging.Handler):
    """Every record of every logger, formatted with its exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_debug_logs() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def canary_user(rabbitmq: str) -> Iterator[tuple[str, str]]:
    user, password = f"canary-user-{secrets.token_hex(3)}", f"canary{secrets.token_hex(12)}"
    subprocess.run(["rabbitmqctl", "add_user", user, password], capture_output=True, check=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", user, ".*", ".*", ".*"], capture_output=True, check=True
    )
    try:
        yield user, password
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True, check=False)


async def test_a_working_password_appears_nowhere(
    tmp_path: Path, canary_user: tuple[str, str], captured_debug_logs: Everything
) -> None:
    user, password = canary_user
    rig = Rig(tmp_path, f"amqp://{user}:{password}@127.0.0.1:5672/")
    await rig.start()
    try:
        await rig.publish(200)
        await rig.wait_all_delivered(timeout=60)
    finally:
        await rig.close()
    assert rig.verdict().ok
    assert_absent("\n".join(captured_debug_logs.lines), user, password, "the DEBUG log")
    for stored in (tmp_path / "home").rglob("*"):
        if stored.is_file():
            assert_absent(stored.read_bytes(), user, password, f"the file {stored.name}")


async def test_a_refused_password_appears_in_no_error_or_log(captured_debug_logs: Everything) -> None:
    user, password = "guest", f"canary{secrets.token_hex(12)}"
    transport = AmqpTransport(f"amqp://{user}:{password}@127.0.0.1:5672/", connect_timeout=5)
    with pytest.raises(TidingsError) as refused:
        await transport.connect()
    await transport.close()
    assert "ACCESS_REFUSED" in str(refused.value)
    assert_absent(str(refused.value) + repr(refused.value), user, password, "the error")
    assert_absent("\n".join(captured_debug_logs.lines), user, password, "the DEBUG log")


def test_the_cli_keeps_secrets_out_of_its_output(tmp_path: Path, rabbitmq: str) -> None:
    """dispatch (at DEBUG), doctor, backlog list and a TLS key password, all with canaries."""
    password, mgmt, key_password = (f"canary{secrets.token_hex(12)}" for _ in range(3))
    (tmp_path / "client.pem").write_text("not a certificate")
    config = tmp_path / "tidings.toml"
    config.write_text(
        '[bus]\nhome = "home"\nlog_level = "DEBUG"\n\n'
        f'[transports.rabbit]\nkind = "amqp"\nurl = "amqp://guest:{password}@127.0.0.1:5672/"\n'
        f'management_url = "http://guest:{mgmt}@127.0.0.1:15672"\nconnect_timeout = 3\n\n'
        '[connectors.rabbit]\ntransport = "rabbit"\nexchange = "canary"\n'
    )
    publish = tidings(tmp_path, "--config", str(config), "publish", "canary.test", "--body", "{}")
    assert publish.returncode == 0, publish.stderr
    outputs = [publish.stdout + publish.stderr]
    for args in (["backlog", "list"], ["doctor"]):
        done = tidings(tmp_path, "--config", str(config), *args)
        outputs.append(done.stdout + done.stderr)
    dispatch = subprocess.Popen(
        [*tidings_command(), "--config", str(config), "dispatch", "--log-level", "DEBUG"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=cli_env(),
    )
    try:
        out, _ = dispatch.communicate(timeout=4)
    except subprocess.TimeoutExpired:
        dispatch.terminate()
        out, _ = dispatch.communicate(timeout=20)
    outputs.append(out.decode())
    assert "ACCESS_REFUSED" in outputs[-1] or "refused" in outputs[-1]
    with pytest.raises(TidingsError) as bad_key:
        AmqpTransport(
            "amqps://127.0.0.1:5671/",
            cert_file=str(tmp_path / "client.pem"),
            key_file=str(tmp_path / "client.pem"),
            key_password=key_password,
        )._ssl_context()
    outputs.append(str(bad_key.value) + repr(bad_key.value))
    for text in outputs:
        for secret in (password, mgmt, key_password):
            assert_absent(text, "guest", secret, "CLI output")
    for stored in (tmp_path / "home").rglob("*"):
        if stored.is_file():
            for secret in (password, mgmt):
                assert_absent(stored.read_bytes(), "guest", secret, f"the file {stored.name}")


def tidings_command() -> list[str]:
    return [sys.executable, "-m", "tidings"]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


# -- every option that can carry a secret, covered; and one masking function for all of them ------

#: (transport kind, option) → how a canary is put into it: the option's value with CANARY in it
SECRET_OPTIONS = {
    ("amqp", "url"): {"url": "amqp://guest:CANARY@127.0.0.1:5672/", "connect_timeout": 3},
    ("amqp", "management_url"): {"management_url": "http://guest:CANARY@127.0.0.1:1/"},
    ("amqp", "key_password"): {
        "url": "amqps://127.0.0.1:5671/",
        "cert_file": "client.pem",
        "key_file": "client.pem",
        "key_password": "CANARY",
    },
    ("zeromq", "endpoint"): {"endpoint": "tcp://user:CANARY@127.0.0.1:1"},
    ("kafka", "url"): {"url": "kafka://user:CANARY@127.0.0.1:1", "connect_timeout": 2},
    # a wrong password the broker itself refuses (RabbitMQ's STOMP plugin answers with an ERROR frame)
    ("stomp", "url"): {"url": "stomp://guest:CANARY@127.0.0.1:61613/", "connect_timeout": 3},
    ("stomp", "amqp_url"): {
        "url": "stomp://guest:guest@127.0.0.1:61613/",
        "amqp_url": "amqp://guest:CANARY@127.0.0.1:5672/",
        "connect_timeout": 3,
    },
    ("kafka", "key_password"): {
        "url": "kafkas://127.0.0.1:1",
        "cert_file": "client.pem",
        "key_file": "client.pem",
        "key_password": "CANARY",
        "connect_timeout": 2,
    },
}
#: option names that say they may hold a secret, or a URL that may hold one
SECRET_NAMES = ("url", "urls", "endpoint", "endpoints", "password", "secret", "token", "servers")


def secret_bearing_options() -> set[tuple[str, str]]:
    from tidings.transport import TRANSPORTS, transport_plugin

    found = set()
    for kind in TRANSPORTS.names():
        settings = transport_plugin(kind).settings
        for name in settings.__struct_fields__ if settings is not None else ():
            if any(name == word or name.endswith(f"_{word}") for word in SECRET_NAMES):
                found.add((kind, name))
    return found


def test_every_secret_bearing_option_of_every_transport_is_covered() -> None:
    uncovered = secret_bearing_options() - set(SECRET_OPTIONS)
    assert not uncovered, f"add these to SECRET_OPTIONS, with a canary scenario: {sorted(uncovered)}"


def toml_value(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


@pytest.mark.parametrize("kind", ["amqp", "stomp", "kafka"])
def test_a_url_typed_without_its_scheme_keeps_its_password_out_of_output(tmp_path: Path, kind: str) -> None:
    """``guest:secret@host``: no scheme://, so no URL as the masking knew them; the CLI quoted it."""
    canary = f"canary{secrets.token_hex(12)}"
    (tmp_path / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.t]\nkind = "{kind}"\nurl = "guest:{canary}@127.0.0.1"\n\n'
        '[connectors.t]\ntransport = "t"\n'
    )
    for args in (["config", "show"], ["config", "check"], ["doctor"], ["dispatch", "--once"]):
        done = tidings(tmp_path, *args, env={"TIDINGS_DEBUG": "1"}, timeout=60)
        assert canary not in done.stdout + done.stderr, args
        assert "127.0.0.1" in done.stdout + done.stderr, args  # the host still says which it is


@pytest.mark.parametrize("option", list(SECRET_OPTIONS), ids=lambda o: ".".join(o))
def test_a_canary_in_each_option_appears_in_no_output(tmp_path: Path, option: tuple[str, str]) -> None:
    kind, _ = option
    canary = f"canary{secrets.token_hex(12)}"
    (tmp_path / "client.pem").write_text("not a certificate")
    options = {
        k: v.replace("CANARY", canary) if isinstance(v, str) else v for k, v in SECRET_OPTIONS[option].items()
    }
    lines = "".join(f"{key} = {toml_value(value)}\n" for key, value in options.items())
    (tmp_path / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\nlog_level = "DEBUG"\n\n[transports.t]\nkind = "{kind}"\n{lines}\n'
        '[connectors.t]\ntransport = "t"\nexchange = "canary"\n'
    )
    outputs = []
    assert tidings(tmp_path, "publish", "canary.test", "--body", "{}").returncode == 0
    for args in (["doctor"], ["dispatch", "--once", "--log-level", "DEBUG"], ["backlog", "list"]):
        done = tidings(tmp_path, *args, env={"TIDINGS_DEBUG": "1"}, timeout=120)
        outputs.append(done.stdout + done.stderr)
    for text in outputs:
        assert_absent(text, "guest", canary, f"the output of {option}")


@pytest.mark.parametrize(
    "management_url",
    [
        "http://guest:CANARY@127.0.0.1:1/",  # nothing listens
        "http://guest:CANARY@no-such-host.invalid:15672/",  # the name does not resolve
        "ftp://guest:CANARY@127.0.0.1:15672/",  # a scheme the client does not speak
    ],
)
def test_doctor_never_prints_the_management_password(
    tmp_path: Path, rabbitmq: str, management_url: str
) -> None:
    canary = f"canary{secrets.token_hex(12)}"
    (tmp_path / "tidings.toml").write_text(
        f'[transports.rabbit]\nkind = "amqp"\nurl = "{rabbitmq}"\n'
        f'management_url = "{management_url.replace("CANARY", canary)}"\n'
        '[connectors.rabbit]\ntransport = "rabbit"\nexchange = "canary.doctor"\n'
    )
    done = tidings(tmp_path, "doctor", timeout=60)
    assert "management API unreachable" in done.stderr, done.stderr
    assert "guest" not in done.stderr  # the URL is shown without its credentials, which go apart
    assert_absent(done.stdout + done.stderr, "guest", canary, "doctor's output")


async def test_a_handler_error_quoting_a_url_leaves_its_password_out_of_the_dead_letter(
    tmp_path: Path,
) -> None:
    """What a retry or a dead letter says stays on the broker for anyone who reads the queue, and
    ``tidings dead list`` printed it as it was: a handler's error that quotes a URL with its
    password put the password in both."""
    import asyncio

    from tests.transports.conformance import take_from
    from tidings import App, Bus
    from tidings.config import default_config

    canary = secrets.token_hex(8)
    bus = Bus(default_config(tmp_path))
    app = App("svc", transport="local", max_attempts=2, retry_schedule=[0.1])

    @app.subscribe("#")
    def handle(event: object) -> None:
        raise ConnectionError(f"cannot reach postgresql://svc:{canary}@db/jobs")

    await app.declare(bus)
    bus.publish("a.b", {"n": 1})
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(bus, stop))
    dispatching = asyncio.create_task(bus.dispatcher().run(stop))
    try:
        while app.counters.rejected < 1:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(running, dispatching)
    listed = tidings(tmp_path, "dead", "list", "svc")
    assert listed.returncode == 0, listed.stderr
    assert "postgresql://svc:***@db/jobs" in listed.stdout
    try:
        (letter,) = await take_from(bus, "local", "svc.dead", 1)
    finally:
        bus.close()
    stored = repr(letter.message.headers)
    assert "postgresql://svc:***@db/jobs" in stored
    for where, text in (("dead list", listed.stdout), ("the dead letter's headers", stored)):
        assert_absent(text, "svc", canary, where)
