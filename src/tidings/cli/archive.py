"""``tidings archive``: keep every event in the archive ([archive] in the config)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from tidings.cli import app, err
from tidings.cli.commands import ConfigOpt, LogOpt, VerboseOpt, load_bus, out, until_signalled
from tidings.redact import redact


@app.command()
def archive(
    once: Annotated[
        bool, typer.Option("--once", help="Archive what is there now, print the count, exit.")
    ] = False,
    config: ConfigOpt = None,
    log_level: LogOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Store every event in the archive until stopped (SIGTERM: exit 0; Ctrl-C: 130).

    \b
    Examples:
      tidings archive
      tidings archive --once

    The events come from the local outbox ([archive] from = "outbox", the default) or from broker
    queues ([archive] from = [{transport = ..., bindings = [...]}]); see docs/archive.md.
    """
    from tidings.archive.ingest import run_archive, section_of

    bus = load_bus(config, "WARNING" if once and log_level is None else log_level, verbose=verbose)
    section = section_of(bus)
    where = redact(section.url) if section.store == "postgresql" else str(bus.config.archive_path())
    if once:
        counts = asyncio.run(run_archive(bus, asyncio.Event(), once=True))
        note = f", {counts.duplicates} already there" if counts.duplicates else ""
        rejected = f", {counts.rejected} refused (dead letters)" if counts.rejected else ""
        out.print(f"archived {counts.archived} event(s){note}{rejected}", highlight=False)
        return
    source = "the outbox" if section.from_outbox() else ", ".join(s.queue for s in section.sources)
    err.print(f"archiving from {source} into {where} — Ctrl-C to stop", highlight=False)
    asyncio.run(until_signalled(lambda stop: run_archive(bus, stop)))
