"""Which format reads an event's search fields, when the event did not come through one.

An event consumed from a broker was decoded by its source's format, which reads its fields.
An event archived from the local outbox came through none: the format is chosen by
``[archive] fields`` (topic pattern → format name, first match wins), else by the event's type
(``bugzilla.push.v1`` → bugzilla, ``taskcluster.*`` → taskcluster, ``lava.*`` → lava) or, for
Fedora's messages, by their ``fedora_messaging_*`` headers. Formats are found through the
registry, by name: the archive imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping

from tidings.archive import Archived, SearchFields
from tidings.event import Event
from tidings.format import Format, load_format, search_fields
from tidings.topics import topic_matches

#: event type prefix → the format that knows its fields
BY_TYPE = (("bugzilla.push.", "bugzilla"), ("taskcluster.", "taskcluster"), ("lava.", "lava"))
FEDORA = "fedora-messaging"


class FieldsFinder:
    """Turns events into :class:`Archived` with their search fields (seq 0: the store numbers them)."""

    def __init__(self, rules: Mapping[str, str] | None = None, fixed: Format | None = None) -> None:
        #: topic pattern → format name, from the config
        self.rules = dict(rules or {})
        #: the source's own format: it decoded these events, it reads their fields
        self.fixed = fixed
        self._formats: dict[str, Format] = {}

    def __call__(self, event: Event) -> Archived:
        fmt = self.fixed or self._chosen(event)
        return Archived(0, event, search_fields(fmt, event) if fmt is not None else SearchFields())

    def _chosen(self, event: Event) -> Format | None:
        name = self.format_name(event)
        if name is None:
            return None
        if name not in self._formats:
            self._formats[name] = load_format(name)
        return self._formats[name]

    def format_name(self, event: Event) -> str | None:
        for pattern, name in self.rules.items():
            if topic_matches(pattern, event.topic):
                return name
        kind = event.type or ""
        for prefix, name in BY_TYPE:
            if kind.startswith(prefix):
                return name
        if any(key.startswith("fedora_messaging_") for key in event.headers):
            return FEDORA
        return None
