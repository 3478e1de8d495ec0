"""Lists as a person and a program each want them.

On a terminal a list is a rich table; in a pipe it is plain text in aligned columns, never cut
to the terminal's width (a name ending in ``…`` cannot be pasted into the next command); with
``--json`` it is one JSON object per line. Every list command prints through :func:`print_rows`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table


def print_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    console: Console,
    json_: bool = False,
    title: str | None = None,
) -> None:
    """``rows`` (one value per column) as a table, aligned text or JSON lines."""
    if json_:
        for row in rows:
            print(orjson.dumps(dict(zip(columns, row, strict=True)), default=str).decode())
        return
    if console.is_terminal:
        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*(_text(value) for value in row))
        console.print(table)
        return
    sys.stdout.write(aligned(columns, rows))
    sys.stdout.flush()


def aligned(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns two spaces apart, each as wide as its widest cell: no box, nothing cut."""
    lines = [list(columns), *([_text(value) for value in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def _text(value: Any) -> str:
    return "-" if value is None else str(value)
