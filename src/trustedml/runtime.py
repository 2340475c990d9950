"""What a running job calls to get its keys.

Two ways keys reach a job:

- **attested release** (``trustedml submit --tee sim|gramine|cvm --broker URL``): the
  job attests to the key broker with its TEE's evidence, which binds the job
  measurement, and receives data keys sealed to an ephemeral key of this process.
  Data keys are cached in memory for the process and never touch disk;
- **direct** (``trustedml submit --kek ID``): the named key-encryption keys come
  through the job's environment (never argv or a file), for jobs without a broker.

Inside the job::

    from trustedml.runtime import job_keystore
    df = read_encrypted(spark, path, "csv", keystore=job_keystore(), header=True)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustedml._env import ENV_BROKER_CA, ENV_BROKER_URL, ENV_KEYRING
from trustedml._secret import Secret
from trustedml.data import DataKey, KeyRing, KeyStore
from trustedml.errors import BrokerRefusedError, KeyStoreError

if TYPE_CHECKING:
    from trustedml.broker import BrokerSession, KeyBrokerClient

__all__ = [
    "ENV_BROKER_CA",
    "ENV_BROKER_URL",
    "ENV_KEYRING",
    "AttestedKeyStore",
    "job_keyring",
    "job_keystore",
]


def job_keyring() -> KeyRing:
    """The key-encryption keys this job was started with (``submit --kek``)."""
    text = os.environ.get(ENV_KEYRING)
    if not text:
        raise KeyStoreError(
            f"this job has no keys: start it with `trustedml submit --kek ID` ({ENV_KEYRING} unset)"
        )
    return KeyRing.parse(Secret(text))


class _CachedRelease:
    """Data keys a broker released to this process, kept in memory so each file's key
    is fetched once per process however many partitions read it."""

    def __init__(self, source: KeyStore) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._unwrapped: dict[tuple[str, bytes], Secret] = {}

    def _generate(self, key_id: str) -> DataKey:
        return self._source.generate_data_key(key_id)

    def _unwrap(self, key_id: str, wrapped: bytes) -> Secret:
        return self._source.unwrap_data_key(key_id, wrapped)

    def generate_data_key(self, key_id: str) -> DataKey:
        key = self._generate(key_id)
        with self._lock:
            self._unwrapped[(key_id, key.wrapped)] = key.plaintext
        return key

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> Secret:
        cache_key = (key_id, bytes(wrapped))
        with self._lock:
            found = self._unwrapped.get(cache_key)
        if found is not None:
            return found
        plaintext = self._unwrap(key_id, wrapped)
        with self._lock:
            self._unwrapped[cache_key] = plaintext
        return plaintext


class AttestedKeyStore(_CachedRelease):
    """A :class:`~trustedml.data.KeyStore` that attests to the key broker once per
    process and caches every data key it unwraps, in memory only."""

    def __init__(self, client: KeyBrokerClient) -> None:
        super().__init__(client)
        self._client = client

    @property
    def client(self) -> KeyBrokerClient:
        return self._client

    def __repr__(self) -> str:
        return f"AttestedKeyStore({self._client.url!r})"

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("an AttestedKeyStore cannot be pickled (it holds a session key)")

    def for_workers(self, key_ids: Collection[str]) -> KeyStore:
        """A picklable key store for this job's Spark workers, serving ``key_ids``: they
        share this process's attested session (attesting now if it lacks them; one
        attestation per job in local mode) instead of attesting themselves, and each
        keeps what it fetched in memory."""
        return _WorkerKeyStore(self._client.for_workers(key_ids))


class _WorkerKeyStore(_CachedRelease):
    """The shared session as a Spark worker receives it; the cache starts empty in
    each process that unpickles it.

    When the shared session cannot serve a request (its token expired, or the key is
    outside what the driver shared) and this process runs inside the same measured
    job, the worker attests itself with its own TEE evidence, as the driver did: a
    job may outlive the broker's token lifetime, and the broker's policy decides
    anew. Outside the job it is refused."""

    _OWN_ATTESTATION = frozenset({"token_expired", "not_in_scope"})

    def __init__(self, session: BrokerSession) -> None:
        super().__init__(session)
        self._session = session

    def _own_store(self, refused: BrokerRefusedError) -> KeyStore:
        if refused.code not in self._OWN_ATTESTATION:
            raise refused
        if (os.environ.get(ENV_BROKER_URL) or "").rstrip("/") != self._session.url:
            raise BrokerRefusedError(
                f"{refused}; this process was not launched by `trustedml submit "
                f"--broker {self._session.url}`, so it cannot attest itself",
                status=refused.status,
                code=refused.code,
                reasons=refused.reasons,
            ) from refused
        return job_keystore()

    def _generate(self, key_id: str) -> DataKey:
        try:
            return self._session.generate_data_key(key_id)
        except BrokerRefusedError as exc:
            return self._own_store(exc).generate_data_key(key_id)

    def _unwrap(self, key_id: str, wrapped: bytes) -> Secret:
        try:
            return self._session.unwrap_data_key(key_id, wrapped)
        except BrokerRefusedError as exc:
            return self._own_store(exc).unwrap_data_key(key_id, wrapped)

    def for_workers(self, key_ids: Collection[str]) -> KeyStore:
        """The shared session narrowed to ``key_ids`` (it cannot attest for more)."""
        session = self._session.for_workers(key_ids)
        return self if session is self._session else _WorkerKeyStore(session)

    def __repr__(self) -> str:
        return f"_WorkerKeyStore({self._session!r})"

    def __reduce__(self) -> str | tuple[Any, ...]:
        return (_WorkerKeyStore, (self._session,))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _WorkerKeyStore):
            return NotImplemented
        return bool(self._session == other._session)

    __hash__ = None  # type: ignore[assignment]

    def close(self) -> None:
        self._session.close()


# One attested store per broker and TEE identity, for the life of the process.
_STORES: dict[tuple[str, ...], AttestedKeyStore] = {}
_STORE_LOCK = threading.Lock()


def job_keystore() -> KeyStore:
    """Where this job gets its data keys: the key broker after attestation when the
    launcher gave one (``--broker``), else the keys given with ``--kek``."""
    url = os.environ.get(ENV_BROKER_URL)
    if not url:
        return job_keyring()
    # Imported here: a job without a broker needs neither httpx nor the TEE layer.
    from trustedml.broker import KeyBrokerClient
    from trustedml.tee import ENV_JOB_MEASUREMENT, ENV_TEE, job_evidence_provider, job_measurement

    ca = os.environ.get(ENV_BROKER_CA) or ""
    identity = (url, ca, os.environ.get(ENV_TEE, ""), os.environ.get(ENV_JOB_MEASUREMENT, ""))
    with _STORE_LOCK:
        store = _STORES.get(identity)
        if store is None:
            client = KeyBrokerClient(
                url,
                provider=job_evidence_provider(),
                ca=Path(ca) if ca else None,
                job_measurement=job_measurement(),
            )
            store = _STORES[identity] = AttestedKeyStore(client)
        return store
