"""One long-lived Spark driver (bench/apps/tpch_job.py) per configuration, asked for one
TPC-H query at a time, so that a secure and a plain driver can take turns query by query
(load from anything else on the machine then hits both alike)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustedml import SparkSettings, TrustedMLError, submit

APP = Path(__file__).resolve().parent / "apps" / "tpch_job.py"
LOG_TAIL_LINES = 40
POLL_SECONDS = 0.05


class BenchError(Exception):
    """The cluster benchmark cannot go on (its message says why)."""


class DriverError(BenchError):
    """A driver stopped, failed to start, or took too long."""


@dataclass(frozen=True)
class Answer:
    query: int
    seconds: float
    rows: list[list[Any]]


def tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass
class Driver:
    """``spark-submit`` of the TPC-H app under ``settings`` in a thread; commands go
    through a FIFO, answers come back as files in ``workdir/answers``."""

    name: str
    settings: SparkSettings
    data: Path
    queries: dict[int, str]
    workdir: Path
    _fifo: int = field(default=-1, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _code: int | None = field(default=None, init=False)
    _error: BaseException | None = field(default=None, init=False)
    _runs: dict[int, int] = field(default_factory=dict, init=False)

    @property
    def log(self) -> Path:
        return self.workdir / "driver.log"

    @property
    def answers(self) -> Path:
        return self.workdir / "answers"

    def start(self) -> None:
        self.answers.mkdir(parents=True, exist_ok=True)
        queries = self.workdir / "queries.json"
        queries.write_text(json.dumps(self.queries), encoding="utf-8")
        commands = self.workdir / "commands.fifo"
        os.mkfifo(commands, 0o600)
        # Read-write: opening never blocks and a write never meets a closed reader.
        self._fifo = os.open(commands, os.O_RDWR)
        args = [str(self.data), str(queries), str(self.answers), str(commands)]
        self._thread = threading.Thread(target=self._run, args=(args,), daemon=True)
        self._thread.start()

    def _run(self, args: list[str]) -> None:
        try:
            with self.log.open("w", encoding="utf-8") as log:
                self._code = submit(
                    APP, args, settings=self.settings, cwd=self.workdir, stdout=log, stderr=log
                )
        except (TrustedMLError, OSError) as exc:
            self._error = exc

    def _wait_for(self, path: Path, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self._thread is None or not self._thread.is_alive():
                cause = self._error or f"exit code {self._code}"
                raise DriverError(
                    f"{self.name} driver ended ({cause}) before {what}; log tail:\n{tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise DriverError(f"{self.name} driver: no {what} after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def wait_ready(self, timeout: float) -> None:
        self._wait_for(self.answers / "ready", timeout, "tables registered")

    def ask(self, query: int, timeout: float) -> Answer:
        """Run ``query`` once in this driver and return its timing and rows."""
        run = self._runs.get(query, 0) + 1
        self._runs[query] = run
        os.write(self._fifo, f"{query}\n".encode())
        path = self.answers / f"q{query}-{run}.json"
        self._wait_for(path, timeout, f"answer to Q{query}")
        payload = json.loads(path.read_text(encoding="utf-8"))
        return Answer(query, float(payload["seconds"]), payload["rows"])

    def stop(self, timeout: float = 120.0) -> int | None:
        """Ask the driver to quit and wait for it; its exit code (None if it hangs)."""
        if self._fifo < 0:
            return self._code
        try:
            os.write(self._fifo, b"quit\n")
            # Held open until the driver is gone: one still starting has yet to read it.
            if self._thread is not None:
                self._thread.join(timeout)
        finally:
            os.close(self._fifo)
            self._fifo = -1
        return self._code
