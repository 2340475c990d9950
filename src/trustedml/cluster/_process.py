"""Daemon processes: free ports, detached start, the process tree, and stopping it all."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from trustedml.errors import ClusterError

__all__ = ["exited", "free_port", "log_tail", "process_tree", "spawn", "terminate"]

# The line spawn() writes to a log before each start: what follows is that run's.
START_MARK = "=== trusted-ml: started "
# Daemons outlive the call that started them: their Popen objects stay here, so that a
# daemon of this process is reaped when it ends (not left a zombie) and its handle is not
# collected (with a warning) while it runs.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (the daemon binds it moments later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 20, *, this_run: bool = False) -> str:
    """The last ``lines`` lines of a log (empty when there is none); with ``this_run``,
    only of the daemon's latest start (a log is appended to when an id is reused)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    if this_run:
        text = text.rpartition(START_MARK)[2].partition("\n")[2]
    return "\n".join(text.splitlines()[-lines:])


def spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached (its own session and process group), its output
    appended to ``log`` (0600)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.write(fd, f"{START_MARK}{stamp} {argv[0]}\n".encode())
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise ClusterError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    _CHILDREN[proc.pid] = proc
    return proc


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of ``pid``, or None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2])


def _all_processes() -> dict[int, tuple[int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _proc_stat(int(entry))
            if info is not None:
                table[int(entry)] = info
    return table


def process_tree(pids: Iterable[int]) -> set[int]:
    """Every live process descending from ``pids`` or in their process groups
    (executors and Python workers are children of a worker; PySpark's Python daemon
    makes a group of its own)."""
    table = _all_processes()
    roots = {pid for pid in pids if pid in table}
    found = set(roots)
    groups = {table[pid][1] for pid in roots}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, pgid) in table.items():
            if pid not in found and (ppid in found or pgid in groups):
                found.add(pid)
                groups.add(pgid)
                changed = True
    return found


def _alive(pids: Iterable[int]) -> set[int]:
    return {pid for pid in pids if _proc_stat(pid) is not None}


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap(pids: Iterable[int]) -> None:
    # Our own children (daemons started by this process) stay zombies until waited for.
    for pid in pids:
        proc = _CHILDREN.get(pid)
        if proc is not None and proc.poll() is not None:
            del _CHILDREN[pid]


def terminate(pids: Iterable[int], timeout: float) -> set[int]:
    """SIGTERM every process of the trees of ``pids``, wait up to ``timeout`` seconds,
    SIGKILL what remains; returns the processes still alive after that (none, unless
    something resists SIGKILL)."""
    tree = process_tree(pids)
    if not tree:
        return set()
    _signal(tree, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(tree)
        # Children forked while stopping join the tree.
        tree |= process_tree(tree)
        if not _alive(tree):
            return set()
        time.sleep(0.1)
    _signal(process_tree(tree) | tree, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        _reap(tree)
        if not _alive(tree):
            return set()
        time.sleep(0.05)
    return _alive(tree)


def exited(pid: int) -> bool:
    """Whether the daemon ``pid`` this process started has ended (reaping it)."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is not None
    return _proc_stat(pid) is None


def is_running(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive and its command line contains ``marker`` (so a pid the
    kernel reused for something else is not taken for the daemon)."""
    if _proc_stat(pid) is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline
