"""A cluster's status as its master reports it: the master's JSON read over TLS."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustedml.cluster._state import ClusterDir, ClusterState
from trustedml.errors import ClusterError

__all__ = ["ClusterStatus", "WorkerStatus", "cluster_status", "fetch_master_json", "parse_status"]


@dataclass(frozen=True)
class WorkerStatus:
    """A worker as the master lists it (``id`` is Spark's worker id)."""

    id: str
    host: str
    port: int
    state: str
    cores: int
    cores_used: int
    memory_mb: int


@dataclass(frozen=True)
class ClusterStatus:
    """What the master says: its URL and status ("ALIVE"), every worker it knows,
    those ALIVE and those lost (any other state), and its applications."""

    master_url: str
    status: str
    workers: tuple[WorkerStatus, ...]
    alive_workers: tuple[WorkerStatus, ...]
    lost_workers: tuple[WorkerStatus, ...]
    active_apps: tuple[str, ...]
    completed_apps: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON object (what ``trustedml cluster status --json`` prints)."""

        def worker(w: WorkerStatus) -> dict[str, Any]:
            return {
                "id": w.id,
                "host": w.host,
                "port": w.port,
                "state": w.state,
                "cores": w.cores,
                "cores_used": w.cores_used,
                "memory_mb": w.memory_mb,
            }

        return {
            "master_url": self.master_url,
            "status": self.status,
            "workers": [worker(w) for w in self.workers],
            "alive_workers": len(self.alive_workers),
            "lost_workers": [w.id for w in self.lost_workers],
            "active_apps": list(self.active_apps),
            "completed_apps": list(self.completed_apps),
        }


def _context(url: str, ca: Path | None) -> ssl.SSLContext | None:
    if not url.startswith("https://"):
        return None
    if ca is None:
        raise ClusterError(f"{url}: a CA certificate is needed to check the master's TLS")
    context = ssl.create_default_context(cafile=str(ca))
    # The CA is pinned (the key directory's own); the server certificate it signed
    # names the host it was made for, which need not be the address the daemons bind.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def fetch_master_json(ui_url: str, ca: Path | None, timeout: float = 5.0) -> dict[str, Any]:
    """The master's ``/json/`` document from its web UI at ``ui_url`` (https: the
    server certificate must chain to ``ca``)."""
    url = ui_url.rstrip("/") + "/json/"
    context = _context(url, ca)
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:  # noqa: S310
            body = answer.read(1 << 22)
    except (ssl.SSLError, urllib.error.URLError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ssl.SSLError):
            raise ClusterError(f"{url}: TLS failed (is {ca} the cluster's CA?): {reason}") from exc
        raise ClusterError(f"{url}: the master does not answer: {reason}") from exc
    except OSError as exc:
        raise ClusterError(f"{url}: the master does not answer: {exc}") from exc
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ClusterError(f"{url}: expected the master's JSON, got something else") from exc
    if not isinstance(document, dict):
        raise ClusterError(f"{url}: expected a JSON object")
    return document


def _int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _apps(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(str(app.get("id", "?")) for app in raw if isinstance(app, dict))


def parse_status(document: dict[str, Any]) -> ClusterStatus:
    """A :class:`ClusterStatus` from the master's JSON document."""
    workers = []
    for raw in document.get("workers") or ():
        if not isinstance(raw, dict):
            continue
        workers.append(
            WorkerStatus(
                id=str(raw.get("id", "?")),
                host=str(raw.get("host", "?")),
                port=_int(raw, "port"),
                state=str(raw.get("state", "UNKNOWN")),
                cores=_int(raw, "cores"),
                cores_used=_int(raw, "coresused"),
                memory_mb=_int(raw, "memory"),
            )
        )
    return ClusterStatus(
        master_url=str(document.get("url", "?")),
        status=str(document.get("status", "UNKNOWN")),
        workers=tuple(workers),
        alive_workers=tuple(w for w in workers if w.state == "ALIVE"),
        lost_workers=tuple(w for w in workers if w.state != "ALIVE"),
        active_apps=_apps(document.get("activeapps")),
        completed_apps=_apps(document.get("completedapps")),
    )


def master_ui(state: ClusterState, where: Path) -> str:
    """The web UI URL of the master ``state`` started; :class:`ClusterError` on a host
    that only joined a master."""
    master = state.master
    if master is None:
        raise ClusterError(
            f"{where}: this host only runs workers of {state.master_url}; ask on the "
            "master's host (`trustedml cluster status --dir DIR` there)"
        )
    return master.ui_url


def cluster_status(
    dir_or_url: str | os.PathLike[str] | ClusterDir, *, ca: Path | None
) -> ClusterStatus:
    """The status of the cluster whose master this directory started (or whose master
    web UI is at the ``https://`` URL given), read over TLS pinned to ``ca`` (the key
    directory's tls/ca.pem; a plain cluster's http UI needs none)."""
    if isinstance(dir_or_url, str) and dir_or_url.startswith(("https://", "http://")):
        url = dir_or_url
    else:
        directory = dir_or_url if isinstance(dir_or_url, ClusterDir) else ClusterDir(dir_or_url)
        url = master_ui(directory.load(), directory.path)
    return parse_status(fetch_master_json(url, ca))
