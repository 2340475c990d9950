"""Trusted Spark standalone clusters: master and workers started inside a TEE backend."""

from trustedml.cluster._daemons import start_cluster, start_master, start_worker, stop_cluster
from trustedml.cluster._lint import lint_cluster
from trustedml.cluster._logs import daemon_logs
from trustedml.cluster._options import (
    DAEMON_BACKENDS,
    MASTER_PORT,
    ClusterOptions,
    check_daemon_backend,
)
from trustedml.cluster._overlay_cluster import (
    start_cluster_on_overlay,
    start_master_on_overlay,
    start_worker_on_overlay,
)
from trustedml.cluster._overlay_launch import OVERLAY_PORT
from trustedml.cluster._state import ClusterDir, ClusterState, DaemonState
from trustedml.cluster._status import ClusterStatus, WorkerStatus, cluster_status
from trustedml.cluster._tun import DEFAULT_IFACE

__all__ = [
    "DAEMON_BACKENDS",
    "DEFAULT_IFACE",
    "MASTER_PORT",
    "OVERLAY_PORT",
    "ClusterDir",
    "ClusterOptions",
    "ClusterState",
    "ClusterStatus",
    "DaemonState",
    "WorkerStatus",
    "check_daemon_backend",
    "cluster_status",
    "daemon_logs",
    "lint_cluster",
    "start_cluster",
    "start_cluster_on_overlay",
    "start_master",
    "start_master_on_overlay",
    "start_worker",
    "start_worker_on_overlay",
    "stop_cluster",
]
