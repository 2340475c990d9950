from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from trustedml import KeyDirectory, ScryptParams, Secret, init_key_directory

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
APPS = Path(__file__).resolve().parent / "apps"
# Everything the tests read is in the repository (datasets/README.md, the vectors'
# MANIFEST.md files): a fresh clone runs the whole suite with nothing beside it.
DATASETS = ROOT / "datasets"
ATTESTATION_VECTORS = ROOT / "tests" / "attestation" / "vectors"

PASSPHRASE = "test passphrase, not a real one"
# Tests use a cheap scrypt cost; the format records it, so every path still runs.
FAST_KDF = ScryptParams(log2_n=12)


@pytest.fixture
def passphrase() -> Secret:
    return Secret(PASSPHRASE)


def write_passphrase_file(path: Path, value: str = PASSPHRASE) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    """One key directory shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("session-keys")
    return init_key_directory(root / "keys", Secret(PASSPHRASE), kdf=FAST_KDF)


@pytest.fixture(scope="session")
def session_passphrase_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_passphrase_file(tmp_path_factory.mktemp("pp") / "passphrase")


_WORKDIR: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _cli_workdir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Spark drops spark-warehouse/ and metastore files into its working directory.
    _WORKDIR.append(tmp_path_factory.mktemp("cwd"))


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTEDML_")}
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str],
    *,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `trustedml` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "trustedml", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=cwd or (_WORKDIR[0] if _WORKDIR else ROOT),
        check=False,
    )
