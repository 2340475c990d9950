from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE
from trustedml import (
    ConfigError,
    IntegrityError,
    KeyDirectory,
    KeyNotFoundError,
    KeyRing,
    KeyStore,
    KeyStoreError,
    LocalKeyStore,
    Secret,
)


@pytest.fixture
def keys(session_keys: KeyDirectory, tmp_path: Path) -> KeyDirectory:
    shutil.copytree(session_keys.path, tmp_path / "keys")
    return KeyDirectory(tmp_path / "keys")


def test_create_kek_persists_sealed(keys: KeyDirectory) -> None:
    store = LocalKeyStore(keys, Secret(PASSPHRASE))
    assert store.key_ids() == []
    store.create_kek("nyc-taxi")
    assert isinstance(store, KeyStore)
    again = LocalKeyStore(KeyDirectory(keys.path), Secret(PASSPHRASE))
    assert again.key_ids() == ["nyc-taxi"]
    assert "kek:nyc-taxi" in KeyDirectory(keys.path).manifest.sealed_entries
    kek = keys.unseal(Secret(PASSPHRASE))["kek:nyc-taxi"].reveal()
    for path in keys.path.rglob("*"):
        if path.is_file():
            assert kek not in path.read_bytes()


def test_data_keys_round_trip_and_are_fresh(keys: KeyDirectory) -> None:
    store = LocalKeyStore(keys, Secret(PASSPHRASE))
    store.create_kek("k")
    a, b = store.generate_data_key("k"), store.generate_data_key("k")
    assert a.plaintext != b.plaintext
    assert len(a.plaintext) == 32
    assert store.unwrap_data_key("k", a.wrapped) == a.plaintext
    assert "plaintext" not in repr(a)


def test_wrapped_key_is_bound_to_its_key_id(keys: KeyDirectory) -> None:
    store = LocalKeyStore(keys, Secret(PASSPHRASE))
    store.create_kek("a")
    store.create_kek("b")
    wrapped = store.generate_data_key("a").wrapped
    with pytest.raises(IntegrityError, match="cannot unwrap"):
        store.unwrap_data_key("b", wrapped)


def test_duplicate_and_invalid_ids(keys: KeyDirectory) -> None:
    store = LocalKeyStore(keys, Secret(PASSPHRASE))
    store.create_kek("a")
    with pytest.raises(KeyStoreError, match="already exists"):
        store.create_kek("a")
    for bad in ("", "-lead", "has space", "x" * 65, "slash/no"):
        with pytest.raises(ConfigError, match="key id: expected"):
            store.create_kek(bad)


def test_unknown_key(keys: KeyDirectory) -> None:
    store = LocalKeyStore(keys, Secret(PASSPHRASE))
    with pytest.raises(KeyNotFoundError, match="no key-encryption key 'nope'"):
        store.generate_data_key("nope")


def test_keyring_pickles_for_spark_workers_but_hides_keys() -> None:
    ring = KeyRing({"k": b"\x07" * 32})
    clone = pickle.loads(pickle.dumps(ring))  # noqa: S301 - our own bytes
    dk = ring.generate_data_key("k")
    assert clone.unwrap_data_key("k", dk.wrapped) == dk.plaintext
    assert "\\x07" not in repr(ring)
    with pytest.raises(KeyStoreError, match="not 32 bytes"):
        KeyRing({"k": b"short"})
    with pytest.raises(KeyNotFoundError):
        ring.subset(["other"])


def test_keyring_for_workers_carries_only_the_keys_asked_for() -> None:
    ring = KeyRing({"a": b"\x01" * 32, "b": b"\x02" * 32, "c": b"\x03" * 32})
    made = ring.generate_data_key("a")
    workers = ring.for_workers(["a", "c", "a"])
    assert isinstance(workers, KeyStore)
    shipped = pickle.loads(pickle.dumps(workers))  # noqa: S301 - our own bytes
    assert shipped.key_ids() == ["a", "c"]
    assert shipped.unwrap_data_key("a", made.wrapped) == made.plaintext
    with pytest.raises(KeyNotFoundError, match="no key-encryption key 'b'"):
        shipped.generate_data_key("b")
    assert ring.for_workers([]) == ring  # empty: all the ring holds
    with pytest.raises(KeyNotFoundError, match="no key-encryption key 'nope'"):
        ring.for_workers(["a", "nope"])


def test_local_keystore_for_workers_is_a_keyring_without_the_vault(keys: KeyDirectory) -> None:
    store = LocalKeyStore(keys, Secret(PASSPHRASE))
    store.create_kek("a")
    store.create_kek("b")
    workers = store.for_workers(["b"])
    assert isinstance(workers, KeyRing)
    assert workers.key_ids() == ["b"]
    assert store.for_workers(()).key_ids() == ["a", "b"]
    blob = pickle.dumps(workers)
    assert PASSPHRASE.encode() not in blob
    assert str(keys.path).encode() not in blob
    made = store.generate_data_key("b")
    assert pickle.loads(blob).unwrap_data_key("b", made.wrapped) == made.plaintext  # noqa: S301
    with pytest.raises(KeyNotFoundError):
        store.for_workers(["c"])
