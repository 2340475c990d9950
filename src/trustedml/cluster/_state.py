"""A cluster directory and its state file (cluster.json): what runs where, checked on load."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from trustedml._fs import make_private_dir, write_private
from trustedml.errors import ClusterStateError

__all__ = ["FORMAT", "ROLES", "ClusterDir", "ClusterState", "DaemonState"]

FORMAT = 1
ROLES = ("master", "worker")
STATE_FILE = "cluster.json"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class DaemonState:
    """One daemon this directory started: its process (``pid``, its group ``pgid``),
    where it listens (``host``, RPC ``port``, ``webui_port``, the HTTPS ``ui_url``),
    its ``measurement`` (hex, None when unmeasured), its ``log`` (relative to the
    directory), when it ``started`` (UTC, ISO 8601) and, for a worker, what it offers."""

    id: str
    role: str
    pid: int
    pgid: int
    host: str
    port: int
    webui_port: int
    ui_url: str
    measurement: str | None
    log: str
    started: str
    cores: int | None = None
    memory: str | None = None


@dataclass(frozen=True)
class ClusterState:
    """The state of a cluster directory: the master it runs or joined, whether the
    daemons run the secure configuration, under which TEE backend, the fingerprint of
    the cluster secret (never the secret), the overlay (or None) and the daemons."""

    master_url: str
    secure: bool
    tee: str
    secret_fingerprint: str | None
    overlay: dict[str, Any] | None = None
    daemons: tuple[DaemonState, ...] = ()

    def daemon(self, daemon_id: str) -> DaemonState:
        """The daemon called ``daemon_id``; :class:`ClusterStateError` when none is."""
        for daemon in self.daemons:
            if daemon.id == daemon_id:
                return daemon
        known = ", ".join(d.id for d in self.daemons) or "none"
        raise ClusterStateError(f"no daemon {daemon_id!r} in this cluster directory ({known})")

    @property
    def master(self) -> DaemonState | None:
        """The master daemon, when this directory started it."""
        return next((d for d in self.daemons if d.role == "master"), None)

    @property
    def workers(self) -> tuple[DaemonState, ...]:
        return tuple(d for d in self.daemons if d.role == "worker")

    def with_daemon(self, daemon: DaemonState) -> ClusterState:
        """This state with ``daemon`` added (or replacing the one with its id)."""
        others = tuple(d for d in self.daemons if d.id != daemon.id)
        return replace(self, daemons=(*others, daemon))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of cluster.json."""
        return {
            "format": FORMAT,
            "master_url": self.master_url,
            "secure": self.secure,
            "tee": self.tee,
            "secret_fingerprint": self.secret_fingerprint,
            "overlay": self.overlay,
            "daemons": [asdict(d) for d in self.daemons],
        }


_DAEMON_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "role": (str,),
    "pid": (int,),
    "pgid": (int,),
    "host": (str,),
    "port": (int,),
    "webui_port": (int,),
    "ui_url": (str,),
    "measurement": (str, type(None)),
    "log": (str,),
    "started": (str,),
    "cores": (int, type(None)),
    "memory": (str, type(None)),
}
_OPTIONAL = frozenset({"cores", "memory"})


def _bad(path: Path, what: str) -> ClusterStateError:
    return ClusterStateError(f"{path}: not a trusted-ml cluster state file: {what}")


def _daemon(path: Path, index: int, raw: object) -> DaemonState:
    if not isinstance(raw, dict):
        raise _bad(path, f"daemons[{index}]: expected an object")
    values: dict[str, Any] = {}
    for name, types in _DAEMON_FIELDS.items():
        if name not in raw:
            if name in _OPTIONAL:
                continue
            raise _bad(path, f"daemons[{index}]: missing {name!r}")
        value = raw[name]
        # bool is an int to isinstance; no field here is a flag.
        if isinstance(value, bool) or not isinstance(value, types):
            raise _bad(path, f"daemons[{index}].{name}: unexpected value {value!r}")
        values[name] = value
    daemon = DaemonState(**values)
    if daemon.role not in ROLES:
        raise _bad(path, f"daemons[{index}].role: expected master or worker, got {daemon.role!r}")
    if daemon.pid <= 1 or daemon.pgid <= 1:
        raise _bad(path, f"daemons[{index}]: implausible pid {daemon.pid}/{daemon.pgid}")
    if not 0 < daemon.port < 65536 or not 0 <= daemon.webui_port < 65536:
        raise _bad(path, f"daemons[{index}]: port out of range")
    log = Path(daemon.log)
    if log.is_absolute() or ".." in log.parts:
        raise _bad(path, f"daemons[{index}].log: expected a path inside the directory")
    if daemon.measurement is not None and (
        len(daemon.measurement) != 96 or not set(daemon.measurement) <= _HEX
    ):
        raise _bad(path, f"daemons[{index}].measurement: expected 96 hex digits")
    return daemon


def parse_state(path: Path, text: str) -> ClusterState:
    """Parse and check the text of a state file (``path`` names it in errors)."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise _bad(path, f"invalid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise _bad(path, "expected a JSON object")
    if raw.get("format") != FORMAT:
        raise _bad(path, f"expected format {FORMAT}, got {raw.get('format')!r}")
    master_url = raw.get("master_url")
    if not isinstance(master_url, str) or not master_url.startswith("spark://"):
        raise _bad(path, f"master_url: expected spark://HOST:PORT, got {master_url!r}")
    if not isinstance(raw.get("secure"), bool) or not isinstance(raw.get("tee"), str):
        raise _bad(path, "secure/tee: expected a boolean and a backend name")
    fingerprint = raw.get("secret_fingerprint")
    if fingerprint is not None and (
        not isinstance(fingerprint, str) or len(fingerprint) != 16 or not set(fingerprint) <= _HEX
    ):
        raise _bad(path, "secret_fingerprint: expected 16 hex digits or null")
    overlay = raw.get("overlay")
    if overlay is not None and not isinstance(overlay, dict):
        raise _bad(path, "overlay: expected an object or null")
    daemons = raw.get("daemons")
    if not isinstance(daemons, list):
        raise _bad(path, "daemons: expected a list")
    parsed = tuple(_daemon(path, i, d) for i, d in enumerate(daemons))
    ids = [d.id for d in parsed]
    if len(set(ids)) != len(ids):
        raise _bad(path, "daemons: duplicate ids")
    return ClusterState(
        master_url=master_url,
        secure=raw["secure"],
        tee=raw["tee"],
        secret_fingerprint=fingerprint,
        overlay=overlay,
        daemons=parsed,
    )


class ClusterDir:
    """The directory of a cluster on one host (mode 0700)::

    cluster.json            the state (0600)
    conf/spark.properties   the non-secret properties the daemons started with
    conf/log4j2.properties
    logs/<daemon-id>.log    each daemon's output
    work/<daemon-id>/       a worker's SPARK_WORKER_DIR
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()

    def __repr__(self) -> str:
        return f"ClusterDir({str(self.path)!r})"

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def conf_dir(self) -> Path:
        return self.path / "conf"

    @property
    def conf_file(self) -> Path:
        return self.conf_dir / "spark.properties"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def log_file(self, daemon_id: str) -> Path:
        return self.logs_dir / f"{daemon_id}.log"

    def work_dir(self, daemon_id: str) -> Path:
        return self.path / "work" / daemon_id

    def exists(self) -> bool:
        """Whether the directory holds a state file."""
        return self.state_file.exists()

    def create(self) -> None:
        """Make the directory and its subdirectories, private."""
        for sub in (self.path, self.conf_dir, self.logs_dir, self.path / "work"):
            make_private_dir(sub)

    def load(self) -> ClusterState:
        """The state, checked: :class:`ClusterStateError` when it is missing, unsafe
        (readable by others, not a regular file, not ours) or not a state file."""
        path = self.state_file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ClusterStateError(
                f"{self.path}: no cluster here (no {STATE_FILE}); start one with "
                "`trustedml cluster start` or `start-master`"
            ) from None
        except OSError as exc:
            raise ClusterStateError(f"{path}: cannot open: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ClusterStateError(f"{path}: expected a regular file")
            if info.st_uid != os.getuid():
                raise ClusterStateError(f"{path}: owned by uid {info.st_uid}, not by this user")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise ClusterStateError(
                    f"{path}: permissions too open: expected 0600, got {mode:04o}"
                )
            data = fh.read(1 << 20)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(path, "expected UTF-8 text") from None
        return parse_state(path, text)

    def load_or_none(self) -> ClusterState | None:
        """The state, or None when there is no state file."""
        return self.load() if self.exists() else None

    def save(self, state: ClusterState) -> None:
        """Write the state atomically (0600)."""
        self.create()
        text = json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"
        write_private(self.state_file, text.encode("utf-8"))

    def remove_state(self) -> None:
        """Remove the state file (after every daemon stopped)."""
        self.state_file.unlink(missing_ok=True)
