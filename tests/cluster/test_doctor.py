"""`trustedml doctor --cluster`: stand-in daemon processes show every live check (secrets
in argv, wildcard listeners, the REST port, plain UIs, a shared secret, hosts without an
overlay); a real secure cluster passes and a real plain one is flagged."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cluster.conftest import cluster_options
from tests.cluster.local import LocalCluster
from tests.conftest import run_cli
from trustedml.cli import cli  # noqa: TID251  (a test of the CLI itself)
from trustedml.cluster import (
    ClusterDir,
    ClusterState,
    DaemonState,
    lint_cluster,
    start_master,
    stop_cluster,
)
from trustedml.cluster._process import process_tree
from trustedml.errors import ClusterStateError
from trustedml.spark import LINT_RULES, Severity, read_properties

ARGV_SECRET = "literal-secret-in-argv"
CONF_PASSWORD = "literal-password-in-conf"
FINGERPRINT = "0123456789abcdef"
# The stand-in master: listens where the REST server would, starts a child (in a
# network namespace of its own, as a namespaced worker's processes are) that listens
# on every interface there and carries a secret in its arguments.
CHILD = """\
import socket, sys, time
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(600)
"""
PARENT = """\
import socket, subprocess, sys, time
rest = socket.socket()
rest.bind(("127.0.0.1", int(sys.argv[1])))
rest.listen()
child = subprocess.Popen(
    ["unshare", "--net", sys.executable, "-c", sys.argv[2],
     "--conf", "spark.authenticate.secret=%s" % sys.argv[3]],
    stdout=subprocess.PIPE, text=True,
)
print(child.stdout.readline().strip(), child.pid, flush=True)
time.sleep(600)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _daemon(daemon_id: str, pid: int, pgid: int, host: str, ui: str) -> DaemonState:
    return DaemonState(
        id=daemon_id,
        role="master" if daemon_id == "master" else "worker",
        pid=pid,
        pgid=pgid,
        host=host,
        port=7077,
        webui_port=8080,
        ui_url=ui,
        measurement=None,
        log=f"logs/{daemon_id}.log",
        started="2026-12-04T18:00:00Z",
    )


def _cluster_dir(path: Path, state: ClusterState, conf: str) -> ClusterDir:
    directory = ClusterDir(path)
    directory.save(state)
    directory.conf_file.write_text(conf)
    return directory


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[tuple[ClusterDir, ClusterDir, int, int, int]]:
    """Two cluster directories sharing a secret fingerprint: A (stand-in master on
    127.0.0.1, a worker recorded on 198.18.0.11, no overlay; AES/CTR, a literal password
    and plaintext collectives allowed in its properties) and B (another master's, no
    daemon here; authentication off)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a network namespace of the child")
    rest_port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(rest_port), CHILD, ARGV_SECRET],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert len(line) == 2, "the stand-in daemon did not start"
        child_port, child = int(line[0]), int(line[1])
        a = _cluster_dir(
            tmp_path / "a",
            ClusterState(
                master_url="spark://127.0.0.1:7077",
                secure=True,
                tee="none",
                secret_fingerprint=FINGERPRINT,
                daemons=(
                    _daemon("master", proc.pid, proc.pid, "127.0.0.1", "http://127.0.0.1:8080"),
                    _daemon("worker-1", child, proc.pid, "198.18.0.11", "https://x:8481"),
                ),
            ),
            "spark.authenticate=true\nspark.network.crypto.enabled=true\n"
            f"spark.ssl.enabled=true\nspark.master.rest.port={rest_port}\n"
            f"spark.ssl.keyStorePassword={CONF_PASSWORD}\n"
            "spark.trustedml.allowPlaintextCollectives=true\n",
        )
        b = _cluster_dir(
            tmp_path / "b",
            # A worker host's directory: the master (the stand-in's port) is elsewhere.
            ClusterState("spark://127.0.0.1:7078", False, "none", FINGERPRINT),
            f"spark.authenticate=false\nspark.master.rest.port={rest_port}\n",
        )
        yield a, b, proc.pid, child, child_port
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_stand_in_daemons_give_every_rule(
    stand_in: tuple[ClusterDir, ClusterDir, int, int, int],
) -> None:
    a, b, parent, child, child_port = stand_in
    findings = lint_cluster([a.path, b.path])
    assert {f.id for f in findings} == set(LINT_RULES)
    by = {(f.id, f.where) for f in findings}
    # The child is the master's descendant, found once, in its own namespace's table.
    assert ("TML-C009", f"master (pid {child})") in by
    assert [f.title for f in findings if f.id == "TML-C012"] == [
        f"{LINT_RULES['TML-C012'].summary}: listening on 0.0.0.0:{child_port}"
    ]
    assert not any(f.where == f"master (pid {parent})" for f in findings)  # its REST is 127.0.0.1
    assert ("TML-C011", "master") in by
    assert ("TML-C011", "worker-1") not in by
    assert ("TML-C010", f"{a.state_file}, {b.state_file}") in by
    assert ("TML-C015", str(a.state_file)) in by
    assert ("TML-C013", f"{a.conf_file}:6") in by
    assert ("TML-C008", f"{a.conf_file}:5") in by
    assert ("TML-C002", str(a.conf_file)) in by
    assert ("TML-C003", f"{b.conf_file}:1") in by
    rest_port = read_properties(a.conf_file)[3].value
    rest = sorted((f.where, f.title.rpartition(": ")[2]) for f in findings if f.id == "TML-C005")
    assert rest == [
        (f"master 127.0.0.1:{rest_port}", "a TCP connection to it succeeded"),  # B: connected
        (f"master 127.0.0.1:{rest_port}", "the master listens on it"),  # A: its own socket
    ]

    result = run_cli(["doctor", "--cluster", str(a.path), "--cluster", str(b.path), "--json"])
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert {f["id"] for f in doc["findings"]} == set(LINT_RULES)
    assert ARGV_SECRET not in result.stdout
    assert CONF_PASSWORD not in result.stdout


def test_overlay_and_one_cluster_clear_their_findings(
    stand_in: tuple[ClusterDir, ClusterDir, int, int, int],
) -> None:
    a, _, _, _, _ = stand_in
    a.save(replace(a.load(), overlay={"cidr": "198.19.0.0/24", "address": "198.19.0.1"}))
    ids = {f.id for f in lint_cluster([a.path])}
    # Through the overlay the collectives cross hosts inside TLS.
    assert not ids & {"TML-C013", "TML-C015"}
    assert "TML-C010" not in ids  # one cluster, one secret
    a.conf_file.unlink()
    with pytest.raises(ClusterStateError, match=r"spark\.properties"):
        lint_cluster([a.path])


@pytest.mark.parametrize("case", ["corrupt", "binary", "missing", "no-conf"])
def test_cli_malformed_cluster_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    directory = ClusterDir(tmp_path / "c")
    if case != "missing":
        directory.create()
        data = {"corrupt": b'{"format": 1, "master_url": ', "binary": b"\x00\xff\xfe"}
        directory.state_file.write_bytes(
            data.get(
                case, json.dumps(ClusterState("spark://h:1", True, "none", None).to_json()).encode()
            )
        )
        directory.state_file.chmod(0o600)
    result = CliRunner().invoke(cli, ["doctor", "--cluster", str(directory.path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert str(directory.path) in lines[0]


@pytest.fixture
def secure_cluster(local_cluster: LocalCluster) -> ClusterDir:
    """trusted-ml's own cluster: a master and two workers on 127.0.0.1 (the one
    tests/cluster/local.py shares)."""
    return local_cluster.running().master_dir


@pytest.mark.spark
@pytest.mark.slow
def test_secure_cluster_passes(secure_cluster: ClusterDir) -> None:
    assert lint_cluster([secure_cluster.path]) == []
    result = run_cli(["doctor", "--cluster", str(secure_cluster.path), "--json"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"ok": True, "findings": []}


@pytest.mark.spark
@pytest.mark.slow
def test_plain_cluster_is_flagged(tmp_path: Path) -> None:
    directory = ClusterDir(tmp_path / "plain")
    rest_port = _free_port()  # Spark's default 6066 may be another test's
    options = replace(
        cluster_options(secure=False), extra_conf={"spark.master.rest.port": str(rest_port)}
    )
    pids: set[int] = set()
    try:
        state = start_master(directory, options, keys=None, passphrase=None, port=0, webui_port=0)
        pids = {d.pid for d in state.daemons}
        findings = lint_cluster([directory.path])
        result = CliRunner().invoke(cli, ["doctor", "--cluster", str(directory.path)])
        assert result.exit_code == 1, result.output
    finally:
        stop_cluster(directory)
        assert not process_tree(pids), "a daemon is left after stop"
    by = {(f.id, f.where) for f in findings}
    conf = str(directory.conf_file)
    assert {("TML-C001", conf), ("TML-C003", conf), ("TML-C006", conf), ("TML-C007", conf)} <= by
    assert ("TML-C005", f"master 127.0.0.1:{rest_port}") in by  # Spark 4.3 opens it by default
    assert ("TML-C011", "master") in by
    assert "TML-C012" not in {f.id for f in findings}  # the daemons bind 127.0.0.1 only
    assert any(f.severity is Severity.HIGH for f in findings)
