"""Read and write encrypted datasets as Spark DataFrames (and pandas-on-Spark frames)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from trustedml.data import SUFFIX, KeyStore
from trustedml.errors import (
    ConfigError,
    EngineFallbackWarning,
    IntegrityError,
    KeyNotFoundError,
    KeyStoreError,
    NotEncryptedError,
    reworded,
)
from trustedml.hazmat import framing

if TYPE_CHECKING:
    import pyspark.pandas as ps
    from pyspark.sql import DataFrame, SparkSession

FORMATS = ("csv", "json", "text", "parquet")
ENGINES = ("auto", "jvm", "python")
WRITE_MODES = ("errorifexists", "error", "overwrite", "append", "ignore")
# Options only the Python data source understands.
PYTHON_ONLY_OPTIONS = ("splitBytes",)
NOT_ENCRYPTED = "not a trusted-ml file (bad magic)"
# How a py4j/Spark error text carries the JVM reader's message (one line).
_JVM_INTEGRITY = re.compile(r"org\.trustedml\.fs\.TmlIntegrityException: ([^\n]+)")


def register(spark: SparkSession, keystore: KeyStore, key_ids: Collection[str] = ()) -> None:
    """Register the ``trustedml`` data source for ``spark`` with the keys ``key_ids``
    (every key the store holds when empty; see :meth:`KeyStore.for_workers`).

    ``keystore.for_workers(key_ids)`` travels pickled with the data source to Spark's
    Python workers (over Spark's encrypted channels in secure mode); it never touches
    disk. A key the store cannot serve fails here, before any task starts.
    """
    from trustedml.spark._datasource import TrustedMLDataSource

    workers = keystore.for_workers(sorted(set(key_ids)))
    if getattr(spark, "_trustedml_keystore", None) == workers:
        return
    # A subclass per registration carries the keys; cloudpickle ships it by value.
    bound = type("TrustedMLDataSource", (TrustedMLDataSource,), {"_keystore": workers})
    spark.dataSource.register(bound)
    spark._trustedml_keystore = workers  # type: ignore[attr-defined]


@contextmanager
def _naming(path: str) -> Iterator[None]:
    """A key store's refusal (a missing key, the broker's answer) names ``path``."""
    try:
        yield
    except (KeyStoreError, KeyNotFoundError) as exc:
        raise reworded(exc, f"{path}: {exc}") from exc


def _register_for(
    spark: SparkSession, keystore: KeyStore, key_ids: Collection[str], path: str
) -> None:
    """:func:`register` for reading or writing ``path``; a key refusal names it."""
    with _naming(path):
        register(spark, keystore, key_ids)


def _jvm_route(
    spark: SparkSession,
    keystore: KeyStore,
    key_ids: Collection[str],
    path: str,
    engine: str,
    options: Mapping[str, Any],
) -> dict[str, str] | None:
    """The extra options that read or write ``path`` through the JVM's ``tml`` file
    system, with the keys ``key_ids`` handed to the JVM; None for the Python data source.

    ``auto`` falls back to the Python data source with one
    :class:`~trustedml.errors.EngineFallbackWarning` saying why; ``jvm`` raises
    :class:`ConfigError` with the reason instead."""
    if engine not in ENGINES:
        raise ConfigError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "python":
        return None
    python_only = sorted(set(PYTHON_ONLY_OPTIONS) & set(options))
    if python_only:
        if engine == "jvm":
            raise ConfigError(
                f"{', '.join(python_only)}: an option of engine='python'; the JVM path "
                "splits files as Spark does (spark.sql.files.maxPartitionBytes)"
            )
        return None  # asked for by name: the Python data source, as documented
    from trustedml.spark._jvmfs import hand_keys, unavailable

    reason = unavailable(spark)
    if reason is None:
        try:
            with _naming(path):
                return hand_keys(spark, keystore, sorted(set(key_ids)))
        except ConfigError as exc:
            if engine == "jvm":
                raise reworded(exc, f"{path}: engine='jvm': {exc}") from exc
            reason = str(exc)
    elif engine == "jvm":
        raise ConfigError(f"{path}: engine='jvm' is not available: {reason}")
    warnings.warn(
        f"{path}: through the Python data source (slower), not the JVM file system: {reason}",
        EngineFallbackWarning,
        stacklevel=3,
    )
    return None


@contextmanager
def _jvm_errors() -> Iterator[None]:
    """The JVM file system's integrity failure, raised while Spark plans or runs a job
    in the driver, as the :class:`IntegrityError` Python's reader raises."""
    try:
        yield
    except Exception as exc:
        found = _JVM_INTEGRITY.search(str(exc))
        if found is None:
            raise
        message = found.group(1).strip()
        error = NotEncryptedError if message.endswith(NOT_ENCRYPTED) else IntegrityError
        raise error(message) from exc


def _file_key_ids(path: str) -> set[str]:
    """The KEK ids named by the headers of the encrypted files under ``path``: all the
    workers reading them may be given."""
    from trustedml.spark._datasource import list_files

    ids = set()
    for name in list_files(path):
        with open(name, "rb") as f:
            head = f.read(framing.MAX_HEADER_SIZE)
        ids.add(framing.Header.parse(head, name).key_id)
    return ids


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def _truthy(value: Any) -> bool:
    return str(value).lower() == "true"


def read_encrypted(
    spark: SparkSession,
    path: str | os.PathLike[str],
    fmt: str,
    *,
    keystore: KeyStore,
    engine: str = "auto",
    **options: Any,
) -> DataFrame:
    """Read an encrypted file or directory into a DataFrame.

    ``options`` are those of ``spark.read.csv``/``json``/``text``/``parquet``
    (header, schema, inferSchema, sep, quote, escape, multiLine, wholetext...).

    ``engine``: ``"jvm"`` reads through the JVM's ``tml`` file system, so Spark's own
    readers (the vectorized Parquet reader, column pruning, filter push-down) see the
    decrypted files; ``"python"`` through the ``trustedml`` Python data source (CSV and
    JSON parsed by Spark's parsers from the decrypted records); ``"auto"`` (default)
    the JVM when the session can load it and be handed the keys, else the Python data
    source with an :class:`~trustedml.errors.EngineFallbackWarning` saying why.
    ``splitBytes`` (the Python data source's split size) implies ``"python"``.
    """
    _check_format(fmt)
    path = os.fspath(path)
    key_ids = _file_key_ids(path)
    extra = _jvm_route(spark, keystore, key_ids, path, engine, options)
    if extra is not None:
        return _read_jvm(spark, path, fmt, extra, options)
    _register_for(spark, keystore, key_ids, path)
    return _read_python(spark, path, fmt, options)


def _read_jvm(
    spark: SparkSession,
    path: str,
    fmt: str,
    extra: Mapping[str, str],
    options: Mapping[str, Any],
) -> DataFrame:
    from trustedml.spark._jvmfs import tml_uri

    opts = {k: v for k, v in options.items() if k != "schema"}
    reader = spark.read.format(fmt).options(**{**opts, **extra})
    if options.get("schema") is not None:
        reader = reader.schema(options["schema"])
    if os.path.isfile(path) and path.endswith(SUFFIX):
        # The file system shows x.csv.tml as x.csv; Spark's file index keeps a file
        # given by name only when the name is the one listed.
        path = path[: -len(SUFFIX)]
    with _jvm_errors():
        return reader.load(tml_uri(path))


def _read_python(spark: SparkSession, path: str, fmt: str, options: Mapping[str, Any]) -> DataFrame:
    from pyspark.sql import DataFrame

    opts = {k: v for k, v in options.items() if k not in ("schema", "splitBytes")}
    schema = options.get("schema")
    multiline = _truthy(opts.get("multiLine", opts.get("multiline", False)))
    source = spark.read.format("trustedml")
    if "splitBytes" in options:
        source = source.option("splitBytes", str(int(options["splitBytes"])))
    if fmt == "parquet":
        return source.option("mode", "parquet").load(path)
    if fmt == "text":
        mode = "wholetext" if _truthy(opts.get("wholetext", False)) else "text"
        return source.option("mode", mode).load(path)
    if fmt == "csv" and multiline:
        lines = source.options(
            mode="csvrecords", quote=opts.get("quote", '"'), escape=opts.get("escape", "\\")
        ).load(path)
        opts.pop("multiLine", None)
        opts.pop("multiline", None)
    elif fmt == "json" and multiline:
        lines = source.option("mode", "wholetext").load(path)
    else:
        lines = source.option("mode", "text").load(path)
    jvm = spark._jvm
    assert jvm is not None
    # `as` is a Python keyword, hence getattr.
    jlines = getattr(lines._jdf, "as")(jvm.org.apache.spark.sql.Encoders.STRING())
    jreader = spark._jsparkSession.read()
    for key, value in opts.items():
        jreader = jreader.option(key, str(value))
    if schema is not None:
        ddl = schema if isinstance(schema, str) else schema.json()
        jreader = (
            jreader.schema(ddl)
            if isinstance(schema, str)
            else jreader.schema(jvm.org.apache.spark.sql.types.DataType.fromJson(ddl))
        )
    jdf = jreader.csv(jlines) if fmt == "csv" else jreader.json(jlines)
    return DataFrame(jdf, spark)


def write_encrypted(
    df: DataFrame,
    path: str | os.PathLike[str],
    fmt: str,
    key_id: str,
    *,
    keystore: KeyStore,
    mode: str = "errorifexists",
    engine: str = "auto",
    **options: Any,
) -> None:
    """Write ``df`` encrypted, one file per partition, each under a fresh data key
    wrapped by ``key_id``; the files appear only when the whole job commits.

    ``options`` are those of ``df.write.csv``/``json``/``text``/``parquet``.
    ``engine`` as in :func:`read_encrypted`: ``"jvm"`` writes with Spark's own writers
    through the ``tml`` file system (``part-…-c000.csv.tml``); ``"python"`` through the
    ``trustedml`` Python data source (CSV and JSON rendered by ``to_csv``/``to_json``).
    Both write files the other engine and ``trustedml decrypt`` read."""
    _check_format(fmt)
    if mode not in WRITE_MODES:
        raise ConfigError(
            f"mode: expected errorifexists, overwrite, append or ignore, got {mode!r}"
        )
    spark = df.sparkSession
    path = os.fspath(path)
    extra = _jvm_route(spark, keystore, [key_id], path, engine, options)
    if extra is None:
        _register_for(spark, keystore, [key_id], path)
    exists = os.path.isdir(path) and any(not n.startswith(".") for n in os.listdir(path))
    if exists and mode in ("errorifexists", "error"):
        raise ConfigError(f"{path} already exists; use mode='overwrite' or 'append'")
    if exists and mode == "ignore":
        return
    # What exists was checked above (an empty or hidden-only directory is no output).
    save_mode = "overwrite" if mode == "overwrite" else "append"
    if extra is not None:
        from trustedml.spark._jvmfs import KEY_ID_OPTION, tml_uri

        opts = {**{k: str(v) for k, v in options.items()}, **extra, KEY_ID_OPTION: key_id}
        with _jvm_errors():
            df.write.mode(save_mode).format(fmt).options(**opts).save(tml_uri(path))
        return
    _write_python(df, path, fmt, key_id, save_mode, options)


def _write_python(
    df: DataFrame,
    path: str,
    fmt: str,
    key_id: str,
    save_mode: str,
    options: Mapping[str, Any],
) -> None:
    from pyspark.sql import functions as F

    str_opts: Mapping[str, str] = {k: str(v) for k, v in options.items()}
    writer_opts = {"keyId": key_id}
    if fmt == "parquet":
        out, writer_opts["format"] = df, "parquet"
    elif fmt == "text":
        out, writer_opts["format"] = df, "text"
        writer_opts["extension"] = "txt"
    elif fmt == "csv":
        cols = F.struct(*[F.col(f"`{c}`") for c in df.columns])
        out = df.select(F.to_csv(cols, dict(str_opts)).alias("value"))
        writer_opts.update(format="text", extension="csv")
        if _truthy(str_opts.get("header", False)):
            writer_opts["headerLine"] = str_opts.get("sep", ",").join(df.columns)
    else:
        cols = F.struct(*[F.col(f"`{c}`") for c in df.columns])
        out = df.select(F.to_json(cols, dict(str_opts)).alias("value"))
        writer_opts.update(format="text", extension="json")
    out.write.format("trustedml").options(**writer_opts).mode(save_mode).save(path)


def read_encrypted_pandas(
    spark: SparkSession,
    path: str | os.PathLike[str],
    fmt: str,
    *,
    keystore: KeyStore,
    engine: str = "auto",
    **options: Any,
) -> ps.DataFrame[Any]:
    """:func:`read_encrypted` as a pandas-on-Spark frame."""
    df = read_encrypted(spark, path, fmt, keystore=keystore, engine=engine, **options)
    return df.pandas_api()


def write_encrypted_pandas(
    psdf: ps.DataFrame[Any],
    path: str | os.PathLike[str],
    fmt: str,
    key_id: str,
    *,
    keystore: KeyStore,
    mode: str = "errorifexists",
    index: bool = False,
    engine: str = "auto",
    **options: Any,
) -> None:
    """:func:`write_encrypted` for a pandas-on-Spark frame (``index``: keep it as columns)."""
    import warnings

    from pyspark.pandas.utils import PandasAPIOnSparkAdviceWarning

    with warnings.catch_warnings():
        # Dropping the index is the documented default here, not an accident to warn of.
        warnings.simplefilter("ignore", PandasAPIOnSparkAdviceWarning)
        sdf = psdf.to_spark(index_col="index" if index else None)
    write_encrypted(sdf, path, fmt, key_id, keystore=keystore, mode=mode, engine=engine, **options)
