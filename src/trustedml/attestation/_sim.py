"""Simulated attestation: evidence signed by a per-installation Ed25519 key.

For development and tests on machines without a TEE. Sim evidence proves only
that someone holding the sim key signed it; it says nothing about memory
protection, so verified sim claims are always marked ``simulated`` and a policy
refuses them unless it sets ``allow_simulated``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trustedml._fs import PRIVATE_FILE, make_private_dir
from trustedml.attestation._model import (
    Claims,
    EvidenceType,
    TcbStatus,
    VerifiedEvidence,
    require_aware,
)
from trustedml.errors import ConfigError, EvidenceSignatureError
from trustedml.hazmat.attestation import sim as layout

__all__ = ["SIM_WARNING", "SimKey", "SimProvider", "SimVerifier", "pad_report_data"]

SIM_WARNING = "simulated evidence: no hardware protection"


def pad_report_data(report_data: bytes, name: str = "report_data") -> bytes:
    """Zero-pad ``report_data`` to the 64 bytes every TEE report carries."""
    if not isinstance(report_data, bytes | bytearray):
        raise ConfigError(f"{name}: expected bytes, got {type(report_data).__name__}")
    if len(report_data) > layout.REPORT_DATA_SIZE:
        raise ConfigError(
            f"{name}: expected at most {layout.REPORT_DATA_SIZE} bytes, got {len(report_data)}"
        )
    return bytes(report_data).ljust(layout.REPORT_DATA_SIZE, b"\x00")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _fingerprint(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()


class SimKey:
    """The Ed25519 key that signs this installation's sim evidence.

    Whoever holds it can forge sim evidence, which is why sim evidence proves
    nothing about hardware. ``repr`` shows only the public key's fingerprint.
    """

    __slots__ = ("_private",)

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigError(
                f"SimKey: expected an Ed25519 private key, got {type(private_key).__name__}"
            )
        self._private = private_key

    @classmethod
    def generate(cls) -> SimKey:
        """Create a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SimKey:
        """Read a key saved by :meth:`save` (PEM PKCS#8, mode 0600 or stricter)."""
        path = Path(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"permissions too open on sim key {path}: "
                    f"expected 0600 (or stricter), got {mode:04o}"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read sim key {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                f"sim key {path}: expected an unencrypted PEM PKCS#8 Ed25519 key"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"sim key {path}: expected an Ed25519 key, got {type(key).__name__}")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> SimKey:
        """Load the key at ``path``, creating it (and a 0700 parent) if missing."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        if not path.parent.exists():
            make_private_dir(path.parent)
        key = cls.generate()
        if key._save(path, exclusive=True):
            return key
        # Another process created the key first: use theirs, so both sign alike.
        return cls.load(path)

    def save(self, path: Path) -> None:
        """Write the key to ``path`` as PEM PKCS#8, mode 0600, replacing any file there."""
        self._save(Path(path), exclusive=False)

    def _save(self, path: Path, *, exclusive: bool) -> bool:
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), PRIVATE_FILE)
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            if not exclusive:
                os.replace(tmp, path)
                return True
            # link() fails if the target exists, so a concurrent creator is never overwritten.
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @property
    def public_key_raw(self) -> bytes:
        return _raw_public(self._private.public_key())

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw public key, hex."""
        return _fingerprint(self.public_key_raw)

    def public_key_pem(self) -> bytes:
        """The public key as PEM SubjectPublicKeyInfo, for :class:`SimVerifier`."""
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"SimKey(fingerprint={self.fingerprint[:16]}…)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SimKey cannot be pickled")


class SimProvider:
    """Produces sim evidence: a development stand-in with NO hardware protection."""

    def __init__(self, key: SimKey, *, measurement: bytes, debug: bool = False) -> None:
        if not isinstance(key, SimKey):
            raise ConfigError(f"key: expected a SimKey, got {type(key).__name__}")
        if not isinstance(measurement, bytes) or not (
            layout.MIN_MEASUREMENT <= len(measurement) <= layout.MAX_MEASUREMENT
        ):
            got = (
                f"{len(measurement)} bytes"
                if isinstance(measurement, bytes)
                else type(measurement).__name__
            )
            raise ConfigError(
                f"measurement: expected {layout.MIN_MEASUREMENT}..{layout.MAX_MEASUREMENT} "
                f"bytes, got {got}"
            )
        self._key = key
        self._measurement = measurement
        self._debug = bool(debug)

    @property
    def evidence_type(self) -> EvidenceType:
        return EvidenceType.SIM

    @property
    def measurement(self) -> bytes:
        return self._measurement

    def get_evidence(self, report_data: bytes) -> bytes:
        """Return signed sim evidence carrying ``report_data`` (≤ 64 bytes, zero-padded)."""
        body = layout.signed_bytes(
            measurement=self._measurement,
            report_data=pad_report_data(report_data),
            public_key=self._key.public_key_raw,
            debug=self._debug,
        )
        return body + self._key.sign(body)

    def __repr__(self) -> str:
        return (
            f"SimProvider(key={self._key!r}, measurement={self._measurement.hex()}, "
            f"debug={self._debug})"
        )


class SimVerifier:
    """Verifies sim evidence against a set of trusted sim public keys (PEM).

    Verified claims are always ``simulated=True``: a valid signature shows only
    that a trusted sim key signed the evidence, never that a TEE protected anything.
    """

    def __init__(self, trusted_public_keys: Sequence[bytes]) -> None:
        keys: object = trusted_public_keys
        if isinstance(keys, bytes | str):
            raise ConfigError(
                "trusted_public_keys: expected a sequence of PEM public keys, got a single value"
            )
        trusted: dict[bytes, Ed25519PublicKey] = {}
        for index, pem in enumerate(trusted_public_keys):
            try:
                key = serialization.load_pem_public_key(pem)
            except (ValueError, TypeError):
                raise ConfigError(
                    f"trusted_public_keys[{index}]: expected a PEM Ed25519 public key"
                ) from None
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(
                    f"trusted_public_keys[{index}]: expected an Ed25519 key, "
                    f"got {type(key).__name__}"
                )
            trusted[_raw_public(key)] = key
        self._trusted = trusted

    @property
    def evidence_type(self) -> EvidenceType:
        return EvidenceType.SIM

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(sorted(_fingerprint(raw) for raw in self._trusted))

    def verify(
        self, evidence: bytes, *, collateral: bytes | None = None, at: datetime
    ) -> VerifiedEvidence:
        """Check that a trusted sim key signed ``evidence``. ``collateral`` is ignored."""
        require_aware(at)
        parsed = layout.parse_sim_evidence(evidence)
        key = self._trusted.get(parsed.public_key)
        fingerprint = _fingerprint(parsed.public_key)
        if key is None:
            raise EvidenceSignatureError(
                f"sim evidence: signed by an untrusted key (sha256 {fingerprint}); "
                f"trusted: {', '.join(f[:16] + '…' for f in self.fingerprints) or 'none'}"
            )
        try:
            key.verify(parsed.signature, parsed.signed_bytes)
        except InvalidSignature:
            raise EvidenceSignatureError(
                "sim evidence: signature does not verify (modified evidence)"
            ) from None
        claims = Claims(
            evidence_type=EvidenceType.SIM,
            report_data=parsed.report_data,
            debug=parsed.debug,
            simulated=True,
            measurement=parsed.measurement,
            extra={"warning": SIM_WARNING, "signer_sha256": fingerprint},
        )
        return VerifiedEvidence(
            claims=claims,
            tcb_status=TcbStatus.UP_TO_DATE,
            checks=(f"sim signature ok (key sha256 {fingerprint[:16]}…)", SIM_WARNING),
        )
