"""amqps against a TLS listener the tests start on the real RabbitMQ: it works, and it fails closed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import delete_amqp_topology, require_service
from tests.transports.rabbit_tls import Certificates, TlsBroker
from tidings.errors import ConfigError, TransportError
from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology, WireMessage
from tidings.transports.amqp import AmqpTransport

pytestmark = [pytest.mark.rabbitmq, pytest.mark.alone]  # it turns RabbitMQ's TLS listener on and off


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsBroker]:
    require_service("127.0.0.1", 5672, "RabbitMQ")  # fails in CI, skips elsewhere, when it is missing
    certs = Certificates()
    broker = TlsBroker(certs)
    try:
        broker.start()
        broker.port = broker.listen()  # type: ignore[attr-defined]
        broker.stranger_port = broker.listen("stranger")  # type: ignore[attr-defined]
        yield broker
    finally:
        broker.stop()
        certs.remove()


def transport(url: str, tls: TlsBroker, **files: str | None) -> AmqpTransport:
    options = {"ca_file": tls.certs.path("ca.pem"), **files}
    return AmqpTransport(url, connect_timeout=10, **options)  # type: ignore[arg-type]


async def refused(t: AmqpTransport) -> str:
    """Connecting fails with one line of our own error type, quickly; the line."""
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as caught:
            await t.connect()
    finally:
        await t.close()
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    return message


async def test_round_trip_over_tls(tls: TlsBroker) -> None:
    url = f"amqps://guest:guest@localhost:{tls.port}/"  # type: ignore[attr-defined]
    name = f"tls.{uuid.uuid4().hex[:8]}"
    t = transport(url, tls)
    try:
        await t.declare(Topology([ExchangeSpec(name)], [QueueSpec(name, [Binding(name, "tls.#")])]))
        message = WireMessage(routing_key="tls.hello", body=b'{"over": "tls"}', message_id="m1")
        (result,) = await t.send(name, [message])
        assert result.outcome.value == "delivered"
        stream = t.consume(QueueSpec(name, [Binding(name, "tls.#")]), prefetch=1)
        delivery = await asyncio.wait_for(anext(stream), 10)  # type: ignore[arg-type]
        assert (delivery.message.body, delivery.message.message_id) == (message.body, "m1")
        await delivery.ack()
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await t.close()
        await delete_amqp_topology("amqp://guest:guest@127.0.0.1:5672/", [name], [name])


async def test_external_authentication_with_a_client_certificate(tls: TlsBroker) -> None:
    url = f"amqps://localhost:{tls.port}/"  # type: ignore[attr-defined]  # no user, no password
    t = transport(url, tls, cert_file=tls.certs.path("client.pem"), key_file=tls.certs.path("client.key"))
    try:
        await t.connect()
        assert [tls.certs.client_name, "EXTERNAL", "true"] in tls.connections()
    finally:
        await t.close()


async def test_an_encrypted_client_key_with_its_password(tls: TlsBroker) -> None:
    url = f"amqps://localhost:{tls.port}/"  # type: ignore[attr-defined]
    files = {"cert_file": tls.certs.path("client.pem"), "key_file": tls.certs.path("client-encrypted.key")}
    t = transport(url, tls, key_password=tls.certs.key_password, **files)
    try:
        await t.connect()
    finally:
        await t.close()
    wrong = "canary-wrong-" + uuid.uuid4().hex
    with pytest.raises(ConfigError) as caught:
        await transport(url, tls, key_password=wrong, **files).connect()
    assert wrong not in str(caught.value) and "\n" not in str(caught.value)


async def test_a_server_signed_by_another_ca_is_refused(tls: TlsBroker) -> None:
    url = f"amqps://guest:guest@localhost:{tls.port}/"  # type: ignore[attr-defined]
    message = await refused(transport(url, tls, ca_file=tls.certs.path("other-ca.pem")))
    assert "certificate verify failed" in message


async def test_an_untrusted_server_certificate_is_refused_with_the_default_trust(tls: TlsBroker) -> None:
    url = f"amqps://guest:guest@localhost:{tls.stranger_port}/"  # type: ignore[attr-defined]
    message = await refused(AmqpTransport(url, connect_timeout=10))  # the system's CAs
    assert "certificate verify failed" in message


async def test_a_host_name_not_in_the_certificate_is_refused(tls: TlsBroker) -> None:
    url = f"amqps://guest:guest@127.0.0.1:{tls.port}/"  # type: ignore[attr-defined]  # cert: localhost only
    message = await refused(transport(url, tls))
    assert "certificate verify failed" in message and "127.0.0.1" in message


async def test_amqps_never_falls_back_to_plaintext(tls: TlsBroker) -> None:
    message = await refused(transport("amqps://guest:guest@localhost:5672/", tls))
    assert "guest:guest" not in message


def test_tls_files_with_a_plain_amqp_url_are_a_config_error(tls: TlsBroker) -> None:
    with pytest.raises(ConfigError, match="amqps://"):
        AmqpTransport("amqp://guest:guest@localhost:5672/", ca_file=tls.certs.path("ca.pem"))
