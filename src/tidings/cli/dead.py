"""``tidings dead``: the messages a consumer gave up on (``<queue>.dead``) — list, show, requeue, drop.

Not the connectors' dead letters in the outbox (``tidings backlog``): these lie on the broker,
in the dead-letter queue of a consumer's queue. The transport does the work
(:class:`tidings.transport.DeadLetters`, each transport's ``dead.py``); this module finds the
queue and the transport, and prints.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from tidings.bus import Bus
from tidings.cli import app
from tidings.cli.commands import ConfigOpt, JsonOpt, load_bus, out
from tidings.cli.output import aligned
from tidings.config import MAX_COUNT
from tidings.errors import ConfigError, InvalidEvent, NotFound, TidingsError
from tidings.event import dumps, format_time, loads, pretty
from tidings.redact import redact
from tidings.transport import QUEUE_HEADER, DeadLetter, DeadLetters, dead_letters

dead_app = typer.Typer(
    help="A consumer's dead letters (<queue>.dead, on its broker): list, show, requeue, drop.",
    no_args_is_help=True,
)
app.add_typer(dead_app, name="dead")

T = TypeVar("T")

QueueArg = Annotated[
    str, typer.Argument(metavar="QUEUE", help="A configured consumer ([consumers.NAME]) or a queue's name.")
]
TransportOpt = Annotated[
    str | None,
    typer.Option(
        "--transport",
        help="Configured transport the queue is on (default: the consumer's; for a queue's name "
        "'local', or the only transport configured).",
        show_default=False,
    ),
]
IdsOpt = Annotated[
    list[str],
    typer.Option("--id", help="A dead letter's id or its message id (repeatable).", show_default=False),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter the queue has now.")]


class UsageError(TidingsError):
    """A command line that cannot be meant (exit 2), told in one line."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Target:
    """The queue whose dead letters are meant, and the configured transport it is on."""

    queue: str
    transport: str

    @property
    def dead(self) -> str:
        return f"{self.queue}.dead"


def find_target(bus: Bus, name: str, transport: str | None) -> Target:
    """A consumer's queue and transport (``--transport`` wins), or a queue's name on a transport.

    A consumer's queue is its section's ``queue``, else its name: the App module is not imported.
    """
    section = bus.config.consumers.get(name)
    if section is not None:
        return Target(section.queue or name, transport or section.transport)
    return Target(name, transport or _default_transport(bus))


def _default_transport(bus: Bus) -> str:
    names = list(bus.config.transports)
    name = bus.config.transport_name("local")  # what a consumer uses when it names none
    if name in names:
        return name
    raise ConfigError(
        f"QUEUE is not a configured consumer: say which transport it is on with --transport "
        f"(configured: {', '.join(names)})"
    )


def run(bus: Bus, target: Target, work: Callable[[DeadLetters], Awaitable[T]]) -> T:
    """``work(dead letters)`` on a connection of the target's transport, closed afterwards."""

    async def connected() -> T:
        transport = bus.make_transport(target.transport)
        dead = dead_letters(transport)  # before connecting: a transport without them says so at once
        try:
            await transport.connect()
            return await work(dead)
        finally:
            await transport.close()

    return asyncio.run(connected())


def _which(ids: list[str], all_: bool, command: str) -> list[str] | None:
    see = f"; see tidings dead {command} --help"  # as every usage error says where to read more
    if ids and all_:
        raise UsageError(f"say which dead letters: --id ID (repeatable) or --all, not both{see}")
    if not ids and not all_:
        raise UsageError(f"say which dead letters: --id ID (repeatable) or --all{see}")
    return None if all_ else ids


# -- the commands ------------------------------------------------------------------------


@dead_app.command("list")
def dead_list(
    queue: QueueArg,
    transport: TransportOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_COUNT, help="At most this many, oldest first.")] = 50,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The dead letters of QUEUE, oldest first: id, topic, when it died, attempts, reason, last error.

    \b
    Examples:
      tidings dead list triage
      tidings dead list triage --transport rabbit --json

    Nothing is taken from the dead letters. On RabbitMQ they are read and handed back, which may
    change their order (see docs/cli.md).
    """
    bus = load_bus(config)
    target = find_target(bus, queue, transport)
    letters = run(bus, target, lambda dead: dead.list(target.queue, limit))
    if json_:
        for letter in letters:
            _line(dumps(summary(letter), default=str).decode())
    elif not letters:
        out.print(f"{target.dead}: no dead letters", highlight=False, markup=False)
    elif out.is_terminal:
        out.print(_table(target, letters, limit))
    else:
        sys.stdout.write(aligned(COLUMNS, [_cells(letter) for letter in letters]))


@dead_app.command("show")
def dead_show(
    queue: QueueArg,
    id_: Annotated[str, typer.Argument(metavar="ID", help="Its id (`tidings dead list`) or message id.")],
    transport: TransportOpt = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """One dead letter in full: its envelope, headers, why it died, and its body.

    \b
    Example:
      tidings dead show triage 3
    """
    bus = load_bus(config)
    target = find_target(bus, queue, transport)
    letter = run(bus, target, lambda dead: dead.get(target.queue, id_))
    if letter is None:
        raise NotFound(f"no dead letter {id_!r} in {target.dead}")
    if json_:
        _line(dumps(full(letter), default=str).decode())
        return
    for label, value in _envelope(letter):
        _line(f"{label + ':':<12} {_one_line(value)}")
    _line("headers:")
    for name, value in sorted(letter.message.headers.items()):
        _line(f"  {name}: {_one_line(value)}")
    _line("body:")
    text, is_json = body_text(letter.message.body)
    if is_json and out.is_terminal:
        out.print_json(text)
    else:
        _line(text)


@dead_app.command("requeue")
def dead_requeue(
    queue: QueueArg,
    ids: IdsOpt = [],  # noqa: B006
    all_: AllOpt = False,
    transport: TransportOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Put dead letters back on QUEUE as first attempts (its handler gets them again), then remove them.

    \b
    Examples:
      tidings dead requeue triage --id 3 --id 7
      tidings dead requeue triage --all

    A copy is on the queue, confirmed by the broker, before its dead letter is removed.
    """
    chosen = _which(ids, all_, "requeue")
    bus = load_bus(config)
    target = find_target(bus, queue, transport)
    count = run(bus, target, lambda dead: dead.requeue(target.queue, chosen))
    out.print(f"requeued {count} dead letter(s) from {target.dead} to {target.queue}", highlight=False)


@dead_app.command("drop")
def dead_drop(
    queue: QueueArg,
    ids: IdsOpt = [],  # noqa: B006
    all_: AllOpt = False,
    transport: TransportOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete dead letters of QUEUE for good (an explicit decision: nothing keeps a copy).

    \b
    Example:
      tidings dead drop triage --id 3
    """
    chosen = _which(ids, all_, "drop")
    bus = load_bus(config)
    target = find_target(bus, queue, transport)
    count = run(bus, target, lambda dead: dead.drop(target.queue, chosen))
    out.print(f"dropped {count} dead letter(s) from {target.dead}", highlight=False)


# -- what is printed ----------------------------------------------------------------------

COLUMNS = ["id", "topic", "died", "attempts", "reason", "last error"]


def _cells(letter: DeadLetter) -> list[str]:
    attempts = "-" if letter.attempts is None else str(letter.attempts)
    return [
        letter.id,
        letter.message.routing_key,
        _when(letter.dead_at),
        attempts,
        _one_line(redact(letter.reason)),
        _one_line(redact(letter.last_error)),
    ]


def _table(target: Target, letters: list[DeadLetter], limit: int) -> Table:
    more = f" (the first {limit}: --limit shows more)" if len(letters) == limit else ""
    rows = [_cells(letter) for letter in letters]
    table = Table(title=f"{target.dead} on {target.transport}{more}", title_justify="left")
    for n, name in enumerate(COLUMNS):
        # ids and times are copied from here: never cut short; the topics and reasons fold instead
        whole = name in ("id", "died", "attempts")
        widest = max(len(row[n]) for row in rows)
        table.add_column(name, no_wrap=whole, min_width=widest if whole else None, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def summary(letter: DeadLetter) -> dict[str, Any]:
    """What ``list --json`` prints of one dead letter."""
    return {
        "id": letter.id,
        "message_id": letter.message.message_id,
        "topic": letter.message.routing_key,
        "died": format_time(letter.dead_at) if letter.dead_at else None,
        "attempts": letter.attempts,
        "reason": redact(letter.reason),
        "last_error": redact(letter.last_error),
    }


def full(letter: DeadLetter) -> dict[str, Any]:
    """What ``show --json`` prints: the summary, the envelope, the headers and the body."""
    message = letter.message
    found: dict[str, Any] = {
        **summary(letter),
        "queue": message.headers.get(QUEUE_HEADER),
        "exchange": message.exchange,
        "published": format_time(message.timestamp) if message.timestamp else None,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": message.headers,
        "properties": message.properties,
    }
    try:
        found["body"] = loads(message.body)
    except InvalidEvent:  # not JSON: as text, or as base64 when it is not even that
        try:
            found["body_text"] = message.body.decode()
        except UnicodeDecodeError:
            found["body_base64"] = base64.b64encode(message.body).decode()
    return found


def _envelope(letter: DeadLetter) -> list[tuple[str, Any]]:
    message = letter.message
    return [
        ("id", letter.id),
        ("message id", message.message_id or "-"),
        ("topic", message.routing_key),
        ("exchange", message.exchange or "-"),
        ("published", _when(message.timestamp)),
        ("died", _when(letter.dead_at)),
        ("attempts", "-" if letter.attempts is None else letter.attempts),
        ("reason", redact(letter.reason or "-")),
        ("last error", redact(letter.last_error or "-")),
        ("content", message.content_type or "-"),
    ]


def body_text(body: bytes) -> tuple[str, bool]:
    """The body for people: JSON indented (True), else its text, else what it is."""
    try:
        return pretty(loads(body)).decode(), True
    except InvalidEvent:
        pass
    try:
        return body.decode(), False
    except UnicodeDecodeError:
        return f"({len(body)} bytes, not text: `--json` shows them as base64)", False


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "-"


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _line(text: str) -> None:
    # plain, not through rich: piped output must not be wrapped, cut or marked up
    sys.stdout.write(text + "\n")
