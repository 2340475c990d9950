"""The JVM side of the ``.tml`` format: the ``tml://`` Hadoop file system's jar, its Spark
properties, and how a session's JVM is handed the job's keys (docs/jvm-fs.md)."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from trustedml.data import KeyStore
from trustedml.errors import ConfigError, LaunchError
from trustedml.spark._javac import compiled_jar
from trustedml.spark._keyagent import generate_reply, unwrap_reply

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "AGENT_OPTION",
    "AGENT_PYTHON_OPTION",
    "FS_CLASS",
    "KEY_ID_OPTION",
    "LOG2_CHUNK_OPTION",
    "agent_options",
    "fs_conf",
    "fs_jar",
    "hand_keys",
    "tml_uri",
    "unavailable",
]

FS_CLASS = "org.trustedml.fs.TmlFileSystem"
KEYS_CLASS = "org.trustedml.fs.TmlKeys"
FS_SCHEME = "tml"
# Reader/writer options; Spark copies them into the Hadoop Configuration the FS sees.
KEY_ID_OPTION = "trustedml.fs.keyId"
LOG2_CHUNK_OPTION = "trustedml.fs.log2ChunkSize"
AGENT_OPTION = "trustedml.fs.agent"
AGENT_PYTHON_OPTION = "trustedml.fs.agent.python"
JAVA_DIR = Path(__file__).resolve().parent / "java" / "fs"
_NO_JAR = "the session was started without the trusted-ml file system jar (spark.jars)"


def fs_jar(cache_dir: Path | None = None) -> Path:
    """The jar of the ``tml`` file system, compiled against the installed pyspark.

    Cached in ``cache_dir`` (default ``~/.cache/trustedml/jars``) under a hash of the
    Java sources and the pyspark version; a cached jar is returned as is.
    """
    return compiled_jar(
        sorted(JAVA_DIR.glob("*.java")),
        FS_CLASS,
        stem="trustedml-fs",
        what="the trusted-ml file system",
        cache_dir=cache_dir,
    )


def fs_conf(jar: Path) -> dict[str, str]:
    """Spark properties registering the ``tml`` scheme from ``jar`` (``spark.jars`` is
    to be merged with other jars). No secrets."""
    return {
        "spark.jars": str(Path(jar).resolve()),
        "spark.hadoop.fs.tml.impl": FS_CLASS,
        # Per-read options reach the FS through its Configuration: no shared instances.
        "spark.hadoop.fs.tml.impl.disable.cache": "true",
    }


def tml_uri(path: str | os.PathLike[str]) -> str:
    """``tml:///abs/path`` for a local ``path`` (made absolute)."""
    return f"{FS_SCHEME}://" + Path(os.path.abspath(os.fspath(path))).as_posix()


def _jvm(spark: SparkSession) -> Any:
    return getattr(spark, "_jvm", None)


def unavailable(spark: SparkSession) -> str | None:
    """None when ``spark`` can use the ``tml`` file system; otherwise why not."""
    from py4j.java_gateway import JavaClass  # type: ignore[import-untyped]

    jvm = _jvm(spark)
    if jvm is None:
        return "the session has no JVM in this process (Spark Connect)"
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    if conf.get("fs.tml.impl") == FS_CLASS and isinstance(jvm.org.trustedml.fs.TmlKeys, JavaClass):
        return None
    try:
        fs_jar()
    except LaunchError as exc:
        return f"{_NO_JAR}: it cannot be built here: {exc}"
    return _NO_JAR


@runtime_checkable
class _ExecutorStore(Protocol):
    """A store each executor rebuilds from public coordinates and attests for itself
    (trustedml.runtime.ExecutorKeyStore)."""

    @property
    def url(self) -> str: ...

    @property
    def ca(self) -> bytes | None: ...

    @property
    def job_measurement(self) -> bytes | None: ...

    @property
    def key_ids(self) -> frozenset[str]: ...


class _KeySource:
    """The driver JVM's key source (``TmlKeys.Source``): py4j calls it from Spark's task
    threads, several at once. Replies carry a status byte (docs/jvm-fs.md)."""

    class Java:
        implements: ClassVar[list[str]] = [KEYS_CLASS + "$Source"]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, KeyStore] = {}
        self._fallback: KeyStore | None = None

    def add(self, keystore: KeyStore, key_ids: Collection[str]) -> bool:
        """Serve ``key_ids`` (every key id when empty) from ``keystore``; True when that
        replaces another store, whose unwrapped keys the JVM must then forget."""
        with self._lock:
            before = [self._stores.get(k, self._fallback) for k in key_ids] or [self._fallback]
            if key_ids:
                self._stores.update(dict.fromkeys(key_ids, keystore))
            else:
                self._fallback = keystore
        return any(old is not None and old is not keystore and old != keystore for old in before)

    def _store(self, key_id: str) -> KeyStore:
        with self._lock:
            store = self._stores.get(key_id, self._fallback)
        if store is None:
            raise ConfigError(f"key {key_id!r} was not handed to this JVM")
        return store

    def unwrap(self, keyId: str, wrapped: bytes) -> bytes:
        try:
            store = self._store(keyId)
        except ConfigError as exc:
            return b"\x00" + str(exc).encode()
        return unwrap_reply(store, keyId, wrapped)

    def generate(self, keyId: str) -> bytes:
        try:
            store = self._store(keyId)
        except ConfigError as exc:
            return b"\x00" + str(exc).encode()
        return generate_reply(store, keyId)


_SOURCES: dict[int, _KeySource] = {}
_SOURCES_LOCK = threading.Lock()


def _driver_source(spark: SparkSession) -> _KeySource:
    """This driver JVM's key source, installed on first use (once per gateway)."""
    from pyspark.java_gateway import ensure_callback_server_started

    gateway = spark.sparkContext._gateway
    assert gateway is not None
    with _SOURCES_LOCK:
        source = _SOURCES.get(id(gateway))
        keys = _jvm(spark).org.trustedml.fs.TmlKeys
        if source is None or not keys.isInstalled():
            # Task threads of the JVM call back on their own: they need Python's server.
            ensure_callback_server_started(gateway)  # type: ignore[no-untyped-call]
            source = _SOURCES[id(gateway)] = _KeySource()
            keys.install(source)
        return source


def agent_options(store: _ExecutorStore, python: str) -> dict[str, str]:
    """The read/write options that make each executor JVM start a key agent (``python -m
    trustedml._keyagent``) attesting for ``store``'s keys: nothing secret."""
    descriptor = {
        "url": store.url,
        "ca": store.ca.decode("ascii") if store.ca is not None else None,
        "job_measurement": store.job_measurement.hex() if store.job_measurement else None,
        "key_ids": sorted(store.key_ids),
    }
    return {AGENT_OPTION: json.dumps(descriptor, sort_keys=True), AGENT_PYTHON_OPTION: python}


def hand_keys(spark: SparkSession, keystore: KeyStore, key_ids: Collection[str]) -> dict[str, str]:
    """Let ``spark``'s JVMs get the data keys of ``key_ids`` from ``keystore``; returns
    the extra read/write options that carry (non-secret) key delivery to executors.

    ``keystore.for_workers(key_ids)`` runs first, so a key the store cannot serve fails
    here, before any task. The driver JVM calls back into this process's store; on a
    standalone cluster, executors start a key agent that attests for itself (when the
    workers' store is an executor store; otherwise :class:`ConfigError` says why, and
    the caller falls back to the Python data source).
    """
    ids = sorted(set(key_ids))
    workers = keystore.for_workers(ids)
    # Executors in other TEEs (a standalone cluster's workers, Kubernetes pods).
    standalone = str(spark.sparkContext.master or "").startswith(("spark://", "k8s://"))
    options: dict[str, str] = {}
    if standalone:
        if not isinstance(workers, _ExecutorStore):
            raise ConfigError(
                "the executors of a standalone cluster get keys only from the key broker "
                f"(by attesting); this job's key store ({type(keystore).__name__}) would "
                "have to put key-encryption keys in the Spark configuration"
            )
        python = str(spark.conf.get("spark.pyspark.python", None) or sys.executable)
        options = agent_options(workers, python)
    try:
        source = _driver_source(spark)
    except Exception as exc:
        # py4j's errors: the callback server or the JVM class is not reachable.
        raise ConfigError(f"cannot hand the JVM its keys: {exc}") from exc
    if source.add(keystore, ids):
        # Keys another store unwrapped must not serve a store that may lack them.
        _jvm(spark).org.trustedml.fs.TmlKeys.clearCache()
    return options
