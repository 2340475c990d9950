"""Exact bytes to a broker over TLS and the answer parsed by hand, for requests an HTTP
client library would refuse to send (bad methods, control bytes, huge headers)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.broker.conftest import Broker
from trustedml.broker import client_ssl_context


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _read_all(tls: ssl.SSLSocket) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = tls.recv(65536)
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            break
        if not chunk:
            break
        chunks.append(chunk)
        reply = b"".join(chunks)
        head, sep, body = reply.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return reply
    return b"".join(chunks)


def exchange(broker: Broker, request: bytes, *, timeout: float = 30.0) -> RawResponse:
    """Send ``request`` as is on a new TLS connection and parse the first response."""
    context = client_ssl_context(broker.ca)
    with (
        socket.create_connection(("127.0.0.1", broker.server.port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # The server may answer and close before it has read everything.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, ssl.SSLError):
            tls.sendall(request)
        reply = _read_all(tls)
    return parse(reply)


def parse(reply: bytes) -> RawResponse:
    head, sep, body = reply.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response: {reply[:200]!r}"
    lines = head.split(b"\r\n")
    version, status, _ = lines[0].split(b" ", 2)
    assert version == b"HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    length = int(headers.get("content-length", len(body)))
    return RawResponse(int(status), headers, body[:length])


def request_bytes(
    method: str | bytes,
    path: str | bytes,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> bytes:
    """An HTTP/1.1 request with Host, Content-Length and Connection: close."""
    method = method.encode() if isinstance(method, str) else method
    path = path.encode() if isinstance(path, str) else path
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def assert_json_answer(response: RawResponse) -> Any:
    """Every answer of the broker: no 5xx, JSON, ``Cache-Control: no-store``, and the
    error shape on 4xx."""
    assert 200 <= response.status < 500, (response.status, response.body[:300])
    assert response.headers.get("cache-control") == "no-store", response.headers
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.headers,
        response.body[:200],
    )
    doc = response.json()
    if response.status >= 400:
        assert_error_shape(doc)
    return doc


def assert_error_shape(doc: Any) -> None:
    assert isinstance(doc, dict), doc
    for name in ("error", "message"):
        assert isinstance(doc.get(name), str), doc
        assert doc[name], doc
    assert isinstance(doc.get("reasons"), list), doc
