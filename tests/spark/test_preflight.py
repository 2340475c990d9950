"""The preflight of a job on a spark:// master: each cause named in under 10 s, nothing started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.local import LocalCluster
from tests.conftest import FAST_JVM, FAST_KDF, PASSPHRASE, run_cli
from trustedml import ConfigError, KeyDirectory, Secret, init_key_directory
from trustedml.jobs import JobOptions, prepare_job
from trustedml.spark import check_driver_host, driver_address, measured_conf, spark_home
from trustedml.spark._preflight import master_addresses, preflight, preflight_archive
from trustedml.spark._submit import write_conf_dir

STARTED = "preflight-test: the job started"
GCM = "AES/GCM/NoPadding"
CTR = "AES/CTR/NoPadding"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _run_job(
    keys: KeyDirectory, passphrase_file: Path, master: str, app: Path, *, submit: bool = False
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`trustedml run -- python APP` (or `trustedml submit APP`) on ``master``, timed."""
    job = ["submit", str(app)] if submit else ["run", "--", "python", str(app)]
    started = time.monotonic()
    done = run_cli(
        [job[0], "--master", master, "--keys", str(keys.path), "--passphrase-file",
         str(passphrase_file), "--no-ui", *job[1:]],
        timeout=120,
    )  # fmt: skip
    return done, time.monotonic() - started


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(f"print({STARTED!r})\n")
    return path


def _assert_refused(done: subprocess.CompletedProcess[str], elapsed: float, *phrases: str) -> None:
    """The job failed as a runtime error (exit 1), naming the cause, before starting."""
    assert done.returncode == 1, done.stderr
    for phrase in phrases:
        assert phrase in done.stderr
    assert STARTED not in done.stdout
    assert elapsed < 10, elapsed


# -- no JVM ---------------------------------------------------------------------------


def test_master_addresses_and_driver_host_checks() -> None:
    assert master_addresses("spark://a:7077,b:7078") == [("a", 7077), ("b", 7078)]
    with pytest.raises(ConfigError, match="spark://HOST:PORT"):
        master_addresses("local[2]")
    assert check_driver_host(" 198.18.0.1 ") == "198.18.0.1"
    for bad in ("master-host", "0.0.0.0", "224.0.0.1", ""):  # noqa: S104 (refused)
        with pytest.raises(ConfigError, match="--driver-host"):
            check_driver_host(bad)
    # The address this machine reaches the master from; loopback for a local master.
    assert driver_address("spark://127.0.0.1:7077") == "127.0.0.1"


def test_driver_host_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--driver-host applies to a spark:// master"):
        JobOptions(master="local[2]", insecure=True, driver_host="127.0.0.1")
    with pytest.raises(ConfigError, match="expected an IP address"):
        JobOptions(master="spark://127.0.0.1:7077", insecure=True, driver_host="nope")
    chosen = JobOptions(master="spark://127.0.0.1:7077", insecure=True, driver_host="127.0.0.2")
    conf = prepare_job(chosen, state_dir=tmp_path).settings.conf()
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.2"
    # An executor binds its own worker's address, not the driver's.
    assert "spark.executorEnv.SPARK_LOCAL_IP" not in conf
    default = JobOptions(master="spark://127.0.0.1:7077", insecure=True)
    conf = prepare_job(default, state_dir=tmp_path).settings.conf()
    assert conf["spark.driver.host"] == "127.0.0.1"
    # Machine-local on a cluster: the same job measures the same from every host.
    assert "spark.driver.host" not in measured_conf(conf)
    local = prepare_job(JobOptions(insecure=True), state_dir=tmp_path).settings.conf()
    assert local["spark.driver.host"] == local["spark.executorEnv.SPARK_LOCAL_IP"] == "127.0.0.1"
    assert measured_conf(local)["spark.driver.host"] == "127.0.0.1"


def test_a_master_that_does_not_answer(
    session_keys: KeyDirectory, session_passphrase_file: Path, app: Path
) -> None:
    master = f"spark://127.0.0.1:{_free_port()}"
    done, elapsed = _run_job(session_keys, session_passphrase_file, master, app)
    _assert_refused(done, elapsed, f"the master {master} is not answering", "connection refused")


# -- real masters ---------------------------------------------------------------------


def _job_settings(
    keys: KeyDirectory, master: str, tmp: Path
) -> tuple[dict[str, str], dict[str, str], Path]:
    """What `trustedml run --master MASTER --keys KEYS` runs with: its properties, its
    environment (the secret included) and the file holding the properties."""
    options = JobOptions(master=master, keys_dir=keys.path, ui=False)
    settings = prepare_job(options, Secret(PASSPHRASE), state_dir=tmp).settings
    tmp.mkdir(parents=True, exist_ok=True)
    props = write_conf_dir(settings, tmp)
    return settings.conf(), {**os.environ, **settings.environment()}, props


class BareMaster:
    """A standalone master started with spark-class, on the settings a job on it uses
    (so the secret matches) with the RPC cipher ``cipher``."""

    def __init__(self, keys: KeyDirectory, cipher: str, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        _, env, props = _job_settings(keys, self.url, tmp)
        text = props.read_text().replace(GCM, cipher)
        props.write_text(text)
        env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1")
        env["SPARK_DAEMON_MEMORY"] = "256m"
        env["JAVA_TOOL_OPTIONS"] = FAST_JVM
        # No SPARK_CONF_DIR: Spark's default INFO logging says when the master is up.
        env.pop("SPARK_CONF_DIR", None)
        self.log = tmp / "master.log"
        argv = [
            str(spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(_free_port()),
            "--properties-file", str(props),
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_alive(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "New state: ALIVE" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"master did not start:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def masters(
    local_cluster: LocalCluster,
    session_keys: KeyDirectory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """The URLs of two masters: "secure", the master of the cluster tests/cluster/local.py
    shares (started by trustedml.cluster as an operator would, for its key directory),
    and "ctr", a bare one for the session key directory on Spark's default AES/CTR with
    that directory's cluster secret. The bare one is not left behind."""
    root = tmp_path_factory.mktemp("masters")
    ctr = BareMaster(session_keys, CTR, root / "ctr")
    try:
        # Made once per install (make venv); after a change to the source, here, untimed.
        preflight_archive()
        secure = local_cluster.running().master_url
        ctr.wait_alive()
        yield {"secure": secure, "ctr": ctr.url}
    finally:
        ctr.stop()
    assert not _running(ctr.proc.pid), "a master was left behind"


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    """A second key directory: its secret for any master differs from the session one's."""
    return init_key_directory(
        tmp_path_factory.mktemp("other") / "keys", Secret(PASSPHRASE), kdf=FAST_KDF
    )


@pytest.mark.spark
@pytest.mark.slow
def test_the_matching_master_passes(
    masters: dict[str, str], local_cluster: LocalCluster, app: Path, tmp_path: Path
) -> None:
    keys = local_cluster.keys
    conf, env, props = _job_settings(keys, masters["secure"], tmp_path / "conf")
    took = preflight(conf, props, env)
    assert took < 10, took
    # Through the command line: the check passes and the job starts.
    done, elapsed = _run_job(keys, local_cluster.passphrase_file, masters["secure"], app)
    assert done.returncode == 0, done.stderr
    assert STARTED in done.stdout
    print(f"preflight, matching master: {took:.2f} s (library), {elapsed:.2f} s (CLI)")


@pytest.mark.spark
@pytest.mark.slow
def test_a_wrong_secret_is_named(
    masters: dict[str, str],
    other_keys: KeyDirectory,
    session_passphrase_file: Path,
    app: Path,
) -> None:
    done, elapsed = _run_job(other_keys, session_passphrase_file, masters["secure"], app)
    _assert_refused(done, elapsed, "authentication failed", "the secret differs")
    print(f"preflight, wrong secret: {elapsed:.2f} s (CLI)")


@pytest.mark.spark
@pytest.mark.slow
def test_a_wrong_cipher_is_named(
    masters: dict[str, str],
    session_keys: KeyDirectory,
    session_passphrase_file: Path,
    app: Path,
) -> None:
    done, elapsed = _run_job(
        session_keys, session_passphrase_file, masters["ctr"], app, submit=True
    )
    _assert_refused(done, elapsed, "the RPC cipher or auth protocol differs", GCM)
    print(f"preflight, wrong cipher: {elapsed:.2f} s (CLI)")
