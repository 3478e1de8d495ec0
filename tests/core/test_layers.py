"""The core imports no transport and no seed system's format: they are plug-ins, found by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the core: the event and its topics and schemas, the outbox, the dispatcher, the consumer runtime,
#: the bus and its config, and the small protocols and helpers they stand on
CORE = [
    "tidings",
    "tidings.batching",
    "tidings.bus",
    "tidings.config",
    "tidings.config_checks",
    "tidings.connector",
    "tidings.consumer",
    "tidings.dispatcher",
    "tidings.errors",
    "tidings.event",
    "tidings.format",
    "tidings.groupcommit",
    "tidings.handling",
    "tidings.inbox",
    "tidings.journal",
    "tidings.outbox",
    "tidings.plugins",
    "tidings.redact",
    "tidings.retry",
    "tidings.runner",
    "tidings.schemas",
    "tidings.sqlite",
    "tidings.topics",
    "tidings.transport",
    # not the core, but standing on it alone: users' tests need no broker library
    "tidings.testing",
]
#: what the core must not pull in: every transport, every seed system's format
PLUG_INS = ("tidings.transports.", "tidings.formats.")
BROKER_LIBRARIES = ("aiormq", "pamqp", "zmq", "cryptography", "kcidb_io", "fedora_messaging")


def test_importing_the_core_loads_no_transport_and_no_seed_format() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src")},
    )
    loaded = json.loads(done.stdout)
    plug_ins = [name for name in loaded if name.startswith(PLUG_INS)]
    libraries = [name for name in loaded if name.split(".")[0] in BROKER_LIBRARIES]
    assert not plug_ins, f"the core imported plug-ins: {plug_ins}"
    assert not libraries, f"the core imported broker libraries: {libraries}"


def test_a_plug_in_package_describes_itself_without_its_library() -> None:
    """Each transport's plug-in (name, options, where its class is) loads without the broker library,
    so a config naming it is checked even where the library is missing."""
    code = (
        "import json, sys\n"
        "from tidings.transport import TRANSPORTS, transport_plugin\n"
        "from tidings.format import FORMATS, format_plugin\n"
        "names = [transport_plugin(n).name for n in TRANSPORTS.names()]\n"
        "names += [format_plugin(n).name for n in FORMATS.names()]\n"
        "print(json.dumps([names, sorted(sys.modules)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src")},
    )
    names, loaded = json.loads(done.stdout)
    assert {"embedded", "amqp", "zeromq", "file", "tidings", "cki", "fedora-messaging", "fedmsg"} <= set(
        names
    )
    assert not [name for name in loaded if name.split(".")[0] in BROKER_LIBRARIES]
