"""A stand-in Kubernetes API server on 127.0.0.1 for the tests that apply or submit.

No cluster can be reached from here, so clients (the official Python client, Spark's
fabric8 client) talk to a small server in a thread that answers like the API server
for the requests apply, delete and Spark's submission make: POST 201 echoing the
object, 409 when it exists, PUT 200, server-side apply (PATCH) creating or updating,
GET of one object or a labelled list, DELETE of one object or of a labelled
collection, 403 for objects it is told to refuse (with a message that repeats the
request, as a careless server might) and for every pod (nothing runs here, so a
submission fails fast instead of watching a pod forever), 422 when an immutable
object's data would change. It records every request. Plain HTTP, or HTTPS with a key
directory's server certificate; the kubeconfig is a real file the client loads, with
a bearer token the server checks and, over HTTPS, the key directory's CA.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

TOKEN = "standin-token-" + "0" * 8
# The plural of each kind a client may touch, and the API prefix it lives under.
PLURALS = {
    "serviceaccounts": "/api/v1",
    "roles": "/apis/rbac.authorization.k8s.io/v1",
    "rolebindings": "/apis/rbac.authorization.k8s.io/v1",
    "networkpolicies": "/apis/networking.k8s.io/v1",
    "configmaps": "/api/v1",
    "secrets": "/api/v1",
    "services": "/api/v1",
    "pods": "/api/v1",
    "persistentvolumeclaims": "/api/v1",
}
KIND_OF = {
    "serviceaccounts": "ServiceAccount",
    "roles": "Role",
    "rolebindings": "RoleBinding",
    "networkpolicies": "NetworkPolicy",
    "configmaps": "ConfigMap",
    "secrets": "Secret",
    "services": "Service",
    "pods": "Pod",
    "persistentvolumeclaims": "PersistentVolumeClaim",
}
NO_PODS = "stand-in: no pods here"
# The media types a request body may have: JSON, and the patches JSON also spells.
_BODY_TYPES = (
    "application/json",
    "application/apply-patch+yaml",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any] | None
    raw: bytes
    content_type: str = ""

    @property
    def plural(self) -> str:
        """The resource the request is about (``pods``, ``configmaps`` ...), or ""."""
        parts = self.path.strip("/").split("/")
        if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
            return parts[parts.index("namespaces") + 2]
        return ""


@dataclass
class StandIn:
    """The stand-in API server's state: objects by (namespace, plural, name)."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    forbidden: set[tuple[str, str]] = field(default_factory=set)

    def reset(self) -> None:
        self.requests.clear()
        self.objects.clear()
        self.forbidden.clear()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _parse(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        body = yaml.safe_load(raw)  # server-side apply may send YAML
    return body if isinstance(body, dict) else None


def _labelled(obj: dict[str, Any], selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels", {}) or {}
    for term in filter(None, selector.split(",")):
        label, _, value = term.partition("=")
        if labels.get(label) != value:
            return False
    return True


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            url = urlsplit(self.path)
            raw = self._body()
            # As the API server: no Content-Type means JSON, its first media type.
            media = self.headers.get("Content-Type", "application/json")
            media = media.split(";")[0].strip().lower()
            body = _parse(raw) if media in _BODY_TYPES else None
            query = parse_qs(url.query)
            state.requests.append(Request(self.command, url.path, query, body, raw, media))
            if raw and media not in _BODY_TYPES:
                return self._answer(415, _status(415, "UnsupportedMediaType", "json only"))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._answer(401, _status(401, "Unauthorized", "Unauthorized"))
            parts = url.path.strip("/").split("/")
            try:
                at = parts.index("namespaces")
                namespace, plural = parts[at + 1], parts[at + 2]
            except (ValueError, IndexError):
                return self._answer(404, _status(404, "NotFound", "not namespaced"))
            if plural not in PLURALS or "/".join(parts[:at]) != PLURALS[plural].strip("/"):
                return self._answer(404, _status(404, "NotFound", "unknown resource"))
            name = parts[at + 3] if len(parts) > at + 3 else None
            self._resource(namespace, plural, name, body, raw, query)
            return None

        def _resource(
            self,
            namespace: str,
            plural: str,
            name: str | None,
            body: dict[str, Any] | None,
            raw: bytes,
            query: dict[str, list[str]],
        ) -> None:
            key_name = name or (body or {}).get("metadata", {}).get("name", "")
            key = (namespace, plural, key_name)
            selector = query.get("labelSelector", [""])[0]
            if (plural, key_name) in state.forbidden:
                # A careless server (or webhook) repeating the request in its refusal.
                message = (
                    f'{plural} "{key_name}" is forbidden: User "tester" cannot '
                    f"{self.command.lower()} it; request was {raw.decode()}"
                )
                return self._answer(403, _status(403, "Forbidden", message))
            if plural == "pods" and self.command in ("POST", "PUT", "PATCH"):
                message = f'pods "{key_name}" is forbidden: {NO_PODS}'
                return self._answer(403, _status(403, "Forbidden", message))
            if self.command == "POST" and name is None:
                if key in state.objects:
                    return self._answer(
                        409, _status(409, "AlreadyExists", f'{plural} "{key_name}" already exists')
                    )
                state.objects[key] = body or {}
                return self._answer(201, body or {})
            if self.command == "PATCH" and name is not None:
                # Server-side apply: create or take the applied object whole.
                code = 200 if key in state.objects else 201
                state.objects[key] = body or {}
                return self._answer(code, body or {})
            if self.command == "PUT" and name is not None:
                old = state.objects.get(key)
                if old is None:
                    return self._answer(404, _status(404, "NotFound", "not found"))
                if old.get("immutable") and old.get("data") != (body or {}).get("data"):
                    return self._answer(422, _status(422, "Invalid", "data: field is immutable"))
                state.objects[key] = body or {}
                return self._answer(200, body or {})
            if self.command == "GET" and name is not None:
                if key not in state.objects:
                    missing = f'{plural} "{name}" not found'
                    return self._answer(404, _status(404, "NotFound", missing))
                return self._answer(200, state.objects[key])
            if self.command == "DELETE" and name is not None:
                if state.objects.pop(key, None) is None:
                    return self._answer(404, _status(404, "NotFound", "not found"))
                return self._answer(200, {"kind": "Status", "status": "Success"})
            if self.command in ("GET", "DELETE"):
                found = [
                    k
                    for k, obj in state.objects.items()
                    if k[:2] == (namespace, plural) and _labelled(obj, selector)
                ]
                if self.command == "DELETE":
                    items = [state.objects.pop(k) for k in found]
                else:
                    items = [state.objects[k] for k in found]
                listed = {"apiVersion": "v1", "kind": KIND_OF[plural] + "List"}
                return self._answer(200, {**listed, "metadata": {}, "items": items})
            return self._answer(405, _status(405, "MethodNotAllowed", "not here"))

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake in the request's own thread: a slow client never holds
        # up the accepting one.
        if self.tls is None:
            return super().finish_request(request, client_address)
        # The wrapped socket takes over the connection: it is the one to close.
        with self.tls.wrap_socket(request, server_side=True) as wrapped:
            super().finish_request(wrapped, client_address)
        return None

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up (or rejects the certificate) is no test failure


@contextmanager
def serve(tls: ssl.SSLContext | None = None) -> Iterator[StandIn]:
    """A running stand-in on 127.0.0.1 (HTTPS with ``tls``), stopped on exit."""
    state = StandIn()
    httpd = _Server(("127.0.0.1", 0), _handler(state))
    httpd.tls = tls
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def server_tls(cert_chain: bytes, key_pem: Any) -> ssl.SSLContext:
    """A server context with ``cert_chain`` and the ``Secret`` ``key_pem`` (in memory)."""
    from trustedml.keys import load_tls_identity

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(["http/1.1"])
    load_tls_identity(ctx, cert_chain, key_pem)
    return ctx


def free_port() -> int:
    """A port nothing listens on once this returns."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return int(free.getsockname()[1])


def kubeconfig(path: Path, server_url: str, ca: bytes | None = None) -> Path:
    """A kubeconfig whose current context is the stand-in (trusting ``ca``, PEM, when
    given); context "elsewhere" names a port nothing listens on."""
    standin: dict[str, Any] = {"server": server_url}
    if ca is not None:
        standin["certificate-authority-data"] = base64.b64encode(ca).decode("ascii")
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "standin", "cluster": standin},
                    {"name": "elsewhere", "cluster": {"server": "http://127.0.0.1:9"}},
                ],
                "users": [{"name": "tester", "user": {"token": TOKEN}}],
                "contexts": [
                    {"name": name, "context": {"cluster": name, "user": "tester"}}
                    for name in ("standin", "elsewhere")
                ],
                "current-context": "standin",
            }
        )
    )
    path.chmod(0o600)
    return path
