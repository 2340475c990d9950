"""Real Spark runs through the real command line.

A spark-submit costs a JVM, so one secure launch of tests/apps/secure_probe.py (the
`probe` fixture) serves most tests here: each asserts on what that launch left behind.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import APPS, PASSPHRASE, cli_env, run_cli
from trustedml import KeyDirectory, LocalKeyStore, Secret, decrypt_path, encrypt_file

pytestmark = pytest.mark.spark

PROBE = APPS / "secure_probe.py"
MARKER = "TRUSTEDML-MARKER-7f3a9c"
# What the secure configuration must have set inside the running Spark.
PROTECTIONS = {
    "spark.authenticate": "true",
    "spark.network.crypto.enabled": "true",
    "spark.network.crypto.cipher": "AES/GCM/NoPadding",
    "spark.network.crypto.authEngineVersion": "2",
    "spark.io.encryption.enabled": "true",
    "spark.python.unix.domain.socket.enabled": "true",
}


@dataclass
class Launch:
    """What one launch of the probe left: its output and files, and what the test
    saw while it ran."""

    returncode: int
    stdout: str
    stderr: str
    tmp: Path
    cmdlines: dict[int, bytes]
    effective: dict[str, str | None]
    ui_cert: dict[str, str] | None

    @property
    def copy(self) -> Path:
        return self.tmp / "copy"


def _children(root_pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _wait_for(path: Path, proc: subprocess.Popen[bytes], err: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            said = err.read_text()[-3000:]
            raise AssertionError(f"job ended early with {proc.returncode}: {said}")
        if time.monotonic() > deadline:
            raise AssertionError("job never became ready")
        time.sleep(0.2)


def _effective(stdout: str) -> dict[str, str | None]:
    found = re.search(r"EFFECTIVE=(.*)", stdout)
    assert found, stdout
    report: dict[str, str | None] = json.loads(found.group(1))
    return report


def _fetch_ui_certificate(ui_url: str, ca: Path) -> dict[str, str]:
    assert ui_url.startswith("https://127.0.0.1:"), ui_url
    port = int(ui_url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert()
        version = tls.version()
    subject = dict(item[0] for item in cert["subject"])  # type: ignore[index]
    return {"version": str(version), "subject_cn": str(subject["commonName"])}


def _taxi_csv(path: Path) -> Path:
    path.write_text("timestamp,value\n" + "".join(
        f"2014-07-0{1 + i // 48} {i % 24:02d}:{(i % 2) * 30:02d}:00,{i}\n" for i in range(96 * 2)
    ))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def kek_keys(session_keys: KeyDirectory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session key directory with the KEKs `taxi` and `out`."""
    keys = tmp_path_factory.mktemp("kek-keys") / "keys"
    shutil.copytree(session_keys.path, keys)
    store = LocalKeyStore(KeyDirectory(keys), Secret(PASSPHRASE))
    store.create_kek("taxi")
    store.create_kek("out")
    return keys


@pytest.fixture(scope="module")
def store(kek_keys: Path) -> LocalKeyStore:
    return LocalKeyStore(KeyDirectory(kek_keys), Secret(PASSPHRASE))


@pytest.fixture(scope="module")
def probe(
    kek_keys: Path,
    store: LocalKeyStore,
    session_passphrase_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Launch:
    """One secure `trustedml submit` of the probe, UI on, logging at INFO, an event log
    (let through with --allow-insecure-conf), two allowed --conf keys, --py-files, two
    KEKs; it exits 3. The process tree and the UI are inspected while it waits."""
    tmp = tmp_path_factory.mktemp("probe")
    encrypt_file(_taxi_csv(tmp / "taxi.csv"), tmp / "taxi.csv.tml", key_id="taxi", keystore=store)
    events = tmp / "events"
    events.mkdir()
    ready, go = tmp / "ready", tmp / "go"
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trustedml", "submit",
             "--keys", str(kek_keys), "--passphrase-file", str(session_passphrase_file),
             "--kek", "taxi", "--kek", "out",
             "--log-level", "INFO", "--local-dir", str(tmp / "scratch"),
             "--py-files", str(APPS / "lib" / "shipped_helper.py"),
             "--conf", "spark.app.name=h5-conf-probe", "--conf", "spark.sql.shuffle.partitions=3",
             "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}",
             "--conf", "spark.eventLog.compress=false",
             # Event logs are refused in secure jobs; the leak test reads one.
             "--allow-insecure-conf", "spark.eventLog.enabled",
             "--allow-insecure-conf", "spark.eventLog.dir",
             "--allow-insecure-conf", "spark.eventLog.compress",
             str(PROBE), str(ready), str(go), "--udf",
             "--shuffle", MARKER, str(tmp / "copy"), "--helper",
             "--encrypted", str(tmp / "taxi.csv.tml"), str(tmp / "taxi-out"), "taxi",
             "--dead-worker", str(tmp / "dead-out"), "out", "--exit", "3"],
            stdout=fout, stderr=ferr, env=cli_env(),
        )  # fmt: skip
        try:
            _wait_for(ready, proc, err)
            cmdlines = {pid: _cmdline(pid) for pid in _children(proc.pid)}
            effective = _effective(out.read_text())
            ui_cert = _fetch_ui_certificate(str(effective["ui"]), KeyDirectory(kek_keys).ca_cert)
        finally:
            go.write_text("go")
            proc.wait(timeout=120)
    return Launch(
        proc.returncode, out.read_text(), err.read_text(), tmp, cmdlines, effective, ui_cert
    )


def _launch(args: list[str], tmp: Path) -> Launch:
    """A probe launch that does not wait for the test (GO exists from the start)."""
    (tmp / "go").write_text("go")
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return Launch(0, result.stdout, result.stderr, tmp, {}, _effective(result.stdout), None)


@pytest.fixture(scope="module")
def insecure_probe(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    tmp = tmp_path_factory.mktemp("insecure-probe")
    return _launch(
        ["submit", "--insecure", "--no-ui", "--local-dir", str(tmp / "scratch"),
         str(PROBE), str(tmp / "ready"), str(tmp / "go"), "--shuffle", MARKER, str(tmp / "copy")],
        tmp,
    )  # fmt: skip


def _secrets(kek_keys: Path, store: LocalKeyStore) -> dict[str, bytes]:
    """Every secret of the probe's key directory: the sealed ones and the KEKs."""
    opened = KeyDirectory(kek_keys).unseal(Secret(PASSPHRASE))
    secrets = {name: opened[name].reveal() for name in opened}
    for entry in store.keyring().export().reveal_text().split(","):
        kek_id, value = entry.split(":", 1)
        secrets[f"kek {kek_id}"] = value.encode()
    return secrets


def test_secrets_never_in_argv_or_logs(probe: Launch, kek_keys: Path, store: LocalKeyStore) -> None:
    secrets = _secrets(kek_keys, store)
    assert len(secrets) > 2

    # The live process tree: a JVM driver and Python processes, none with a secret in argv.
    assert any(b"java" in c for c in probe.cmdlines.values()), probe.cmdlines
    assert any(PROBE.name.encode() in c for c in probe.cmdlines.values())
    for pid, cmd in probe.cmdlines.items():
        for name, value in secrets.items():
            assert value not in cmd, f"{name} in argv of pid {pid}"

    # Every log: driver stdout/stderr (INFO level) and the event log.
    logs = {"stdout": probe.stdout.encode(), "stderr": probe.stderr.encode()}
    logs.update({str(p): p.read_bytes() for p in (probe.tmp / "events").rglob("*") if p.is_file()})
    assert any(b"SparkListenerEnvironmentUpdate" in blob for blob in logs.values())
    assert len(logs["stderr"]) > 1000  # INFO logging really happened
    for path, blob in logs.items():
        for name, value in secrets.items():
            assert value not in blob, f"{name} in {path}"


def test_the_protections_are_on_inside_the_running_spark(probe: Launch) -> None:
    assert {k: probe.effective[k] for k in PROTECTIONS} == PROTECTIONS
    # The UI served TLS 1.3 with the key directory's certificate, whose keystore
    # password reached Spark only through the environment.
    assert probe.ui_cert == {"version": "TLSv1.3", "subject_cn": "127.0.0.1"}


def test_allowed_conf_reaches_the_app(probe: Launch) -> None:
    seen = {k: probe.effective[k] for k in
            ("spark.app.name", "spark.sql.shuffle.partitions", "spark.eventLog.compress",
             "spark.ssl.enabled", "spark.ui.enabled")}  # fmt: skip
    assert seen == {
        "spark.app.name": "h5-conf-probe",
        "spark.sql.shuffle.partitions": "3",
        "spark.eventLog.compress": "false",
        "spark.ssl.enabled": "true",
        "spark.ui.enabled": "true",
    }
    assert "warning: --allow-insecure-conf: spark.eventLog.compress=false" in probe.stderr


@pytest.mark.parametrize("launch", ["probe", "insecure_probe"], ids=["secure", "insecure"])
def test_shuffle_files_are_encrypted_only_in_secure_mode(
    request: pytest.FixtureRequest, launch: str
) -> None:
    run: Launch = request.getfixturevalue(launch)
    assert "groups: [(0, 2858)" in run.stdout
    shuffle = [p for p in run.copy.rglob("shuffle_*.data")]
    assert shuffle, "the job wrote no shuffle files"
    found = [p.name for p in shuffle if MARKER.encode() in p.read_bytes()]
    if launch == "probe":
        assert found == []
    else:
        assert found
        assert "INSECURE" in run.stderr


def test_py_files_and_exit_code(probe: Launch) -> None:
    assert probe.returncode == 3, probe.stderr[-3000:]
    assert "tripled sum: 135" in probe.stdout
    # A failing job ends with one line saying so, after Spark's own account.
    last = probe.stderr.strip().splitlines()[-1]
    assert last == f"error: {PROBE.name} failed with exit status 3; its output above says why"


def test_native_run_gets_the_secure_configuration(
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path
) -> None:
    run = _launch(
        ["run", "--keys", str(session_keys.path), "--passphrase-file",
         str(session_passphrase_file), "--", "python", str(PROBE),
         str(tmp_path / "ready"), str(tmp_path / "go"), "--udf"],
        tmp_path,
    )  # fmt: skip
    assert {k: run.effective[k] for k in PROTECTIONS} == PROTECTIONS


def test_secure_mode_without_keys_is_a_usage_error() -> None:
    result = run_cli(["submit", str(APPS / "exit_code.py"), "0"])
    assert result.returncode == 2
    assert "secure mode needs a key directory" in result.stderr


def test_weakening_conf_is_refused(
    session_keys: KeyDirectory, session_passphrase_file: Path
) -> None:
    result = run_cli(
        ["submit", "--keys", str(session_keys.path), "--passphrase-file",
         str(session_passphrase_file), "--conf", "spark.io.encryption.enabled=false",
         str(APPS / "exit_code.py"), "0"]
    )  # fmt: skip
    assert result.returncode == 2
    assert "spark.io.encryption.enabled: managed by the secure configuration" in result.stderr


def test_wrong_passphrase_stops_before_spark(session_keys: KeyDirectory, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("wrong passphrase\n")
    bad.chmod(0o600)
    result = run_cli(
        ["submit", "--keys", str(session_keys.path), "--passphrase-file", str(bad),
         str(APPS / "exit_code.py"), "0"]
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "wrong passphrase" in result.stderr


def test_unknown_tee_backend() -> None:
    result = run_cli(["submit", "--insecure", "--tee", "sgx", str(APPS / "exit_code.py"), "0"])
    assert result.returncode == 2
    assert "'sgx' is not one of 'cvm', 'gramine', 'none', 'sim'" in result.stderr


def test_job_reads_and_writes_encrypted_data_with_its_keks(
    probe: Launch, store: LocalKeyStore
) -> None:
    assert "rows: 192 days: 4" in probe.stdout
    plain = probe.tmp / "taxi-plain"
    decrypt_path(probe.tmp / "taxi-out", plain, keystore=store)
    (csv,) = plain.glob("*.csv")
    lines = csv.read_text().splitlines()
    assert lines[0] == "day,sum(value)"
    assert sorted(lines[1:])[0] == f"2014-07-01,{sum(range(48))}"


def test_a_dead_worker_fails_the_job_clearly_and_leaves_no_output(probe: Launch) -> None:
    assert "unreachable" not in probe.stdout
    # The write's own error (the app goes on, to exit 3), and Spark's log of the task.
    said = probe.stdout.split("dead-worker: the write failed: ", 1)
    assert len(said) == 2, probe.stdout[-3000:]
    assert "Python worker exited unexpectedly" in said[1]
    assert "Python worker exited unexpectedly" in probe.stderr
    # Files of the partitions that finished were removed when the job aborted; the
    # killed task can leave only its hidden, never-renamed temporary file.
    out = probe.tmp / "dead-out"
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert all(name.startswith(".part-") and name.endswith(".part") for name in left), left
