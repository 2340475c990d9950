"""The ``trustedml`` Python data source: Spark reads and writes trusted-ml files.

Reading yields text lines (``value`` column, split along chunk boundaries with
every line read exactly once), whole-file records, or Parquet rows. CSV and JSON
go through :func:`read_encrypted`, which hands the decrypted lines to Spark's own
parsers so every ``spark.read.csv``/``json`` option behaves as usual.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.types import StringType, StructField, StructType

from trustedml.data import SUFFIX, DecryptingReader, EncryptingWriter, KeyStore
from trustedml.errors import ConfigError
from trustedml.spark._records import split_csv_records, split_region

if TYPE_CHECKING:
    import pyarrow as pa

NAME = "trustedml"
READ_MODES = ("text", "wholetext", "csvrecords", "parquet")
WRITE_FORMATS = ("text", "parquet")
DEFAULT_SPLIT_BYTES = 32 << 20
BATCH_ROWS = 8192


def list_files(path: str) -> list[str]:
    """Encrypted files under ``path`` (a file, or a directory searched recursively;
    names starting with '.' or '_' are skipped as Spark does)."""
    root = Path(path)
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise ConfigError(f"{path}: no such file or directory")
    files = sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
    )
    if not files:
        raise ConfigError(f"{path}: no files to read")
    return files


@dataclass(frozen=True)
class _Split(InputPartition):
    path: str
    first: int
    stop: int


class _Reader(DataSourceReader):
    def __init__(self, keystore: KeyStore, options: dict[str, str], schema: StructType) -> None:
        self._keystore = keystore
        self._mode = options.get("mode", "text")
        self._files = list_files(options["path"])
        self._split_bytes = int(options.get("splitbytes", DEFAULT_SPLIT_BYTES))
        self._quote = options.get("quote", '"').encode()
        self._escape = options.get("escape", "\\").encode()
        self._schema = schema

    def partitions(self) -> Sequence[InputPartition]:
        splits: list[InputPartition] = []
        for path in self._files:
            with open(path, "rb") as raw:
                reader = DecryptingReader(raw, self._keystore, name=path)
                count, chunk = reader.layout.count, reader.layout.chunk_size
                if self._mode == "parquet":
                    splits.extend(self._row_group_splits(path, reader))
                    continue
            if self._mode != "text":
                splits.append(_Split(path, 0, count))
                continue
            per = max(1, self._split_bytes // chunk)
            splits.extend(_Split(path, i, min(i + per, count)) for i in range(0, count, per))
        return splits

    def _row_group_splits(self, path: str, reader: DecryptingReader) -> list[InputPartition]:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(reader).metadata
        # Consecutive row groups up to splitBytes make one partition, like Spark's own.
        splits: list[InputPartition] = []
        first, size = 0, 0
        for i in range(meta.num_row_groups):
            size += meta.row_group(i).total_byte_size
            if size >= self._split_bytes:
                splits.append(_Split(path, first, i + 1))
                first, size = i + 1, 0
        if first < meta.num_row_groups or not splits:
            splits.append(_Split(path, first, meta.num_row_groups))
        return splits

    def read(self, partition: InputPartition) -> Iterator[Any]:
        assert isinstance(partition, _Split)
        import pyarrow as pa

        with open(partition.path, "rb") as raw:
            reader = DecryptingReader(raw, self._keystore, name=partition.path)
            if self._mode == "parquet":
                groups = list(range(partition.first, partition.stop))
                yield from _parquet_batches(reader, self._schema, groups)
                return
            if self._mode == "text":
                region = split_region(
                    reader.chunk,
                    reader.layout.count,
                    reader.layout.chunk_size,
                    partition.first,
                    partition.stop,
                )
                yield from _line_batches(region)
                return
            data = reader.readall()
            records: Iterator[bytes] = (
                iter([data])
                if self._mode == "wholetext"
                else split_csv_records(data, self._quote, self._escape)
            )
            batch: list[str] = []
            for record in records:
                batch.append(record.decode("utf-8", errors="replace"))
                if len(batch) >= BATCH_ROWS:
                    yield pa.RecordBatch.from_arrays([pa.array(batch, pa.string())], ["value"])
                    batch = []
            if batch:
                yield pa.RecordBatch.from_arrays([pa.array(batch, pa.string())], ["value"])


def _line_batches(region: bytes) -> Iterator[pa.RecordBatch]:
    """Cut a region of newline-terminated lines into Arrow string batches in bulk."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not region:
        return
    body = region[:-1] if region.endswith(b"\n") else region
    pieces = pc.list_flatten(pc.split_pattern(pa.array([body], pa.binary()), "\n"))
    pieces = pc.replace_substring_regex(pieces, "\r$", "")
    try:
        lines = pieces.cast(pa.string())
    except pa.ArrowInvalid:
        # Invalid UTF-8: decode line by line with replacement, as Spark's text reader does.
        lines = pa.array(
            [v.decode("utf-8", errors="replace") for v in pieces.to_pylist()], pa.string()
        )
    for offset in range(0, len(lines), BATCH_ROWS * 8):
        chunk = lines.slice(offset, BATCH_ROWS * 8)
        yield pa.RecordBatch.from_arrays([chunk], ["value"])


def _parquet_batches(
    reader: DecryptingReader, schema: StructType, row_groups: list[int]
) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import to_arrow_schema

    parquet = pq.ParquetFile(reader)
    names = [f.name for f in schema.fields]
    # Spark wants its own Arrow types (string, not large_string; its timestamp unit).
    target = to_arrow_schema(schema)
    if not row_groups:
        return
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=names, row_groups=row_groups):
        yield batch if batch.schema.equals(target) else batch.cast(target)


def parquet_schema(keystore: KeyStore, path: str) -> StructType:
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema

    with open(path, "rb") as raw:
        schema = pq.ParquetFile(DecryptingReader(raw, keystore, name=path)).schema_arrow
    result: StructType = from_arrow_schema(schema)
    return result


class _CommitMessage(WriterCommitMessage):
    """What a task wrote: hidden staged files (readers skip dot files) and the names
    they take when the job commits."""

    def __init__(self, staged: list[tuple[str, str]]) -> None:
        self.staged = staged


class _Writer(DataSourceArrowWriter):
    def __init__(
        self, keystore: KeyStore, options: dict[str, str], schema: StructType, overwrite: bool
    ) -> None:
        self._keystore = keystore
        self._path = options["path"]
        self._format = options.get("format", "text")
        if self._format not in WRITE_FORMATS:
            raise ConfigError(
                f"format: expected one of {', '.join(WRITE_FORMATS)}, got {self._format!r}"
            )
        self._key_id = options.get("keyid") or options.get("key_id") or ""
        if not self._key_id:
            raise ConfigError("writing encrypted data needs option keyId")
        self._ext = options.get("extension", self._format)
        self._header = options.get("headerline")
        self._overwrite = overwrite
        self._schema = schema
        self._log2 = int(options.get("log2chunksize", 20))
        if self._format == "text" and (
            len(schema.fields) != 1 or not isinstance(schema.fields[0].dataType, StringType)
        ):
            raise ConfigError(
                f"format text: expected one string column, got {schema.simpleString()}"
            )
        Path(self._path).mkdir(parents=True, exist_ok=True)

    def write(self, iterator: Iterator[pa.RecordBatch]) -> _CommitMessage:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
        name = f"part-{part:05d}-{uuid.uuid4().hex[:12]}.{self._ext}{SUFFIX}"
        final = Path(self._path) / name
        tmp = Path(self._path) / f".{name}.part"
        try:
            with open(tmp, "wb") as raw:
                os.fchmod(raw.fileno(), 0o600)
                writer = EncryptingWriter(
                    raw, self._keystore.generate_data_key(self._key_id), log2_chunk=self._log2
                )
                if self._format == "parquet":
                    _write_parquet(writer, iterator, self._schema)
                else:
                    _write_text(writer, iterator, self._header)
                writer.close()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # Renamed into view only when the whole job commits: a task that finishes
        # while the job is failing must not leave a visible part of the output.
        return _CommitMessage([(str(tmp), str(final))])

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        staged = [pair for m in messages if isinstance(m, _CommitMessage) for pair in m.staged]
        for tmp, final in staged:
            os.replace(tmp, final)
        if self._overwrite:
            written = {final for _, final in staged}
            for old in Path(self._path).glob(f"part-*{SUFFIX}"):
                if str(old) not in written:
                    old.unlink()
        (Path(self._path) / "_SUCCESS").touch()

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        for m in messages:
            if isinstance(m, _CommitMessage):
                for tmp, _ in m.staged:
                    Path(tmp).unlink(missing_ok=True)


def _write_text(
    writer: EncryptingWriter, batches: Iterator[pa.RecordBatch], header: str | None
) -> None:
    buf = io.BytesIO()
    if header:
        buf.write(header.encode("utf-8") + b"\n")
    for batch in batches:
        for value in batch.column(0).to_pylist():
            # Spark's text writer writes nothing for a null row but the newline.
            if value is not None:
                buf.write(value.encode("utf-8"))
            buf.write(b"\n")
        if buf.tell() >= 1 << 20:
            writer.write(buf.getbuffer())
            buf = io.BytesIO()
    writer.write(buf.getbuffer())


def _write_parquet(
    writer: EncryptingWriter, batches: Iterator[pa.RecordBatch], schema: StructType
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal out, pending_bytes
        if not pending:
            return
        if out is None:
            out = pq.ParquetWriter(writer, pending[0].schema)
        # One row group per ~64 MiB rather than one per small Arrow batch.
        out.write_table(pa.Table.from_batches(pending))
        pending.clear()
        pending_bytes = 0

    try:
        for batch in batches:
            pending.append(batch)
            pending_bytes += batch.nbytes
            if pending_bytes >= 64 << 20:
                flush()
        flush()
        if out is None:
            # An empty partition still yields a valid Parquet file with the schema.
            from pyspark.sql.pandas.types import to_arrow_schema

            out = pq.ParquetWriter(writer, to_arrow_schema(schema))
    finally:
        if out is not None:
            out.close()


def _lower(options: Any) -> dict[str, str]:
    # Spark hands options over case-insensitively; look them up in lower case.
    return {str(k).lower(): str(v) for k, v in dict(options).items()}


class TrustedMLDataSource(DataSource):
    """Registered per session by :func:`register`, carrying what
    ``KeyStore.for_workers()`` made for the files at hand: the keys in the worker."""

    _keystore: KeyStore | None = None

    @classmethod
    def name(cls) -> str:
        return NAME

    def _keys(self) -> KeyStore:
        if self._keystore is None:
            raise ConfigError("the trustedml data source was not registered with keys")
        return self._keystore

    def schema(self) -> StructType | str:
        mode = self.options.get("mode", "text")
        if mode not in READ_MODES:
            raise ConfigError(f"mode: expected one of {', '.join(READ_MODES)}, got {mode!r}")
        if mode == "parquet":
            return parquet_schema(self._keys(), list_files(self.options["path"])[0])
        return StructType([StructField("value", StringType(), True)])

    def reader(self, schema: StructType) -> DataSourceReader:
        return _Reader(self._keys(), _lower(self.options), schema)

    def writer(self, schema: StructType, overwrite: bool) -> DataSourceArrowWriter:
        return _Writer(self._keys(), _lower(self.options), schema, overwrite)
