"""Real Spark runs through the real command line."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import APPS, PASSPHRASE, cli_env, run_cli
from trustedml import KeyDirectory, Secret

pytestmark = pytest.mark.spark


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


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"job ended early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("job never became ready")
        time.sleep(0.2)


def test_secrets_never_in_argv_or_logs(
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path
) -> None:
    opened = session_keys.unseal(Secret(PASSPHRASE))
    secrets = {name: opened[name].reveal() for name in opened}
    events = tmp_path / "events"
    events.mkdir()
    ready, go = tmp_path / "ready", tmp_path / "go"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trustedml", "submit",
             "--keys", str(session_keys.path), "--passphrase-file", str(session_passphrase_file),
             "--log-level", "INFO", "--local-dir", str(tmp_path / "scratch"),
             "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}",
             "--conf", "spark.eventLog.compress=false",
             # Event logs are refused in secure jobs; this test reads one for leaks.
             "--allow-insecure-conf", "spark.eventLog.enabled",
             "--allow-insecure-conf", "spark.eventLog.dir",
             "--allow-insecure-conf", "spark.eventLog.compress",
             str(APPS / "leak_probe.py"), str(ready), str(go)],
            stdout=fout, stderr=ferr, env=cli_env(),
        )  # fmt: skip
        try:
            _wait_for(ready, proc)
            pids = _children(proc.pid)
            cmdlines = {pid: _cmdline(pid) for pid in pids}
            effective = json.loads(
                re.search(r"EFFECTIVE=(.*)", out.read_text()).group(1)  # type: ignore[union-attr]
            )
            ui_cert = _fetch_ui_certificate(effective["ui"], session_keys.ca_cert)
        finally:
            go.write_text("go")
            assert proc.wait(timeout=120) == 0, err.read_text()[-3000:]

    # The live process tree: a JVM driver and Python processes, none with a secret in argv.
    assert any(b"java" in c for c in cmdlines.values()), cmdlines
    assert any(b"leak_probe.py" in c for c in cmdlines.values())
    for pid, cmd in cmdlines.items():
        for name, value in secrets.items():
            assert value not in cmd, f"{name} in argv of pid {pid}"

    # Every log: driver stdout/stderr (INFO level) and the event log.
    logs = {out: out.read_bytes(), err: err.read_bytes()}
    logs.update({p: p.read_bytes() for p in events.rglob("*") if p.is_file()})
    assert any(b"SparkListenerEnvironmentUpdate" in blob for blob in logs.values())
    assert len(logs[err]) > 1000  # INFO logging really happened
    for path, blob in logs.items():
        for name, value in secrets.items():
            assert value not in blob, f"{name} in {path}"

    # The protections were really on inside the running Spark.
    assert effective["spark.authenticate"] == "true"
    assert effective["spark.network.crypto.enabled"] == "true"
    assert effective["spark.network.crypto.cipher"] == "AES/GCM/NoPadding"
    assert effective["spark.network.crypto.authEngineVersion"] == "2"
    assert effective["spark.io.encryption.enabled"] == "true"
    assert effective["spark.python.unix.domain.socket.enabled"] == "true"
    # The UI served TLS 1.3 with the key directory's certificate, whose keystore
    # password reached Spark only through the environment.
    assert ui_cert["version"] == "TLSv1.3"
    assert ui_cert["subject_cn"] == "127.0.0.1"


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


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "insecure"])
def test_shuffle_files_are_encrypted_only_in_secure_mode(
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path, secure: bool
) -> None:
    marker = "TRUSTEDML-MARKER-7f3a9c"
    copy = tmp_path / "copy"
    mode = (
        ["--keys", str(session_keys.path), "--passphrase-file", str(session_passphrase_file)]
        if secure
        else ["--insecure"]
    )
    result = run_cli(
        ["submit", *mode, "--no-ui", "--local-dir", str(tmp_path / "scratch"),
         str(APPS / "shuffle_marker.py"), marker, str(copy)]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "groups: [(0, 2858)" in result.stdout
    shuffle = [p for p in copy.rglob("shuffle_*.data")]
    assert shuffle, "the job wrote no shuffle files"
    found = [p.name for p in shuffle if marker.encode() in p.read_bytes()]
    if secure:
        assert found == []
    else:
        assert found
        assert "INSECURE" in result.stderr


def test_py_files_and_exit_code(session_keys: KeyDirectory, session_passphrase_file: Path) -> None:
    result = run_cli(
        ["submit", "--keys", str(session_keys.path), "--passphrase-file",
         str(session_passphrase_file), "--no-ui",
         "--py-files", str(APPS / "lib" / "shipped_helper.py"),
         str(APPS / "exit_code.py"), "3"]
    )  # fmt: skip
    assert result.returncode == 3, result.stderr[-3000:]
    assert "tripled sum: 135" in result.stdout


def test_native_run_gets_the_secure_configuration(
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path
) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    go.write_text("go")  # do not wait
    result = run_cli(
        ["run", "--keys", str(session_keys.path), "--passphrase-file",
         str(session_passphrase_file), "--", "python", str(APPS / "leak_probe.py"),
         str(ready), str(go)]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    effective = json.loads(re.search(r"EFFECTIVE=(.*)", result.stdout).group(1))  # type: ignore[union-attr]
    assert effective["spark.network.crypto.cipher"] == "AES/GCM/NoPadding"
    assert effective["spark.io.encryption.enabled"] == "true"


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
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path
) -> None:
    import shutil

    from trustedml import LocalKeyStore, decrypt_path, encrypt_file

    keys = tmp_path / "keys"
    shutil.copytree(session_keys.path, keys)
    store = LocalKeyStore(KeyDirectory(keys), Secret(PASSPHRASE))
    store.create_kek("taxi")
    src = tmp_path / "taxi.csv"
    src.write_text("timestamp,value\n" + "".join(
        f"2014-07-0{1 + i // 48} {i % 24:02d}:{(i % 2) * 30:02d}:00,{i}\n" for i in range(96 * 2)
    ))  # fmt: skip
    encrypt_file(src, tmp_path / "taxi.csv.tml", key_id="taxi", keystore=store)
    result = run_cli(
        ["submit", "--keys", str(keys), "--passphrase-file", str(session_passphrase_file),
         "--kek", "taxi", "--no-ui", str(APPS / "encrypted_job.py"),
         str(tmp_path / "taxi.csv.tml"), str(tmp_path / "out"), "taxi"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rows: 192 days: 4" in result.stdout
    kek = store.keyring().export().reveal_text()
    assert kek.split(":", 1)[1] not in result.stdout + result.stderr
    decrypt_path(tmp_path / "out", tmp_path / "plain", keystore=store)
    (csv,) = (tmp_path / "plain").glob("*.csv")
    lines = csv.read_text().splitlines()
    assert lines[0] == "day,sum(value)"
    assert sorted(lines[1:])[0] == f"2014-07-01,{sum(range(48))}"


def test_a_dead_worker_fails_the_job_clearly_and_leaves_no_output(
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path
) -> None:
    import shutil

    from trustedml import LocalKeyStore

    keys = tmp_path / "keys"
    shutil.copytree(session_keys.path, keys)
    LocalKeyStore(KeyDirectory(keys), Secret(PASSPHRASE)).create_kek("out")
    out = tmp_path / "out"
    result = run_cli(
        ["submit", "--keys", str(keys), "--passphrase-file", str(session_passphrase_file),
         "--kek", "out", "--no-ui", str(APPS / "dead_worker.py"), str(out), "out"]
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "unreachable" not in result.stdout
    assert "Python worker exited unexpectedly" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: dead_worker.py failed with exit status 1; its output above says why"
    # Files of the partitions that finished were removed when the job aborted; the
    # killed task can leave only its hidden, never-renamed temporary file.
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert all(name.startswith(".part-") and name.endswith(".part") for name in left), left
