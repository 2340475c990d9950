"""AMD SEV-SNP collateral: certificates and CRLs from PEM, DER (one or concatenated)
or a GHCB certificate table, and the AMD KDS extensions of a VCEK/VLEK (hwID, the SPLs
of the TCB it was issued for, product name), compared with the report."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from cryptography import x509

from trustedml.attestation._x509 import (
    kds_extensions,
    load_crl,
    load_der_certificate,
    load_pem_certificates,
)
from trustedml.errors import CollateralError, EvidenceFormatError
from trustedml.hazmat.attestation.der import read_tlv
from trustedml.hazmat.attestation.snp import CertTableEntry, TcbVersion, parse_cert_table

__all__ = [
    "certs_from_table",
    "check_hwid",
    "check_spls",
    "endorsement_extensions",
    "product_name",
    "read_collateral",
]

_KDS_OID = "1.3.6.1.4.1.3704.1."
_OID_PRODUCT_NAME = _KDS_OID + "2"
_OID_HWID = _KDS_OID + "4"
_SPL_OIDS = {  # TcbVersion attribute -> (KDS name, OID)
    "bootloader": ("blSPL", _KDS_OID + "3.1"),
    "tee": ("teeSPL", _KDS_OID + "3.2"),
    "snp": ("snpSPL", _KDS_OID + "3.3"),
    "microcode": ("ucodeSPL", _KDS_OID + "3.8"),
    "fmc": ("fmcSPL", _KDS_OID + "3.9"),
}


def _load_pem(data: bytes, what: str) -> list[x509.Certificate]:
    return list(load_pem_certificates(data, what, CollateralError))


def _load_der(data: bytes, what: str) -> x509.Certificate:
    return load_der_certificate(data, what, CollateralError)


def _der_element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at ``pos``; ValueError if malformed."""
    try:
        tlv, end = read_tlv(data, pos, "DER element")
    except EvidenceFormatError as exc:
        raise ValueError(str(exc)) from None
    return tlv.tag, end - len(tlv.value), end


def _split_der(data: bytes) -> list[bytes] | None:
    """Concatenated DER SEQUENCEs, or None if ``data`` is not exactly that."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(data):
        try:
            tag, _, end = _der_element(data, pos)
        except ValueError:
            return None
        if tag != 0x30:
            return None
        parts.append(data[pos:end])
        pos = end
    return parts or None


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----\s*", re.DOTALL)


def read_collateral(data: bytes, what: str) -> tuple[list[x509.Certificate], list[bytes]]:
    """Certificates and CRLs (their bytes, each loaded once here) from PEM, DER (one
    or concatenated) or a GHCB certificate table (certificates only)."""
    if b"-----BEGIN" in data:
        crls = [m.group(0) for m in _PEM_CRL.finditer(data)]
        for crl in crls:
            load_crl(crl, what, CollateralError)
        rest = _PEM_CRL.sub(b"", data)
        return (_load_pem(rest, what) if b"-----BEGIN" in rest else []), crls
    parts = _split_der(data)
    if parts is None:
        try:
            table = parse_cert_table(data)
        except EvidenceFormatError as exc:
            raise CollateralError(
                f"{what}: neither PEM, DER nor a GHCB certificate table ({exc})"
            ) from None
        return certs_from_table(table.entries, what), []
    certs: list[x509.Certificate] = []
    crls = []
    for part in parts:
        try:
            certs.append(_load_der(part, what))
        except CollateralError as not_a_cert:
            try:
                load_crl(part, what, CollateralError)
            except CollateralError:
                raise not_a_cert from None
            crls.append(part)
    return certs, crls


def certs_from_table(entries: Iterable[CertTableEntry], what: str) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for entry in entries:
        if entry.role is None:
            continue  # e.g. go-sev-guest's extra platform info blob
        label = f"{what} ({entry.role.upper()} entry)"
        if b"-----BEGIN" in entry.data:
            certs.extend(_load_pem(entry.data, label))
        else:
            certs.append(_load_der(entry.data, label))
    return certs


def _der_integer(value: bytes, what: str) -> int:
    try:
        tag, start, end = _der_element(value, 0)
    except ValueError:
        tag, start, end = -1, 0, 0
    if tag != 0x02 or end != len(value) or start == end or value[start] & 0x80:
        raise CollateralError(f"{what} is not a non-negative DER INTEGER")
    return int.from_bytes(value[start:end], "big")


def _hwid(value: bytes) -> bytes:
    # KDS used to store the hwID raw; newer certificates wrap it in an OCTET STRING.
    try:
        tag, start, end = _der_element(value, 0)
        if tag == 0x04 and end == len(value) and end - start in (8, 64):
            return value[start:end]
    except ValueError:
        pass
    return value


def product_name(extensions: Mapping[str, bytes]) -> str | None:
    """The productName extension of a VCEK/VLEK (e.g. "Milan-B0"), if it has one."""
    value = extensions.get(_OID_PRODUCT_NAME)
    if value is None:
        return None
    try:
        tag, start, end = _der_element(value, 0)
        if tag in (0x0C, 0x13, 0x16) and end == len(value):
            value = value[start:end]
    except ValueError:
        pass
    return value.decode("ascii", "replace")


def endorsement_extensions(endorser: x509.Certificate) -> dict[str, bytes]:
    """The AMD KDS extensions (OIDs under 1.3.6.1.4.1.3704.1) of a VCEK or VLEK."""
    return kds_extensions(endorser, _KDS_OID)


def check_hwid(extensions: Mapping[str, bytes], chip_id: bytes) -> None:
    """A VCEK's hwID must be the report's CHIP_ID (64 bytes; 8 on Turin)."""
    hwid_value = extensions.get(_OID_HWID)
    if hwid_value is None:
        raise CollateralError("VCEK lacks the hwID extension (1.3.6.1.4.1.3704.1.4)")
    hwid = _hwid(hwid_value)
    n = len(hwid)
    if n not in (8, 64) or hwid != chip_id[:n] or any(chip_id[n:]):
        raise CollateralError("VCEK hwID does not match the report's CHIP_ID")


def check_spls(extensions: Mapping[str, bytes], kind: str, tcb: TcbVersion) -> None:
    """The certificate's SPL extensions must equal REPORTED_TCB (fmcSPL on Turin only)."""
    for attr, (name, oid) in _SPL_OIDS.items():
        reported = getattr(tcb, attr)
        if reported is None:
            continue  # fmc outside Turin
        value = extensions.get(oid)
        if value is None:
            raise CollateralError(f"{kind} lacks the {name} extension ({oid})")
        certified = _der_integer(value, f"{kind} {name} extension")
        if certified != reported:
            raise CollateralError(
                f"{kind} {name} is {certified} but the report's REPORTED_TCB "
                f"{attr} SPL is {reported}"
            )
