"""fedmsg, the ZeroMQ bus Fedora left because it lost messages — spoken so bridges can drain it.

Facts (fedora-infra/fedmsg): ``fedmsg/core.py`` ``FedMsgContext.publish`` sends two frames,
``[topic, fedmsg.encoding.dumps(envelope)]``, the topic being
``<topic_prefix>.<environment>.<modname>.<topic>`` and the envelope
``{topic, msg, timestamp (int seconds), msg_id "<year>-<uuid4>", i, username}``;
``fedmsg/encoding/__init__.py`` encodes JSON with ``sort_keys=True, separators=(',', ':')``;
``fedmsg/crypto/x509_ng.py`` signs by adding ``crypto: "x509"``, then an RSA PKCS#1 v1.5
SHA-1 signature of that encoding, base64, cut into 76-character lines ending in a newline, as
``signature``, with the PEM certificate likewise as ``certificate``; validation strips those two
fields (``fedmsg.crypto.strip_credentials``), checks the certificate against the CA (OpenSSL's
``X509StoreContext.verify_certificate`` in ``_validate_signing_cert``: issued by the CA, and the
certificate and the CA within their validity periods) and the signature.
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tidings.errors import ConfigError, DecodeError, InvalidEvent
from tidings.event import Event, loads, whole_seconds, year_prefixed
from tidings.formats.fedora.settings import BRIDGED_HEADER
from tidings.transport import WireMessage


def encode_json(value: Any) -> str:
    """fedmsg.encoding.dumps: sorted keys, compact separators, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class FedmsgFormat:
    """Format ``fedmsg``; options ``topic_prefix``, ``environment``, ``username``, for signing
    ``key_pem``/``cert_pem`` (bytes or a path), and ``trusted_ca`` (bytes or a path) to decode
    only messages signed by a certificate that CA issued."""

    name = "fedmsg"

    def __init__(
        self,
        topic_prefix: str = "org.fedoraproject",
        environment: str = "prod",
        username: str = "tidings",
        key_pem: bytes | str | None = None,
        cert_pem: bytes | str | None = None,
        trusted_ca: bytes | str | None = None,
    ) -> None:
        self.prefix = f"{topic_prefix}.{environment}"
        self.username = username
        self._signer = Signer(_read(key_pem), _read(cert_pem)) if key_pem and cert_pem else None
        self._trusted_ca = _read_ca(trusted_ca) if trusted_ca else None
        self._counter = itertools.count(1)

    def wire_pattern(self, pattern: str) -> str:
        """A subscription on ``bodhi.#`` is to ``org.fedoraproject.prod.bodhi.#``: decoded events'
        topics are without the prefix, the frames' topics with it. ``#`` stays everything (other
        environments' messages too, as always), and a pattern that has the prefix keeps it."""
        if pattern == "#" or pattern.startswith(f"{self.prefix}."):
            return pattern
        return f"{self.prefix}.{pattern}"

    def envelope(self, event: Event) -> dict[str, Any]:
        topic = event.topic if event.topic.startswith(self.prefix + ".") else f"{self.prefix}.{event.topic}"
        envelope = {
            "topic": topic,
            "msg": event.body,
            "timestamp": whole_seconds(event.time),
            "msg_id": _msg_id(event),
            "i": next(self._counter),
            "username": str(event.headers.get("username", self.username)),
        }
        bridged = event.headers.get(BRIDGED_HEADER)
        if bridged:
            envelope[BRIDGED_HEADER] = bridged
        return self._signer.sign(envelope) if self._signer else envelope

    def encode(self, event: Event) -> WireMessage:
        envelope = self.envelope(event)
        topic = envelope["topic"]
        body = encode_json(envelope).encode()
        return WireMessage(
            routing_key=topic,
            body=body,
            message_id=envelope["msg_id"],
            timestamp=event.time,
            frames=[topic.encode(), body],
        )

    def decode(self, message: WireMessage) -> Event:
        envelope = loads(message.frames[-1] if message.frames else message.body)
        if not isinstance(envelope, dict) or not isinstance(envelope.get("msg"), dict):
            raise DecodeError("not a fedmsg envelope: it needs a 'msg' object")
        if self._trusted_ca is not None:
            verify(envelope, self._trusted_ca)  # raises InvalidEvent: refused, counted, not relayed
        topic = envelope.get("topic") or message.routing_key
        msg_id, stamp = envelope.get("msg_id"), envelope.get("timestamp")
        if not isinstance(topic, str) or not isinstance(msg_id, str):
            raise DecodeError("fedmsg envelope: topic and msg_id must be strings")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            raise DecodeError("fedmsg envelope: timestamp must be a number")
        short = topic.removeprefix(self.prefix + ".")
        headers = {k: v for k, v in envelope.items() if k in ("username", "i", "crypto", BRIDGED_HEADER)}
        try:
            moment = datetime.fromtimestamp(stamp, UTC)
        except (OverflowError, OSError, ValueError):
            raise DecodeError(f"fedmsg envelope: timestamp {stamp!r} is out of range") from None
        return Event.create(
            short,
            envelope["msg"],
            source=short.split(".", 1)[0],
            type="fedmsg.message.v1",
            headers=headers,
            id=msg_id,
            time=moment,
        )


def _msg_id(event: Event) -> str:
    # fedmsg ids are "<year>-<uuid4>"; an event that came from fedmsg keeps its own
    if year_prefixed(event.id):
        return event.id
    return f"{event.time.year}-{event.id}"


def _read_ca(value: bytes | str) -> x509.Certificate:
    named = f"the trusted CA {value!r} (trusted_ca; a bridge's ca_file)"
    try:
        return x509.load_pem_x509_certificate(_read(value))
    except InvalidEvent:  # checked when the relay starts and by `tidings config check`
        raise ConfigError(f"{named} cannot be read") from None
    except ValueError:
        raise ConfigError(f"{named} is not a PEM certificate") from None


def _read(value: bytes | str | None) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        with open(str(value), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidEvent(f"fedmsg signing file {value!r}: {exc.strerror}") from None


def _lines76(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n"


def validity_problem(cert: x509.Certificate, now: datetime | None = None) -> str | None:
    """Why a certificate is not valid now (expired, or not yet valid), or None: what OpenSSL's
    verification, and so fedmsg's, refuses whatever the signature."""
    now = now or datetime.now(UTC)
    if now > cert.not_valid_after_utc:
        return f"expired at {cert.not_valid_after_utc.isoformat()}"
    if now < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc.isoformat()}"
    return None


class Signer:
    """x509 signing exactly as fedmsg's x509_ng backend does it.

    A certificate outside its validity period is refused: fedmsg consumers that validate
    signatures drop every message it signs, without a word to the sender. So it is a
    ConfigError when the format is made, and an InvalidEvent (the event is dead-lettered with the
    reason, to be replayed once the certificate is renewed) if it expires while running.
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidEvent("fedmsg signs with RSA keys only")
        self.key = key
        self.cert = x509.load_pem_x509_certificate(cert_pem)
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        problem = validity_problem(self.cert)
        if problem:
            raise ConfigError(
                f"{self._named()} {problem}: fedmsg consumers would drop every message it signs"
            )

    def _named(self) -> str:
        return f"the fedmsg signing certificate{_called(self.cert)} (cert_pem)"

    def sign(self, envelope: dict[str, Any]) -> dict[str, Any]:
        problem = validity_problem(self.cert)
        if problem:
            raise InvalidEvent(f"{self._named()} {problem}: fedmsg consumers would drop the message")
        signed = {**envelope, "crypto": "x509"}
        signature = self.key.sign(encode_json(signed).encode(), padding.PKCS1v15(), hashes.SHA1())
        return {**signed, "signature": _lines76(signature), "certificate": _lines76(self.cert_pem)}


def verify(envelope: dict[str, Any], ca: x509.Certificate | bytes) -> str:
    """Check a signed envelope against the CA; returns the signer's common name or raises InvalidEvent."""
    try:
        signature = base64.b64decode(envelope["signature"])
        cert = x509.load_pem_x509_certificate(base64.b64decode(envelope["certificate"]))
    except (KeyError, TypeError, ValueError):
        raise InvalidEvent("fedmsg envelope is not signed (no valid signature and certificate)") from None
    if isinstance(ca, bytes):
        ca = x509.load_pem_x509_certificate(ca)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise InvalidEvent("fedmsg certificate is not issued by the trusted CA") from None
    for what, checked in (("certificate", cert), ("trusted CA", ca)):
        problem = validity_problem(checked)
        if problem:  # fedmsg's validate says "certificate has expired" and returns False
            raise InvalidEvent(f"fedmsg {what}{_called(checked)} {problem}")
    unsigned = {k: v for k, v in envelope.items() if k not in ("signature", "certificate")}
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise InvalidEvent("fedmsg certificate does not hold an RSA key")
    try:
        public.verify(signature, encode_json(unsigned).encode(), padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        raise InvalidEvent("fedmsg signature does not match the message") from None
    return signer_name(cert)


def _called(cert: x509.Certificate) -> str:
    name = signer_name(cert)
    return f" {name!r}" if name else ""


def signer_name(cert: x509.Certificate) -> str:
    """The certificate's common name (what fedmsg's routing_policy names), else its first DNS name."""
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if names:
        return str(names[0].value)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    dns = alt.get_values_for_type(x509.DNSName)
    return dns[0] if dns else ""


# -- bridging: fedmsg <-> AMQP (fedora-messaging), without loops -------------------------------


def bridged(event: Event, bridge: str) -> Event | None:
    """The event to forward across a bridge, or None if this bridge already carried it (a loop)."""
    if event.headers.get(BRIDGED_HEADER) == bridge:
        return None
    return Event.create(
        event.topic,
        event.body,
        source=event.source,
        type=event.type,
        headers={**event.headers, BRIDGED_HEADER: bridge},
        id=event.id,
        time=event.time,
    )


def fedmsg_id() -> str:
    """A fresh id in fedmsg's own form."""
    return f"{datetime.now(UTC).year}-{uuid.uuid4()}"
