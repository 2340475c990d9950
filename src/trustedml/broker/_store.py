"""Where the broker keeps its state: keys (wrapped KEKs, policies) and the audit log.

The default store is one SQLite file in WAL mode with ``synchronous=FULL``: a write
returns only when it is on disk. Writes reach it through one writer thread that
commits whatever is queued in one transaction (group commit), so many concurrent
requests share one fsync. The schema is in docs/broker-protocol.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from trustedml.broker._audit import AuditEntry, AuditHead
from trustedml.broker._integrity import (
    HeadWriter,
    Seal,
    head_path,
    read_head_file,
    write_head_file,
)
from trustedml.errors import AuditLogError, ConfigError, KeyBrokerError

SCHEMA_VERSION = 2  # 2: row MACs, key index and seal (1: run `trustedml broker migrate`)
KEY_STATES = ("enabled", "disabled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    key_id          TEXT PRIMARY KEY,
    state           TEXT NOT NULL CHECK (state IN ('enabled', 'disabled')),
    current_version INTEGER NOT NULL CHECK (current_version >= 1),
    policy          TEXT,
    policy_revision INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    row_seq         INTEGER NOT NULL DEFAULT 0,
    mac             TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_versions (
    key_id      TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    version     INTEGER NOT NULL CHECK (version >= 1),
    wrapped_kek BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    mac         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (key_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY,
    time        TEXT NOT NULL,
    event       TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    key_id      TEXT,
    client      TEXT,
    measurement TEXT,
    reasons     TEXT NOT NULL,
    details     TEXT NOT NULL,
    prev_mac    TEXT NOT NULL,
    mac         TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    state: str
    current_version: int
    policy: str | None  # Policy.to_dict() as JSON, or None: no release
    policy_revision: int
    created_at: str
    updated_at: str
    row_seq: int = 0  # audit seq of the entry that recorded this row
    mac: str = ""  # docs/broker-protocol.md, "Integrity"


@dataclass(frozen=True)
class VersionRow:
    key_id: str
    version: int
    wrapped_kek: bytes
    created_at: str
    mac: str = ""


# The operations a write applies, in order, inside one transaction.


def _set_meta(conn: sqlite3.Connection, name: str, text: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, text))


@dataclass(frozen=True)
class PutKey:
    """Insert or replace a key's row."""

    row: KeyRow

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            # An upsert, not INSERT OR REPLACE: a replace deletes the row first, and the
            # cascade would take the key's versions.
            "INSERT INTO keys (key_id, state, current_version, policy, "
            "policy_revision, created_at, updated_at, row_seq, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key_id) DO UPDATE SET state = excluded.state, "
            "current_version = excluded.current_version, "
            "policy = excluded.policy, policy_revision = excluded.policy_revision, "
            "updated_at = excluded.updated_at, row_seq = excluded.row_seq, "
            "mac = excluded.mac",
            astuple(self.row),  # the columns, in order
        )


@dataclass(frozen=True)
class PutVersion:
    """Add a version (a wrapped KEK) to a key."""

    row: VersionRow

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO key_versions (key_id, version, wrapped_kek, created_at, mac) "
            "VALUES (?, ?, ?, ?, ?)",
            astuple(self.row),  # the columns, in order
        )


@dataclass(frozen=True)
class DeleteKey:
    """Remove a key and every version of it (its wrapped data keys become unreadable)."""

    key_id: str

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM key_versions WHERE key_id = ?", (self.key_id,))
        conn.execute("DELETE FROM keys WHERE key_id = ?", (self.key_id,))


@dataclass(frozen=True)
class AppendAudit:
    """Append an entry to the audit log (consecutive entries go in one statement)."""

    entry: AuditEntry

    def row(self) -> tuple[object, ...]:
        e = self.entry
        return (
            e.seq,
            e.time,
            e.event,
            e.outcome,
            e.key_id,
            e.client,
            e.measurement,
            json.dumps(list(e.reasons)),
            json.dumps(dict(e.details), sort_keys=True),
            e.prev_mac,
            e.mac,
        )


@dataclass(frozen=True)
class SetAuditHead:
    """Record the audit log's head (after the entries of its transaction)."""

    head: AuditHead

    def apply(self, conn: sqlite3.Connection) -> None:
        _set_meta(conn, "audit_head", json.dumps(self.head.to_dict(), sort_keys=True))


@dataclass(frozen=True)
class SetKeyIndex:
    """Record the key index: key id -> row_seq of its current row (canonical JSON)."""

    text: str

    def apply(self, conn: sqlite3.Connection) -> None:
        _set_meta(conn, "key_index", self.text)


@dataclass(frozen=True)
class SetSeal:
    """Record the seal in the database and, once committed, in the head file."""

    seal: Seal

    def apply(self, conn: sqlite3.Connection) -> None:
        _set_meta(conn, "seal", self.seal.to_text())


StoreOp = PutKey | PutVersion | DeleteKey | AppendAudit | SetAuditHead | SetKeyIndex | SetSeal


@dataclass(frozen=True)
class StoreState:
    """Everything the integrity check reads, from one snapshot of the database (and the
    head file, read just before it: the broker writes the file after each commit, so
    the file is never ahead of the snapshot unless the database went back)."""

    keys: list[KeyRow]
    versions: list[VersionRow]
    audit_head: AuditHead | None
    seal_text: str | None
    key_index_text: str | None
    last_entry: tuple[int, str] | None  # (seq, mac) of the last audit row
    head_file: Path
    head_text: str | None
    head_anchor_mac: str | None  # MAC of the audit row the head file names


@runtime_checkable
class BrokerStore(Protocol):
    """The broker's persistence. Implementations: :class:`SQLiteStore`.

    ``write`` is called from one thread at a time and must be durable and atomic
    (all operations or none) when it returns; the other methods may be called from
    any thread.
    """

    def initialize(self, master_check: str) -> None:
        """Create the schema, or check that the store belongs to this master key."""
        ...

    def master_check(self) -> str | None:
        """The stored master key check value (None: not initialized)."""
        ...

    def load_keys(self) -> tuple[list[KeyRow], list[VersionRow]]: ...

    def audit_head(self) -> AuditHead | None: ...

    def state(self) -> StoreState:
        """What :mod:`trustedml.broker._check` verifies."""
        ...

    def write(self, ops: Sequence[StoreOp]) -> None: ...

    def audit_snapshot(
        self, after: int = 0, limit: int | None = None
    ) -> tuple[list[AuditEntry], AuditHead | None]:
        """Audit entries with seq > ``after`` (at most ``limit``), and the head, read
        in one consistent snapshot."""
        ...

    def close(self) -> None: ...


def _create_private(path: Path) -> None:
    # SQLite gives its -wal and -shm files the main file's permissions.
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)


def _head_from_text(text: str | None) -> AuditHead | None:
    if text is None:
        return None
    try:
        doc = json.loads(text)
        return AuditHead(int(doc["seq"]), str(doc["mac"]), str(doc["head_mac"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditLogError("audit log head in the database is malformed") from exc


def _entry_from_row(row: sqlite3.Row) -> AuditEntry:
    seq = int(row["seq"])
    try:
        reasons = json.loads(row["reasons"])
        details = json.loads(row["details"])
        if not isinstance(reasons, list) or not isinstance(details, dict):
            raise TypeError
        return AuditEntry(
            seq=seq,
            time=str(row["time"]),
            event=str(row["event"]),
            outcome=str(row["outcome"]),
            key_id=row["key_id"],
            client=row["client"],
            measurement=row["measurement"],
            reasons=tuple(str(r) for r in reasons),
            details=details,
            prev_mac=str(row["prev_mac"]),
            mac=str(row["mac"]),
        )
    except (ValueError, TypeError) as exc:
        raise AuditLogError(f"audit log row seq={seq} is malformed", seq=seq) from exc


def _read_keys(conn: sqlite3.Connection) -> tuple[list[KeyRow], list[VersionRow]]:
    keys = [
        KeyRow(
            r["key_id"],
            r["state"],
            int(r["current_version"]),
            r["policy"],
            int(r["policy_revision"]),
            r["created_at"],
            r["updated_at"],
            int(r["row_seq"]),
            str(r["mac"]),
        )
        for r in conn.execute("SELECT * FROM keys ORDER BY key_id")
    ]
    versions = [
        VersionRow(
            r["key_id"], int(r["version"]), bytes(r["wrapped_kek"]), r["created_at"], str(r["mac"])
        )
        for r in conn.execute("SELECT * FROM key_versions ORDER BY key_id, version")
    ]
    return keys, versions


class SQLiteStore:
    """The embedded store: one SQLite database file (WAL, synchronous=FULL)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.head_file = head_path(self.path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"database directory {self.path.parent} does not exist")
        _create_private(self.path)
        self._lock = threading.Lock()
        self._conn = self._connect()
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise KeyBrokerError(f"{self.path}: cannot switch the database to WAL mode")
        self._checkpointer: threading.Thread | None = None
        self._stop = threading.Event()
        self._head: HeadWriter | None = None  # started by the first sealed write

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
            else:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, timeout=30, check_same_thread=False
                )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise KeyBrokerError(f"{self.path}: cannot open the database: {exc}") from exc
        return conn

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect(readonly=True)
        try:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise KeyBrokerError(f"{self.path}: cannot read the database: {exc}") from exc
        finally:
            conn.close()

    def initialize(self, master_check: str) -> None:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._conn.execute(statement)
                meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
                if meta.get("schema_version") == "1":
                    # Row MACs came with schema 2: adopting a v1 database is explicit.
                    self._conn.execute("ROLLBACK")
                    raise ConfigError(
                        f"{self.path}: schema version 1 has no row MACs; check it with "
                        "`trustedml broker audit verify`, then run `trustedml broker migrate` "
                        "once"
                    )
                if not meta:
                    self._conn.executemany(
                        "INSERT INTO meta (name, value) VALUES (?, ?)",
                        [("schema_version", str(SCHEMA_VERSION)), ("master_check", master_check)],
                    )
                self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise KeyBrokerError(f"{self.path}: not a broker database: {exc}") from exc
        if meta:
            if meta.get("schema_version") != str(SCHEMA_VERSION):
                raise KeyBrokerError(
                    f"{self.path}: unsupported schema version: expected {SCHEMA_VERSION}, "
                    f"got {meta.get('schema_version')!r}"
                )
            if meta.get("master_check") != master_check:
                raise KeyBrokerError(
                    f"{self.path}: this database belongs to another broker master key "
                    "(another key directory?)"
                )
        self._start_checkpointer()

    def _start_checkpointer(self, interval: float = 1.0) -> None:
        """Fold the WAL into the database from a thread of its own (PASSIVE: never
        blocks a writer), instead of inside some request's commit."""
        if self._checkpointer is not None:
            return
        self._conn.execute("PRAGMA wal_autocheckpoint=0")

        def run() -> None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            try:
                while not self._stop.wait(interval):
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                conn.close()

        self._checkpointer = threading.Thread(target=run, name="broker-checkpoint", daemon=True)
        self._checkpointer.start()

    def master_check(self) -> str | None:
        with self._reader() as conn:
            try:
                row = conn.execute("SELECT value FROM meta WHERE name = 'master_check'").fetchone()
            except sqlite3.OperationalError:
                return None  # no schema yet
        return str(row[0]) if row else None

    def load_keys(self) -> tuple[list[KeyRow], list[VersionRow]]:
        with self._reader() as conn:
            return _read_keys(conn)

    def audit_head(self) -> AuditHead | None:
        with self._reader() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'audit_head'").fetchone()
        return _head_from_text(row[0] if row else None)

    def state(self) -> StoreState:
        head_text = read_head_file(self.head_file)  # before the snapshot: see StoreState
        anchor: int | None = None
        if head_text is not None:
            with contextlib.suppress(AuditLogError):
                anchor = Seal.from_text(head_text, "head file").audit_seq
        with self._reader() as conn:
            keys, versions = _read_keys(conn)
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            last = conn.execute("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            anchor_row = (
                conn.execute("SELECT mac FROM audit WHERE seq = ?", (anchor,)).fetchone()
                if anchor
                else None
            )
        return StoreState(
            keys=keys,
            versions=versions,
            audit_head=_head_from_text(meta.get("audit_head")),
            seal_text=meta.get("seal"),
            key_index_text=meta.get("key_index"),
            last_entry=(int(last[0]), str(last[1])) if last else None,
            head_file=self.head_file,
            head_text=head_text,
            head_anchor_mac=str(anchor_row[0]) if anchor_row else None,
        )

    def audit_snapshot(
        self, after: int = 0, limit: int | None = None
    ) -> tuple[list[AuditEntry], AuditHead | None]:
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, -1 if limit is None else limit),
            ).fetchall()
            head = conn.execute("SELECT value FROM meta WHERE name = 'audit_head'").fetchone()
        return [_entry_from_row(r) for r in rows], _head_from_text(head[0] if head else None)

    def write(self, ops: Sequence[StoreOp]) -> None:
        seal: Seal | None = None
        audit: list[tuple[object, ...]] = []
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in ops:
                    if isinstance(op, AppendAudit):
                        audit.append(op.row())
                        continue
                    if audit:  # keep the order of operations
                        self._insert_audit(conn, audit)
                        audit = []
                    op.apply(conn)
                    if isinstance(op, SetSeal):
                        seal = op.seal
                if audit:
                    self._insert_audit(conn, audit)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise KeyBrokerError(f"{self.path}: write failed: {exc}") from exc
            if seal is not None:
                # After the commit: a crash in between leaves the file behind the
                # database, which the check accepts (never ahead of it).
                if self._head is None:
                    if not self.head_file.exists():
                        # The first seal ever is written before the commit returns, so a
                        # crash right after it cannot leave a sealed database without
                        # a head file (which the check must treat as a deletion).
                        write_head_file(self.head_file, seal)
                    self._head = HeadWriter(self.head_file)
                self._head.post(seal)

    @staticmethod
    def _insert_audit(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
        conn.executemany(
            "INSERT INTO audit (seq, time, event, outcome, key_id, client, measurement, "
            "reasons, details, prev_mac, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def close(self) -> None:
        if self._head is not None:
            try:
                self._head.close()
            except KeyBrokerError as exc:  # the file stays behind: accepted, not silent
                logging.getLogger("trustedml.broker").error("%s", exc)
            self._head = None
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                # Fold the WAL back into the database on a clean shutdown.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()


def open_store(target: str | os.PathLike[str]) -> BrokerStore:
    """A store for a path (SQLite) or a URL (``sqlite:///PATH``; server databases
    through SQLAlchemy are not implemented yet)."""
    text = os.fspath(target)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme == "sqlite" and rest.startswith("/"):
            return SQLiteStore(rest[1:] if rest.startswith("//") else rest)
        raise ConfigError(
            f"database: expected a file path or sqlite:///PATH, got a {scheme!r} URL "
            "(server databases via SQLAlchemy are not supported yet)"
        )
    return SQLiteStore(text)
