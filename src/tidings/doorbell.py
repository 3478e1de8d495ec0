"""A doorbell: a writer that committed wakes the readers waiting on the same file, in any process.

Processes that share a SQLite file (the outbox, the embedded broker) would otherwise learn
of each other's commits only by polling. Each reader that waits registers a socket: a
Unix datagram socket in the abstract namespace (no file, no path-length limit), named by a
marker file in the doorbell's folder (``<database>.doorbell/``). A writer, after its commit,
sends one empty datagram to every registered socket: the readers' event loops wake at once.

It is only ever a shortcut: a ring that is lost (a reader's buffer full means it is woken
already; a reader that registers a moment late) costs the reader its next poll, never a
message. A marker left by a dead process is removed by the next ring that finds no one
listening behind it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path


class Doorbell:
    """The doorbell of one database file."""

    def __init__(self, database: str | Path) -> None:
        self.folder = Path(f"{database}.doorbell")
        self._socket: socket.socket | None = None
        self._name = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the folder's listing, kept until the folder changes (a stat per ring, not a listing)
        self._listeners: list[str] = []
        self._seen_mtime = -1
        self._sender: socket.socket | None = None

    # -- a reader ---------------------------------------------------------------------------

    def listen(self, wake: Callable[[], None], *, others_only: bool = False) -> None:
        """Call ``wake()`` (on the running loop) whenever a writer rings; until :meth:`close`.

        ``others_only``: only rings from other processes (this one tells its own readers itself).
        """
        if self._socket is not None:
            return
        name = uuid.uuid4().hex
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(_address(name))
            sock.setblocking(False)
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / name).touch()
        except OSError:
            sock.close()
            return  # no doorbell: the reader polls, as it would anyway
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._drain, sock, wake, _me() if others_only else b"")
        self._socket, self._name, self._loop = sock, name, loop

    @staticmethod
    def _drain(sock: socket.socket, wake: Callable[[], None], ignored: bytes) -> None:
        rung = False
        try:
            while True:
                rung |= sock.recv(32, socket.MSG_DONTWAIT) != ignored
        except (BlockingIOError, OSError):
            pass
        if rung:
            wake()

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        sock, self._socket = self._socket, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()
        (self.folder / self._name).unlink(missing_ok=True)

    # -- a writer ---------------------------------------------------------------------------

    def ring(self) -> None:
        """Wake every reader waiting on this database (callable from any thread)."""
        listeners = self._current_listeners()
        if listeners and self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        for name in listeners:
            try:
                self._sender.sendto(_me(), _address(name))  # type: ignore[union-attr]
            except BlockingIOError:
                continue  # its buffer is full of rings: it is awake already
            except (ConnectionRefusedError, FileNotFoundError):
                (self.folder / name).unlink(missing_ok=True)  # its process is gone
                self._seen_mtime = -1
            except OSError:
                continue

    def _current_listeners(self) -> list[str]:
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except OSError:
            return []  # nobody ever listened
        if mtime != self._seen_mtime:
            self._listeners = [entry.name for entry in os.scandir(self.folder)]
            self._seen_mtime = mtime
        return self._listeners


def _me() -> bytes:
    """What a ring says: who rang (a reader that listens for other processes ignores its own)."""
    return str(os.getpid()).encode()


def _address(name: str) -> bytes:
    return b"\0tidings-" + name.encode()
