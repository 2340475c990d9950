"""Key stores: the KeyStore protocol, KeyRing (KEKs in memory), LocalKeyStore (a vault)."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from trustedml._secret import Secret
from trustedml.errors import ConfigError, KeyNotFoundError, KeyStoreError
from trustedml.hazmat import keywrap
from trustedml.hazmat.framing import DEK_SIZE
from trustedml.keys import KeyDirectory

# Used with fullmatch: a `$` anchor would also accept a trailing newline.
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEK_PREFIX = "kek:"


def check_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise ConfigError(
            "key id: expected 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter "
            f"or digit, got {key_id!r}"
        )
    return key_id


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: its plaintext (for this process only) and its wrapped form."""

    key_id: str
    wrapped: bytes
    plaintext: Secret = field(repr=False)


@runtime_checkable
class KeyStore(Protocol):
    """Where key-encryption keys live, and how they reach a job's Spark workers.

    Implementations: :class:`KeyRing`, :class:`LocalKeyStore`, the key broker's
    client and session (``trustedml.broker``), and the job's attested store
    (``trustedml.runtime.job_keystore()``)."""

    def generate_data_key(self, key_id: str) -> DataKey:
        """A new random data key wrapped under the key-encryption key ``key_id``."""
        ...

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> Secret:
        """The plaintext of a data key wrapped under ``key_id``."""
        ...

    def for_workers(self, key_ids: Collection[str]) -> KeyStore:
        """A picklable store for this job's Spark Python workers that can serve at most
        these key ids.

        Every store keeps this contract: the result pickles (it travels inside the
        ``trustedml`` data source or a UDF's closure); it serves no key id outside
        ``key_ids``; it carries key material, so it is shipped only over Spark's
        encrypted channels inside the trusted runtime and never written to disk. A key
        id the store cannot serve fails here, in the driver, before any task starts
        (:class:`~trustedml.errors.KeyNotFoundError`, or the broker's refusal). An
        empty ``key_ids`` hands over what the store holds now: every key of a key ring,
        the whole scope of a broker session.
        """
        ...


class KeyRing:
    """Key-encryption keys held in memory.

    Unlike :class:`Secret`, a KeyRing can be pickled: it is how keys travel to
    Spark's Python workers inside a trusted runtime. Never persist one.
    """

    def __init__(self, keks: Mapping[str, bytes]) -> None:
        self._keks = {check_key_id(k): bytes(v) for k, v in keks.items()}
        for key_id, kek in self._keks.items():
            if len(kek) != keywrap.KEK_SIZE:
                raise KeyStoreError(f"key-encryption key {key_id!r} is not 32 bytes")

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={sorted(self._keks)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyRing):
            return NotImplemented
        return self._keks.keys() == other._keks.keys() and all(
            hmac.compare_digest(v, other._keks[k]) for k, v in self._keks.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def key_ids(self) -> list[str]:
        return sorted(self._keks)

    def _kek(self, key_id: str) -> bytes:
        try:
            return self._keks[key_id]
        except KeyError:
            raise KeyNotFoundError(f"no key-encryption key {key_id!r} in this key store") from None

    def wrap_key(self, key_id: str, key: bytes) -> bytes:
        """Wrap caller-supplied key bytes under ``key_id`` (docs/format.md, key wrapping)."""
        return keywrap.wrap(self._kek(check_key_id(key_id)), key_id, key)

    def unwrap_key(self, key_id: str, wrapped: bytes) -> Secret:
        return Secret(keywrap.unwrap(self._kek(key_id), key_id, wrapped))

    def generate_data_key(self, key_id: str) -> DataKey:
        dek = os.urandom(DEK_SIZE)
        return DataKey(key_id, self.wrap_key(key_id, dek), Secret(dek))

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> Secret:
        return self.unwrap_key(key_id, wrapped)

    def subset(self, key_ids: Iterable[str]) -> KeyRing:
        return KeyRing({k: self._kek(k) for k in key_ids})

    def for_workers(self, key_ids: Collection[str]) -> KeyRing:
        """These KEKs only (all of them when ``key_ids`` is empty); an id this ring
        lacks raises :class:`~trustedml.errors.KeyNotFoundError`."""
        return self.subset(key_ids) if key_ids else self

    def export(self) -> Secret:
        """``id:base64,id:base64``: how a job's KEKs reach the Spark JVM (Parquet KMS
        client) and the job's Python processes, through their environment only."""
        return Secret(
            ",".join(
                f"{k}:{base64.b64encode(v).decode('ascii')}" for k, v in sorted(self._keks.items())
            )
        )

    @classmethod
    def parse(cls, text: Secret) -> KeyRing:
        """The inverse of :meth:`export`."""
        keks: dict[str, bytes] = {}
        for item in filter(None, text.reveal_text().split(",")):
            key_id, sep, b64 = item.partition(":")
            try:
                if not sep:
                    raise ValueError
                keks[key_id] = base64.b64decode(b64, validate=True)
            except (ValueError, binascii.Error):
                # Never echo the text: it holds keys.
                raise KeyStoreError("malformed key ring text (expected id:base64,...)") from None
        return cls(keks)


class LocalKeyStore:
    """Key-encryption keys sealed in a key directory's vault (``kek:<id>`` entries)."""

    def __init__(self, keys: KeyDirectory, passphrase: Secret) -> None:
        self._keys = keys
        self._passphrase = passphrase
        self._ring = self._load()

    def __repr__(self) -> str:
        return f"LocalKeyStore({str(self._keys.path)!r}, key_ids={self._ring.key_ids()})"

    def _load(self) -> KeyRing:
        opened = self._keys.unseal(self._passphrase)
        return KeyRing(
            {
                name[len(KEK_PREFIX) :]: value.reveal()
                for name, value in opened.items()
                if name.startswith(KEK_PREFIX)
            }
        )

    def key_ids(self) -> list[str]:
        return self._ring.key_ids()

    def create_kek(self, key_id: str) -> None:
        """Create and seal a new random key-encryption key named ``key_id``."""
        check_key_id(key_id)
        if key_id in self._ring.key_ids():
            raise KeyStoreError(f"key-encryption key {key_id!r} already exists")
        self._keys.add_secret(
            self._passphrase, KEK_PREFIX + key_id, Secret(os.urandom(keywrap.KEK_SIZE))
        )
        self._ring = self._load()

    def keyring(self, key_ids: Iterable[str] | None = None) -> KeyRing:
        """The KEKs as a picklable :class:`KeyRing` (all, or those named)."""
        return self._ring.subset(self._ring.key_ids() if key_ids is None else key_ids)

    def for_workers(self, key_ids: Collection[str]) -> KeyRing:
        """The named KEKs (all when ``key_ids`` is empty) as a picklable :class:`KeyRing`;
        the passphrase and the vault stay here."""
        return self._ring.for_workers(key_ids)

    def generate_data_key(self, key_id: str) -> DataKey:
        return self._ring.generate_data_key(key_id)

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> Secret:
        return self._ring.unwrap_data_key(key_id, wrapped)
