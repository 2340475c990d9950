"""What a running job calls to get its keys.

Two ways keys reach a job:

- **attested release** (``trustedml submit --tee sim|gramine|cvm --broker URL``): the
  job attests to the key broker with its TEE's evidence, which binds the job
  measurement, and receives data keys sealed to an ephemeral key of this process.
  Data keys are cached in memory for the process and never touch disk;
- **direct** (``trustedml submit --kek ID``): the named key-encryption keys come
  through the job's environment (never argv or a file), for jobs without a broker.

On a standalone cluster (the driver was submitted to a ``spark://`` master) the
executors run on other hosts, in their worker's TEE: the store a driver hands them
(:meth:`AttestedKeyStore.for_workers`) holds no key and no session, only where the
broker is and which job they belong to, and each executor process attests with its own
evidence for its own data keys.

Inside the job::

    from trustedml.runtime import job_keystore
    df = read_encrypted(spark, path, "csv", keystore=job_keystore(), header=True)
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trustedml._env import (
    ENV_BROKER_CA,
    ENV_BROKER_URL,
    ENV_KEYRING,
    ENV_SPARK_MASTER,
    ENV_WORKER,
)
from trustedml._secret import Secret
from trustedml.data import DataKey, KeyRing, KeyStore, check_key_id
from trustedml.errors import (
    BrokerRefusedError,
    ConfigError,
    KeyStoreError,
    TrustedMLError,
    reworded,
)

if TYPE_CHECKING:
    from trustedml.broker import BrokerSession, KeyBrokerClient

__all__ = [
    "ENV_BROKER_CA",
    "ENV_BROKER_URL",
    "ENV_KEYRING",
    "ENV_SPARK_MASTER",
    "ENV_WORKER",
    "AttestedKeyStore",
    "ExecutorKeyStore",
    "job_keyring",
    "job_keystore",
    "on_standalone_cluster",
    "this_worker",
]

_T = TypeVar("_T")


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
        """A picklable key store for this job's Spark workers, serving ``key_ids``.

        Local mode: they share this process's attested session (attesting now if it
        lacks them; one attestation per job) instead of attesting themselves, and each
        keeps what it fetched in memory. On a standalone cluster (see
        :func:`on_standalone_cluster`): an :class:`ExecutorKeyStore`, with no key and
        no session; each executor attests with its worker's evidence."""
        if on_standalone_cluster():
            return ExecutorKeyStore(
                self._client.url, self._client.ca_pem(), self._client.job_measurement, key_ids
            )
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


class ExecutorKeyStore:
    """The key store a cluster job's driver hands its executors (picklable): the broker's
    URL and CA certificate, the job measurement and the key ids it may serve, and
    nothing else (no key, no session token).

    In an executor it attests with that process's own TEE evidence
    (:func:`trustedml.tee.job_evidence_provider`: the worker daemon's TEE and
    measurement), binding the job measurement in the evidence's report_data and
    labelling the request with the worker it runs under (``TRUSTEDML_WORKER``, recorded
    in the broker's audit log). Data keys are cached in memory, once per process, however
    many tasks unpickle a copy. Any failure names the worker: a refusal is a
    :class:`~trustedml.errors.BrokerRefusedError` ``"worker ID@HOST: <the broker's
    reasons>"``."""

    def __init__(
        self,
        url: str,
        ca: bytes | None,
        job_measurement: bytes | None,
        key_ids: Collection[str] = (),
    ) -> None:
        if not isinstance(url, str) or not url.startswith("https://"):
            raise ConfigError(f"broker URL: expected https://HOST:PORT, got {url!r}")
        if ca is not None and not isinstance(ca, bytes):
            raise ConfigError("broker CA: expected PEM bytes")
        self._url = url.rstrip("/")
        self._ca = ca
        self._job = job_measurement
        self._key_ids = frozenset(check_key_id(k) for k in key_ids)

    @property
    def key_ids(self) -> frozenset[str]:
        """The key ids it serves (every key the broker's policies release when empty)."""
        return self._key_ids

    @property
    def url(self) -> str:
        """The broker's URL."""
        return self._url

    @property
    def ca(self) -> bytes | None:
        """The broker's CA certificate (PEM), if not the system's."""
        return self._ca

    @property
    def job_measurement(self) -> bytes | None:
        """The job measurement each executor binds into its evidence."""
        return self._job

    def __repr__(self) -> str:
        return f"ExecutorKeyStore({self._url!r}, key_ids={sorted(self._key_ids)})"

    def __reduce__(self) -> str | tuple[Any, ...]:
        return (ExecutorKeyStore, (self._url, self._ca, self._job, tuple(sorted(self._key_ids))))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExecutorKeyStore):
            return NotImplemented
        return self.__reduce__() == other.__reduce__()

    __hash__ = None  # type: ignore[assignment]

    def for_workers(self, key_ids: Collection[str]) -> KeyStore:
        """This store serving only ``key_ids`` (itself when empty or the same)."""
        wanted = frozenset(check_key_id(k) for k in key_ids)
        if self._key_ids:
            outside = sorted(wanted - self._key_ids)
            if outside:
                raise self._not_in_scope(outside[0])
        if not wanted or wanted == self._key_ids:
            return self
        return ExecutorKeyStore(self._url, self._ca, self._job, wanted)

    def generate_data_key(self, key_id: str) -> DataKey:
        return self._attested(key_id, lambda store: store.generate_data_key(key_id))

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> Secret:
        return self._attested(key_id, lambda store: store.unwrap_data_key(key_id, wrapped))

    def _attested(self, key_id: str, use: Callable[[KeyStore], _T]) -> _T:
        if self._key_ids and key_id not in self._key_ids:
            raise self._not_in_scope(key_id)
        try:
            return use(self._process_store())
        except TrustedMLError as exc:
            raise reworded(exc, f"{this_worker()}: {exc}") from exc

    def _not_in_scope(self, key_id: str) -> BrokerRefusedError:
        return BrokerRefusedError(
            f"{this_worker()}: the job's driver did not hand its executors key {key_id!r}",
            status=403,
            code="not_in_scope",
        )

    def _process_store(self) -> KeyStore:
        # Imported here: the driver, which only pickles this store, needs neither.
        from trustedml.broker import KeyBrokerClient
        from trustedml.tee import job_evidence_provider

        identity = (self._url, self._ca or b"", self._job or b"", os.environ.get(ENV_WORKER, ""))
        with _STORE_LOCK:
            store = _EXECUTOR_STORES.get(identity)
            if store is None:
                client = KeyBrokerClient(
                    self._url,
                    provider=job_evidence_provider(),
                    ca=self._ca,
                    key_ids=self._key_ids,
                    job_measurement=self._job,
                    worker=os.environ.get(ENV_WORKER) or None,
                )
                store = _EXECUTOR_STORES[identity] = AttestedKeyStore(client)
            return store


# Masters whose executors run in other TEEs (a standalone cluster's workers, or
# Kubernetes pods, each attesting with its own evidence).
_REMOTE_EXECUTOR_MASTERS = ("spark://", "k8s://")


def on_standalone_cluster() -> bool:
    """Whether this driver's executors run on a Spark standalone cluster's workers or in
    Kubernetes executor pods: the launcher said so (``TRUSTEDML_SPARK_MASTER``, set by
    ``trustedml submit/run --master spark://...``), or this process's active
    SparkContext runs on a ``spark://`` or ``k8s://`` master (an in-process session, or
    the driver of a Kubernetes pod)."""
    if os.environ.get(ENV_SPARK_MASTER, "").startswith(_REMOTE_EXECUTOR_MASTERS):
        return True
    # Only a process that already imported pyspark can have an active context.
    pyspark = sys.modules.get("pyspark")
    context = getattr(getattr(pyspark, "SparkContext", None), "_active_spark_context", None)
    return str(getattr(context, "master", "") or "").startswith(_REMOTE_EXECUTOR_MASTERS)


def this_worker() -> str:
    """Who this process is, for messages: ``worker <worker-id>@<host>`` as the worker
    daemon's launcher named it (``TRUSTEDML_WORKER``), else this host's name (the
    driver's own Python workers, or an executor of a worker trusted-ml did not start)."""
    label = os.environ.get(ENV_WORKER)
    if label:
        return f"worker {label}"
    why = "the driver, or not a trustedml cluster worker"
    return f"{socket.gethostname()} ({ENV_WORKER} unset: {why})"


# One attested store per broker and TEE identity, for the life of the process.
_STORES: dict[tuple[str, ...], AttestedKeyStore] = {}
_STORE_LOCK = threading.Lock()
# In an executor: one attested store per broker, job and worker.
_EXECUTOR_STORES: dict[tuple[str, bytes, bytes, str], AttestedKeyStore] = {}


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
