"""The options of the Fedora formats and the ``[bridges.NAME]`` section, checked when the config is read.

A bridge is two relays (see :func:`expand_bridge`); nothing of it runs here.

Nothing here imports fedmsg's or fedora-messaging's dependencies: a config is checked
whether or not they are installed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import msgspec

from tidings.config import Config
from tidings.errors import ConfigError, InvalidTopic
from tidings.event import HOPS_HEADER
from tidings.plugins import Settings, explain
from tidings.topics import validate_pattern

#: the header (and fedmsg envelope field) naming the bridge a message crossed
BRIDGED_HEADER = "fedmsg_bridged_by"


class FedoraMessagingOptions(Settings):
    #: put in front of every topic on the wire, taken off when decoding (``org.fedoraproject.prod``)
    topic_prefix: str = ""


class FedmsgOptions(Settings):
    topic_prefix: str = "org.fedoraproject"
    environment: str = "prod"
    #: the envelope's ``username`` when an event does not carry one
    username: str = "tidings"
    #: sign as fedmsg's x509_ng does: the key and certificate (PEM files)
    key_pem: str | None = None
    cert_pem: str | None = None
    #: a CA certificate (PEM file): decoding refuses messages that are unsigned or not signed by
    #: a certificate it issued (the check of fedmsg.crypto.validate)
    trusted_ca: str | None = None


class BridgeConfig(Settings):
    """A two-way fedmsg (ZeroMQ) ⇄ AMQP bridge: ``[bridges.NAME]`` (``tidings bridge NAME``)."""

    #: fedmsg publishers to subscribe to
    zmq_endpoints: Annotated[list[str], msgspec.Meta(min_length=1)]
    #: the connector that carries fedmsg messages into AMQP, through the outbox; its exchange
    #: must be the bridge's own (e.g. "zmq.topic"), never the one the other direction reads
    connector: str
    #: the AMQP transport the AMQP → fedmsg direction consumes from
    transport: str
    #: topic patterns taken from fedmsg, without the ``topic_prefix.environment`` part
    #: ("bodhi.#"; a pattern that starts with it is read without it)
    zmq_topics: list[str] = msgspec.field(default_factory=lambda: ["#"])
    #: where AMQP messages are published as fedmsg (PUB, bound); "" for a one-way bridge
    zmq_publish: str = ""
    #: the exchange AMQP → fedmsg reads (fedora-messaging publishes to amq.topic)
    exchange: str = "amq.topic"
    bindings: list[str] = msgspec.field(default_factory=lambda: ["#"])
    #: the AMQP → fedmsg queue (default ``tidings.bridge.<name>``)
    queue: str = ""
    #: the bridge's identity: a message that carries it has crossed already and never goes back
    username: Annotated[str, msgspec.Meta(min_length=1)] = "fedmsg-bridge"
    topic_prefix: str = "org.fedoraproject"
    environment: str = "prod"
    #: refuse fedmsg messages that are unsigned or not signed by a certificate of ``ca_file``
    #: (fedmsg's x509 signatures, as fedmsg.crypto.validate checks them)
    verify: bool = False
    #: the CA certificate (PEM) fedmsg signers' certificates are issued by; needed with verify
    ca_file: str = ""


def bridge_config(config: Config, name: str, table: dict[str, Any], where: str) -> BridgeConfig:
    """``[bridges.NAME]`` checked against the rest of the config (``SECTION``: config loading calls it)."""
    try:
        bridge = msgspec.convert(table, BridgeConfig, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where} {explain(exc)}") from None
    for key, patterns in (("zmq_topics", bridge.zmq_topics), ("bindings", bridge.bindings)):
        for pattern in patterns:
            try:
                validate_pattern(pattern)
            except InvalidTopic as exc:
                raise ConfigError(f"{where} {key}: {exc}") from None
    connector = config.connectors.get(bridge.connector)
    if connector is None:
        raise ConfigError(f"{where} names connector {bridge.connector!r}, which is not configured")
    if bridge.transport not in config.transports:
        raise ConfigError(f"{where} names transport {bridge.transport!r}, which is not configured")
    if bridge.verify and not bridge.ca_file:
        raise ConfigError(
            f"{where}: verify = true needs ca_file, the CA that issues fedmsg signers' certificates"
        )
    if connector.exchange == bridge.exchange and connector.transport == bridge.transport:
        raise ConfigError(
            f"{where}: connector {bridge.connector!r} publishes to {bridge.exchange!r}, the exchange the "
            "bridge reads: messages would go round in a loop; give the connector its own exchange"
        )
    return bridge


def bridge_parts(name: str) -> dict[str, str]:
    """The names of what ``[bridges.NAME]`` stands for in the config."""
    return {
        "from_fedmsg": f"{name}.fedmsg-to-amqp",
        "to_fedmsg": f"{name}.amqp-to-fedmsg",
        "connector": f"{name}.to-fedmsg",
        "fedmsg_in": f"{name}.fedmsg-in",
        "fedmsg_out": f"{name}.fedmsg-out",
    }


def expand_bridge(config: Config, name: str, table: dict[str, Any], where: str) -> dict[str, Any]:
    """``[bridges.NAME]`` as what it is: two relays (``SECTION``: config loading calls it).

    * ``NAME.fedmsg-to-amqp``: a relay from a ZeroMQ SUB on the fedmsg publishers (transport
      ``NAME.fedmsg-in``, format ``fedmsg``) to the bridge's ``connector`` only;
    * ``NAME.amqp-to-fedmsg`` (with ``zmq_publish``): a relay from an AMQP queue (format
      ``fedora-messaging``) to connector ``NAME.to-fedmsg``, a fedmsg PUB socket (transport
      ``NAME.fedmsg-out``) that carries nothing else.

    Both mark what they carry with ``fedmsg_bridged_by = username`` and drop what carries it, so
    nothing crosses back; both go through the outbox, with its backlog and dead letters.
    """
    bridge = bridge_config(config, name, table, where)
    parts = bridge_parts(name)
    fedmsg = {
        "topic_prefix": bridge.topic_prefix,
        "environment": bridge.environment,
        "username": bridge.username,
    }
    mark = {BRIDGED_HEADER: bridge.username}
    reading = dict(fedmsg, trusted_ca=str(Path(config.base_dir, bridge.ca_file))) if bridge.verify else fedmsg
    expansion: dict[str, Any] = {
        "transports": {parts["fedmsg_in"]: {"kind": "zeromq", "endpoint": bridge.zmq_endpoints}},
        "relays": {
            parts["from_fedmsg"]: {
                "transport": parts["fedmsg_in"],
                "format": "fedmsg",
                "format_options": reading,
                "bindings": [_short(pattern, bridge) for pattern in bridge.zmq_topics],
                "connectors": [bridge.connector],
                "mark": mark,
            }
        },
    }
    if bridge.zmq_publish:
        expansion["transports"][parts["fedmsg_out"]] = {"kind": "zeromq", "endpoint": bridge.zmq_publish}
        expansion["connectors"] = {
            parts["connector"]: {
                "transport": parts["fedmsg_out"],
                "format": "fedmsg",
                "format_options": fedmsg,
                # only what the bridge took from AMQP: never this bus's own events
                "filter": {"field": f"headers.{HOPS_HEADER}", "regex": _last_hop(parts["to_fedmsg"])},
            }
        }
        expansion["relays"][parts["to_fedmsg"]] = {
            "transport": bridge.transport,
            "exchange": bridge.exchange,
            "queue": bridge.queue or f"tidings.bridge.{name}",
            "bindings": bridge.bindings,
            "format": "fedora-messaging",
            "connectors": [parts["connector"]],
            "mark": mark,
            # fedmsg's id form: this bus's own events come back from AMQP with the ids they have
            # in the outbox already, and must still go out to fedmsg
            "id": "{year}-{id}",
        }
    return expansion


def _last_hop(relay: str) -> str:
    """A regex on the hops header: ``relay`` is the last relay the event went through."""
    return f"(^|,){re.escape(relay)}$"


def _short(pattern: str, bridge: BridgeConfig) -> str:
    """A fedmsg topic pattern as the fedmsg format's events have it: without the prefix."""
    return pattern.removeprefix(f"{bridge.topic_prefix}.{bridge.environment}.")
