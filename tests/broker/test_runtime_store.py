"""trustedml.runtime's attested key store against a real broker."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.conftest import Broker, sim_policy
from tests.broker.job_env import JOB_MEASUREMENT, job_environment
from trustedml.data import KeyStore
from trustedml.errors import BrokerRefusedError, KeyBrokerError
from trustedml.runtime import AttestedKeyStore


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


def test_for_workers_hands_over_only_the_key_ids_asked_for(broker: Broker) -> None:
    wanted, other = broker.new_key(), broker.new_key()
    store = AttestedKeyStore(broker.client())
    made = store.generate_data_key(wanted)
    foreign = store.generate_data_key(other)  # the driver's session now holds both
    whole = store.client.for_workers()  # empty: the session's whole scope
    broker.clients.append(whole)
    assert f"key_ids={sorted([wanted, other])!r}" in repr(whole)
    shipped = store.for_workers([wanted])
    assert isinstance(shipped, KeyStore)
    worker = pickle.loads(pickle.dumps(shipped))  # noqa: S301 - bytes this test just made
    broker.clients.append(worker)
    assert f"key_ids={[wanted]!r}" in repr(worker)
    assert worker.unwrap_data_key(wanted, made.wrapped) == made.plaintext
    # Outside the job (no broker in this process's environment) it cannot attest itself.
    with pytest.raises(BrokerRefusedError, match="cannot attest itself") as info:
        worker.unwrap_data_key(other, foreign.wrapped)
    assert info.value.code == "not_in_scope"
    # A worker store narrows further, never widens: a session cannot attest.
    assert worker.for_workers([wanted]) is worker
    assert worker.for_workers([]) is worker
    with pytest.raises(BrokerRefusedError) as info:
        worker.for_workers([other])
    assert info.value.code == "not_in_scope"


def test_a_narrowed_session_is_another_registration(broker: Broker) -> None:
    a, b = broker.new_key(), broker.new_key()
    client = broker.client()
    whole = client.for_workers([a, b])
    only_a, only_b = whole.for_workers([a]), whole.for_workers([b])
    broker.clients.extend([whole, only_a, only_b])
    assert whole.for_workers([a, b]) is whole
    # Same token, other key ids: `register` must not take one for the other.
    assert only_a != only_b
    assert only_a != whole
    assert only_a == pickle.loads(pickle.dumps(only_a))  # noqa: S301 - our own bytes


# -- a worker whose shared session ends attests itself, as the driver did -------------


@pytest.fixture
def job_env(
    fresh_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The environment `trustedml submit --tee sim --broker URL` gives a job."""
    with job_environment(fresh_broker, tmp_path, monkeypatch):
        yield


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
