"""The logs of a cluster directory's daemons."""

from __future__ import annotations

from pathlib import Path

from trustedml.cluster._process import log_tail
from trustedml.cluster._state import ClusterDir
from trustedml.errors import ConfigError

__all__ = ["daemon_logs"]


def daemon_logs(
    directory: ClusterDir | str | Path, daemon_id: str | None = None, lines: int = 50
) -> str:
    """The last ``lines`` lines of the log of ``daemon_id`` (every daemon's, each under
    a header, when None). Logs outlive the daemons: after ``stop`` they still read."""
    directory = directory if isinstance(directory, ClusterDir) else ClusterDir(directory)
    if isinstance(lines, bool) or not isinstance(lines, int) or lines < 1:
        raise ConfigError(f"--lines: expected a positive number, got {lines!r}")
    if daemon_id is not None:
        state = directory.load_or_none()
        if state is not None:
            state.daemon(daemon_id)  # names the known ids when it is not one
        path = directory.log_file(daemon_id)
        if not path.is_file():
            raise ConfigError(f"{daemon_id}: no log in {directory.logs_dir}")
        return log_tail(path, lines)
    logs = sorted(directory.logs_dir.glob("*.log")) if directory.logs_dir.is_dir() else []
    if not logs:
        raise ConfigError(f"{directory.path}: no daemon logs here")
    return "\n".join(f"==> {p.stem} <==\n{log_tail(p, lines)}" for p in logs)
