from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from trustedml import KeyDirectory, ScryptParams, Secret, init_key_directory

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
APPS = Path(__file__).resolve().parent / "apps"
# Everything the tests read is in the repository (datasets/README.md, the vectors'
# MANIFEST.md files): a fresh clone runs the whole suite with nothing beside it.
DATASETS = ROOT / "datasets"
ATTESTATION_VECTORS = ROOT / "tests" / "attestation" / "vectors"

PASSPHRASE = "test passphrase, not a real one"
# Tests use a cheap scrypt cost; the format records it, so every path still runs.
FAST_KDF = ScryptParams(log2_n=12)


@pytest.fixture
def passphrase() -> Secret:
    return Secret(PASSPHRASE)


def write_passphrase_file(path: Path, value: str = PASSPHRASE) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    """One key directory shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("session-keys")
    return init_key_directory(root / "keys", Secret(PASSPHRASE), kdf=FAST_KDF)


@pytest.fixture(scope="session")
def session_passphrase_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_passphrase_file(tmp_path_factory.mktemp("pp") / "passphrase")


_WORKDIR: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _cli_workdir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Spark drops spark-warehouse/ and metastore files into its working directory.
    _WORKDIR.append(tmp_path_factory.mktemp("cwd"))


# The JVMs the tests launch live well under a minute: there the optimising compiler and
# the parallel collector cost more CPU than they save (an XGBoost launch: 37 CPU seconds
# with them, 20 without). Only the JVM's speed changes, not what Spark does.
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without trusted-ml's variables, for a child `trustedml`;
    its JVMs tuned for a short life (FAST_JVM)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTEDML_")}
    env["JAVA_TOOL_OPTIONS"] = " ".join(filter(None, [env.get("JAVA_TOOL_OPTIONS"), FAST_JVM]))
    env.update(extra)
    return env


# Longest files first. `make test` hands whole files to three workers in this order
# (xdist --dist loadfile --no-loadscope-reorder); a long file handed out last leaves the
# other workers idle at the end. An entry is a file or one test of a file (placed apart
# from its file). xdist hands a worker its next file when two of its tests remain: so a
# test that needs all of its file's long set-ups (clusters, jobs) comes first, and
# test_attested_keys.py's long test before the quick tests of its group, else the next
# file would wait minutes behind them while other workers run out of work. The order
# only schedules; every test still runs.
LONGEST_FIRST = (
    "tests/cluster/test_training.py::test_stop_leaves_no_process",
    "tests/cluster/test_training.py",
    "tests/cluster/test_wire.py::test_stop_leaves_no_process",
    "tests/cluster/test_wire.py",
    # LOCAL_CLUSTER, in the order its users need (tests/cluster/local.py).
    "tests/cluster/test_lifecycle.py",
    "tests/cluster/test_attested_keys.py",
    "tests/cluster/test_doctor.py",
    "tests/spark/test_preflight.py",
    "tests/cluster/test_lifecycle.py::test_stop_leaves_no_process_and_removes_the_state",
    "tests/test_runtime.py",
    "tests/spark/test_submit.py",
    "tests/spark/test_jvm_secrets.py",
    "tests/spark/test_jvm_matrix.py",
    "tests/ml/test_lenet.py",
    "tests/ml/test_text.py",
    "tests/ml/test_xgboost.py",
    "tests/spark/test_datasource.py",
    "tests/spark/test_jvmfs.py",
    "tests/ml/test_launch.py",
    "tests/attestation/test_corruption.py",
    "tests/data/test_pme.py",
    "tests/tee/test_sim.py",
    "tests/examples/test_examples.py",
    "tests/ml/test_nyc_taxi.py",
    "tests/broker/test_cli.py",
)

# The files that share one secure cluster on 127.0.0.1 (tests/cluster/local.py, a
# session fixture: one per worker process). `make test` hands them to one worker as one
# unit (pytest_xdist_make_scheduler below), which runs them in LONGEST_FIRST's order.
LOCAL_CLUSTER = (
    "tests/cluster/test_lifecycle.py",
    "tests/cluster/test_doctor.py",
    "tests/spark/test_preflight.py",
    "tests/cluster/test_attested_keys.py",
)

pytest_plugins = ["tests.cluster.local"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def place(item: pytest.Item) -> int:
        test = item.nodeid.split("[")[0]
        return rank.get(test, rank.get(test.split("::")[0], len(rank)))

    items.sort(key=place)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With --dist loadfile, whole files as units of work, except LOCAL_CLUSTER's files:
    one unit, so that one worker starts their cluster once (else each file's worker
    would start one). Other --dist modes: xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # only under xdist

    class SharedClusterFiles(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return LOCAL_CLUSTER[0] if scope in LOCAL_CLUSTER else scope

    return SharedClusterFiles(config, log)


def run_cli(
    args: Sequence[str],
    *,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `trustedml` command line in a child process (its own process group:
    on a timeout the whole group is killed, the JVMs and training ranks it started too,
    not only the command)."""
    with subprocess.Popen(
        [sys.executable, "-m", "trustedml", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=cwd or (_WORKDIR[0] if _WORKDIR else ROOT),
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
