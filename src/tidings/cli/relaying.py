"""`tidings relay` and `tidings reactor`: events from other buses, and commands run for events."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Annotated

import typer

from tidings.bus import Bus
from tidings.cli import app, err
from tidings.cli.commands import (
    ConfigOpt,
    JsonOpt,
    LogOpt,
    VerboseOpt,
    checked,
    load_bus,
    out,
    read_capped,
    seconds,
    until_signalled,
)
from tidings.consumer import App
from tidings.errors import ConfigError, InvalidEvent
from tidings.relay import Relay


@app.command()
def relay(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The [relays.NAME] section of the config.")],
    verify_missing: Annotated[
        float,
        typer.Option(
            "--verify-missing",
            callback=seconds,
            metavar="SECONDS",
            help="Do not relay: watch both buses (the input and watch = {...}) this long and list the "
            "ids that passed the filter but never arrived, and copies never seen at the input "
            "(exit 6 if any).",
        ),
    ] = 0.0,
    grace: Annotated[
        float, typer.Option(metavar="SECONDS", help="How long an event may take to cross.", callback=seconds)
    ] = 30.0,
    config: ConfigOpt = None,
    log_level: LogOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Relay events from another bus into this one's outbox, filtered, until stopped.

    \b
    Examples:
      tidings relay fedmsg
      tidings relay fedmsg --verify-missing 600

    What passes the relay's filter is published through the outbox (so every connector whose topics
    take it gets it, with its backlog and dead letters); an acknowledging input is acked only after
    the outbox committed the event. See docs/relay.md.
    """
    bus = load_bus(config, log_level, verbose=verbose)
    relaying = Relay(bus, name)
    if verify_missing > 0:
        _verify(relaying, verify_missing, grace)
        return
    consumer, *watching = relaying.apps()
    err.print(
        f"relay {name}: {relaying.config.format} from transport {relaying.config.transport!r} "
        f"({', '.join(consumer.bindings())}) into {bus.config.outbox_path()} — Ctrl-C to stop",
        highlight=False,
    )
    try:
        asyncio.run(until_signalled(lambda stop: _run_all(bus, [consumer, *watching], stop)))
    finally:
        relaying.sightings.close()
        bus.close()
    counted = relaying.counters
    err.print(
        f"relay {name}: relayed {counted.relayed}, filtered out {counted.filtered}, "
        f"loops dropped {counted.looped}",
        highlight=False,
    )


def _verify(relaying: Relay, duration: float, grace: float) -> None:
    from tidings.relay import verify_missing

    said = {"old": "passed the filter, never arrived", "new": "arrived, never seen at the input"}
    missing = checked(lambda stop: verify_missing(relaying, duration, grace, stop), said)
    if any(missing.values()):
        raise typer.Exit(6)


@app.command()
def reactor(
    dry_run: Annotated[
        Path | None,
        typer.Option(
            "--dry-run",
            metavar="FILE",
            help="Events as JSON lines (as `tidings tail --json` prints them): say which rules "
            "would fire and what they would run, and run nothing.",
        ),
    ] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the [reactor.rules.NAME] rules until stopped: a command (argv, no shell) or a callable per
    matching event, retried on failure and dead-lettered per rule. See docs/relay.md.

    \b
    Examples:
      tidings reactor
      tidings reactor --dry-run events.jsonl   # what would run for these events
    """
    from tidings.reactor import firing, reactor_apps

    bus = load_bus(config, log_level, verbose=verbose)
    if not bus.config.reactor.rules:
        raise ConfigError("no [reactor.rules.NAME] is configured")
    if dry_run is not None:
        from tidings.replay import line_limit, read_jsonl

        fired = 0
        for event, rule, action in firing(bus, read_jsonl(dry_run, line_limit(bus))):
            fired += 1
            shown = " ".join(map(_printable, action)) if isinstance(action, list) else action
            out.print(f"{event.id} {event.topic} → {rule.name}: {shown}", highlight=False, markup=False)
        err.print(f"{fired} rule run(s) would fire", highlight=False)
        return
    apps = reactor_apps(bus)
    err.print(f"reactor: {', '.join(a.name for a in apps)} — Ctrl-C to stop", highlight=False)
    try:
        asyncio.run(until_signalled(lambda stop: _run_all(bus, apps, stop)))
    finally:
        bus.close()


def _printable(argument: str) -> str:
    """An argument as one readable item: control characters escaped (an event's value must not
    move the cursor or start a new line), and quoted when it holds spaces or escapes."""
    if argument.isprintable() and " " not in argument:
        return argument
    return repr(argument)


async def _run_all(bus: Bus, apps: list[App], stop: asyncio.Event) -> None:
    await asyncio.gather(*(consumer.run(bus, stop) for consumer in apps))


@app.command("import-reactobus")
def import_reactobus(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A ReactOBus configuration (YAML).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="PATH", help="Write here (never over an existing file)."),
    ] = None,
) -> None:
    """Print (or write) the tidings.toml equivalent of a ReactOBus configuration.

    \b
    Examples:
      tidings import-reactobus reactobus.yaml
      tidings import-reactobus reactobus.yaml -o tidings.toml

    Its ZMQSub inputs become ZeroMQ transports and relays (format lava), its ZMQPub outputs
    ZeroMQ transports and connectors, its reactor rules [reactor.rules.NAME]; what has no
    equivalent is said in comments at the top. The result is checked as any config is.
    """
    import tomli_w

    from tidings.config import parse_config
    from tidings.reactobus import convert, load_yaml

    try:
        text = read_capped(str(file), "ReactOBus configuration", 16 * 1024 * 1024).decode("utf-8")
    except InvalidEvent as exc:
        raise ConfigError(str(exc)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{str(file)!r} is not UTF-8 text") from None
    try:
        converted = convert(load_yaml(text))
    except (TypeError, AttributeError, KeyError, ValueError, RecursionError) as exc:
        # a shape the converter's own checks did not foresee: still one line, naming the file
        raise ConfigError(
            f"{str(file)!r} is not a ReactOBus configuration tidings can read ({type(exc).__name__}: {exc})"
        ) from None
    parse_config(converted.config, origin=f"{file} (converted)")  # what we write must load
    comments = "".join(f"# {note}\n" for note in converted.notes)
    written = f"# converted from the ReactOBus configuration {file.name}\n{comments}\n" + tomli_w.dumps(
        converted.config
    )
    if output is None:
        print(written, end="")
        return
    if output.exists():
        raise ConfigError(f"{str(output)!r} exists; choose another --output (nothing was written)")
    try:
        output.write_text(written, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {str(output)!r}: {exc.strerror}") from None
    err.print(f"wrote {output} ({len(converted.notes)} note(s) in its comments)", highlight=False)


migration_app = typer.Typer(
    help="Which applications publish on the old bus, the new one, or both (relays with watch).",
    no_args_is_help=True,
)
app.add_typer(migration_app, name="migration")


@migration_app.command("status")
def migration_status(
    relays: Annotated[list[str] | None, typer.Argument(metavar="RELAY", help="Only these relays.")] = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Per relay and application: messages seen on the old bus and natively on the new one, first
    and last seen, and a status: old only (to move), both (moving), new only (moved).

    \b
    Examples:
      tidings migration status
      tidings migration status fedmsg --json
    """
    from datetime import UTC, datetime

    from tidings.cli.output import print_rows
    from tidings.migration import Row, Sightings

    bus = load_bus(config)
    for name in relays or []:
        if name not in bus.config.relays:
            raise ConfigError(f"no relay named {name!r} is configured")
    path = bus.config.home_path() / "migration.db"
    table: list[tuple[str, Row]] = []
    if path.exists():  # nothing counted yet: say so, and make no folder or file for it
        try:
            sightings = Sightings(path)
            table = sightings.table(relays or None)
            sightings.close()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{str(path)!r} is not a migration database tidings can read: {exc}") from None

    def when(moment: float) -> str:
        return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")

    rows = [[relay, r.app, r.status, r.old, r.new, when(r.first), when(r.last)] for relay, r in table]
    columns = ["relay", "application", "status", "old", "new", "first_seen", "last_seen"]
    if not rows and not json_:
        out.print("nothing seen yet: run the relays (with watch = {...} for the new bus)", highlight=False)
        return
    print_rows(columns, rows, console=out, json_=json_)
