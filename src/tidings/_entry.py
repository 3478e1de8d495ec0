"""The ``tidings`` command's entry point, kept apart so that Ctrl-C while the command line is
still being imported (half a second) is one line and exit 130, like Ctrl-C at any later time."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from tidings.cli import main as run_command_line
    except KeyboardInterrupt:
        print("tidings: interrupted", file=sys.stderr)
        sys.exit(130)
    run_command_line()
