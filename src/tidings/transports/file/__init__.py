"""Transport ``file``: every message appended to a file, fsynced, as Bugzilla Push's File connector.

The transport is in :mod:`.transport`; this module describes the plug-in and its options.
"""

from __future__ import annotations

from typing import Any

from tidings.plugins import Plugin, Settings

#: ``jsonl``: one JSON object a line; ``raw``: the bytes the format prepared
STYLES = ("jsonl", "raw")


def style_problem(style: str) -> str:
    """Why ``style`` is refused, or ""."""
    if style in STYLES:
        return ""
    hint = ""
    if style == "bugzilla":  # tidings 0.1 wrote Bugzilla's block here; the bugzilla format does now
        hint = '; Bugzilla\'s File connector block: style = "raw", format_options = {file_block = true}'
    return f"style must be one of {', '.join(STYLES)}, not {style!r}{hint}"


class FileSettings(Settings):
    #: the file messages are appended to (created with its folders)
    path: str
    style: str = "jsonl"
    #: fsync after each batch, before the messages count as delivered
    fsync: bool = True

    def __post_init__(self) -> None:
        problem = style_problem(self.style)
        if problem:
            raise ValueError(problem)


PLUGIN = Plugin("file", "tidings.transports.file.transport:FileTransport", FileSettings)


def __getattr__(name: str) -> Any:
    if name == "FileTransport":
        from tidings.transports.file.transport import FileTransport

        return FileTransport
    raise AttributeError(name)
