"""The configuration examples in the docs are configurations tidings accepts.

Each ```toml block of README.md and docs/ must load on its own, or together with one other block
of the same page (a fragment that uses a transport the page defines in another example).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tidings.config import load_config
from tidings.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


def toml_blocks(page: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", page.read_text(), re.S)


def loads(tmp_path: Path, text: str) -> str:
    """ "" if the text is a configuration tidings accepts, else why not."""
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize("page", [p for p in PAGES if toml_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_toml_example_is_a_configuration_tidings_accepts(page: Path, tmp_path: Path) -> None:
    blocks = toml_blocks(page)
    for n, block in enumerate(blocks):
        problem = loads(tmp_path, block)
        if problem and any(
            not loads(tmp_path, other + "\n" + block) for other in blocks if other is not block
        ):
            continue  # a fragment completed by another example on the page
        assert not problem, f"{page.name}, example {n + 1}: {problem}"
