"""LAVA's own client, lavacli, listening to a stream tidings publishes.

``lavacli events listen`` and ``lavacli events wait`` ask the server's XML-RPC API where its event
socket is (``scheduler.get_publisher_event_socket``), subscribe to it and print or wait for what
comes (lavacli/commands/events.py). The API is played here by a small XML-RPC server, the way a
LAVA server answers: version 2020.08 (from 2020.09 on lavacli reads the websocket instead) and the
socket as LAVA's ``EVENT_SOCKET`` setting names it, ``tcp://*:<port>``. Everything else is real:
lavacli in its own process, and tidings' dispatcher sending `lava` events through a ZeroMQ connector.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest

from tests.transports.test_zeromq import free_port
from tidings import Bus
from tidings.config import load_config
from tidings.formats.lava import lava_event

LAVACLI = shutil.which("lavacli", path=str(Path(sys.executable).parent))

# in CI a missing lavacli fails (lavacli() says why) rather than skipping
pytestmark = pytest.mark.skipif(
    LAVACLI is None and not os.environ.get("CI"), reason="lavacli is not installed"
)


class _QuietHandler(SimpleXMLRPCRequestHandler):
    def log_message(self, *_: object) -> None:  # not the test's output
        pass


@dataclass
class Lab:
    """A LAVA server as lavacli sees it: its XML-RPC API and a dispatcher sending its events."""

    uri: str
    port: int
    bus: Bus


def start_api(event_port: int) -> SimpleXMLRPCServer:
    server = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=_QuietHandler, logRequests=False)
    server.register_function(lambda: "2020.08", "system.version")
    server.register_function(lambda: f"tcp://*:{event_port}", "scheduler.get_publisher_event_socket")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    port = free_port()
    (tmp_path / "tidings.toml").write_text(
        '[bus]\nhome = "home"\n\n'
        f'[transports.lab]\nkind = "zeromq"\nendpoint = "tcp://127.0.0.1:{port}"\nmode = "bind"\n\n'
        '[connectors.lab]\ntransport = "lab"\nformat = "lava"\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    api = start_api(port)
    stop = asyncio.Event()
    dispatching = asyncio.create_task(bus.dispatcher().run(stop))
    try:
        yield Lab(f"http://127.0.0.1:{api.server_address[1]}/RPC2", port, bus)
    finally:
        stop.set()
        await dispatching
        bus.close()
        api.shutdown()
        api.server_close()


class Lavacli:
    """lavacli in its own process, its output read line by line by one thread (a read given up
    after a timeout must not lose the line it was about to get)."""

    def __init__(self, uri: str, *args: str) -> None:
        assert LAVACLI is not None, "lavacli is not installed (pip install -e '.[peers]')"
        self.process = subprocess.Popen(
            [LAVACLI, "--uri", uri, "events", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put("")  # it ended

    async def line(self, timeout: float = 10.0) -> str:
        """Its next line; TimeoutError if none comes in time."""
        try:
            line = await asyncio.to_thread(self._lines.get, timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if not line:
            raise AssertionError(f"lavacli ended: {self.process.wait()} {self.process.stderr.read()}")  # type: ignore[union-attr]
        return line

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


TESTJOB = {"job": 4242, "device": "x15-01", "state": "Finished", "health": "Complete", "description": "boot"}
DEVICE = {"device": "x15-01", "device_type": "x15", "state": "Idle", "health": "Good"}
WORKER = {"hostname": "worker-7", "state": "Online", "health": "Active"}
LOG = {"job": 4242, "message": "kernel booted"}


async def test_lavacli_listen_prints_what_the_dispatcher_sends(lab: Lab) -> None:
    bus = lab.bus
    listener = Lavacli(lab.uri, "listen")
    try:
        assert await listener.line() == f"Listening to tcp://127.0.0.1:{lab.port}"
        # ZeroMQ's slow joiner: lavacli's SUB may not be attached yet; send until it prints one
        probe = None
        for _ in range(100):
            bus.publish(lava_event("device", DEVICE, username="lavaserver"))
            try:
                probe = await listener.line(timeout=0.2)
                break
            except TimeoutError:
                continue
        assert probe is not None and probe.endswith(
            "org.linaro.validation.device lavaserver - [x15-01] <x15> state=Idle health=Good"
        )
        events = [
            lava_event("testjob", TESTJOB, username="lavaserver"),
            lava_event("worker", WORKER, username="admin"),
            lava_event("event", LOG, username="lavaserver"),
        ]
        for event in events:
            bus.publish(event)
        lines = []
        while len(lines) < 3:
            line = await listener.line()
            if ".device " not in line:  # probes still on their way
                lines.append(line)
        stamps = [line.split(" ", 1)[0] for line in lines]
        assert [line.split(" ", 1)[1] for line in lines] == [
            "org.linaro.validation.testjob lavaserver - [4242] <x15-01> state=Finished health=Complete"
            " (boot)",
            "org.linaro.validation.worker admin - [worker-7] state=Online health=Active",
            "org.linaro.validation.event lavaserver - [4242] message=kernel booted",
        ]
        # the second frame lavacli prints is the event's own time, as LAVA writes it
        assert stamps == [event.time.isoformat() for event in events]
    finally:
        listener.stop()


async def test_lavacli_wait_returns_on_the_job_it_waits_for(lab: Lab) -> None:
    bus = lab.bus
    waiter = Lavacli(lab.uri, "wait", "job", "4242", "--state", "FINISHED", "--health", "COMPLETE")
    try:
        assert (await waiter.line()).startswith("Listening to ")
        # lavacli compares the job as the string given on its command line: the display id, as
        # older servers and multinode sub-jobs send it ("4242", "4242.1")
        finished = dict(TESTJOB, job="4242")
        running = dict(finished, state="Running", health="Unknown")
        other_job = dict(finished, job="4243")
        for _ in range(40):  # none of these ends the wait (2 s: its SUB attaches meanwhile)
            for data in (running, other_job):
                bus.publish(lava_event("testjob", data, username="lavaserver"))
            await asyncio.sleep(0.05)
        assert waiter.process.poll() is None, "lavacli stopped waiting on an event it does not wait for"
        for _ in range(100):  # the one it waits for, until it returns
            bus.publish(lava_event("testjob", finished, username="lavaserver"))
            if waiter.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert waiter.process.wait(timeout=5) == 0
    finally:
        waiter.stop()
