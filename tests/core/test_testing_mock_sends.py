"""tidings.testing.mock_sends: a block's publishing on one Bus, captured and compared."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import embedded_config
from tidings import App, Bus, Event, InvalidEvent
from tidings.testing import Expected, deliver, mock_sends, published

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def publish_all(bus: Bus, events: tuple[tuple[str, dict[str, Any]], ...]) -> None:
    for topic, body in events:
        bus.publish(topic, body)


def said(bus: Bus, expected: tuple[Expected, ...], *events: tuple[str, dict[str, Any]]) -> str:
    """What mock_sends(bus, *expected) says of a block that publishes ``events``."""
    with pytest.raises(AssertionError) as failed, mock_sends(bus, *expected):
        publish_all(bus, events)
    return str(failed.value)


def test_what_the_block_publishes_is_captured_not_stored(bus: Bus) -> None:
    bus.publish("before.it", {})
    with mock_sends(bus, "a.b", ("c.*", {"k": [1, {"x": 2}]}), lambda e: e.type is None) as sent:
        bus.publish("a.b", {})
        bus.publish_many([bus.event("c.d", {"k": [1, {"x": 2, "y": 3}]}), bus.event("e.f", {})])
        assert sent == []  # filled once the block is done
    assert [e.topic for e in sent] == ["a.b", "c.d", "e.f"]
    assert [e.topic for e in published(bus)] == ["before.it"]
    bus.publish("after.it", {})  # the bus's own outbox again
    assert [e.topic for e in published(bus)] == ["before.it", "after.it"]


async def test_asyncio_publishers_and_threads_are_captured(bus: Bus) -> None:
    with mock_sends(bus, "a.one", "a.two", "a.three", "a.four") as sent:
        await bus.apublish("a.one", {})
        await bus.apublish_many([bus.event("a.two", {})])
        thread = threading.Thread(target=bus.publish, args=("a.three", {}))
        thread.start()
        thread.join()
        bus.publish("a.four", {})
    assert len(sent) == 4 and published(bus) == []


def test_only_the_given_bus_is_diverted(bus: Bus, tmp_path: Path) -> None:
    other = Bus(embedded_config(tmp_path / "other"))
    with mock_sends(bus):
        other.publish("a.b", {})
    assert [e.topic for e in published(other)] == ["a.b"]
    other.close()


def test_publish_still_checks_every_event(bus: Bus) -> None:
    deep: dict[str, object] = {}
    for _ in range(70):
        deep = {"a": deep}
    with pytest.raises(InvalidEvent, match="nests"), mock_sends(bus):
        bus.publish("a.b", deep)
    with pytest.raises(InvalidEvent, match="unknown event type"), mock_sends(bus):
        bus.publish("a.b", {}, type="no.such.v1")


def test_when_the_block_raises_nothing_is_compared(bus: Bus) -> None:
    with pytest.raises(KeyError), mock_sends(bus, "never.published"):
        raise KeyError("the block's own error")
    bus.publish("a.b", {})
    assert len(published(bus)) == 1


def test_counts_and_items_are_compared_item_by_item(bus: Bus) -> None:
    expected = ("a.b", ("c.d", {"k": 1}), "x.*")
    assert said(bus, expected, ("a.b", {"k": 1}), ("c.d", {"k": 2})) == (
        "mock_sends: expected 3 event(s), 2 published:\n"
        "  1. ok       expected 'a.b'\n"
        '       published a.b {"k":1}\n'
        "  2. MISMATCH expected ('c.d', {\"k\":1})\n"
        '       published c.d {"k":2}\n'
        "       body['k']: expected 1, got 2\n"
        "  3. MISSING  expected 'x.*'"
    )


def test_an_unexpected_event_is_extra(bus: Bus) -> None:
    assert said(bus, (), ("a.b", {})) == (
        "mock_sends: expected 0 event(s), 1 published:\n"
        "  1. EXTRA    expected nothing more\n"
        "       published a.b {}"
    )


def test_a_predicate_may_assert_and_its_message_is_shown(bus: Bus) -> None:
    def high_priority(event: Event) -> bool:
        assert event.headers.get("priority") == 3, f"priority is {event.headers.get('priority')}"
        return True

    with mock_sends(bus, high_priority):
        bus.publish("a.b", {}, headers={"priority": 3})
    with (
        pytest.raises(AssertionError, match=r"high_priority\(\) failed: priority is 1"),
        mock_sends(bus, high_priority),
    ):
        bus.publish("a.b", {}, headers={"priority": 1})
    assert said(bus, (lambda e: False,), ("a.b", {})).endswith("<lambda>() returned False")


def test_bad_expectations_fail_before_the_block_runs(bus: Bus) -> None:
    ran = False
    with (
        pytest.raises(TypeError, match=r"^mock_sends: expected item 2: expected a topic pattern"),
        mock_sends(bus, "a.b", 42),  # type: ignore[arg-type]
    ):
        ran = True
    assert not ran


async def test_a_consumer_s_publishing_is_captured_while_deliver_reads_the_outbox(bus: Bus) -> None:
    app = App("forwarder")

    @app.subscribe("in.*")
    async def forward(event: Event) -> None:
        await bus.apublish("out.done", {"from": event.topic})

    bus.publish("in.new", {})
    with mock_sends(bus, ("out.done", {"from": "in.new"})):
        (await deliver(bus, app)).assert_acked()
    assert [e.topic for e in published(bus)] == ["in.new"]


def test_nested_blocks_capture_their_own(bus: Bus) -> None:
    with mock_sends(bus, "outer.one", "outer.two"):
        bus.publish("outer.one", {})
        with mock_sends(bus, "inner.one"):
            bus.publish("inner.one", {})
        bus.publish("outer.two", {})


def test_the_message_in_the_docs_is_what_mock_sends_says(bus: Bus) -> None:
    shown = re.search(r"```text\n(mock_sends: .*?)```", DOC.read_text(), re.S)
    assert shown is not None, "docs/testing.md has no mock_sends message"
    expected = ("bodhi.update.request.testing", {"update": {"alias": "FEDORA-2026-1a2b3c4d5e"}})
    message = said(
        bus,
        ("bodhi.update.comment", expected),
        ("bodhi.update.comment", {"comment": {"karma": 1}}),
        ("bodhi.update.request.testing", {"update": {"alias": "FEDORA-2026-0000000000"}}),
    )
    assert message == shown.group(1).rstrip("\n")
