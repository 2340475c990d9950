from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE
from trustedml import KeyDirectory, LocalKeyStore, Secret


@dataclass(frozen=True)
class MLKeys:
    """A key directory with the KEK ``models`` (and ``data``) for workload tests."""

    path: Path
    passphrase_file: Path
    store: LocalKeyStore

    def submit_args(self) -> list[str]:
        """Options for `trustedml submit/example` giving the job both KEKs."""
        return [
            "--keys", str(self.path), "--passphrase-file", str(self.passphrase_file),
            "--kek", "models", "--kek", "data", "--no-ui",
        ]  # fmt: skip


@pytest.fixture(scope="session")
def ml_keys(
    session_keys: KeyDirectory,
    session_passphrase_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> MLKeys:
    path = tmp_path_factory.mktemp("ml-keys") / "keys"
    shutil.copytree(session_keys.path, path)
    store = LocalKeyStore(KeyDirectory(path), Secret(PASSPHRASE))
    store.create_kek("models")
    store.create_kek("data")
    return MLKeys(path, session_passphrase_file, store)
