"""The command line run as a user runs it: a real process, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def tidings(
    cwd: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    full_env.pop("TIDINGS_CONFIG", None)
    full_env.update(env or {})
    raw = subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())


def started(cwd: Path, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """The command line as a running process (a consumer, serve, tail), its output piped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TIDINGS_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )
