"""``tidings web`` and ``tidings serve`` with [web], as a user runs them: real processes and signals.

The processes read the real SQLite archive under the folder's .tidings/.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.clirun import started, tidings
from tests.web.conftest import free_port


def wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())  # type: ignore[union-attr]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def hold_a_stream(url: str) -> None:
    """An open /stream, as a browser keeps one: stopping must not wait for it to end."""

    def read() -> None:
        try:
            with httpx.stream("GET", url, timeout=30) as response:
                for _ in response.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.3)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_web_serves_until_signalled(tmp_path: Path, sig: int, code: int) -> None:
    port = free_port()
    process = started(tmp_path, "web", "--listen", f"127.0.0.1:{port}")
    try:
        wait_up(f"http://127.0.0.1:{port}/raw", process)
        assert "Live" in httpx.get(f"http://127.0.0.1:{port}/").text
        hold_a_stream(f"http://127.0.0.1:{port}/stream")
    finally:
        process.send_signal(sig)
        said = process.communicate(timeout=15)[1].decode()
        assert process.returncode == code, said
    assert "tidings: warning: no [archive] in the config: nothing archives events" in said  # an empty page


def test_serve_adds_the_page_when_web_is_configured(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "tidings.toml").write_text(f'[web]\nlisten = "127.0.0.1:{port}"\nadmin_token = "a"\n')
    process = started(tmp_path, "serve")
    try:
        wait_up(f"http://127.0.0.1:{port}/connectors", process)
        assert "local" in httpx.get(f"http://127.0.0.1:{port}/connectors").text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, process.stderr.read().decode()  # type: ignore[union-attr]


def test_bad_listen_addresses_and_keys_are_one_line_errors(tmp_path: Path) -> None:
    result = tidings(tmp_path, "web", "--listen", "nowhere")
    assert result.returncode == 3
    said = "'nowhere' is not HOST:PORT with a port from 1 to 65535 (127.0.0.1:8080)"
    assert result.stderr.strip() == f"tidings: error: --listen {said}"
    (tmp_path / "tidings.toml").write_text('[web]\nlisten = "127.0.0.1:1"\nadmin_tokn = "x"\n')
    result = tidings(tmp_path, "web")
    assert result.returncode == 3
    assert "admin_tokn" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = started(tmp_path, "web", "--listen", f"127.0.0.1:{port}")
        assert process.wait(30) == 3
        error = process.stderr.read().decode().strip()  # type: ignore[union-attr]
    assert error.startswith(f"tidings: error: cannot listen on 127.0.0.1:{port}")
    assert len(error.splitlines()) == 1


def test_config_show_masks_the_tokens(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text('[web]\nread_token = "r-secret"\nadmin_token = "a-secret"\n')
    result = tidings(tmp_path, "config", "show")
    assert result.returncode == 0, result.stderr
    assert "[web]" in result.stdout and "secret" not in result.stdout
    assert 'admin_token = "***"' in result.stdout


def stalled_stream(port: int) -> socket.socket:
    """A client that asks for the whole stream and never reads: the server's send waits for good."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /stream?last_event_id=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    return client


def test_sigterm_with_streams_that_never_read_stops_without_tracebacks(tmp_path: Path) -> None:
    """uvicorn cancels what is still running once the grace is over: a stream stuck sending
    wrote a whole traceback each into the service's log."""
    from tidings.archive.sqlite import SqliteArchive
    from tidings.bus import Bus
    from tidings.config import load_config
    from tidings.event import Event

    (tmp_path / "tidings.toml").write_text("[archive]\n")
    archive = SqliteArchive(Bus(load_config(tmp_path / "tidings.toml")).config.archive_path())
    archive.ingest([Event.create("big.event", {"pad": "x" * 400_000}) for _ in range(40)])
    archive.close()
    port = free_port()
    process = started(tmp_path, "web", "--listen", f"127.0.0.1:{port}")
    clients: list[socket.socket] = []
    try:
        wait_up(f"http://127.0.0.1:{port}/raw?rows_per_page=1", process)
        clients = [stalled_stream(port) for _ in range(3)]
        time.sleep(1)
    finally:
        process.send_signal(signal.SIGTERM)
        said = process.communicate(timeout=20)[1].decode()
        for client in clients:
            client.close()
    assert process.returncode == 0, said
    assert "Traceback" not in said and "Exception in ASGI application" not in said, said
