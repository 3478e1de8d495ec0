"""fedmsg envelopes, x509 signatures, and a fedmsg → AMQP → fedmsg bridge round trip with nothing missing.

Facts: fedora-infra/fedmsg fedmsg/core.py (FedMsgContext.publish: topic and envelope),
fedmsg/encoding/__init__.py (sort_keys, compact separators), fedmsg/crypto/x509_ng.py (sign,
_prep_crypto_msg, validate), fedmsg/crypto/__init__.py (strip_credentials).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trustme
import zmq
import zmq.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.transports.test_zeromq import free_port
from tidings.errors import ConfigError, InvalidEvent
from tidings.event import Event
from tidings.formats.fedora import FedoraMessagingFormat
from tidings.formats.fedora import fedmsg as fedmsg_format
from tidings.formats.fedora.fedmsg import (
    BRIDGED_HEADER,
    FedmsgFormat,
    bridged,
    encode_json,
    verify,
)
from tidings.migration import MissingCheck
from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology, WireMessage


def test_envelope_and_frames_as_fedmsg_publishes_them() -> None:
    event = Event.create(
        "bodhi.update.comment", {"b": 1, "a": {"y": 2, "x": 1}}, headers={"username": "apache"}
    )
    message = FedmsgFormat(environment="stg").encode(event)
    topic, body = message.frames  # type: ignore[misc]
    assert topic == b"org.fedoraproject.stg.bodhi.update.comment"
    envelope = json.loads(body)
    assert set(envelope) == {"topic", "msg", "timestamp", "msg_id", "i", "username"}
    assert envelope["topic"] == topic.decode()
    assert envelope["username"] == "apache"
    assert isinstance(envelope["timestamp"], int)
    assert re.fullmatch(r"\d{4}-[0-9a-f-]{36}", envelope["msg_id"])
    assert body == json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()  # sorted, compact


def test_counter_i_increases() -> None:
    fmt = FedmsgFormat()
    events = [Event.create("a.b", {}) for _ in range(3)]
    assert [json.loads(fmt.encode(e).body)["i"] for e in events] == [1, 2, 3]


def test_decode_keeps_id_topic_and_time() -> None:
    fmt = FedmsgFormat()
    event = Event.create("koji.build.tag", {"build_id": 7})
    back = fmt.decode(fmt.encode(event))
    assert back.topic == "koji.build.tag"
    assert back.id == f"{event.time.year}-{event.id}"
    assert back.body == {"build_id": 7}
    assert int(back.time.timestamp()) == int(event.time.timestamp())
    again = fmt.decode(fmt.encode(back))
    assert again.id == back.id  # a fedmsg id is kept as it is


@pytest.fixture(scope="module")
def pki() -> tuple[trustme.CA, bytes, bytes]:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert = ca.issue_cert("shell-bodhi01.example.org", key_type=trustme.KeyType.RSA)
    return ca, cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes()


def test_signature_as_x509_ng_makes_it(pki: tuple[trustme.CA, bytes, bytes]) -> None:
    ca, key, cert = pki
    envelope = json.loads(
        FedmsgFormat(key_pem=key, cert_pem=cert).encode(Event.create("a.b", {"k": "v"})).body
    )
    assert envelope["crypto"] == "x509"
    for field in ("signature", "certificate"):  # 76-character lines, a final newline (_prep_crypto_msg)
        lines = envelope[field].split("\n")
        assert lines[-1] == "" and all(len(line) <= 76 for line in lines)
    assert verify(envelope, ca.cert_pem.bytes()) == "shell-bodhi01.example.org"


def test_tampering_and_strangers_are_refused(pki: tuple[trustme.CA, bytes, bytes]) -> None:
    ca, key, cert = pki
    envelope = json.loads(
        FedmsgFormat(key_pem=key, cert_pem=cert).encode(Event.create("a.b", {"k": "v"})).body
    )
    with pytest.raises(InvalidEvent, match="does not match"):
        verify({**envelope, "msg": {"k": "changed"}}, ca.cert_pem.bytes())
    with pytest.raises(InvalidEvent, match="not issued by the trusted CA"):
        verify(envelope, trustme.CA(key_type=trustme.KeyType.RSA).cert_pem.bytes())
    with pytest.raises(InvalidEvent, match="not signed"):
        verify({k: v for k, v in envelope.items() if k != "signature"}, ca.cert_pem.bytes())


NOW = datetime.now(UTC)
EXPIRED = {"not_before": NOW - timedelta(days=30), "not_after": NOW - timedelta(days=1)}
NOT_YET = {"not_before": NOW + timedelta(days=1), "not_after": NOW + timedelta(days=30)}


def signed_anyway(key: bytes, cert: bytes, monkeypatch: pytest.MonkeyPatch) -> dict:
    """An envelope signed as fedmsg signs it, whatever the certificate's dates (fedmsg's own
    signing does not look at them)."""
    with monkeypatch.context() as patched:
        patched.setattr(fedmsg_format, "validity_problem", lambda cert, now=None: None, raising=False)
        wire = FedmsgFormat(key_pem=key, cert_pem=cert).encode(Event.create("a.b", {"k": "v"}))
    return json.loads(wire.body)


@pytest.mark.parametrize(("dates", "reason"), [(EXPIRED, "expired at"), (NOT_YET, "not valid before")])
def test_a_certificate_out_of_its_validity_period_is_refused(
    pki: tuple[trustme.CA, bytes, bytes], monkeypatch: pytest.MonkeyPatch, dates: dict, reason: str
) -> None:
    ca = pki[0]
    leaf = ca.issue_cert(
        "old.example.org", common_name="old.example.org", key_type=trustme.KeyType.RSA, **dates
    )
    key, cert = leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes()
    envelope = signed_anyway(key, cert, monkeypatch)
    with pytest.raises(InvalidEvent, match=f"fedmsg certificate 'old.example.org' .*{reason}"):
        verify(envelope, ca.cert_pem.bytes())
    trusting = FedmsgFormat(trusted_ca=ca.cert_pem.bytes())
    with pytest.raises(InvalidEvent, match=reason):
        trusting.decode(WireMessage("a.b", json.dumps(envelope).encode()))
    # and tidings will not sign with it: fedmsg's consumers would drop all it sends
    with pytest.raises(ConfigError, match=f"signing certificate 'old.example.org' \\(cert_pem\\) .*{reason}"):
        FedmsgFormat(key_pem=key, cert_pem=cert)


def test_a_certificate_that_expires_while_signing_refuses_the_event(
    pki: tuple[trustme.CA, bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    leaf = pki[0].issue_cert(
        "shell.example.org", key_type=trustme.KeyType.RSA, not_after=NOW + timedelta(days=1)
    )
    fmt = FedmsgFormat(key_pem=leaf.private_key_pem.bytes(), cert_pem=leaf.cert_chain_pems[0].bytes())
    fmt.encode(Event.create("a.b", {}))
    later = NOW + timedelta(days=2)  # the format has been running since
    real = fedmsg_format.validity_problem
    monkeypatch.setattr(fedmsg_format, "validity_problem", lambda c, now=None: real(c, now or later))
    with pytest.raises(InvalidEvent, match=r"expired at .*consumers would drop the message"):
        fmt.encode(Event.create("a.b", {}))


def test_an_expired_ca_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ca_pem, key, cert = expired_ca_and_signer()
    with pytest.raises(InvalidEvent, match="fedmsg trusted CA 'old CA' expired at"):
        verify(signed_anyway(key, cert, monkeypatch), ca_pem)


def expired_ca_and_signer() -> tuple[bytes, bytes, bytes]:
    """A CA whose own certificate has expired (trustme's never do), and a signer it issued:
    the CA, the signer's key and certificate, in PEM."""
    ca_key, key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old CA")])
    ca = certificate(ca_name, ca_name, ca_key, ca_key.public_key(), NOW - timedelta(days=1), is_ca=True)
    signer_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "shell.example.org")])
    cert = certificate(signer_name, ca_name, ca_key, key.public_key(), NOW + timedelta(days=1), is_ca=False)
    plain = serialization.PrivateFormat.TraditionalOpenSSL
    key_pem = key.private_bytes(serialization.Encoding.PEM, plain, serialization.NoEncryption())
    return pem(ca), key_pem, pem(cert)


def certificate(
    subject: x509.Name,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    public_key: rsa.RSAPublicKey,
    not_after: datetime,
    *,
    is_ca: bool,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"msg": []}',
        b'{"msg": {}, "topic": 1, "msg_id": "x"}',
        b'{"msg": {}, "topic": "a", "msg_id": "x", "timestamp": "now"}',
        b'{"msg": {}, "topic": "a", "msg_id": "x", "timestamp": 1e300}',
        b"\xff",
    ],
)
def test_garbage_gives_our_error(body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        FedmsgFormat().decode(WireMessage("a", body, frames=[b"a", body]))


def test_bridge_never_carries_a_message_back() -> None:
    event = Event.create("a.b", {})
    once = bridged(event, "fedmsg-to-amqp")
    assert once is not None and once.headers[BRIDGED_HEADER] == "fedmsg-to-amqp"
    assert bridged(once, "fedmsg-to-amqp") is None
    assert once.id == event.id


def test_missing_check() -> None:
    check = MissingCheck(grace=10)
    check.saw_all("a", ["1", "2", "3"], at=0)
    check.saw_all("b", ["1", "3", "4"], at=5)
    assert check.missing(now=12) == {"a": ["2"], "b": []}  # "4" is still within its grace
    assert check.missing(now=16) == {"a": ["2"], "b": ["4"]}


@pytest.mark.rabbitmq
async def test_fedmsg_to_amqp_to_fedmsg_loses_nothing(rabbitmq: str) -> None:
    """1,000 fedmsg messages over ZeroMQ, bridged to RabbitMQ as fedora-messaging and back to fedmsg."""
    from tests.conftest import delete_amqp_topology
    from tidings.transports.amqp import AmqpTransport
    from tidings.transports.zeromq import ZeroMQTransport

    count = 1000
    in_port, out_port = free_port(), free_port()
    exchange = f"bridge.{uuid.uuid4().hex[:6]}"
    queue = QueueSpec(f"{exchange}.q", [Binding(exchange, "#")])
    fedmsg_in, fedmsg_out = FedmsgFormat(), FedmsgFormat(environment="prod")
    fedora = FedoraMessagingFormat(topic_prefix="org.fedoraproject.prod")
    ctx = zmq.asyncio.Context()
    legacy_pub = ctx.socket(zmq.PUB)  # the old fedmsg publisher
    legacy_pub.bind(f"tcp://127.0.0.1:{in_port}")
    legacy_sub = ctx.socket(zmq.SUB)  # an old fedmsg consumer on the far side
    legacy_sub.setsockopt(zmq.SUBSCRIBE, b"org.fedoraproject.prod")
    zmq_in = ZeroMQTransport(f"tcp://127.0.0.1:{in_port}", mode="bind")  # its SUB connects
    zmq_out = ZeroMQTransport(f"tcp://127.0.0.1:{out_port}", mode="bind")
    amqp = AmqpTransport(url=rabbitmq)
    for t in (zmq_in, zmq_out, amqp):
        await t.connect()
    await zmq_out.open_sender()
    legacy_sub.connect(f"tcp://127.0.0.1:{out_port}")
    await amqp.declare(Topology([ExchangeSpec(exchange)], [queue]))
    check = MissingCheck(grace=5)
    received: list[str] = []

    async def bridge_in() -> None:
        async for delivery in zmq_in.consume(QueueSpec("in", [Binding("", "#")]), prefetch=100):
            event = bridged(fedmsg_in.decode(delivery.message), "fedmsg-to-amqp")
            if event is not None:
                result = await amqp.send(exchange, [fedora.encode(event)])
                assert result[0].outcome.value == "delivered"

    async def bridge_out() -> None:
        async for delivery in amqp.consume(queue, prefetch=100):
            event = bridged(fedora.decode(delivery.message), "amqp-to-fedmsg")
            if event is not None:
                await zmq_out.send("", [fedmsg_out.encode(event)])
            await delivery.ack()

    async def far_side() -> None:
        while len(received) < count:
            _, body = await legacy_sub.recv_multipart()
            envelope = json.loads(body)
            received.append(envelope["msg_id"])
            check.saw("b", envelope["msg_id"], time.monotonic())

    tasks = [asyncio.create_task(bridge_in()), asyncio.create_task(bridge_out())]
    far = asyncio.create_task(far_side())
    try:
        await asyncio.sleep(0.5)  # subscriptions attach (ZeroMQ's slow joiner)
        for n in range(count):
            msg_id = f"2026-{uuid.uuid4()}"
            envelope = {
                "topic": "org.fedoraproject.prod.bodhi.update.comment",
                "msg": {"n": n},
                "timestamp": int(time.time()),
                "msg_id": msg_id,
                "i": n + 1,
                "username": "apache",
            }
            check.saw("a", msg_id, time.monotonic())
            await legacy_pub.send_multipart([envelope["topic"].encode(), encode_json(envelope).encode()])
            if n % 100 == 99:
                await asyncio.sleep(0.01)  # a fedmsg publisher's pace, not a flood past the HWM
        await asyncio.wait_for(far, 60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        legacy_pub.close(linger=0)
        legacy_sub.close(linger=0)
        ctx.term()
        for t in (zmq_in, zmq_out, amqp):
            await t.close()
        await delete_amqp_topology(rabbitmq, [queue.name], [exchange])
    assert check.missing(now=time.monotonic() + 10) == {"a": [], "b": []}
    assert sorted(received) == sorted(check.seen["a"])


async def test_a_verifying_bridge_refuses_unsigned_and_badly_signed_messages(
    tmp_path, pki: tuple[trustme.CA, bytes, bytes]
) -> None:  # type: ignore[no-untyped-def]
    """verify = true: only messages signed by a certificate of the trusted CA cross, the rest are counted."""
    import socket

    import zmq.asyncio

    from tests.waiting import until
    from tidings import Bus
    from tidings.formats.fedora.bridge import Bridge

    ca, key, cert = pki
    stranger = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "evil.example.org", key_type=trustme.KeyType.RSA
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "tidings.toml").write_text(
        '[bus]\nhome = "home"\n'
        f'[bridges.signed]\nzmq_endpoints = ["tcp://127.0.0.1:{port}"]\nconnector = "local"\n'
        'transport = "local"\nexchange = "amq.topic"\nverify = true\nca_file = "ca.pem"\n'
    )
    bus = Bus.load(tmp_path / "tidings.toml")
    bridge = Bridge(bus, "signed")
    good = FedmsgFormat(key_pem=key, cert_pem=cert)
    evil = FedmsgFormat(
        key_pem=stranger.private_key_pem.bytes(), cert_pem=stranger.cert_chain_pems[0].bytes()
    )
    valid = [good.encode(Event.create("bodhi.update.comment", {"n": n})) for n in range(3)]
    tampered_envelope = json.loads(good.encode(Event.create("bodhi.update.comment", {"n": 9})).body)
    tampered_envelope["msg"] = {"n": "changed"}
    tampered = json.dumps(tampered_envelope).encode()
    invalid = [
        FedmsgFormat().encode(Event.create("bodhi.update.comment", {"unsigned": True})).frames,
        evil.encode(Event.create("bodhi.update.comment", {"stranger": True})).frames,
        [b"org.fedoraproject.prod.bodhi.update.comment", tampered],
    ]
    context = zmq.asyncio.Context()
    publisher = context.socket(zmq.PUB)
    publisher.bind(f"tcp://127.0.0.1:{port}")
    stop = asyncio.Event()
    running = asyncio.create_task(bridge.run(stop))
    try:
        await asyncio.sleep(1.0)  # the bridge's SUB joins (ZeroMQ drops what comes before)
        for frames in [*invalid, *(m.frames for m in valid)]:
            await publisher.send_multipart(frames)
        await until(lambda: bridge.counters.to_amqp + bridge.counters.undecodable == 6)
    finally:
        stop.set()
        await running
        publisher.close(linger=0)
        context.term()
    assert (bridge.counters.to_amqp, bridge.counters.undecodable) == (3, 3)  # refused: counted, skipped
    stored = {event.id for event in bus.outbox.history()}
    assert stored == {message.message_id for message in valid}
    bus.close()


def test_verify_without_a_ca_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tidings.config import load_config
    from tidings.errors import ConfigError

    (tmp_path / "tidings.toml").write_text(
        '[bridges.signed]\nzmq_endpoints = ["tcp://127.0.0.1:9940"]\nconnector = "local"\n'
        'transport = "local"\nexchange = "amq.topic"\nverify = true\n'
    )
    with pytest.raises(ConfigError, match="needs ca_file"):
        load_config(tmp_path / "tidings.toml")
