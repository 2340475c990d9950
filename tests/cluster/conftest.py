"""Helpers for tests that run a real Spark standalone cluster (one per test file)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.netns import TestNet
from tests.conftest import FAST_JVM, PASSPHRASE, cli_env
from trustedml import KeyDirectory, Secret
from trustedml.cluster import (
    ClusterDir,
    ClusterOptions,
    ClusterState,
    start_cluster,
    start_master,
    stop_cluster,
)
from trustedml.cluster._process import process_tree
from trustedml.tee import SimBackend

# What `trustedml cluster start-worker` does on a host, run inside a test host's
# namespace (the library, so no passphrase file is needed there).
_START_WORKER = """
import sys
from trustedml import KeyDirectory, Secret
from trustedml.cluster import ClusterOptions, start_worker
from trustedml.tee import SimBackend
where, host, master, keys, sim_key, secure, java, cores, memory = sys.argv[1:]
secure = secure == "secure"
options = ClusterOptions(
    host=host, tee=SimBackend(sim_key) if sim_key else None, secure=secure,
    extra_env={"JAVA_TOOL_OPTIONS": java},
)
start_worker(
    where, options, master, keys=KeyDirectory(keys) if secure else None,
    passphrase=Secret(sys.stdin.read()) if secure else None,
    cores=int(cores), memory=memory,
)
"""


@dataclass
class RunningCluster:
    """A cluster a test started: the master's directory, each worker host's directory
    (the master's own when the workers run on this host), and the state."""

    master_dir: ClusterDir
    worker_dirs: list[ClusterDir]
    state: ClusterState
    keys: KeyDirectory | None
    pids: set[int] = field(default_factory=set)

    @property
    def master_url(self) -> str:
        return self.state.master_url

    @property
    def ca(self) -> Path | None:
        return self.keys.ca_cert if self.keys is not None and self.state.secure else None


def cluster_options(
    host: str = "127.0.0.1", *, secure: bool = True, sim_key: Path | None = None
) -> ClusterOptions:
    """Options for a test cluster: JVMs tuned for a short life (FAST_JVM)."""
    return ClusterOptions(
        host=host,
        tee=SimBackend(sim_key) if sim_key is not None else None,
        secure=secure,
        extra_env={"JAVA_TOOL_OPTIONS": FAST_JVM},
    )


def _start_in_namespaces(
    net: TestNet,
    root: Path,
    master_url: str,
    keys: KeyDirectory | None,
    sim_key: Path | None,
    secure: bool,
    dirs: list[ClusterDir],
) -> None:
    """Start one worker in each test host, into ``dirs`` (given by the caller, so that
    a worker that started is stopped even when another one fails)."""
    dirs.extend(ClusterDir(root / host.name) for host in net.hosts)
    procs = [
        subprocess.Popen(
            host.argv([
                sys.executable, "-c", _START_WORKER, str(where.path), host.address, master_url,
                str(keys.path) if keys else "-", str(sim_key or ""),
                "secure" if secure else "plain", FAST_JVM, "1", "512m",
            ]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=cli_env(),
        )
        for host, where in zip(net.hosts, dirs, strict=True)
    ]  # fmt: skip
    failures = []
    for proc in procs:
        out, err = proc.communicate(PASSPHRASE if secure else "", timeout=240)
        if proc.returncode != 0:
            failures.append(f"{out}\n{err[-3000:]}")
    if failures:
        raise AssertionError("start-worker failed:\n" + "\n".join(failures))


@contextlib.contextmanager
def running_cluster(
    root: Path,
    keys: KeyDirectory | None,
    *,
    workers: int = 2,
    secure: bool = True,
    sim: bool = True,
    net: TestNet | None = None,
) -> Iterator[RunningCluster]:
    """Start a master and ``workers`` workers (1 core, 512m each) under ``root``, and
    stop them all afterwards, failing when any process of theirs is left.

    Without ``net``, everything runs on 127.0.0.1 from one directory. With a
    :class:`TestNet`, the master binds its gateway (root namespace) and one worker
    runs in each test host (``workers`` is then the number of hosts). ``sim``: the
    daemons run under ``--tee sim`` (a sim key under ``root``)."""
    sim_key = root / "sim-key.pem" if sim else None
    passphrase = Secret(PASSPHRASE) if secure else None
    keys = keys if secure else None
    master_dir = ClusterDir(root / "master")
    worker_dirs: list[ClusterDir] = []
    pids: set[int] = set()
    try:
        if net is None:
            state = start_cluster(
                master_dir, cluster_options(secure=secure, sim_key=sim_key), workers,
                keys=keys, passphrase=passphrase, port=0, webui_port=0, memory="512m",
            )  # fmt: skip
            worker_dirs = [master_dir]
        else:
            options = cluster_options(net.gateway, secure=secure, sim_key=sim_key)
            state = start_master(
                master_dir, options, keys=keys, passphrase=passphrase, port=0, webui_port=0
            )
            _start_in_namespaces(net, root, state.master_url, keys, sim_key, secure, worker_dirs)
        for directory in {d.path: d for d in [master_dir, *worker_dirs]}.values():
            pids |= {d.pid for d in directory.load().daemons}
        yield RunningCluster(master_dir, worker_dirs, state, keys, pids)
    finally:
        for directory in [*worker_dirs, master_dir]:
            if directory.exists():
                stop_cluster(directory)
        left = process_tree(pids)
        assert not left, f"processes left after stop: {sorted(left)}"
