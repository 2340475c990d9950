"""A small, strict DER reader: just enough ASN.1 for the Intel SGX PCK certificate
extension (SEQUENCE, OBJECT IDENTIFIER, OCTET STRING, INTEGER, ENUMERATED, BOOLEAN), and the
BIT STRINGs that carry X.509 signatures and public keys.

Strict means DER, not BER: definite minimal lengths, minimal integers, canonical
booleans, low-tag-number identifiers only. Any deviation raises
:class:`~trustedml.errors.EvidenceFormatError` naming what was being read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from trustedml.errors import EvidenceFormatError

BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
OBJECT_IDENTIFIER = 0x06
ENUMERATED = 0x0A
SEQUENCE = 0x30

_TAG_NAMES = {
    BOOLEAN: "BOOLEAN",
    INTEGER: "INTEGER",
    BIT_STRING: "BIT STRING",
    OCTET_STRING: "OCTET STRING",
    OBJECT_IDENTIFIER: "OBJECT IDENTIFIER",
    ENUMERATED: "ENUMERATED",
    SEQUENCE: "SEQUENCE",
}
# Four length octets already allow 4 GiB; nothing in a certificate comes close.
_MAX_LENGTH_OCTETS = 4


@dataclass(frozen=True)
class Tlv:
    """One DER element: its identifier octet and its content octets."""

    tag: int
    value: bytes

    def expect(self, tag: int, what: str) -> bytes:
        """Return the content octets, or raise if the element is not a ``tag``."""
        if self.tag != tag:
            raise EvidenceFormatError(
                f"{what}: expected {_tag_name(tag)}, got {_tag_name(self.tag)}"
            )
        return self.value


def _tag_name(tag: int) -> str:
    return _TAG_NAMES.get(tag, f"tag {tag:#04x}")


def read_tlv(data: bytes, offset: int, what: str) -> tuple[Tlv, int]:
    """Read the element starting at ``offset``; return it and the offset after it."""
    end = len(data)
    if offset >= end:
        raise EvidenceFormatError(f"{what}: truncated (no identifier octet)")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise EvidenceFormatError(f"{what}: high-tag-number identifiers are not supported")
    pos = offset + 1
    if pos >= end:
        raise EvidenceFormatError(f"{what}: truncated (no length octet)")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise EvidenceFormatError(f"{what}: indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS:
            raise EvidenceFormatError(f"{what}: length of {count} octets is too large")
        if pos + count > end:
            raise EvidenceFormatError(f"{what}: truncated length")
        raw = data[pos : pos + count]
        pos += count
        if raw[0] == 0:
            raise EvidenceFormatError(f"{what}: length has a leading zero octet (not DER)")
        length = int.from_bytes(raw, "big")
        if length < 0x80:
            raise EvidenceFormatError(f"{what}: long-form length {length} is not DER")
    if pos + length > end:
        raise EvidenceFormatError(
            f"{what}: {_tag_name(tag)} of {length} bytes overruns its container ({end - pos} left)"
        )
    return Tlv(tag, bytes(data[pos : pos + length])), pos + length


def iter_tlvs(data: bytes, what: str) -> Iterator[Tlv]:
    """Yield consecutive elements that exactly fill ``data``."""
    pos = 0
    while pos < len(data):
        tlv, pos = read_tlv(data, pos, what)
        yield tlv


def read_single(data: bytes, tag: int, what: str) -> bytes:
    """Parse ``data`` as exactly one element of type ``tag``; return its content."""
    tlv, end = read_tlv(data, 0, what)
    if end != len(data):
        raise EvidenceFormatError(f"{what}: {len(data) - end} trailing bytes after the element")
    return tlv.expect(tag, what)


def sequence_items(value: bytes, what: str) -> list[Tlv]:
    """The elements inside a SEQUENCE's content octets."""
    return list(iter_tlvs(value, what))


def decode_oid(value: bytes, what: str) -> str:
    """Dotted-decimal form of OBJECT IDENTIFIER content octets."""
    if not value:
        raise EvidenceFormatError(f"{what}: empty OBJECT IDENTIFIER")
    arcs: list[int] = []
    current = 0
    fresh = True
    for octet in value:
        if fresh and octet == 0x80:
            raise EvidenceFormatError(f"{what}: OBJECT IDENTIFIER arc has a leading 0x80")
        current = (current << 7) | (octet & 0x7F)
        fresh = not octet & 0x80
        if fresh:
            arcs.append(current)
            current = 0
    if not fresh:
        raise EvidenceFormatError(f"{what}: OBJECT IDENTIFIER ends inside an arc")
    first = arcs[0]
    head = [first // 40, first % 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])


def decode_integer(value: bytes, what: str) -> int:
    """Signed value of INTEGER (or ENUMERATED) content octets, minimal encoding only."""
    if not value:
        raise EvidenceFormatError(f"{what}: empty INTEGER")
    if len(value) > 1 and (
        (value[0] == 0x00 and not value[1] & 0x80) or (value[0] == 0xFF and value[1] & 0x80)
    ):
        raise EvidenceFormatError(f"{what}: INTEGER is not minimally encoded")
    return int.from_bytes(value, "big", signed=True)


def decode_boolean(value: bytes, what: str) -> bool:
    """BOOLEAN content octets: DER allows only 0x00 and 0xFF."""
    if value == b"\x00":
        return False
    if value == b"\xff":
        return True
    raise EvidenceFormatError(f"{what}: BOOLEAN must be one octet 0x00 or 0xFF")


def decode_octet_aligned_bit_string(value: bytes, what: str) -> bytes:
    """The octets of BIT STRING content that must be whole octets (a signature, a
    public key): the leading unused-bits count must be 0.

    DER lets unused bits be non-zero only for bit fields; for octet data a count of
    1..7 (with zero padding) would be a second encoding of the same bytes, which
    pyca/cryptography accepts, so the caller must refuse it here.
    """
    if not value:
        raise EvidenceFormatError(f"{what}: empty BIT STRING (no unused-bits octet)")
    if value[0] != 0:
        raise EvidenceFormatError(
            f"{what}: BIT STRING of whole octets: expected 0 unused bits, got {value[0]}"
        )
    return value[1:]
