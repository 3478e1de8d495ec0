"""The README's tour, followed literally in a fresh folder: its code and commands come from the Markdown.

If the README changes, this test runs the new text; if the code changes under it, the tour fails
here before a new user finds out.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clirun import ROOT

README = ROOT / "README.md"
#: commands of the tour that run until stopped; the test stops them as a user would, with Ctrl-C
UNTIL_STOPPED = ("tail", "serve")


def tour() -> tuple[list[str], list[str]]:
    """The Python blocks and the shell commands of the README's "A short tour"."""
    text = README.read_text()
    section = text[text.index("## A short tour") :]
    section = section[: section.index("\n## ", 1)]
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    shell = re.findall(r"```sh\n(.*?)```", section, re.S)
    commands = [line for block in shell for line in block.splitlines() if line.strip()]
    return python, commands


def argv(line: str) -> tuple[list[str], bool]:
    """A README shell line as a command (its comment dropped) and whether it runs in the background."""
    words = shlex.split(line, comments=True)
    background = words[-1] == "&"
    words = words[:-1] if background else words
    assert words[0] == "tidings", line
    return [sys.executable, "-m", "tidings", *words[1:]], background


class Folder:
    """A user's fresh folder: commands run in it with tidings installed and nothing configured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{path}", "COLUMNS": "120"}
        self.env.pop("TIDINGS_CONFIG", None)

    def run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )

    def start(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            cwd=self.path,
            env=self.env,
            stdout=(self.path / f"{name}.out").open("wb"),
            stderr=(self.path / f"{name}.err").open("wb"),
        )

    def output(self, name: str) -> str:
        return (self.path / f"{name}.out").read_text()


def wait_for(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"README tour: waited {timeout:g} s for {what}")
        time.sleep(0.05)


def test_the_readme_tour_works_as_written(tmp_path: Path) -> None:
    python, commands = tour()
    service, publisher = python
    assert "myservice.py" in README.read_text()
    folder = Folder(tmp_path)
    (tmp_path / "myservice.py").write_text(service)
    published = folder.run([sys.executable, "-c", publisher])
    assert published.returncode == 0, published.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}\n", published.stdout), published.stdout

    background: list[subprocess.Popen[bytes]] = []
    service_output = ""
    try:
        for n, line in enumerate(commands):
            command, in_background = argv(line)
            name = f"step{n}"
            if in_background:
                background.append(folder.start(command, name))
                service_output = name
                wait_for(lambda: (tmp_path / ".tidings" / "broker.db").exists(), "the service to bind")
                time.sleep(1.0)  # its queue is declared right after the broker file appears
            elif command[3] in UNTIL_STOPPED:
                running = folder.start(command, name)
                time.sleep(2.0)
                running.send_signal(signal.SIGINT)
                assert running.wait(timeout=30) == 130, (line, (tmp_path / f"{name}.err").read_text())
                if command[3] == "tail":
                    assert "datawarehouse.checkout.new" in folder.output(name)
            else:
                done = folder.run(command)
                assert done.returncode == 0, (line, done.stdout, done.stderr)
                if command[3] == "dispatch":
                    # the Python snippet's event and the shell's both reach the service
                    out = service_output
                    wait_for(
                        lambda out=out: (
                            "triaging c1" in folder.output(out) and "triaging c2" in folder.output(out)
                        ),
                        "the service to handle both events",
                    )
    finally:
        for process in background:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 130
