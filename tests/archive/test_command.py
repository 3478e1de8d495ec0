"""``tidings archive`` as a user runs it: a real process on the embedded default, exit codes, output."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.archive.conftest import PG_URL
from tests.clirun import tidings
from tests.core.test_first_hour import said, start, stop, until
from tidings.archive import Query
from tidings.archive.sqlite import SqliteArchive

EVERYTHING = Query()


def archived(home: Path, query: Query = EVERYTHING) -> list[str]:
    archive = SqliteArchive(home / ".tidings" / "archive.db")
    try:
        return [a.event.topic for a in archive.search(query, limit=1000, order="asc").items]
    finally:
        archive.close()


def publish(cwd: Path, topic: str, *extra: str) -> None:
    done = tidings(cwd, "publish", topic, "--body", '{"id": "x1"}', *extra)
    assert done.returncode == 0, done.stderr


def test_without_an_archive_section_it_says_so_in_one_line(tmp_path: Path) -> None:
    done = tidings(tmp_path, "archive", "--once")
    assert done.returncode == 3
    assert done.stderr.strip() == (
        "tidings: error: no [archive] section in the config: add one (see docs/archive.md)"
    )


def test_once_archives_the_outbox_with_search_fields_and_counts(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text("[archive]\n")
    publish(tmp_path, "datawarehouse.checkout.new")
    publish(tmp_path, "bodhi.update.comment", "--header", "fedora_messaging_user_alice=true")
    publish(tmp_path, "secret.thing", "--private")
    done = tidings(tmp_path, "archive", "--once")
    assert (done.returncode, done.stdout.strip()) == (0, "archived 3 event(s)"), done.stderr
    assert archived(tmp_path) == ["datawarehouse.checkout.new", "bodhi.update.comment"]
    assert archived(tmp_path, Query(users=["alice"])) == ["bodhi.update.comment"]
    assert archived(tmp_path, Query(include_private=True))[-1] == "secret.thing"
    again = tidings(tmp_path, "archive", "--once")
    assert again.stdout.strip() == "archived 0 event(s)"
    # the other connector still has them: the archive took its own copy, the outbox keeps theirs
    backlog = tidings(tmp_path, "backlog", "list")
    assert "archive" in backlog.stdout and "local" in backlog.stdout


def test_once_counts_what_the_archive_had_already_apart(tmp_path: Path) -> None:
    """Killed between the archive's commit and the outbox cursor's, the archive is sent those
    events again: it stores them once, and says so rather than counting them archived."""
    import sqlite3

    (tmp_path / "tidings.toml").write_text("[archive]\n")
    for topic in ("a.one", "a.two", "a.three"):
        publish(tmp_path, topic)
    assert tidings(tmp_path, "archive", "--once").stdout.strip() == "archived 3 event(s)"
    with sqlite3.connect(tmp_path / ".tidings" / "outbox.db") as outbox:
        assert outbox.execute("UPDATE cursors SET seq = 1 WHERE connector = 'archive'").rowcount == 1
    publish(tmp_path, "a.four")
    done = tidings(tmp_path, "archive", "--once")
    assert done.stdout.strip() == "archived 1 event(s), 2 already there", done.stderr
    assert archived(tmp_path) == ["a.one", "a.two", "a.three", "a.four"]


def test_runs_until_sigterm_archiving_what_is_published_meanwhile(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text("[archive]\n")
    process = start(tmp_path, "archive")
    until(lambda: "archiving from the outbox" in said(tmp_path, "archive"), 20, "the archive to start")
    publish(tmp_path, "a.live.one")
    until(
        lambda: (tmp_path / ".tidings" / "archive.db").exists() and archived(tmp_path) == ["a.live.one"],
        20,
        "it",
    )
    time.sleep(1.2)  # an activity line a second
    assert stop(process, signal.SIGTERM) == 0, said(tmp_path, "archive")
    assert "connector archive: delivered 1" in said(tmp_path, "archive")
    process = start(tmp_path, "archive")
    until(lambda: "archiving" in said(tmp_path, "archive"), 20, "the archive to start again")
    time.sleep(1.0)  # the line comes before the signal handlers are in place: let it start
    assert stop(process, signal.SIGINT) == 130, said(tmp_path, "archive")
    assert "Traceback" not in said(tmp_path, "archive")


def test_serve_archives_too(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text("[archive]\n")
    process = start(tmp_path, "serve")
    try:
        until(lambda: "serving" in said(tmp_path, "serve"), 20, "serve to start")
        publish(tmp_path, "a.served")
        until(
            lambda: (tmp_path / ".tidings" / "archive.db").exists() and archived(tmp_path) == ["a.served"],
            20,
            "it",
        )
    finally:
        assert stop(process, signal.SIGTERM) == 0, said(tmp_path, "serve")


def test_from_a_broker_queue_acked_after_the_commit(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.local]\nkind = "embedded"\npath = "broker.db"\n'
        '[archive]\nfrom = [{transport = "local", queue = "archive", bindings = ["ci.#"]}]\n'
    )
    first = tidings(tmp_path, "archive", "--once")  # declares and binds the archive's queue
    assert first.stdout.strip() == "archived 0 event(s)", first.stderr
    publish(tmp_path, "ci.build.done")
    publish(tmp_path, "other.thing")
    assert tidings(tmp_path, "dispatch", "--once").returncode == 0
    done = tidings(tmp_path, "archive", "--once")
    assert done.stdout.strip() == "archived 1 event(s)", done.stderr
    assert archived(tmp_path) == ["ci.build.done"]
    assert tidings(tmp_path, "archive", "--once").stdout.strip() == "archived 0 event(s)"  # all acked


def test_a_broken_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text('[archive]\nstore = "postgresql"\n')
    done = tidings(tmp_path, "archive", "--once")
    assert done.returncode == 3 and "needs url" in done.stderr and len(done.stderr.splitlines()) == 1


def test_the_doctor_checks_the_archive(tmp_path: Path) -> None:
    """It said everything was ok while [archive]'s PostgreSQL did not answer (then archive exited 6)."""
    (tmp_path / "tidings.toml").write_text(
        '[archive]\nstore = "postgresql"\nurl = "postgresql://t:Pw7x@127.0.0.1:1/x"\n'
    )
    away = tidings(tmp_path, "doctor")
    assert away.returncode == 6 and "archive: FAILED cannot connect to the archive" in away.stderr, (
        away.stderr
    )
    assert "Pw7x" not in away.stdout + away.stderr
    (tmp_path / "tidings.toml").write_text("[archive]\n")
    assert "archive: sqlite — last seq 0" in tidings(tmp_path, "doctor").stdout


def test_postgresql_store_and_its_url_masked(tmp_path: Path, pg_schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{pg_schema}"')
    url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"
    (tmp_path / "tidings.toml").write_text(f'[archive]\nstore = "postgresql"\nurl = "{url}"\n')
    publish(tmp_path, "pg.one")
    done = tidings(tmp_path, "archive", "--once")
    assert done.stdout.strip() == "archived 1 event(s)", done.stderr
    with psycopg.connect(url) as db:
        assert db.execute("SELECT topic FROM events").fetchall() == [("pg.one",)]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tidings.toml").write_text(
        '[archive]\nstore = "postgresql"\nurl = "postgresql://u:s3cret@127.0.0.1:1/x"\n'
    )
    publish(bad, "pg.two")
    failed = tidings(bad, "archive", "--once")
    assert failed.returncode == 6, failed.stderr  # a server that cannot be reached, as for a broker
    assert "s3cret" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--help"])
def test_help(tmp_path: Path, flag: str) -> None:
    done = tidings(tmp_path, "archive", flag)
    assert done.returncode == 0 and "--once" in done.stdout
