"""No key of a job that reads and writes through the JVM's tml file system shows up in
what the job exposes: the Spark and Hadoop configuration, the argv of every process of
the job, its event log, its logs and every file it left (issue 15's acceptance).

One secure `trustedml submit` of tests/apps/jvm_keys_probe.py (its own JVM: slow)
reads an encrypted CSV and an encrypted Parquet directory and writes encrypted CSV and
Parquet, all with engine="jvm". The secrets looked for are the job's KEKs and the data
key of every file read or written, unwrapped here from the files' headers; each in
every encoding a careless line of code would print it in.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import APPS, PASSPHRASE, cli_env
from tests.secret_scan import encodings, hits
from trustedml import KeyDirectory, LocalKeyStore, Secret, decrypt_path, encrypt_file
from trustedml.hazmat import framing, keywrap

pytestmark = [pytest.mark.spark, pytest.mark.slow]

PROBE = APPS / "jvm_keys_probe.py"
KEKS = ("trips", "zones", "out")
ZONES = {1: "Manhattan", 2: "Brooklyn", 3: "Queens", 4: "Bronx"}
TRIPS = [[(z % 4 + 1, round(2.5 + (z * 7 + part) % 40, 2)) for z in range(400)] for part in (0, 1)]


def _tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    out, todo = [], [root_pid]
    while todo:
        out.append(todo.pop())
        todo.extend(parents.get(out[-1], []))
    return out


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # a process or a temporary file that went away meanwhile
        return None


def _files(root: Path, label: str) -> dict[str, bytes]:
    found = {f"{label} {p}": _read(p) for p in root.rglob("*") if p.is_file()}
    return {k: v for k, v in found.items() if v is not None}


@dataclass
class Launch:
    """What the one launch exposed, by place."""

    tmp: Path
    returncode: int
    stdout: str
    stderr: str
    argv: dict[str, bytes]  # per pid (with its command), while the job ran
    environ: dict[str, bytes]
    live_files: dict[str, bytes]  # spark.local.dir and the temporary directories, live
    events: dict[str, bytes]
    files: dict[str, bytes]  # every file under the launch's directory, after exit
    left: list[str]  # processes of the job still running 30 s after it returned

    def printed(self, name: str) -> object:
        found = re.search(rf"^{name}=(.*)$", self.stdout, re.MULTILINE)
        assert found, self.stdout[-3000:]
        return json.loads(found.group(1))


def _inputs(tmp: Path, store: LocalKeyStore) -> None:
    """Two encrypted CSV files of trips and one encrypted Parquet file of zones."""
    (tmp / "trips").mkdir()
    for i, rows in enumerate(TRIPS):
        plain = tmp / f"trips-{i}.csv"
        plain.write_text("zone,fare\n" + "".join(f"{z},{fare}\n" for z, fare in rows))
        encrypt_file(plain, tmp / "trips" / f"{plain.name}.tml", key_id="trips", keystore=store)
        plain.unlink()
    (tmp / "zones").mkdir()
    table = pa.table({"zone": list(ZONES), "borough": list(ZONES.values())})
    pq.write_table(table, tmp / "zones.parquet", row_group_size=2)
    encrypt_file(
        tmp / "zones.parquet", tmp / "zones" / "zones.parquet.tml", key_id="zones", keystore=store
    )
    (tmp / "zones.parquet").unlink()


@pytest.fixture(scope="module")
def keys(session_keys: KeyDirectory, tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    """A copy of the session key directory holding the job's KEKs."""
    copy = KeyDirectory(
        shutil.copytree(session_keys.path, tmp_path_factory.mktemp("jvm-secrets-keys") / "keys")
    )
    for kek in KEKS:
        LocalKeyStore(copy, Secret(PASSPHRASE)).create_kek(kek)
    return copy


@pytest.fixture(scope="module")
def store(keys: KeyDirectory) -> LocalKeyStore:
    return LocalKeyStore(keys, Secret(PASSPHRASE))


def _submit(keys: Path, passphrase_file: Path, tmp: Path) -> list[str]:
    return [sys.executable, "-m", "trustedml", "submit",
            "--keys", str(keys), "--passphrase-file", str(passphrase_file),
            *[arg for kek in KEKS for arg in ("--kek", kek)],
            "--no-ui", "--log-level", "INFO", "--local-dir", str(tmp / "scratch"),
            "--conf", "spark.sql.shuffle.partitions=4",
            # A secure job refuses an event log (policy "logs/redaction"); this one is
            # let through, as an expert would, because the test reads the log.
            "--conf", "spark.eventLog.enabled=true",
            "--conf", f"spark.eventLog.dir={tmp / 'events'}",
            "--conf", "spark.eventLog.compress=false",
            "--allow-insecure-conf", "spark.eventLog.enabled",
            "--allow-insecure-conf", "spark.eventLog.dir",
            "--allow-insecure-conf", "spark.eventLog.compress",
            str(PROBE), str(tmp / "ready"), str(tmp / "go"),
            str(tmp / "trips"), str(tmp / "zones"), str(tmp / "out"), "out"]  # fmt: skip


def _watch(proc: subprocess.Popen[bytes], tmp: Path) -> tuple[dict[str, bytes], ...]:
    """Once the job is READY: the argv and environment of each of its processes, and
    the files of spark.local.dir and the temporary directories (Spark deletes them on
    stop)."""
    deadline = time.monotonic() + 300
    while not (tmp / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            said = (tmp / "stderr").read_text()[-3000:]
            raise AssertionError(f"the job did not get ready: {said}")
        time.sleep(0.2)
    argv, environ = {}, {}
    for pid in _tree(proc.pid):
        cmd, envs = _read(Path(f"/proc/{pid}/cmdline")), _read(Path(f"/proc/{pid}/environ"))
        name = f"pid {pid} ({(cmd or b'').split(bytes(1))[0].decode(errors='replace')})"
        argv[name], environ[name] = cmd or b"", envs or b""
    live = {**_files(tmp / "scratch", "live"), **_files(tmp / "tmp", "live")}
    return argv, environ, live


def _left(argv: Mapping[str, bytes], wait: float = 30) -> list[str]:
    """The processes still running after ``wait`` seconds (the driver JVM may finish
    its shutdown hooks a moment after `trustedml` returns)."""
    deadline = time.monotonic() + wait
    while True:
        left = [name for name in argv if os.path.exists(f"/proc/{name.split()[1]}")]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="module")
def launch(
    keys: KeyDirectory,
    store: LocalKeyStore,
    session_passphrase_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Launch:
    """One secure submit at INFO with an event log; the test reads the process tree,
    its environments, spark.local.dir and the temporary directories while it waits."""
    tmp = tmp_path_factory.mktemp("jvm-secrets")
    _inputs(tmp, store)
    for name in ("events", "scratch", "tmp", "cwd"):
        (tmp / name).mkdir()
    env = cli_env(TMPDIR=str(tmp / "tmp"))
    # The JVM's temporary files land where the test looks too.
    env["JAVA_TOOL_OPTIONS"] += f" -Djava.io.tmpdir={tmp / 'tmp'}"
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("wb") as fout, err.open("wb") as ferr:
        command = _submit(keys.path, session_passphrase_file, tmp)
        proc = subprocess.Popen(command, stdout=fout, stderr=ferr, env=env, cwd=tmp / "cwd")
        try:
            argv, environ, live = _watch(proc, tmp)
        finally:
            (tmp / "go").write_text("go")
            proc.wait(timeout=120)
    return Launch(
        tmp, proc.returncode, out.read_text(), err.read_text(), argv, environ, live,
        _files(tmp / "events", "event log"), _files(tmp, "file"), _left(argv),
    )  # fmt: skip


@pytest.fixture(scope="module")
def secrets(launch: Launch, store: LocalKeyStore) -> dict[str, bytes]:
    """The KEKs, and the data key of every file the job read or wrote, unwrapped here
    from the file's header with its KEK."""
    keks = dict(
        entry.split(":", 1) for entry in store.keyring(KEKS).export().reveal_text().split(",")
    )
    found = {f"KEK {k}": base64.b64decode(v) for k, v in keks.items()}
    for path in sorted([*(launch.tmp / "trips").iterdir(), *(launch.tmp / "zones").iterdir(),
                        *(launch.tmp / "out").rglob("*.tml")]):  # fmt: skip
        header = framing.Header.parse(path.read_bytes(), str(path))
        kek = found[f"KEK {header.key_id}"]
        found[f"data key of {path.relative_to(launch.tmp)}"] = keywrap.unwrap(
            kek, header.key_id, header.wrapped_key
        )
    return found


def test_the_job_went_through_the_jvm_file_system(launch: Launch, store: LocalKeyStore) -> None:
    assert launch.returncode == 0, launch.stderr[-3000:]
    # Spark's own scans over tml:// paths, and Spark's own output names.
    assert re.search(r"FileScan csv .*Location: InMemoryFileIndex.*tml:/", launch.stdout)
    assert re.search(r"FileScan parquet .*tml:/", launch.stdout)
    outputs = sorted(p.name for p in (launch.tmp / "out").rglob("*.tml"))
    assert [n for n in outputs if n.endswith(".csv.tml") and n.startswith("part-")], outputs
    assert [n for n in outputs if n.endswith(".snappy.parquet.tml")], outputs
    assert outputs.count("_SUCCESS.tml") == 2
    # What it wrote is right, and readable by Python.
    want: dict[str, list[float]] = {}
    for z, fare in (row for rows in TRIPS for row in rows):
        want.setdefault(ZONES[z], []).append(fare)
    rows = launch.printed("ROWS")
    assert rows == [
        [b, pytest.approx(sum(f)), len(f), f"borough {b}"] for b, f in sorted(want.items())
    ]
    plain = launch.tmp / "plain"
    decrypt_path(launch.tmp / "out" / "csv", plain, keystore=store)
    (csv,) = plain.glob("part-*.csv")
    assert csv.read_text().splitlines()[0] == "borough,fares,trips,label"


def test_the_scan_is_real(launch: Launch, secrets: dict[str, bytes]) -> None:
    # 3 KEKs; 2 CSV + 1 Parquet read, 2 parts + 2 _SUCCESS written: 7 distinct data keys.
    assert len(secrets) == 3 + 7
    assert len(set(secrets.values())) == len(secrets)
    assert all(len(key) == 32 for key in secrets.values())
    # The scanner finds a secret planted in any of its forms in a control string.
    name, key = next((k, v) for k, v in secrets.items() if k.startswith("data key"))
    for how, text in encodings(key).items():
        planted = {"planted": b"26/12/04 10:00:00 INFO Control: key=" + text + b"\n"}
        found = hits(planted, secrets)
        assert f"{name} as {how} in planted" in found
        # (A base64 form without + or / is its url-safe form too.)
        assert all(hit.startswith(f"{name} as ") for hit in found), found
    # Something real was scanned: the driver JVM, the app and Spark's Python workers
    # (local[2]: the executors are threads of the driver JVM); an INFO log; an event
    # log with the job's SQL executions over tml:// paths; spark.local.dir, live.
    commands = b"\n".join(launch.argv.values())
    assert b"org.apache.spark.deploy.SparkSubmit" in commands
    assert PROBE.name.encode() in commands
    assert b"pyspark.daemon" in commands
    assert len(launch.stderr) > 10_000
    assert " INFO " in launch.stderr
    (log,) = [blob for place, blob in launch.events.items() if "/events_" in place]
    assert b"SparkListenerSQLExecutionStart" in log
    assert b"tml:/" in log
    assert b"SparkListenerEnvironmentUpdate" in log
    assert any("blockmgr-" in place for place in launch.live_files), sorted(launch.live_files)


def test_no_key_in_the_spark_or_hadoop_configuration(
    launch: Launch, secrets: dict[str, bytes]
) -> None:
    conf = dict(map(tuple, launch.printed("CONF")))  # type: ignore[arg-type]
    hadoop = launch.printed("HADOOP")
    assert conf["spark.hadoop.fs.tml.impl"] == "org.trustedml.fs.TmlFileSystem"
    assert isinstance(hadoop, dict)
    assert hadoop["fs.tml.impl"] == conf["spark.hadoop.fs.tml.impl"]
    blobs = {f"conf {k}": f"{k}={v}".encode() for k, v in conf.items()}
    blobs.update({f"hadoop conf {k}": f"{k}={v}".encode() for k, v in hadoop.items()})
    assert hits(blobs, secrets) == []


def test_no_key_in_any_argv(launch: Launch, secrets: dict[str, bytes]) -> None:
    assert hits(launch.argv, secrets) == []


def test_no_data_key_in_any_environment(launch: Launch, secrets: dict[str, bytes]) -> None:
    # The KEKs reach the job through its environment (submit --kek, job_keyring());
    # the data keys never leave memory.
    data_keys = {k: v for k, v in secrets.items() if k.startswith("data key")}
    assert hits(launch.environ, data_keys) == []


def test_no_key_in_the_event_log_the_logs_or_any_file(
    launch: Launch, secrets: dict[str, bytes]
) -> None:
    blobs = {"stdout": launch.stdout.encode(), "stderr": launch.stderr.encode()}
    assert hits({**blobs, **launch.events, **launch.live_files, **launch.files}, secrets) == []


def test_nothing_is_left_running(launch: Launch) -> None:
    assert launch.argv
    assert launch.left == []
