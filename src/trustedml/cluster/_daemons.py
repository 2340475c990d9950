"""Start and stop the daemons of a Spark standalone cluster, each through its TEE backend."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trustedml._env import ENV_WORKER
from trustedml._secret import Secret
from trustedml.cluster._bindaddr import with_bind_shim
from trustedml.cluster._options import (
    MASTER_PORT,
    MASTER_WEBUI_PORT,
    ClusterOptions,
    check_memory,
    check_port,
)
from trustedml.cluster._overlay_launch import stop_overlay
from trustedml.cluster._process import (
    exited,
    free_port,
    is_running,
    log_tail,
    spawn,
    terminate,
)
from trustedml.cluster._settings import DaemonLaunch, daemon_launch, write_daemon_conf
from trustedml.cluster._state import ClusterDir, ClusterState, DaemonState
from trustedml.cluster._status import fetch_master_json, parse_status
from trustedml.errors import ClusterError, ClusterStateError, ConfigError
from trustedml.keys import KeyDirectory
from trustedml.tee import LaunchPlan

__all__ = ["start_cluster", "start_master", "start_worker", "stop_cluster"]

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
READY_TIMEOUT = 90.0
_REGISTERED = "Successfully registered with master"
PlanHook = Callable[[str, LaunchPlan], None]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fingerprint(secret: Secret | None) -> str | None:
    if secret is None:
        return None
    mac = hmac.new(secret.reveal(), b"trusted-ml cluster id", hashlib.sha256).digest()
    return mac[:8].hex()


def _ui_ports(host: str, webui_port: int, secure: bool) -> tuple[int, int | None]:
    """(http UI port, https UI port): Spark's rule puts the https port 400 above."""
    http = webui_port or free_port(host)
    if not secure:
        return http, None
    https = http + 400 if webui_port and http + 400 <= 65535 else free_port(host)
    return http, https


@dataclass(frozen=True)
class _Starting:
    """A daemon spawned and not yet ready: what to check, and what to record after."""

    launch: DaemonLaunch
    pid: int
    log: Path
    ready: Callable[[], bool]
    daemon: DaemonState
    base: ClusterState  # the directory's state it joins


def _failure(start: _Starting, what: str, left: set[int]) -> ClusterError:
    # Java stack frames crowd out the lines that say what went wrong.
    lines = log_tail(start.log, 400, this_run=True).splitlines()
    lines = [ln for ln in lines if not ln.lstrip().startswith("at ")]
    tail = "\n".join(lines[-15:]) or "(empty)"
    extra = f"; processes {sorted(left)} would not die" if left else ""
    return ClusterError(
        f"{start.launch.daemon_id}: {what}{extra}; last lines of {start.log}:\n{tail}"
    )


def _await_all(starting: list[_Starting], timeout: float) -> None:
    """Wait until every daemon of ``starting`` is ready; when one exits or the time is
    up, stop them all (their whole trees) and raise naming the first that failed."""
    waiting = list(starting)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for start in list(waiting):
            # Not is_running(): until spark-class is exec'd the child's command line is ours.
            if exited(start.pid):
                left = terminate([s.pid for s in starting], timeout=5.0)
                raise _failure(start, "exited before it was ready", left)
            try:
                if start.ready():
                    waiting.remove(start)
            except ClusterError:
                pass  # not answering yet
        if waiting:
            time.sleep(0.5)
    if waiting:
        left = terminate([s.pid for s in starting], timeout=5.0)
        raise _failure(waiting[0], f"not ready after {timeout:.0f} s", left)


def _launch(
    directory: ClusterDir,
    launch: DaemonLaunch,
    on_plan: PlanHook | None,
) -> int:
    plan = launch.plan
    if on_plan is not None:
        on_plan(launch.daemon_id, plan)
    for check in plan.checks:
        check()
    log = directory.log_file(launch.daemon_id)
    proc = spawn(plan.argv, plan.env, directory.path, log)
    return proc.pid


def _state_for(
    directory: ClusterDir, options: ClusterOptions, master_url: str, launch: DaemonLaunch
) -> ClusterState:
    state = directory.load_or_none()
    fingerprint = _fingerprint(launch.secret)
    if state is None:
        return ClusterState(
            master_url=master_url,
            secure=options.secure,
            tee=options.backend.name,
            secret_fingerprint=fingerprint,
        )
    if state.master_url != master_url:
        raise ClusterStateError(
            f"{directory.path}: already holds the cluster of {state.master_url}; "
            "stop it or use another --dir"
        )
    if state.secure != options.secure or state.tee != options.backend.name:
        raise ClusterStateError(
            f"{directory.path}: its daemons run {'secure' if state.secure else 'insecure'} "
            f"with --tee {state.tee}; start this one the same way or use another --dir"
        )
    return state


def start_master(
    directory: ClusterDir | str | Path,
    options: ClusterOptions,
    *,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
    port: int = MASTER_PORT,
    webui_port: int = MASTER_WEBUI_PORT,
    timeout: float = READY_TIMEOUT,
    on_plan: PlanHook | None = None,
) -> ClusterState:
    """Start a master on ``options.host`` and wait until its web UI says ALIVE.

    ``port``/``webui_port`` 0 choose free ports. Returns the directory's new state;
    on failure no process is left and the :class:`ClusterError` quotes the log.
    ``on_plan`` sees each daemon's launch plan (its banner must be shown)."""
    directory = directory if isinstance(directory, ClusterDir) else ClusterDir(directory)
    check_port("--port", port)
    check_port("--webui-port", webui_port)
    if directory.load_or_none() is not None and directory.load().master is not None:
        raise ClusterStateError(f"{directory.path}: a master already runs from this directory")
    rpc = port or free_port(options.host)
    master_url = f"spark://{options.host}:{rpc}"
    http, https = _ui_ports(options.host, webui_port, options.secure)
    directory.create()
    launch = daemon_launch(
        directory,
        options,
        "master",
        "master",
        master_url,
        keys=keys,
        passphrase=passphrase,
        argv_tail=["--host", options.host, "--port", str(rpc), "--webui-port", str(http)],
        ssl_port=https,
        cls=MASTER_CLASS,
    )
    state = _state_for(directory, options, master_url, launch)
    write_daemon_conf(directory, launch)
    pid = _launch(directory, launch, on_plan)
    daemon = _daemon_state(launch, pid, options.host, rpc, http, https)
    ui_url = daemon.ui_url
    ca = _ca(keys, options)
    ready = lambda: fetch_master_json(ui_url, ca, timeout=2.0).get("status") == "ALIVE"  # noqa: E731
    _await_all(
        [_Starting(launch, pid, directory.log_file("master"), ready, daemon, state)], timeout
    )
    state = state.with_daemon(daemon)
    directory.save(state)
    return state


def _daemon_state(
    launch: DaemonLaunch,
    pid: int,
    host: str,
    port: int,
    http: int,
    https: int | None,
    **offer: Any,
) -> DaemonState:
    """What cluster.json records of a daemon just started (its own process group)."""
    return DaemonState(
        id=launch.daemon_id,
        role=launch.role,
        pid=pid,
        pgid=pid,
        host=host,
        port=port,
        webui_port=http,
        ui_url=f"https://{host}:{https}" if https else f"http://{host}:{http}",
        measurement=launch.measurement,
        log=f"logs/{launch.daemon_id}.log",
        started=_now(),
        **offer,
    )


def _ca(keys: KeyDirectory | None, options: ClusterOptions) -> Path | None:
    return keys.ca_cert if keys is not None and options.secure else None


def _check_cores(cores: int) -> None:
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ConfigError(f"--cores: expected a positive number, got {cores!r}")


def _next_worker_id(state: ClusterState | None) -> str:
    taken = {d.id for d in state.daemons} if state is not None else set()
    n = 1
    while f"worker-{n}" in taken:
        n += 1
    return f"worker-{n}"


def _worker_ready(
    log: Path, host: str, port: int, master_ui: str | None, ca: Path | None
) -> Callable[[], bool]:
    def ready() -> bool:
        if _REGISTERED not in log_tail(log, 400, this_run=True):
            return False
        if master_ui is None:
            return True
        status = parse_status(fetch_master_json(master_ui, ca, timeout=2.0))
        return any(w.host == host and w.port == port for w in status.alive_workers)

    return ready


def _spawn_worker(
    directory: ClusterDir,
    options: ClusterOptions,
    master_url: str,
    daemon_id: str,
    *,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
    cores: int,
    memory: str,
    port: int,
    webui_port: int,
    on_plan: PlanHook | None,
) -> _Starting:
    rpc = port or free_port(options.host)
    http, https = _ui_ports(options.host, webui_port, options.secure)
    directory.create()
    work = directory.work_dir(daemon_id)
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    launch = daemon_launch(
        directory,
        options,
        "worker",
        daemon_id,
        master_url,
        keys=keys,
        passphrase=passphrase,
        argv_tail=[
            "--host", options.host, "--port", str(rpc), "--webui-port", str(http),
            "--cores", str(cores), "--memory", memory, "--work-dir", str(work),
        ],
        ssl_port=https,
        cls=WORKER_CLASS,
        measured_options={"cores": str(cores), "memory": memory},
        extra_env={ENV_WORKER: f"{daemon_id}@{options.host}"},
        master_arg=master_url,
    )  # fmt: skip
    # Its executors and their Python workers inherit it: a library binding 0.0.0.0
    # (libxgboost's collective) listens on this worker's address only.
    launch = replace(
        launch, plan=replace(launch.plan, env=with_bind_shim(launch.plan.env, options.host))
    )
    state = _state_for(directory, options, master_url, launch)
    write_daemon_conf(directory, launch)
    pid = _launch(directory, launch, on_plan)
    log = directory.log_file(daemon_id)
    master = state.master
    ready = _worker_ready(
        log, options.host, rpc, master.ui_url if master else None, _ca(keys, options)
    )
    daemon = _daemon_state(launch, pid, options.host, rpc, http, https, cores=cores, memory=memory)
    return _Starting(launch, pid, log, ready, daemon, state)


def _record(directory: ClusterDir, starting: list[_Starting]) -> ClusterState:
    state = directory.load_or_none() or starting[0].base
    for start in starting:
        state = state.with_daemon(start.daemon)
    directory.save(state)
    return state


def start_worker(
    directory: ClusterDir | str | Path,
    options: ClusterOptions,
    master_url: str,
    *,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
    cores: int = 1,
    memory: str = "1g",
    port: int = 0,
    webui_port: int = 0,
    worker_id: str | None = None,
    timeout: float = READY_TIMEOUT,
    on_plan: PlanHook | None = None,
) -> ClusterState:
    """Start a worker on ``options.host`` joining ``master_url`` and wait until it is
    registered (and, when this directory runs the master, listed ALIVE by it).

    Its environment (which its executors inherit) names it: ``TRUSTEDML_WORKER=<id>@<host>``."""
    directory = directory if isinstance(directory, ClusterDir) else ClusterDir(directory)
    check_port("--port", port)
    check_port("--webui-port", webui_port)
    _check_cores(cores)
    memory = check_memory(memory)
    existing = directory.load_or_none()
    daemon_id = worker_id or _next_worker_id(existing)
    if existing is not None and any(d.id == daemon_id for d in existing.daemons):
        raise ClusterStateError(f"{directory.path}: a daemon {daemon_id!r} already runs here")
    start = _spawn_worker(
        directory, options, master_url, daemon_id, keys=keys, passphrase=passphrase,
        cores=cores, memory=memory, port=port, webui_port=webui_port, on_plan=on_plan,
    )  # fmt: skip
    _await_all([start], timeout)
    return _record(directory, [start])


def start_cluster(
    directory: ClusterDir | str | Path,
    options: ClusterOptions,
    workers: int,
    *,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
    port: int = MASTER_PORT,
    webui_port: int = MASTER_WEBUI_PORT,
    cores: int = 1,
    memory: str = "1g",
    timeout: float = READY_TIMEOUT,
    on_plan: PlanHook | None = None,
) -> ClusterState:
    """A master and ``workers`` workers on this host (for development and tests);
    on failure every daemon already started is stopped again."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers: expected a number of workers (0 or more), got {workers!r}")
    # Every option checked before the master starts.
    _check_cores(cores)
    memory = check_memory(memory)
    directory = directory if isinstance(directory, ClusterDir) else ClusterDir(directory)
    state = start_master(
        directory,
        options,
        keys=keys,
        passphrase=passphrase,
        port=port,
        webui_port=webui_port,
        timeout=timeout,
        on_plan=on_plan,
    )
    try:
        # Workers start side by side: each JVM's start-up overlaps the others'.
        starting: list[_Starting] = []
        try:
            for n in range(1, workers + 1):
                starting.append(
                    _spawn_worker(
                        directory,
                        options,
                        state.master_url,
                        f"worker-{n}",
                        keys=keys,
                        passphrase=passphrase,
                        cores=cores,
                        memory=memory,
                        port=0,
                        webui_port=0,
                        on_plan=on_plan,
                    )
                )
        except BaseException:
            terminate([s.pid for s in starting], timeout=5.0)
            raise
        if starting:
            _await_all(starting, timeout)
            state = _record(directory, starting)
    except BaseException:
        stop_cluster(directory)
        raise
    return state


def stop_cluster(directory: ClusterDir | str | Path, timeout: float = 15.0) -> list[DaemonState]:
    """Stop every daemon this directory started (workers first): SIGTERM each one's
    process tree (executors and Python workers included), wait up to ``timeout``
    seconds, SIGKILL the rest, and check that no process remains; then the overlay
    tunnel, if any. Returns the daemons that were stopped; the state file is removed
    (the logs stay)."""
    directory = directory if isinstance(directory, ClusterDir) else ClusterDir(directory)
    state = directory.load()
    stopped: list[DaemonState] = []
    ordered = sorted(state.daemons, key=lambda d: d.role == "master")
    for daemon in ordered:
        if is_running(daemon.pid, "org.apache.spark"):
            left = terminate([daemon.pid], timeout)
            if left:
                directory.save(replace(state, daemons=tuple(ordered[len(stopped) :])))
                raise ClusterError(f"{daemon.id}: processes {sorted(left)} still run after SIGKILL")
        stopped.append(daemon)
    # The overlay tunnel carried the daemons' traffic: it goes last.
    stop_overlay(state.overlay, timeout)
    directory.remove_state()
    return stopped
