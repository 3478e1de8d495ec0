"""A LAVA lab end to end: its ZeroMQ stream relayed through a filter to RabbitMQ and to a reactor
rule, with the RabbitMQ connection blackholed for 10 s in the middle.

The ledger: of the events that pass the filter, RabbitMQ's consumer gets every one (lost 0; a
resend after the cut may bring duplicates, counted); none of the others is relayed; the rule's
command ran once per matching event (nothing crashed, so nothing twice).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from tests.conftest import delete_amqp_topology
from tests.faultproxy import FaultProxy
from tests.faults.rig import RABBIT
from tests.ledger import check, scaled
from tidings import App, Bus, Event
from tidings.config import parse_config
from tidings.formats.lava import LavaFormat, lava_event
from tidings.reactor import reactor_apps
from tidings.relay import Relay

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

EVENTS = scaled(5000, 50000)
CUT = 10.0
TESTJOB = "org.linaro.validation.testjob"
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lab_config(root: Path, endpoint: str, rabbit_url: str, exchange: str) -> Bus:
    return Bus(
        parse_config(
            {
                "bus": {"home": "home"},
                "transports": {
                    "lava": {"kind": "zeromq", "endpoint": endpoint, "hwm": 0},
                    "local": {"kind": "embedded"},
                    "rabbit": {"kind": "amqp", "url": rabbit_url, "heartbeat": 2},
                },
                "connectors": {
                    "local": {"transport": "local"},
                    "rabbit": {
                        "transport": "rabbit",
                        "exchange": exchange,
                        "retry_schedule": [0.5, 1, 2],
                        "max_attempts": 1000,
                    },
                },
                "relays": {
                    "jobs": {
                        "transport": "lava",
                        "format": "lava",
                        "bindings": [TESTJOB],
                        "prefetch": 1000,
                        "concurrency": 64,
                        "filter": [
                            {"field": "data.device_type", "equals": "x15"},
                            {"field": "data.status", "equals": "Complete"},
                        ],
                    }
                },
                "reactor": {
                    "workers": 8,
                    "rules": {
                        "finished": {
                            "bindings": [TESTJOB],
                            "command": [sys.executable, "-c", RECORD, str(root / "ran.txt"), "$id"],
                        }
                    },
                },
            },
            base_dir=root,
        )
    )


def jobs() -> list[Event]:
    kinds = [("Complete", "x15"), ("Incomplete", "x15"), ("Complete", "bbb")]
    return [
        lava_event("testjob", {"job": n, "status": kinds[n % 3][0], "device_type": kinds[n % 3][1]})
        for n in range(EVENTS)
    ]


async def test_a_lava_lab_loses_nothing_that_passes_while_rabbitmq_is_cut(
    tmp_path: Path, rabbitmq: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    exchange, queue = f"lab-{tag}", f"lab-watch-{tag}"
    proxy = await FaultProxy(5672).start()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.asyncio.Context()
    server = context.socket(zmq.PUB)
    server.setsockopt(zmq.SNDHWM, 0)
    server.bind(endpoint)
    bus = lab_config(tmp_path, endpoint, proxy.url(), exchange)
    received: list[str] = []
    watcher = App(queue, transport="direct", exchange=exchange, prefetch=500)

    @watcher.subscribe("#")
    async def seen(event: Event) -> None:
        received.append(event.id)

    direct = Bus(
        parse_config({"transports": {"direct": {"kind": "amqp", "url": RABBIT}}}, base_dir=tmp_path / "w")
    )
    relaying = Relay(bus, "jobs")
    stop = asyncio.Event()
    await watcher.declare(direct)
    tasks = [
        asyncio.create_task(watcher.run(direct, stop)),
        asyncio.create_task(relaying.app().run(bus, stop)),
        *(asyncio.create_task(app.run(bus, stop)) for app in reactor_apps(bus)),
        asyncio.create_task(bus.dispatcher().run(stop)),
    ]
    fmt = LavaFormat()
    probe = lava_event("testjob", {"job": -1, "status": "Complete", "device_type": "x15"})
    try:
        for _ in range(400):  # ZeroMQ's slow joiner: until the relay is attached
            if probe.id in received:
                break
            await server.send_multipart(fmt.encode(probe).frames or [])
            await asyncio.sleep(0.05)
        sent = jobs()
        passing = [e.id for e in sent if e.body["status"] == "Complete" and e.body["device_type"] == "x15"]
        for n, event in enumerate(sent):
            await server.send_multipart(fmt.encode(event).frames or [])
            if n == len(sent) // 3:
                proxy.blackhole()  # RabbitMQ unreachable mid-run: the connector's events wait
                asyncio.get_running_loop().call_later(CUT, proxy.heal)
            if n % 100 == 0:
                await asyncio.sleep(0.05)  # a lab's pace, not a flood
        ran = tmp_path / "ran.txt"
        for _ in range(1200):
            commands = ran.read_text().split() if ran.exists() else []
            if set(passing) <= set(received) and set(passing) <= set(commands):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.close(linger=0)
        context.term()
        await proxy.stop()
        bus.close()
        direct.close()
        await delete_amqp_topology(RABBIT, [queue, f"{queue}.dead"], [exchange])
    got = [i for i in received if i != probe.id]
    verdict = check(passing, passing, got)
    print(verdict.line(f"LAVA lab: zeromq → relay (filter) → RabbitMQ cut {CUT:g} s"))
    assert verdict.lost == 0 and verdict.unexpected == 0  # unexpected: an event the filter refused
    commands = [i for i in ran.read_text().split() if i != probe.id]
    assert sorted(commands) == sorted(passing)  # once per matching event
    assert relaying.counters.filtered == len(sent) - len(passing)
