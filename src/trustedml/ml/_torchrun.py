"""TorchDistributor across a standalone cluster's executors, its listeners on the
cluster's addresses only: the driver's log server, each node's torchrun rendezvous
store, and gloo on the interface that reaches the rendezvous.

``python -m trustedml.ml._torchrun TORCHRUN-ARGS...`` is what each barrier task runs
instead of pyspark's ``torch_run_process_wrapper``: node 0 binds the rendezvous store to
its own address first (torch's static rendezvous would listen on every address, and
reuses a store of the same port in its process), then torchrun runs in this process.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.ml.torch import distributor as _distributor
from pyspark.ml.torch.distributor import TorchDistributor
from pyspark.ml.torch.log_communication import (  # type: ignore[attr-defined]
    LogStreamingServer,
    WriteLogToStdout,
)

from trustedml.ml._collectives import interface_of, local_address_towards

__all__ = ["ClusterTorchDistributor", "main", "run_torch_file"]


class _BoundLogServer(LogStreamingServer):  # type: ignore[misc]
    """pyspark's log server on the driver's address, not on 0.0.0.0."""

    def start(self, spark_host_address: str = "") -> None:
        if not spark_host_address:
            raise RuntimeError("no spark.driver.host to bind the training log server to")
        server = socketserver.ThreadingTCPServer((spark_host_address, 0), WriteLogToStdout)
        server.daemon_threads = True
        server.is_active = True  # type: ignore[attr-defined]
        self.server = server
        self.port = server.server_address[1]
        self.serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.serve_thread.start()

    def shutdown(self) -> None:
        server = self.server
        super().shutdown()
        if server is not None:
            server.server_close()


@contextmanager
def _bound_log_server() -> Iterator[None]:
    # TorchDistributor builds its log server from this module-level name.
    original = vars(_distributor)["LogStreamingServer"]
    setattr(_distributor, "LogStreamingServer", _BoundLogServer)  # noqa: B010
    try:
        yield
    finally:
        setattr(_distributor, "LogStreamingServer", original)  # noqa: B010


class ClusterTorchDistributor(TorchDistributor):
    """One training process per barrier task on the cluster's executors, run through
    :func:`run_torch_file`; the caller has decided the wire is protected (or allowed
    plaintext), so pyspark's blanket refusal under ``spark.ssl.enabled`` is not needed."""

    def __init__(self, num_processes: int) -> None:
        super().__init__(num_processes=num_processes, local_mode=False, use_gpu=False)

    def _check_encryption(self) -> None:
        # Decided before: trustedml.ml._collectives.training_placement.
        return None

    def run(self, train_object: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Any:
        with _bound_log_server():
            return self._run(train_object, run_torch_file, *args, **kwargs)


def run_torch_file(input_params: dict[str, Any], train_path: str, *args: Any) -> None:
    """What a barrier task runs for TorchDistributor's pickled function: this module's
    torchrun instead of pyspark's wrapper, with the same arguments and log streaming."""
    torchrun_args, per_node = TorchDistributor._get_torchrun_args(
        input_params["local_mode"], input_params["num_processes"]
    )
    command = [
        sys.executable,
        "-m",
        "trustedml.ml._torchrun",
        *torchrun_args,
        f"--nproc_per_node={per_node}",
        train_path,
        *map(str, args),
    ]
    TorchDistributor._execute_command(
        command, log_streaming_client=input_params.get("log_streaming_client")
    )


def _option(argv: list[str], name: str) -> str:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    raise SystemExit(f"trustedml.ml._torchrun: missing --{name}=")


def _bind_rendezvous(host: str, port: int, nodes: int) -> Any:
    """Node 0's rendezvous store, listening on ``host`` only; torchrun's static
    rendezvous (multi-tenant, same port) then shares it instead of binding its own."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    store = TCPStore(
        host,
        port,
        nodes,
        True,
        multi_tenant=True,
        master_listen_fd=sock.fileno(),
        wait_for_workers=False,
        use_libuv=True,
    )
    return store, sock


def _exit_with_parent() -> None:
    # As pyspark's wrapper does: when the task's Python worker dies, so does training.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> None:
    """Run torchrun with ``argv`` on this node, its listeners on the cluster's addresses."""
    host, _, port = _option(argv, "rdzv_endpoint").rpartition(":")
    local = local_address_towards(host)
    iface = interface_of(local)
    if iface is not None:
        # gloo otherwise picks the address the host name resolves to, which may be
        # no address of this host's cluster network at all.
        os.environ["GLOO_SOCKET_IFNAME"] = iface
    _exit_with_parent()
    held = None
    if _option(argv, "node_rank") == "0":
        held = _bind_rendezvous(host, int(port), int(_option(argv, "nnodes")))
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    finally:
        del held


if __name__ == "__main__":
    main(sys.argv[1:])
