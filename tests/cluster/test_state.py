"""Cluster state files, options, the cluster secret and daemon measurement: no JVM."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE
from trustedml import KeyDirectory, Secret
from trustedml.cluster import (
    ClusterDir,
    ClusterOptions,
    ClusterState,
    DaemonState,
    daemon_logs,
    stop_cluster,
)
from trustedml.cluster._process import START_MARK, log_tail, spawn
from trustedml.cluster._settings import daemon_launch
from trustedml.cluster._status import parse_status
from trustedml.errors import ClusterStateError, ConfigError, LaunchError, SparkConfigError
from trustedml.spark import (
    DeployMode,
    SecureSparkConfig,
    auth_secret_for,
    cluster_secret,
    measurement_settings,
)
from trustedml.tee import (
    CvmBackend,
    GramineBackend,
    Job,
    SimBackend,
    measure_daemon,
)

MEASUREMENT = "ab" * 48


def _daemon(daemon_id: str = "master", pid: int = 4242, **changes: object) -> DaemonState:
    fields: dict[str, object] = {
        "id": daemon_id,
        "role": "master" if daemon_id == "master" else "worker",
        "pid": pid,
        "pgid": pid,
        "host": "127.0.0.1",
        "port": 7077,
        "webui_port": 8080,
        "ui_url": "https://127.0.0.1:8480",
        "measurement": MEASUREMENT,
        "log": f"logs/{daemon_id}.log",
        "started": "2026-12-04T18:00:00Z",
    }
    fields.update(changes)
    return DaemonState(**fields)  # type: ignore[arg-type]


def _state(*daemons: DaemonState) -> ClusterState:
    return ClusterState(
        master_url="spark://127.0.0.1:7077",
        secure=True,
        tee="sim",
        secret_fingerprint="0123456789abcdef",
        daemons=daemons or (_daemon(),),
    )


def _write(directory: ClusterDir, text: str, mode: int = 0o600) -> None:
    directory.create()
    directory.state_file.write_text(text)
    directory.state_file.chmod(mode)


def test_state_round_trips_private_and_atomic(tmp_path: Path) -> None:
    directory = ClusterDir(tmp_path / "c")
    state = _state(_daemon(), _daemon("worker-1", 4343, cores=2, memory="1g"))
    directory.save(state)
    assert directory.load() == state
    assert oct(directory.state_file.stat().st_mode & 0o777) == "0o600"
    assert oct(directory.path.stat().st_mode & 0o777) == "0o700"
    assert [p.name for p in directory.path.iterdir() if p.name.startswith(".")] == []
    raw = json.loads(directory.state_file.read_text())
    assert raw["format"] == 1
    assert raw["daemons"][1]["cores"] == 2
    assert state.master == state.daemon("master")
    assert [d.id for d in state.workers] == ["worker-1"]
    with pytest.raises(ClusterStateError, match=r"no daemon 'worker-9'.*master, worker-1"):
        state.daemon("worker-9")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"format": 1, "master_url": "spark://h:1", "sec', "invalid JSON"),
        ("", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"name": "some other tool", "version": 3}', "expected format 1"),
        ('{"format": 2}', "expected format 1"),
        ('{"format": 1, "master_url": "local[2]"}', "master_url"),
    ],
    ids=["truncated", "empty", "list", "foreign", "future", "local-master"],
)
def test_a_corrupt_or_foreign_file_is_refused_by_name(tmp_path: Path, text: str, why: str) -> None:
    directory = ClusterDir(tmp_path)
    _write(directory, text)
    with pytest.raises(ClusterStateError, match=why) as err:
        directory.load()
    assert str(directory.state_file) in str(err.value)
    assert "not a trusted-ml cluster state file" in str(err.value)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"pid": "123"}, r"daemons\[0\]\.pid"),
        ({"pid": True}, r"daemons\[0\]\.pid"),
        ({"pid": 1}, "implausible pid"),
        ({"role": "driver"}, "role"),
        ({"port": 70000}, "port out of range"),
        ({"log": "../../etc/passwd"}, "inside the directory"),
        ({"measurement": "xyz"}, "96 hex digits"),
        ({"ui_url": None}, "ui_url"),
    ],
)
def test_a_bad_daemon_entry_is_refused(tmp_path: Path, change: dict[str, object], why: str) -> None:
    raw = _state().to_json()
    raw["daemons"][0].update(change)
    directory = ClusterDir(tmp_path)
    _write(directory, json.dumps(raw))
    with pytest.raises(ClusterStateError, match=why):
        directory.load()


def test_missing_fields_and_duplicates_are_refused(tmp_path: Path) -> None:
    directory = ClusterDir(tmp_path)
    raw = _state().to_json()
    del raw["daemons"][0]["pgid"]
    _write(directory, json.dumps(raw))
    with pytest.raises(ClusterStateError, match="missing 'pgid'"):
        directory.load()
    raw = _state(_daemon(), _daemon()).to_json()
    _write(directory, json.dumps(raw))
    with pytest.raises(ClusterStateError, match="duplicate ids"):
        directory.load()
    raw = _state().to_json()
    raw["secret_fingerprint"] = "the secret itself, oops"
    _write(directory, json.dumps(raw))
    with pytest.raises(ClusterStateError, match="secret_fingerprint"):
        directory.load()


def test_an_unsafe_file_is_refused(tmp_path: Path) -> None:
    directory = ClusterDir(tmp_path / "c")
    directory.save(_state())
    directory.state_file.chmod(0o644)
    with pytest.raises(ClusterStateError, match="permissions too open: expected 0600, got 0644"):
        directory.load()
    other = ClusterDir(tmp_path / "link")
    other.create()
    os.symlink(directory.state_file, other.state_file)
    with pytest.raises(ClusterStateError, match="cannot open"):
        other.load()
    with pytest.raises(ClusterStateError, match=r"no cluster here.*trustedml cluster start"):
        ClusterDir(tmp_path / "nothing").load()


def test_stop_never_signals_a_pid_the_kernel_gave_to_something_else(tmp_path: Path) -> None:
    # The recorded pids: one ended, one now running an unrelated program.
    gone = subprocess.Popen(["true"])
    gone.wait()
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        directory = ClusterDir(tmp_path / "c")
        state = _state(_daemon(pid=gone.pid), _daemon("worker-1", bystander.pid))
        directory.save(state)
        assert [d.id for d in stop_cluster(directory, timeout=1.0)] == ["worker-1", "master"]
        assert bystander.poll() is None
        assert not directory.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_logs_of_one_daemon_or_all(tmp_path: Path) -> None:
    directory = ClusterDir(tmp_path / "c")
    directory.save(_state(_daemon(), _daemon("worker-1", 4343)))
    directory.log_file("master").write_text("".join(f"m{i}\n" for i in range(100)))
    directory.log_file("worker-1").write_text("registered\n")
    assert daemon_logs(directory, "master", lines=2) == "m98\nm99"
    every = daemon_logs(directory, lines=1)
    assert every == "==> master <==\nm99\n==> worker-1 <==\nregistered"
    with pytest.raises(ClusterStateError, match="no daemon 'worker-7'"):
        daemon_logs(directory, "worker-7")
    with pytest.raises(ConfigError, match="--lines"):
        daemon_logs(directory, lines=0)


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"host": "0.0.0.0"}, "wildcard address"),  # noqa: S104 - refused
        ({"host": "::"}, "wildcard address"),
        ({"host": "bad host!"}, "expected an IP address or host name"),
        ({"log_level": "LOUD"}, "--log-level"),
        ({"extra_env": {"_SPARK_AUTH_SECRET": "x"}}, "set by the launcher"),
        ({"extra_env": {"TRUSTEDML_TEE": "sgx"}}, "set by the launcher"),
        ({"extra_conf": {"spark.authenticate": "false"}}, "managed by the secure configuration"),
        ({"extra_conf": {"spark.master.rest.enabled": "true"}}, "managed"),
        ({"extra_conf": {"spark.authenticate.secret": "x"}}, "secrets may not be passed"),
    ],
)
def test_options_are_checked_when_made(options: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        ClusterOptions(**options)  # type: ignore[arg-type]


def test_options_hold_no_secret_and_refuse_gramine(tmp_path: Path) -> None:
    options = ClusterOptions(
        host="198.18.0.1", tee=SimBackend(tmp_path / "k.pem"), extra_env={"JAVA_TOOL_OPTIONS": "-X"}
    )
    assert repr(options) == (
        "ClusterOptions(host='198.18.0.1', tee='sim', secure=True, log_level='WARN')"
    )
    # A plain cluster takes any spark.* property (it is a baseline).
    ClusterOptions(secure=False, extra_conf={"spark.master.rest.enabled": "true"})
    with pytest.raises(ConfigError, match=r"--tee gramine: cannot run a cluster daemon yet"):
        ClusterOptions(tee=GramineBackend(tmp_path / "g"))


def test_the_cluster_secret_is_one_per_master_url(
    session_keys: KeyDirectory, tmp_path: Path
) -> None:
    base = session_keys.unseal(Secret(PASSPHRASE)).spark_auth_secret
    one = cluster_secret(base, "spark://198.18.0.1:7077")
    assert one == cluster_secret(base, "spark://198.18.0.1:7077")
    assert len(one.reveal_text()) == 64
    assert int(one.reveal_text(), 16) >= 0
    assert one != cluster_secret(base, "spark://198.18.0.1:7078")
    assert one != cluster_secret(
        Secret(b"another key directory's secret"), "spark://198.18.0.1:7077"
    )
    assert one.reveal() != base.reveal()
    with pytest.raises(SparkConfigError, match="spark://HOST:PORT"):
        cluster_secret(base, "local[2]")
    assert auth_secret_for(base, "local[2]") == base
    # What a driver gets for `submit --master spark://...`: the same derived secret.
    settings = SecureSparkConfig.from_key_directory(
        session_keys, Secret(PASSPHRASE), master="spark://198.18.0.1:7077"
    )
    assert settings.mode is DeployMode.STANDALONE
    assert settings.environment()["_SPARK_AUTH_SECRET"] == one.reveal_text()
    local = SecureSparkConfig.from_key_directory(session_keys, Secret(PASSPHRASE))
    assert "_SPARK_AUTH_SECRET" not in local.environment()


def test_daemon_measurement_ignores_hosts_and_ports_but_not_choices(tmp_path: Path) -> None:
    def measure(master: str, role: str = "worker", **options: str) -> str:
        settings = measurement_settings(master=master)
        return measure_daemon(role, settings, options=options or {"cores": "1"}).hex

    worker = measure("spark://127.0.0.1:7077")
    assert worker == measure("spark://198.18.0.1:40000")
    assert worker != measure("spark://127.0.0.1:7077", cores="2")
    assert worker != measure("spark://127.0.0.1:7077", role="master")
    with pytest.raises(ConfigError, match="master or worker"):
        measure("spark://127.0.0.1:7077", role="driver")
    parts = measure_daemon(
        "worker", measurement_settings(master="spark://h:1"), options={"cores": "1"}
    ).parts
    assert parts["launcher"] == "cluster-worker"
    assert "spark.master" not in parts["spark_conf"]
    assert {p["name"] for p in parts["packages"]} >= {"trusted-ml", "pyspark"}


def test_backends_prepare_a_daemon_job_or_refuse_it(tmp_path: Path) -> None:
    settings = measurement_settings(master="spark://127.0.0.1:7077")
    measurement = measure_daemon("worker", settings, options={"cores": "1"})
    job = Job(
        launcher="cluster-worker",
        argv=("spark-class", "org.apache.spark.deploy.worker.Worker"),
        env={"TRUSTEDML_TEE": "inherited, must go"},
        settings=settings,
        conf_dir=tmp_path,
        app=None,
        measurement=measurement,
    )
    plan = SimBackend(tmp_path / "sim.pem").prepare(job)
    assert plan.env["TRUSTEDML_TEE"] == "sim"
    assert plan.env["TRUSTEDML_JOB_MEASUREMENT"] == measurement.hex
    assert plan.banner is not None
    assert "SIMULATED" in plan.banner
    # No configfs-tsm here: the cvm backend refuses to start rather than run unattested.
    with pytest.raises(LaunchError, match="--tee cvm: no confidential-VM attestation here"):
        CvmBackend(tmp_path / "no-tsm").prepare(job)


def test_status_parses_lost_workers_and_apps() -> None:
    status = parse_status(
        {
            "url": "spark://198.18.0.1:7077",
            "status": "ALIVE",
            "workers": [
                {"id": "w-a", "host": "198.18.0.11", "port": 1, "state": "ALIVE", "cores": 1,
                 "coresused": 1, "memory": 512},
                {"id": "w-b", "host": "198.18.0.12", "port": 2, "state": "DEAD", "cores": 1,
                 "coresused": 0, "memory": 512},
                "not a worker",
            ],
            "activeapps": [{"id": "app-1"}],
            "completedapps": [],
        }
    )  # fmt: skip
    assert [w.id for w in status.alive_workers] == ["w-a"]
    assert [w.id for w in status.lost_workers] == ["w-b"]
    assert status.active_apps == ("app-1",)
    assert status.to_json()["lost_workers"] == ["w-b"]


def test_a_daemon_gets_its_secrets_by_environment_and_nothing_inherited_from_spark(
    session_keys: KeyDirectory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an operator's shell might carry: each would weaken or redirect the daemon.
    monkeypatch.setenv("SPARK_WORKER_OPTS", "-Dspark.authenticate=false")
    monkeypatch.setenv("SPARK_DAEMON_JAVA_OPTS", "-Dspark.network.crypto.enabled=false")
    monkeypatch.setenv("_SPARK_AUTH_SECRET", "an old secret")
    master = "spark://127.0.0.1:7077"
    launch = daemon_launch(
        ClusterDir(tmp_path / "c"),
        ClusterOptions(tee=SimBackend(tmp_path / "sim.pem")),
        "worker",
        "worker-3",
        master,
        keys=session_keys,
        passphrase=Secret(PASSPHRASE),
        argv_tail=["--cores", "1"],
        ssl_port=4443,
        cls="org.apache.spark.deploy.worker.Worker",
        measured_options={"cores": "1"},
        extra_env={"TRUSTEDML_WORKER": "worker-3@127.0.0.1"},
        master_arg=master,
    )
    env = launch.plan.env
    secret = cluster_secret(session_keys.unseal(Secret(PASSPHRASE)).spark_auth_secret, master)
    assert env["_SPARK_AUTH_SECRET"] == secret.reveal_text()
    assert env["SPARK_WORKER_OPTS"] == "-Dspark.ssl.standalone.port=4443"
    assert "SPARK_DAEMON_JAVA_OPTS" not in env
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["TRUSTEDML_WORKER"] == "worker-3@127.0.0.1"
    assert env["TRUSTEDML_JOB_MEASUREMENT"] == launch.measurement
    assert launch.plan.argv[-1] == master
    assert not [a for a in launch.plan.argv if secret.reveal_text() in a]
    assert secret.reveal_text() not in repr(launch)
    assert "secret" not in repr(launch)
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xss4m -Dspark.authenticate=false")
    with pytest.raises(ConfigError, match=r"JAVA_TOOL_OPTIONS sets a Spark property"):
        daemon_launch(
            ClusterDir(tmp_path / "c"), ClusterOptions(secure=False), "master", "master",
            master, keys=None, passphrase=None, argv_tail=[], ssl_port=None, cls="M",
        )  # fmt: skip


def test_readiness_reads_only_the_latest_start_of_a_reused_log(tmp_path: Path) -> None:
    log = tmp_path / "worker-1.log"
    done = spawn(["true"], {}, tmp_path, log)
    done.wait()
    with open(log, "a") as fh:
        fh.write("Successfully registered with master spark://old:7077\n")
    again = spawn(["echo", "Connecting to master"], {}, tmp_path, log)
    again.wait()
    assert "Successfully registered" in log_tail(log, 10)
    assert log_tail(log, 10, this_run=True) == "Connecting to master"
    assert log.read_text().count(START_MARK) == 2
