"""CKI DataWarehouse: its messages (:mod:`.format`), their schema (:mod:`.schema`), the demo (:mod:`.demo`).

See ``docs/systems/cki.md``.
"""

from __future__ import annotations

from tidings.formats.cki.format import (
    CHECKOUT_ONLY,
    EXCHANGE,
    OBJECT_TYPES,
    SOURCE,
    STATUSES,
    TYPE,
    CKIFormat,
    binding,
    cki_event,
    needs_triage,
    queue_name,
    routing_key,
)
from tidings.plugins import Plugin

PLUGIN = Plugin("cki", "tidings.formats.cki.format:CKIFormat")

__all__ = [
    "CHECKOUT_ONLY",
    "EXCHANGE",
    "OBJECT_TYPES",
    "PLUGIN",
    "SOURCE",
    "STATUSES",
    "TYPE",
    "CKIFormat",
    "binding",
    "cki_event",
    "needs_triage",
    "queue_name",
    "routing_key",
]
