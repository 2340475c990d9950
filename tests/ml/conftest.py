"""What the ML workload tests share: key directories, a broker with its parties, and
ways to run a workload (through `trustedml example`, or as the job's driver would)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import pytest

from tests.broker.conftest import BrokerProcess, sim_parties, spawn_broker
from tests.conftest import PASSPHRASE, cli_env, run_cli
from trustedml import KeyDirectory, LocalKeyStore, Secret
from trustedml.runtime import ENV_BROKER_CA, ENV_BROKER_URL, ENV_KEYRING
from trustedml.tee import ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TEE

# The data owner's (simulated) TEE: it encrypts the inputs and reads the model.
OWNER = hashlib.sha384(b"test data owner").hexdigest()


R = TypeVar("R")
S = TypeVar("S")


@dataclass(frozen=True)
class MLKeys:
    """A key directory with the KEK ``models`` (and ``data``) for workload tests."""

    path: Path
    passphrase_file: Path
    store: LocalKeyStore

    def submit_args(self) -> list[str]:
        """Options for `trustedml submit/example` giving the job both KEKs."""
        return [
            "--keys", str(self.path), "--passphrase-file", str(self.passphrase_file),
            "--kek", "models", "--kek", "data", "--no-ui",
        ]  # fmt: skip

    def job_env(self) -> dict[str, str]:
        """The environment `--kek models --kek data` gives the job's processes."""
        return {ENV_KEYRING: self.store.keyring(["data", "models"]).export().reveal_text()}


@pytest.fixture(scope="session")
def ml_keys(
    session_keys: KeyDirectory,
    session_passphrase_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> MLKeys:
    path = tmp_path_factory.mktemp("ml-keys") / "keys"
    shutil.copytree(session_keys.path, path)
    store = LocalKeyStore(KeyDirectory(path), Secret(PASSPHRASE))
    store.create_kek("models")
    store.create_kek("data")
    return MLKeys(path, session_passphrase_file, store)


@dataclass
class Broker:
    """A running broker with a sim key it trusts, and the CLI options of each party."""

    process: BrokerProcess
    keys: KeyDirectory
    admin: list[str]
    common: list[str]
    sim_private: Path

    def owner(self) -> list[str]:
        """Options of `encrypt`/`decrypt` for the data owner."""
        return [
            "--broker", self.process.url, "--ca", str(self.keys.ca_cert),
            "--evidence-provider", "sim", "--sim-key", str(self.sim_private),
            "--sim-measurement", OWNER,
        ]  # fmt: skip

    def job(self) -> list[str]:
        """Options of `example`/`measure` for an attested job."""
        return [
            "--tee", "sim", "--broker", self.process.url,
            "--sim-key", str(self.sim_private), *self.common, "--no-ui",
        ]  # fmt: skip

    def job_env(self, measurement: str) -> dict[str, str]:
        """The environment `example --tee sim --broker` gives a job measured ``measurement``."""
        return {
            ENV_BROKER_URL: self.process.url,
            ENV_BROKER_CA: str(self.keys.ca_cert),
            ENV_TEE: "sim",
            ENV_SIM_KEY: str(self.sim_private),
            ENV_JOB_MEASUREMENT: measurement,
        }

    def measure(self, workload: ModuleType, args: list[str]) -> str:
        """The measurement `example` gives ``workload`` run with ``args``."""
        measured = run_cli(["measure", *self.job(), str(workload.__file__), *args])
        assert measured.returncode == 0, measured.stderr
        return measured.stdout.strip()

    def create_key(self, key_id: str, allowed: list[str], tmp_path: Path) -> None:
        """The broker key ``key_id``, released to sim evidence of ``allowed`` measurements."""
        policy = tmp_path / f"{key_id}-policy.toml"
        policy.write_text(
            "allow_simulated = true\n"
            + "".join(f'[[allow]]\ntype = "sim"\nmeasurement = "{m}"\n' for m in allowed)
        )
        created = run_cli(["broker", "key", "create", key_id, "--policy", str(policy),
                           *self.admin])  # fmt: skip
        assert created.returncode == 0, created.stderr

    def audit(self) -> list[dict[str, object]]:
        shown = run_cli(["broker", "audit", "show", "--json", "--limit", "1000", *self.admin])
        assert shown.returncode == 0, shown.stderr
        return [json.loads(line) for line in shown.stdout.splitlines()]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    keys, passphrase, sim_private, sim_public = sim_parties(tmp_path)
    process = spawn_broker(keys, tmp_path / "broker.db", tmp_path / "broker",
                           sim_key_pem=sim_public)  # fmt: skip
    try:
        common = ["--keys", str(keys.path), "--passphrase-file", str(passphrase)]
        token = tmp_path / "admin-token"
        made = run_cli(["broker", "admin-token", *common, "--out", str(token)])
        assert made.returncode == 0, made.stderr
        admin = ["--url", process.url, "--ca", str(keys.ca_cert), "--admin-token-file", str(token)]
        yield Broker(process, keys, admin, common, sim_private)
    finally:
        process.terminate()
    verified = run_cli(["broker", "audit", "verify", "--db", str(process.db), *common])
    assert verified.returncode == 0, verified.stdout + verified.stderr


def launch(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`trustedml ARGS` (a workload launch: `example ...`), its JVM tuned for a short life."""
    return run_cli(args, env=cli_env())


def run_driver(
    workload: ModuleType, args: Sequence[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``workload`` as `trustedml example` runs it in the job's driver, with the
    job's key environment ``env``, but with no spark-submit around it: for
    ``--evaluate-only``, which starts no Spark (the launch itself is what the training
    runs test)."""
    return subprocess.run(
        [sys.executable, str(workload.__file__), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(**env),
        cwd=cwd,
        check=False,
    )


def side_by_side(first: Callable[[], R], second: Callable[[], S]) -> tuple[R, S]:
    """Two runs at once: most of each is a JVM or a Python process starting up, or
    waiting on one."""
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        return a.result(), b.result()


def output(result: subprocess.CompletedProcess[str]) -> str:
    # spark-submit merges the Python driver's stderr into its stdout.
    return result.stdout + result.stderr


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in output(result).splitlines() if line.startswith("error")]


def releases(entries: list[dict[str, object]], event: str, key_id: str) -> int:
    """How many audit ``entries`` released key ``key_id`` by ``event``."""
    return sum(
        1 for e in entries if e["event"] == event and e["outcome"] == "ok" and e["key_id"] == key_id
    )
