"""Byte layout of trusted-ml sim evidence, version 1.

Sim evidence is a development stand-in for a TEE quote: a report signed by an
Ed25519 key on the same machine, with NO hardware protection. Its magic makes it
impossible to mistake for an Intel quote (which starts with a little-endian u16
version 3..5) or an AMD report (little-endian u32 version 2..5).

All integers are big-endian::

    offset      size  field
    0           8     magic b"TMLSIM01"
    8           2     version (1)
    10          2     flags (bit 0: debug; the other bits must be 0)
    12          2     measurement length L (1..64)
    14          L     measurement
    14+L        64    report_data
    78+L        32    signer public key (raw Ed25519)
    110+L       64    Ed25519 signature over bytes 0 .. 110+L

Parsing only: whether the signer is trusted and the signature valid is decided by
:class:`trustedml.attestation.SimVerifier`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from trustedml.errors import EvidenceFormatError, UnsupportedEvidenceError

MAGIC = b"TMLSIM01"
VERSION = 1
FLAG_DEBUG = 0x0001
KNOWN_FLAGS = FLAG_DEBUG
MIN_MEASUREMENT = 1
MAX_MEASUREMENT = 64
REPORT_DATA_SIZE = 64
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_FIXED = struct.Struct(">8sHHH")  # magic, version, flags, measurement length
HEADER_SIZE = _FIXED.size  # 14
# Everything after the measurement: report_data, public key, signature.
TRAILER_SIZE = REPORT_DATA_SIZE + PUBLIC_KEY_SIZE + SIGNATURE_SIZE


def evidence_size(measurement_length: int) -> int:
    """Total size of version-1 sim evidence with a measurement of that length."""
    return HEADER_SIZE + measurement_length + TRAILER_SIZE


@dataclass(frozen=True)
class SimEvidence:
    """Parsed sim evidence. Its signature has NOT been checked."""

    debug: bool
    measurement: bytes
    report_data: bytes
    public_key: bytes
    signature: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.version != VERSION:
            raise UnsupportedEvidenceError(
                f"sim evidence: version: expected {VERSION}, got {self.version}"
            )
        _check_size("measurement", self.measurement, MIN_MEASUREMENT, MAX_MEASUREMENT)
        _check_size("report_data", self.report_data, REPORT_DATA_SIZE, REPORT_DATA_SIZE)
        _check_size("public_key", self.public_key, PUBLIC_KEY_SIZE, PUBLIC_KEY_SIZE)
        _check_size("signature", self.signature, SIGNATURE_SIZE, SIGNATURE_SIZE)

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: everything before it."""
        return signed_bytes(
            measurement=self.measurement,
            report_data=self.report_data,
            public_key=self.public_key,
            debug=self.debug,
        )

    def to_bytes(self) -> bytes:
        return self.signed_bytes + self.signature


def signed_bytes(
    *, measurement: bytes, report_data: bytes, public_key: bytes, debug: bool
) -> bytes:
    """Encode the to-be-signed part of sim evidence (all of it but the signature)."""
    _check_size("measurement", measurement, MIN_MEASUREMENT, MAX_MEASUREMENT)
    _check_size("report_data", report_data, REPORT_DATA_SIZE, REPORT_DATA_SIZE)
    _check_size("public_key", public_key, PUBLIC_KEY_SIZE, PUBLIC_KEY_SIZE)
    flags = FLAG_DEBUG if debug else 0
    return (
        _FIXED.pack(MAGIC, VERSION, flags, len(measurement))
        + measurement
        + report_data
        + public_key
    )


def parse_sim_evidence(data: bytes) -> SimEvidence:
    """Parse sim evidence strictly: exact length, known version and flags.

    Raises :class:`EvidenceFormatError` naming the field, or
    :class:`UnsupportedEvidenceError` for another version.
    """
    data = bytes(data)
    if not data.startswith(MAGIC):
        got = data[: len(MAGIC)]
        raise EvidenceFormatError(f"sim evidence: magic: expected {MAGIC!r}, got {got!r}")
    if len(data) < HEADER_SIZE:
        raise EvidenceFormatError(
            f"sim evidence: header truncated: expected {HEADER_SIZE} bytes, got {len(data)}"
        )
    _, version, flags, mlen = _FIXED.unpack_from(data)
    if version != VERSION:
        raise UnsupportedEvidenceError(f"sim evidence: version: expected {VERSION}, got {version}")
    if flags & ~KNOWN_FLAGS:
        raise EvidenceFormatError(
            f"sim evidence: flags: unknown bits {flags & ~KNOWN_FLAGS:#06x} "
            f"(known: {KNOWN_FLAGS:#06x})"
        )
    if not MIN_MEASUREMENT <= mlen <= MAX_MEASUREMENT:
        raise EvidenceFormatError(
            f"sim evidence: measurement length: expected {MIN_MEASUREMENT}..{MAX_MEASUREMENT}, "
            f"got {mlen}"
        )
    size = evidence_size(mlen)
    if len(data) != size:
        raise EvidenceFormatError(
            f"sim evidence: length: expected {size} bytes for a {mlen}-byte measurement, "
            f"got {len(data)}"
        )
    pos = HEADER_SIZE
    measurement = data[pos : pos + mlen]
    pos += mlen
    report_data = data[pos : pos + REPORT_DATA_SIZE]
    pos += REPORT_DATA_SIZE
    public_key = data[pos : pos + PUBLIC_KEY_SIZE]
    pos += PUBLIC_KEY_SIZE
    return SimEvidence(
        debug=bool(flags & FLAG_DEBUG),
        measurement=measurement,
        report_data=report_data,
        public_key=public_key,
        signature=data[pos:],
        version=version,
    )


def _check_size(name: str, value: bytes, low: int, high: int) -> None:
    if not isinstance(value, bytes):
        raise EvidenceFormatError(
            f"sim evidence: {name}: expected bytes, got {type(value).__name__}"
        )
    if not low <= len(value) <= high:
        expected = f"{low}" if low == high else f"{low}..{high}"
        raise EvidenceFormatError(
            f"sim evidence: {name}: expected {expected} bytes, got {len(value)}"
        )
