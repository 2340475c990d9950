"""Keys on every host through attestation (issue 14, point 3), on a real secure
standalone cluster with --tee sim daemons and a real HTTPS key broker: each executor
attests with its worker's evidence (audited per worker), and a worker whose measurement
the key's policy does not allow gets nothing while the job fails naming it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.broker.conftest import BrokerProcess, spawn_broker
from tests.cluster.conftest import RunningCluster, cluster_options
from tests.cluster.local import LocalCluster
from tests.conftest import APPS, DATASETS, PASSPHRASE, run_cli
from trustedml import KeyDirectory, Secret
from trustedml.cluster import ClusterDir, start_worker, stop_cluster
from trustedml.cluster._process import process_tree
from trustedml.hazmat.framing import MAGIC

pytestmark = [pytest.mark.spark, pytest.mark.slow]

OWNER = hashlib.sha384(b"cluster data owner").hexdigest()
ROWS = 10320  # datasets/nyc_taxi.csv


@dataclass
class Setup:
    tmp: Path
    keys: KeyDirectory
    common: list[str]  # --keys and the passphrase
    admin: list[str]  # the broker's admin options
    owner: list[str]  # the data owner's attestation options
    submit: list[str]  # `trustedml submit` up to the app
    broker: BrokerProcess
    cluster: RunningCluster
    sim_key: Path
    app: Path
    encrypted: Path

    def measure(self, *args: str) -> str:
        """The measurement of ``submit ... args`` (measure takes submit's options)."""
        measured = run_cli(["measure", *self.submit[1:], *args])
        assert measured.returncode == 0, measured.stderr
        return measured.stdout.strip()

    def audit(self) -> list[dict[str, object]]:
        shown = run_cli(["broker", "audit", "show", "--json", "--limit", "1000", *self.admin])
        assert shown.returncode == 0, shown.stderr
        return [json.loads(line) for line in shown.stdout.splitlines()]


@pytest.fixture(scope="module")
def setup(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One broker for the file, and the cluster tests/cluster/local.py shares (a master
    and two workers on 127.0.0.1, its daemons under --tee sim with the sim key the
    broker trusts; the broker adds its secrets to that cluster's key directory)."""
    tmp = tmp_path_factory.mktemp("attested-keys")
    keys, passphrase = local_cluster.keys, local_cluster.passphrase_file
    sim_private = local_cluster.sim_key
    broker = spawn_broker(
        keys, tmp / "broker.db", tmp / "broker", sim_key_pem=local_cluster.sim_public
    )
    try:
        common = ["--keys", str(keys.path), "--passphrase-file", str(passphrase)]
        token = tmp / "admin-token"
        assert run_cli(["broker", "admin-token", *common, "--out", str(token)]).returncode == 0
        admin = ["--url", broker.url, "--ca", str(keys.ca_cert), "--admin-token-file", str(token)]
        owner = [
            "--broker", broker.url, "--ca", str(keys.ca_cert), "--evidence-provider", "sim",
            "--sim-key", str(sim_private), "--sim-measurement", OWNER,
        ]  # fmt: skip
        cluster = local_cluster.running()
        # The workers have 512m: so do the executors.
        submit = [
            "submit", "--tee", "sim", "--broker", broker.url, "--sim-key", str(sim_private),
            "--master", cluster.master_url, "--no-ui", *common,
            "--conf", "spark.executor.memory=512m",
        ]  # fmt: skip
        app = Path(shutil.copy(APPS / "cluster_keys.py", tmp / "cluster_keys.py"))
        yield Setup(
            tmp, keys, common, admin, owner, submit, broker, cluster, sim_private, app,
            tmp / "nyc.csv.tml",
        )  # fmt: skip
    finally:
        broker.terminate()


def _policy(setup: Setup, path: Path, jobs: list[str], workers: list[str]) -> Path:
    """The policy an operator writes for cluster jobs: the data owner; each job's
    driver (measured as the job); each allowed worker, for each job only."""
    entries = [f'[[allow]]\ntype = "sim"\nmeasurement = "{OWNER}"\n']
    for job in jobs:
        for measurement in (job, *workers):
            entries.append(
                f'[[allow]]\ntype = "sim"\nmeasurement = "{measurement}"\n'
                f'job_measurement = "{job}"\n'
            )
    path.write_text("allow_simulated = true\n" + "".join(entries))
    return path


def test_executors_attest_per_worker_and_a_worker_not_allowed_fails_the_job(
    setup: Setup,
) -> None:
    workers = [d for d in setup.cluster.state.daemons if d.role == "worker"]
    assert [w.id for w in workers] == ["worker-1", "worker-2"]
    good = {w.measurement for w in workers}
    (worker_measurement,) = good  # same options: one measurement on every host
    assert worker_measurement is not None

    out = setup.tmp / "out"
    args = [str(setup.app), str(setup.encrypted), str(out), "nyc", "2"]
    # The refused job runs where only a worker started with other measured options
    # (2 cores) can host its 2-core executor, and gives up at the first failure.
    bad_conf = ["--conf", "spark.executor.cores=2", "--conf", "spark.task.maxFailures=1"]
    bad_args = [str(setup.app), str(setup.encrypted), str(setup.tmp / "out-bad"), "nyc", "1"]
    job, bad_job = setup.measure(*args), setup.measure(*bad_conf, *bad_args)
    policy = _policy(setup, setup.tmp / "policy.toml", [job, bad_job], [worker_measurement])
    created = run_cli(["broker", "key", "create", "nyc", "--policy", str(policy), *setup.admin])
    assert created.returncode == 0, created.stderr
    # 16 KiB chunks: several 64 KiB splits, so tasks run on both workers.
    source, target = str(DATASETS / "nyc_taxi.csv"), str(setup.encrypted)
    enc = run_cli(
        ["encrypt", source, target, "--key-id", "nyc", "--chunk-size", "14", *setup.owner]
    )
    assert enc.returncode == 0, enc.stderr
    before = len(setup.audit())

    ran = run_cli([*setup.submit, *args], timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr[-5000:]
    assert f"launcher master: {setup.cluster.master_url}" in ran.stdout
    assert f"rows: {ROWS} partitions: 5" in ran.stdout
    assert "workers: worker-1@127.0.0.1,worker-2@127.0.0.1" in ran.stdout
    # Through the tml file system: every row, read by both workers' executor JVMs, whose
    # key agents attested (their attestations are among those counted per worker below).
    jvm_rows = re.search(r"^jvm rows: (\d+) partitions: (\d+)$", ran.stdout, re.M)
    assert jvm_rows is not None, ran.stdout
    assert int(jvm_rows[1]) == ROWS
    assert int(jvm_rows[2]) >= 2
    assert "jvm workers: worker-1@127.0.0.1,worker-2@127.0.0.1" in ran.stdout
    outputs = [p for p in out.rglob("*") if p.is_file() and p.name[0] not in "._"]
    assert outputs
    assert all(p.read_bytes().startswith(MAGIC) for p in outputs)

    attests = [e for e in setup.audit()[before:] if e["event"] == "attest"]
    by_worker: dict[str, set[str]] = {}
    for entry in attests:
        details = entry["details"]
        assert isinstance(details, dict)
        assert entry["outcome"] == "ok", entry
        assert details.get("job_measurement") == job  # every one bound this job
        label = details.get("worker")
        # The executors' evidence is their worker's; the driver's (no label) the job's.
        by_worker.setdefault(str(label), set()).add(str(entry["measurement"]))
    assert by_worker.pop("worker-1@127.0.0.1") == {worker_measurement}
    assert by_worker.pop("worker-2@127.0.0.1") == {worker_measurement}
    assert set(by_worker) <= {"None"}
    assert by_worker.get("None", {job}) == {job}

    # A worker started with other measured options: not in the policy. It runs from a
    # directory of its own, as on another host, and is stopped again at the end (the
    # cluster is shared: tests/cluster/local.py).
    third = ClusterDir(setup.tmp / "third-worker")
    try:
        state = start_worker(
            third,
            cluster_options(sim_key=setup.sim_key),
            setup.cluster.master_url,
            keys=setup.keys,
            passphrase=Secret(PASSPHRASE),
            cores=2,
            memory="512m",
            worker_id="worker-3",
        )
        bad = state.daemons[-1]
        mark = len(setup.audit())
        refused = run_cli([*setup.submit, *bad_conf, *bad_args], timeout=300)
    finally:
        if third.exists():
            pids = {d.pid for d in third.load().daemons}
            stop_cluster(third)
            assert not process_tree(pids), "the third worker left processes"
    assert bad.id == "worker-3"
    assert bad.measurement not in (None, worker_measurement)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    # The task's error, as Spark carries it to the driver: the file, the worker, the
    # broker's answer.
    named = f"BrokerRefusedError: {setup.encrypted}: worker worker-3@127.0.0.1: key broker refused"
    assert named in said, said[-8000:]
    assert "policy_refused" in said
    assert f"got {bad.measurement[:16]}" in said  # the broker's reason names its evidence
    assert not list((setup.tmp / "out-bad").rglob("*.csv*"))
    entries = [e for e in setup.audit()[mark:] if e["event"] == "attest"]
    assert entries
    executor = [e for e in entries if e["details"].get("worker")]  # type: ignore[union-attr]
    assert executor
    for entry in executor:
        assert entry["outcome"] == "refused"
        assert entry["details"]["worker"] == "worker-3@127.0.0.1"  # type: ignore[index]
        assert entry["measurement"] == bad.measurement
