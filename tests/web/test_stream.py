"""The live stream (/stream, server-sent events) on a real server: order, resume, a burst, privacy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.web.conftest import READ_TOKEN
from tests.web.events import event
from tidings.archive import Archive

#: the rate the issue asks the stream to keep up with
RATE = 5000


def frames(response: httpx.Response) -> Iterator[tuple[int, dict[str, Any]]]:
    """(id, data) of each event in a stream; comments and the retry line are skipped."""
    seq = None
    for line in response.iter_lines():
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("data: ") and seq is not None:
            yield seq, orjson.loads(line[6:])
            seq = None


def take(server: str, count: int, timeout: float = 10, **kwargs: Any) -> list[tuple[int, dict[str, Any]]]:
    got: list[tuple[int, dict[str, Any]]] = []
    with httpx.stream("GET", f"{server}/stream", timeout=timeout, **kwargs) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for item in frames(response):
            got.append(item)
            if len(got) == count:
                break
    return got


def publish_later(archive: Archive, app: Any, items: list[Any], delay: float = 0.5) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        archive.ingest(items)
        app.state.live.wake()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_events_arrive_live_in_order(server: str, archive: Archive, app: Any) -> None:
    archive.ingest([event("demo.before", {"n": -1})])  # before the stream: not sent without a backlog
    items = [event("demo.live.x", {"n": n}) for n in range(20)]
    thread = publish_later(archive, app, items, delay=0.5)
    got = take(server, 20)
    thread.join()
    assert [data["body"]["n"] for _, data in got] == list(range(20))
    seqs = [seq for seq, _ in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20


def test_topic_pattern_and_backlog(server: str, archive: Archive, app: Any) -> None:
    archive.ingest([event("org.fedoraproject.prod.bodhi.update", {"n": n}) for n in range(3)])
    archive.ingest([event("org.fedoraproject.prod.koji.build", {"n": 9})])
    got = take(server, 2, params={"topic": "org.fedoraproject.*.bodhi.#", "backlog": 2})
    assert [data["body"]["n"] for _, data in got] == [1, 2]
    thread = publish_later(archive, app, [event("other.topic"), event("org.fedoraproject.stg.bodhi.x")])
    live = take(server, 1, params={"topic": "org.fedoraproject.*.bodhi.#"})
    thread.join()
    assert live[0][1]["topic"] == "org.fedoraproject.stg.bodhi.x"


def test_last_event_id_resumes_without_gap_or_repeat(server: str, archive: Archive) -> None:
    archive.ingest([event("demo.resume", {"n": n}) for n in range(30)])
    first = take(server, 10, params={"backlog": 30})
    assert [d["body"]["n"] for _, d in first] == list(range(10))
    rest = take(server, 20, headers={"Last-Event-ID": str(first[-1][0])})
    assert [d["body"]["n"] for _, d in rest] == list(range(10, 30))
    again = take(server, 20, params={"last_event_id": str(first[-1][0])})
    assert again == rest


def test_a_burst_of_5000_events_a_second_is_delivered_completely(
    server: str, archive: Archive, app: Any
) -> None:
    total = RATE * 2
    items = [event("demo.burst", {"n": n}) for n in range(total)]

    def produce() -> None:  # RATE events a second, in batches of 100, for two seconds
        started = time.monotonic()
        for start in range(0, total, 100):
            archive.ingest(items[start : start + 100])
            app.state.live.wake()
            pause = started + (start + 100) / RATE - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    got: list[tuple[int, dict[str, Any]]] = []
    start = {"last_event_id": archive.last_seq()}  # not "from now": the stream may start after the burst
    with httpx.stream("GET", f"{server}/stream", params=start, timeout=30) as response:
        producer = threading.Thread(target=produce)
        producer.start()
        for item in frames(response):
            got.append(item)
            if len(got) == total:
                break
        producer.join()
    sent = [data["body"]["n"] for _, data in got]
    assert sent == list(range(total))  # everything it said it sent, in order, once
    seqs = [seq for seq, _ in got]
    assert seqs == list(range(seqs[0], seqs[0] + total))


def test_private_events_never_reach_a_public_stream(server: str, archive: Archive, app: Any) -> None:
    mixed = [event("bugzilla.bug", {"n": n}, private=n % 2 == 1) for n in range(10)]
    thread = publish_later(archive, app, mixed)
    public = take(server, 5)
    thread.join()
    assert [d["body"]["n"] for _, d in public] == [0, 2, 4, 6, 8]
    assert all(d["visibility"] == "public" for _, d in public)
    everything = take(
        server, 10, params={"last_event_id": 0}, headers={"Authorization": f"Bearer {READ_TOKEN}"}
    )
    assert [d["body"]["n"] for _, d in everything] == list(range(10))


def test_a_resume_point_past_the_newest_event_goes_on_from_now(
    server: str, archive: Archive, app: Any
) -> None:
    """The archive was made anew while a page was open: its Last-Event-ID is another archive's
    seq, and nothing would have come until this one's seqs caught up with it."""
    archive.ingest([event("demo.reset", {"n": n}) for n in range(3)])
    thread = publish_later(archive, app, [event("demo.reset", {"n": 3})])
    got = take(server, 1, headers={"Last-Event-ID": "41234"})
    thread.join()
    assert [data["body"]["n"] for _, data in got] == [3]


def test_a_bad_resume_point_is_refused(server: str) -> None:
    assert httpx.get(f"{server}/stream", headers={"Last-Event-ID": "x"}).status_code == 400


@pytest.mark.parametrize("path", ["/stream", "/"])
def test_stream_and_page_carry_the_csp(server: str, path: str) -> None:
    with httpx.stream("GET", f"{server}{path}", timeout=5) as response:
        assert "script-src 'self'" in response.headers["content-security-policy"]


def test_a_stream_of_the_last_hour_goes_on_with_what_comes(server: str, archive: Archive, app: Any) -> None:
    archive.ingest([event("demo.recent", {"n": 0})])
    thread = publish_later(archive, app, [event("demo.recent", {"n": 1})])
    got = take(server, 2, params={"delta": 3600, "topic": "demo.recent", "backlog": 5})
    thread.join()
    assert [data["body"]["n"] for _, data in got] == [0, 1]  # the window's end is not "when it began"


def test_a_stream_of_a_window_from_start_and_delta_ends_where_the_search_does(
    server: str, archive: Archive, app: Any
) -> None:
    start = time.time() - 1000
    archive.ingest([event("demo.window", {"n": n}, at=start + n * 20) for n in range(5)])  # +0 ... +80 s
    # after the window's events: one of now (past its end), then a late one inside it
    late = [event("demo.window", {"n": 99}), event("demo.window", {"n": 50}, at=start + 30)]
    thread = publish_later(archive, app, late)
    got = take(server, 4, params={"start": start, "delta": 50, "topic": "demo.window", "backlog": 50})
    thread.join()
    # in the window: +0, +20, +40 s, then the late +30; not +60, +80, nor the event of now
    assert [data["body"]["n"] for _, data in got] == [0, 1, 2, 50]
    search = httpx.get(f"{server}/v2/search", params={"start": start, "delta": 50, "topic": "demo.window"})
    assert sorted(item["body"]["n"] for item in search.json()["items"]) == [0, 1, 2, 50]


def test_a_stream_whose_filter_rarely_matches_looks_only_at_what_is_new(
    server: str, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.ingest([event("demo.noise", {"n": n}) for n in range(50)])
    head = archive.last_seq()
    looked_after: list[int] = []
    since = archive.since

    def recording(after: int, *args: Any, **kwargs: Any) -> Any:
        looked_after.append(after)
        return since(after, *args, **kwargs)

    monkeypatch.setattr(archive, "since", recording)
    with pytest.raises(httpx.ReadTimeout):
        take(server, 1, timeout=1.0, params={"contains": "never-there", "last_event_id": 0})
    assert looked_after[0] == 0 and looked_after[-1] >= head  # not from 0 again on every look
