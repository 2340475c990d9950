"""The security doctor's checks of running clusters: the properties the daemons started
with, the REST port, the daemons' arguments and listening sockets, the secret shared
between clusters and cross-host training without the overlay."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from trustedml.cluster._process import _proc_stat, process_tree
from trustedml.cluster._state import ClusterDir, ClusterState, DaemonState
from trustedml.errors import ClusterStateError, SparkConfigError
from trustedml.spark import (
    ALLOW_PLAINTEXT_COLLECTIVES,
    IGNORE_SSL,
    Finding,
    is_literal_secret,
    lint_finding,
    lint_properties,
    ordered_findings,
    read_properties,
    shared_secret_findings,
)

PROC = Path("/proc")
REST_PORT = 6066
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
# Findings of the daemons' properties that the live checks answer better here: the
# REST port is probed, the UIs' URLs and the listening sockets are read.
_LIVE_RULES = frozenset({"TML-C005", "TML-C011", "TML-C012"})
_COLLECTIVE_KEYS = (IGNORE_SSL, ALLOW_PLAINTEXT_COLLECTIVES)


@dataclass(frozen=True)
class _Process:
    """A running process of a daemon (the daemon itself or a descendant)."""

    daemon: DaemonState
    pid: int

    @property
    def where(self) -> str:
        return f"{self.daemon.id} (pid {self.pid})"


def _processes(state: ClusterState) -> list[_Process]:
    """Each recorded daemon still running (same pid and process group) and its descendants."""
    out: dict[int, _Process] = {}
    for daemon in state.daemons:
        info = _proc_stat(daemon.pid)
        if info is None or info[1] != daemon.pgid:
            continue  # stopped, or the pid now belongs to another process
        for pid in sorted(process_tree([daemon.pid])):
            # A process in two daemons' trees (a shared group) counts once.
            out.setdefault(pid, _Process(daemon, pid))
    return list(out.values())


def _argv_secrets(argv: Sequence[str]) -> Iterator[str]:
    """The keys of ``--conf KEY=VALUE`` and ``-DKEY=VALUE`` arguments holding a secret."""
    for i, arg in enumerate(argv):
        if arg == "--conf" and i + 1 < len(argv):
            setting = argv[i + 1]
        elif arg.startswith("--conf="):
            setting = arg.removeprefix("--conf=")
        elif arg.startswith("-D"):
            setting = arg[2:]
        else:
            continue
        key, sep, value = setting.partition("=")
        if sep and key.startswith("spark.") and is_literal_secret(key, value):
            yield key


def _secrets_in_argv(processes: Sequence[_Process]) -> list[Finding]:
    out = []
    for proc in processes:
        with contextlib.suppress(OSError):
            argv = (PROC / str(proc.pid) / "cmdline").read_bytes().decode(errors="replace")
            for key in _argv_secrets(argv.split("\0")):
                out.append(lint_finding("TML-C009", f"a value of {key}", proc.where))
    return out


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _listening(pid: int) -> list[tuple[int, str | None]]:
    """(port, ``0.0.0.0``/``[::]`` or None) of each TCP socket ``pid`` listens on, read
    from the table of its own network namespace (a worker may run in its own)."""
    inodes = _socket_inodes(pid)
    out = []
    for table, wildcard in (("tcp", "0.0.0.0"), ("tcp6", "[::]")):  # noqa: S104
        with contextlib.suppress(OSError):
            lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                address, _, port = fields[1].partition(":")
                if fields[3] == _LISTEN and fields[9] in inodes:
                    out.append((int(port, 16), wildcard if set(address) == {"0"} else None))
    return out


def _listeners(processes: Sequence[_Process]) -> list[Finding]:
    return [
        lint_finding("TML-C012", f"listening on {wildcard}:{port}", proc.where)
        for proc in processes
        for port, wildcard in _listening(proc.pid)
        if wildcard is not None
    ]


def _master_hosts(state: ClusterState) -> list[str]:
    """The hosts of ``spark://HOST:PORT[,HOST:PORT...]``."""
    hosts = []
    for part in state.master_url.removeprefix("spark://").split(","):
        host = part.rpartition(":")[0].strip("[]")
        if host:
            hosts.append(host)
    return hosts


def _rest_open(
    state: ClusterState, processes: Sequence[_Process], rest_port: int, timeout: float
) -> list[Finding]:
    """The REST port open: when this directory's master runs, whether one of its
    processes listens on it; else whether a TCP connection to the master hosts succeeds
    (the port on this host may belong to another program)."""
    masters = [p for p in processes if p.daemon.role == "master"]
    if masters:
        ports = {port for p in masters for port, _ in _listening(p.pid)}
        hosts = [masters[0].daemon.host] if rest_port in ports else []
        title = "the master listens on it"
    else:
        hosts = [host for host in _master_hosts(state) if _connects(host, rest_port, timeout)]
        title = "a TCP connection to it succeeded"
    return [lint_finding("TML-C005", title, f"master {h}:{rest_port}") for h in hosts]


def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_uis(state: ClusterState) -> list[Finding]:
    return [
        lint_finding("TML-C011", f"UI at {d.ui_url}", d.id)
        for d in state.daemons
        if d.ui_url.startswith("http://")
    ]


def _collectives(state: ClusterState, where: str) -> list[Finding]:
    hosts = {d.host for d in state.daemons} | set(_master_hosts(state))
    if len(hosts) < 2 or state.overlay is not None:
        return []
    return [
        lint_finding(
            "TML-C015",
            f"daemons on {len(hosts)} hosts ({', '.join(sorted(hosts))}) and no overlay",
            where,
        )
    ]


def _conf_findings(directory: ClusterDir, state: ClusterState) -> tuple[list[Finding], int]:
    """The findings of the daemons' properties, and the REST port they set."""
    try:
        props = read_properties(directory.conf_file)
    except SparkConfigError as exc:
        raise ClusterStateError(f"{directory.path}: {exc}") from exc
    findings = [
        f for f in lint_properties(props, str(directory.conf_file)) if f.id not in _LIVE_RULES
    ]
    if state.overlay is not None:
        # Through the overlay the collectives cross hosts inside TLS anyway.
        findings = [f for f in findings if f.id != "TML-C013"]
    port = {p.key: p.value for p in props}.get("spark.master.rest.port", str(REST_PORT))
    return findings, int(port) if port.isdigit() and 0 < int(port) < 65536 else REST_PORT


def lint_cluster(directories: Sequence[Path], *, timeout: float = 1.0) -> list[Finding]:
    """Lint the clusters whose directories are ``directories`` (one per host and
    cluster), as they run now: their properties; the REST port (the master's own
    sockets, or for a master elsewhere a TCP connection with ``timeout``); the
    arguments and listening sockets of the daemons and their descendants; the UIs; one
    secret shared by clusters of different masters; hosts joined without an overlay.
    Raises :class:`ClusterStateError` for a directory that is not a cluster's."""
    findings: list[Finding] = []
    by_secret: dict[str, dict[str, str]] = {}
    for path in directories:
        directory = ClusterDir(path)
        state = directory.load()
        conf, rest_port = _conf_findings(directory, state)
        processes = _processes(state)
        findings += conf
        findings += _rest_open(state, processes, rest_port, timeout)
        findings += _secrets_in_argv(processes)
        findings += _listeners(processes)
        findings += _http_uis(state)
        findings += _collectives(state, str(directory.state_file))
        if state.secret_fingerprint is not None:
            masters = by_secret.setdefault(state.secret_fingerprint, {})
            masters.setdefault(state.master_url, str(directory.state_file))
    places = {fp: list(masters.values()) for fp, masters in by_secret.items()}
    findings += shared_secret_findings(places, "cluster secret (secret_fingerprint)")
    return ordered_findings(findings)
