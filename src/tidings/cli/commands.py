"""Commands that move events: publish, dispatch, consume, serve, tail."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tidings.bus import Bus
from tidings.cli import OutputError, app, err, setup_logging
from tidings.config import MAX_COUNT
from tidings.consumer import App, callback_app
from tidings.errors import ConfigError, InvalidEvent
from tidings.event import Event, json_kind, loads
from tidings.plugins import import_object
from tidings.stopping import exit_status, leave_now_if_forced, run_until_signalled
from tidings.topics import validate_pattern
from tidings.transport import transport_plugin

out = Console(soft_wrap=True, markup=False, emoji=False)  # see err

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="PATH",
        # $TIDINGS_CONFIG is read where the file is chosen (tidings.config.find_config), which
        # says which of the two named it
        help="Config file (default: $TIDINGS_CONFIG, then tidings.toml here or in a parent folder, "
        "then /etc/tidings/tidings.toml, else the embedded default; `tidings config show` says which).",
        show_default=False,
    ),
]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(value: str | None) -> str | None:
    """A level the logging module knows by that name, checked as the option is read (a usage error)."""
    if value is not None and value.upper() not in LOG_LEVELS:
        raise typer.BadParameter(f"must be DEBUG, INFO, WARNING or ERROR, not {value!r}")
    return value.upper() if value is not None else None


LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default: [bus] log_level of the config, INFO).",
        show_default=False,
        callback=_log_level,
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also one line per event.")]


JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line, for programs.")]


def seconds(value: float) -> float:
    """An option's callback: a number of seconds, 0 or more (nan and inf are neither)."""
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{value} is not a number of seconds, 0 or more")
    return value


def positive(value: float) -> float:
    """An option's callback: a finite number above 0 (a rate)."""
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"{value} is not a number above 0")
    return value


#: the most a command reads from one file or standard input: an endless source (/dev/zero) or a
#: file far past any event is refused rather than read until memory runs out
READ_LIMIT = 64 * 1024 * 1024


def read_capped(name: str, what: str, limit: int = READ_LIMIT) -> bytes:
    """The bytes of file ``name`` (``-``: standard input), at most ``limit`` of them."""
    try:
        if name == "-":
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as handle:
                raw = handle.read(limit + 1)
    except OSError as exc:
        raise InvalidEvent(f"cannot read {what} {name!r}: {exc.strerror}") from None
    if len(raw) > limit:
        raise InvalidEvent(f"{what} {name!r} is larger than {limit:,} bytes")
    return raw


def check_plugins(bus: Bus) -> None:
    """Import what each transport and format needs; a missing extra is a ConfigError naming it.
    (``config check`` and ``doctor``, and dispatch and serve before they start.)
    A transport may also say why a connector's or a consumer's exchange cannot be one of its own
    (a Kafka topic name), with an optional ``exchange_problem(exchange)``."""
    transports = {name: bus.make_transport(name) for name in bus.config.transports}
    tables = [("connectors", bus.config.connectors), ("consumers", bus.config.consumers)]
    for section, name, table in ((s, n, t) for s, named in tables for n, t in named.items()):
        check = getattr(transports.get(table.transport), "exchange_problem", None)
        problem = check(table.exchange) if check is not None else None
        if problem:
            raise ConfigError(
                f"{bus.config.origin}: [{section}.{name}] exchange {table.exchange!r}: {problem}"
            )
    for section, name, table in bus.config.formatted():
        where = f"{bus.config.origin}: [{section}.{name}] format_options"
        bus.make_format(table.format, table.format_options, where)


def load_bus(config: Path | None, log_level: str | None = "WARNING", *, verbose: bool = False) -> Bus:
    """The bus of ``config``; logging at ``log_level``, or the config's ``[bus] log_level`` if None."""
    setup_logging(log_level or "WARNING")  # until the config is read: its errors are ours to print
    bus = Bus.load(config)
    if log_level is None:
        setup_logging(bus.config.bus.log_level, verbose=verbose)
    elif verbose:
        setup_logging(log_level, verbose=verbose)
    return bus


def read_body(body: str) -> dict[str, Any]:
    """A JSON object given inline, as ``@FILE``, or ``@-`` for standard input."""
    if body.startswith("@"):
        name = body[1:]
        if not name:
            raise InvalidEvent("--body @ needs a file name (@FILE, or @- for standard input)")
        raw = read_capped(name, "body file")
        if not raw.strip():  # (rather than "malformed JSON: Input data was truncated")
            raise InvalidEvent(f"body file {'(standard input)' if name == '-' else repr(name)} is empty")
    else:
        raw = body.encode()
    value = loads(raw)
    if not isinstance(value, dict):
        raise InvalidEvent(f"the body must be a JSON object, not {json_kind(value)}")
    return value


def parse_headers(pairs: list[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEvent(f"header {pair!r} is not KEY=VALUE")
        if key in headers:  # one of the two would be dropped without a word
            raise InvalidEvent(f"header {key!r} is given twice")
        headers[key] = value
    return headers


@app.command()
def publish(
    topic: Annotated[str, typer.Argument(help="Routing key, e.g. datawarehouse.checkout.new")],
    body: Annotated[str, typer.Option("--body", "-b", help="JSON object, @FILE, or @- for stdin.")],
    type_: Annotated[
        str | None,
        typer.Option(
            "--type",
            "-t",
            metavar="TYPE",
            help="Schema type, e.g. cki.datawarehouse.v1 or bodhi.update.comment.v1 "
            "(`tidings schemas list`); the body is validated against it.",
        ),
    ] = None,
    header: Annotated[
        list[str], typer.Option("--header", "-H", metavar="KEY=VALUE", help="A header; repeatable.")
    ] = [],  # noqa: B006
    private: Annotated[
        bool, typer.Option("--private", help="Mark the event private (sinks may redact it).")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Durably publish one event into the outbox and print its id.

    The event is on disk when this returns; a running dispatcher (`tidings dispatch` or
    `tidings serve`) delivers it to every connector.

    Example: tidings publish demo.hello --body '{"message": "hi"}' --type tidings.demo.v1
    """
    bus = load_bus(config)
    event = bus.publish(
        topic,
        read_body(body),
        type=type_,
        headers=parse_headers(header),
        visibility="private" if private else "public",
    )
    try:
        out.print(event.id, highlight=False)
    except OutputError as exc:  # it is stored and will be delivered: say so, and which it was
        raise OutputError(f"event {event.id} was stored, but {exc}") from None


@app.command()
def dispatch(
    connector: Annotated[
        list[str],
        typer.Option(
            "--connector", metavar="NAME", help="Only these connectors (repeatable; default: all enabled)."
        ),
    ] = [],  # noqa: B006
    once: Annotated[bool, typer.Option("--once", help="Deliver what is due, then exit.")] = False,
    config: ConfigOpt = None,
    log_level: LogOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Deliver outbox events to the connectors until stopped (SIGTERM/Ctrl-C finish the batch in flight).

    \b
    Examples:
      tidings dispatch
      tidings dispatch --once    # what is due now, then exit (cron, a test)
    """
    bus = load_bus(config, log_level, verbose=verbose)
    check_plugins(bus)
    if not bus.config.connectors:
        raise ConfigError(f"{bus.config.origin}: no [connectors.NAME]: there is nothing to deliver to")
    names = connector or None
    for name in names or []:
        if name not in bus.config.connectors:
            raise ConfigError(f"no connector named {name!r} (configured: {', '.join(bus.config.connectors)})")
    dispatcher = bus.dispatcher(names)
    if once:
        asyncio.run(dispatcher.deliver_due())
        for c in dispatcher.connectors:
            out.print(f"{c.name}: {_once_summary(bus, c)}", highlight=False)
        return
    dispatcher.acquire()  # another dispatcher there is said before "dispatching", not after it
    err.print(
        f"dispatching from {bus.config.outbox_path()} to {', '.join(c.name for c in dispatcher.connectors)}"
        " — Ctrl-C to stop"
    )
    asyncio.run(until_signalled(dispatcher.run))


def _once_summary(bus: Bus, connector: Any) -> str:
    """What ``dispatch --once`` did for a connector, and what it left waiting for a later run."""
    stats = connector.stats
    said = f"delivered {stats.delivered}, to backlog {stats.retried}, dead {stats.dead}"
    if stats.last_error:
        said += f" (last: {stats.last_error})"
    waiting = bus.outbox.backlog_head(connector.name)
    if waiting is not None:
        count, soonest = waiting
        said += f"; {count} waiting in the backlog, the next due in {max(0.0, soonest - time.time()):.0f}s"
    return said


async def until_signalled(run: Any, *args: Any) -> None:
    """Run ``run(*args, stop)`` until SIGTERM or SIGINT sets ``stop``; after Ctrl-C, exit 130.

    SIGTERM is how a service manager stops a service: a clean stop, exit 0. Ctrl-C is an
    interruption (exit 130, as shells expect), but only after the same clean stop. A second
    signal stops at once (:mod:`tidings.stopping`).
    """
    received = await run_until_signalled(run, *args)
    leave_now_if_forced(received)
    if exit_status(received):
        raise typer.Exit(exit_status(received))


def checked(
    check: Callable[[asyncio.Event], Awaitable[dict[str, list[str]]]], said: dict[str, str]
) -> dict[str, list[str]]:
    """Run a ``--verify-missing`` check until its time is up or SIGTERM/Ctrl-C stops it early,
    and print what it found either way: per side ``said[side]: N`` and the ids."""
    found: dict[str, list[str]] = {}

    async def run(stop: asyncio.Event) -> None:
        found.update(await check(stop))

    try:
        asyncio.run(until_signalled(run))
    finally:  # after Ctrl-C too (exit 130): what was seen by then is the answer
        for side, ids in found.items():
            out.print(f"{said[side]}: {len(ids)}", highlight=False)
            for event_id in ids:
                out.print(f"  {event_id}", highlight=False)
    return found


def import_target(target: str) -> Any:
    return import_object(target)


def import_handler(target: str) -> Any:
    """A ``module:function`` handler: imported, and callable."""
    found = import_target(target)
    if not callable(found):
        raise ConfigError(f"{target!r} is not callable (it is a {type(found).__name__}): give a function")
    return found


@app.command()
def consume(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="MODULE:APP", help="An App object to run, or NAME: a [consumers.NAME] with an app."
        ),
    ] = None,
    callback: Annotated[
        str | None,
        typer.Option("--callback", metavar="MODULE:FUNC", help="MODULE:FUNC, a function taking an Event."),
    ] = None,
    bind: Annotated[
        list[str],
        typer.Option("--bind", metavar="PATTERN", help="Topic pattern for --callback (repeatable)."),
    ] = [],  # noqa: B006
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            metavar="NAME",
            help="Queue name (default: the app's name; MODULE.FUNC for --callback).",
        ),
    ] = None,
    transport: Annotated[
        str | None, typer.Option("--transport", metavar="NAME", help="Configured transport name.")
    ] = None,
    exchange: Annotated[
        str | None,
        typer.Option(
            "--exchange", metavar="NAME", help="Exchange the queue is bound on (a connector's exchange)."
        ),
    ] = None,
    prefetch: Annotated[
        int | None, typer.Option(min=1, max=MAX_COUNT, help="Messages held unsettled at once.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_COUNT, help="Handlers running at once (1 keeps the queue's order)."),
    ] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a consuming service until SIGTERM; messages are acked only after the handler returns.

    \b
    Examples:
      tidings consume myservice:app
      tidings consume triage          # [consumers.triage] with app and bindings
      tidings consume --callback myservice:handle --bind 'datawarehouse.checkout.*' --queue checkouts

    An App named NAME takes the settings of [consumers.NAME] when the config has one (the options
    given here go over them).
    """
    bus = load_bus(config, log_level, verbose=verbose)
    if (target is None) == (callback is None):
        raise typer.BadParameter("give either MODULE:APP or --callback MODULE:FUNC")
    for option, given in (("--queue", queue), ("--exchange", exchange), ("--transport", transport)):
        if given is not None and not given.strip():
            raise typer.BadParameter(f"{option} cannot be empty")
    if callback is not None:
        if not bind:
            raise typer.BadParameter("--callback needs at least one --bind PATTERN")
        for pattern in bind:
            validate_pattern(pattern)
        # the default queue is the whole MODULE.FUNC: two services whose functions share a name
        # ("handle") would share one queue, and each ack the other's events without a call
        name = queue or callback.replace(":", ".")
        consumer_app = callback_app(name, import_handler(callback), bind, queue=name)
    elif target is not None and ":" not in target and target in bus.config.consumers:
        consumer_app = bus.consumer(target)  # [consumers.NAME], as serve runs it
    elif target is not None and ":" not in target:
        known = ", ".join(sorted(bus.config.consumers)) or "none"
        raise ConfigError(
            f"{target!r} is neither MODULE:APP nor a [consumers.{target}] of the config (consumers: {known})"
        )
    else:
        consumer_app = import_target(target)  # type: ignore[arg-type]
        if not isinstance(consumer_app, App):
            hint = (
                f"; a function goes with --callback {target} --bind PATTERN" if callable(consumer_app) else ""
            )
            raise ConfigError(f"{target!r} is not a tidings App{hint}")
        section = bus.config.consumers.get(consumer_app.name)
        if section is not None:  # [consumers.NAME] says where it runs, as for `tidings serve`
            consumer_app.configure(section)
    if queue:
        consumer_app.settings.queue = queue
    if transport:
        consumer_app.settings.transport = transport
    if exchange:
        consumer_app.settings.exchange = exchange
    if prefetch:
        consumer_app.settings.prefetch = prefetch
    if concurrency:
        consumer_app.settings.concurrency = concurrency
    # an unknown transport, or one whose package is missing: said before "consuming"
    kind, _ = bus.config.transport_options(consumer_app.settings.transport)
    transport_plugin(kind).load("transport")
    err.print(
        f"consuming queue {consumer_app.settings.queue!r} ({', '.join(consumer_app.bindings())}) "
        "— Ctrl-C to stop"
    )
    try:
        asyncio.run(until_signalled(consumer_app.run, bus))
    finally:
        bus.close()  # its handling journal file goes (it stayed, 256 KiB a run)


@app.command()
def tail(
    pattern: Annotated[
        str, typer.Argument(metavar="PATTERN", help="Only topics matching this pattern.")
    ] = "#",
    limit: Annotated[
        int, typer.Option("--last", metavar="N", min=0, help="Show this many past events that match first.")
    ] = 10,
    json_: Annotated[
        bool, typer.Option("--json", help="One JSON event per line instead of a table.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Follow events as they are published into the outbox, newest last (Ctrl-C to stop).

    \b
    Examples:
      tidings tail                               # everything, the last 10 first
      tidings tail 'datawarehouse.#' --last 50 --json
    """
    from tidings.cli.live import follow_outbox

    validate_pattern(pattern)
    bus = load_bus(config)
    follow_outbox(bus, pattern, limit, as_json=json_, console=out)


@app.command()
def serve(
    config: ConfigOpt = None,
    log_level: LogOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the dispatcher and every configured consumer (each [consumers.NAME] with an app), every
    relay ([relays.NAME], bridges too) and every reactor rule together, and the web page when
    [web] is configured.

    \b
    Examples:
      tidings serve
      tidings serve --config /etc/tidings/tidings.toml
    """
    bus = load_bus(config, log_level, verbose=verbose)
    check_plugins(bus)
    apps = bus.served_consumers()
    beside, page = [], ""
    if bus.config.web is not None:  # the page too: imported only when configured (the web extra)
        from tidings.cli.web import web_runner

        beside.append(web_runner(bus, bus.config.web))
        page = f"; the page on http://{bus.config.web.listen}/"
    err.print(
        f"serving: dispatcher for {', '.join(bus.config.connectors) or 'no connectors'}; "
        f"consumers: {', '.join(a.name for a in apps) or 'none'}{page} — Ctrl-C to stop"
    )
    try:
        asyncio.run(until_signalled(lambda stop: bus.serve(stop, apps, beside=beside)))
    finally:
        bus.close()


def print_event(event: Event, console: Console) -> None:
    console.print(
        f"[dim]{event.time:%H:%M:%S.%f}[/] [bold cyan]{escape(event.topic)}[/] "
        f"[dim]{escape(event.id)} {escape(event.type or '')}[/]",  # whole: `dead show`, `replay --id` take it
        markup=True,
    )


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds the producer runs.", callback=seconds)] = 15.0,
    rate: Annotated[
        float, typer.Option(help="Events per second the producer emits.", callback=positive)
    ] = 40.0,
    home: Annotated[Path, typer.Option(help="Folder for the demo's outbox and broker files.")] = Path(
        ".tidings-demo"
    ),
) -> None:
    """Watch the embedded bus work: CKI DataWarehouse-like events published, dispatched and consumed.

    \b
    Examples:
      tidings demo
      tidings demo --duration 60 --rate 200
    """
    from tidings.formats.cki.demo import Ledger, run_demo

    setup_logging("WARNING")
    err.print(
        f"[bold]tidings demo[/]: embedded bus in {escape(str(home))}/ — a DataWarehouse-like producer "
        f"at {rate:g} events/s for {duration:g}s, a consumer service printing what it acks",
        markup=True,
    )
    ledgers: list[Ledger] = []

    async def run(stop: asyncio.Event) -> None:  # a signal stops the producer; what it sent arrives
        ledgers.append(await run_demo(home, duration, rate, out, stop))

    received = asyncio.run(run_until_signalled(run))
    leave_now_if_forced(received)
    ledger = ledgers[0]
    latencies = sorted(ledger.latencies or [0.0])
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    lost = ledger.published - ledger.received
    out.print(
        f"\n[bold]ledger[/]: published {ledger.published}, received {ledger.received}, "
        f"lost {max(lost, 0)}; publish→handler latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
        soft_wrap=True,
        markup=True,
    )
    if lost > 0:
        raise typer.Exit(1)
    if exit_status(received):
        raise typer.Exit(exit_status(received))
