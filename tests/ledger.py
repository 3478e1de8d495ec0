"""The ledger every fault test keeps, in the manner of Jepsen's total-queue checker.

Producers record each publish they attempted and each that returned; consumers
record each delivery. Files are append-only, one id a line, so processes that
are SIGKILLed leave at worst a torn last line (which is ignored: a torn delivery
line means the handler did not finish, and the message will come again).

Classification, per event id:

* lost        — publish returned, never delivered (must be zero)
* unexpected  — delivered, never attempted (must be zero)
* duplicated  — delivered more than once (allowed: at-least-once; counted)
* recovered   — attempted, publish never returned (crash), yet delivered
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: the release-check soak mode: longer fault runs (``TIDINGS_SOAK=1``; not in CI)
SOAK = os.environ.get("TIDINGS_SOAK") == "1"

#: every ledger line of this test run, printed in pytest's summary (see tests/conftest.py)
LINES: list[str] = []


def scaled(in_ci: int, in_soak: int) -> int:
    """A fault test's size: ``in_ci`` normally, ``in_soak`` in the soak mode."""
    return in_soak if SOAK else in_ci


class LedgerFile:
    """An append-only file of ids; each line is flushed straight to the OS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, event_id: str) -> None:
        os.write(self._fd, f"{event_id}\n".encode())  # one write: a SIGKILL cannot interleave lines

    def close(self) -> None:
        os.close(self._fd)


def read_ids(paths: list[Path]) -> list[str]:
    ids: list[str] = []
    for path in paths:
        if path.exists():
            text = path.read_text()
            lines = text.split("\n")
            if not text.endswith("\n"):
                lines = lines[:-1]  # a torn last line from a killed process
            ids.extend(line for line in lines if line)
    return ids


@dataclass
class Verdict:
    attempted: int
    returned: int
    delivered: int
    lost: int
    unexpected: int
    duplicated: int
    recovered: int

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.unexpected == 0

    def line(self, scenario: str) -> str:
        """The ledger as one line; also kept for the summary at the end of the run."""
        text = (
            f"[ledger] {scenario}: attempted {self.attempted}, returned {self.returned}, delivered "
            f"{self.delivered}, lost {self.lost}, unexpected {self.unexpected}, duplicated "
            f"{self.duplicated}, recovered {self.recovered}"
        )
        LINES.append(text)
        return text


def check(attempted: list[str], returned: list[str], delivered: list[str]) -> Verdict:
    tried, ok, seen = set(attempted), set(returned), Counter(delivered)
    return Verdict(
        attempted=len(tried),
        returned=len(ok),
        delivered=len(seen),
        lost=len(ok - seen.keys()),
        unexpected=len(seen.keys() - tried),
        duplicated=sum(n - 1 for n in seen.values()),
        recovered=len((tried - ok) & seen.keys()),
    )
