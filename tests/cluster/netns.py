"""Test hosts on one machine: network namespaces joined by a bridge a capture can watch.

TestNet(hosts=2) makes, for a subnet number k unique to this process (198.18.k.0/24,
from the benchmarking range 198.18.0.0/15, never routed anywhere):
  - a bridge `tml<k>-br` in the root namespace holding the gateway 198.18.k.1, where the
    master, the driver and the broker bind;
  - per host i (from 1) a namespace `tml<k>-w<i>` with lo up and `eth0` = 198.18.k.(10+i),
    one end of a veth pair whose other end (`tml<k>-v<i>`) is a port of the bridge.
No namespace has a default route: a host reaches the other hosts and the gateway, nothing
else. IPv6 is off on every one of these links, so every packet between the hosts is IPv4
and the capture's classification sees all of it.

Uniqueness: a subnet number is held by an flock on /run/trustedml-testnet/<k>.lock for
the life of the TestNet, so two test processes (xdist workers, two checkouts) never share
one; names of a number nobody holds are leftovers of a crashed run and are removed first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pytest

LOCK_DIR = Path("/run/trustedml-testnet")
PREFIX = "198.18"
_OURS = re.compile(r"^tml(\d{1,3})-(?:br|w\d+|v\d+|p\d+)$")


class NetSetupError(RuntimeError):
    """A step of building the test network failed for a reason other than privileges."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise NetSetupError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


@dataclass(frozen=True)
class Host:
    """One test host: a network namespace with one address on the bridge."""

    name: str
    address: str
    index: int

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in the namespace and wait; text output captured, never raises on status."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.argv(cmd), text=True, check=False, **kwargs)

    def pids(self) -> list[int]:
        """Every process living in this namespace now."""
        proc = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in proc.stdout.split()]


def _names(k: int, hosts: int) -> tuple[str, list[str], list[str]]:
    return (
        f"tml{k}-br",
        [f"tml{k}-w{i}" for i in range(1, hosts + 1)],
        [f"tml{k}-v{i}" for i in range(1, hosts + 1)],
    )


def _existing() -> tuple[set[str], set[str]]:
    links = _ip("-o", "link", "show", check=False).stdout
    link_names = {m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", links, re.MULTILINE)}
    listing = _ip("netns", "list", check=False).stdout.splitlines()
    return link_names, {line.split()[0] for line in listing if line}


def _of(k: int, names: set[str]) -> list[str]:
    return sorted(n for n in names if (m := _OURS.match(n)) and int(m.group(1)) == k)


def _remove(k: int, link_names: set[str], netns: set[str]) -> list[int]:
    """Remove every link and namespace of subnet k; kill what still runs in its namespaces.
    Returns the PIDs that had to be killed."""
    killed: list[int] = []
    for ns in _of(k, netns):
        for pid in (int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        _ip("netns", "del", ns, check=False)
    for link in _of(k, link_names):
        _ip("link", "del", link, check=False)
    return killed


class Scoped:
    """A context manager over start() and close() (close also after a failure)."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TestNet(Scoped):
    """Bridge + one namespace per host; a context manager that skips when it cannot be made.

    Attributes once entered: `k`, `gateway` ("198.18.k.1"), `bridge` (the interface to
    capture on), `hosts` (list of Host), `killed` (PIDs teardown had to kill: should stay
    empty, tests assert it).
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, hosts: int = 2, *, subnet: int | None = None) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("hosts must be between 1 and 200")
        if subnet is not None and not 1 <= subnet <= 254:
            raise ValueError("subnet must be between 1 and 254")
        self._count = hosts
        self._wanted = subnet
        self._lock: IO[bytes] | None = None
        self.k = -1
        self.gateway = ""
        self.bridge = ""
        self.hosts: list[Host] = []
        self.killed: list[int] = []

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Build the network (skipping the test with a reason when it cannot be built)."""
        _require_privileges()
        LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        _sweep_stale()
        self.k = self._acquire()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove everything this network made, also after a failure half-way; idempotent."""
        if self._lock is None:
            return
        link_names, netns = _existing()
        self.killed += _remove(self.k, link_names, netns)
        left_links, left_ns = _existing()
        self._lock.close()  # releases the flock: the number is free again
        self._lock = None
        left = _of(self.k, left_links | left_ns)
        if left:
            raise NetSetupError(f"teardown left {left}")

    # -- internals ----------------------------------------------------------------------
    def _acquire(self) -> int:
        candidates = [self._wanted] if self._wanted is not None else _candidates()
        for k in candidates:
            lock = open(LOCK_DIR / f"{k}.lock", "wb")  # noqa: SIM115 - held for the TestNet's life
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._lock = lock
            # Held by nobody until now: whatever carries its names is a crashed run's.
            _remove(k, *_existing())
            return k
        raise NetSetupError(f"no free test subnet among {candidates[:5]}...")

    def _build(self) -> None:
        k = self.k
        bridge, namespaces, veths = _names(k, self._count)
        self.bridge, self.gateway = bridge, f"{PREFIX}.{k}.1"
        _ip("link", "add", bridge, "type", "bridge")
        _disable_ipv6(bridge)
        _ip("addr", "add", f"{self.gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, (ns, veth) in enumerate(zip(namespaces, veths, strict=True), start=1):
            proc = _ip("netns", "add", ns, check=False)
            if proc.returncode != 0:
                pytest.skip(f"test hosts need `ip netns add` (it failed: {proc.stderr.strip()})")
            peer = f"tml{k}-p{i}"
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            _disable_ipv6(veth)
            _ip("link", "set", peer, "netns", ns)
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"],
                capture_output=True,
                check=True,
                timeout=30,
            )
            address = f"{PREFIX}.{k}.{10 + i}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("link", "set", veth, "master", bridge)
            _ip("link", "set", veth, "up")
            self.hosts.append(Host(name=ns, address=address, index=i))


def _disable_ipv6(iface: str) -> None:
    Path(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6").write_text("1\n")


def _require_privileges() -> None:
    if shutil.which("ip") is None:
        pytest.skip("test hosts need the `ip` command (iproute2)")
    if os.geteuid() != 0:
        pytest.skip("test hosts need root: `ip netns add` and veth pairs are privileged")


def _candidates() -> list[int]:
    # Start where this xdist worker / process is unlikely to meet another, then walk on.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    start = (index * 97 + os.getpid()) % 240 + 10
    return [(start - 10 + step) % 240 + 10 for step in range(240)]


def _sweep_stale() -> None:
    """Remove the leftovers of any subnet number that no live process holds."""
    link_names, netns = _existing()
    numbers = {int(m.group(1)) for n in link_names | netns if (m := _OURS.match(n))}
    for k in sorted(numbers):
        with open(LOCK_DIR / f"{k}.lock", "wb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live TestNet owns it
            _remove(k, link_names, netns)
