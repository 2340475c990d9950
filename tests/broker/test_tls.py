"""HTTPS only, TLS 1.3 only, certificate from the key directory, verified by clients."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.broker.conftest import Broker
from tests.conftest import FAST_KDF, PASSPHRASE
from trustedml import Secret, init_key_directory
from trustedml.broker import (
    BrokerAdminClient,
    BrokerUnavailableError,
    build_ssl_context,
    client_ssl_context,
)
from trustedml.errors import ConfigError


def _context(broker: Broker, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(broker.ca))
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def test_tls13_handshake_with_the_key_directory_certificate(broker: Broker) -> None:
    port = broker.server.port
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _context(broker).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert b'"status":"ok"' in reply


def test_tls12_is_refused(broker: Broker) -> None:
    ctx = _context(broker, ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client at least offer old versions
    with (
        socket.create_connection(("127.0.0.1", broker.server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_plain_http_is_refused(broker: Broker) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{broker.server.port}/v1/health", timeout=10)
    with socket.create_connection(("127.0.0.1", broker.server.port), timeout=10) as raw:
        raw.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            reply = raw.recv(4096)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"HTTP/")


def test_clients_refuse_a_broker_their_ca_did_not_certify(broker: Broker, tmp_path: Path) -> None:
    other = init_key_directory(tmp_path / "other", Secret(PASSPHRASE), kdf=FAST_KDF)
    admin = BrokerAdminClient(broker.url, admin_token=broker.config.admin_token, ca=other.ca_cert)
    with pytest.raises(BrokerUnavailableError, match="cannot be reached"):
        admin.list_keys()
    admin.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{broker.url}/v1/health", verify=client_ssl_context(other.ca_cert))
    with pytest.raises(ConfigError, match="does not exist"):
        client_ssl_context(tmp_path / "missing.pem")


def test_client_context_is_tls13_with_verification() -> None:
    ctx = client_ssl_context(None)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


def test_server_context_is_tls13_only(broker: Broker) -> None:
    ctx = build_ssl_context(broker.config.tls_cert_chain, broker.config.tls_key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        build_ssl_context(broker.config.tls_cert_chain, Secret(b"junk"))


openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _s_client(broker: Broker, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{broker.server.port}",
            "-CAfile", str(broker.ca), "-verify_return_error", *flags,
        ],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@openssl
def test_openssl_s_client_tls13_succeeds(broker: Broker) -> None:
    result = _s_client(broker, "-tls1_3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TLSv1.3" in result.stdout
    assert "Verify return code: 0 (ok)" in result.stdout


@openssl
@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_1"])
def test_openssl_s_client_below_tls13_fails(broker: Broker, flag: str) -> None:
    result = _s_client(broker, flag, "-cipher", "ALL:@SECLEVEL=0")
    assert result.returncode != 0
    assert "no peer certificate available" in result.stdout
    assert "Cipher is (NONE)" in result.stdout
