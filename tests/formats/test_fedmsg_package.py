"""fedmsg's own library on both sides of tidings: its publisher feeding a bridge, its consumer
reading a connector, with x509 signatures made and checked by fedmsg itself.

fedmsg 1.1.7 runs in a venv of its own (``scripts/fedmsg-env`` makes ``.venv-fedmsg``;
``TIDINGS_FEDMSG_PYTHON`` names another interpreter), each side in its own process, configured
as a fedmsg deployment is: ``FedMsgContext`` with endpoints, ``sign_messages``/``ssldir``/
``certnames`` to sign, ``validate_signatures``/``ca_cert_location`` to check.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.transports.test_zeromq import free_port
from tests.waiting import until
from tidings import Bus, Event
from tidings.config import load_config
from tidings.formats.fedora.bridge import Bridge

ROOT = Path(__file__).resolve().parents[2]
FEDMSG_PYTHON = Path(os.environ.get("TIDINGS_FEDMSG_PYTHON") or ROOT / ".venv-fedmsg" / "bin" / "python")

# in CI a missing fedmsg fails (fedmsg_process says why) rather than skipping
pytestmark = pytest.mark.skipif(
    not FEDMSG_PYTHON.exists() and not os.environ.get("CI"), reason="no fedmsg venv: run scripts/fedmsg-env"
)

# fedmsg's settings that FedMsgContext reads, so that no /etc/fedmsg.d is consulted
FEDMSG_SETTINGS = """
import json, os, socket, sys, time
import fedmsg.core, fedmsg.crypto

def context(**settings):
    base = dict(topic_prefix="org.fedoraproject", environment="prod", endpoints={}, active=False,
                io_threads=1, post_init_sleep=0.0, high_water_mark=0, zmq_linger=1000,
                zmq_enabled=True, sign_messages=False, validate_signatures=False,
                crypto_backend="x509", crypto_validate_backends=["x509"])
    base.update(settings)
    return fedmsg.core.FedMsgContext(**base)
"""

# bodhi publishing through fedmsg: probes until the bridge has seen one (ZeroMQ drops what a
# subscriber that has not joined yet would have got), then the messages
PUBLISHER = (
    FEDMSG_SETTINGS
    + """
port, ssldir, count, go = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
sign = sys.argv[5] == "1"
name = "bodhi." + socket.gethostname().split(".", 1)[0]
ctx = context(endpoints={name: ["tcp://127.0.0.1:%d" % port]}, name=name, sign_messages=sign,
              ssldir=ssldir, certnames={name: "bodhi"})
deadline = time.time() + 30
while not os.path.exists(go):
    assert time.time() < deadline, "no subscriber saw a probe"
    ctx.publish(topic="probe", modname="bodhi", msg={"probe": True})
    time.sleep(0.05)
for n in range(count):
    ctx.publish(topic="update.comment", modname="bodhi", msg={"n": n, "comment": {"text": "h\\u00e9llo"}})
time.sleep(0.5)
ctx.destroy()
"""
)

# a fedmsg consumer checking signatures: prints each message it takes, with fedmsg.crypto's own
# verdict on it and on a tampered copy (so the check is seen to bite)
TAIL = (
    FEDMSG_SETTINGS
    + """
endpoint, ca, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = context(endpoints={"tidings": [endpoint]}, mute=True, validate_signatures=True,
              ca_cert_location=ca, crl_location=None)
seen = 0
for name, where, topic, msg in ctx.tail_messages():
    tampered = json.loads(json.dumps(msg))
    tampered["msg"]["n"] = -1
    checks = dict(ca_cert_location=ca, crl_location=None)
    print(json.dumps({"topic": topic, "msg": msg, "valid": fedmsg.crypto.validate(msg, **checks),
                      "tampered_valid": fedmsg.crypto.validate(tampered, **checks)}), flush=True)
    if not msg["msg"].get("probe"):
        seen += 1
        if seen == count:
            break
"""
)


def fedmsg_process(script: str, *args: object) -> subprocess.Popen[str]:
    assert FEDMSG_PYTHON.exists(), f"{FEDMSG_PYTHON} is missing: run scripts/fedmsg-env"
    return subprocess.Popen(
        # pyOpenSSL 24.2 warns that its CRL support is deprecated, on import
        [str(FEDMSG_PYTHON), "-W", "ignore::DeprecationWarning", "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_process(process: subprocess.Popen[str]) -> str:
    """End it (if it has not ended) and return what it said on stderr."""
    if process.poll() is None:
        process.kill()
    _, err = process.communicate(timeout=10)
    return err


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA and RSA certificates for bodhi (fedmsg's ssldir layout) and for tidings, in tmp_path."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)  # fedmsg signs RSA PKCS#1 v1.5 with SHA-1
    ca.cert_pem.write_to_path(tmp_path / "ca.crt")
    for name in ("bodhi", "tidings"):
        # fedmsg reads the signer's common name (its routing policy names signers by it)
        host = f"{name}.example.org"
        leaf = ca.issue_cert(host, common_name=host, key_type=trustme.KeyType.RSA)
        leaf.cert_chain_pems[0].write_to_path(tmp_path / f"{name}.crt")
        leaf.private_key_pem.write_to_path(tmp_path / f"{name}.key")
    return tmp_path


def bridge_bus(root: Path, port: int) -> Bus:
    (root / "tidings.toml").write_text(
        '[bus]\nhome = "home"\n\n'
        f'[bridges.fedmsg]\nzmq_endpoints = ["tcp://127.0.0.1:{port}"]\nconnector = "local"\n'
        'transport = "local"\nexchange = "amq.topic"\nverify = true\nca_file = "ca.crt"\n'
    )
    return Bus(load_config(root / "tidings.toml"))


def comments(bus: Bus) -> list[Event]:
    return [e for e in bus.outbox.history() if e.topic == "bodhi.update.comment"]


async def through_bridge(pki: Path, count: int, *, sign: bool) -> tuple[Bus, Bridge]:
    """fedmsg publishes ``count`` comments (after probes) to a verifying bridge; once they are in
    (or, unsigned, once fedmsg is done), the bus and the bridge to look at."""
    port, go = free_port(), pki / "go"
    bus = bridge_bus(pki, port)
    bridge = Bridge(bus, "fedmsg")
    stop = asyncio.Event()
    running = asyncio.create_task(bridge.run(stop))
    publisher = fedmsg_process(PUBLISHER, port, pki, count, go, int(sign))
    try:
        # a probe reached the bridge: carried, or refused as unsigned
        await until(lambda: bridge.counters.to_amqp + bridge.counters.undecodable > 0, timeout=30)
        go.touch()
        await until(lambda: publisher.poll() is not None, timeout=30)
        if sign:
            await until(lambda: len(comments(bus)) == count)
        else:  # the probes (one at least) and the messages, each refused as it arrives
            await until(lambda: bridge.counters.undecodable > count)
    finally:
        stop.set()
        await running
        err = stop_process(publisher)
    assert publisher.returncode == 0, err
    return bus, bridge


async def test_signed_messages_from_fedmsg_cross_a_verifying_bridge(pki: Path) -> None:
    bus, bridge = await through_bridge(pki, 20, sign=True)
    received = comments(bus)
    assert [e.body for e in received] == [{"n": n, "comment": {"text": "héllo"}} for n in range(20)]
    first = received[0]
    assert first.headers["crypto"] == "x509" and first.headers["i"] > 1  # fedmsg's counter ran on
    assert first.id.split("-", 1)[0].isdigit() and first.source == "bodhi"  # "<year>-<uuid4>"
    assert bridge.counters.undecodable == 0
    bus.close()


async def test_unsigned_messages_from_fedmsg_are_refused_by_a_verifying_bridge(pki: Path) -> None:
    bus, bridge = await through_bridge(pki, 5, sign=False)
    assert bridge.counters.undecodable > 5  # the probes and the five
    assert bridge.counters.to_amqp == 0 and list(bus.outbox.history()) == []
    bus.close()


def connector_bus(root: Path, port: int) -> Bus:
    (root / "tidings.toml").write_text(
        '[bus]\nhome = "home"\n\n'
        f'[transports.fedmsg]\nkind = "zeromq"\nendpoint = "tcp://127.0.0.1:{port}"\nmode = "bind"\n\n'
        '[connectors.fedmsg]\ntransport = "fedmsg"\nformat = "fedmsg"\n'
        'format_options = { key_pem = "tidings.key", cert_pem = "tidings.crt", username = "bodhi" }\n'
    )
    return Bus(load_config(root / "tidings.toml"))


async def test_fedmsg_consumers_take_and_verify_what_a_signing_connector_sends(pki: Path) -> None:
    port = free_port()
    bus = connector_bus(pki, port)
    stop = asyncio.Event()
    dispatching = asyncio.create_task(bus.dispatcher().run(stop))
    tail = fedmsg_process(TAIL, f"tcp://127.0.0.1:{port}", pki / "ca.crt", 10)
    assert tail.stdout is not None
    try:
        first = asyncio.ensure_future(asyncio.to_thread(tail.stdout.readline))
        for _ in range(300):  # probes until fedmsg's SUB has joined and printed one
            bus.publish("bodhi.probe", {"probe": True})
            done, _ = await asyncio.wait({first}, timeout=0.1)
            if done:
                break
        assert first.done() and first.result(), f"fedmsg's consumer said nothing: {stop_process(tail)}"
        assert json.loads(first.result())["valid"] is True
        sent = [bus.publish("bodhi.update.comment", {"n": n, "text": "héllo"}) for n in range(10)]
        lines = await asyncio.wait_for(asyncio.to_thread(tail.stdout.readlines), 30)  # until it exits
    finally:
        stop.set()
        await dispatching
        err = stop_process(tail)
        bus.close()
    assert tail.returncode == 0, err
    taken = [json.loads(line) for line in lines]
    comments = [t for t in taken if not t["msg"]["msg"].get("probe")]
    assert [t["msg"]["msg"] for t in comments] == [{"n": n, "text": "héllo"} for n in range(10)]
    assert all(t["valid"] and not t["tampered_valid"] for t in taken)
    envelope = comments[0]["msg"]
    assert comments[0]["topic"] == envelope["topic"] == "org.fedoraproject.prod.bodhi.update.comment"
    assert envelope["msg_id"] == f"{sent[0].time.year}-{sent[0].id}"
    assert envelope["username"] == "bodhi" and envelope["crypto"] == "x509"
    assert envelope["timestamp"] == int(sent[0].time.timestamp())
    assert sys.executable != str(FEDMSG_PYTHON)  # fedmsg ran in its own interpreter, not ours


# fedmsg.crypto.validate's verdict on each envelope of a JSON file (the CA's, no CRL)
VALIDATE = (
    FEDMSG_SETTINGS
    + """
envelopes, ca = json.load(open(sys.argv[1])), sys.argv[2]
print(json.dumps([fedmsg.crypto.validate(e, ca_cert_location=ca, crl_location=None) for e in envelopes]))
"""
)


def test_fedmsg_and_tidings_agree_on_certificates_out_of_their_validity_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.formats.test_fedmsg import EXPIRED, NOT_YET, signed_anyway
    from tidings.errors import InvalidEvent
    from tidings.formats.fedora.fedmsg import verify

    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    ca.cert_pem.write_to_path(tmp_path / "ca.crt")
    envelopes = []
    for dates in ({}, EXPIRED, NOT_YET):
        leaf = ca.issue_cert(
            "bodhi.example.org", common_name="bodhi.example.org", key_type=trustme.KeyType.RSA, **dates
        )
        key, cert = leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes()
        envelopes.append(signed_anyway(key, cert, monkeypatch))
    (tmp_path / "envelopes.json").write_text(json.dumps(envelopes))
    fedmsg = fedmsg_process(VALIDATE, tmp_path / "envelopes.json", tmp_path / "ca.crt")
    out, err = fedmsg.communicate(timeout=60)
    assert fedmsg.returncode == 0, err
    assert json.loads(out) == [True, False, False]  # "certificate has expired", "... is not yet valid"

    def tidings_says(envelope: dict) -> bool:
        try:
            return bool(verify(envelope, ca.cert_pem.bytes()))
        except InvalidEvent:
            return False

    assert [tidings_says(e) for e in envelopes] == json.loads(out)
