"""The broker's HTTP API (docs/broker-protocol.md) as a Starlette ASGI application."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from trustedml._version import __version__
from trustedml.broker._config import BrokerConfig
from trustedml.broker._errors import Refusal
from trustedml.broker._http import EdgeMiddleware
from trustedml.broker._service import BrokerService
from trustedml.broker._store import BrokerStore

log = logging.getLogger("trustedml.broker")

_NO_STORE = {"Cache-Control": "no-store"}
MAX_AUDIT_PAGE = 1000
MAX_AUDIT_SEQ = 2**63 - 1  # SQLite INTEGER


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )


def _refusal_response(exc: Refusal) -> Response:
    return json_response(exc.to_dict(), exc.status, exc.headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (checked while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise Refusal(400, "bad_request", "Content-Length is not a number") from None
        if size > limit:
            raise Refusal(
                413, "too_large", f"request body of {size} bytes exceeds the limit of {limit}"
            )
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise Refusal(413, "too_large", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody hears the answer; it must not log as a fault
        raise Refusal(400, "bad_request", "the client left before sending the body") from None
    return b"".join(chunks)


def _query_int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    # Plain ASCII digits only, and short: int() would take "1_000", " 7 ", "١٢" and
    # raise on thousands of digits.
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise ValueError(name)
    return int(text)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}

Handler = Callable[[Request], Awaitable[Response]]


def _guard(handler: Handler) -> Handler:
    """Refusals become JSON errors; anything unexpected becomes a logged 500."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Refusal as exc:
            return _refusal_response(exc)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.url.path)
            return json_response(
                {"error": "internal", "message": "internal error", "reasons": []}, 500
            )

    return wrapped


def create_app(
    config: BrokerConfig,
    *,
    store: BrokerStore | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The broker as an ASGI app. ``app.state.broker`` is its :class:`BrokerService`;
    the store opens at startup (or earlier, by calling ``open()``) and closes at
    shutdown."""
    service = BrokerService(config, store=store, clock=clock)

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "version": __version__, "api": "v1"})

    async def challenge(request: Request) -> Response:
        await read_body(request, config.max_body)
        return json_response(await service.key_release.challenge(_client(request)))

    async def attest(request: Request) -> Response:
        body = await read_body(request, config.max_attest_body)
        return json_response(await service.key_release.attest(_client(request), body))

    def release(operation: str) -> Handler:
        async def handler(request: Request) -> Response:
            body = await read_body(request, config.max_body)
            doc = await service.key_release.release(
                operation,
                _client(request),
                request.path_params["key_id"],
                request.headers.get("authorization"),
                body,
            )
            return json_response(doc)

        return handler

    def admin(
        action: str, handler: Callable[[Request], Awaitable[Any]], status: int = 200
    ) -> Handler:
        async def wrapped(request: Request) -> Response:
            await service.admin.check_admin(
                request.headers.get("authorization"), _client(request), action
            )
            return json_response(await handler(request), status)

        return wrapped

    async def keys_get(request: Request) -> Any:
        return service.admin.list_keys()

    async def keys_post(request: Request) -> Any:
        return await service.admin.create_key(
            _client(request), await read_body(request, config.max_admin_body)
        )

    async def key_get(request: Request) -> Any:
        return service.admin.get_key(request.path_params["key_id"])

    async def key_delete(request: Request) -> Any:
        return await service.admin.delete_key(_client(request), request.path_params["key_id"])

    async def key_rotate(request: Request) -> Any:
        await read_body(request, config.max_admin_body)
        return await service.admin.rotate_key(_client(request), request.path_params["key_id"])

    def key_state(enabled: bool) -> Callable[[Request], Awaitable[Any]]:
        async def handler(request: Request) -> Any:
            await read_body(request, config.max_admin_body)
            return await service.admin.set_state(
                _client(request), request.path_params["key_id"], enabled
            )

        return handler

    async def policy_get(request: Request) -> Any:
        return service.admin.get_policy(request.path_params["key_id"])

    async def policy_put(request: Request) -> Any:
        body = await read_body(request, config.max_admin_body)
        return await service.admin.set_policy(_client(request), request.path_params["key_id"], body)

    async def audit_get(request: Request) -> Any:
        try:
            after = _query_int(request, "after", 0)
            limit = _query_int(request, "limit", 100)
        except ValueError:
            raise Refusal(400, "bad_request", "after and limit must be integers") from None
        if not 0 <= after <= MAX_AUDIT_SEQ or not 1 <= limit <= MAX_AUDIT_PAGE:
            raise Refusal(
                400,
                "bad_request",
                f"expected 0 <= after <= {MAX_AUDIT_SEQ} and 1 <= limit <= {MAX_AUDIT_PAGE}",
            )
        return await service.read_audit(after, limit)

    async def stats_get(request: Request) -> Any:
        return service.stats()

    admin_routes: list[tuple[str, str, str, Callable[[Request], Awaitable[Any]], int]] = [
        # method, path, action (audited when refused), handler, status
        ("GET", "/v1/admin/keys", "key.list", keys_get, 200),
        ("POST", "/v1/admin/keys", "key.create", keys_post, 201),
        ("GET", "/v1/admin/keys/{key_id}", "key.show", key_get, 200),
        ("DELETE", "/v1/admin/keys/{key_id}", "key.delete", key_delete, 200),
        ("POST", "/v1/admin/keys/{key_id}/rotate", "key.rotate", key_rotate, 200),
        ("POST", "/v1/admin/keys/{key_id}/disable", "key.disable", key_state(False), 200),
        ("POST", "/v1/admin/keys/{key_id}/enable", "key.enable", key_state(True), 200),
        ("GET", "/v1/admin/keys/{key_id}/policy", "key.policy.show", policy_get, 200),
        ("PUT", "/v1/admin/keys/{key_id}/policy", "key.policy", policy_put, 200),
        ("GET", "/v1/admin/audit", "audit.show", audit_get, 200),
        ("GET", "/v1/admin/stats", "stats", stats_get, 200),
    ]
    routes = [  # the busiest first: Starlette tries them in order
        Route("/v1/keys/{key_id}/unwrap", _guard(release("unwrap")), methods=["POST"]),
        Route("/v1/keys/{key_id}/datakey", _guard(release("datakey")), methods=["POST"]),
        Route("/v1/challenge", _guard(challenge), methods=["POST"]),
        Route("/v1/attest", _guard(attest), methods=["POST"]),
        Route("/v1/health", _guard(health), methods=["GET"]),
        *(
            Route(path, _guard(admin(action, handler, status)), methods=[method])
            for method, path, action, handler, status in admin_routes
        ),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        code = _HTTP_CODES.get(status, "bad_request" if status < 500 else "internal")
        return json_response(
            {"error": code, "message": str(exc.detail), "reasons": []},
            status,
            dict(exc.headers or {}),
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
        return json_response({"error": "internal", "message": "internal error", "reasons": []}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.open()
        try:
            yield
        finally:
            service.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(EdgeMiddleware, log_access=config.access_log)],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    # "/v1/health/" is a 404 like any unknown path, not a plain-text redirect.
    app.router.redirect_slashes = False
    app.state.broker = service
    return app
