"""What ``src/`` imports is declared in pyproject.toml, and what is installed meets the bounds.

A module imported by the package but not declared works on the machine that happens to have it
and fails on a fresh one; a bound that the installed version does not meet means the tests ran
against something users cannot get.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def imported_distributions() -> dict[str, str]:
    """Distribution name → a module of ours that imports it."""
    owners = metadata.packages_distributions()
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "tidings").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "tidings":
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(_normal(dist), str(path.relative_to(ROOT)))
    return found


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    requirements = (Requirement(line) for line in lines)
    return {_normal(req.name): req for req in requirements if _normal(req.name) != "tidings"}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def test_every_imported_library_is_declared() -> None:
    wanted = declared()
    missing = {dist: where for dist, where in imported_distributions().items() if dist not in wanted}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_installed_versions_meet_the_declared_bounds() -> None:
    for name, requirement in declared().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{name} {installed} is installed, pyproject.toml asks for {requirement}"
        )
