"""Byte layouts of Intel DCAP ECDSA quotes and the PCK certificate SGX extension.

* SGX quote v3 (Intel "SGX ECDSA Quote Library API", appendix A): 48-byte header,
  384-byte enclave report body, then the signature data with the QE report inline.
* TDX quote v4 (Intel "TDX DCAP Quote Generation Library API"): 48-byte header,
  584-byte TD report body; the QE report travels inside certification data type 6.
* Quote v5: 48-byte header, then body type (u16) and body size (u32) in front of an
  SGX enclave report (type 1), a TDX 1.0 TD report (type 2) or a TDX 1.5 TD report
  (type 3, 648 bytes: adds TEE_TCB_SVN2 and MR_SERVICETD).

All integers are little-endian. Parsing only: nothing here decides whether a quote
is trustworthy (see :mod:`trustedml.attestation._intel`). The PCK certificate's SGX
extension is parsed in :mod:`._pck` and exported from here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from trustedml.errors import EvidenceFormatError, UnsupportedEvidenceError
from trustedml.hazmat.attestation._pck import (
    SGX_EXTENSION_OID,
    PckExtension,
    parse_pck_extension,
)

__all__ = [
    "ATT_KEY_TYPE_ECDSA_P256",
    "BODY_TYPE_SGX",
    "BODY_TYPE_TD10",
    "BODY_TYPE_TD15",
    "CERT_TYPE_PCK_CERT_CHAIN",
    "CERT_TYPE_QE_REPORT",
    "INTEL_QE_VENDOR_ID",
    "SGX_EXTENSION_OID",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "CertificationData",
    "EcdsaSignatureData",
    "PckExtension",
    "QeReportCertificationData",
    "Quote",
    "QuoteHeader",
    "SgxReportBody",
    "TdReport10",
    "TdReport15",
    "parse_pck_extension",
    "parse_quote",
]

HEADER_SIZE = 48
SGX_REPORT_BODY_SIZE = 384
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
V5_BODY_DESCRIPTOR_SIZE = 6  # body type u16 + body size u32
ECDSA_SIGNATURE_SIZE = 64  # raw r || s, P-256
ECDSA_KEY_SIZE = 64  # raw x || y, P-256

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_TYPE_ECDSA_P256 = 2
BODY_TYPE_SGX = 1
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
CERT_TYPE_PCK_CERT_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

_SUPPORTED_VERSIONS = (3, 4, 5)
_BODY_SIZES = {
    BODY_TYPE_SGX: SGX_REPORT_BODY_SIZE,
    BODY_TYPE_TD10: TD_REPORT10_SIZE,
    BODY_TYPE_TD15: TD_REPORT15_SIZE,
}
_HEADER = struct.Struct("<HHIHH16s20s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class _Reader:
    # Bounds-checked cursor over one region of a quote: every read names its field.

    def __init__(self, data: bytes, start: int, end: int, where: str) -> None:
        self.data = data
        self.pos = start
        self.end = end
        self.where = where

    def take(self, size: int, field: str) -> bytes:
        if size > self.end - self.pos:
            raise EvidenceFormatError(
                f"{self.where}: {field} truncated: needs {size} bytes at offset {self.pos}, "
                f"{self.end - self.pos} left"
            )
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def finish(self, field: str) -> None:
        # A declared size must be filled exactly: slack would be bytes that no check
        # reads, and a second encoding of the same quote.
        if self.pos != self.end:
            raise EvidenceFormatError(
                f"{self.where}: {self.end - self.pos} bytes after the {field} are not "
                "part of any field"
            )

    def u16(self, field: str) -> int:
        value: int = _U16.unpack(self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = _U32.unpack(self.take(4, field))[0]
        return value


def _exact(raw: bytes, size: int, what: str) -> bytes:
    if len(raw) != size:
        raise EvidenceFormatError(f"{what} must be {size} bytes, got {len(raw)}")
    return bytes(raw)


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header. ``qe_svn``/``pce_svn`` are only meaningful in v3
    (they are reserved, usually zero, in v4 and v5)."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    raw: bytes

    @classmethod
    def parse(cls, data: bytes) -> QuoteHeader:
        """Parse the header at the start of ``data`` (which may hold more)."""
        if len(data) < HEADER_SIZE:
            raise EvidenceFormatError(
                f"quote header truncated: needs {HEADER_SIZE} bytes, got {len(data)}"
            )
        raw = bytes(data[:HEADER_SIZE])
        version, key_type, tee_type, qe_svn, pce_svn, vendor, user = _HEADER.unpack(raw)
        return cls(version, key_type, tee_type, qe_svn, pce_svn, vendor, user, raw)

    @property
    def is_tdx(self) -> bool:
        return self.tee_type == TEE_TYPE_TDX


@dataclass(frozen=True)
class SgxReportBody:
    """An SGX enclave report body (384 bytes): the ISV enclave in an SGX quote, and
    the quoting enclave's own report in every quote."""

    cpusvn: bytes
    miscselect: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> SgxReportBody:
        """Parse exactly :data:`SGX_REPORT_BODY_SIZE` bytes."""
        raw = _exact(raw, SGX_REPORT_BODY_SIZE, "SGX report body")
        (miscselect,) = _U32.unpack_from(raw, 16)
        isv_prod_id, isv_svn, config_svn = struct.unpack_from("<HHH", raw, 256)
        return cls(
            cpusvn=raw[0:16],
            miscselect=miscselect,
            isv_ext_prod_id=raw[32:48],
            attributes=raw[48:64],
            mrenclave=raw[64:96],
            mrsigner=raw[128:160],
            config_id=raw[192:256],
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            config_svn=config_svn,
            isv_family_id=raw[304:320],
            report_data=raw[320:384],
            raw=raw,
        )

    @property
    def miscselect_bytes(self) -> bytes:
        return self.raw[16:20]

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.DEBUG (flags bit 1): the enclave's memory is open to a debugger."""
        return bool(self.attributes[0] & 0x02)


@dataclass(frozen=True)
class TdReport10:
    """A TDX 1.0 TD report body (584 bytes; quote v4, or v5 body type 2)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> TdReport10:
        """Parse exactly :data:`TD_REPORT10_SIZE` bytes."""
        return cls(*_td10_fields(_exact(raw, TD_REPORT10_SIZE, "TD report 1.0 body")))

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.DEBUG (bit 0): the TD runs under a debugger (TUD)."""
        return bool(self.td_attributes[0] & 0x01)

    @property
    def tdx_module_version(self) -> int:
        """TEE_TCB_SVN[1]: the TDX module major version (0 on early TDX 1.0 modules)."""
        return self.tee_tcb_svn[1]


@dataclass(frozen=True)
class TdReport15(TdReport10):
    """A TDX 1.5 TD report body (648 bytes; quote v5 body type 3)."""

    tee_tcb_svn2: bytes
    mr_servicetd: bytes

    @classmethod
    def parse(cls, raw: bytes) -> TdReport15:
        """Parse exactly :data:`TD_REPORT15_SIZE` bytes."""
        raw = _exact(raw, TD_REPORT15_SIZE, "TD report 1.5 body")
        return cls(
            *_td10_fields(raw),
            raw[TD_REPORT10_SIZE : TD_REPORT10_SIZE + 16],  # tee_tcb_svn2
            raw[TD_REPORT10_SIZE + 16 : TD_REPORT15_SIZE],  # mr_servicetd
        )


_Td10Fields = tuple[
    bytes,
    bytes,
    bytes,
    bytes,
    bytes,
    bytes,
    bytes,
    bytes,
    bytes,
    bytes,
    tuple[bytes, bytes, bytes, bytes],
    bytes,
    bytes,
]


def _td10_fields(raw: bytes) -> _Td10Fields:
    def at(offset: int, size: int) -> bytes:
        return raw[offset : offset + size]

    return (
        at(0, 16),  # tee_tcb_svn
        at(16, 48),  # mr_seam
        at(64, 48),  # mr_signer_seam
        at(112, 8),  # seam_attributes
        at(120, 8),  # td_attributes
        at(128, 8),  # xfam
        at(136, 48),  # mr_td
        at(184, 48),  # mr_config_id
        at(232, 48),  # mr_owner
        at(280, 48),  # mr_owner_config
        (at(328, 48), at(376, 48), at(424, 48), at(472, 48)),  # rtmr0-3
        at(520, 64),  # report_data
        raw,
    )


@dataclass(frozen=True)
class QeReportCertificationData:
    """Certification data type 6: the QE report, its PCK signature, the QE
    authentication data and the nested certification data (normally type 5)."""

    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data: CertificationData


@dataclass(frozen=True)
class CertificationData:
    """Certification data: a type (1-5 PCK identifiers, 5 = PEM PCK chain, 6 = QE
    report certification data) and its bytes; ``qe_report_data`` is set for type 6."""

    cert_type: int
    data: bytes
    qe_report_data: QeReportCertificationData | None = None

    @property
    def innermost(self) -> CertificationData:
        """The certification data that identifies the PCK (type 6 unwrapped)."""
        inner = self
        while inner.qe_report_data is not None:
            inner = inner.qe_report_data.certification_data
        return inner


@dataclass(frozen=True)
class EcdsaSignatureData:
    """The quote signature data, with the QE report fields lifted out of
    certification data type 6 for v4/v5 quotes. ``certification_data`` is as it
    appears in the quote (type 6 for v4/v5); :attr:`pck_certification_data` is the
    PCK chain inside it."""

    signature: bytes
    attestation_key: bytes
    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data: CertificationData

    @property
    def pck_certification_data(self) -> CertificationData:
        return self.certification_data.innermost


@dataclass(frozen=True)
class Quote:
    """A parsed DCAP quote. ``signed_bytes`` (header and body) is what the
    attestation key signs; ``size`` is how many input bytes the quote occupies
    (anything after it is ignored, like Intel's QVL and dcap-qvl do)."""

    header: QuoteHeader
    body_type: int
    body: SgxReportBody | TdReport10
    signed_bytes: bytes
    signature_data: EcdsaSignatureData
    size: int

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def is_tdx(self) -> bool:
        return self.header.is_tdx


def _qe_report(reader: _Reader) -> tuple[SgxReportBody, bytes, bytes]:
    # The QE report, its PCK signature and the QE auth data: inline in v3, inside
    # certification data type 6 in v4/v5.
    qe_report = SgxReportBody.parse(reader.take(SGX_REPORT_BODY_SIZE, "QE report"))
    qe_sig = reader.take(ECDSA_SIGNATURE_SIZE, "QE report signature")
    auth_size = reader.u16("QE auth data size")
    return qe_report, qe_sig, reader.take(auth_size, "QE auth data")


def _parse_certification_data(
    reader: _Reader, where: str, *, allow_qe_report: bool
) -> CertificationData:
    cert_type = reader.u16(f"{where} type")
    size = reader.u32(f"{where} size")
    data = reader.take(size, f"{where} ({size} bytes declared)")
    if cert_type != CERT_TYPE_QE_REPORT:
        if not 1 <= cert_type <= CERT_TYPE_PCK_CERT_CHAIN:
            raise UnsupportedEvidenceError(
                f"{where}: unsupported certification data type {cert_type} (expected 1-6)"
            )
        return CertificationData(cert_type, data)
    if not allow_qe_report:
        raise UnsupportedEvidenceError(f"{where}: certification data type 6 is not allowed here")
    inner = _Reader(data, 0, len(data), f"{where} (QE report certification data)")
    qe_report, qe_sig, auth = _qe_report(inner)
    nested = _parse_certification_data(inner, "nested certification data", allow_qe_report=False)
    inner.finish("nested certification data")
    return CertificationData(
        cert_type, data, QeReportCertificationData(qe_report, qe_sig, auth, nested)
    )


def _parse_body(header: QuoteHeader, reader: _Reader) -> tuple[int, SgxReportBody | TdReport10]:
    if header.version >= 5:
        body_type = reader.u16("body type")
        body_size = reader.u32("body size")
        expected = _BODY_SIZES.get(body_type)
        if expected is None:
            raise UnsupportedEvidenceError(
                f"quote v5: unsupported body type {body_type} (expected 1, 2 or 3)"
            )
        if body_size != expected:
            raise EvidenceFormatError(
                f"quote v5: body size {body_size} does not match body type {body_type} "
                f"(expected {expected})"
            )
        if (body_type == BODY_TYPE_SGX) != (header.tee_type == TEE_TYPE_SGX):
            raise EvidenceFormatError(
                f"quote v5: body type {body_type} does not match TEE type {header.tee_type:#x}"
            )
    elif header.tee_type == TEE_TYPE_SGX:
        body_type = BODY_TYPE_SGX
    else:
        body_type = BODY_TYPE_TD10
    raw = reader.take(_BODY_SIZES[body_type], "report body")
    body: SgxReportBody | TdReport10
    if body_type == BODY_TYPE_SGX:
        body = SgxReportBody.parse(raw)
    elif body_type == BODY_TYPE_TD10:
        body = TdReport10.parse(raw)
    else:
        body = TdReport15.parse(raw)
    return body_type, body


def parse_quote(data: bytes) -> Quote:
    """Parse an SGX v3 or TDX v4/v5 ECDSA-P256 quote.

    Bytes after the quote's signature data are ignored. Raises
    :class:`~trustedml.errors.UnsupportedEvidenceError` for an unknown version,
    attestation key type, TEE type, body type or certification data type, and
    :class:`~trustedml.errors.EvidenceFormatError` (naming the field) for anything
    truncated or inconsistent.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError(f"quote must be bytes, got {type(data).__name__}")
    data = bytes(data)
    header = QuoteHeader.parse(data)
    if header.version not in _SUPPORTED_VERSIONS:
        raise UnsupportedEvidenceError(
            f"quote header: unsupported version {header.version} (expected 3, 4 or 5)"
        )
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise UnsupportedEvidenceError(
            f"quote header: unsupported attestation key type {header.att_key_type} "
            f"(expected {ATT_KEY_TYPE_ECDSA_P256}, ECDSA-256 with P-256)"
        )
    if header.tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
        raise UnsupportedEvidenceError(
            f"quote header: unsupported TEE type {header.tee_type:#x} (expected 0x0 or 0x81)"
        )
    if header.version == 3 and header.tee_type != TEE_TYPE_SGX:
        raise UnsupportedEvidenceError(
            f"quote header: version 3 is SGX only, got TEE type {header.tee_type:#x}"
        )
    reader = _Reader(data, HEADER_SIZE, len(data), "quote")
    body_type, body = _parse_body(header, reader)
    signed_end = reader.pos
    sig_size = reader.u32("signature data size")
    sig_start = reader.pos
    sig_reader = _Reader(data, sig_start, sig_start, "quote signature data")
    # Declared size first: a size that overruns the input is itself the error.
    reader.take(sig_size, f"signature data ({sig_size} bytes declared)")
    sig_reader.end = sig_start + sig_size
    signature = sig_reader.take(ECDSA_SIGNATURE_SIZE, "quote signature")
    attestation_key = sig_reader.take(ECDSA_KEY_SIZE, "attestation key")
    if header.version == 3:
        qe_report, qe_sig, auth = _qe_report(sig_reader)
        cert = _parse_certification_data(sig_reader, "certification data", allow_qe_report=False)
    else:
        cert = _parse_certification_data(sig_reader, "certification data", allow_qe_report=True)
        if cert.qe_report_data is None:
            raise UnsupportedEvidenceError(
                f"quote v{header.version}: certification data type {cert.cert_type}, "
                f"expected {CERT_TYPE_QE_REPORT} (QE report certification data)"
            )
        qe = cert.qe_report_data
        qe_report, qe_sig, auth = qe.qe_report, qe.qe_report_signature, qe.qe_auth_data
    sig_reader.finish("certification data")
    signature_data = EcdsaSignatureData(signature, attestation_key, qe_report, qe_sig, auth, cert)
    return Quote(
        header=header,
        body_type=body_type,
        body=body,
        signed_bytes=data[:signed_end],
        signature_data=signature_data,
        size=sig_start + sig_size,
    )
