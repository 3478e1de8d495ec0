"""`tidings replay`: past events again, from a file, the outbox's history or the archive."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from tidings.archive import Query
from tidings.bus import Bus
from tidings.cli import app, err
from tidings.cli.commands import ConfigOpt, load_bus, out
from tidings.errors import ConfigError, TransportError
from tidings.event import Event

#: --days when not given
DEFAULT_DAYS = 14.0


def _days(value: float | None) -> float | None:
    """--days: from 0 to a hundred years of days (nan, inf and what no date reaches are refused)."""
    if value is not None and (not math.isfinite(value) or not 0 <= value <= 36_500):
        raise typer.BadParameter(f"{value} is not a number of days from 0 to 36500")
    return value


@app.command()
def replay(
    source: Annotated[
        Path | None,
        typer.Option(
            "--from", metavar="FILE", help="JSON-lines file of events (default: the outbox's history)."
        ),
    ] = None,
    from_archive: Annotated[
        bool, typer.Option("--from-archive", help="Read the archive ([archive]) instead, ids kept.")
    ] = False,
    ids: Annotated[
        list[str], typer.Option("--id", metavar="ID", help="These archived events (repeatable).")
    ] = [],  # noqa: B006
    days: Annotated[
        float | None,
        typer.Option(metavar="DAYS", help="Only events of the last DAYS days (default 14).", callback=_days),
    ] = None,
    topic: Annotated[str, typer.Option(metavar="PATTERN", help="Only topics matching this pattern.")] = "#",
    user: Annotated[
        list[str], typer.Option("--user", metavar="USER", help="Archive: only events naming this user.")
    ] = [],  # noqa: B006
    package: Annotated[
        list[str],
        typer.Option("--package", metavar="PACKAGE", help="Archive: only events naming this package."),
    ] = [],  # noqa: B006
    to: Annotated[
        list[str],
        typer.Option(
            "--to", metavar="CONNECTOR", help="Archive: send to these connectors (default: every one)."
        ),
    ] = [],  # noqa: B006
    to_queue: Annotated[
        str | None,
        typer.Option(
            "--to-queue",
            metavar="QUEUE",
            help="Archive: put the events on this consumer's queue alone ([consumers.NAME] or a queue "
            "on the default transport; embedded and RabbitMQ).",
        ),
    ] = None,
    transform: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="same: each event again; cki-needs-triage: one datawarehouse.*.needs_triage per object "
            "seen (new events, through the outbox).",
        ),
    ] = "same",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and count, send nothing.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Send past events again.

    From a file or the outbox's history, each event is published again through the outbox with a
    new id. From the archive (--from-archive, --id) the same events go straight to the connectors:
    their ids kept, so a consumer's inbox drops what it already handled, and an
    x-tidings-replayed-at header; a transform other than `same` makes new events instead.

    \b
    Examples:
      tidings replay --from datawarehouse.jsonl --days 14 --transform cki-needs-triage
      tidings replay --from-archive --topic 'bugzilla.#' --days 1 --to stomp --dry-run
      tidings replay --id 01a2306d-870a-7053-a2b7-98316809bf35 --to rabbit
    """
    from tidings import replay as replaying
    from tidings.topics import validate_pattern

    validate_pattern(topic)
    make = replaying.TRANSFORMS.attribute(transform)
    bus = load_bus(config)
    for name in to:
        if name not in bus.config.connectors:
            raise ConfigError(f"no connector named {name!r} (configured: {', '.join(bus.config.connectors)})")
    since = replaying.since_days(DEFAULT_DAYS if days is None else days)
    if from_archive or ids:
        if source is not None:
            raise typer.BadParameter("--from FILE and the archive (--from-archive, --id) exclude each other")
        if ids and (topic != "#" or user or package):
            raise typer.BadParameter("--id names the events: --topic, --user and --package would choose none")
        if transform != "same" and (to or to_queue):
            raise typer.BadParameter(
                f"--transform {transform} makes new events, published through the outbox to every "
                "connector whose topics take them: --to and --to-queue send the same events again"
            )
        from tidings.cli.web import warn_if_nothing_archives

        warn_if_nothing_archives(bus)
        _from_archive(
            bus,
            ids,
            Query(
                topics=[] if topic == "#" else [topic],
                users=user,
                packages=package,
                start=None if ids else since,
                include_private=True,
            ),
            make if transform != "same" else None,
            to,
            dry_run,
            to_queue,
        )
        return
    if to or to_queue or user or package:
        raise typer.BadParameter(
            "--to, --to-queue, --user and --package are for replays from the archive (--from-archive, --id)"
        )
    _warn_retention(bus, source, days)
    history = (
        replaying.read_jsonl(source, replaying.line_limit(bus))
        if source
        else bus.outbox.history(since=since.timestamp())
    )
    chosen = list(replaying.window(history, since=since, pattern=topic))
    events = list(make(chosen))
    with bar(len(events), "checking" if dry_run else "publishing") as advance:
        count = replaying.replay(bus, events, dry_run=dry_run, progress=advance)
    verb = "would publish" if dry_run else "published"
    out.print(f"{verb} {count} event(s) from {len(chosen)} in the window ({transform})")


def _from_archive(
    bus: Bus,
    ids: list[str],
    query: Query,
    make: Callable[[Iterable[Event]], Iterable[Event]] | None,
    to: list[str],
    dry_run: bool,
    to_queue: str | None = None,
) -> None:
    from tidings import replay as replaying
    from tidings.archive.stores import open_archive

    archive = open_archive(bus.config)
    try:
        found = list(replaying.from_archive(archive, query, ids))
    finally:
        archive.close()
    if make is not None:  # a transform: new events, through the outbox
        events = list(make(found))
        with bar(len(events), "checking" if dry_run else "publishing") as advance:
            count = replaying.replay(bus, events, dry_run=dry_run, progress=advance)
        out.print(
            f"{'would publish' if dry_run else 'published'} {count} new event(s) from {len(found)} archived"
        )
        return
    events = [replaying.marked(event) for event in found]
    if dry_run:
        for event in events:
            out.print(f"{event.id} {event.topic}", highlight=False, markup=False)
        out.print(
            f"would send {len(events)} archived event(s), ids kept, to {', '.join(to) or 'every connector'}"
        )
        return
    if to_queue is not None:
        _to_queue(bus, events, to_queue)
        return
    with bar(len(events), "sending") as advance:
        counts = asyncio.run(replaying.send_again(bus, events, to or None, progress=advance))
    for name, (delivered, failed) in counts.items():
        out.print(f"{name}: sent {delivered} of {delivered + failed} (ids kept)", highlight=False)
    if any(failed for _, failed in counts.values()):
        raise TransportError("some replayed events were not taken; run the replay again for them")


def _to_queue(bus: Bus, events: list[Event], name: str) -> None:
    from tidings import replay as replaying
    from tidings.cli.dead import find_target

    target = find_target(bus, name, None)
    section = bus.config.consumers.get(name)
    fmt = section.format if section is not None else "tidings"
    options = dict(section.format_options) if section is not None else {}
    with bar(len(events), "sending") as advance:
        sent, failed = asyncio.run(
            replaying.send_to_queue(
                bus, events, target.transport, target.queue, fmt, format_options=options, progress=advance
            )
        )
    out.print(f"queue {target.queue}: sent {sent} of {sent + failed} (ids kept)", highlight=False)
    if failed:
        raise TransportError("some replayed events were not taken; run the replay again for them")


def _warn_retention(bus: Bus, source: Path | None, days: float | None) -> None:
    """--days asks for more than the outbox keeps (not said of the default: every replay would)."""
    kept = bus.config.outbox.retention / 86400
    if source is None and days is not None and days > kept:
        err.print(
            f"tidings: warning: the outbox keeps finished events for {kept:g} days ([outbox] retention); "
            f"events older than that are purged, so --days {days:g} finds only {kept:g} days of them "
            "(the archive keeps them longer: --from-archive)",
            markup=False,
            highlight=False,
        )


@contextmanager
def bar(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (a log file gets the summary line only)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)
