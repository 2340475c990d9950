from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env
from trustedml import PlainSparkConfig
from trustedml.tee import JobMeasurement, measure_job


@pytest.fixture
def plain() -> PlainSparkConfig:
    return PlainSparkConfig(ui=False)


def write_app(path: Path, body: str = "") -> Path:
    """A small Python app that records where it ran into the file named by argv[1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "import json, os, sys\n"
        "with open(sys.argv[1], 'w') as fh:\n"
        "    json.dump({k: v for k, v in os.environ.items() if k.startswith('TRUSTEDML_')"
        " and 'KEYRING' not in k}, fh)\n" + body
    )
    return path


def measure_script(
    app: Path, args: list[str], settings: PlainSparkConfig, launcher: str = "run"
) -> JobMeasurement:
    return measure_job(app, args, (), settings, launcher=launcher)


PYTHON = sys.executable


# `measure` until the lead registers it in trustedml.cli (then: run_cli(["measure", ...])).
_MEASURE = (
    "import sys; from trustedml.cli.measure import measure_command; "
    "measure_command(sys.argv[1:], prog_name='trustedml measure')"
)


def run_measure(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `trustedml measure ARGS` in a child process."""
    return subprocess.run(
        [sys.executable, "-c", _MEASURE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        cwd=cwd or ROOT,
        check=False,
    )
