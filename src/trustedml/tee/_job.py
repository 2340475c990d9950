"""What a running job calls to learn where it runs and to get evidence from there."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from trustedml._env import ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TEE, ENV_TSM_ROOT
from trustedml.attestation import (
    ConfigfsTsmProvider,
    EvidenceProvider,
    GramineProvider,
    SimKey,
    SimProvider,
)
from trustedml.errors import EvidenceProviderError
from trustedml.tee._measure import DIGEST_SIZE


def job_tee(env: Mapping[str, str] | None = None) -> str:
    """The backend this job was launched with ("none" outside trusted-ml)."""
    env = os.environ if env is None else env
    return env.get(ENV_TEE) or "none"


def job_measurement(env: Mapping[str, str] | None = None) -> bytes | None:
    """This job's measurement (48 bytes), or None when it was launched unmeasured."""
    env = os.environ if env is None else env
    text = env.get(ENV_JOB_MEASUREMENT)
    if not text:
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != DIGEST_SIZE:
        raise EvidenceProviderError(
            f"{ENV_JOB_MEASUREMENT}: expected {DIGEST_SIZE * 2} hex digits, got {text!r}"
        )
    return value


def job_evidence_provider(env: Mapping[str, str] | None = None) -> EvidenceProvider:
    """The evidence provider of the TEE this job runs in.

    ``sim``: a :class:`~trustedml.attestation.SimProvider` whose measurement is the
    job measurement; ``cvm``: configfs-tsm (TDX or SEV-SNP); ``gramine``:
    ``/dev/attestation``. Outside a TEE: :class:`EvidenceProviderError`.
    """
    env = os.environ if env is None else env
    tee = job_tee(env)
    if tee == "sim":
        measurement = job_measurement(env)
        key_path = env.get(ENV_SIM_KEY)
        if measurement is None or not key_path:
            raise EvidenceProviderError(
                f"--tee sim: {ENV_JOB_MEASUREMENT} and {ENV_SIM_KEY} must be set by the launcher"
            )
        return SimProvider(SimKey.load(Path(key_path)), measurement=measurement)
    if tee == "cvm":
        root = env.get(ENV_TSM_ROOT)
        return ConfigfsTsmProvider(Path(root)) if root else ConfigfsTsmProvider()
    if tee == "gramine":
        return GramineProvider()
    raise EvidenceProviderError(
        f"this job runs without a TEE (--tee {tee}): there is no evidence to give"
    )
