"""`trustedml cluster`: start, inspect and stop a trusted Spark standalone cluster."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from trustedml import KeyDirectory, Secret
from trustedml.cli._common import (
    ENV_KEYS,
    Group,
    default_sim_key_path,
    err_console,
    get_passphrase,
    out_console,
    passphrase_options,
    stacked,
)
from trustedml.cli.jobs import INSECURE_BANNER, show_plan
from trustedml.cluster import (
    DEFAULT_IFACE,
    MASTER_PORT,
    ClusterDir,
    ClusterOptions,
    ClusterState,
    ClusterStatus,
    check_daemon_backend,
    cluster_status,
    daemon_logs,
    start_cluster,
    start_cluster_on_overlay,
    start_master,
    start_master_on_overlay,
    start_worker,
    start_worker_on_overlay,
    stop_cluster,
)
from trustedml.jobs import parse_conf
from trustedml.tee import BACKEND_NAMES, ENV_SIM_KEY, LaunchPlan, TeeBackend, get_backend

ENV_CLUSTER_DIR = "TRUSTEDML_CLUSTER_DIR"

dir_option = click.option(
    "--dir",
    "cluster_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV_CLUSTER_DIR,
    help=f"This host's cluster directory: state, conf, logs (env {ENV_CLUSTER_DIR}).",
)
keys_option = click.option(
    "--keys",
    "keys_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    envvar=ENV_KEYS,
    help=f"Key directory (env {ENV_KEYS}): the cluster secret, TLS and the CA come from it.",
)

daemon_options = stacked(
    dir_option,
    keys_option,
    passphrase_options,
    click.option(
        "--tee",
        type=click.Choice(BACKEND_NAMES),
        default="none",
        show_default=True,
        help="Where the daemons run: none (the host), sim (simulated TEE, NO protection), "
        "cvm (inside a TDX/SEV-SNP confidential VM); gramine cannot run a daemon yet.",
    ),
    click.option(
        "--sim-key",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=ENV_SIM_KEY,
        help=f"--tee sim: key that signs sim evidence, created if missing (env {ENV_SIM_KEY}).",
    ),
    click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        help="Address the daemons bind and advertise (the one the other hosts reach).",
    ),
    click.option(
        "--conf",
        "confs",
        multiple=True,
        metavar="KEY=VALUE",
        help="Extra Spark property for the daemons (repeatable; a secure cluster takes "
        "only the allow-listed ones).",
    ),
    click.option("--log-level", default="WARN", show_default=True, help="Daemon log level."),
    click.option(
        "--insecure",
        is_flag=True,
        help="A plain cluster: no authentication, no encryption, no TLS (baselines only).",
    ),
    click.option(
        "--timeout",
        type=float,
        default=90.0,
        show_default=True,
        help="Seconds to wait for each daemon to be ready.",
    ),
)
# H5: the overlay tunnel (docs/overlay.md).
overlay_options = stacked(
    click.option(
        "--overlay",
        metavar="CIDR",
        help="Run the daemons on a TLS 1.3 overlay network (e.g. 198.19.0.0/24, the same on "
        "every host): everything between hosts, training traffic included, crosses the "
        "wire inside the tunnel (needs root; docs/overlay.md).",
    ),
    click.option(
        "--overlay-iface",
        default=DEFAULT_IFACE,
        show_default=True,
        help="--overlay: the TUN device's name on this host.",
    ),
)
worker_options = stacked(
    click.option("--cores", type=int, default=1, show_default=True, help="Cores per worker."),
    click.option(
        "--memory", default="1g", show_default=True, help="Memory per worker (512m, 2g...)."
    ),
)


def _backend(tee: str, sim_key: Path | None) -> TeeBackend:
    check_daemon_backend(tee)
    if tee == "sim":
        return get_backend("sim", key_path=sim_key or default_sim_key_path())
    if sim_key is not None:
        raise click.UsageError(f"--sim-key applies to --tee sim, not --tee {tee}")
    return get_backend(tee)


def _setup(given: dict[str, Any]) -> tuple[ClusterOptions, KeyDirectory | None, Secret | None]:
    """Options, key directory and passphrase (asked only for a secure cluster)."""
    options = ClusterOptions(
        host=given["host"],
        tee=_backend(given["tee"], given["sim_key"]),
        secure=not given["insecure"],
        log_level=given["log_level"],
        extra_conf=parse_conf(given["confs"]),
    )
    if given["insecure"]:
        err_console.print(INSECURE_BANNER.replace("plain Spark", "plain cluster"), markup=True)
        return options, None, None
    if given["keys_dir"] is None:
        raise click.UsageError(
            f"a secure cluster needs a key directory: --keys DIR or {ENV_KEYS} "
            "(the same one on every host), or --insecure for a plain cluster"
        )
    keys = KeyDirectory(given["keys_dir"])
    return options, keys, get_passphrase(given["passphrase_file"], given["prompt"])


def _plan_printer() -> Callable[[str, LaunchPlan], None]:
    """Show the backend's banner once, loudly (sim), then each daemon's notes."""
    show = show_plan(None)
    shown: list[str] = []

    def on_plan(daemon_id: str, plan: LaunchPlan) -> None:
        if not shown:
            show(replace(plan, notes=()))
        shown.append(daemon_id)
        for note in plan.notes:
            err_console.print(f"{daemon_id}: {note}", markup=False, soft_wrap=True)

    return on_plan


def _overlaid(
    plain: Callable[..., ClusterState],
    on_overlay: Callable[..., ClusterState],
    given: dict[str, Any],
) -> Callable[..., ClusterState]:
    """``plain``, or with --overlay ``on_overlay`` given the overlay's network and device."""
    if given["overlay"] is None:
        return plain
    return functools.partial(on_overlay, cidr=given["overlay"], iface=given["overlay_iface"])


def _report(state: ClusterState, ids: set[str] | None = None) -> None:
    if state.overlay is not None and (ids is None or "master" in ids):
        err_console.print(
            f"overlay {state.overlay['cidr']}: this host {state.overlay['address']} on "
            f"{state.overlay['iface']}, hub {state.overlay['hub']}",
            markup=False,
            soft_wrap=True,
        )
    for daemon in state.daemons:
        if ids is None or daemon.id in ids:
            offer = f", {daemon.cores} cores, {daemon.memory}" if daemon.role == "worker" else ""
            err_console.print(
                f"{daemon.id}: pid {daemon.pid}, {daemon.host}:{daemon.port}{offer}, "
                f"UI {daemon.ui_url}, log {daemon.log}",
                markup=False,
                soft_wrap=True,
            )


@click.group("cluster", cls=Group, short_help="Run a trusted Spark standalone cluster.")
def cluster_group() -> None:
    """A Spark standalone cluster whose daemons run the secure configuration (one
    secret per cluster from the key directory, AES-GCM RPC, TLS UIs, REST closed)
    inside a TEE backend. Run start-master on one host and start-worker on each
    other, with the same key directory; or `start --workers N` on one machine."""


@cluster_group.command("start-master", short_help="Start a master on this host.")
@daemon_options
@overlay_options
@click.option("--port", type=int, default=MASTER_PORT, show_default=True, help="RPC port.")
@click.option(
    "--webui-port",
    type=int,
    default=8080,
    show_default=True,
    help="UI port (http; https is 400 above).",
)
def start_master_command(port: int, webui_port: int, **given: Any) -> None:
    """Start a master on this host and print its URL (spark://HOST:PORT)."""
    options, keys, passphrase = _setup(given)
    state = _overlaid(start_master, start_master_on_overlay, given)(
        ClusterDir(given["cluster_dir"]), options, keys=keys, passphrase=passphrase,
        port=port, webui_port=webui_port, timeout=given["timeout"], on_plan=_plan_printer(),
    )  # fmt: skip
    _report(state, {"master"})
    out_console.print(state.master_url)


@cluster_group.command("start-worker", short_help="Start a worker joining --master.")
@daemon_options
@overlay_options
@worker_options
@click.option(
    "--master", "master_url", required=True, metavar="spark://HOST:PORT", help="The master to join."
)
@click.option("--port", type=int, default=0, show_default=True, help="RPC port (0: any free).")
@click.option("--webui-port", type=int, default=0, show_default=True, help="UI port (0: any free).")
@click.option("--id", "worker_id", help="Worker id in the cluster directory (default worker-N).")
def start_worker_command(
    master_url: str, cores: int, memory: str, port: int, webui_port: int,
    worker_id: str | None, **given: Any,
) -> None:  # fmt: skip
    """Start a worker on this host joining --master (run it on every worker host)."""
    options, keys, passphrase = _setup(given)
    before = ClusterDir(given["cluster_dir"]).load_or_none()
    state = _overlaid(start_worker, start_worker_on_overlay, given)(
        ClusterDir(given["cluster_dir"]), options, master_url, keys=keys,
        passphrase=passphrase, cores=cores, memory=memory, port=port, webui_port=webui_port,
        worker_id=worker_id, timeout=given["timeout"], on_plan=_plan_printer(),
    )  # fmt: skip
    known = {d.id for d in before.daemons} if before is not None else set()
    _report(state, {d.id for d in state.daemons} - known)


@cluster_group.command("start", short_help="Start a master and N workers here.")
@daemon_options
@overlay_options
@worker_options
@click.option("--workers", type=int, default=2, show_default=True, help="Workers on this host.")
@click.option("--port", type=int, default=MASTER_PORT, show_default=True, help="Master RPC port.")
@click.option("--webui-port", type=int, default=8080, show_default=True, help="Master UI port.")
def start_command(
    workers: int, cores: int, memory: str, port: int, webui_port: int, **given: Any
) -> None:
    """Start a master and --workers workers on this host (development) and print the
    master URL."""
    options, keys, passphrase = _setup(given)
    state = _overlaid(start_cluster, start_cluster_on_overlay, given)(
        ClusterDir(given["cluster_dir"]), options, workers, keys=keys, passphrase=passphrase,
        port=port, webui_port=webui_port, cores=cores, memory=memory,
        timeout=given["timeout"], on_plan=_plan_printer(),
    )  # fmt: skip
    _report(state)
    out_console.print(state.master_url)


def _print_status(status: ClusterStatus) -> None:
    lines = [
        f"master {status.master_url}: {status.status}, {len(status.alive_workers)} alive "
        f"worker(s), {len(status.lost_workers)} lost",
    ]
    for w in status.workers:
        lines.append(
            f"  {w.id}  {w.host}:{w.port}  {w.state}  cores {w.cores_used}/{w.cores}  "
            f"memory {w.memory_mb} MiB"
        )
    for w in status.lost_workers:
        lines.append(f"lost worker: {w.id} ({w.host}:{w.port}, {w.state})")
    lines.append(
        f"applications: {len(status.active_apps)} active, {len(status.completed_apps)} completed"
    )
    for line in lines:
        out_console.print(line, markup=False, soft_wrap=True)


@cluster_group.command("status", short_help="Workers, lost workers and apps.")
@dir_option
@keys_option
@click.option(
    "--ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CA certificate of the master's TLS (default: tls/ca.pem of --keys).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(
    cluster_dir: Path, keys_dir: Path | None, ca: Path | None, as_json: bool
) -> None:
    """The master's view over TLS: workers (lost ones too), cores, memory, applications."""
    directory = ClusterDir(cluster_dir)
    state = directory.load()
    if ca is None and keys_dir is not None:
        ca = KeyDirectory(keys_dir).ca_cert
    if state.secure and ca is None:
        raise click.UsageError(
            f"the master's UI is TLS: --keys DIR (or {ENV_KEYS}) or --ca FILE to check it"
        )
    status = cluster_status(directory, ca=ca)
    if as_json:
        out_console.print_json(json.dumps(status.to_json()))
    else:
        _print_status(status)


@cluster_group.command("stop", short_help="Stop every daemon; leave nothing.")
@dir_option
@click.option(
    "--timeout", type=float, default=15.0, show_default=True, help="Seconds before SIGKILL."
)
def stop_command(cluster_dir: Path, timeout: float) -> None:
    """Stop every daemon this directory started (and their executors); nothing is left."""
    for daemon in stop_cluster(ClusterDir(cluster_dir), timeout=timeout):
        err_console.print(f"stopped {daemon.id} (pid {daemon.pid})", markup=False)


@cluster_group.command("logs", short_help="Show the daemons' logs.")
@dir_option
@click.argument("daemon_id", required=False)
@click.option("--lines", "-n", type=int, default=50, show_default=True, help="Lines per log.")
def logs_command(cluster_dir: Path, daemon_id: str | None, lines: int) -> None:
    """The last lines of a daemon's log (every daemon's without DAEMON_ID)."""
    click.echo(daemon_logs(ClusterDir(cluster_dir), daemon_id, lines))
