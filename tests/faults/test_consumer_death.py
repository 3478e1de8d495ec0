"""A message that kills its consumer, on every acknowledging transport: counted, then dead-lettered.

The handler calls ``os._exit`` on one event (no exception, no settle: the process is gone), and a
supervisor restarts the consumer each time it dies, as systemd or Kubernetes would. The rule
(``docs/reliability.md``): every death counts an attempt, durably; after ``max_attempts`` the message
goes to ``<queue>.dead`` with the reason "consumer died while handling it", and the messages behind
it are delivered without waiting longer than the broker's redelivery (the embedded broker's lease,
RabbitMQ's connection close).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import delete_amqp_topology
from tests.ledger import LINES
from tidings import Bus
from tidings.config import load_config
from tidings.transport import ATTEMPTS_HEADER, REASON_HEADER, QueueSpec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MAX_ATTEMPTS, OTHERS, LEASE = 3, 20, 1.0


def write_config(root: Path, kind: str, rabbitmq: str) -> tuple[Path, str]:
    exchange = f"death.{uuid.uuid4().hex[:8]}"
    if kind == "embedded":
        transport = f'kind = "embedded"\npath = "broker.db"\nlease = {LEASE}\n'
    else:
        transport = f'kind = "amqp"\nurl = "{rabbitmq}"\nheartbeat = 5\n'
    config = root / "tidings.toml"
    config.write_text(
        f'[bus]\nhome = "home"\n\n[transports.{kind}]\n{transport}\n'
        f'[connectors.{kind}]\ntransport = "{kind}"\nexchange = "{exchange}"\n'
    )
    return config, exchange


def seen_lines(path: Path) -> list[tuple[str, int, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # a torn last line: the process died writing it
            rows.append((parts[0], int(parts[1]), float(parts[2])))
    return rows


async def dead_letters(bus: Bus, kind: str, queue: str) -> list:
    transport = bus.make_transport(kind)
    await transport.connect()
    stream = transport.consume(QueueSpec(f"{queue}.dead"), prefetch=10)
    letters = []
    try:
        while True:
            delivery = await asyncio.wait_for(anext(stream), 2)  # type: ignore[arg-type]
            letters.append(delivery.message)
            await delivery.release()  # look, do not take
            break
    except TimeoutError:
        pass
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await transport.close()
    return letters


@pytest.mark.parametrize("kind", ["embedded", "amqp"])
def test_a_message_that_kills_its_consumer_is_dead_lettered_and_does_not_block_the_rest(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    rabbitmq = request.getfixturevalue("rabbitmq") if kind == "amqp" else ""
    config, exchange = write_config(tmp_path, kind, rabbitmq)
    bus = Bus(load_config(config))
    queue = f"{exchange}.svc"
    seen = tmp_path / "seen.txt"

    from tidings import App

    declared = App(queue, transport=kind, exchange=exchange)
    declared.subscribe("#")(lambda event: None)
    asyncio.run(declared.declare(bus))
    poison = bus.publish("death.poison", {"poison": True})
    others = [bus.publish(f"death.fine.{n}", {"n": n}) for n in range(OTHERS)]
    published_at = time.time()
    asyncio.run(bus.dispatcher().drain(timeout=60))

    deaths, letters = 0, []
    deadline = time.monotonic() + 120
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        while time.monotonic() < deadline:
            delivered = {event_id for event_id, _, _ in seen_lines(seen)}
            if {e.id for e in others} <= delivered:
                letters = asyncio.run(dead_letters(bus, kind, queue))
                if letters:
                    break
            consumer = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.faults.procs",
                    "consume-poisoned",
                    str(config),
                    kind,
                    queue,
                    str(seen),
                ],
                cwd=tmp_path,
                env=env,
                stderr=subprocess.DEVNULL,
            )
            try:
                code = consumer.wait(timeout=8)  # it dies on the poison, or waits for more once it is gone
            except subprocess.TimeoutExpired:
                consumer.terminate()
                code = consumer.wait(20)
            deaths += code == 17
    finally:
        if kind == "amqp":
            asyncio.run(delete_amqp_topology(rabbitmq, [queue], [exchange]))
        bus.close()

    rows = seen_lines(seen)
    poison_attempts = [attempt for event_id, attempt, _ in rows if event_id == poison.id]
    first_seen = {}
    for event_id, _, at in rows:
        first_seen.setdefault(event_id, at)
    delays = [first_seen[e.id] - published_at for e in others if e.id in first_seen]
    line = (
        f"[ledger] consumer death ({kind}, max_attempts {MAX_ATTEMPTS}): deaths {deaths}, poison tried "
        f"{poison_attempts}, dead-lettered {len(letters)}, others delivered {len(delays)}/{OTHERS}, "
        f"latest first delivery {max(delays, default=0):.1f} s after publish"
    )
    print(line)
    LINES.append(line)
    assert poison_attempts == list(range(1, MAX_ATTEMPTS + 1)), "each death counted once, durably"
    assert deaths == MAX_ATTEMPTS
    assert len(letters) == 1 and letters[0].message_id == poison.id
    assert "consumer died while handling it" in str(letters[0].headers[REASON_HEADER])
    assert letters[0].headers[ATTEMPTS_HEADER] == MAX_ATTEMPTS
    assert len(delays) == OTHERS, "a message behind the poison was never delivered"
    # each death costs at most a redelivery (RabbitMQ: at once; embedded: one lease) plus a restart
    assert max(delays) < MAX_ATTEMPTS * (LEASE + 8)
