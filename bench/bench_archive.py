"""The archive: ingest rate vs a plain INSERT loop, and queries on 1,000,000 events vs OFFSET + count(*).

    .venv/bin/python bench/bench_archive.py                      # SQLite, then PostgreSQL if it is up
    .venv/bin/python bench/bench_archive.py --store sqlite --quick

Ingest: events with their search fields (Fedora-, CKI- and Bugzilla-like), ``batch`` per
``ingest`` call, into a fresh archive; the baseline is the loop anyone would write first — one
``INSERT`` per event into a table of (id, topic, time, body), committed per batch on the same
durable connection. Queries, on ``--events`` archived events spread over 60 days: a topic and a
one-day window, a topic pattern (``org.fedoraproject.*.bodhi.#``), and page 2,000 of 50 rows,
each as a keyset page (what /v2/search does) and as datagrepper pages (OFFSET and count(*)).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Report, percentile, rate
from tidings.archive import Archive, Archived, Query, SearchFields
from tidings.event import Event, dumps
from tidings.sqlite import connect

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 60
FEDORA_APPS = {
    "bodhi": ["update.comment", "update.request.stable", "update.edit", "buildroot_override.tag"],
    "copr": ["build.start", "build.end", "chroot.start"],
    "buildsys": ["build.state.change", "task.state.change", "tag", "untag"],
    "pagure": ["pull-request.new", "pull-request.comment.added", "git.receive"],
    "fas": ["user.update", "group.member.sponsor"],
    "ci": ["koji-build.test.complete", "koji-build.test.running"],
}
CKI = ["checkout.new", "checkout.updated", "build.new", "build.updated", "test.new", "test.updated"]
BUGZILLA = ["bug.create", "bug.modify:status", "bug.modify:assigned_to,status", "comment.create"]
USERS = [f"user{i}" for i in range(2000)]
PACKAGES = [f"pkg{i}" for i in range(5000)]


def topics() -> list[str]:
    fedora = [f"org.fedoraproject.prod.{app}.{what}" for app, whats in FEDORA_APPS.items() for what in whats]
    return fedora + [f"datawarehouse.{what}" for what in CKI] + BUGZILLA


def make_event(rng: random.Random, i: int, total: int, all_topics: list[str]) -> Archived:
    """Event ``i`` of ``total``: times mostly in arrival order (a live bus), a few minutes of jitter."""
    topic = rng.choice(all_topics)
    moment = START + timedelta(seconds=DAYS * 86400 * i / total + rng.uniform(-300, 300))
    user, package = rng.choice(USERS), rng.choice(PACKAGES)
    body = {"id": i, "user": user, "package": package, "comment": "x" * rng.randint(50, 400)}
    event = Event(topic, body, source=topic.split(".")[0], time=moment, visibility="public")
    if topic.startswith("org.fedoraproject"):
        fields = SearchFields((user,), (package,), (), user)
    elif topic.startswith("bug"):
        fields = SearchFields((user,), ("Fedora", package))
    else:
        fields = SearchFields(containers=(f"checkout-{i // 50}",))
    return Archived(0, event, fields)


def batches(total: int, size: int, seed: int = 1) -> Iterator[list[Archived]]:
    rng, all_topics = random.Random(seed), topics()
    for start in range(0, total, size):
        yield [make_event(rng, i, total, all_topics) for i in range(start, min(total, start + size))]


# -- ingest --------------------------------------------------------------------------------------


def ingest_rate(archive: Archive, count: int, batch: int) -> float:
    prepared = list(batches(count, batch, seed=7))
    started = time.perf_counter()
    for events in prepared:
        archive.ingest(events)
    return rate(count, time.perf_counter() - started)


def insert_loop_rate(path: Path, count: int, batch: int) -> float:
    db = connect(path, schema="CREATE TABLE events (id TEXT PRIMARY KEY, topic TEXT, time REAL, body TEXT)")
    prepared = list(batches(count, batch, seed=7))
    started = time.perf_counter()
    for events in prepared:
        db.execute("BEGIN")
        for a in events:
            e = a.event
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?)",
                (e.id, e.topic, e.time.timestamp(), dumps(e.body).decode()),
            )
        db.execute("COMMIT")
    seconds = time.perf_counter() - started
    db.close()
    return rate(count, seconds)


# -- queries -------------------------------------------------------------------------------------


def fill(archive: Archive, total: int) -> float:
    started = time.perf_counter()
    for n, events in enumerate(batches(total, 5000)):
        archive.ingest(events)
        if n % 20 == 19:
            print(f"  ... {(n + 1) * 5000:,} events", flush=True)
    analyze = getattr(archive, "analyze", None)
    if analyze is not None:
        analyze()
    return time.perf_counter() - started


def timings(fn: Callable[[random.Random], Any], runs: int) -> list[float]:
    rng = random.Random(3)
    fn(rng)  # warm the cache: a query's first run reads its pages from disk
    found = []
    for _ in range(runs):
        started = time.perf_counter()
        fn(rng)
        found.append((time.perf_counter() - started) * 1000)
    return found


def window(rng: random.Random) -> tuple[datetime, datetime]:
    day = START + timedelta(days=rng.randint(0, DAYS - 2), hours=rng.randint(0, 23))
    return day, day + timedelta(days=1)


def deep_cursors(archive: Archive, query: Query, depth: int, count: int) -> list[str]:
    """Cursors of pages ``depth`` (of 50 rows) and a few after it: walked once, not timed."""
    cursor: str | None = None
    found = []
    for page in range(depth + count):
        result = archive.search(query, limit=50, cursor=cursor)
        cursor = result.next_cursor
        if cursor is None:
            break
        if page >= depth - 1:
            found.append(cursor)
    return found


def query_figures(report: Report, label: str, archive: Archive, runs: int, deep_page: int) -> None:
    all_topics = topics()

    def topic_window(rng: random.Random) -> Query:
        start, end = window(rng)
        return Query(topics=[rng.choice(all_topics)], start=start, end=end)

    pattern = Query(topics=["org.fedoraproject.*.bodhi.#"])
    cases: list[tuple[str, Callable[[random.Random], Any], Callable[[random.Random], Any]]] = [
        (
            "topic + 1-day window, 50 rows",
            lambda rng: archive.search(topic_window(rng), limit=50),
            lambda rng: archive.numbered(topic_window(rng), page=1, rows_per_page=50),
        ),
        (
            "pattern org.fedoraproject.*.bodhi.#, 50 rows",
            lambda rng: archive.search(pattern, limit=50),
            lambda rng: archive.numbered(pattern, page=1, rows_per_page=50),
        ),
    ]
    cursors = deep_cursors(archive, Query(), deep_page, 20)
    cases.append(
        (
            f"page {deep_page:,} of 50 rows, everything",
            lambda rng: archive.search(Query(), limit=50, cursor=rng.choice(cursors)),
            lambda rng: archive.numbered(Query(), page=deep_page + rng.randint(0, 19), rows_per_page=50),
        )
    )
    pattern_cursors = deep_cursors(archive, pattern, min(deep_page, 300), 20)
    if pattern_cursors:
        cases.append(
            (
                f"page {min(deep_page, 300) + 1} of 50 rows, the pattern",
                lambda rng: archive.search(pattern, limit=50, cursor=rng.choice(pattern_cursors)),
                lambda rng: archive.numbered(pattern, page=min(deep_page, 300) + 1, rows_per_page=50),
            )
        )
    for what, keyset, offset in cases:
        fast, slow = timings(keyset, runs), timings(offset, max(10, runs // 10))
        for q in (0.5, 0.99):
            report.add(
                f"{label} {what} p{int(q * 100)}",
                percentile(fast, q),
                "ms",
                peer="OFFSET + count(*)",
                peer_value=percentile(slow, q),
                target="≤ 20 ms" if q == 0.99 else "",
            )


# -- stores --------------------------------------------------------------------------------------


def run_sqlite(report: Report, args: argparse.Namespace) -> None:
    from tidings.archive.sqlite import SqliteArchive

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        archive = SqliteArchive(Path(folder) / "ingest.db")
        ours = ingest_rate(archive, args.ingest, args.batch)
        archive.close()
        baseline = insert_loop_rate(Path(folder) / "loop.db", args.ingest, args.batch)
        report.add(
            f"sqlite ingest, batches of {args.batch}",
            ours,
            "events/s",
            peer="plain INSERT loop",
            peer_value=baseline,
            target="≥ 20,000",
        )
        archive = SqliteArchive(Path(folder) / "big.db")
        seconds = fill(archive, args.events)
        report.add(
            f"sqlite fill {args.events:,} events, batches of 5,000", rate(args.events, seconds), "events/s"
        )
        query_figures(report, "sqlite", archive, args.runs, args.deep)
        archive.close()


def run_postgres(report: Report, args: argparse.Namespace) -> None:
    import psycopg

    from tidings.archive.postgres import PostgresArchive

    schema = f"tidings_bench_{int(time.time())}"
    try:
        archive = PostgresArchive(PG_URL, schema=schema)
        ours = ingest_rate(archive, args.ingest, args.batch)
        report.add(f"postgresql ingest, batches of {args.batch}", ours, "events/s")
        archive.close()
        with psycopg.connect(PG_URL, autocommit=True) as db:
            db.execute(f'DROP SCHEMA "{schema}" CASCADE')
        archive = PostgresArchive(PG_URL, schema=schema)
        seconds = fill(archive, args.events)
        report.add(f"postgresql fill {args.events:,} events", rate(args.events, seconds), "events/s")
        query_figures(report, "postgresql", archive, args.runs, args.deep)
        archive.close()
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as db:
            db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="100,000 events, fewer runs")
    parser.add_argument("--dir", default=None, help="where the SQLite files go (default: the system's temp)")
    args = parser.parse_args()
    args.events = 100_000 if args.quick else 1_000_000
    args.ingest = 20_000 if args.quick else 100_000
    args.batch, args.runs = 500, 50 if args.quick else 200
    args.deep = 200 if args.quick else 2000
    report = Report("archive")
    if args.store in ("sqlite", "both"):
        run_sqlite(report, args)
    if args.store in ("postgresql", "both"):
        try:
            run_postgres(report, args)
        except ImportError:
            print("postgresql: psycopg is not installed (pip install 'tidings[postgresql]')")
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
