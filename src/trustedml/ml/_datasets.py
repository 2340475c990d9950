"""Where the workloads find their default inputs: the repository's ``datasets/`` folder."""

from __future__ import annotations

from pathlib import Path

# This file is <repo>/src/trustedml/ml/_datasets.py. The data ship with the source tree
# (an editable install or a checkout), not inside the wheel; anywhere else the user
# passes a path, and the message below says which option takes it.
REPO_ROOT = Path(__file__).resolve().parents[3]
DATASETS = REPO_ROOT / "datasets"


def default_dataset(name: str) -> Path:
    """The repository's copy of dataset ``name`` (a file or folder under ``datasets/``)."""
    return DATASETS / name


def default_help(name: str) -> str:
    """How a help text names the default of ``name``."""
    return f"default: datasets/{name} in the source tree"


def missing_default(option: str, path: Path | None, default: Path) -> str | None:
    """The usage error for ``path`` when it is the ``default`` (or None) and that is
    absent; None when the user gave the path or the default exists."""
    if path is None or (path == default and not default.exists()):
        return (
            f"{option}: the default {default} does not exist (it is in the datasets/ "
            f"folder of a trusted-ml checkout); pass {option} with your own copy"
        )
    return None
