"""When the outbox calls an event durable: only after the write-ahead log holding it is fsynced.

The outbox commits with ``synchronous=NORMAL`` and fsyncs the log itself, outside the
writer lock (see ``tidings.sqlite``). These tests watch that fsync: every event
``append`` returns for was committed before an fsync that finished before the return.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from pathlib import Path

import pytest

from tidings.errors import OutboxError
from tidings.event import Event
from tidings.outbox import Outbox, Settlement


class WatchedLog:
    """Wraps the outbox's LogSync: records which event ids were committed when each fsync ran."""

    def __init__(self, outbox: Outbox) -> None:
        self.real = outbox._log
        self.database = outbox.path
        self.covered: set[str] = set()
        self.syncs = 0
        self.fail_with: OSError | None = None
        self.lock = threading.Lock()
        outbox._log = self  # type: ignore[assignment]

    def sync(self) -> None:
        # what is committed when the fsync starts is what this fsync makes durable
        peek = sqlite3.connect(self.database)
        committed = {event_id for (event_id,) in peek.execute("SELECT id FROM events")}
        peek.close()
        if self.fail_with is not None:
            raise self.fail_with
        self.real.sync()
        with self.lock:
            self.covered |= committed
            self.syncs += 1

    def close(self) -> None:
        self.real.close()


def events(n: int, prefix: str = "d") -> list[Event]:
    return [Event.create(f"{prefix}.{i}", {"i": i}) for i in range(n)]


def test_sqlite_itself_does_not_sync_commits_the_outbox_does(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert outbox._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    watched = WatchedLog(outbox)
    outbox.append(events(1))
    assert watched.syncs == 1


def test_every_append_returns_after_an_fsync_that_covers_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    watched = WatchedLog(outbox)
    late: list[str] = []

    def publish(batch: list[Event]) -> None:
        for event in batch:
            outbox.append([event])
            if event.id not in watched.covered:
                late.append(event.id)

    batches = [events(50, f"t{n}") for n in range(6)]
    threads = [threading.Thread(target=publish, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert late == []
    assert watched.syncs < 300  # threads shared fsyncs (group commit), each still covered


def test_bookkeeping_is_not_synced_and_operator_changes_are(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append(events(3))
    watched = WatchedLog(outbox)
    outbox.ensure_connector("c")
    assert watched.syncs == 1  # a new cursor: durable
    outbox.settle("c", [Settlement(1, "delivered")], new_cursor=1, from_backlog=False)
    assert watched.syncs == 1  # settling: lost on power failure means sent again, never lost
    outbox.settle("c", [Settlement(2, "dead", 1, reason="no")], new_cursor=2, from_backlog=False)
    outbox.retry_dead("c")
    assert watched.syncs == 2  # an operator's retry is durable


def test_a_failed_fsync_is_an_error_and_publishing_again_stores_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    watched = WatchedLog(outbox)
    batch = events(2)
    watched.fail_with = OSError(errno.EIO, "Input/output error")
    with pytest.raises(OutboxError, match=r"did not confirm 2 event.*publish them again, with the same ids"):
        outbox.append(batch)
    watched.fail_with = None
    outbox.append(batch)  # the producer retries with the same ids
    assert [row.event().id for row in outbox.read_after(0, 10)] == [e.id for e in batch]
    assert {e.id for e in batch} <= watched.covered


def test_an_outbox_in_a_folder_it_cannot_write_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite says only "unable to open database file"; a read-only home (a mount, another user's
    folder) is the usual cause, and even a reader needs the log files beside the database.
    Whether the folder is writable is os.access's answer: as root only a read-only mount says no,
    which a test cannot make without privileges, so that answer is given here."""
    import os

    home = tmp_path / "home"
    (home / "outbox.db").mkdir(parents=True)  # SQLite cannot open it: "unable to open database file"
    with pytest.raises(OutboxError) as writable:
        Outbox(home / "outbox.db")
    assert "unable to open database file" in str(writable.value) and "not writable" not in str(writable.value)
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == home else real(path, mode))
    with pytest.raises(OutboxError) as read_only:
        Outbox(home / "outbox.db")
    assert f"(the folder {str(home)!r} is not writable: SQLite keeps its log files beside it)" in str(
        read_only.value
    )
