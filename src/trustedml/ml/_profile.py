"""Timed phases of a workload (driver and training processes) for ``python -m bench ml``.

With ``TRUSTEDML_PROFILE=1`` in the environment (the job's processes, the training
processes included, inherit it), each :func:`mark` prints one line to stderr,
``trustedml-profile: <phase> <unix seconds> <pid>``; a reader lines the processes up
on the wall clock and takes differences. Without it, :func:`mark` does nothing.
"""

from __future__ import annotations

import os
import re
import sys
import time

__all__ = ["ENV_PROFILE", "MARK_LINE", "enabled", "mark", "mark_process_start"]

ENV_PROFILE = "TRUSTEDML_PROFILE"
# What a reader (bench/ml.py) matches: phase, wall time, process id.
MARK_LINE = re.compile(r"^trustedml-profile: (\S+) ([0-9]+\.[0-9]+) ([0-9]+)$", re.MULTILINE)


def enabled() -> bool:
    """True when this process was asked to print its phases."""
    return os.environ.get(ENV_PROFILE, "") not in ("", "0")


def mark(phase: str) -> None:
    """Print that ``phase`` (no spaces) was reached now, when profiling is enabled."""
    if enabled():
        _write(f"trustedml-profile: {phase} {time.time():.3f} {os.getpid()}\n")


def _process_start(pid: int) -> float | None:
    """Process ``pid``'s start on the wall clock (Linux ``/proc``), else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # Field 22, counted after the parenthesized command name (which may hold spaces).
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - age


def mark_process_start(phase: str, *, parent: bool = False) -> None:
    """Print when this process (or its parent) started, as ``phase``, when profiling is
    enabled: the time between that and the next mark is interpreter start-up and imports."""
    if enabled():
        started = _process_start(os.getppid() if parent else os.getpid())
        if started is not None:
            _write(f"trustedml-profile: {phase} {started:.3f} {os.getpid()}\n")


def _write(line: str) -> None:
    # One write per line: the ranks share the pipe, and print() writes the line and
    # its end separately.
    sys.stderr.write(line)
    sys.stderr.flush()
