"""An HTTP service that publishes per request: requests/s and p99 with and without the publish.

    python bench/bench_http.py [--seconds S] [--clients N]

A Starlette app under uvicorn (one process) answers ``POST /publish`` — ``await bus.apublish``
of a 1 KB event on the embedded default, answered once the event is on disk — and ``POST /noop``,
the same handler without the publish. A load generator in another process keeps ``--clients``
requests in flight (HTTP/1.1 keep-alive) for ``--seconds`` against each route in turn and
prints requests/s and latency percentiles of both, and their ratio. Results go to
``bench/results/http.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Report, percentile


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def load(url: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    """``clients`` keep-alive connections, each sending its next request when the last is answered.

    A minimal HTTP/1.1 client on asyncio streams: a general client library costs more per request
    than the service under test does, and would measure itself.
    """
    host, _, rest = url.removeprefix("http://").partition("/")
    address, _, port = host.partition(":")
    request = f"POST /{rest} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        reader, writer = await asyncio.open_connection(address, int(port))
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return len(latencies) / (time.perf_counter() - start), latencies


def serve(port: int, home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TIDINGS_BENCH_HOME": str(home),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.http_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("uvicorn did not start")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    port = free_port()
    server = serve(port, Path(tempfile.mkdtemp(prefix="tidings-http-")))
    report = Report("http")
    try:
        asyncio.run(load(f"http://127.0.0.1:{port}/noop", 4, 1.0))  # warm up both paths
        asyncio.run(load(f"http://127.0.0.1:{port}/publish", 4, 1.0))
        noop_rate, noop_lat = asyncio.run(load(f"http://127.0.0.1:{port}/noop", args.clients, args.seconds))
        pub_rate, pub_lat = asyncio.run(load(f"http://127.0.0.1:{port}/publish", args.clients, args.seconds))
    finally:
        server.terminate()
        server.wait(30)
    report.add(
        "HTTP handler publishing per request",
        pub_rate,
        "requests/s",
        peer="same handler, no publish",
        peer_value=noop_rate,
    )
    report.add(
        "  its p50",
        percentile(pub_lat, 0.5) * 1000,
        "ms",
        peer="no publish",
        peer_value=percentile(noop_lat, 0.5) * 1000,
    )
    report.add(
        "  its p99",
        percentile(pub_lat, 0.99) * 1000,
        "ms",
        peer="no publish",
        peer_value=percentile(noop_lat, 0.99) * 1000,
    )
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
