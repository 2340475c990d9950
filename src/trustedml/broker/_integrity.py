"""Integrity of the broker's key rows and of its store as a whole: row MACs, the key
index and the seal (kept in the database and in a head file beside it).

A host that can write the database but lacks the master key cannot forge any of
them, so it cannot change a policy, swap rows between keys, bring back an older row,
wipe or truncate the audit log, or restore an older copy of the database without
the broker (and ``trustedml broker audit verify``) seeing it. docs/broker-protocol.md
("Integrity") specifies every byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustedml.broker._audit import GENESIS, canonical_json
from trustedml.errors import AuditLogError, KeyBrokerError

if TYPE_CHECKING:
    from trustedml.broker._store import KeyRow, VersionRow

ROW_DOMAIN = b"trustedml/broker/row/v1\x00"
SEAL_DOMAIN = b"trustedml/broker/seal/v1\x00"
SEAL_FORMAT = "trustedml-broker-seal"
SEAL_VERSION = 1
HEAD_SUFFIX = ".head"
MAX_HEAD_FILE = 4096


def _mac(key: bytes, domain: bytes, body: Mapping[str, Any]) -> str:
    return hmac.digest(key, domain + canonical_json(dict(body)), hashlib.sha256).hex()


def version_row_body(row: VersionRow) -> dict[str, Any]:
    """What a ``key_versions`` row's MAC covers."""
    return {
        "table": "key_versions",
        "key_id": row.key_id,
        "version": row.version,
        "wrapped_kek": row.wrapped_kek.hex(),
        "created_at": row.created_at,
    }


def version_row_mac(row_key: bytes, row: VersionRow) -> str:
    return _mac(row_key, ROW_DOMAIN, version_row_body(row))


def key_row_body(row: KeyRow, version_macs: Mapping[int, str]) -> dict[str, Any]:
    """What a ``keys`` row's MAC covers: every column but ``mac``, and the MAC of each
    of the key's versions (so a version row cannot be swapped either)."""
    return {
        "table": "keys",
        "key_id": row.key_id,
        "state": row.state,
        "current_version": row.current_version,
        "policy": row.policy,
        "policy_revision": row.policy_revision,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "row_seq": row.row_seq,
        "versions": [[v, version_macs[v]] for v in sorted(version_macs)],
    }


def key_row_mac(row_key: bytes, row: KeyRow, version_macs: Mapping[int, str]) -> str:
    return _mac(row_key, ROW_DOMAIN, key_row_body(row, version_macs))


def index_text(index: Mapping[str, int]) -> str:
    """The key index (key id -> row_seq of its current row) as stored: canonical JSON."""
    return canonical_json(dict(index)).decode("ascii")


def index_digest(text: str | None) -> str:
    return hashlib.sha256((text if text is not None else "{}").encode("ascii")).hexdigest()


def parse_index(text: str | None) -> dict[str, int]:
    if text is None:
        return {}
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise TypeError
        return {str(k): int(v) for k, v in doc.items()}
    except (ValueError, TypeError) as exc:
        raise AuditLogError("the key index in the database is malformed") from exc


@dataclass(frozen=True)
class Seal:
    """What the store must contain: the audit log's last entry and the key index's
    digest, MAC'd under the master key's seal key."""

    audit_seq: int
    audit_mac: str
    key_index_sha256: str
    mac: str = ""

    def body(self) -> dict[str, Any]:
        return {
            "format": SEAL_FORMAT,
            "v": SEAL_VERSION,
            "audit_seq": self.audit_seq,
            "audit_mac": self.audit_mac,
            "key_index_sha256": self.key_index_sha256,
        }

    def to_text(self) -> str:
        return canonical_json({**self.body(), "mac": self.mac}).decode("ascii")

    @classmethod
    def from_text(cls, text: str, where: str) -> Seal:
        try:
            doc = json.loads(text)
            if doc["format"] != SEAL_FORMAT or doc["v"] != SEAL_VERSION:
                raise ValueError(f"format {doc['format']!r} v{doc['v']!r}")
            return cls(
                int(doc["audit_seq"]),
                str(doc["audit_mac"]),
                str(doc["key_index_sha256"]),
                str(doc["mac"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditLogError(f"{where} is malformed ({exc})") from None

    def verifies(self, seal_key: bytes) -> bool:
        return hmac.compare_digest(_mac(seal_key, SEAL_DOMAIN, self.body()), self.mac)


def make_seal(seal_key: bytes, audit_seq: int, audit_mac: str, key_index_sha256: str) -> Seal:
    unsigned = Seal(audit_seq, audit_mac, key_index_sha256)
    return Seal(
        audit_seq, audit_mac, key_index_sha256, _mac(seal_key, SEAL_DOMAIN, unsigned.body())
    )


GENESIS_HEX = GENESIS.hex()


# -- the head file ---------------------------------------------------------------------


def head_path(db: Path) -> Path:
    """Where a database's head file lives: ``<db>.head`` beside it."""
    return db.with_name(db.name + HEAD_SUFFIX)


def write_head_file(path: Path, seal: Seal) -> None:
    """Replace ``path`` with ``seal`` atomically and durably: a 0600 temp file, fsync,
    rename, fsync of the directory (so a crash leaves the old or the new head)."""
    data = (seal.to_text() + "\n").encode("ascii")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise KeyBrokerError(f"cannot write the head file {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyBrokerError(f"cannot write the head file {path}: {exc.strerror}") from exc


class HeadWriter:
    """Writes the newest seal to the head file from a thread of its own, so a request
    waits for its database commit only, not for the head file's three syncs.

    Seals posted while a write runs are coalesced: the next write takes the newest.
    The file therefore trails the database by at most the batches committed during
    one write, which the check accepts (a file behind the database); it is never
    ahead. :meth:`close` writes the last seal before returning. A failed write is
    raised by the next :meth:`post` (the broker's store then stops).
    """

    # Under load a write would start as soon as the last one ended, doubling the
    # broker's fsyncs; one write per interval keeps the file as close behind (a
    # restored copy younger than this is not caught by the file alone).
    MIN_INTERVAL = 0.05

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._pending: Seal | None = None
        self._busy = False
        self._closed = False
        self._error: KeyBrokerError | None = None
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="broker-head", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"HeadWriter({str(self.path)!r})"

    def post(self, seal: Seal) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            self._pending = seal
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every posted seal is on disk."""
        with self._cond:
            while (self._pending is not None or self._busy) and self._thread.is_alive():
                self._cond.wait(0.5)
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                # Newer seals posted meanwhile replace this one: coalesced.
                while (
                    not self._closed and (wait := last + self.MIN_INTERVAL - time.monotonic()) > 0
                ):
                    self._cond.wait(wait)
                seal, self._pending, self._busy = self._pending, None, True
            last = time.monotonic()
            try:
                write_head_file(self.path, seal)
                self.writes += 1
            except KeyBrokerError as exc:
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def read_head_file(path: Path) -> str | None:
    """The head file's text, or None when there is none."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_HEAD_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyBrokerError(f"cannot read the head file {path}: {exc.strerror}") from exc
    if len(data) > MAX_HEAD_FILE:
        raise AuditLogError(f"head file {path} is too large to be a seal")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise AuditLogError(f"head file {path} is malformed (not ASCII)") from None


__all__ = [
    "GENESIS_HEX",
    "HeadWriter",
    "Seal",
    "head_path",
    "index_digest",
    "index_text",
    "key_row_mac",
    "make_seal",
    "parse_index",
    "read_head_file",
    "version_row_mac",
    "write_head_file",
]
