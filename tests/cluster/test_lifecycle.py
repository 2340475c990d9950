"""One secure cluster (master + 2 workers, --tee sim) on 127.0.0.1, its whole life: the
state it writes, what its processes bind and carry, status over TLS, and a stop that
leaves nothing. It is the cluster tests/cluster/local.py shares with other files (the
doctor, the preflight, keys through the broker): its start is looked at here first, its
stop last. Jobs submitted to a cluster are tested where they cross hosts (test_wire.py:
the examples; test_attested_keys.py: keys through the broker)."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.cluster.conftest import RunningCluster
from tests.cluster.local import LocalCluster
from tests.conftest import FAST_JVM, PASSPHRASE, run_cli
from trustedml import KeyDirectory, Secret
from trustedml.cluster import (
    ClusterDir,
    ClusterOptions,
    cluster_status,
    daemon_logs,
    start_master,
    stop_cluster,
)
from trustedml.cluster._process import process_tree
from trustedml.errors import ClusterError
from trustedml.spark import cluster_secret

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def started(local_cluster: LocalCluster) -> tuple[RunningCluster, subprocess.CompletedProcess[str]]:
    """The cluster as an operator starts it: `trustedml cluster start` (its JVMs tuned
    by cli_env's JAVA_TOOL_OPTIONS, which the daemons inherit)."""
    run = local_cluster.running()
    assert local_cluster.started is not None
    return run, local_cluster.started


@pytest.fixture
def keys(local_cluster: LocalCluster) -> KeyDirectory:
    """The key directory the cluster was started with."""
    return local_cluster.keys


@pytest.fixture
def cluster(started: tuple[RunningCluster, subprocess.CompletedProcess[str]]) -> RunningCluster:
    return started[0]


def test_start_prints_the_master_url_and_the_sim_banner_once(
    started: tuple[RunningCluster, subprocess.CompletedProcess[str]],
) -> None:
    run, done = started
    assert done.stdout == run.master_url + "\n"
    assert re.fullmatch(r"spark://127\.0\.0\.1:\d+", run.master_url)
    assert done.stderr.count("SIMULATED TEE") == 1
    for daemon in run.state.daemons:
        assert f"{daemon.id}: job measurement {daemon.measurement}" in done.stderr
        assert f"{daemon.id}: pid {daemon.pid}, 127.0.0.1:{daemon.port}" in done.stderr


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _listeners(pids: set[int]) -> list[str]:
    """Local addresses (ADDRESS:PORT) on which any of ``pids`` listens (TCP)."""
    shown = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in shown.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append(line.split()[3])
    return found


def test_the_state_file_records_every_daemon_measured_and_private(
    cluster: RunningCluster, keys: KeyDirectory
) -> None:
    directory = cluster.master_dir
    assert stat.S_IMODE(directory.path.stat().st_mode) == 0o700
    for path in (directory.state_file, directory.conf_file, directory.log_file("worker-1")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    state = directory.load()
    assert state == cluster.state
    assert state.secure
    assert state.tee == "sim"
    assert [d.id for d in state.daemons] == ["master", "worker-1", "worker-2"]
    master, w1, w2 = state.daemons
    assert master.ui_url.startswith("https://127.0.0.1:")
    assert (w1.cores, w1.memory) == (1, "512m")
    # Workers started with the same choices measure the same; the master differs.
    assert w1.measurement == w2.measurement != master.measurement
    assert w1.measurement is not None
    assert len(w1.measurement) == 96
    # The fingerprint names the secret both sides derive, never the secret itself.
    secret = cluster_secret(keys.unseal(Secret(PASSPHRASE)).spark_auth_secret, state.master_url)
    raw = json.loads(directory.state_file.read_text())
    assert raw["secret_fingerprint"] == state.secret_fingerprint
    text = directory.state_file.read_text() + directory.conf_file.read_text()
    assert secret.reveal_text() not in text
    conf = directory.conf_file.read_text()
    assert "spark.master.rest.enabled=false" in conf
    assert "spark.network.crypto.cipher=AES/GCM/NoPadding" in conf


def test_processes_bind_the_host_only_and_carry_no_secret_in_argv(
    cluster: RunningCluster, keys: KeyDirectory
) -> None:
    listening = _listeners(process_tree(cluster.pids))
    # Master RPC + http + https UI, each worker RPC + http + https UI.
    assert len(listening) >= 9, listening
    assert all(re.fullmatch(r"(\[::ffff:)?127\.0\.0\.1\]?:\d+", a) for a in listening), listening
    assert not [a for a in listening if a.endswith(":6066")], "REST submission port open"
    secret = cluster_secret(keys.unseal(Secret(PASSPHRASE)).spark_auth_secret, cluster.master_url)
    state = cluster.state
    for daemon in state.daemons:
        cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes()
        assert secret.reveal() not in cmdline
        env = _environ(daemon.pid)
        assert env["_SPARK_AUTH_SECRET"] == secret.reveal_text()
        assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
        assert env["TRUSTEDML_TEE"] == "sim"
        assert env["TRUSTEDML_JOB_MEASUREMENT"] == daemon.measurement
    worker = state.daemon("worker-2")
    assert _environ(worker.pid)["TRUSTEDML_WORKER"] == "worker-2@127.0.0.1"
    assert "TRUSTEDML_WORKER" not in _environ(state.daemon("master").pid)


def test_status_reads_the_master_over_tls_pinned_to_the_key_directory_ca(
    cluster: RunningCluster, tmp_path: Path
) -> None:
    status = cluster_status(cluster.master_dir.path, ca=cluster.ca)
    assert status.status == "ALIVE"
    assert status.master_url == cluster.master_url
    assert len(status.alive_workers) == 2
    assert status.lost_workers == ()
    assert {(w.host, w.cores, w.memory_mb) for w in status.workers} == {("127.0.0.1", 1, 512)}
    assert {w.port for w in status.workers} == {d.port for d in cluster.state.workers}
    # Another CA: the TLS handshake fails, status says so.
    foreign = tmp_path / "foreign-ca.pem"
    foreign.write_text(_self_signed())
    with pytest.raises(ClusterError, match="TLS"):
        cluster_status(cluster.master_dir.path, ca=foreign)


def _self_signed() -> str:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the cluster's CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_daemon_that_dies_at_start_fails_with_its_log_and_leaves_nothing(tmp_path: Path) -> None:
    # A plain master told not to look further than its port, which is taken.
    options = ClusterOptions(
        secure=False,
        extra_env={"JAVA_TOOL_OPTIONS": FAST_JVM},
        extra_conf={"spark.port.maxRetries": "0"},
    )
    directory = ClusterDir(tmp_path / "dies")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            with pytest.raises(ClusterError, match=r"master: exited before it was ready") as err:
                start_master(
                    directory, options, keys=None, passphrase=None, port=port, webui_port=0
                )
        finally:
            if directory.exists():  # it started after all: stop it before failing
                stop_cluster(directory)
    assert f"{directory.log_file('master')}:" in str(err.value)
    assert "Address already in use: Service 'sparkMaster'" in str(err.value)
    assert not directory.exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(directory.path) not in ps.stdout


def test_the_cli_reads_status_and_logs(cluster: RunningCluster, keys: KeyDirectory) -> None:
    where = ["--dir", str(cluster.master_dir.path)]
    done = run_cli(["cluster", "status", *where, "--keys", str(keys.path), "--json"])
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["status"] == "ALIVE"
    assert status["alive_workers"] == 2
    assert status["lost_workers"] == []
    done = run_cli(["cluster", "status", *where])
    assert done.returncode == 2
    assert "--keys DIR" in done.stderr
    done = run_cli(["cluster", "logs", *where, "worker-1", "--lines", "400"])
    assert done.returncode == 0
    assert "Successfully registered with master" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tee", "gramine", "--insecure"], "--tee gramine: cannot run a cluster daemon yet"),
        (["--host", "0.0.0.0", "--insecure"], "wildcard address"),  # noqa: S104 - refused
        ([], "a secure cluster needs a key directory"),
        (["--insecure", "--memory", "lots"], "--memory: expected a size"),
    ],
)
def test_the_cli_refuses_before_starting_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli(["cluster", "start", "--dir", str(tmp_path / "c"), *args])
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "c" / "cluster.json").exists()


def test_stop_leaves_no_process_and_removes_the_state(cluster: RunningCluster) -> None:
    # Last in the file: the module's cluster ends here (the fixture checks again).
    tree = process_tree(cluster.pids)
    assert len(tree) >= 3
    done = run_cli(["cluster", "stop", "--dir", str(cluster.master_dir.path)])
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stderr.splitlines()] == [
        "worker-1",
        "worker-2",
        "master",
    ]
    assert process_tree(tree) == set()
    assert not cluster.master_dir.exists()
    assert "Successfully registered" in daemon_logs(cluster.master_dir, "worker-1", lines=400)
