"""Running the broker: uvicorn over TLS 1.3 only, structured logs, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from trustedml._fs import write_private
from trustedml._secret import Secret
from trustedml.broker._app import create_app
from trustedml.broker._config import BrokerConfig
from trustedml.broker._http import BrokerHttpProtocol
from trustedml.broker._service import BrokerService
from trustedml.broker._store import BrokerStore
from trustedml.errors import BrokerUnavailableError
from trustedml.keys import load_tls_identity

log = logging.getLogger("trustedml.broker")

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and not name.startswith("_") and name not in doc:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(*, json_logs: bool, level: int = logging.INFO) -> None:
    """Send the broker's and uvicorn's logs to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def build_ssl_context(cert_chain: bytes, key_pem: Secret) -> ssl.SSLContext:
    """A server context that speaks TLS 1.3 only, with the certificate chain and key
    given in memory. The key never touches the file system in the clear: it is
    re-encrypted under a one-time password into an anonymous memory file (Linux
    memfd) or, elsewhere, a private temporary file removed at once."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    load_tls_identity(ctx, cert_chain, key_pem)
    return ctx


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only then.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BrokerUnavailableError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def _abort_connections(server: uvicorn.Server, *, idle_only: bool) -> int:
    """Cut connections (idle ones only, or all); returns how many."""
    cut = 0
    for connection in list(server.server_state.connections):
        cycle = getattr(connection, "cycle", None)
        idle = cycle is None or bool(getattr(cycle, "response_complete", False))
        transport = getattr(connection, "transport", None)
        if (idle or not idle_only) and transport is not None and not transport.is_closing():
            transport.abort()
            cut += 1
    return cut


class _UvicornServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Idle kept-alive connections are cut at once: a polite TLS close waits for
        # the peer's close_notify, which an idle client never sends. Requests in
        # flight still finish (uvicorn waits for them up to the graceful period).
        if _abort_connections(self, idle_only=True):
            await asyncio.sleep(0.05)
        await super().shutdown(sockets)


class BrokerServer:
    """A broker listening on ``config.host:config.port`` (0: any free port).

    :meth:`run` serves in the calling (main) thread until SIGINT/SIGTERM, then shuts
    down gracefully; :meth:`start`/:meth:`stop` run it in a background thread, for
    tests, benchmarks and embedding.
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        store: BrokerStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.app = create_app(config, store=store, clock=clock)
        self.service: BrokerService = self.app.state.broker
        self._ssl = build_ssl_context(config.tls_cert_chain, config.tls_key)
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"BrokerServer({self.url if self._port else 'not started'})"

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerUnavailableError("the broker is not started")
        return self._port

    @property
    def url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{self.port}"

    def _uvicorn(self) -> _UvicornServer:
        ctx = self._ssl
        config = uvicorn.Config(
            self.app,
            lifespan="on",
            log_config=None,
            # The app writes its own access line (no query string): _http.EdgeMiddleware.
            access_log=False,
            http=BrokerHttpProtocol,
            ws="none",
            server_header=False,
            proxy_headers=False,
            limit_concurrency=self.config.max_connections,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=int(self.config.graceful_shutdown),
            ssl_context_factory=lambda _config, _default: ctx,
        )
        return _UvicornServer(config)

    def _prepare(self) -> tuple[_UvicornServer, socket.socket]:
        self.service.open()  # fail before listening: wrong master key, bad database
        try:
            self._sock = _bind(self.config.host, self.config.port)
        except BaseException:
            self.service.close()
            raise
        self._port = int(self._sock.getsockname()[1])
        self._server = self._uvicorn()
        return self._server, self._sock

    async def _serve(self, on_ready: Callable[[BrokerServer], None] | None) -> None:
        server, sock = self._server, self._sock
        assert server is not None
        assert sock is not None
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            # Everything alive now (modules, config, keys) lives as long as the server:
            # keep it out of the collector's way, so collections stay short.
            gc.collect()
            gc.freeze()
            log.info("broker listening", extra={"url": self.url})
            if on_ready is not None:
                on_ready(self)
        try:
            await task
        finally:
            # Connections still open after the graceful period are cut, not left to
            # the closing loop.
            if _abort_connections(server, idle_only=False):
                await asyncio.sleep(0.1)

    def _run_loop(self, on_ready: Callable[[BrokerServer], None] | None) -> None:
        # uvloop when it is installed (uvicorn's "auto" choice), else asyncio's loop.
        assert self._server is not None
        factory = self._server.config.get_loop_factory()
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(self._serve(on_ready))

    def run(self, on_ready: Callable[[BrokerServer], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (main thread only), then shut down gracefully."""
        self._prepare()
        # uvicorn re-raises the signal that stopped it once it has shut down; these
        # handlers take it, so a graceful stop ends with exit status 0.
        previous = {
            sig: signal.signal(sig, lambda _signum, _frame: None)
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._run_loop(on_ready)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()

    def start(self, timeout: float = 30.0) -> BrokerServer:
        """Serve in a background thread; return once it accepts connections."""
        self._prepare()
        ready = threading.Event()

        def target() -> None:
            try:
                self._run_loop(lambda _s: ready.set())
            except BaseException as exc:  # reported by start() or stop()
                self._error = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=target, name="broker-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or self._error is not None or not self._server_started():
            self.stop()
            raise BrokerUnavailableError(f"the broker did not start: {self._error!r}")
        return self

    def _server_started(self) -> bool:
        return bool(self._server and self._server.started)

    def stop(self) -> None:
        """Shut down gracefully and wait for it."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=self.config.graceful_shutdown + 30)
            self._thread = None
        self._close()

    def _close(self) -> None:
        self.service.close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def __enter__(self) -> BrokerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    config: BrokerConfig,
    *,
    store: BrokerStore | None = None,
    port_file: Path | None = None,
) -> None:
    """Run a broker in this process until SIGINT/SIGTERM (see :class:`BrokerServer`).

    ``port_file``: written (0600) with the listening port once it accepts connections.
    """

    def ready(server: BrokerServer) -> None:
        if port_file is not None:
            write_private(Path(port_file), f"{server.port}\n".encode())

    BrokerServer(config, store=store).run(on_ready=ready)
