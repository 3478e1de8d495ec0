"""``[archive]`` is read strictly, and ``from = "outbox"`` adds the dispatcher's archive connector."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clirun import tidings
from tidings.config import ARCHIVE_CONNECTOR, parse_config
from tidings.errors import ConfigError


def test_the_outbox_source_is_a_connector_of_its_own() -> None:
    config = parse_config({"archive": {"batch_size": 100}})
    assert list(config.connectors) == ["local", ARCHIVE_CONNECTOR]
    assert config.connectors[ARCHIVE_CONNECTOR].batch_size == 100
    assert ARCHIVE_CONNECTOR not in config.transports  # the archive is no broker
    assert ARCHIVE_CONNECTOR not in parse_config({}).connectors


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"stor": "sqlite"}, "unknown key 'stor' in [archive]"),
        ({"store": "mysql"}, "[archive] store"),
        ({"store": "postgresql"}, 'store = "postgresql" needs url'),
        ({"retention": -1}, "[archive] retention"),
        ({"from": [{"transport": "nope"}]}, "source 1 names transport 'nope', which is not configured"),
        ({"from": [{"transport": "local", "bindings": ["a.b*"]}]}, "source 1 bindings"),
        ({"from": [{"transport": "local", "format": "nope"}]}, "unknown format 'nope'"),
        ({"from": [{"transport": "local", "queue": "q", "extra": 1}]}, "unknown key 'extra'"),
        ({"fields": {"a.#": "nope"}}, "[archive] fields: unknown format 'nope'"),
        ({"from": []}, "[archive] from = [] names no source: list the broker queues to archive"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(table: dict[str, object], message: str) -> None:
    raw = {"transports": {"local": {"kind": "embedded", "path": "broker.db"}}, "archive": table}
    with pytest.raises(ConfigError, match=None) as caught:
        parse_config(raw)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_connector_named_archive_is_refused() -> None:
    with pytest.raises(ConfigError, match="rename the connector"):
        parse_config(
            {
                "transports": {"local": {"kind": "embedded", "path": "broker.db"}},
                "connectors": {"archive": {"transport": "local"}},
                "archive": {},
            }
        )


def test_config_show_masks_the_url(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[archive]\nstore = "postgresql"\nurl = "postgresql://tidings:s3cret@db/tidings"\n'
    )
    shown = tidings(tmp_path, "config", "show")
    assert shown.returncode == 0 and "s3cret" not in shown.stdout and "postgresql://tidings:" in shown.stdout


def test_an_empty_list_of_sources_fails_the_check_and_the_archive_in_one_line(tmp_path: Path) -> None:
    """``from = []`` archived nothing, and `tidings archive` ended at once with exit 0."""
    (tmp_path / "tidings.toml").write_text("[archive]\nfrom = []\n")
    for args in (("config", "check"), ("archive", "--once"), ("archive",)):
        done = tidings(tmp_path, *args)
        assert done.returncode == 3, (args, done.stdout, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and "[archive] from = [] names no source" in done.stderr
