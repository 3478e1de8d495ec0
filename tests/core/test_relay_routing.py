"""Which connectors a relayed event goes to, connector filters, marks, and a bridge as two relays."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tidings import Bus
from tidings.cli.commands import check_plugins
from tidings.config import parse_config
from tidings.errors import ConfigError
from tidings.event import Event
from tidings.handling import Reject
from tidings.relay import HOPS_HEADER, Relay


def bus_of(tmp_path: Path, config: dict[str, Any]) -> Bus:
    return Bus(parse_config(config, base_dir=tmp_path))


def two_files(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """Two file connectors, ``a`` and ``b``, and whatever else the test adds."""
    transports: dict[str, Any] = {n: {"kind": "file", "path": str(tmp_path / f"{n}.jsonl")} for n in "ab"}
    transports["local"] = {"kind": "embedded", "path": str(tmp_path / "broker.db")}
    connectors = {name: {"transport": name} for name in "ab"}
    return {"bus": {"home": "home"}, "transports": transports, "connectors": connectors, **extra}


def delivered(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["body"]["n"] for line in path.read_text().splitlines()]


async def deliver(bus: Bus) -> None:
    await bus.dispatcher().deliver_due(timeout=30)


async def test_a_relay_with_connectors_reaches_those_alone(tmp_path: Path) -> None:
    bus = bus_of(tmp_path, two_files(tmp_path, relays={"only-a": {"connectors": ["a"]}, "all": {}}))
    try:
        narrow, wide = Relay(bus, "only-a"), Relay(bus, "all")
        await narrow.relay(Event.create("lab.job", {"n": "narrow"}))
        await wide.relay(Event.create("lab.job", {"n": "wide"}))
        await bus.apublish("lab.job", {"n": "published"})
        await deliver(bus)
    finally:
        bus.close()
    assert delivered(tmp_path, "a") == ["narrow", "wide", "published"]
    assert delivered(tmp_path, "b") == ["wide", "published"]


async def test_a_connector_filter_decides_per_event_and_the_rest_still_arrive(tmp_path: Path) -> None:
    config = two_files(tmp_path)
    config["connectors"]["b"]["filter"] = {"not": {"field": "data.private", "equals": True}}
    bus = bus_of(tmp_path, config)
    try:
        for n, private in enumerate([False, True, False, True]):
            await bus.apublish("bug.modify", {"n": str(n), "private": private})
        await deliver(bus)
        assert [s.backlog for s in bus.outbox.status(["a", "b"])] == [0, 0]  # skipped, not retried
    finally:
        bus.close()
    assert delivered(tmp_path, "a") == ["0", "1", "2", "3"]
    assert delivered(tmp_path, "b") == ["0", "2"]


async def test_a_filter_regex_that_runs_too_long_dead_letters_that_event_alone(tmp_path: Path) -> None:
    config = two_files(tmp_path)
    config["connectors"]["b"]["filter"] = {"field": "data.n", "regex": "^(a|aa)+$"}  # slow on "aaa...!"
    bus = bus_of(tmp_path, config)
    try:
        for n in ["aa", "a" * 60 + "!", "aaa"]:
            await bus.apublish("bug.modify", {"n": n})
        await deliver(bus)
        dead = bus.outbox.entries("b", "dead")
    finally:
        bus.close()
    assert delivered(tmp_path, "a") == ["aa", "a" * 60 + "!", "aaa"]
    assert delivered(tmp_path, "b") == ["aa", "aaa"]
    assert [entry["seq"] for entry in dead] == [2]
    assert "filter.regex: '^(a|aa)+$' took longer than 0.25 s" in str(dead[0]["reason"])


async def test_a_relay_whose_filter_runs_too_long_dead_letters_that_event(tmp_path: Path) -> None:
    bus = bus_of(tmp_path, {"relays": {"x": {"filter": {"topic_regex": "^(a|aa)+$"}}}})
    relay = Relay(bus, "x")
    try:
        with pytest.raises(Reject, match=r"\[relays.x\] filter.topic_regex: .* took longer than"):
            await relay.relay(Event.create("a" * 60 + ".b", {}))  # the runner dead-letters on Reject
        await relay.relay(Event.create("aaaa", {}))
        assert relay.counters.relayed == 1
    finally:
        bus.close()


def test_an_event_carrying_the_mark_is_a_loop_and_what_passes_carries_it(tmp_path: Path) -> None:
    bus = bus_of(tmp_path, {"relays": {"x": {"mark": {"crossed_by": "x-bridge"}}}})
    relay = Relay(bus, "x")
    out = relay.outgoing(Event.create("a.b", {}))
    assert out is not None and out.headers["crossed_by"] == "x-bridge" and out.headers[HOPS_HEADER] == "x"
    back = Event.create("a.b", {}, headers={"crossed_by": "x-bridge"})  # the hop header got lost on the way
    assert relay.outgoing(back) is None and relay.counters.looped == 1
    other = Event.create("a.b", {}, headers={"crossed_by": "another-bridge"})  # one of an HA pair
    assert relay.outgoing(other) is None and relay.counters.looped == 2
    assert relay.outgoing(Event.create("a.b", {}, headers={"crossed_by": ""})) is not None


def test_a_relayed_event_leaves_the_source_bus_bookkeeping_behind(tmp_path: Path) -> None:
    """A relay reading a dead-letter queue gets events that carry its transport's counts: on the
    next bus a consumer would take ``x-tidings-attempts`` for its own and give up early."""
    relay = Relay(bus_of(tmp_path, {"relays": {"x": {}}}), "x")
    dead = Event.create(
        "a.b",
        {},
        headers={
            "x-tidings-attempts": 5,
            "x-tidings-reason": "failed 5 times",
            "x-death": "[]",
            "x-tidings-relays": "earlier",
            "x-tidings-replayed-at": "2026-12-01T00:00:00Z",
            "lab": "kept",
        },
    )
    out = relay.outgoing(dead)
    assert out is not None
    assert out.headers == {
        "x-tidings-relays": "earlier,x",
        "x-tidings-replayed-at": "2026-12-01T00:00:00Z",
        "lab": "kept",
    }


def test_an_id_template_gives_the_same_new_id_for_the_same_event(tmp_path: Path) -> None:
    bus = bus_of(tmp_path, {"relays": {"x": {"id": "{year}-{id}"}}})
    relay = Relay(bus, "x")
    event = Event.create("a.b", {})
    first, again = relay.outgoing(event), relay.outgoing(event)
    assert first is not None and again is not None
    assert first.id == again.id == f"{event.time.year}-{event.id}"
    fedmsg_born = Event.create("a.b", {}, id="2026-a0b1")
    assert (relay.outgoing(fedmsg_born) or event).id == "2026-a0b1"  # already in that form
    with pytest.raises(ConfigError, match=r"\[relays.y\] id"):
        parse_config({"relays": {"y": {"id": "{year}"}}})  # without {id} every event would be one


def test_a_relay_reading_its_own_bus_with_ids_kept_says_nothing_would_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It read this bus's own events, whose ids the outbox holds: each was taken as already there,
    nothing was relayed, and it counted them relayed without a word."""
    config = {"bus": {"home": "home"}, "relays": {"rename": {"topic": "new.{1}"}}}
    Relay(bus_of(tmp_path, config), "rename").app()
    assert "relay rename reads what connector local of this bus sends" in caplog.text
    assert 'id = "relayed-{id}"' in caplog.text
    caplog.clear()
    config["relays"]["rename"]["id"] = "relayed-{id}"
    Relay(bus_of(tmp_path, config), "rename").app()
    config["relays"]["rename"] = {"topic": "new.{1}", "exchange": "elsewhere"}
    Relay(bus_of(tmp_path, config), "rename").app()
    assert "reads what connector" not in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"relays": {"x": {"connectors": ["c"]}}}, "[relays.x] connectors: 'c' is not configured"),
        ({"connectors": {"a": {"transport": "a", "filter": {"field": "data.x"}}}}, "[connectors.a] filter"),
    ],
)
def test_routing_that_cannot_work_is_a_config_error(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    config = two_files(tmp_path)
    for section, tables in change.items():
        config.setdefault(section, {}).update(tables)
    with pytest.raises(ConfigError) as refused:
        parse_config(config, base_dir=tmp_path)
    assert message in str(refused.value)


# -- [bridges.NAME] is two relays ---------------------------------------------------------------


def bridge_config(tmp_path: Path, **bridge: Any) -> dict[str, Any]:
    return {
        "transports": {"rabbit": {"kind": "amqp"}},
        "connectors": {"to-amqp": {"transport": "rabbit", "exchange": "zmq.topic"}},
        "bridges": {
            "fedmsg": {
                "zmq_endpoints": ["tcp://127.0.0.1:9940", "tcp://127.0.0.1:9942"],
                "connector": "to-amqp",
                "transport": "rabbit",
                "zmq_publish": "tcp://*:9941",
                **bridge,
            }
        },
    }


def test_a_bridge_is_two_relays_a_connector_and_two_transports(tmp_path: Path) -> None:
    config = parse_config(bridge_config(tmp_path, username="bridge-1"), base_dir=tmp_path)
    inbound, outbound = config.relays["fedmsg.fedmsg-to-amqp"], config.relays["fedmsg.amqp-to-fedmsg"]
    assert (inbound.transport, inbound.format, inbound.connectors) == (
        "fedmsg.fedmsg-in",
        "fedmsg",
        ["to-amqp"],
    )
    assert config.transports["fedmsg.fedmsg-in"]["endpoint"] == [
        "tcp://127.0.0.1:9940",
        "tcp://127.0.0.1:9942",
    ]
    assert (outbound.transport, outbound.exchange, outbound.queue) == (
        "rabbit",
        "amq.topic",
        "tidings.bridge.fedmsg",
    )
    assert outbound.connectors == ["fedmsg.to-fedmsg"] and outbound.format == "fedora-messaging"
    assert inbound.mark == outbound.mark == {"fedmsg_bridged_by": "bridge-1"}
    assert config.connectors["fedmsg.to-fedmsg"].transport == "fedmsg.fedmsg-out"


def test_a_one_way_bridge_has_no_way_back(tmp_path: Path) -> None:
    config = parse_config(bridge_config(tmp_path, zmq_publish=""), base_dir=tmp_path)
    assert "fedmsg.amqp-to-fedmsg" not in config.relays and "fedmsg.to-fedmsg" not in config.connectors


def test_the_fedmsg_connector_of_a_bridge_carries_only_what_came_from_amqp(tmp_path: Path) -> None:
    from tidings.relay import connector_test

    config = parse_config(bridge_config(tmp_path), base_dir=tmp_path)
    to_fedmsg, to_amqp = connector_test(config, "fedmsg.to-fedmsg"), connector_test(config, "to-amqp")
    assert to_fedmsg is not None and to_amqp is not None
    from_amqp = Event.create("koji.build", {}, headers={HOPS_HEADER: "fedmsg.amqp-to-fedmsg"})
    from_fedmsg = Event.create("bodhi.update", {}, headers={HOPS_HEADER: "fedmsg.fedmsg-to-amqp"})
    own = Event.create("tidings.own", {})
    assert [to_fedmsg(e) for e in (from_amqp, from_fedmsg, own)] == [True, False, False]
    assert [to_amqp(e) for e in (from_amqp, from_fedmsg, own)] == [False, True, True]


def test_a_bridge_whose_names_are_taken_is_refused(tmp_path: Path) -> None:
    config = bridge_config(tmp_path)
    config["connectors"]["fedmsg.to-fedmsg"] = {"transport": "rabbit"}
    with pytest.raises(
        ConfigError, match=r"needs \[connectors.fedmsg.to-fedmsg\], which is configured already"
    ):
        parse_config(config, base_dir=tmp_path)


def test_a_bridge_takes_fedmsg_topics_with_or_without_their_prefix(tmp_path: Path) -> None:
    from tidings.format import wire_pattern

    topics = ["bodhi.#", "org.fedoraproject.prod.koji.build.*", "#"]
    bus = bus_of(tmp_path, bridge_config(tmp_path, zmq_topics=topics))
    inbound = bus.config.relays["fedmsg.fedmsg-to-amqp"]
    assert inbound.bindings == ["bodhi.#", "koji.build.*", "#"]  # as the decoded events' topics
    fmt = bus.make_format("fedmsg", inbound.format_options)
    assert [wire_pattern(fmt, p) for p in inbound.bindings] == [
        "org.fedoraproject.prod.bodhi.#",
        "org.fedoraproject.prod.koji.build.*",
        "#",  # everything, other environments too, as always
    ]
    assert wire_pattern(fmt, "org.fedoraproject.prod.bodhi.#") == "org.fedoraproject.prod.bodhi.#"


async def test_this_bus_own_events_coming_back_from_amqp_still_go_out_to_fedmsg(tmp_path: Path) -> None:
    from tidings.formats.fedora.messaging import FedoraMessagingFormat

    config = bridge_config(tmp_path)
    config["transports"]["fedmsg-file"] = {"kind": "file", "path": str(tmp_path / "fedmsg.jsonl")}
    config["archive"] = {}
    bus = bus_of(tmp_path, config)
    try:
        own = await bus.apublish("tidings.own", {"n": "own"})  # goes to AMQP, and comes back:
        back = FedoraMessagingFormat().decode(FedoraMessagingFormat().encode(own))
        await Relay(bus, "fedmsg.amqp-to-fedmsg").relay(back)
        rows = bus.outbox.read_after(0, 10)
        connectors = {c.config.transport: c for c in bus.connectors()}
    finally:
        bus.close()
    assert [row.event().id for row in rows] == [own.id, f"{own.time.year}-{own.id}"]
    to_fedmsg = connectors["fedmsg.fedmsg-out"]
    assert [to_fedmsg.takes_event(row.event()) for row in rows] == [False, True]
    archive = [c for c in connectors.values() if c.config.transport not in ("rabbit", "fedmsg.fedmsg-out")]
    assert archive and [archive[0].takes_event(row.event()) for row in rows] == [True, False]  # once
    from_fedmsg = Event.create("bodhi.update", {}, headers={HOPS_HEADER: "fedmsg.fedmsg-to-amqp"})
    assert archive[0].takes_event(from_fedmsg)  # relayed under its own id: archived


def test_what_config_show_prints_for_a_bridge_loads_again(tmp_path: Path) -> None:
    import tomli_w

    from tidings.cli.config_cmd import effective

    config = parse_config(bridge_config(tmp_path), base_dir=tmp_path)
    shown = effective(config)
    assert "fedmsg.to-fedmsg" not in shown["connectors"] and "bridges" in shown
    again = parse_config(tomllib.loads(tomli_w.dumps(shown)), base_dir=tmp_path)
    assert again.relays.keys() == config.relays.keys()


@pytest.mark.parametrize(
    ("bridge", "message"),
    [
        ({"username": ""}, "username"),
        ({"verify": True, "ca_file": "not-a-cert.pem"}, "is not a PEM certificate"),
        ({"verify": True, "ca_file": "missing.pem"}, r"missing.pem' \(trusted_ca; .*\) cannot be read"),
        ({"zmq_endpoints": []}, r"\[bridges.fedmsg\] zmq_endpoints"),
    ],
)
def test_a_bridge_that_could_not_work_is_refused_before_it_runs(
    tmp_path: Path, bridge: dict[str, Any], message: str
) -> None:
    (tmp_path / "not-a-cert.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=message):
        check_plugins(bus_of(tmp_path, bridge_config(tmp_path, **bridge)))  # `tidings config check`
