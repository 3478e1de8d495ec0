"""Schema registry and configuration loading."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.clirun import tidings
from tidings import Bus
from tidings.config import load_config, parse_config
from tidings.errors import ConfigError, InvalidEvent, SchemaError, UnknownSchema
from tidings.plugins import Plugin
from tidings.schemas import SchemaRegistry

CHECKOUT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id", "origin"],
    "properties": {
        "id": {"type": "string"},
        "origin": {"type": "string"},
        "builds": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["arch"],
                "properties": {"arch": {"enum": ["x86_64", "s390x"]}},
            },
        },
    },
}


def test_validation_names_the_failing_field() -> None:
    registry = SchemaRegistry({"kcidb.checkout.v1": CHECKOUT})
    registry.validate("kcidb.checkout.v1", {"id": "a", "origin": "o", "builds": [{"arch": "x86_64"}]})
    with pytest.raises(SchemaError) as info:
        registry.validate("kcidb.checkout.v1", {"id": "a", "origin": "o", "builds": [{"arch": "mips"}]})
    assert info.value.path == "builds/0/arch"
    assert str(info.value).startswith("kcidb.checkout.v1: builds/0/arch: ")


def test_validators_are_compiled_once() -> None:
    registry = SchemaRegistry({"t.v1": CHECKOUT})
    assert registry.validator("t.v1") is registry.validator("t.v1")


def test_unknown_type_suggests_other_versions() -> None:
    registry = SchemaRegistry({"kcidb.checkout.v1": CHECKOUT})
    with pytest.raises(UnknownSchema, match=r"did you mean kcidb\.checkout\.v1"):
        registry.validate("kcidb.checkout.v2", {})


def test_an_invalid_schema_is_reported_as_such() -> None:
    registry = SchemaRegistry({"broken.v1": {"type": "no-such-type"}})
    with pytest.raises(SchemaError, match="itself invalid"):
        registry.validate("broken.v1", {})


@pytest.mark.parametrize("schema", ['{"type": 5}', '{"properties": {"d": {"pattern": "("}}}'])
def test_a_broken_schema_file_is_a_config_error_in_one_line_before_anything_runs(
    tmp_path: Path, schema: str
) -> None:
    """(``config check`` said ok, and publish gave a many-line error with exit 4, blaming the event.)"""
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "mine.bad.v1.json").write_text(schema)
    (tmp_path / "tidings.toml").write_text('[schemas]\ndirs = ["schemas"]\n')
    for args in (["config", "check"], ["doctor"], ["publish", "a.b", "-t", "mine.bad.v1", "--body", "{}"]):
        done = tidings(tmp_path, *args)
        assert done.returncode == 3, (args, done.stderr)
        assert "schema 'mine.bad.v1'" in done.stderr and "is itself invalid" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_directories_from_config_extend_the_built_in_packs(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "mine.thing.v1.json").write_text('{"type": "object", "required": ["x"]}')
    (tmp_path / "tidings.toml").write_text('[schemas]\ndirs = ["schemas"]\n')
    bus = Bus.load(tmp_path / "tidings.toml")
    assert {"mine.thing.v1", "tidings.demo.v1"} <= set(bus.schemas.types())
    assert bus.schemas.origin("mine.thing.v1").endswith("schemas")
    with pytest.raises(SchemaError):
        bus.event("a.b", {}, type="mine.thing.v1")


def test_a_missing_schema_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text('[schemas]\ndirs = ["nowhere"]\n')
    with pytest.raises(ConfigError, match="does not exist"):
        Bus.load(tmp_path / "tidings.toml")


def test_require_schema_refuses_untyped_events(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text("[bus]\nrequire_schema = true\n")
    bus = Bus.load(tmp_path / "tidings.toml")
    with pytest.raises(InvalidEvent, match="requires a schema"):
        bus.publish("a.b", {})


def test_no_config_means_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDINGS_CONFIG", raising=False)
    config = load_config()
    assert config.transport_options("local") == ("embedded", {"path": str(Path(".tidings") / "broker.db")})
    assert list(config.connectors) == ["local"]
    assert config.outbox_path() == Path(".tidings") / "outbox.db"


def test_a_consumer_that_names_no_transport_uses_the_only_one(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.broker]\nkind = "embedded"\n[connectors.out]\ntransport = "broker"\n'
        '[consumers.svc]\nbindings = ["a.#"]\n[reactor]\nexchange = "tidings"\n'
    )
    bus = Bus.load(tmp_path / "tidings.toml")
    assert bus.config.consumers["svc"].transport == "broker"
    assert bus.config.reactor.transport == "broker"
    assert type(bus.make_transport("local")).__name__ == "EmbeddedTransport"  # App("svc") in code
    bus.close()
    (tmp_path / "two.toml").write_text(
        '[transports.a]\nkind = "embedded"\n[transports.b]\nkind = "embedded"\n'
        '[connectors.out]\ntransport = "a"\n[consumers.svc]\nbindings = ["a.#"]\n'
    )
    with pytest.raises(ConfigError, match=r'\[consumers.svc\] needs transport = "NAME" \(configured: a, b\)'):
        load_config(tmp_path / "two.toml")  # which one is meant: the config must say
    (tmp_path / "named.toml").write_text(
        '[transports.broker]\nkind = "embedded"\n[connectors.out]\ntransport = "local"\n'
    )
    with pytest.raises(ConfigError, match=r"\[connectors.out\] names transport 'local', which is not"):
        load_config(tmp_path / "named.toml")  # a connector names its transport: that one must exist


def test_a_consumers_app_is_found_beside_its_config_wherever_the_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings import App

    here, elsewhere = tmp_path / "service", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    module = f"svc_{tmp_path.name.replace('-', '_')}"  # its own name: not one imported before
    (here / f"{module}.py").write_text("from tidings import App\napp = App('svc')\n")
    (here / "tidings.toml").write_text(f'[consumers.svc]\napp = "{module}:app"\nbindings = ["a.#"]\n')
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))  # what the import adds goes away after
    bus = Bus.load(here / "tidings.toml")
    assert isinstance(App.from_config(bus, "svc"), App)
    bus.close()


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.toml").write_text(
        '[bus]\nhome = "state"\n[transports.b]\nkind = "embedded"\n'
        'path = "broker.db"\n[transports.c]\nkind = "amqp"\n'
        'ca_file = "certs/ca.pem"\n[transports.d]\nkind = "kafka"\nca_file = "ca.pem"\n'
        '[connectors.f]\ntransport = "b"\nformat = "fedmsg"\n'
        'format_options = { key_pem = "keys/signer.key", cert_pem = "/abs/signer.crt" }\n'
    )
    config = load_config(tmp_path / "sub" / "t.toml")
    assert config.outbox_path() == tmp_path / "sub" / "state" / "outbox.db"
    assert config.transport_options("b")[1]["path"] == str(tmp_path / "sub" / "state" / "broker.db")
    assert config.transport_options("c")[1]["ca_file"] == str(tmp_path / "sub" / "certs" / "ca.pem")
    # a bare file name is beside the config too (only the embedded broker's file lives under home)
    assert config.transport_options("d")[1]["ca_file"] == str(tmp_path / "sub" / "ca.pem")
    # a format's file options (fedmsg's signing key) as well, wherever the command runs
    options = config.connectors["f"].format_options
    assert options["key_pem"] == str(tmp_path / "sub" / "keys" / "signer.key")
    assert options["cert_pem"] == "/abs/signer.crt"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"bus": {"sorce": "x"}}, "unknown key 'sorce' in [bus]"),
        (
            {"connectors": {"rabbit": {"transport": "local", "exchnage": "x"}}},
            "unknown key 'exchnage' in [connectors.rabbit]",
        ),
        ({"consumers": {"svc": {"prefetch": "many"}}}, "[consumers.svc] prefetch: expected int, got str"),
        ({"whatever": 1}, "unknown key 'whatever' in [top level] (known: bus, outbox, schemas, transports,"),
        (
            {"connectors": {"r": {"transport": "local", "topic": ["#"]}}},
            "(known: transport, format, exchange, enabled, topics,",
        ),
        ({"connectors": {"x": {"transport": "gone"}}}, "names transport 'gone', which is not configured"),
        (
            {"transports": {"t": {"path": "x"}}, "connectors": {"c": {"transport": "t"}}},
            "[transports.t] needs kind",
        ),
    ],
)
def test_config_errors_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)


def test_unknown_transport_kind_and_option_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[transports.x]\nkind = "carrier-pigeon"\n')
    with pytest.raises(ConfigError, match="unknown transport 'carrier-pigeon'"):
        Bus.load(tmp_path / "a.toml").make_transport("x")
    (tmp_path / "b.toml").write_text('[transports.x]\nkind = "embedded"\npaht = "b.db"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'paht' \(known: path, lease, poll"):
        Bus.load(tmp_path / "b.toml").make_transport("x")
    (tmp_path / "c.toml").write_text('[connectors.local]\ntransport = "local"\nformat_options = {foo = 1}\n')
    with pytest.raises(ConfigError) as no_options:
        Bus.load(tmp_path / "c.toml").connectors()
    assert str(no_options.value).endswith("format_options: format 'tidings' does not take the option(s) foo")


def test_a_format_or_transport_whose_package_is_missing_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tidings import transport
    from tidings.format import FORMATS, load_format

    monkeypatch.setitem(FORMATS.builtin, "gone", "tidings_no_such_module:Format")
    with pytest.raises(ConfigError, match=r"format 'gone' cannot be loaded .*tidings_no_such_module"):
        load_format("gone")
    monkeypatch.setitem(transport.TRANSPORTS.builtin, "gone", "tidings_no_such_module:T")
    with pytest.raises(ConfigError, match=r"transport 'gone' cannot be loaded .*tidings_no_such_module"):
        transport.load_transport("gone", {})
    gone = Plugin("gone", "tidings_no_such_module:T", extra="gone")
    with pytest.raises(
        ConfigError, match=r"transport 'gone' needs .*tidings_no_such_module.*tidings\[gone\]"
    ):
        gone.build("transport", {}, "[transports.x]")
    # a package it imports only when first used is asked for before anything is built
    lazy = Plugin(
        "lazy",
        "tidings.transports.embedded.transport:EmbeddedTransport",
        extra="lazy",
        requires=("tidings_no_such_module",),
    )
    with pytest.raises(
        ConfigError, match=r"needs .*\(tidings_no_such_module\): pip install 'tidings\[lazy\]'"
    ):
        lazy.build("transport", {}, "[transports.x]")


def test_a_config_nested_too_deeply_or_not_a_file_is_one_line(tmp_path: Path) -> None:
    deep = "{not = " * 400 + '{field = "a", exists = true}' + "}" * 400
    (tmp_path / "deep.toml").write_text(f"[relays.x]\nfilter = {deep}\n")
    with pytest.raises(ConfigError, match="nests tables or lists too deeply"):
        load_config(tmp_path / "deep.toml")
    for endless in (Path("/dev/zero"), tmp_path):
        with pytest.raises(ConfigError, match="is a directory, a device or a pipe, not a file"):
            load_config(endless)


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        (
            '[connectors.local]\ntransport = "local"\nretry_schedule = [inf]\n',
            "retry_schedule[0]: expected float <= 604800",
        ),
        ('[connectors.local]\ntransport = "local"\nretry_schedule = [1e300]\n', "retry_schedule[0]"),
        ("[outbox]\nretention = nan\n", "[outbox] retention"),
        ("[outbox]\nretention = inf\n", "[outbox] retention"),
    ],
)
def test_delays_that_never_come_are_refused_at_load(tmp_path: Path, toml: str, said: str) -> None:
    (tmp_path / "t.toml").write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config(tmp_path / "t.toml")


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), -1.0, 86_401.0])
def test_a_retry_no_broker_can_wait_is_the_handlers_error(delay: float) -> None:
    from tidings.handling import Retry

    with pytest.raises(ValueError, match="Retry delay must be between 0 and 86400 seconds"):
        Retry(delay)
    assert Retry(86_400.0).delay == 86_400.0


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ('[consumers.""]\nbindings = ["a.#"]\n', '[consumers.""]: a name cannot be empty'),
        ('[transports." "]\nkind = "embedded"\n', '[transports.""]: a name cannot be empty'),
        ('[reactor.rules.""]\ncommand = ["true"]\n', '[reactor.rules.""]: a name cannot be empty'),
        # the archive's own connector would take the transport's name, and its events with it
        (
            '[transports.archive]\nkind = "embedded"\n[archive]\n',
            "[transports.archive] is taken by [archive]",
        ),
        (
            '[connectors.archive]\ntransport = "local"\n[archive]\n',
            "[connectors.archive] is taken by [archive]",
        ),
    ],
)
def test_names_that_name_nothing_or_are_taken_are_refused(tmp_path: Path, toml: str, said: str) -> None:
    (tmp_path / "tidings.toml").write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config(tmp_path / "tidings.toml")


def test_a_home_under_the_users_home_is_that_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "tidings.toml").write_text('[bus]\nhome = "~/bus"\n[archive]\npath = "~/a.db"\n')
    config = load_config(tmp_path / "tidings.toml")
    assert config.outbox_path() == tmp_path / "user" / "bus" / "outbox.db"  # not ./~/bus
    assert config.archive_path() == tmp_path / "user" / "a.db"
    (tmp_path / "tidings.toml").write_text('[bus]\nhome = "~nosuchuser-tidings/bus"\n')
    with pytest.raises(ConfigError, match="home '~nosuchuser-tidings/bus': no home folder is known"):
        load_config(tmp_path / "tidings.toml").outbox_path()
