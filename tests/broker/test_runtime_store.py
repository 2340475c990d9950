"""trustedml.runtime's attested key store against a real broker."""

from __future__ import annotations

import pickle

import pytest

from tests.broker.conftest import Broker
from trustedml.errors import KeyBrokerError
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
