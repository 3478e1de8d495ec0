"""TLS listeners on the running RabbitMQ, configured by the tests themselves (no restart).

Certificates are minted with trustme. The broker runs as its own user, so the files go to a
world-readable temporary folder (they are throwaway test keys). ``rabbitmqctl eval`` starts a
TLS listener bound to 127.0.0.1 on a free port and, for EXTERNAL authentication (the client
certificate's common name is the user name, as on Fedora's broker), enables the
``rabbitmq_auth_mechanism_ssl`` plugin and sets three settings of the ``rabbit`` application.
Everything changed is put back afterwards; the plugin stays enabled (it does nothing unless
EXTERNAL is offered).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

#: settings of the rabbit application this module changes, and puts back
_SETTINGS = ("auth_mechanisms", "ssl_options", "ssl_cert_login_from")


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise AssertionError(f"rabbitmqctl {args[0]} failed: {result.stderr.strip()[-400:]}")
    return result.stdout.strip()


def erlang_string(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Certificates:
    """A CA, a server certificate for ``localhost`` only, a client certificate, another CA."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tidings-tls-")))
    client_name: str = field(default_factory=lambda: f"tidings-tls-{secrets.token_hex(4)}")
    key_password: str = field(default_factory=lambda: f"canary-{secrets.token_hex(8)}")

    def __post_init__(self) -> None:
        self.folder.chmod(0o755)
        ca, other_ca = trustme.CA(), trustme.CA()
        server = ca.issue_cert("localhost")  # not 127.0.0.1: connecting by IP is a host name mismatch
        client = ca.issue_cert(self.client_name, common_name=self.client_name)
        stranger = other_ca.issue_cert("localhost")
        self._write("ca.pem", ca.cert_pem.bytes())
        self._write("other-ca.pem", other_ca.cert_pem.bytes())
        self._write("server.pem", server.cert_chain_pems[0].bytes())
        self._write("server.key", server.private_key_pem.bytes())
        self._write("stranger.pem", stranger.cert_chain_pems[0].bytes())
        self._write("stranger.key", stranger.private_key_pem.bytes())
        self._write("client.pem", client.cert_chain_pems[0].bytes())
        self._write("client.key", client.private_key_pem.bytes())
        key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self.key_password.encode()),
        )
        self._write("client-encrypted.key", encrypted)

    def _write(self, name: str, data: bytes) -> None:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o644)

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class TlsBroker:
    """TLS listeners and an EXTERNAL-authenticated user on the local RabbitMQ."""

    def __init__(self, certs: Certificates) -> None:
        self.certs = certs
        self.ports: list[int] = []
        self._saved: dict[str, str] = {}

    def ssl_options(self, cert: str = "server") -> str:
        c = self.certs
        return (
            f"[{{cacertfile,{erlang_string(c.folder / 'ca.pem')}}},"
            f"{{certfile,{erlang_string(c.folder / f'{cert}.pem')}}},"
            f"{{keyfile,{erlang_string(c.folder / f'{cert}.key')}}},"
            "{verify,verify_peer},{fail_if_no_peer_cert,false}]"
        )

    def start(self) -> None:
        subprocess.run(
            ["rabbitmq-plugins", "enable", "rabbitmq_auth_mechanism_ssl"],
            capture_output=True,
            timeout=120,
            check=True,
        )
        for name in _SETTINGS:
            self._saved[name] = rabbitmqctl("eval", f"application:get_env(rabbit, {name}).")
        # EXTERNAL refuses to log anyone in unless the broker-wide TLS options verify peers
        rabbitmqctl(
            "eval",
            "application:set_env(rabbit, auth_mechanisms, ['PLAIN', 'AMQPLAIN', 'EXTERNAL']), "
            f"application:set_env(rabbit, ssl_options, {self.ssl_options()}), "
            "application:set_env(rabbit, ssl_cert_login_from, common_name).",
        )
        rabbitmqctl("add_user", self.certs.client_name, secrets.token_hex(16))
        rabbitmqctl("set_permissions", self.certs.client_name, ".*", ".*", ".*")

    def listen(self, cert: str = "server") -> int:
        """A TLS listener on 127.0.0.1 presenting ``cert``; its port."""
        port = free_port()
        rabbitmqctl(
            "eval",
            f'rabbit_networking:start_ssl_listener({{"127.0.0.1", {port}}}, {self.ssl_options(cert)}, 1, 1).',
        )
        self.ports.append(port)
        return port

    def stop(self) -> None:
        for port in self.ports:
            child = f"'rabbit_tcp_listener_sup_127.0.0.1:{port}'"
            stop = f"supervisor:terminate_child(rabbit_sup, {child}), "
            rabbitmqctl("eval", stop + f"supervisor:delete_child(rabbit_sup, {child}).")
        for name, saved in self._saved.items():
            if saved.startswith("{ok,"):
                value = saved[len("{ok,") : -1]
                rabbitmqctl("eval", f"application:set_env(rabbit, {name}, {value}).")
            else:
                rabbitmqctl("eval", f"application:unset_env(rabbit, {name}).")
        user = self.certs.client_name
        subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True, timeout=60, check=False)

    def connections(self) -> list[list[str]]:
        """``[user, auth_mechanism, ssl]`` of every open connection."""
        columns = ("user", "auth_mechanism", "ssl")
        out = rabbitmqctl("list_connections", *columns, "--no-table-headers", "--quiet")
        return [line.split("\t") for line in out.splitlines() if line.strip()]
