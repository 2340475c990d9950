"""Read and write encrypted datasets as Spark DataFrames (and pandas-on-Spark frames)."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from trustedml.data import KeyStore
from trustedml.errors import ConfigError, KeyNotFoundError, KeyStoreError, reworded
from trustedml.hazmat import framing

if TYPE_CHECKING:
    import pyspark.pandas as ps
    from pyspark.sql import DataFrame, SparkSession

FORMATS = ("csv", "json", "text", "parquet")


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


def _register_for(
    spark: SparkSession, keystore: KeyStore, key_ids: Collection[str], path: str
) -> None:
    """:func:`register` for reading or writing ``path``; a key refusal names it."""
    try:
        register(spark, keystore, key_ids)
    except (KeyStoreError, KeyNotFoundError) as exc:
        raise reworded(exc, f"{path}: {exc}") from exc


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
    **options: Any,
) -> DataFrame:
    """Read an encrypted file or directory into a DataFrame.

    ``options`` are those of ``spark.read.csv``/``json``/``text``/``parquet``
    (header, schema, inferSchema, sep, quote, escape, multiLine...); CSV and JSON
    are parsed by Spark's own parsers from the decrypted records.
    """
    from pyspark.sql import DataFrame

    _check_format(fmt)
    path = os.fspath(path)
    _register_for(spark, keystore, _file_key_ids(path), path)
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
    **options: Any,
) -> None:
    """Write ``df`` encrypted, one file per partition, each under a fresh data key
    wrapped by ``key_id``. CSV and JSON are rendered by Spark's ``to_csv``/``to_json``."""
    from pyspark.sql import functions as F

    _check_format(fmt)
    spark = df.sparkSession
    path = os.fspath(path)
    _register_for(spark, keystore, [key_id], path)
    if mode not in ("errorifexists", "error", "overwrite", "append", "ignore"):
        raise ConfigError(
            f"mode: expected errorifexists, overwrite, append or ignore, got {mode!r}"
        )
    exists = os.path.isdir(path) and any(not n.startswith(".") for n in os.listdir(path))
    if exists and mode in ("errorifexists", "error"):
        raise ConfigError(f"{path} already exists; use mode='overwrite' or 'append'")
    if exists and mode == "ignore":
        return
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
    save_mode = "overwrite" if mode == "overwrite" else "append"
    out.write.format("trustedml").options(**writer_opts).mode(save_mode).save(path)


def read_encrypted_pandas(
    spark: SparkSession,
    path: str | os.PathLike[str],
    fmt: str,
    *,
    keystore: KeyStore,
    **options: Any,
) -> ps.DataFrame[Any]:
    """:func:`read_encrypted` as a pandas-on-Spark frame."""
    return read_encrypted(spark, path, fmt, keystore=keystore, **options).pandas_api()


def write_encrypted_pandas(
    psdf: ps.DataFrame[Any],
    path: str | os.PathLike[str],
    fmt: str,
    key_id: str,
    *,
    keystore: KeyStore,
    mode: str = "errorifexists",
    index: bool = False,
    **options: Any,
) -> None:
    """:func:`write_encrypted` for a pandas-on-Spark frame (``index``: keep it as columns)."""
    import warnings

    from pyspark.pandas.utils import PandasAPIOnSparkAdviceWarning

    with warnings.catch_warnings():
        # Dropping the index is the documented default here, not an accident to warn of.
        warnings.simplefilter("ignore", PandasAPIOnSparkAdviceWarning)
        sdf = psdf.to_spark(index_col="index" if index else None)
    write_encrypted(sdf, path, fmt, key_id, keystore=keystore, mode=mode, **options)
