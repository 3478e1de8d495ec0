"""The pytest plug-in as a user's suite meets it (found by its entry point), and docs/testing.md's
examples, run as the test files they are, so the page cannot drift from what works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
#: an example's first line names the file it is: ``# test_triager.py``
FILE_LINE = re.compile(r"# (\w+)\.py\n")
#: what a user's project would configure: pytest-asyncio's loop scope, said so it does not warn
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

USER_TEST = """
from pathlib import Path

from tidings.testing import assert_published


def test_the_fixtures_come_from_the_plugin(bus, tidings_config, tmp_path):
    assert Path(tidings_config.base_dir) == tmp_path
    assert bus.outbox.path.is_relative_to(tmp_path)
    bus.publish("a.b", {"n": 1})
    assert_published(bus, "a.b", body_contains={"n": 1}, count=1)
"""


def test_a_user_suite_gets_the_fixtures_from_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    # a fresh interpreter: the plug-in comes from the installed distribution's pytest11 entry point
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # besides pytester's own (the inner run's basetemp, its output, bytecode): only the test file
    ours = ("runpytest-", "__pycache__", "stdout", "stderr")
    written = [p.name for p in pytester.path.iterdir() if not p.name.startswith(ours)]
    assert written == ["test_user.py"], "the bus wrote outside the test's tmp_path"


def test_without_the_plugin_there_is_no_bus_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:tidings")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'bus' not found*"])


def examples() -> dict[str, dict[str, str]]:
    """docs/testing.md's python blocks by the section they are in: {heading: {file name: code}}."""
    found: dict[str, dict[str, str]] = {}
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        heading = section.splitlines()[0]
        for block in re.findall(r"```python\n(.*?)```", section, re.S):
            named = FILE_LINE.match(block)
            assert named, f"docs/testing.md, {heading!r}: a python example must start with '# <file>.py'"
            found.setdefault(heading, {})[named.group(1)] = block
    return found


def test_the_docs_have_examples_of_a_consumer_and_a_publisher() -> None:
    assert {"Testing a consumer: a CKI triager", "Testing a publisher: Bodhi's comments"} <= set(examples())


@pytest.mark.parametrize("heading", sorted(examples()))
def test_the_examples_in_the_docs_pass(pytester: pytest.Pytester, heading: str) -> None:
    files = examples()[heading]
    pytester.makeini(INI)
    pytester.makepyfile(**files)
    tests = sum(len(re.findall(r"^\s*(?:async )?def test_", code, re.M)) for code in files.values())
    assert tests, f"{heading!r} has no test"
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=tests)
