"""Operator commands: backlog, schemas, doctor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from tidings.bus import Bus
from tidings.cli import app, err
from tidings.cli.commands import ConfigOpt, JsonOpt, check_plugins, load_bus, out, read_capped
from tidings.cli.output import print_rows
from tidings.errors import ConfigError, InvalidEvent, NotFound, StorageError, TidingsError
from tidings.event import loads
from tidings.outbox import MAX_SEQ
from tidings.transport import ExchangeSpec, Findings, Topology

backlog_app = typer.Typer(
    help="Show and act on each connector's backlog and dead letters.", no_args_is_help=True
)
schemas_app = typer.Typer(help="List, show and try the registered event schemas.", no_args_is_help=True)
app.add_typer(backlog_app, name="backlog")
app.add_typer(schemas_app, name="schemas")


def _connector(bus: Bus, name: str) -> str:
    if name not in bus.config.connectors:
        raise ConfigError(f"no connector named {name!r} (configured: {', '.join(bus.config.connectors)})")
    return name


def _ago(moment: float | None) -> str:
    if moment is None:
        return "-"
    delta = moment - time.time()
    return f"in {delta:.0f}s" if delta >= 0 else f"{-delta:.0f}s ago"


#: a listing is at most this long
MAX_LISTED = 1_000_000


@backlog_app.command("list")
def backlog_list(
    connector: Annotated[
        str | None, typer.Argument(metavar="CONNECTOR", help="Show this connector's entries in detail.")
    ] = None,
    dead: Annotated[
        bool, typer.Option("--dead", help="With CONNECTOR: list dead letters, not the backlog.")
    ] = False,
    limit: Annotated[
        int, typer.Option(metavar="N", min=1, max=MAX_LISTED, help="At most this many entries.")
    ] = 50,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Per connector: events not yet sent, the backlog waiting for a retry, and dead letters.

    \b
    Examples:
      tidings backlog list
      tidings backlog list stomp          # its entries, one per line
      tidings backlog list stomp --dead   # its dead letters
    """
    if dead and connector is None:  # it would list the counts, and --dead would say nothing
        raise typer.BadParameter("--dead lists one connector's dead letters: name the CONNECTOR")
    bus = load_bus(config)
    if connector is None:
        statuses = bus.outbox.status(bus.config.connectors)
        rows = [
            [
                s.connector,
                s.cursor,
                s.pending,
                s.backlog,
                s.next_retry if json_ else _ago(s.next_retry),
                s.dead,
            ]
            for s in statuses
        ]
        columns = ["connector", "cursor", "pending", "backlog", "next_retry", "dead"]
        print_rows(columns, rows, console=out, json_=json_, title="connectors")
        return
    which = "dead" if dead else "backlog"
    entries = bus.outbox.entries(_connector(bus, connector), which, limit)
    if not entries and not json_:
        out.print(f"{connector}: no {which} entries", highlight=False)
        return
    when = "failed" if dead else "next_retry"
    columns = ["seq", "attempts", when, "topic", "id", "reason"]
    rows = [
        [e["seq"], e["attempts"], e["when"] if json_ else _ago(e["when"]), e["topic"], e["id"], e["reason"]]
        for e in entries
    ]
    print_rows(columns, rows, console=out, json_=json_, title=f"{connector}: {which}")


@backlog_app.command("retry")
def backlog_retry(
    connector: Annotated[str, typer.Argument(help="Connector name.")],
    seq: Annotated[
        list[int],
        typer.Option("--seq", min=1, max=MAX_SEQ, help="Only these entries (repeatable; default all)."),
    ] = [],  # noqa: B006
    config: ConfigOpt = None,
) -> None:
    """Send dead letters again (they rejoin the backlog, due now) and make the backlog due now.

    \b
    Examples:
      tidings backlog retry stomp
      tidings backlog retry stomp --seq 41 --seq 42
    """
    bus = load_bus(config)
    name = _connector(bus, connector)
    _all_there(bus, name, "dead", seq)
    revived = bus.outbox.retry_dead(name, seq or None)
    hurried = bus.outbox.retry_backlog_now(name) if not seq else 0
    out.print(f"{name}: {revived} dead letter(s) back in the backlog; {hurried} backlog entr(y/ies) due now")


@backlog_app.command("drop")
def backlog_drop(
    connector: Annotated[str, typer.Argument(help="Connector name.")],
    seq: Annotated[
        list[int], typer.Option("--seq", min=1, max=MAX_SEQ, help="Only these entries (repeatable).")
    ] = [],  # noqa: B006
    all_: Annotated[bool, typer.Option("--all", help="Drop every entry of that table.")] = False,
    backlog: Annotated[
        bool, typer.Option("--backlog", help="Drop from the backlog instead of the dead letters.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Forget entries for good: the connector will never get those events.

    \b
    Examples:
      tidings backlog drop stomp --seq 41
      tidings backlog drop stomp --backlog --all
    """
    if bool(seq) == all_:
        raise typer.BadParameter("say which entries: --seq N (repeatable) or --all, one of the two")
    bus = load_bus(config)
    name = _connector(bus, connector)
    _all_there(bus, name, "backlog" if backlog else "dead", seq)
    count = bus.outbox.drop(name, "backlog" if backlog else "dead", seq or None)
    out.print(f"{name}: dropped {count} {'backlog' if backlog else 'dead-letter'} entr(y/ies)")


def _line(number: int, line: bytes) -> Any:
    try:
        return loads(line)
    except InvalidEvent as exc:
        raise InvalidEvent(f"line {number}: {exc}") from None


def _all_there(bus: Bus, connector: str, table: str, seqs: list[int]) -> None:
    """Nothing is done when a --seq names no entry (a typo, or another connector's entry)."""
    missing = bus.outbox.missing(connector, table, seqs) if seqs else []
    if missing:
        what = "backlog entry" if table == "backlog" else "dead letter"
        raise NotFound(
            f"connector {connector} has no {what} with seq {', '.join(map(str, missing))}; nothing was "
            f"done (see tidings backlog list {connector})"
        )


@schemas_app.command("list")
def schemas_list(config: ConfigOpt = None, json_: JsonOpt = False) -> None:
    """Every registered event type and where its schema comes from.

    \b
    Examples:
      tidings schemas list
      tidings schemas list --json
    """
    bus = load_bus(config)
    rows = [
        [type_, bus.schemas.schema(type_).get("title", ""), bus.schemas.origin(type_)]
        for type_ in bus.schemas.types()
    ]
    print_rows(["type", "title", "from"], rows, console=out, json_=json_)


@schemas_app.command("show")
def schemas_show(type_: Annotated[str, typer.Argument(metavar="TYPE")], config: ConfigOpt = None) -> None:
    """Print the JSON Schema of an event type.

    \b
    Example:
      tidings schemas show cki.datawarehouse.v1
    """
    bus = load_bus(config)
    out.print_json(orjson.dumps(bus.schemas.schema(type_)).decode())


@schemas_app.command("validate")
def schemas_validate(
    type_: Annotated[str, typer.Argument(metavar="TYPE")],
    file: Annotated[
        Path, typer.Argument(help="JSON file with the body (or JSON lines, one body each); - for stdin.")
    ],
    config: ConfigOpt = None,
) -> None:
    """Check event bodies against a type's schema; exit 4 on the first invalid one.

    \b
    Example:
      tidings schemas validate cki.datawarehouse.v1 bodies.jsonl
    """

    bus = load_bus(config)
    raw = read_capped(str(file), "file")
    try:
        bodies = [loads(raw)]
    except InvalidEvent:
        bodies = [_line(number, line) for number, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if not bodies:  # "0 document(s) valid" would pass for a check
        raise InvalidEvent(f"{str(file)!r} holds no JSON document to check")
    for number, body in enumerate(bodies, 1):
        try:
            bus.schemas.validate(type_, body)
        except InvalidEvent as exc:
            where = f" (document {number})" if len(bodies) > 1 else ""
            raise type(exc)(f"{exc}{where}") from None
    out.print(f"{len(bodies)} document(s) valid as {type_}")


@app.command()
def doctor(config: ConfigOpt = None) -> None:
    """Check the config, the outbox and every transport; exit 6 if anything is wrong (3: the config).

    \b
    Examples:
      tidings doctor
      tidings doctor --config staging.toml

    For each transport: connect, declare the connectors' exchanges (or check them, with
    passive_exchange), then check that every configured consumer's queue and bindings exist
    and, on RabbitMQ, that the user may publish, consume and declare what the config needs
    (bindings and permissions through the management API when it answers).
    """
    from tidings.cli.config_cmd import summary

    bus = load_bus(config)
    check_plugins(bus)  # a missing extra is a config error (exit 3) before anything says "ok"
    bus.schemas.check_all()
    out.print(f"config: ok ({summary(bus)}; {bus.config.origin})", highlight=False)
    failures = _check_outbox(bus) + _check_archive(bus) + asyncio.run(_check_transports(bus))
    if failures:
        err.print(f"doctor: {failures} problem(s)", highlight=False)
        raise typer.Exit(6)


def _check_outbox(bus: Bus) -> int:
    """The outbox's line; a problem with it is one problem, and the transports are checked still."""
    try:
        last = bus.outbox.last_seq()
    except StorageError as exc:
        err.print(f"outbox: {FAILED} {escape(str(exc))}", markup=True, highlight=False)
        return 1
    out.print(f"outbox: {bus.config.outbox_path()} — last seq {last}")
    return 0


def _check_archive(bus: Bus) -> int:
    """The archive's line, when ``[archive]`` is configured: its store opened and searched once."""
    if bus.config.archive is None:
        return 0
    from tidings.archive import Query
    from tidings.archive.stores import open_archive

    try:
        archive = open_archive(bus.config)
        try:
            archive.search(Query(), limit=1)
            last = archive.last_seq()
        finally:
            archive.close()
    except StorageError as exc:
        err.print(f"archive: {FAILED} {escape(str(exc))}", markup=True, highlight=False)
        return 1
    out.print(f"archive: {bus.config.archive.store} — last seq {last}", highlight=False)
    return 0


def _expected_topology(bus: Bus) -> dict[str, Topology]:
    """Per transport: the exchanges of its connectors and the queues of its consumers."""
    from tidings.consumer import App

    expected: dict[str, Topology] = {name: Topology() for name in bus.config.transports}
    for connector in bus.config.connectors.values():
        if connector.transport not in expected:  # the archive's own connector: no broker to check
            continue
        spec = ExchangeSpec(connector.exchange, passive=connector.passive_exchange)
        expected[connector.transport].exchanges.append(spec)
    for name, consumer in bus.config.consumers.items():
        expected[consumer.transport].queues.append(App.from_config(bus, name).queue_spec())
    return expected


async def _check_transports(bus: Bus) -> int:
    failures = 0
    for name, topology in _expected_topology(bus).items():
        transport = bus.make_transport(name)
        try:
            await asyncio.wait_for(transport.connect(), 15)
            await transport.declare(Topology(topology.exchanges))
            found = await _verify(transport, topology)
        except (TidingsError, TimeoutError) as exc:
            failures += 1
            _transport_line(err, name, FAILED, str(exc) or "timed out")
            continue
        finally:
            await transport.close()
        for note in found.notes:
            _transport_line(err, name, "[yellow]note[/]", note)
        for problem in found.problems:
            _transport_line(err, name, FAILED, problem)
        failures += len(found.problems)
        if not found.problems:
            what = f"{len(topology.exchanges)} exchange(s), {len(topology.queues)} queue(s)"
            _transport_line(out, f"{name} ({transport.kind})", "[green]ok[/]", f"({what})")
    return failures


FAILED = "[red]FAILED[/]"


def _transport_line(console: Console, name: str, verdict: str, detail: str) -> None:
    """``transport NAME: VERDICT detail``: the verdict styled, the name and the detail as they are."""
    console.print(f"transport {escape(name)}: {verdict} {escape(detail)}", markup=True, highlight=False)


async def _verify(transport: Any, topology: Topology) -> Findings:
    verify = getattr(transport, "verify", None)  # optional in the transport protocol
    if verify is None:
        return Findings(notes=[f"the {transport.kind} transport cannot check queues and bindings"])
    result: Findings = await asyncio.wait_for(verify(topology), 30)
    return result
