"""The training processes of a local job: one launcher that imports torch and loads
(decrypts) the inputs once, then forks the ranks, which share those arrays.

pyspark's local TorchDistributor runs a wrapper process, which runs torchrun, which
starts each rank as a fresh interpreter: three imports of torch one after the other
and every rank decrypting every input itself. Here the driver starts the launcher
(``python -m trustedml.ml._launch``) before Spark, so its imports and input loading
overlap Spark's start-up; once the driver knows the training stays on this host
(not a standalone cluster), it says go and the launcher forks the ranks with
torchrun's environment (the launcher hosts the rendezvous store, as torchrun's agent
does). The request (entry point names and the config: paths and small parameters,
nothing secret) goes through the launcher's stdin, the result (metrics) back through
a file in a private temporary directory; each rank and the launcher get their keys
themselves from the job's environment, like every process of a job.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from trustedml.errors import TrustedMLError
from trustedml.ml._configs import NUM_PROCESSES
from trustedml.ml._profile import mark, mark_process_start

__all__ = ["Entry", "Launcher", "TrainingError", "main"]

_GO = b"G"
_LENGTH = struct.Struct(">I")


class TrainingError(TrustedMLError):
    """The training processes failed; their output says why."""


@dataclass(frozen=True)
class Entry:
    """A training function by name: ``module.train(*args[, inputs])``, where
    ``inputs = preload_module.preload(*args)`` (``preload_module`` defaults to
    ``module``) is made once by the launcher when ``preload`` is given, while it
    imports ``module``. The driver only names them, so it never imports torch."""

    module: str
    train: str
    preload: str | None = None
    preload_module: str | None = None

    def function(self) -> Callable[..., Any]:
        """The training function."""
        return _function(self.module, self.train)

    def loader(self) -> Callable[..., Any] | None:
        """The input loader, if any."""
        if self.preload is None:
            return None
        return _function(self.preload_module or self.module, self.preload)


def _function(module: str, name: str) -> Callable[..., Any]:
    found: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return found


class Launcher:
    """The driver's handle on the launcher process: started early (it imports and
    loads while Spark starts), then :meth:`go` or :meth:`cancel`."""

    def __init__(
        self, entry: Entry, args: Sequence[Any], num_processes: int = NUM_PROCESSES
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="trustedml-train-"))
        self._result = self._dir / "result.pickle"
        request = pickle.dumps(
            {
                "entry": entry,
                "args": tuple(args),
                "num_processes": num_processes,
                "result": str(self._result),
            }
        )
        # The ranks' output, stderr included, joins the driver's stdout as
        # TorchDistributor's did.
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "trustedml.ml._launch"],
            stdin=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        stdin = self._stdin()
        stdin.write(_LENGTH.pack(len(request)) + request)
        stdin.flush()

    def _stdin(self) -> IO[bytes]:
        assert self._proc is not None
        return self._stdin_of(self._proc)

    def go(self) -> Any:
        """Have the launcher fork the training processes; their (rank 0's) result, or a
        TrainingError when a process failed."""
        assert self._proc is not None
        stdin = self._stdin()
        with contextlib.suppress(BrokenPipeError):  # it failed already: its code says
            stdin.write(_GO)
            stdin.close()
        code = self._proc.wait()
        self._proc = None
        if code != 0:
            status = 128 - code if code < 0 else code
            raise TrainingError(
                f"distributed training failed: the training processes exited with status "
                f"{status} (their output is above)"
            )
        if not self._result.is_file():
            raise TrainingError("distributed training failed: rank 0 returned no result")
        # Written by a rank this driver's job started, in a directory only it can open.
        with self._result.open("rb") as f:
            return pickle.load(f)  # noqa: S301

    def cancel(self) -> None:
        """Stop the launcher (training not started, or interrupted) and clean up."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(BrokenPipeError):
                self._stdin_of(proc).close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    @staticmethod
    def _stdin_of(proc: subprocess.Popen[bytes]) -> IO[bytes]:
        assert proc.stdin is not None
        return proc.stdin

    def __enter__(self) -> Launcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError
    return data


def _die_with_parent() -> None:
    # A rank orphaned by a killed launcher would otherwise wait in gloo for its peer.
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _rank_main(
    rank: int, world: int, port: int, train: Callable[..., Any], args: tuple[Any, ...],
    result: str,
) -> None:  # fmt: skip
    """A forked rank: torchrun's environment, the training call, rank 0's result."""
    _die_with_parent()
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "GROUP_RANK": "0",
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            # Every rank connects to the launcher's store, as to torchrun's agent's.
            "TORCHELASTIC_USE_AGENT_STORE": "True",
            "TORCHELASTIC_RESTART_COUNT": "0",
        }
    )
    code = 0
    try:
        output = train(*args)
        if rank == 0:
            with open(result, "wb") as f:
                pickle.dump(output, f)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Not the launcher's exit handlers: they belong to the launcher.
        os._exit(code)


def _watch_parent(children: Sequence[int]) -> None:
    # When the driver dies, so does training (as pyspark's wrapper arranges).
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _reap(children: dict[int, int]) -> int:
    """Wait for every child; on the first failure stop the others. Exit status: 0, or
    the first failure's (128+N for a death by signal N)."""
    failed = 0
    while children:
        pid, status = os.waitpid(-1, 0)
        if children.pop(pid, None) is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and not failed:
            failed = 128 - code if code < 0 else code
            for other in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGTERM)
    return failed


def _fork_ranks(world: int, train: Callable[..., Any], args: tuple[Any, ...], result: str) -> int:
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, int] = {}
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            sock.close()
            _rank_main(rank, world, port, train, args, result)
        children[pid] = rank
    _watch_parent(list(children))
    # After the forks: the store's threads stay in this process. It owns the socket now.
    store = TCPStore(
        "127.0.0.1", port, world, True, master_listen_fd=sock.detach(),
        wait_for_workers=False, use_libuv=True,
    )  # fmt: skip
    try:
        return _reap(children)
    finally:
        del store


def _import_and_load(entry: Entry, args: tuple[Any, ...]) -> tuple[Callable[..., Any], Any]:
    """The training function and its inputs, the inputs loaded in a thread while this
    one imports the training module (torch): decompression and numpy release the GIL,
    and under a broker the attestation waits on the network."""
    loaded: list[Any] = []
    failed: list[BaseException] = []

    def load() -> None:
        try:
            loader = entry.loader()
            if loader is not None:
                loaded.append(loader(*args))
                mark("launcher-inputs-loaded")
        except BaseException as exc:  # re-raised in the launcher's main thread
            failed.append(exc)

    loading = threading.Thread(target=load, name="load-inputs")
    loading.start()
    try:
        train = entry.function()
        mark("launcher-imported")
    finally:
        # Joined before any fork: no thread of this process outlives the loading.
        loading.join()
    if failed:
        raise failed[0]
    return train, loaded[0] if loaded else None


def main() -> int:
    """The launcher: read the request, import and preload, wait for go, fork, reap."""
    mark_process_start("launcher-process-start")
    # MKL's own memory manager is not fork-safe: a rank forked from a launcher that had
    # used it was seen spinning forever in mkl_serv_allocate (its per-thread buffer list
    # copied mid-update). Plain malloc instead; set before torch loads MKL.
    os.environ["MKL_DISABLE_FAST_MM"] = "1"
    stdin = sys.stdin.buffer
    try:
        (size,) = _LENGTH.unpack(_read_exactly(stdin, _LENGTH.size))
        # From the driver that started this process, through its pipe.
        request = pickle.loads(_read_exactly(stdin, size))  # noqa: S301
    except EOFError:
        return 0
    entry: Entry = request["entry"]
    args: tuple[Any, ...] = request["args"]
    try:
        train, inputs = _import_and_load(entry, args)
    except TrustedMLError as exc:
        print(f"error (training launcher): {exc}", file=sys.stderr, flush=True)
        return 1
    if entry.preload is not None:
        args = (*args, inputs)
    if stdin.read(1) != _GO:
        return 0  # the driver cancelled: the training runs elsewhere, or not at all
    mark("launcher-go")
    return _fork_ranks(request["num_processes"], train, args, request["result"])


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skips tearing torch down at exit (a second or more): the ranks are gone already.
    os._exit(status)
