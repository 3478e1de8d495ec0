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

from tidings.transport import BUILTIN_TRANSPORTS, transport_plugin

ROOT = Path(__file__).resolve().parent.parent


def imported_names(path: Path) -> list[str]:
    """Every module ``path`` imports, at its top or inside a function (absolute imports)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def imported_distributions() -> dict[str, str]:
    """Distribution name → a module of ours that imports it."""
    owners = metadata.packages_distributions()
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "tidings").rglob("*.py")):
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "tidings":
                continue
            for dist in owners.get(top, [top]):
                found.setdefault(_normal(dist), str(path.relative_to(ROOT)))
    return found


def third_party_imports_of_transport(kind: str, seen: set[str] | None = None) -> set[str]:
    """Top-level modules the transport package ``kind`` imports, with those of the other
    transports it uses (the STOMP transport does part of its work over AMQP)."""
    seen = seen if seen is not None else set()
    seen.add(kind)
    found: set[str] = set()
    for path in (ROOT / "src" / "tidings" / "transports" / kind).rglob("*.py"):
        for name in imported_names(path):
            parts = name.split(".")
            if parts[0] not in sys.stdlib_module_names and parts[0] != "tidings":
                found.add(parts[0])
            elif parts[:2] == ["tidings", "transports"] and len(parts) > 2 and parts[2] not in seen:
                package = ROOT / "src" / "tidings" / "transports" / parts[2]
                found |= third_party_imports_of_transport(parts[2], seen) if package.is_dir() else set()
    return found


def extra_distributions(extra: str) -> set[str]:
    """What ``pip install 'tidings[EXTRA]'`` installs, with tidings' own dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_normal(Requirement(line).name) for line in project["dependencies"]}
    for line in project["optional-dependencies"].get(extra, []):
        requirement = Requirement(line)
        if _normal(requirement.name) == "tidings":
            for inner in requirement.extras:
                wanted |= extra_distributions(inner)
        else:
            wanted.add(_normal(requirement.name))
    return wanted


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


def test_a_transports_extra_installs_everything_it_imports() -> None:
    """``pip install 'tidings[stomp]'`` once left out the AMQP client its STOMP transport uses for
    retries: every send of a retry failed with an internal error on such a machine."""
    owners = metadata.packages_distributions()
    for kind in BUILTIN_TRANSPORTS:
        plugin = transport_plugin(kind)
        always, installed = extra_distributions(""), extra_distributions(plugin.extra)
        for module in sorted(third_party_imports_of_transport(kind)):
            dists = {_normal(d) for d in owners.get(module, [module])}
            assert dists & installed, f"{kind} imports {module}; tidings[{plugin.extra}] does not install it"
            # what the doctor checks for before it imports the transport
            assert dists & always or module in plugin.requires, f"{kind}: requires lacks {module}"
