"""The store ``[archive]`` names, opened: SQLite under ``[bus] home``, or PostgreSQL at ``url``."""

from __future__ import annotations

from tidings.archive import Archive
from tidings.config import ArchiveSection, Config
from tidings.errors import ConfigError


def open_archive(config: Config) -> Archive:
    """The configured archive (``[archive]``, or the SQLite default when there is none)."""
    section = config.archive or ArchiveSection()
    if section.store == "postgresql":
        try:
            from tidings.archive.postgres import PostgresArchive
        except ImportError as exc:
            raise ConfigError(
                f'[archive] store = "postgresql" needs a package that is not installed ({exc.name}): '
                "pip install 'tidings[postgresql]'"
            ) from None
        return PostgresArchive(section.url)
    from tidings.archive.sqlite import SqliteArchive

    return SqliteArchive(config.archive_path())
