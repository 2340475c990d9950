"""Starting and stopping the overlay tunnel process of a cluster directory, and the
``overlay`` object cluster.json records for it."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trustedml._fs import write_private
from trustedml._secret import Secret
from trustedml.cluster._overlay_wire import TunnelMaterial
from trustedml.cluster._tun import DEFAULT_IFACE, check_iface
from trustedml.errors import ClusterError
from trustedml.keys import KeyDirectory, SecretName

__all__ = [
    "OVERLAY_LOG",
    "OVERLAY_PORT",
    "check_cidr",
    "overlay_hub",
    "start_overlay",
    "stop_overlay",
    "tunnel_material",
]

# The hub listens here on the master host's address (Spark's master is on 7077).
OVERLAY_PORT = 7079
OVERLAY_LOG = "logs/overlay.log"
START_TIMEOUT = 20.0
# The tunnels this process started, kept so that their Popen objects are reaped by
# stop_overlay rather than collected while the tunnel runs.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def check_cidr(cidr: str) -> ipaddress.IPv4Network:
    """``cidr`` as an IPv4 network with room for a hub and spokes, else a ClusterError."""
    try:
        network = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as exc:
        raise ClusterError(
            f"--overlay {cidr}: expected an IPv4 network like 198.19.0.0/24 ({exc})"
        ) from None
    if not 8 <= network.prefixlen <= 29:
        raise ClusterError(f"--overlay {cidr}: expected a prefix length from /8 to /29")
    return network


def overlay_hub(master_host: str, port: int = OVERLAY_PORT) -> str:
    """The hub endpoint of a master host: ``HOST:PORT``."""
    return f"{master_host}:{port}"


def tunnel_material(keys: KeyDirectory, passphrase: Secret) -> TunnelMaterial:
    """The key directory's server certificate, its key (unsealed) and its CA."""
    opened = keys.unseal(passphrase)
    return TunnelMaterial(
        keys.server_cert.read_bytes(),
        opened[SecretName.TLS_SERVER_KEY],
        keys.ca_cert.read_bytes(),
    )


def start_overlay(
    directory: Path,
    material: TunnelMaterial,
    *,
    hub: str,
    cidr: str | None = None,
    iface: str = DEFAULT_IFACE,
    python: str = sys.executable,
    want: str | None = None,
    netns: str | None = None,
    timeout: float = START_TIMEOUT,
) -> dict[str, Any]:
    """Start the tunnel process of ``directory``: the hub listening on ``hub`` with the
    network ``cidr`` when it is given, else a spoke joining ``hub``. Returns the
    cluster.json ``overlay`` object once the device is up (a ClusterError with the
    process's last line when it does not come up). ``netns`` runs it in a network
    namespace (tests)."""
    check_iface(iface)
    module = [python, "-m", "trustedml.cluster._overlay"]
    if cidr is not None:
        argv = [*module, "hub", "--listen", hub, "--cidr", str(check_cidr(cidr))]
    else:
        argv = [*module, "spoke", "--hub", hub, *(["--want", want] if want else [])]
    argv += ["--iface", iface]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = directory / OVERLAY_LOG
    log.parent.mkdir(mode=0o700, exist_ok=True)
    write_private(log, b"")
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("TRUSTEDML_")},
        )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        proc.stdin.write(material.encode() + b"\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    ready = _read_ready(proc, timeout)
    proc.stdout.close()
    if ready is None:
        _kill(proc.pid)
        proc.wait()
        last = _last_line(log)
        raise ClusterError(f"the overlay {'hub' if cidr else 'spoke'} did not come up: {last}")
    _STARTED[proc.pid] = proc
    return {
        "cidr": ready["cidr"],
        "address": ready["address"],
        "iface": iface,
        "hub": hub,
        "role": "hub" if cidr is not None else "spoke",
        "pid": proc.pid,
        "pgid": proc.pid,
        "log": OVERLAY_LOG,
    }


def _read_ready(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, str] | None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                line = proc.stdout.readline()
                if not line:
                    return None
                with contextlib.suppress(ValueError):
                    ready = json.loads(line)
                    if isinstance(ready, dict) and {"address", "cidr"} <= ready.keys():
                        return ready
                return None
    return None


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _kill(pgid: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process is gone for our purpose.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_overlay(overlay: dict[str, Any] | None, timeout: float = 10.0) -> bool:
    """SIGTERM the tunnel's process group, SIGKILL it after ``timeout``; True when a
    process was running. Its device, addresses and routes go with it."""
    if not overlay:
        return False
    pid = int(overlay["pid"])
    pgid = int(overlay.get("pgid", pid))
    started = _STARTED.pop(pid, None)
    if not _alive(pid):
        return False
    _kill(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill(pgid)
    if started is not None:
        started.wait()
    return True
