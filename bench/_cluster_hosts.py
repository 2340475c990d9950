"""Two Spark standalone clusters on the same two test hosts, for bench/cluster.py: a
secure one (daemons under a TEE backend, the secure settings) and a plain one.

The hosts are network namespaces of tests/cluster/netns.py (TestNet): both masters bind
the gateway (one port each), and each host runs one worker of each cluster, started in
its namespace the way an operator starts one on a real host (its own cluster directory,
`start_worker`). ``python -m bench._cluster_hosts worker ...`` is that start, run through
``ip netns exec``; the passphrase comes on stdin, never in argv.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bench._tpch_driver import BenchError
from trustedml import Secret, SparkSettings, TrustedMLError
from trustedml.cluster import ClusterDir, ClusterOptions, start_master, start_worker, stop_cluster
from trustedml.keys import KeyDirectory
from trustedml.tee import get_backend

if TYPE_CHECKING:
    from tests.cluster.netns import Host, TestNet

MODES = ("secure", "plain")
MASTER_PORT = 7077
MASTER_WEBUI_PORT = 8080
WORKER_CORES = 1
WORKER_MEMORY = "3g"
START_TIMEOUT = 180


class Overlay(NamedTuple):
    """The overlay network of a cluster (its CIDR) and the TUN device name on each host."""

    cidr: str
    iface: str


class HostsError(BenchError):
    """The test hosts or a cluster on them could not be started."""


def _options(mode: str, host: str, tee: str, keys: Path) -> ClusterOptions:
    if mode != "secure":
        return ClusterOptions(host=host, secure=False)
    # The sim backend signs evidence with a key of this run, next to its key directory.
    options = {"key_path": keys.parent / "sim.key"} if tee == "sim" else {}
    return ClusterOptions(host=host, tee=get_backend(tee, **options), secure=True)


def _start_worker_on(
    host: Host,
    directory: Path,
    master_url: str,
    mode: str,
    tee: str,
    keys: Path,
    passphrase: Secret,
    overlay: Overlay | None = None,
) -> None:
    argv = [
        sys.executable, "-m", "bench._cluster_hosts", "worker",
        "--dir", str(directory), "--master", master_url, "--host", host.address,
        "--mode", mode, "--tee", tee, "--keys", str(keys),
    ]  # fmt: skip
    if overlay is not None:
        argv += ["--overlay", overlay.cidr, "--iface", overlay.iface]
    proc = subprocess.run(
        host.argv(argv),
        input=passphrase.reveal_text() + "\n",
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT + 30,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode != 0:
        raise HostsError(
            f"{mode} worker on {host.name}: exit {proc.returncode}\n{proc.stderr.strip()}"
        )


def _stop_all(directories: Sequence[Path]) -> list[str]:
    problems = []
    for directory in reversed(directories):
        cluster = ClusterDir(directory)
        if cluster.load_or_none() is None:
            continue
        try:
            stop_cluster(cluster)
        except TrustedMLError as exc:
            problems.append(f"{directory}: {exc}")
    return problems


def _report_problems(problems: Sequence[str]) -> None:
    if problems:
        print("\n".join(problems), file=sys.stderr)


@contextlib.contextmanager
def two_clusters(
    root: Path,
    keys: KeyDirectory,
    passphrase: Secret,
    tee: str,
    settings_for: Callable[[str, str, str], SparkSettings],
) -> Iterator[dict[str, SparkSettings]]:
    """Start both clusters on a fresh 2-host TestNet; yield mode -> the driver's settings
    (``settings_for(mode, master_url, gateway)``); stop every daemon and remove the
    network afterwards, also on failure."""
    directories: list[Path] = []
    with _test_net() as net:
        try:
            settings: dict[str, SparkSettings] = {}
            for i, mode in enumerate(MODES):
                master_dir = root / "clusters" / mode / "master"
                directories.append(master_dir)
                state = start_master(
                    master_dir,
                    _options(mode, net.gateway, tee, keys.path),
                    keys=keys,
                    passphrase=passphrase,
                    port=MASTER_PORT + i,
                    webui_port=MASTER_WEBUI_PORT + i,
                    timeout=START_TIMEOUT,
                )
                for host in net.hosts:
                    worker_dir = root / "clusters" / mode / host.name
                    directories.append(worker_dir)
                    _start_worker_on(
                        host, worker_dir, state.master_url, mode, tee, keys.path, passphrase
                    )
                workers = ", ".join(h.address for h in net.hosts)
                print(f"{mode} cluster: {state.master_url}, workers on {workers}", file=sys.stderr)
                settings[mode] = settings_for(mode, state.master_url, net.gateway)
            yield settings
        finally:
            _report_problems(_stop_all(directories))


@contextlib.contextmanager
def _test_net() -> Iterator[TestNet]:
    import pytest
    from tests.cluster.netns import TestNet

    net = TestNet(hosts=2)
    try:
        net.start()
    except pytest.skip.Exception as exc:
        raise HostsError(f"no test hosts: {exc.msg}; `--local` runs without them") from None
    try:
        yield net
    finally:
        net.close()
        if net.killed:
            print(f"processes left in the namespaces were killed: {net.killed}", file=sys.stderr)


@contextlib.contextmanager
def overlay_cluster(
    root: Path, keys: KeyDirectory, passphrase: Secret, tee: str
) -> Iterator[tuple[str, str]]:
    """A secure cluster on the overlay (the only way training may cross hosts): the
    master and the hub on the gateway, one worker in each of two namespaces. Yields the
    master URL and the driver's address, both on the overlay."""
    from trustedml.cluster import start_master_on_overlay

    directories: list[Path] = []
    with _test_net() as net:
        # Not the default tml0: other clusters on this machine may hold that name.
        overlay = Overlay(f"198.19.{net.k}.0/24", f"tmlb{net.k}")
        try:
            master_dir = root / "clusters" / "overlay" / "master"
            directories.append(master_dir)
            state = start_master_on_overlay(
                master_dir,
                _options("secure", net.gateway, tee, keys.path),
                overlay.cidr,
                keys=keys,
                passphrase=passphrase,
                iface=overlay.iface,
                timeout=START_TIMEOUT,
            )
            assert state.overlay is not None
            for host in net.hosts:
                worker_dir = root / "clusters" / "overlay" / host.name
                directories.append(worker_dir)
                _start_worker_on(
                    host,
                    worker_dir,
                    f"spark://{net.gateway}:{MASTER_PORT}",
                    "secure",
                    tee,
                    keys.path,
                    passphrase,
                    overlay,
                )
            print(f"overlay cluster: {state.master_url}", file=sys.stderr)
            yield state.master_url, str(state.overlay["address"])
        finally:
            _report_problems(_stop_all(directories))


def _worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._cluster_hosts worker")
    for option in ("--dir", "--master", "--host", "--mode", "--tee", "--keys"):
        parser.add_argument(option, required=True)
    parser.add_argument("--overlay", help="join the master's overlay of this CIDR")
    parser.add_argument("--iface", help="the overlay's TUN device name")
    args = parser.parse_args(argv)
    passphrase = Secret(sys.stdin.readline().rstrip("\n"))
    options = _options(args.mode, args.host, args.tee, Path(args.keys))
    common: dict[str, Any] = {
        "keys": KeyDirectory(args.keys),
        "passphrase": passphrase,
        "cores": WORKER_CORES,
        "memory": WORKER_MEMORY,
        "timeout": START_TIMEOUT,
    }
    try:
        if args.overlay:
            from trustedml.cluster import start_worker_on_overlay

            start_worker_on_overlay(
                Path(args.dir), options, args.master, args.overlay, iface=args.iface, **common
            )
        else:
            start_worker(Path(args.dir), options, args.master, **common)
    except TrustedMLError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m bench._cluster_hosts worker --dir D --master URL ...")
    sys.exit(_worker_main(sys.argv[2:]))
