"""`tidings doctor` finds missing queues, missing bindings and missing permissions, and says so."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import delete_amqp_topology
from tests.core.test_cli import tidings
from tidings import App, Bus
from tidings.config import load_config

RABBIT = "amqp://guest:guest@127.0.0.1:5672/"


def write(root: Path, transport: str, *, bindings: list[str], connector_exchange: str, queue: str) -> Path:
    config = root / "tidings.toml"
    config.write_text(
        f'[bus]\nhome = "home"\n\n{transport}\n'
        f'[connectors.out]\ntransport = "t"\nexchange = "{connector_exchange}"\n\n'
        f'[consumers.svc]\ntransport = "t"\nqueue = "{queue}"\nexchange = "{connector_exchange}"\n'
        f"bindings = {bindings!r}\n".replace("'", '"')
    )
    return config


def declare(config: Path, queue: str, exchange: str, patterns: list[str]) -> None:
    app = App(queue, transport="t", exchange=exchange)
    app.add_handler(patterns, lambda event: None)
    asyncio.run(app.declare(Bus(load_config(config))))


def doctor(root: Path) -> subprocess.CompletedProcess[str]:
    return tidings(root, "--config", str(root / "tidings.toml"), "doctor")


def test_embedded_queue_and_bindings(tmp_path: Path) -> None:
    transport = '[transports.t]\nkind = "embedded"\npath = "broker.db"\n'
    config = write(tmp_path, transport, bindings=["a.#", "b.*"], connector_exchange="ex", queue="svc.q")

    missing = doctor(tmp_path)
    assert missing.returncode == 6, missing.stderr
    assert "queue 'svc.q' does not exist" in missing.stderr and "Traceback" not in missing.stderr

    declare(config, "svc.q", "ex", ["a.#"])
    unbound = doctor(tmp_path)
    assert unbound.returncode == 6
    assert "not bound to exchange 'ex' with 'b.*'" in unbound.stderr
    assert "'a.#'" not in unbound.stderr

    declare(config, "svc.q", "ex", ["a.#", "b.*"])
    healthy = doctor(tmp_path)
    assert healthy.returncode == 0, healthy.stderr
    assert "ok" in healthy.stdout


@pytest.fixture
def rabbit_names(rabbitmq: str) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    exchange, queue = f"doctor.{tag}", f"doctor.{tag}.svc"
    yield exchange, queue
    asyncio.run(delete_amqp_topology(RABBIT, [queue], [exchange]))


@pytest.mark.rabbitmq
def test_rabbitmq_queue_bindings_and_permissions(tmp_path: Path, rabbit_names: tuple[str, str]) -> None:
    exchange, queue = rabbit_names
    transport = f'[transports.t]\nkind = "amqp"\nurl = "{RABBIT}"\n'
    config = write(tmp_path, transport, bindings=["a.#", "b.*"], connector_exchange=exchange, queue=queue)

    missing = doctor(tmp_path)
    assert missing.returncode == 6, missing.stderr
    assert f"queue '{queue}' does not exist" in missing.stderr

    declare(config, queue, exchange, ["a.#"])
    unbound = doctor(tmp_path)
    assert unbound.returncode == 6
    assert f"not bound to exchange '{exchange}' with 'b.*'" in unbound.stderr

    declare(config, queue, exchange, ["a.#", "b.*"])
    healthy = doctor(tmp_path)
    assert healthy.returncode == 0, healthy.stderr + healthy.stdout

    # an operator account that may read and configure but not write: publishing would be refused
    user, password = f"doctor-{secrets.token_hex(4)}", secrets.token_hex(12)
    subprocess.run(["rabbitmqctl", "add_user", user, password], capture_output=True, check=True)
    try:
        no_write = ["set_permissions", user, ".*", "^$", ".*"]
        for command in (["set_user_tags", user, "administrator"], no_write):
            subprocess.run(["rabbitmqctl", *command], capture_output=True, check=True)
        url = f"amqp://{user}:{password}@127.0.0.1:5672/"
        write(
            tmp_path,
            f'[transports.t]\nkind = "amqp"\nurl = "{url}"\n',
            bindings=["a.#", "b.*"],
            connector_exchange=exchange,
            queue=queue,
        )
        forbidden = doctor(tmp_path)
        assert forbidden.returncode == 6, forbidden.stderr
        assert f"may not publish to exchange '{exchange}'" in forbidden.stderr
        assert password not in forbidden.stderr + forbidden.stdout
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True, check=False)


@pytest.mark.rabbitmq
def test_without_the_management_api_bindings_are_not_checked_and_it_says_so(
    tmp_path: Path, rabbit_names: tuple[str, str]
) -> None:
    exchange, queue = rabbit_names
    transport = f'[transports.t]\nkind = "amqp"\nurl = "{RABBIT}"\nmanagement_url = "http://127.0.0.1:9"\n'
    config = write(tmp_path, transport, bindings=["a.#"], connector_exchange=exchange, queue=queue)
    declare(config, queue, exchange, ["a.#"])
    result = doctor(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bindings and permissions not checked: management API unreachable" in result.stderr
