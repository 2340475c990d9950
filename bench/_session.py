"""A secure Spark session in this process for a benchmark, under a throwaway key
directory whose passphrase lives only in this process."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from pyspark.sql import SparkSession

from trustedml import Secret, SecureSparkConfig, init_key_directory
from trustedml.keys import ScryptParams
from trustedml.spark import start_session


def secure_session(root: Path, master: str, app: str, extra: Mapping[str, str]) -> SparkSession:
    """Start it with keys and scratch space under ``root`` (which must outlive it)."""
    passphrase = Secret(secrets.token_urlsafe(32))
    keys = init_key_directory(root / "keys", passphrase, kdf=ScryptParams(log2_n=14))
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)
    settings = SecureSparkConfig.from_key_directory(
        keys, passphrase, master=master, ui=False, local_dir=scratch, extra=dict(extra)
    )
    print(f"starting a secure Spark session ({master})", file=sys.stderr, flush=True)
    return start_session(settings, app)
