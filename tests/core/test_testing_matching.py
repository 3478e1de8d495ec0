"""tidings.testing's matching, published() and assert_published(): what they accept and what they say."""

from __future__ import annotations

import copy
from typing import Any
from unittest.mock import ANY

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import Bus, Event, InvalidTopic
from tidings.config import parse_config
from tidings.event import dumps, loads
from tidings.testing import assert_published, body_difference, on_the_wire, published
from tidings.testing.matching import check

BODY = {"checkout": {"id": "redhat:1", "builds": [{"id": "b1", "arch": "x86_64"}, {"id": "b2"}]}, "n": 1}


@pytest.mark.parametrize(
    "subset",
    [
        {},
        {"n": 1},
        {"checkout": {}},
        {"checkout": {"builds": [{}, {}]}},
        {"checkout": {"builds": [{"arch": "x86_64"}, {"id": "b2"}]}},
        {"checkout": {"id": ANY, "builds": ANY}},
        BODY,
    ],
)
def test_a_body_contains_its_subsets(subset: dict[str, Any]) -> None:
    assert body_difference(subset, BODY) is None


@pytest.mark.parametrize(
    ("subset", "said"),
    [
        ({"m": 1}, "body: no key 'm' (its keys: 'checkout', 'n')"),
        ({"n": 2}, "body['n']: expected 2, got 1"),
        ({"n": True}, "body['n']: expected true, got 1"),  # JSON's true is not 1
        ({"n": {}}, "body['n']: expected an object, got 1"),
        ({"checkout": {"builds": [{}]}}, "body['checkout']['builds']: expected 1 item(s), got 2"),
        ({"checkout": {"builds": [{}, {"id": "b3"}]}}, "body['checkout']['builds'][1]['id']: expected"),
        ({"checkout": {"id": ["redhat:1"]}}, "body['checkout']['id']: expected a list, got \"redhat:1\""),
    ],
)
def test_a_difference_names_the_first_place_it_is(subset: dict[str, Any], said: str) -> None:
    difference = body_difference(subset, BODY)
    assert difference is not None and difference.startswith(said), difference


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


def pruned(value: Any, draw: st.DrawFn) -> Any:
    """A subset of ``value`` as body_difference reads one: keys dropped at any depth, lists kept whole."""
    if isinstance(value, dict):
        kept = draw(st.lists(st.sampled_from(sorted(value)), unique=True)) if value else []
        return {key: pruned(value[key], draw) for key in kept}
    if isinstance(value, list):
        return [pruned(item, draw) for item in value]
    return value


@st.composite
def body_and_subset(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    body = draw(bodies)
    return body, pruned(body, draw)


@given(bodies)
def test_every_body_contains_itself(body: dict[str, Any]) -> None:
    assert body_difference(copy.deepcopy(body), body) is None


@given(body_and_subset())
def test_every_pruned_body_is_contained(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    body, subset = pair
    assert body_difference(subset, body) is None


@given(bodies.filter(bool), st.data())
def test_a_changed_leaf_is_found_where_it_is(body: dict[str, Any], data: st.DataObject) -> None:
    # go down one path of dicts and lists to a leaf, and put a value there that no body holds
    changed, path = copy.deepcopy(body), "body"
    node: Any = changed
    while True:
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return  # an empty container: no leaf on this path
        key = data.draw(st.sampled_from(keys))
        path += f"[{key!r}]"
        if not isinstance(node[key], dict | list):
            node[key] = object()
            break
        node = node[key]
    difference = body_difference(changed, body)
    assert difference is not None and difference.startswith(f"{path}: expected"), difference


def test_expectations_are_checked_before_anything_runs() -> None:
    for bad in (3, ("a.b",), ("a.b", {}, "x"), (1, {}), ("a.b", ["not", "a", "dict"])):
        with pytest.raises(TypeError, match="expected item 1: "):
            check(bad, "expected item 1")  # type: ignore[arg-type]
    with pytest.raises(InvalidTopic):
        check("a..b")
    with pytest.raises(TypeError, match="a class is not an expectation"):
        check(Event)


def test_published_reads_the_outbox_in_order_by_pattern(bus: Bus) -> None:
    for topic in ("build.new", "test.done", "build.x.y"):
        bus.publish(topic, {"topic": topic})
    assert [e.topic for e in published(bus)] == ["build.new", "test.done", "build.x.y"]
    assert [e.topic for e in published(bus, "build.#")] == ["build.new", "build.x.y"]
    assert published(bus, "nothing.*") == []


def test_assert_published_returns_what_matched(bus: Bus) -> None:
    bus.publish("build.new", {"id": 1, "arch": "x86_64"}, type=None)
    bus.publish("build.new", {"id": 2, "arch": "s390x"})
    assert [e.body["id"] for e in assert_published(bus, "build.*")] == [1, 2]
    [event] = assert_published(bus, "build.new", body_contains={"arch": "s390x"}, count=1)
    assert event.body["id"] == 2
    assert assert_published(bus, "test.#", count=0) == []


def test_assert_published_lists_what_was_published_and_why_each_is_not_it(bus: Bus) -> None:
    bus.publish("build.new", {"id": 1, "arch": "x86_64"})
    bus.publish("test.done", {"id": 2})
    with pytest.raises(AssertionError) as failed:
        assert_published(bus, "build.*", body_contains={"arch": "s390x"})
    assert str(failed.value) == (
        "expected at least 1 event with topic 'build.*', body containing {'arch': 's390x'}; 0 matched. "
        "Published (2):\n"
        '  1. build.new {"id":1,"arch":"x86_64"}\n'
        '       not it: body[\'arch\']: expected "s390x", got "x86_64"\n'
        '  2. test.done {"id":2}\n'
        "       not it: topic 'test.done' does not match 'build.*'"
    )


def test_assert_published_with_a_count_and_a_type(bus: Bus) -> None:
    bus.publish("a.b", {})
    bus.publish("a.b", {})
    with pytest.raises(AssertionError, match=r"^expected 1 event\(s\) with topic 'a.b'; 2 matched"):
        assert_published(bus, "a.b", count=1)
    with pytest.raises(AssertionError, match=r"not it: type None, not 'x.v1'"):
        assert_published(bus, "a.b", type="x.v1")
    with pytest.raises(ValueError, match="count must be 0 or more"):
        assert_published(bus, count=-1)


def test_assert_published_on_an_empty_bus_says_so(bus: Bus) -> None:
    said = r"^expected at least 1 event with topic '#'; nothing was published$"
    with pytest.raises(AssertionError, match=said):
        assert_published(bus)


def test_on_the_wire_is_the_connector_s_encoding(tmp_path: Any) -> None:
    config = parse_config(
        {
            "transports": {"local": {"kind": "embedded"}},
            "connectors": {
                "fedora": {
                    "transport": "local",
                    "format": "fedora-messaging",
                    "topics": ["bodhi.#"],
                    "format_options": {"topic_prefix": "org.fedoraproject.prod"},
                },
                "native": {"transport": "local"},
            },
        },
        base_dir=tmp_path,
    )
    bus = Bus(config)
    event = bus.publish("bodhi.update.comment", {"comment": {}})
    assert on_the_wire(bus, event, "fedora").routing_key == "org.fedoraproject.prod.bodhi.update.comment"
    assert on_the_wire(bus, event, "native").headers["ce_id"] == event.id
    with pytest.raises(ValueError, match=r"several connectors \(fedora, native\): name one"):
        on_the_wire(bus, event)
    with pytest.raises(ValueError, match="no connector named 'rabbit'"):
        on_the_wire(bus, event, "rabbit")
    other = bus.event("koji.build.tag", {})
    with pytest.raises(AssertionError, match=r"connector 'fedora' does not carry 'koji.build.tag'"):
        on_the_wire(bus, other, "fedora")
    bus.close()


def test_a_datetime_or_uuid_expected_is_compared_as_the_stored_json_has_it() -> None:
    """The body was stored as JSON (a string), the expectation held the datetime: the mismatch
    message showed the same text twice."""
    import datetime
    import uuid

    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    ident = uuid.UUID(int=7)
    stored = loads(dumps({"when": when, "id": ident}))
    assert body_difference({"when": when, "id": ident}, stored) is None
    later = when + datetime.timedelta(seconds=1)
    assert body_difference({"when": later}, stored) == (
        'body[\'when\']: expected "2024-01-01T00:00:01+00:00", got "2024-01-01T00:00:00+00:00"'
    )
