"""A ReactOBus configuration becomes the tidings.toml that does the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clirun import tidings
from tidings.config import parse_config
from tidings.errors import ConfigError
from tidings.event import Event
from tidings.filters import compile_filter
from tidings.reactobus import argument, convert, load_yaml

# the shape of ReactOBus's documented example (docs/configuration.rst, share/examples/reactobus.yaml)
LAB = """
inputs:
- class: ZMQPull
  name: PullIn
  options:
    url: tcp://*:5554
- class: ZMQSub
  name: SubIn
  options:
    url: tcp://127.0.0.1:5555
    filters:
    - field: username
      pattern: "lava-"
    - field: data.status
      pattern: Complete
core:
  inbound: ipc:///tmp/ReactOBus.inbound
  outbound: ipc:///tmp/ReactOBus.outbound
reactor:
  workers: 3
  rules:
  - name: finished
    match:
      field: topic
      patterns: ["^org\\\\.lava\\\\.", "^org\\\\.linaro\\\\."]
    exec:
      path: /usr/local/bin/notify
      timeout: 2
      args: [topic, $topic, $uuid, $data.job, "stdin:$datetime"]
db:
  url: sqlite:///db.sqlite3
outputs:
- class: ZMQPub
  name: PublicPub
  options:
    url: tcp://*:5556
"""


def test_inputs_outputs_and_rules_become_relays_connectors_and_reactor_rules() -> None:
    converted = convert(load_yaml(LAB))
    config = parse_config(converted.config)  # it loads as any config does
    assert config.transports["SubIn"] == {"kind": "zeromq", "endpoint": "tcp://127.0.0.1:5555"}
    relay = config.relays["SubIn"]
    assert (relay.transport, relay.format, relay.bindings) == ("SubIn", "lava", ["#"])
    assert config.connectors["PublicPub"].format == "lava"
    rule = config.reactor.rules["finished"]
    assert rule.command == ["/usr/local/bin/notify", "topic", "$topic", "$id", "$data.job"]
    assert (rule.timeout, config.reactor.workers) == (2.0, 3)
    notes = "\n".join(converted.notes)
    assert "PullIn: ZMQPull has no tidings equivalent" in notes and "stdin:" in notes


def test_filters_match_as_reactobus_matched_anchored_at_the_start() -> None:
    relay = convert(load_yaml(LAB)).config["relays"]["SubIn"]
    passes = compile_filter(relay["filter"])

    def event(username: str, status: str) -> Event:
        return Event.create("org.lava.job", {"status": status}, headers={"username": username})

    assert passes(event("lava-lab", "Complete"))
    assert not passes(event("x-lava-lab", "Complete"))  # re.match: at the start only
    assert not passes(event("lava-lab", "Incomplete"))
    rule = convert(load_yaml(LAB)).config["reactor"]["rules"]["finished"]
    assert compile_filter(rule["match"])(Event.create("org.linaro.x", {}))
    assert not compile_filter(rule["match"])(Event.create("com.linaro.x", {}))


def test_arguments_name_tidings_paths() -> None:
    assert [argument(a) for a in ["$uuid", "$datetime", "$username", "$data", "$data.url", "plain"]] == [
        "$id",
        "$time",
        "$username",
        "$data",
        "$data.url",
        "plain",
    ]
    with pytest.raises(ConfigError, match="unknown ReactOBus field 'uid'"):
        argument("$uid")


def test_the_command_writes_a_config_and_never_over_another(tmp_path: Path) -> None:
    (tmp_path / "reactobus.yaml").write_text(LAB)
    done = tidings(tmp_path, "import-reactobus", "reactobus.yaml", "-o", "tidings.toml")
    assert done.returncode == 0, done.stderr
    assert tidings(tmp_path, "config", "check").returncode == 0
    again = tidings(tmp_path, "import-reactobus", "reactobus.yaml", "-o", "tidings.toml")
    assert again.returncode == 3 and "exists" in again.stderr and again.stderr.count("\n") == 1


def test_a_file_that_is_not_reactobus_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("inputs: [\n")
    done = tidings(tmp_path, "import-reactobus", "bad.yaml")
    assert done.returncode == 3 and done.stderr.startswith("tidings: error: not valid YAML")
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert "a YAML mapping" in tidings(tmp_path, "import-reactobus", "list.yaml").stderr


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"a: &a [1, 2]\nb: &b [*a, *a]\ninputs: *b\n", "YAML aliases (*name) are not accepted"),
        (b"reactor:\n  rules:\n    - name: x\n      exec: /bin/true\n", "an exec (a mapping with a path)"),
        (b"reactor: [1]\n", "reactor: a mapping"),
        (b"reactor:\n  rules:\n    - {name: x, match: {field: topic}, exec: {path: x}}\n", "patterns"),
        (b"reactor:\n  rules:\n    - {name: x, match: {patterns: a}, exec: {path: x, args: abc}}\n", "args"),
        (b"reactor:\n  rules:\n    - {name: null, exec: {path: x}}\n", "a rule has a name"),
        (
            b"inputs:\n  - {class: ZMQSub, name: a, options: {url: 'tcp://h:1'}}\n"
            b"outputs:\n  - {class: ZMQPub, name: a, options: {url: 'tcp://*:2'}}\n",
            "the name 'a' is used twice",
        ),
        (b"inputs:\n  - {class: ZMQSub, name: a, options: 5}\n", "options: a mapping"),
        (b"\xff\xfeinputs: []\n", "is not UTF-8 text"),
        (b"inputs: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b"rules:\n  - name: x\n", "rules: not a key of a ReactOBus configuration (inputs, outputs,"),
    ],
)
def test_hostile_or_odd_files_get_one_line_and_exit_3(tmp_path: Path, content: bytes, said: str) -> None:
    (tmp_path / "odd.yaml").write_bytes(content)
    done = tidings(tmp_path, "import-reactobus", "odd.yaml")
    assert done.returncode == 3, done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_an_input_named_local_leaves_the_reactor_its_own_broker() -> None:
    converted = convert(
        {
            "inputs": [{"class": "ZMQSub", "name": "local", "options": {"url": "tcp://lab:5500"}}],
            "reactor": {"rules": [{"name": "r", "match": {"patterns": "x"}, "exec": {"path": "/bin/true"}}]},
        }
    )
    assert converted.config["transports"]["local"]["kind"] == "zeromq"
    assert converted.config["reactor"]["transport"] == "reactor-local"
    assert converted.config["transports"]["reactor-local"] == {"kind": "embedded"}
