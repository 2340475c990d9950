"""Acceptance on the wire (issue 14): a master on the test bridge and two workers in their
own network namespaces, secure with --tee sim daemons, then the same hosts as a plain
cluster for contrast.

One secure application serves every secure check, watched by tcpdump on the bridge:
pi, wordcount and SQL basic (the examples, in the one driver); a shuffle-heavy job
with a Python UDF over rows holding a random marker; a multi-stage job that pauses
half-way so the test can look at the listeners (ss), the REST port and the status,
then SIGKILL one worker's process group; the job finishes on the other worker. Then
the cluster is stopped and no process may remain. The plain cluster runs the marker
job alone: its capture must show the marker (so the secure count of 0 can fail).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.capture import Capture, Flow, classify
from tests.cluster.conftest import RunningCluster, running_cluster
from tests.cluster.netns import TestNet
from tests.conftest import EXAMPLES, cli_env, run_cli
from trustedml import KeyDirectory
from trustedml.cluster import ClusterStatus, cluster_status
from trustedml.cluster._process import process_tree

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROWS = 20_000
JOB_TIMEOUT = 420.0

# The one driver of each cluster. Written next to the test's files and submitted.
APP = '''"""The wire tests' driver: examples, the marker shuffle, a multi-stage job that
pauses (READY/GO files) for a worker to be killed half-way."""
import runpy
import sys
import time
import urllib.request
from operator import add
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def examples(scripts):
    # Every example stops its session; here they share one application (one set of
    # executors) instead of starting a new one each.
    stop, SparkSession.stop = SparkSession.stop, lambda self: None
    try:
        for script, *args in scripts:
            print(f"=== {Path(script).name}", flush=True)
            sys.argv = [script, *args]
            runpy.run_path(script, run_name="__main__")
            sys.stdout.flush()
    finally:
        SparkSession.stop = stop


def marker_shuffle(spark, marker, rows):
    # The rows travel from the driver in the tasks, through a Python UDF, across a
    # shuffle between the workers and back to the driver.
    data = [(i % 97, f"{marker}:{i}") for i in range(rows)]
    df = spark.createDataFrame(spark.sparkContext.parallelize(data, 4), "k long, v string")
    tagged = F.udf(lambda v: v + "/udf", "string")
    grouped = (
        df.select("k", tagged("v").alias("v"))
        .repartition(4, "k")
        .groupBy("k")
        .agg(F.collect_list("v").alias("vs"))
    )
    out = grouped.select("k", F.size("vs").alias("n"), F.sort_array("vs")[0].alias("first"))
    result = out.collect()
    print("marker groups:", len(result), "rows:", sum(r.n for r in result), flush=True)
    print("marker sample ok:", all(r.first.startswith(marker) for r in result), flush=True)


def paused_multi_stage(spark, ready, go):
    def hold(pair):
        # Every task of the middle stage waits here until the test says GO.
        Path(ready).touch()
        deadline = time.monotonic() + 240
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return pair

    sc = spark.sparkContext
    first = sc.parallelize(range(40_000), 4).map(lambda x: (x % 100, x)).reduceByKey(add, 4)
    second = first.map(hold).map(lambda kv: (kv[0] % 10, kv[1])).reduceByKey(add, 2)
    print("multi-stage total:", sum(v for _, v in second.collect()), flush=True)


def main():
    marker, rows, ready, go, *rest = sys.argv[1:]
    scripts = [[]]
    for arg in rest:
        if arg == "---":
            scripts.append([])
        else:
            scripts[-1].append(arg)
    spark = SparkSession.builder.appName("wire").getOrCreate()
    if scripts[0]:
        examples(scripts)
    marker_shuffle(spark, marker, int(rows))
    if ready != "-":
        paused_multi_stage(spark, ready, go)
    spark.stop()


main()
'''


@dataclass
class Run:
    """What one cluster's run left for the tests to check."""

    net: TestNet
    marker: bytes
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    flows: list[Flow] = field(default_factory=list)
    marker_hits: int = -1
    dropped: int = -1
    listeners: dict[str, list[str]] = field(default_factory=dict)
    rest_port: str = ""
    status_running: ClusterStatus | None = None
    status_after_kill: dict[str, Any] = field(default_factory=dict)
    stop_output: list[tuple[int, str]] = field(default_factory=list)
    worker_uis: dict[str, dict[str, Any]] = field(default_factory=dict)
    killed_worker: str = ""
    pids: list[int] = field(default_factory=list)
    left_after_stop: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def net() -> Iterator[TestNet]:
    with TestNet(2) as testnet:
        yield testnet
    assert testnet.killed == [], f"processes left in the test hosts: {testnet.killed}"


def _listeners(argv_prefix: list[str], pids: set[int] | None) -> list[str]:
    """`ss -ltnp` lines (listening TCP sockets), only those of `pids` when given."""
    shown = subprocess.run(
        [*argv_prefix, "ss", "-Hltnp"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    if pids is None:
        return shown
    return [line for line in shown if any(f"pid={pid}," in line for pid in pids)]


def _alive(pid: int) -> bool:
    """A process that runs (a zombie has ended: only its exit status waits for a parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wildcard(lines: list[str]) -> list[str]:
    # ss prints the local address in the 4th column: 0.0.0.0:P, *:P, [::]:P, [::ffff:0.0.0.0]:P
    return [
        line
        for line in lines
        if re.match(r"^(0\.0\.0\.0|\*|\[::\]|\[::ffff:0\.0\.0\.0\]):\d+$", line.split()[3])
    ]


def _rest_port(address: str) -> str:
    try:
        with socket.create_connection((address, 6066), timeout=3):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc}"


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job ended before {path.name}: {out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {path.name} within {timeout:.0f} s")
        time.sleep(0.2)


def _left_behind(run: Run, root: Path) -> list[str]:
    """What still runs of a stopped cluster: its recorded PIDs, anything in the test
    hosts' namespaces, anything naming its directories."""
    left = []
    for pid in run.pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # the master is this process's child: reap it
        if _alive(pid):
            left.append(f"recorded pid {pid}")
    for host in run.net.hosts:
        left += [f"{host.name}: pid {pid}" for pid in host.pids()]
    found = subprocess.run(["pgrep", "-af", str(root)], capture_output=True, text=True)
    return left + found.stdout.splitlines()


@contextlib.contextmanager
def _submitted(
    run: Run, tmp: Path, master_url: str, secure: list[str], app_args: list[str]
) -> Iterator[subprocess.Popen[str]]:
    """`trustedml submit` of the wire app, in a process group of its own so that a test
    failing half-way still ends the driver (its JVM included)."""
    app = tmp / "wire_app.py"
    app.write_text(APP)
    argv = [sys.executable, "-m", "trustedml", "submit", "--master", master_url, "--no-ui"]
    # The workers of the test clusters have 512m: executors take what fits.
    argv += ["--driver-host", run.net.gateway, "--conf", "spark.executor.memory=512m"]
    argv += [*secure, str(app), *app_args]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=tmp,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _finish(proc: subprocess.Popen[str], run: Run) -> None:
    try:
        run.stdout, run.stderr = proc.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        run.stdout, run.stderr = proc.communicate()
    run.returncode = proc.returncode


@contextlib.contextmanager
def _captured_cluster(run: Run, tmp: Path, keys: KeyDirectory | None) -> Iterator[RunningCluster]:
    """A master on the gateway and a worker in each test host (secure with --tee sim when
    given keys, else plain), captured on the bridge from before the first daemon starts
    to after the last stops."""
    started, secure = time.monotonic(), keys is not None
    try:
        with (
            Capture(run.net.bridge, tmp / "wire.pcap") as cap,
            running_cluster(tmp, keys, secure=secure, sim=secure, net=run.net) as cluster,
        ):
            run.pids = sorted(cluster.pids)
            run.timings["cluster up"] = time.monotonic() - started
            yield cluster
        run.flows = cap.flows()
        run.marker_hits = cap.count(run.marker)
        run.dropped = cap.dropped
    finally:
        run.left_after_stop = _left_behind(run, tmp)
    run.timings["all"] = time.monotonic() - started
    kinds = Counter(classify(flow) for flow in run.flows)
    print(f"\n{'secure' if secure else 'plain'} run: {run.timings}, {len(run.flows)} flows")
    print(f"  {dict(kinds)}, marker hits {run.marker_hits}, dropped {run.dropped}")


@pytest.fixture(scope="module")
def secure_run(
    net: TestNet,
    tmp_path_factory: pytest.TempPathFactory,
    session_keys: KeyDirectory,
    session_passphrase_file: Path,
) -> Run:
    tmp = tmp_path_factory.mktemp("wire-secure")
    run = Run(net, marker=("tml-marker-" + os.urandom(6).hex()).encode())
    ready, go = tmp / "READY", tmp / "GO"
    secure = [
        "--keys", str(session_keys.path), "--passphrase-file", str(session_passphrase_file),
        "--tee", "sim", "--sim-key", str(tmp / "sim-key.pem"),
    ]  # fmt: skip
    examples = [
        str(EXAMPLES / "pi.py"), "4", "---",
        str(EXAMPLES / "wordcount.py"), str(EXAMPLES / "sql_basic.py"), "---",
        str(EXAMPLES / "sql_basic.py"), str(EXAMPLES / "resources"),
    ]  # fmt: skip
    with _captured_cluster(run, tmp, session_keys) as cluster:
        started = time.monotonic()
        args = [run.marker.decode(), str(ROWS), str(ready), str(go), *examples]
        with _submitted(run, tmp, cluster.master_url, secure, args) as proc:
            _wait_for(ready, proc, JOB_TIMEOUT)
            run.timings["job to the pause"] = time.monotonic() - started
            _look_while_running(run, cluster, proc)
            victim = cluster.worker_dirs[1].load().workers[0]
            run.killed_worker = victim.id + "@" + victim.host
            os.killpg(victim.pgid, signal.SIGKILL)
            go.touch()
            _finish(proc, run)
        run.timings["job"] = time.monotonic() - started
        run.status_after_kill = _status_with_lost(cluster, session_keys)
        run.timings["lost worker reported"] = time.monotonic() - started
        for directory in [*cluster.worker_dirs, cluster.master_dir]:
            stopped = run_cli(["cluster", "stop", "--dir", str(directory.path)])
            run.stop_output.append((stopped.returncode, stopped.stdout + stopped.stderr))
    return run


def _look_while_running(run: Run, cluster: RunningCluster, proc: subprocess.Popen[str]) -> None:
    """At the pause: every process exists (master, workers, executors, Python workers)."""
    run.listeners["gateway"] = _listeners([], process_tree({*cluster.pids, proc.pid}))
    for host in run.net.hosts:
        run.listeners[host.name] = _listeners(host.argv([]), None)
    run.rest_port = _rest_port(run.net.gateway)
    run.status_running = cluster_status(cluster.master_dir, ca=cluster.ca)
    # Each worker's UI from the gateway: HTTPS across the bridge, pinned to the CA.
    assert cluster.ca is not None
    context = ssl.create_default_context(cafile=str(cluster.ca))
    context.check_hostname = False  # the certificate names the key directory's host
    for directory in cluster.worker_dirs:
        (worker,) = directory.load().workers
        url = worker.ui_url + "/json/"
        with urllib.request.urlopen(url, timeout=10, context=context) as answer:  # noqa: S310
            run.worker_uis[worker.host] = json.loads(answer.read())


def _status_with_lost(cluster: RunningCluster, keys: KeyDirectory) -> dict[str, Any]:
    """`trustedml cluster status --json` once it reports a lost worker (or after 60 s)."""
    argv = ["cluster", "status", "--dir", str(cluster.master_dir.path), "--keys", str(keys.path)]
    deadline = time.monotonic() + 60
    while True:
        shown = run_cli([*argv, "--json"])
        assert shown.returncode == 0, shown.stderr
        status: dict[str, Any] = json.loads(shown.stdout)
        if status["lost_workers"] or time.monotonic() > deadline:
            return status
        time.sleep(1)


@pytest.fixture(scope="module")
def plain_run(net: TestNet, tmp_path_factory: pytest.TempPathFactory, secure_run: Run) -> Run:
    """The same hosts as a plain cluster (after the secure one is gone): the marker job."""
    tmp = tmp_path_factory.mktemp("wire-plain")
    run = Run(net, marker=("tml-marker-" + os.urandom(6).hex()).encode())
    with _captured_cluster(run, tmp, None) as cluster:
        args = [run.marker.decode(), str(ROWS), "-", "-"]
        started = time.monotonic()
        with _submitted(run, tmp, cluster.master_url, ["--insecure"], args) as proc:
            _finish(proc, run)
        run.timings["job"] = time.monotonic() - started
    return run


# -- the secure cluster -------------------------------------------------------------------


def _printed(run: Run) -> dict[str, str]:
    assert run.returncode == 0, run.stderr[-4000:]
    parts = re.split(r"^=== (\S+)\n", run.stdout, flags=re.MULTILINE)
    printed = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert list(printed) == ["pi.py", "wordcount.py", "sql_basic.py"], run.stdout
    return printed


def test_the_examples_run_on_the_secure_cluster(secure_run: Run) -> None:
    printed = _printed(secure_run)
    match = re.match(r"Pi is roughly (\d\.\d+)\n", printed["pi.py"])
    assert match, printed["pi.py"]
    assert abs(float(match.group(1)) - math.pi) < 0.01
    words = [
        w
        for line in (EXAMPLES / "sql_basic.py").read_text().splitlines()
        for w in line.split(" ")
        if w
    ]
    counts = dict(line.rsplit(": ", 1) for line in printed["wordcount.py"].splitlines())
    assert int(counts["import"]) == words.count("import") > 0
    sql = printed["sql_basic.py"]
    assert "|  19| Justin|" in sql
    assert "Name: Justin" in sql


def test_the_marker_job_ran_across_both_workers_and_the_wire_never_showed_it(
    secure_run: Run,
) -> None:
    run = secure_run
    assert f"marker groups: 97 rows: {ROWS}\n" in run.stdout
    assert "marker sample ok: True\n" in run.stdout
    assert run.dropped == 0, "the capture lost packets: a count of 0 would prove nothing"
    one, two = (h.address for h in run.net.hosts)
    between_workers = [f for f in run.flows if {f.client[0], f.server[0]} == {one, two}]
    assert between_workers, "no connection between the workers: the shuffle did not cross hosts"
    assert run.marker_hits == 0


def test_every_flow_between_the_hosts_is_encrypted(secure_run: Run) -> None:
    kinds = {str(flow): classify(flow) for flow in secure_run.flows}
    assert sum(1 for k in kinds.values() if k == "spark-rpc-encrypted") >= 4, kinds
    # The workers' UIs answered the test over HTTPS: those flows are TLS.
    assert {host: ui["cores"] for host, ui in secure_run.worker_uis.items()} == {
        host.address: 1 for host in secure_run.net.hosts
    }
    assert list(kinds.values()).count("tls") >= 2, kinds
    readable = {
        name: kind
        for name, kind in kinds.items()
        if kind not in ("spark-rpc-encrypted", "tls", "empty")
    }
    assert readable == {}
    assert all(flow.gaps == 0 for flow in secure_run.flows)


def test_rest_port_closed_and_nothing_listens_on_a_wildcard_address(secure_run: Run) -> None:
    run = secure_run
    assert run.rest_port == "refused"
    for where, lines in run.listeners.items():
        assert lines, f"{where}: no listener of the cluster found (ss saw nothing of ours)"
        assert _wildcard(lines) == [], f"{where} listens on a wildcard address"
    # The workers and their executors listen in their namespaces, on their own address.
    for host in run.net.hosts:
        assert all(
            host.address in line.split()[3] or "127.0.0.1" in line.split()[3]
            for line in run.listeners[host.name]
        )


def test_a_killed_worker_is_reported_lost_and_the_job_completes_on_the_other(
    secure_run: Run,
) -> None:
    run = secure_run
    assert run.status_running is not None
    assert len(run.status_running.alive_workers) == 2
    assert run.status_running.active_apps
    assert "multi-stage total: 799980000\n" in run.stdout, run.stderr[-4000:]
    # `trustedml cluster status --json` on the master's host, after the kill.
    status = run.status_after_kill
    workers = {w["id"]: w for w in status["workers"]}
    (lost,) = status["lost_workers"]
    assert workers[lost]["host"] == run.killed_worker.split("@")[1]
    assert workers[lost]["state"] != "ALIVE"
    assert status["alive_workers"] == 1
    alive = [w["host"] for w in workers.values() if w["state"] == "ALIVE"]
    assert alive == [run.net.hosts[0].address]


def test_stop_leaves_no_process(secure_run: Run, plain_run: Run) -> None:
    # `trustedml cluster stop` on each host of the secure cluster (the killed worker's
    # too: its directory still records it); the library's stop for the plain one.
    assert [code for code, _ in secure_run.stop_output] == [0, 0, 0], secure_run.stop_output
    assert secure_run.pids
    assert secure_run.left_after_stop == []
    assert plain_run.left_after_stop == []


# -- the plain cluster, for contrast ----------------------------------------------------------


def test_the_plain_cluster_shows_the_marker_and_readable_flows(plain_run: Run) -> None:
    run = plain_run
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"marker groups: 97 rows: {ROWS}\n" in run.stdout
    assert run.dropped == 0
    # Spark compresses shuffle blocks and large tasks (LZ4), so not every row shows; the
    # rows inside the tasks the driver sends do.
    assert run.marker_hits > 100
    one, two = (h.address for h in run.net.hosts)
    shuffle = [f for f in run.flows if {f.client[0], f.server[0]} == {one, two}]
    assert shuffle
    assert "plaintext" in {classify(f) for f in shuffle}
