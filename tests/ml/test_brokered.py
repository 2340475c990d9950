"""Which key store a workload's processes use: the `--kek` key ring, or a key broker
they attest to (the end-to-end runs under `--broker` are in test_lenet.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from tests.ml.conftest import OWNER, Broker
from trustedml import BrokerKeyNotFoundError, ConfigError, KeyRing, KeyStoreError
from trustedml.attestation import SimKey
from trustedml.ml._driver import check_model_out
from trustedml.ml._io import check_key
from trustedml.runtime import ENV_BROKER_URL, ENV_KEYRING, AttestedKeyStore, job_keystore
from trustedml.tee import ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TEE


def test_without_a_broker_the_kek_keyring_is_the_job_keystore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_BROKER_URL, raising=False)
    monkeypatch.setenv(ENV_KEYRING, KeyRing({"data": b"\x01" * 32}).export().reveal_text())
    assert isinstance(job_keystore(), KeyRing)
    check_key("data")
    with pytest.raises(ConfigError, match=r"no such key \(it has data; start it with --kek models"):
        check_key("models")
    with pytest.raises(ConfigError, match=r"^--model-key-id models: this job has no such key"):
        check_model_out(Path("model.pt"), "models")
    monkeypatch.delenv(ENV_KEYRING)
    with pytest.raises(KeyStoreError, match="this job has no keys"):
        job_keystore()


def test_with_a_broker_the_job_keystore_attests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sim_key = tmp_path / "sim-key.pem"
    SimKey.generate().save(sim_key)
    os.chmod(sim_key, 0o600)
    monkeypatch.setenv(ENV_KEYRING, KeyRing({"data": b"\x01" * 32}).export().reveal_text())
    monkeypatch.setenv(ENV_BROKER_URL, "https://127.0.0.1:9")
    monkeypatch.setenv(ENV_TEE, "sim")
    monkeypatch.setenv(ENV_SIM_KEY, str(sim_key))
    monkeypatch.setenv(ENV_JOB_MEASUREMENT, OWNER)
    store = job_keystore()
    # The broker decides, even when a --kek keyring is also there; it is not picklable,
    # so it cannot slip into pyspark's plaintext pickles.
    assert isinstance(store, AttestedKeyStore)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(store)


def test_a_key_the_broker_lacks_is_the_brokers_answer(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A 404 from the broker is not a --kek job missing a key: the broker's refusal comes
    # through as it gave it, never "this job has no keys".
    broker.create_key("data", [OWNER], tmp_path)
    monkeypatch.delenv(ENV_KEYRING, raising=False)
    for name, value in broker.job_env(OWNER).items():
        monkeypatch.setenv(name, value)
    try:
        check_key("data")
        with pytest.raises(BrokerKeyNotFoundError) as caught:
            check_key("models")
    finally:
        store = job_keystore()
        assert isinstance(store, AttestedKeyStore)
        store.client.close()  # cached for the process otherwise
    assert caught.value.status == 404
    assert "this job has no" not in str(caught.value)
