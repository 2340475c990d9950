"""The broker's HTTP edge: every answer JSON with ``Cache-Control: no-store``, including
those of the HTTP layer (malformed requests, oversized headers, overload), a bounded
request head, and an access log that never records query strings."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("trustedml.broker")
access_log = logging.getLogger("trustedml.broker.access")

MAX_REQUEST_HEAD = 16 * 1024
MAX_LOGGED_PATH = 200
NO_STORE = (b"cache-control", b"no-store")
_JSON = (b"content-type", b"application/json")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def error_body(code: str, message: str) -> bytes:
    """The broker's error document (docs/broker-protocol.md, Errors) as bytes."""
    doc = {"error": code, "message": message, "reasons": []}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _shown_path(scope: Scope) -> str:
    # The raw path as received (percent escapes kept, so no control character can
    # reach a text log line), without the query string, capped.
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    text = raw.decode("ascii", "backslashreplace")
    return text if len(text) <= MAX_LOGGED_PATH else text[:MAX_LOGGED_PATH] + "..."


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, NO_STORE, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class EdgeMiddleware:
    """ASGI middleware around the routes: refuses paths with control characters,
    adds ``Cache-Control: no-store`` to any response that lacks it, turns an
    exception that escaped every handler into a JSON 500 (none is expected), and
    writes the access log line (method, path without query, status, duration)."""

    def __init__(self, app: ASGIApp, *, log_access: bool = False) -> None:
        self.app = app
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_no_store(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        try:
            if _CONTROL.search(scope["path"]):
                status = 400
                await _send_error(
                    send, 400, "bad_request", "request path: expected no control characters"
                )
            else:
                await self.app(scope, receive, send_no_store)
        except Exception:
            log.exception("internal error on %s %s", scope["method"], _shown_path(scope))
            if status == 0:
                status = 500
                await _send_error(send, 500, "internal", "internal error")
        finally:
            if self.log_access:
                _log_access(scope, status, time.perf_counter() - start)


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    client = scope.get("client")
    method, path, ms = scope["method"], _shown_path(scope), round(seconds * 1000, 2)
    access_log.info(
        "%s %s %d %.2fms",
        method,
        path,
        status,
        ms,
        extra={
            "client": client[0] if client else None,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": ms,
        },
    )


async def _unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    body = error_body("busy", "too many concurrent connections or requests")
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                _JSON,
                NO_STORE,
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _raw_response(status: bytes, body: bytes) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: application/json\r\ncache-control: no-store\r\n",
            b"content-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
    )


class BrokerHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the broker's edge rules.

    httptools has no limit on the request head (uvicorn's
    ``h11_max_incomplete_event_size`` applies to h11 only) and buffers a header line
    until it ends, so the bytes of each request head are counted here before the
    parser sees them: data is fed in pieces of at most :attr:`max_head` bytes, and a
    head still incomplete after ``max_head`` counted bytes is answered 431 and the
    connection closed. A head of up to ``max_head`` bytes is always accepted; none
    longer than twice that is (bytes after the end of a request in the same piece as
    the next request's head are not counted).
    """

    max_head = MAX_REQUEST_HEAD

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view) and not self.transport.is_closing():
            if self._in_head:
                piece = view[: self.max_head - self._head_bytes]
                self._head_bytes += len(piece)
            else:
                piece = view[: self.max_head]
            view = view[len(piece) :]
            super().data_received(piece)  # type: ignore[arg-type]
            if self._in_head and self._head_bytes >= self.max_head:
                self._refuse_head()
                return

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        log.warning(
            "request head over %d bytes refused (431)",
            self.max_head,
            extra={"client": self.client[0] if self.client else None},
        )
        if self.cycle is None or self.cycle.response_complete:
            body = error_body(
                "header_too_large",
                f"request line and headers: expected at most {self.max_head} bytes, got more",
            )
            self.transport.write(_raw_response(b"431 Request Header Fields Too Large", body))
        # else a pipelined request is still being answered: only close.
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = error_body("bad_request", f"malformed HTTP request ({msg.rstrip('.')})")
        self.transport.write(_raw_response(b"400 Bad Request", body))
        self.transport.close()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # uvicorn answers its concurrency limit with a plain-text 503 app.
        chosen: Any = _unavailable if app is service_unavailable else app
        super()._start_asgi_task(cycle, chosen)


__all__ = ["MAX_REQUEST_HEAD", "BrokerHttpProtocol", "EdgeMiddleware", "error_body"]
