"""Writes the reference part of docs/cli.md from the commands' own --help.

    .venv/bin/python scripts/cli_docs.py          # rewrite docs/cli.md's reference
    .venv/bin/python scripts/cli_docs.py --check  # exit 1 if it is out of date (tests do this)

Everything above the marker line in docs/cli.md is written by hand; everything below it is
generated here, so a command or an option cannot go undocumented.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
MARKER = "<!-- everything below is generated from --help by scripts/cli_docs.py: do not edit -->"
WIDTH = 100


def commands(command: Any, path: tuple[str, ...] = ("tidings",)) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command that runs something, depth first, in the order `--help` lists them."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    for name, sub in subcommands.items():
        if not sub.hidden:
            yield from commands(sub, (*path, name))


def reference() -> str:
    from tidings.cli import app, plain_help, register_commands

    register_commands()
    root = typer.main.get_command(app)
    plain_help(root)
    sections = []
    for path, command in commands(root):
        context = command.make_context(
            path[-1], [], resilient_parsing=True, terminal_width=WIDTH, help_option_names=["-h", "--help"]
        )
        context.info_name = " ".join(path)
        usage = command.get_help(context).rstrip()
        sections.append(f"### `{' '.join(path)}`\n\n```text\n{usage}\n```\n")
    return "\n".join(sections)


def document() -> str:
    written, found, _ = DOC.read_text(encoding="utf-8").partition(MARKER)
    if not found:
        raise SystemExit(f"{DOC}: the marker line is missing: {MARKER}")
    return f"{written}{MARKER}\n\n{reference()}"


def main() -> int:
    wanted = document()
    if "--check" in sys.argv[1:]:
        if DOC.read_text(encoding="utf-8") != wanted:
            print(f"{DOC} is out of date: run python scripts/cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
