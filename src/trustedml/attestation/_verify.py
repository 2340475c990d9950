"""One entry point for every evidence type: detect it, pick the verifier."""

from __future__ import annotations

import base64
import dataclasses
import enum
import struct
from collections.abc import Sequence
from datetime import datetime

from trustedml.attestation._model import EvidenceType, VerifiedEvidence, Verifier, require_aware
from trustedml.errors import ConfigError, EvidenceFormatError, UnsupportedEvidenceError
from trustedml.hazmat.attestation.der import read_tlv

SIM_MAGIC = b"TMLSIM01"
_TEE_TYPE_SGX = 0x00000000
_TEE_TYPE_TDX = 0x00000081
_SNP_REPORT_SIZE = 0x4A0


def detect_evidence_type(evidence: bytes) -> EvidenceType:
    """Tell what kind of evidence ``evidence`` is from its first bytes.

    Intel quotes start with a 16-bit version (3-5) and a non-zero 16-bit attestation
    key type, then a 32-bit TEE type; an SEV-SNP report starts with a 32-bit version
    whose upper half is zero, so the two never collide.
    """
    data = bytes(evidence)
    if data.startswith(SIM_MAGIC):
        return EvidenceType.SIM
    if len(data) < 8:
        raise UnsupportedEvidenceError(
            f"evidence: expected at least 8 bytes to tell its type, got {len(data)}"
        )
    version, key_type, tee_type = struct.unpack_from("<HHI", data)
    if version in (3, 4, 5) and key_type != 0:
        if tee_type == _TEE_TYPE_SGX:
            return EvidenceType.SGX
        if tee_type == _TEE_TYPE_TDX:
            return EvidenceType.TDX
        raise UnsupportedEvidenceError(
            f"Intel quote tee_type: expected 0x0 (SGX) or 0x81 (TDX), got {tee_type:#x}"
        )
    if key_type == 0 and version >= 2 and len(data) >= _SNP_REPORT_SIZE:
        return EvidenceType.SNP
    raise UnsupportedEvidenceError(
        "evidence: not an Intel SGX/TDX quote, an SEV-SNP report or trusted-ml sim evidence "
        f"(first bytes {data[:8].hex()})"
    )


def get_verifier(
    evidence_type: EvidenceType,
    *,
    sim_keys: Sequence[bytes] = (),
    intel_root_ca_der: bytes | None = None,
    amd_ark_pems: dict[str, bytes] | None = None,
) -> Verifier:
    """The verifier for ``evidence_type`` with the given trust anchors (vendor roots
    pinned in the package by default; sim keys must always be given)."""
    # Imported here: each verifier pulls in its own parsing and vendor roots.
    if evidence_type in (EvidenceType.SGX, EvidenceType.TDX):
        from trustedml.attestation._intel import IntelVerifier

        return IntelVerifier(evidence_type, root_ca_der=intel_root_ca_der)
    if evidence_type is EvidenceType.SNP:
        from trustedml.attestation._amd import SnpVerifier

        return SnpVerifier(ark_pems=amd_ark_pems)
    from trustedml.attestation._sim import SimVerifier

    return SimVerifier(trusted_public_keys=list(sim_keys))


def verify_evidence(
    evidence: bytes,
    *,
    collateral: bytes | None = None,
    at: datetime,
    sim_keys: Sequence[bytes] = (),
    intel_root_ca_der: bytes | None = None,
    amd_ark_pems: dict[str, bytes] | None = None,
) -> VerifiedEvidence:
    """Verify evidence of any supported type as of ``at`` (a timezone-aware time).

    ``collateral`` is the Intel collateral JSON for SGX/TDX quotes, or the VCEK/VLEK
    certificate (PEM, DER or a certificate table) for SEV-SNP. Raises an
    :class:`~trustedml.errors.AttestationError` subclass naming what failed.
    """
    require_aware(at)
    kind = detect_evidence_type(evidence)
    verifier = get_verifier(
        kind,
        sim_keys=sim_keys,
        intel_root_ca_der=intel_root_ca_der,
        amd_ark_pems=amd_ark_pems,
    )
    return verifier.verify(bytes(evidence), collateral=collateral, at=at)


def parse_evidence(evidence: bytes) -> object:
    """Parse evidence of any supported type into its typed layout, without verifying it."""
    kind = detect_evidence_type(evidence)
    data = bytes(evidence)
    if kind in (EvidenceType.SGX, EvidenceType.TDX):
        from trustedml.hazmat.attestation.intel import parse_quote

        return parse_quote(data)
    if kind is EvidenceType.SNP:
        from trustedml.hazmat.attestation.snp import parse_snp_report

        return parse_snp_report(data)
    from trustedml.hazmat.attestation.sim import parse_sim_evidence

    return parse_sim_evidence(data)


_REDUNDANT_FIELDS = frozenset({"raw", "signed_bytes"})


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for f in dataclasses.fields(value):
            # raw / signed_bytes repeat the evidence itself; every field is shown anyway.
            if f.name.startswith("_") or not f.repr or f.name in _REDUNDANT_FIELDS:
                continue
            out[f.name] = _jsonable(getattr(value, f.name))
        return out
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def describe_evidence(evidence: bytes) -> dict[str, object]:
    """Every parsed field of ``evidence`` as JSON-able values (bytes as hex), plus its type."""
    kind = detect_evidence_type(evidence)
    fields = _jsonable(parse_evidence(evidence))
    return {"evidence_type": kind.value, "fields": fields}


def join_collateral(parts: Sequence[bytes]) -> bytes | None:
    """Several collateral files as the one blob a verifier takes: SEV-SNP
    certificates and CRLs in PEM or DER (as AMD's KDS serves them, e.g. the VCEK in
    DER, ``cert_chain`` in PEM, ``crl`` in DER) become one PEM bundle. Intel
    collateral is a single JSON document and cannot be joined."""
    if not parts:
        return None
    if len(parts) == 1:
        return bytes(parts[0])
    out = []
    for number, part in enumerate(parts, 1):
        data = bytes(part)
        if data.lstrip().startswith(b"{"):
            raise ConfigError(
                f"collateral {number}: Intel collateral is one JSON document; give it alone"
            )
        if b"-----BEGIN" in data:
            out.append(data if data.endswith(b"\n") else data + b"\n")
            continue
        label = _der_label(data)
        if label is None:
            raise ConfigError(
                f"collateral {number}: expected PEM, or a DER certificate or CRL, got "
                f"{len(data)} bytes of neither"
            )
        # Wrapped, not parsed: the verifier parses (and judges) every certificate itself.
        body = base64.b64encode(data)
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        out.append(
            b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, b"\n".join(lines), label)
        )
    return b"".join(out)


def _der_label(data: bytes) -> bytes | None:
    """The PEM label of one DER certificate or CRL (told apart by the first field of
    the signed part: a certificate's explicit [0] version, a CRL's INTEGER version or
    signature algorithm), or None."""
    try:
        outer, end = read_tlv(data, 0, "collateral")
        if outer.tag != 0x30 or end != len(data):
            return None
        tbs, _ = read_tlv(outer.value, 0, "collateral")
        if tbs.tag != 0x30:
            return None
        first, _ = read_tlv(tbs.value, 0, "collateral")
    except EvidenceFormatError:
        return None
    if first.tag == 0xA0:
        return b"CERTIFICATE"
    if first.tag in (0x02, 0x30):
        return b"X509 CRL"
    return None
