"""The Archive protocol, one suite for every store (SQLite and PostgreSQL: the ``archive`` fixture)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tidings.archive import Archive, Archived, Query, SearchFields
from tidings.archive.rows import encode_cursor, micros
from tidings.errors import InvalidQuery
from tidings.event import Event

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NONE = SearchFields()


def event(topic: str, minutes: float = 0, **fields: object) -> Event:
    body = fields.pop("body", {"text": topic})
    return Event.create(topic, body, time=T0 + timedelta(minutes=minutes), **fields)  # type: ignore[arg-type]


def archived(topic: str, minutes: float = 0, fields: SearchFields = NONE, **kw: object) -> Archived:
    return Archived(0, event(topic, minutes, **kw), fields)


def topics(items: list[Archived]) -> list[str]:
    return [a.event.topic for a in items]


@pytest.fixture
def sample(archive: Archive) -> Archive:
    archive.ingest(
        [
            archived(
                "org.fedoraproject.prod.bodhi.update.comment",
                1,
                SearchFields(("alice",), ("kernel",), (), "alice"),
            ),
            archived(
                "org.fedoraproject.prod.bodhi.update.request.stable", 2, SearchFields(("bob",), ("bash",))
            ),
            archived(
                "org.fedoraproject.prod.copr.build.end",
                3,
                SearchFields(("carol",), (), ("c1",), "carol"),
                source="copr",
            ),
            archived("datawarehouse.checkout.new", 4, body={"id": "c1", "tree": "mainline"}),
            archived("datawarehouse.build.done", 5, body={"id": "b1", "tree": "stable"}),
            archived(
                "bug.modify:status", 6, SearchFields(("dave",), ("Fedora", "kernel")), visibility="private"
            ),
        ]
    )
    return archive


def test_ingest_is_idempotent_on_event_ids(archive: Archive) -> None:
    events = [event(f"a.b{i}", i) for i in range(5)]
    assert archive.ingest(events) == 5
    assert archive.ingest([*events, events[0]]) == 0
    assert archive.ingest([events[0], events[0], event("a.new")]) == 1
    assert archive.last_seq() == 6
    assert len(archive.search(Query(), limit=100).items) == 6


def test_an_event_comes_back_whole(archive: Archive) -> None:
    original = Event.create(
        "a.b",
        {"wide": 10**30, "nested": {"list": [1, 2.5, None, "é"]}},
        headers={"h": 1, "s": "x"},
        type="t.v1",
    )
    fields = SearchFields(("u",), ("p",), ("c",), "agent")
    archive.ingest([Archived(0, original, fields)])
    got = archive.get(original.id)
    assert got is not None and got.event == original and got.fields == fields and got.seq == 1
    assert archive.get("no-such-id") is None


def test_every_query_field(sample: Archive) -> None:
    def find(**kw: object) -> list[str]:
        return topics(sample.search(Query(**kw), order="asc").items)  # type: ignore[arg-type]

    assert find(topics=["datawarehouse.checkout.new"]) == ["datawarehouse.checkout.new"]
    assert find(topics=["org.fedoraproject.*.bodhi.#"]) == [
        "org.fedoraproject.prod.bodhi.update.comment",
        "org.fedoraproject.prod.bodhi.update.request.stable",
    ]
    assert len(find(not_topics=["org.fedoraproject.#"])) == 2
    assert find(categories=["copr"]) == ["org.fedoraproject.prod.copr.build.end"]
    assert find(categories=["datawarehouse"]) == ["datawarehouse.checkout.new", "datawarehouse.build.done"]
    assert find(users=["alice", "carol"]) == [
        "org.fedoraproject.prod.bodhi.update.comment",
        "org.fedoraproject.prod.copr.build.end",
    ]
    assert find(packages=["kernel"]) == ["org.fedoraproject.prod.bodhi.update.comment"]
    assert find(containers=["c1"]) == ["org.fedoraproject.prod.copr.build.end"]
    assert find(agents=["alice"]) == ["org.fedoraproject.prod.bodhi.update.comment"]
    assert find(sources=["copr"]) == ["org.fedoraproject.prod.copr.build.end"]
    assert find(contains=["mainline", "nothing-like-it"]) == ["datawarehouse.checkout.new"]
    # both ends included, as datanommer's between(timestamp, start, end)
    assert find(start=T0 + timedelta(minutes=4), end=T0 + timedelta(minutes=5)) == [
        "datawarehouse.checkout.new",
        "datawarehouse.build.done",
    ]
    assert find(start=T0 + timedelta(minutes=4), end=T0 + timedelta(minutes=4.5)) == [
        "datawarehouse.checkout.new"
    ]
    # the lists combine with AND
    assert find(topics=["datawarehouse.#"], contains=["stable"]) == ["datawarehouse.build.done"]
    assert find(users=["alice"], packages=["bash"]) == []


def test_private_events_only_when_asked_for(sample: Archive) -> None:
    assert "bug.modify:status" not in topics(sample.search(Query()).items)
    assert sample.search(Query(users=["dave"])).items == []
    assert sample.numbered(Query()).total == 5
    assert topics(sample.search(Query(users=["dave"], include_private=True)).items) == ["bug.modify:status"]
    assert sample.numbered(Query(include_private=True)).total == 6
    private_id = sample.search(Query(include_private=True), limit=1).items[0].event.id
    assert sample.get(private_id) is None
    assert sample.get(private_id, include_private=True) is not None
    assert all(a.event.visibility == "public" for a in sample.since(0, Query()))


def test_orders_and_ties_by_seq(archive: Archive) -> None:
    same = [event(f"t.e{i}", 0) for i in range(4)]
    archive.ingest(same)
    assert topics(archive.search(Query(), order="desc").items) == ["t.e3", "t.e2", "t.e1", "t.e0"]
    assert topics(archive.search(Query(), order="asc").items) == ["t.e0", "t.e1", "t.e2", "t.e3"]


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_keyset_pages_walk_everything_once(archive: Archive, order: str) -> None:
    archive.ingest([event(f"k.e{i}", i // 3) for i in range(47)])  # ties in time across page edges
    seen: list[int] = []
    cursor = None
    while True:
        page = archive.search(Query(), limit=5, cursor=cursor, order=order)  # type: ignore[arg-type]
        seen += [a.seq for a in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == list(range(1, 48)) and len(seen) == 47


def test_keyset_paging_neither_skips_nor_repeats_while_events_arrive(archive: Archive) -> None:
    archive.ingest([event(f"k.old{i}", i) for i in range(60)])
    before = {a.event.id for a in archive.search(Query(), limit=1000).items}
    stop = threading.Event()

    def insert() -> None:
        n = 0
        while not stop.is_set():  # newer events, and some in the middle of the walked range
            archive.ingest([event(f"k.new{n}", 1000 + n), event(f"k.mid{n}", 30.5)])
            n += 1

    writer = threading.Thread(target=insert)
    writer.start()
    try:
        seen: list[str] = []
        cursor = None
        while True:
            page = archive.search(Query(topics=["k.#"]), limit=7, cursor=cursor)
            seen += [a.event.id for a in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen)), "an event was shown twice"
    assert before <= set(seen), "an event that was there from the start was skipped"


def test_a_bad_cursor_is_one_error(archive: Archive) -> None:
    with pytest.raises(InvalidQuery):
        archive.search(Query(), cursor="not-a-cursor!")
    with pytest.raises(InvalidQuery):
        archive.numbered(Query(), page=0)


FIRST, LAST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize("time_us", [micros(LAST) + 1, micros(FIRST) - 1, 2**62, -(2**62)])
def test_a_cursor_past_what_a_time_can_be_is_one_error(archive: Archive, time_us: int) -> None:
    # a tampered cursor: PostgreSQL's search turned its time into a datetime (an OverflowError)
    with pytest.raises(InvalidQuery, match="is not one this archive gave out"):
        archive.search(Query(), cursor=encode_cursor(time_us, 1))


def test_the_first_and_the_last_month_a_time_can_be_in_are_stored_and_found(archive: Archive) -> None:
    """December 9999's partition has no month after it to end at (PostgreSQL: MAXVALUE);
    computing January 10000 was a ValueError that stopped the dispatcher on every start."""
    far = [
        Event.create("far.first", {"n": 1}, time=FIRST),
        Event.create("far.december", {"n": 2}, time=datetime(9999, 12, 15, tzinfo=UTC)),
        Event.create("far.last", {"n": 3}, time=LAST),
    ]
    assert archive.ingest(far) == 3
    assert topics(archive.search(Query(), order="asc").items) == ["far.first", "far.december", "far.last"]
    december = Query(start=datetime(9999, 12, 1, tzinfo=UTC))
    assert topics(archive.search(december, order="asc").items) == ["far.december", "far.last"]
    assert topics(archive.search(Query(end=datetime(2, 1, 1, tzinfo=UTC))).items) == ["far.first"]
    for original in far:
        got = archive.get(original.id)
        assert got is not None and got.event == original
    for order in ("asc", "desc"):  # cursors at both ends of time are ones the archive gave out
        page, seen = archive.search(Query(), limit=1, order=order), []  # type: ignore[arg-type]
        while True:
            seen += topics(page.items)
            if page.next_cursor is None:
                break
            page = archive.search(Query(), limit=1, cursor=page.next_cursor, order=order)  # type: ignore[arg-type]
        assert sorted(seen) == ["far.december", "far.first", "far.last"]


def test_numbered_pages_as_datagrepper(sample: Archive) -> None:
    first = sample.numbered(Query(), page=1, rows_per_page=2)
    assert (first.total, first.pages, len(first.items)) == (5, 3, 2)
    assert topics(first.items) == ["datawarehouse.build.done", "datawarehouse.checkout.new"]
    last = sample.numbered(Query(), page=3, rows_per_page=2, order="asc")
    assert topics(last.items) == ["datawarehouse.build.done"]
    assert sample.numbered(Query(), page=9, rows_per_page=2).items == []


def test_since_resumes_in_seq_order(sample: Archive) -> None:
    assert [a.seq for a in sample.since(0, Query(include_private=True))] == [1, 2, 3, 4, 5, 6]
    assert [a.seq for a in sample.since(3, Query(topics=["datawarehouse.#"]))] == [4, 5]
    assert [a.seq for a in sample.since(0, Query(), limit=2)] == [1, 2]
    late = event("late.arrival", -1000)  # an old event archived now gets a new seq
    sample.ingest([late])
    assert [a.event.id for a in sample.since(6, Query())] == [late.id]
    assert sample.last_seq() == 7


def test_since_on_sqlite_walks_by_seq_whatever_the_filter(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without statistics SQLite would take a topic's or a category's index and sort all its
    events by seq on every look of every live stream; by seq, it reads only what is new."""
    from pathlib import Path

    from tidings.archive.sqlite import SqliteArchive

    store = SqliteArchive(Path(str(tmp_path)) / "archive.db")
    asked: list[tuple[str, list[object]]] = []
    read = store._read
    monkeypatch.setattr(
        store, "_read", lambda sql, params, **kw: asked.append((sql, params)) or read(sql, params, **kw)
    )
    for query in (Query(topics=["org.fedoraproject.*.bodhi.#"]), Query(topics=["a.b"]), Query(sources=["x"])):
        store.since(10, query)
        sql, params = asked[-1]
        plan = " ".join(row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert "USING INTEGER PRIMARY KEY (rowid>?)" in plan and "TEMP B-TREE" not in plan, plan
    store.close()


def test_purge_forgets_old_events_in_batches_and_never_reuses_a_seq(archive: Archive) -> None:
    archive.ingest(
        [event(f"p.e{i}", i, visibility="private" if i % 7 == 0 else "public") for i in range(2500)]
    )
    archive.ingest([Archived(0, event("p.tagged", 1), SearchFields(("u",), ("p",)))])
    assert archive.purge(T0 + timedelta(minutes=2400)) == 2401
    left = archive.search(Query(include_private=True), limit=1000, order="asc").items
    assert len(left) == 100 and left[0].event.topic == "p.e2400"
    assert archive.search(Query(users=["u"])).items == []
    assert archive.last_seq() == 2501
    archive.ingest([event("p.after", 5000)])
    assert archive.search(Query(topics=["p.after"])).items[0].seq == 2502


def test_the_estimate_is_an_estimate_or_none(sample: Archive) -> None:
    page = sample.search(Query(topics=["datawarehouse.#"]))
    assert page.estimated_total is None or page.estimated_total >= 0


def test_a_pattern_of_many_hashes_is_answered_at_once(archive: Archive) -> None:
    # a regular expression per '#' backtracked for minutes on SQLite, with the store locked
    archive.ingest([archived("org.fedoraproject.prod.bodhi.update.comment.a.b.c.d.e.f.g.h")])
    started = time.monotonic()
    assert archive.search(Query(topics=["#." * 60 + "zzz"]), limit=1).items == []
    found = archive.search(Query(topics=["#." * 60 + "h"]), limit=1).items
    assert topics(found) == ["org.fedoraproject.prod.bodhi.update.comment.a.b.c.d.e.f.g.h"]
    assert time.monotonic() - started < 5


def test_since_stops_at_a_budget_of_bytes_and_always_reads_one(archive: Archive) -> None:
    """A live stream reads a batch at a time: of large events, as many as the budget holds."""
    archive.ingest([archived(f"big.{n}", n, body={"pad": "x" * 100_000}) for n in range(5)])
    assert [a.event.topic for a in archive.since(0, Query(), max_bytes=250_000)] == [
        "big.0",
        "big.1",
        "big.2",
    ]
    assert [a.event.topic for a in archive.since(0, Query(), max_bytes=1)] == ["big.0"]
    assert len(archive.since(0, Query(), limit=2, max_bytes=10**9)) == 2
    assert [a.event.topic for a in archive.since(3, Query(), max_bytes=150_000)] == ["big.3", "big.4"]
