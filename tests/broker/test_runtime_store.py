"""trustedml.runtime's attested key store against a real broker."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.conftest import Broker, save_sim_private_key, sim_policy
from trustedml import runtime
from trustedml.data import KeyStore
from trustedml.errors import BrokerRefusedError, KeyBrokerError
from trustedml.runtime import ENV_BROKER_CA, ENV_BROKER_URL, AttestedKeyStore


def test_each_data_key_is_fetched_once_then_served_from_memory(broker: Broker) -> None:
    key_id = broker.new_key()
    store = AttestedKeyStore(broker.client())
    made = store.generate_data_key(key_id)
    other = broker.client().generate_data_key(key_id)
    assert store.unwrap_data_key(key_id, other.wrapped).reveal() == other.plaintext.reveal()
    store.client.close()
    # No connection left: only what this process already holds can be answered.
    assert store.unwrap_data_key(key_id, made.wrapped).reveal() == made.plaintext.reveal()
    assert store.unwrap_data_key(key_id, other.wrapped).reveal() == other.plaintext.reveal()
    third = broker.client().generate_data_key(key_id)
    with pytest.raises((KeyBrokerError, RuntimeError)):
        store.unwrap_data_key(key_id, third.wrapped)


def test_the_store_never_pickles_but_its_worker_session_does(broker: Broker) -> None:
    key_id = broker.new_key()
    store = AttestedKeyStore(broker.client())
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(store)
    made = store.generate_data_key(key_id)
    shipped = pickle.dumps(store.for_workers([key_id]))
    worker = pickle.loads(shipped)  # noqa: S301 - bytes this test just made
    try:
        assert worker.unwrap_data_key(key_id, made.wrapped).reveal() == made.plaintext.reveal()
    finally:
        worker.close()


# -- a worker whose shared session ends attests itself, as the driver did -------------

JOB_MEASUREMENT = bytes.fromhex("33" * 48)


@pytest.fixture
def job_env(
    fresh_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The environment `trustedml submit --tee sim --broker URL` gives a job."""
    from trustedml.tee import ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TEE

    monkeypatch.setenv(ENV_BROKER_URL, fresh_broker.url)
    monkeypatch.setenv(ENV_BROKER_CA, str(fresh_broker.ca))
    monkeypatch.setenv(ENV_TEE, "sim")
    monkeypatch.setenv(ENV_JOB_MEASUREMENT, JOB_MEASUREMENT.hex())
    monkeypatch.setenv(
        ENV_SIM_KEY, str(save_sim_private_key(fresh_broker.sim_key, tmp_path / "sim.key"))
    )
    yield
    with runtime._STORE_LOCK:
        stores = [runtime._STORES.pop(k) for k in list(runtime._STORES) if k[0] == fresh_broker.url]
    for store in stores:
        store.client.close()


def _worker(broker: Broker, key_id: str) -> tuple[KeyStore, bytes, bytes]:
    """A worker's copy of a driver's session, and a data key made under it."""
    driver = AttestedKeyStore(broker.client(JOB_MEASUREMENT))
    made = driver.generate_data_key(key_id)
    worker = pickle.loads(pickle.dumps(driver.for_workers([key_id])))  # noqa: S301 - our bytes
    broker.clients.append(worker)
    return worker, made.wrapped, made.plaintext.reveal()


@pytest.mark.usefixtures("job_env")
def test_worker_attests_itself_when_the_shared_session_expires(fresh_broker: Broker) -> None:
    key_id = fresh_broker.new_key(sim_policy(JOB_MEASUREMENT))
    worker, wrapped, plaintext = _worker(fresh_broker, key_id)
    fresh_broker.clock.advance(fresh_broker.config.token_ttl + 1)
    assert worker.unwrap_data_key(key_id, wrapped).reveal() == plaintext
    # A key the driver never attested for is fetched the same way.
    later = fresh_broker.new_key(sim_policy(JOB_MEASUREMENT))
    fresh = worker.generate_data_key(later)
    assert worker.unwrap_data_key(later, fresh.wrapped) == fresh.plaintext
    attested = [
        e for e in fresh_broker.admin().audit(limit=1000)["entries"] if e["event"] == "attest"
    ]
    # The driver's; the worker's own; the worker's again, as a client attests anew
    # for a key outside its session.
    assert len(attested) == 3


def test_worker_outside_the_job_cannot_attest_itself(fresh_broker: Broker) -> None:
    key_id = fresh_broker.new_key(sim_policy(JOB_MEASUREMENT))
    worker, wrapped, _ = _worker(fresh_broker, key_id)
    fresh_broker.clock.advance(fresh_broker.config.token_ttl + 1)
    with pytest.raises(BrokerRefusedError, match="cannot attest itself") as info:
        worker.unwrap_data_key(key_id, wrapped)
    assert info.value.code == "token_expired"


@pytest.mark.usefixtures("job_env")
def test_worker_does_not_retry_other_refusals(fresh_broker: Broker) -> None:
    key_id = fresh_broker.new_key(sim_policy(JOB_MEASUREMENT))
    worker, wrapped, _ = _worker(fresh_broker, key_id)
    fresh_broker.admin().disable_key(key_id)
    with pytest.raises(BrokerRefusedError) as info:
        worker.unwrap_data_key(key_id, wrapped)
    assert info.value.status == 403
    assert "cannot attest itself" not in str(info.value)
