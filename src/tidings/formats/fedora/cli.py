"""``tidings bridge``: run a fedmsg ⇄ AMQP bridge, or check that nothing went missing across it."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from tidings.cli import app, err
from tidings.cli.commands import ConfigOpt, LogOpt, checked, load_bus, seconds, until_signalled
from tidings.errors import ConfigError


@app.command()
def bridge(
    name: Annotated[str, typer.Argument(help="The [bridges.NAME] section of the config.")],
    verify_missing: Annotated[
        float,
        typer.Option(
            "--verify-missing",
            callback=seconds,
            help="Do not bridge: watch both buses for this many seconds and report every message "
            "id seen on one side only (exit 6 if any).",
        ),
    ] = 0.0,
    grace: Annotated[
        float,
        typer.Option(
            help="Seconds a message may take to cross before it counts as missing.", callback=seconds
        ),
    ] = 30.0,
    config: ConfigOpt = None,
    log_level: LogOpt = None,
) -> None:
    """Bridge fedmsg (ZeroMQ) and AMQP (fedora-messaging) both ways, without loops.

    The bridge is two relays (NAME.fedmsg-to-amqp, NAME.amqp-to-fedmsg; `tidings relay` and
    `tidings serve` run them too): fedmsg messages go to AMQP through the outbox on the connector
    the bridge names; AMQP messages go through the outbox to connector NAME.to-fedmsg, fedmsg frames
    on zmq_publish. Nothing is lost once the bridge has it; a message carried one way never goes back.

    \b
    Examples:
      tidings bridge fedmsg
      tidings bridge fedmsg --verify-missing 600    # compare both sides for 10 minutes

    \b
    Example config:
        [bridges.fedmsg]
        zmq_endpoints = ["tcp://fedmsg.example.org:9940"]
        connector = "to-amqp"    # exchange = "zmq.topic", format = "fedora-messaging"
        transport = "rabbit"
        zmq_publish = "tcp://*:9941"
    """
    try:
        from tidings.formats.fedora.bridge import Bridge
        from tidings.formats.fedora.bridge import verify_missing as verify
    except ImportError as exc:  # cryptography (fedmsg's signatures), pyzmq
        raise ConfigError(
            f"tidings bridge needs a package that is not installed ({exc.name}): "
            "pip install 'tidings[fedmsg]'"
        ) from None

    bus = load_bus(config, log_level)
    running = Bridge(bus, name)
    if verify_missing > 0:
        said = {"fedmsg": "seen on fedmsg only", "amqp": "seen on AMQP only"}
        missing = checked(lambda stop: verify(running, verify_missing, grace, stop), said)
        if any(missing.values()):
            raise typer.Exit(6)
        return
    c = running.config
    err.print(
        f"bridging {', '.join(c.zmq_endpoints)} → AMQP ({c.connector}) and {c.exchange} → "
        f"{c.zmq_publish or 'nowhere (one way)'} — Ctrl-C to stop"
    )
    try:
        asyncio.run(until_signalled(running.run))
    finally:
        bus.close()
    counters = running.counters
    err.print(
        f"bridge {name}: {counters.to_amqp} to AMQP, {counters.to_fedmsg} to fedmsg, "
        f"{counters.loops_stopped} loops stopped, {counters.undecodable} undecodable or unsigned"
    )
