"""The ``tidings`` command line.

Exit codes: 0 success; 1 other error; 2 usage error; 3 configuration error;
4 invalid event or input; 5 the outbox could not store; 6 a broker could not be
reached or refused; 7 another dispatcher holds the outbox; 8 a consumer halted;
130 interrupted. Every error is one line on stderr; ``TIDINGS_DEBUG=1`` adds the
traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from tidings.errors import ConfigError, TidingsError
from tidings.redact import RedactingFilter, redact

# soft_wrap: a line is printed whole (a terminal wraps it itself; a pipe or a log keeps it one line).
# markup=False, emoji=False: what is printed holds users' text (topics, names, errors), and "[/]" or
# ":b:" in it must print as itself, not end a style (or fail), or become a picture; a line with
# styles of ours says markup=True and escapes what it interpolates
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)


class OutputError(TidingsError):
    """Standard output could not be written (a full disk, an I/O error)."""


class GuardedStdout:
    """Standard output whose failed write (a full disk, an I/O error) is one line, exit 1.

    A reader that went away (a broken pipe) stays rich's and Python's to handle as before."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return int(self._guarded(self.stream.write, text))

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    @staticmethod
    def _guarded(call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the stream's own
        return getattr(self.stream, name)


app = typer.Typer(
    name="tidings",
    help="A reliable event bus: publish events durably, deliver them to every connector, consume them "
    "with acks.\n\nWith no config file everything runs on the embedded default under ./.tidings/.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain help: paragraphs rewrapped to the terminal, the same text in a pipe, no boxes
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        print(f"tidings {version('tidings')}")
        raise typer.Exit(0)


@app.callback()
def _global(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file for every command (also $TIDINGS_CONFIG; default: tidings.toml in this "
            "folder or a parent, then /etc/tidings/tidings.toml, else the embedded default).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print tidings' version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """(``--config`` before the command is moved after it by :func:`main`: every command has its own.)"""


def config_after_command(args: list[str]) -> list[str]:
    """``tidings --config X backlog list`` as ``tidings backlog list --config X``.

    Every command takes ``--config``; given before the command, it is moved behind it, so the
    command sees it as its own (no process-wide state carries it).
    """
    moved: list[str] = []
    rest = list(args)
    while (rest and rest[0] in ("--config", "-c")) or (rest and rest[0].startswith("--config=")):
        option = rest.pop(0)
        if "=" in option:
            moved.append(option)
        elif rest:
            moved += [option, rest.pop(0)]
        else:
            moved.append(option)  # the value is missing: let the command line say so
    if not moved or not rest:
        return args
    end = rest.index("--") if "--" in rest else len(rest)  # after "--" everything is an argument
    if any(a in ("--config", "-c") or a.startswith("--config=") for a in rest[:end]):
        # one of the two would win without a word (the later one, as the command reads them)
        raise typer.BadParameter("--config is given both before and after the command: give it once")
    return [*rest[:end], *moved, *rest[end:]]


class _OursUnlessDebugging(logging.Filter):
    """Other libraries' records only when DEBUG is asked for.

    A broker that refuses a connection makes its client library log an ERROR with a traceback
    before tidings says, in one line, what happened and what happens next: below DEBUG, the
    one line is what a user sees.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.everything = level <= logging.DEBUG

    def filter(self, record: logging.LogRecord) -> bool:
        return self.everything or record.name == "tidings" or record.name.startswith("tidings.")


#: the logger of one line per event (consumed, delivered): quiet unless --verbose asks for it
EVENTS_LOGGER = "tidings.events"


def setup_logging(level: str, *, verbose: bool = False) -> None:
    """One handler on stderr: rich on a terminal, one plain line per record otherwise; secrets masked."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ConfigError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    handler: logging.Handler
    if err.is_terminal:
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_OursUnlessDebugging(number))
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=number, handlers=[handler], force=True)
    events_level = logging.INFO if verbose or number <= logging.DEBUG else logging.WARNING
    logging.getLogger(EVENTS_LOGGER).setLevel(events_level)


def register_commands() -> None:
    """Import the modules whose commands join ``app`` (the command line's, and its docs')."""
    from tidings.cli import archive, commands, config_cmd, dead, ops, relaying, replay_cmd, web  # noqa: F401
    from tidings.formats.fedora import cli  # noqa: F401 - `tidings bridge` lives with the fedmsg bridge


def main() -> None:
    """Entry point: run the app, turning every error into one line and an exit code."""
    sys.stdout = GuardedStdout(sys.stdout)  # type: ignore[assignment]
    try:
        register_commands()
        command = typer.main.get_command(app)
        plain_help(command)
        code = command.main(
            args=config_after_command(sys.argv[1:]), prog_name="tidings", standalone_mode=False
        )
    except TidingsError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err.print("tidings: interrupted", highlight=False)
        sys.exit(130)
    except Exception as exc:
        _fail_on(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _fail_on(exc: Exception) -> NoReturn:
    """A command-line parsing error as one line (exit 2), an abort as 130, anything else as a bug.

    Typer raises click's exceptions, from click or from its own copy of click depending on its
    version, so they are known by their shape: ``format_message()``, ``exit_code`` and ``ctx``.
    """
    kind = type(exc).__name__
    if kind == "NoArgsIsHelpError":  # `tidings` or `tidings backlog` alone: the help is the answer
        context = getattr(exc, "ctx", None)
        print(context.get_help() if context else exc)
        sys.exit(0)
    if kind == "Abort":
        err.print("tidings: interrupted", highlight=False)
        sys.exit(130)
    if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
        if exc.exit_code == 2:  # type: ignore[attr-defined]
            _fail(usage_line(exc), 2)
        _fail(exc.format_message(), exc.exit_code)  # type: ignore[attr-defined]
    # a bug of ours: still one line, with how to see more
    _fail(f"internal error: {kind}: {exc} (set TIDINGS_DEBUG=1 for the traceback)", 1)


def usage_line(exc: Any) -> str:
    """``missing option '--body'; see tidings publish --help``: what is wrong and where to read more."""
    message = exc.format_message().strip().rstrip(".")
    message = message[:1].lower() + message[1:]
    where = exc.ctx.command_path if getattr(exc, "ctx", None) else "tidings"
    return f"{message}; see {where} --help"


def plain_help(command: Any) -> None:
    """Help that names values instead of types: ``--body BODY``, not ``--body <str>``.

    Typer shows Python types (``<str>``, ``<list[str]>``) beside options and arguments; an
    option without a metavar of its own gets its name in capitals, as argparse does, and an
    argument shows only its name.
    """
    for param in command.params:
        name = (param.name or "value").upper()
        if param.param_type_name == "option" and not param.is_flag and param.metavar is None:
            param.metavar = name
        elif param.param_type_name == "argument":
            param.metavar = param.metavar or name
            param.display_type_rich = lambda ctx: None  # typer's own column shows the type alone
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)


def _fail(message: str, code: int) -> NoReturn:
    if os.environ.get("TIDINGS_DEBUG"):
        sys.stderr.write(redact(traceback.format_exc()))
    err.print(f"tidings: error: {redact(message)}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)
