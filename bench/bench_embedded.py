"""Durable publishing, validation and end-to-end delivery on the embedded default.

    python bench/bench_embedded.py [--quick] [--runs N]

Each rate is the median of ``--runs`` runs (3 by default), each on fresh files: on a shared
virtual machine one run can be 20 % off the next.

Runs tidings and, where a peer exists on this machine, the peer in the same run:
fedora-messaging's ``api.publish`` (to the local RabbitMQ) for publishing and its
``Message.validate`` for schema checks. Results print as a table and go to
``bench/results/embedded.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BODY_1KB, Report, paced, percentile, rate, through_the_bus, timed
from tidings import App, Bus, Event
from tidings.config import default_config


def fresh_bus(root: Path) -> Bus:
    return Bus(default_config(root))


def one_publisher(root: Path, n: int) -> float:
    bus = fresh_bus(root)
    events = [bus.event("bench.one", BODY_1KB) for _ in range(n)]
    return rate(n, timed(lambda: [bus.publish(e) for e in events]))


def threads_publishing(root: Path, n_threads: int, each: int) -> float:
    bus = fresh_bus(root)
    batches = [[bus.event("bench.threads", BODY_1KB) for _ in range(each)] for _ in range(n_threads)]

    def run() -> None:
        workers = [threading.Thread(target=lambda b=b: [bus.publish(e) for e in b]) for b in batches]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return rate(n_threads * each, timed(run))


def _process_publisher(root: str, each: int, start: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    bus = fresh_bus(Path(root))
    events = [bus.event("bench.procs", BODY_1KB) for _ in range(each)]
    start.wait()
    for event in events:
        bus.publish(event)


def processes_publishing(root: Path, n_procs: int, each: int) -> float:
    fresh_bus(root).outbox.last_seq()  # create the files once, before the race
    start = multiprocessing.Event()
    procs = [
        multiprocessing.Process(target=_process_publisher, args=(str(root), each, start))
        for _ in range(n_procs)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every process import and build its events before the clock starts

    def run() -> None:
        start.set()
        for p in procs:
            p.join()

    return rate(n_procs * each, timed(run))


def batches(root: Path, n: int, size: int) -> float:
    bus = fresh_bus(root)
    groups = [[bus.event("bench.batch", BODY_1KB) for _ in range(size)] for _ in range(n // size)]
    return rate(n, timed(lambda: [bus.publish_many(g) for g in groups]))


def coroutines_publishing(root: Path, n_coroutines: int, each: int) -> float:
    """``n_coroutines`` coroutines of one event loop, each publishing ``each`` events in turn, as
    request handlers do: each event built when it is published (its id then follows the last one's)."""
    bus = fresh_bus(root)

    async def run() -> float:
        async def publisher() -> None:
            for _ in range(each):
                await bus.apublish("bench.coro", BODY_1KB)

        start = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(n_coroutines)))
        return time.perf_counter() - start

    return rate(n_coroutines * each, asyncio.run(run()))


def validation_us(n: int) -> float:
    bus = fresh_bus(Path(tempfile.mkdtemp()))
    body = {"message": "kernel build finished"}
    bus.schemas.validate("tidings.demo.v1", body)
    start = time.perf_counter()
    for _ in range(n):
        bus.schemas.validate("tidings.demo.v1", body)
    return (time.perf_counter() - start) / n * 1e6


def fedora_validation_us(n: int) -> float | None:
    try:
        from fedora_messaging import message
    except ImportError:
        return None
    msg = message.Message(topic="bench.validate", body={"message": "kernel build finished"})
    start = time.perf_counter()
    for _ in range(n):
        msg.validate()
    return (time.perf_counter() - start) / n * 1e6


async def end_to_end(root: Path, n: int, rate_limit: float | None) -> tuple[float, float, float]:
    """Publish n events (optionally paced) through outbox → dispatcher → broker → consumer."""
    bus = fresh_bus(root)
    app = App("bench", prefetch=500, concurrency=64)
    events = [bus.event("bench.e2e", BODY_1KB) for _ in range(n)]

    async def publish() -> None:
        if rate_limit is None:  # as fast as batches go
            for i in range(0, n, 100):
                await bus.apublish_many([fresh(e) for e in events[i : i + 100]])
        else:
            await paced(lambda i: bus.apublish(fresh(events[i])), n, rate_limit)

    elapsed, latencies = await through_the_bus(bus, app, n, publish)
    return rate(n, elapsed), percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000


def fresh(event: Event) -> Event:
    """A copy stamped now, so latency counts from the publish, not from when the batch was built."""
    return Event.create(event.topic, event.body, source=event.source)


def end_to_end_processes(root: Path, n: int) -> tuple[float, float, float]:
    """Publisher here, `tidings dispatch` and a consumer in their own processes, as deployed."""
    import json
    import os
    import subprocess

    root.mkdir(parents=True)
    config = root / "tidings.toml"
    config.write_text(
        '[bus]\nhome = "home"\n[transports.local]\nkind = "embedded"\npath = "broker.db"\n'
        'poll = 0.005\n[connectors.local]\ntransport = "local"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = root / "result.json"
    consumer = subprocess.Popen(
        [sys.executable, "-m", "bench.e2e_consumer", str(config), str(n), str(result)],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert consumer.stdout is not None and consumer.stdout.readline().strip() == b"ready"
    dispatcher = subprocess.Popen(
        [sys.executable, "-m", "tidings", "--config", str(config), "dispatch", "--log-level", "WARNING"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    bus = Bus.load(config)
    for i in range(0, n, 100):
        bus.publish_many([bus.event("bench.procs", BODY_1KB) for _ in range(min(100, n - i))])
    consumer.wait(600)
    dispatcher.terminate()
    dispatcher.wait(30)
    stats = json.loads(result.read_text())
    return (
        stats["rate"],
        percentile(stats["latencies"], 0.5) * 1000,
        percentile(stats["latencies"], 0.99) * 1000,
    )


def fedora_publish_rate(n: int) -> float | None:
    """fedora-messaging's blocking api.publish to the local RabbitMQ, if it is running."""
    import os
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return None
    conf = Path(tempfile.mkdtemp()) / "fm.toml"
    conf.write_text(
        'amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2F"\npublish_exchange = "amq.topic"\n'
        'passive_declares = false\n[client_properties]\napp = "bench"\n'
    )
    os.environ["FEDORA_MESSAGING_CONF"] = str(conf)
    from fedora_messaging import api, message

    msgs = [message.Message(topic="bench.fedora", body=BODY_1KB) for _ in range(n)]
    api.publish(msgs[0])  # connect outside the clock
    return rate(n - 1, timed(lambda: [api.publish(m) for m in msgs[1:]]))


def median_of(runs: int, work: Path, measure: Callable[[Path], float]) -> float:
    """``measure(folder)`` ``runs`` times, each in a fresh folder; the median, with the spread printed."""
    results = sorted(measure(work / f"run{n}") for n in range(runs))
    if runs > 1:
        print(f"    runs: {', '.join(f'{r:,.0f}' for r in results)}", flush=True)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="runs per rate; the median is reported")
    args = parser.parse_args()
    runs = max(1, args.runs)
    scale = 0.2 if args.quick else 1.0
    n = int(5000 * scale)
    report = Report("embedded")
    work = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    fedora = fedora_publish_rate(int(1000 * scale))
    peer = {"peer": "fedora-messaging api.publish", "peer_value": fedora} if fedora else {}
    report.add(
        "durable publish, 1 publisher",
        median_of(runs, work / "one", lambda root: one_publisher(root, n)),
        "events/s",
        target=">= 4,000",
        **peer,
    )
    eight_rows = median_of(runs, work / "eight", lambda root: batches(root, n * 2, 8))
    report.add("durable publish, one thread committing 8 at a time", eight_rows, "events/s")
    report.add(
        "durable publish, 8 threads",
        median_of(runs, work / "threads", lambda root: threads_publishing(root, 8, n // 4)),
        "events/s",
        target=">= 0.5 x one thread's 8-row commits",
        peer="one thread, 8-row commits",
        peer_value=eight_rows,
    )
    report.add(
        "durable publish, 4 processes together",
        median_of(runs, work / "procs", lambda root: processes_publishing(root, 4, n // 2)),
        "events/s",
        target=">= 4,000",
        **peer,
    )
    hundreds = median_of(runs, work / "batch", lambda root: batches(root, n * 4, 100))
    report.add("durable publish, batches of 100", hundreds, "events/s", target=">= 40,000", **peer)
    report.add(
        "durable publish, 64 coroutines (apublish)",
        median_of(runs, work / "coro", lambda root: coroutines_publishing(root, 64, n * 4 // 64)),
        "events/s",
        target=">= 30,000 and >= 0.5 x batches of 100",
        peer="batches of 100",
        peer_value=hundreds,
    )
    fm_validate = fedora_validation_us(int(2000 * scale))
    report.add(
        "schema validation per event",
        validation_us(int(100_000 * scale)),
        "µs",
        target="<= 20",
        **({"peer": "fedora-messaging Message.validate", "peer_value": fm_validate} if fm_validate else {}),
    )
    e2e_rate = median_of(runs, work / "e2e", lambda root: asyncio.run(end_to_end(root, n * 4, None))[0])
    report.add("embedded end to end, one process", e2e_rate, "events/s", target=">= 10,000")
    procs_rate = median_of(runs, work / "e2e-procs", lambda root: end_to_end_processes(root, n * 4)[0])
    report.add(
        "embedded end to end, dispatcher + consumer processes", procs_rate, "events/s", target=">= 10,000"
    )
    _, p50, p99 = asyncio.run(end_to_end(work / "lat", int(3000 * scale), 1000.0))
    report.add("embedded end-to-end latency p50 @1,000/s", p50, "ms")
    report.add("embedded end-to-end latency p99 @1,000/s", p99, "ms")
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
