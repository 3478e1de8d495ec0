"""Fedora: fedora-messaging (:mod:`.messaging`), fedmsg (:mod:`.fedmsg`) and the bridge between them.

The bridge (:mod:`.bridge`, ``[bridges.NAME]``, ``tidings bridge``: :mod:`.cli`) carries
messages both ways while the two buses live side by side, as Fedora migrated. See
``docs/systems/fedora.md``. fedmsg needs ``tidings[fedmsg]`` (pyzmq, cryptography); this
module imports neither.
"""

from __future__ import annotations

from typing import Any

from tidings.formats.fedora.messaging import (
    BASE_SCHEMA,
    FedoraMessagingFormat,
    app_name,
    dump_lines,
    fedora_event,
    filter_headers,
    load_lines,
    message_class,
    schema_packages,
)
from tidings.formats.fedora.settings import FedmsgOptions, FedoraMessagingOptions
from tidings.plugins import Plugin

FEDORA_MESSAGING_PLUGIN = Plugin(
    "fedora-messaging", "tidings.formats.fedora.messaging:FedoraMessagingFormat", FedoraMessagingOptions
)
FEDMSG_PLUGIN = Plugin(
    "fedmsg",
    "tidings.formats.fedora.fedmsg:FedmsgFormat",
    FedmsgOptions,
    extra="fedmsg",
    requires=("cryptography",),
    paths=("key_pem", "cert_pem", "trusted_ca"),  # each PEM text or the file holding it
)

__all__ = [
    "BASE_SCHEMA",
    "FEDMSG_PLUGIN",
    "FEDORA_MESSAGING_PLUGIN",
    "FedoraMessagingFormat",
    "app_name",
    "dump_lines",
    "fedora_event",
    "filter_headers",
    "load_lines",
    "message_class",
    "schema_packages",
]


def __getattr__(name: str) -> Any:
    if name == "FedmsgFormat":
        from tidings.formats.fedora.fedmsg import FedmsgFormat

        return FedmsgFormat
    raise AttributeError(name)
