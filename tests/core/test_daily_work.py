"""The small parts behind daily work: activity lines, backlog notices, inbox retention, config lookup."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.activity import Activity, BacklogNotices
from tidings.config import find_config
from tidings.consumer import Context, _takes_context
from tidings.inbox import Inbox


def test_an_activity_line_sums_what_grew_and_the_latencies() -> None:
    counts = {"handled": 0, "retried": 0}
    activity = Activity("consumer q", lambda: counts, latency_label="published→settled")
    assert activity.line() is None  # nothing happened: nothing said
    counts["handled"] += 3
    for seconds in (0.002, 0.004, 0.010):
        activity.note(seconds)
    assert activity.line() == "consumer q: handled 3; published→settled p50 4.0 ms, max 10.0 ms over 3"
    counts["retried"] += 1
    assert activity.line() == "consumer q: handled 0, retried 1"  # only what grew since the last line
    assert activity.line() is None


async def test_activity_is_reported_each_interval_and_at_the_stop(caplog: pytest.LogCaptureFixture) -> None:
    counts = {"delivered": 0}
    activity = Activity("connector c", lambda: counts)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="tidings.activity")
    reporter = asyncio.create_task(activity.report_every(0.05, stop))
    counts["delivered"] = 5
    await asyncio.sleep(0.12)
    counts["delivered"] = 7
    stop.set()
    await reporter
    lines = [r.getMessage() for r in caplog.records if r.name == "tidings.activity"]
    assert lines == ["connector c: delivered 5", "connector c: delivered 2"]


def test_a_backlog_notice_is_given_once_per_topic_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    notices = BacklogNotices("local")
    caplog.set_level(logging.WARNING, logger="tidings.activity")
    for _ in range(3):
        notices.kept("a.b", "unroutable: no queue bound for 'a.b'", 5)
    notices.kept("a.b", "nacked: the broker refused it", 5)  # another reason is news
    notices.kept("c.d", "unroutable: no queue bound for 'c.d'", 5)
    notices.delivered("a.b")  # it went through: a later refusal is news again
    notices.kept("a.b", "unroutable: no queue bound for 'a.b'", 25)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 4
    assert said[0].startswith("connector local: an event of 'a.b' is kept in the backlog, next try in 5s")
    assert "start a consumer bound to it" in said[0]
    assert "start a consumer" not in said[1]  # the hint is for unroutable events
    assert "next try in 25s" in said[3]


def test_an_ordered_connector_says_its_events_wait_only_behind_what_holds_the_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notices = BacklogNotices("local", ordered=True)
    caplog.set_level(logging.WARNING, logger="tidings.activity")
    notices.kept("a.b", "unroutable: no queue bound for 'a.b'", 5)
    notices.kept("a.b", "nacked: the broker refused it", 5)
    unroutable, nacked = (r.getMessage() for r in caplog.records)
    assert "wait too" not in unroutable  # it reached no queue: the events after it go on
    assert "the connector keeps its order: the events after it wait too" in nacked


def test_backlog_notices_remember_a_bounded_number_of_topics() -> None:
    notices = BacklogNotices("local", limit=10)
    for n in range(1000):
        notices.kept(f"topic.{n}", "unroutable: x", 1)
    assert len(notices._told) <= 11


# -- the inbox stays bounded ---------------------------------------------------------------------


def test_the_inbox_forgets_what_is_older_than_the_retention_in_batches(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox.db")
    with inbox.transaction("svc", "warm-up"):
        pass
    db = inbox._db
    db.executemany(
        "INSERT INTO inbox VALUES (?, ?, ?)", [("svc", f"old-{n}", 1000.0 + n) for n in range(2500)]
    )
    db.executemany("INSERT INTO inbox VALUES (?, ?, ?)", [("svc", f"new-{n}", 5000.0) for n in range(10)])
    assert inbox.purge(older_than=4000.0, batch=1000) == 2500
    assert inbox.seen("svc", "new-3") and not inbox.seen("svc", "old-3")
    assert inbox.size() == 11  # the ten new ones and the warm-up (handled now)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=40))
def test_an_inbox_purged_as_it_goes_stays_within_one_retention(
    tmp_path_factory: object, arrivals: list[int]
) -> None:
    """Whatever comes in, after each purge only the records of the last retention period remain."""
    path = tmp_path_factory.mktemp("inbox") / "inbox.db"  # type: ignore[attr-defined]
    inbox = Inbox(path)
    retention, clock = 10.0, 0.0
    for step, count in enumerate(arrivals):
        clock = float(step)
        inbox._db.executemany(
            "INSERT INTO inbox VALUES (?, ?, ?)", [("svc", f"{step}-{n}", clock) for n in range(count)]
        )
        inbox.purge(older_than=clock - retention, batch=64)
        recent = sum(arrivals[max(0, step - int(retention)) : step + 1])
        assert inbox.size() == recent
    inbox.close()


# -- handler signatures ---------------------------------------------------------------------------


def test_a_defaulted_second_parameter_is_not_a_context() -> None:
    name = "x"
    assert not _takes_context(lambda e, n=name: None)
    assert not _takes_context(lambda e: None)
    assert _takes_context(lambda e, ctx: None)

    def annotated(event: object, ctx: Context | None = None) -> None: ...

    def annotated_plain(event: object, ctx: Context = None) -> None:  # type: ignore[assignment]
        ...

    assert _takes_context(annotated_plain)
    assert not _takes_context(annotated)  # Optional[Context] with a default: only if asked plainly


# -- where the config is found ------------------------------------------------------------------------


def test_the_system_wide_config_comes_after_every_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIDINGS_CONFIG", raising=False)
    system = tmp_path / "etc" / "tidings.toml"
    system.parent.mkdir()
    system.write_text("")
    here = tmp_path / "here"
    here.mkdir()
    assert find_config(cwd=here, system=system) == (system, "system-wide")
    (here / "tidings.toml").write_text("")
    assert find_config(cwd=here, system=system) == (here / "tidings.toml", "found in this folder")
    monkeypatch.setenv("TIDINGS_CONFIG", "env.toml")
    assert find_config(cwd=here, system=system) == (Path("env.toml"), "$TIDINGS_CONFIG")
    assert find_config("given.toml", cwd=here, system=system) == (Path("given.toml"), "--config")
    monkeypatch.delenv("TIDINGS_CONFIG")
    (here / "tidings.toml").unlink()
    system.unlink()
    assert find_config(cwd=here, system=system)[0] is None


async def test_a_consumer_with_an_inbox_purges_it_when_it_starts(tmp_path: Path) -> None:
    from tidings import App, Bus
    from tidings.config import parse_config

    bus = Bus(parse_config({"bus": {"inbox_retention": 60.0}}, base_dir=tmp_path))
    inbox = bus.inbox()
    inbox._db.executemany(
        "INSERT INTO inbox VALUES (?, ?, ?)", [("svc", f"old-{n}", 1000.0) for n in range(3000)]
    )
    with inbox.transaction("svc", "recent"):
        pass
    app = App("svc", inbox=True)

    @app.subscribe("a.#")
    def handle(event: object) -> None: ...

    stop = asyncio.Event()
    running = asyncio.create_task(app.run(bus, stop))
    deadline = asyncio.get_running_loop().time() + 15
    while inbox.size() > 1 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert inbox.size() == 1 and inbox.seen("svc", "recent")
    bus.close()
