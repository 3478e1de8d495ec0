"""The reactor: for each event a rule matches, run a command (or call a function).

Each ``[reactor.rules.NAME]`` is a consumer of its own, on queue ``reactor.NAME`` bound by the
rule's ``bindings``: a rule that fails is retried on its own schedule and, after its attempts,
dead-letters the event in ``reactor.NAME.dead`` (``tidings dead list reactor.NAME``) without
running the other rules again. Events the rule's ``match`` filter refuses are acked and forgotten.

A command runs as an argv list — never through a shell — with the event's values substituted
(``$data.job`` as a whole argument, ``${topic}`` inside one; see tidings.filters for the paths),
the event (or its body) as JSON on stdin, and a timeout. A non-zero exit or a timeout is a
failure (retried); an argument whose value the event does not have dead-letters the event at
once (it would fail the same way every time). ``workers`` bounds the commands running at once
over all rules of a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidings.config import ReactorRule
from tidings.consumer import App
from tidings.errors import ConfigError, InvalidEvent
from tidings.event import Event
from tidings.filters import MISSING, FilterTimeout, Predicate, as_text, compile_filter, lookup
from tidings.handling import Reject
from tidings.plugins import import_object

if TYPE_CHECKING:
    from tidings.bus import Bus

log = logging.getLogger(__name__)

#: a whole argument that is one substitution: ``$data.job``
WHOLE = re.compile(r"\$([A-Za-z_][\w.]*)")
#: a substitution inside an argument: ``job-${data.job}.log``; ``$${`` is a literal ``${`` (and ``$$``
#: before anything else stays as it is: a shell's process id)
INSIDE = re.compile(r"\$\$(?=\{)|\$\{([^}]+)\}")
#: how much of a command's output a log line keeps
OUTPUT_SHOWN = 2000
#: seconds to wait for a killed command to be gone
KILL_WAIT = 5.0


class CommandFailed(Exception):
    """A rule's command exited non-zero, timed out or could not start: retried on its schedule."""


@dataclass
class Rule:
    name: str
    config: ReactorRule
    matches: Predicate

    @property
    def queue(self) -> str:
        return f"reactor.{self.name}"

    def argv(self, event: Event) -> list[str]:
        """The command with the event's values in place of its substitutions."""
        return [substitute(arg, event) for arg in self.config.command]

    def stdin(self, event: Event) -> bytes:
        if self.config.stdin == "none":
            return b""
        if self.config.stdin == "body":
            return as_text(event.body).encode()
        return event.to_json()


def rules(bus: Bus) -> list[Rule]:
    section = bus.config.reactor
    return [
        Rule(
            name, rule, compile_filter(rule.match, f"[reactor.rules.{name}] match") if rule.match else _always
        )
        for name, rule in section.rules.items()
    ]


def substitute(arg: str, event: Event) -> str:
    whole = WHOLE.fullmatch(arg)
    if whole:
        return _value(event, whole[1], arg)
    return INSIDE.sub(lambda m: "$" if m[0] == "$$" else _value(event, m[1], m[0]), arg)


def paths_in(arg: str) -> list[str]:
    """The event fields a command argument names."""
    whole = WHOLE.fullmatch(arg)
    if whole:
        return [whole[1]]
    return [m[1] for m in INSIDE.finditer(arg) if m[0] != "$$"]


def reactor_apps(bus: Bus) -> list[App]:
    """One consumer per rule; commands of all of them share ``workers`` slots."""
    section = bus.config.reactor
    slots = asyncio.Semaphore(section.workers)
    return [_rule_app(bus, rule, slots) for rule in rules(bus)]


def firing(bus: Bus, events: Iterable[Event]) -> Iterable[tuple[Event, Rule, list[str] | str]]:
    """For ``tidings reactor --dry-run``: each event, each rule it would fire, and what would run."""
    found = rules(bus)
    for event in events:
        for rule in found:
            if any(_bound(pattern, event.topic) for pattern in rule.config.bindings) and rule.matches(event):
                try:
                    yield event, rule, rule.argv(event) if rule.config.command else rule.config.call
                except (Reject, InvalidEvent) as exc:
                    yield event, rule, f"(would be dead-lettered: {exc})"


# -- running ---------------------------------------------------------------------------------------


def _rule_app(bus: Bus, rule: Rule, slots: asyncio.Semaphore) -> App:
    section = bus.config.reactor
    app = App(
        rule.queue,
        queue=rule.queue,
        transport=section.transport,
        exchange=section.exchange,
        format=section.format,
        max_attempts=rule.config.max_attempts,
        retry_schedule=rule.config.retry_schedule,
        concurrency=section.workers,
    )
    target = _callable(rule, bus.config.base_dir) if rule.config.call else None

    async def react(event: Event) -> None:
        try:
            if not rule.matches(event):
                return  # not for this rule: acked, nothing runs
        except FilterTimeout as exc:  # it would take as long every time
            raise Reject(str(exc)) from None
        async with slots:
            if target is not None:
                await _call(rule, target, event)
            else:
                await run_command(rule, rule.argv(event), rule.stdin(event))

    app.add_handler(rule.config.bindings, react)
    return app


async def run_command(rule: Rule, argv: list[str], stdin: bytes) -> None:
    """Run ``argv``; log its exit status and output; CommandFailed unless it exits 0 in time."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills what it started too
        )
    except OSError as exc:
        raise CommandFailed(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    try:
        output, _ = await asyncio.wait_for(process.communicate(stdin), rule.config.timeout)
    except TimeoutError:
        exited = process.returncode  # the command may be done, and what it started holds its output
        await _kill_group(process)
        if exited is None:
            late = f"{argv[0]} did not finish within {rule.config.timeout:g} s; killed"
            raise CommandFailed(late) from None
        log.info("reactor %s: %s exited %d; what it left running was killed", rule.name, argv[0], exited)
        if exited != 0:
            raise CommandFailed(f"{argv[0]} exited {exited}") from None
        return
    except asyncio.CancelledError:  # the reactor stops: leave nothing running behind
        await _kill_group(process)
        raise
    shown = output.decode(errors="replace")[-OUTPUT_SHOWN:].strip()
    log.info(
        "reactor %s: %s exited %d%s", rule.name, argv[0], process.returncode, f": {shown}" if shown else ""
    )
    if process.returncode != 0:
        raise CommandFailed(f"{argv[0]} exited {process.returncode}: {shown[-200:]}")


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill the command and every process in its group (a shell's background jobs hold its
    output pipe open, and would keep it waiting)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        await asyncio.wait_for(process.wait(), KILL_WAIT)
    except TimeoutError:  # a child that left the group still holds the pipe: stop waiting for it
        log.warning("reactor: %d was killed, but a process it started still holds its output", process.pid)


async def _call(rule: Rule, target: Callable[[Event], Any], event: Event) -> None:
    """Call the rule's function within its ``timeout``; CommandFailed if it does not return in time.

    A coroutine is cancelled then. A plain function goes on in its thread (Python cannot stop
    a thread), but no longer holds a worker's slot: a hung one does not stop every rule."""
    running = target(event) if inspect.iscoroutinefunction(target) else asyncio.to_thread(target, event)
    try:
        await asyncio.wait_for(running, rule.config.timeout)
    except TimeoutError:
        raise CommandFailed(f"{rule.config.call} did not return within {rule.config.timeout:g} s") from None


def _callable(rule: Rule, config_dir: str) -> Callable[[Event], Any]:
    found = import_object(rule.config.call, f"[reactor.rules.{rule.name}] call", beside=config_dir)
    if not callable(found):
        raise ConfigError(f"[reactor.rules.{rule.name}] call {rule.config.call!r} is not callable")
    return found  # type: ignore[no-any-return]


def _value(event: Event, path: str, written: str) -> str:
    value = lookup(event, path)
    if value is MISSING:
        raise Reject(f"argument {written}: the event has no {path}")
    text = as_text(value)
    if "\0" in text:  # no program can be given it: every try would fail the same way
        raise Reject(f"argument {written}: the event's {path} holds a NUL character")
    return text


def _always(event: Event) -> bool:
    return True


def _bound(pattern: str, topic: str) -> bool:
    from tidings.topics import topic_matches

    return topic_matches(pattern, topic)
