"""The environment `trustedml submit --tee sim --broker URL` gives a job, for tests that
play the job's processes against an in-process broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.broker.conftest import Broker, save_sim_private_key
from trustedml import runtime
from trustedml.runtime import ENV_BROKER_CA, ENV_BROKER_URL
from trustedml.tee import ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TEE

JOB_MEASUREMENT = bytes.fromhex("33" * 48)


@contextmanager
def job_environment(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Set the job's environment for ``broker``; on the way out, close the attested
    stores ``job_keystore()`` made for it (they live for the process otherwise)."""
    monkeypatch.setenv(ENV_BROKER_URL, broker.url)
    monkeypatch.setenv(ENV_BROKER_CA, str(broker.ca))
    monkeypatch.setenv(ENV_TEE, "sim")
    monkeypatch.setenv(ENV_JOB_MEASUREMENT, JOB_MEASUREMENT.hex())
    monkeypatch.setenv(ENV_SIM_KEY, str(save_sim_private_key(broker.sim_key, tmp_path / "sim.key")))
    try:
        yield
    finally:
        with runtime._STORE_LOCK:
            stores = [runtime._STORES.pop(k) for k in list(runtime._STORES) if k[0] == broker.url]
        for store in stores:
            store.client.close()
