"""What ``tidings doctor`` checks on the embedded broker: the queues and bindings the config needs."""

from __future__ import annotations

import sqlite3

from tidings.transport import Findings, Topology


def verify(db: sqlite3.Connection, topology: Topology) -> Findings:
    """Queues and bindings ``topology`` needs, checked without creating anything."""
    findings = Findings()
    queues = {name for (name,) in db.execute("SELECT name FROM queues")}
    bound = set(db.execute("SELECT queue, exchange, pattern FROM bindings"))
    for queue in topology.queues:
        if queue.name not in queues:
            findings.problems.append(
                f"queue {queue.name!r} does not exist: run `tidings consume` or `tidings serve` to create it"
            )
            continue
        for b in queue.bindings:
            if (queue.name, b.exchange, b.pattern) not in bound:
                findings.problems.append(
                    f"queue {queue.name!r} is not bound to exchange {b.exchange!r} with "
                    f"{b.pattern!r}: run `tidings consume` or `tidings serve` to bind it"
                )
    return findings
