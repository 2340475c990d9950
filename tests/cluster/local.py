"""One secure cluster on 127.0.0.1 (a master and two workers, --tee sim) shared by the
files that need such a cluster, started once per test process instead of once per file.

Its users (tests/conftest.py's LOCAL_CLUSTER) run in one pytest-xdist worker, in the
order LONGEST_FIRST gives: test_lifecycle.py looks at the cluster as started;
test_attested_keys.py submits jobs with keys from a broker (and joins a worker of its
own, in a directory of its own, which it stops again); test_doctor.py lints it;
test_preflight.py runs jobs' preflights against its master; last, test_lifecycle.py's
stop test stops it with `trustedml cluster stop`. A user that finds it stopped starts it
again, so every file also passes alone or in another order.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster.conftest import RunningCluster
from tests.conftest import run_cli
from trustedml import KeyDirectory
from trustedml.cluster import ClusterDir, stop_cluster
from trustedml.cluster._process import process_tree


@dataclass
class LocalCluster:
    """The shared cluster's material: its own key directory (a broker may add its
    secrets to the vault), the passphrase file, the sim key its daemons sign with
    (private) and the public half a broker trusts; `started`, the output of the latest
    `trustedml cluster start`."""

    root: Path
    keys: KeyDirectory
    passphrase_file: Path
    sim_key: Path
    sim_public: Path
    directory: ClusterDir
    started: subprocess.CompletedProcess[str] | None = None
    pids: set[int] = field(default_factory=set)

    def running(self) -> RunningCluster:
        """The cluster, started with `trustedml cluster start` when it is not running
        (first use, or after the lifecycle file's stop test)."""
        if self.started is None or not self.directory.exists():
            self.started = run_cli(
                [
                    "cluster", "start", "--dir", str(self.directory.path), "--keys",
                    str(self.keys.path), "--passphrase-file", str(self.passphrase_file),
                    "--tee", "sim", "--sim-key", str(self.sim_key), "--workers", "2",
                    "--memory", "512m", "--port", "0", "--webui-port", "0",
                ],
                timeout=300,
            )  # fmt: skip
            assert self.started.returncode == 0, self.started.stderr[-3000:]
            self.pids |= {d.pid for d in self.directory.load().daemons}
        state = self.directory.load()
        pids = {d.pid for d in state.daemons}
        return RunningCluster(self.directory, [self.directory], state, self.keys, pids)

    def stop(self) -> None:
        """Stop it if it runs; fail when any process of any of its starts is left."""
        if self.directory.exists():
            stop_cluster(self.directory)
        left = process_tree(self.pids)
        assert not left, f"processes left after stop: {sorted(left)}"


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The shared secure cluster on 127.0.0.1 (started on first use of `running()`)."""
    from tests.broker.conftest import sim_parties  # the broker's modules only when used

    root = tmp_path_factory.mktemp("local-cluster")
    keys, passphrase_file, sim_key, sim_public = sim_parties(root)
    cluster = LocalCluster(
        root, keys, passphrase_file, sim_key, sim_public, ClusterDir(root / "cluster")
    )
    try:
        yield cluster
    finally:
        cluster.stop()
