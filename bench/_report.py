"""Shared output for benchmarks: a table on the terminal and a JSON file of results."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def java_version() -> str | None:
    try:
        proc = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # The JVM prints its version banner on stderr.
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[0] if proc.returncode == 0 and lines else None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "java": java_version(),
        "pyspark": _package_version("pyspark"),
        "trusted_ml": _package_version("trusted-ml"),
        "platform": platform.platform(),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    console: Console | None = None,
) -> None:
    table = Table(title=title)
    for i, column in enumerate(columns):
        # Numbers line up on the right; the first column names the row.
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    # Wide enough that tables stay whole when stdout is a file or a pipe.
    (console or Console(width=160)).print(table)


def write_results(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
    directory: Path | None = None,
) -> Path:
    """Write ``directory/name.json`` (default: bench/results) with the machine's facts."""
    directory = directory or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = {
        "benchmark": name,
        "machine": machine_info(),
        "rows": list(rows),
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def positive_int(text: str) -> int:
    """argparse type for counts and sizes."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value
