"""fedora-messaging's own command line against tidings over the real RabbitMQ.

``fedora-messaging record`` is fedora-messaging's consumer (its Twisted client, its queue and
binding, its ``get_message``) writing what it takes to a file; ``fedora-messaging publish`` is its
publisher sending a file of messages. Each runs in its own process with a config file as a
Fedora deployment has one; tidings is on the other side: a connector sending, an App consuming.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import aiormq
import pytest
from fedora_messaging import message as fm

from tests.conftest import delete_amqp_topology
from tests.waiting import until
from tidings import App, Bus, Event
from tidings.config import load_config
from tidings.formats.fedora import fedora_event

pytestmark = pytest.mark.rabbitmq

FEDORA_MESSAGING = shutil.which("fedora-messaging", path=str(Path(sys.executable).parent))
PREFIX = "org.fedoraproject.test"
SCHEMA = "bodhi.update.comment.v1"


def comment(n: int) -> dict:
    user = {"name": "alice"}
    update = {
        "alias": f"FEDORA-2026-{n:010d}",
        "builds": [{"nvr": f"python-foo-1.{n}-1.fc43"}],
        "release": {"name": "F43"},
        "request": None,
        "status": "testing",
        "user": user,
    }
    text = f"works for me ({n}) — ✓"
    return {
        "comment": {
            "karma": 1,
            "text": text,
            "timestamp": "2026-11-30 12:00:00",
            "update": update,
            "user": user,
        }
    }


def fedora_messaging(root: Path, rabbitmq: str, *args: str) -> subprocess.Popen[str]:
    assert FEDORA_MESSAGING is not None, "fedora-messaging is not installed (pip install -e '.[peers]')"
    conf = root / "fedora-messaging.toml"
    conf.write_text(f'amqp_url = "{rabbitmq}"\ntopic_prefix = "{PREFIX}"\n')
    return subprocess.Popen(
        [FEDORA_MESSAGING, "--conf", str(conf), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def bus_on(root: Path, rabbitmq: str, exchange: str) -> Bus:
    (root / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.fedora]\nkind = "amqp"\nurl = "{rabbitmq}"\n\n'
        f'[connectors.fedora]\ntransport = "fedora"\nformat = "fedora-messaging"\nexchange = "{exchange}"\n'
        f'format_options = {{topic_prefix = "{PREFIX}"}}\n'
    )
    return Bus(load_config(root / "tidings.toml"))


async def declare_exchange(rabbitmq: str, exchange: str) -> None:
    connection = await aiormq.connect(rabbitmq)
    channel = await connection.channel()
    await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    await connection.close()


async def queue_exists(rabbitmq: str, queue: str) -> bool:
    connection = await aiormq.connect(rabbitmq)
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue, passive=True)
        return True
    except aiormq.exceptions.ChannelLockedResource:
        return True  # there, and exclusive to the consumer that declared it
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await connection.close()


async def test_fedora_messaging_record_takes_what_a_connector_sends(tmp_path: Path, rabbitmq: str) -> None:
    tag = uuid.uuid4().hex[:6]
    exchange, queue, recorded = f"fm.{tag}", f"fm.{tag}.record", tmp_path / "recorded.jsonl"
    bus = bus_on(tmp_path, rabbitmq, exchange)
    await declare_exchange(rabbitmq, exchange)  # before record binds its queue to it
    recorder = fedora_messaging(
        tmp_path, rabbitmq, "record", "--limit", "5", "--exchange", exchange, "--queue-name", queue,
        "--routing-key", f"{PREFIX}.bodhi.#", str(recorded),
    )  # fmt: skip
    stop = asyncio.Event()
    try:
        while not await queue_exists(rabbitmq, queue):
            assert recorder.poll() is None, recorder.communicate()[1]
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # its binding follows its queue
        sent = [
            bus.publish(fedora_event("bodhi.update.comment", comment(n), schema=SCHEMA, user=["alice"]))
            for n in range(5)
        ]
        dispatching = asyncio.create_task(bus.dispatcher().run(stop))
        _, err = await asyncio.wait_for(asyncio.to_thread(recorder.communicate), 60)
        stop.set()
        await dispatching
    finally:
        if recorder.poll() is None:
            recorder.kill()
        bus.close()
        await delete_amqp_topology(rabbitmq, [queue], [exchange])
    assert recorder.returncode == 0, err
    messages = [fm.loads(line)[0] for line in recorded.read_text().splitlines()]
    assert [type(m).__name__ for m in messages] == ["UpdateCommentV1"] * 5  # bodhi-messages' own class
    assert [m.id for m in messages] == [e.id for e in sent]
    assert [m.body for m in messages] == [comment(n) for n in range(5)]
    assert {m.topic for m in messages} == {f"{PREFIX}.bodhi.update.comment"}
    assert messages[0].usernames == ["alice"] and messages[0].app_name == "bodhi"


async def test_an_app_takes_what_fedora_messaging_publish_sends(tmp_path: Path, rabbitmq: str) -> None:
    tag = uuid.uuid4().hex[:6]
    exchange = f"fm.{tag}"
    bus = bus_on(tmp_path, rabbitmq, exchange)
    app = App(
        f"fm.{tag}.app",
        transport="fedora",
        exchange=exchange,
        format="fedora-messaging",
        format_options={"topic_prefix": PREFIX},
    )
    got: list[Event] = []
    app.add_handler(["bodhi.#"], got.append)
    await app.declare(bus)
    originals = [fm.get_class(SCHEMA)(body=comment(n), topic="bodhi.update.comment") for n in range(5)]
    (tmp_path / "messages.jsonl").write_text(fm.dumps(originals))
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(bus, stop))
    try:
        publisher = fedora_messaging(
            tmp_path, rabbitmq, "publish", "--exchange", exchange, str(tmp_path / "messages.jsonl")
        )
        _, err = await asyncio.wait_for(asyncio.to_thread(publisher.communicate), 60)
        assert publisher.returncode == 0, err
        await until(lambda: len(got) == 5, timeout=30)
    finally:
        stop.set()
        await running
        bus.close()
        await delete_amqp_topology(rabbitmq, [app.settings.queue], [exchange])
    assert [e.id for e in got] == [m.id for m in originals]
    assert [(e.topic, e.type, e.source) for e in got] == [("bodhi.update.comment", SCHEMA, "bodhi")] * 5
    assert [e.body for e in got] == [comment(n) for n in range(5)]
