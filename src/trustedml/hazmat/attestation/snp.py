"""AMD SEV-SNP attestation report layout and the extended-report certificate table.

The report follows the ``ATTESTATION_REPORT`` structure of AMD's SEV-SNP Firmware ABI
specification (publication 56860), versions 2 to 5; the certificate table follows the
GHCB specification (publication 56421) as Linux returns it in configfs-tsm ``auxblob``.
Parsing only: signatures and certificates are checked by
:mod:`trustedml.attestation._amd`.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from trustedml.errors import EvidenceFormatError, UnsupportedEvidenceError

__all__ = [
    "ARK_GUID",
    "ASK_GUID",
    "MAX_REPORT_VERSION",
    "MIN_REPORT_VERSION",
    "REPORT_SIZE",
    "SIGNATURE_OFFSET",
    "SIG_ALGO_ECDSA_P384_SHA384",
    "VCEK_GUID",
    "VLEK_GUID",
    "CertTable",
    "CertTableEntry",
    "FirmwareVersion",
    "GuestPolicy",
    "PlatformInfo",
    "SigningKey",
    "SnpProduct",
    "SnpReport",
    "TcbVersion",
    "parse_cert_table",
    "parse_extended_report",
    "parse_snp_report",
    "product_from_cpuid",
]

REPORT_SIZE = 0x4A0
SIGNATURE_OFFSET = 0x2A0  # the signature covers bytes 0x000..0x29F
SIG_ALGO_ECDSA_P384_SHA384 = 1
MIN_REPORT_VERSION = 2
MAX_REPORT_VERSION = 5
_CPUID_VERSION = 3  # CPUID_FAM_ID / CPUID_MOD_ID / CPUID_STEP appear in version 3
_MIT_VECTOR_VERSION = 5  # LAUNCH_MIT_VECTOR / CURRENT_MIT_VECTOR appear in version 5
_ECDSA_COMPONENT = 72  # R and S: 72-byte little-endian fields
_ECDSA_END = SIGNATURE_OFFSET + 2 * _ECDSA_COMPONENT

# GUIDs of the GHCB certificate table (stored in RFC 4122 byte order).
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")  # also carries the ASVK
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
_CERT_ENTRY = struct.Struct("<16sII")
_GUID_ROLES = {VCEK_GUID: "vcek", VLEK_GUID: "vlek", ASK_GUID: "ask", ARK_GUID: "ark"}


class SnpProduct(enum.StrEnum):
    """An AMD EPYC product line with its own SEV-SNP root key (the KDS product name)."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class SigningKey(enum.IntEnum):
    """The SIGNING_KEY field: which endorsement key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


def product_from_cpuid(family: int, model: int) -> SnpProduct | None:
    """The product named by a report's CPUID_FAM_ID / CPUID_MOD_ID, or None if unknown.

    Bergamo and Siena (family 19h, models A0h-AFh) are certified under Genoa's keys.
    """
    if family == 0x19:
        if model <= 0x0F:
            return SnpProduct.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return SnpProduct.GENOA
    elif family == 0x1A and model <= 0x1F:
        return SnpProduct.TURIN
    return None


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION: security patch levels of the firmware components.

    The byte layout depends on the product: Milan and Genoa use bootloader, tee,
    4 reserved, snp, microcode; Turin uses fmc, bootloader, tee, snp, 3 reserved,
    microcode. ``fmc`` is None for the Milan/Genoa layout.
    """

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, product: SnpProduct | None) -> TcbVersion:
        """Decode a raw TCB_VERSION in ``product``'s layout (None: Milan/Genoa)."""
        b = raw.to_bytes(8, "little")
        if product is SnpProduct.TURIN:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def to_dict(self) -> dict[str, int]:
        """Component SPLs by KDS name (plus ``raw``); ``fmc`` only for Turin."""
        out = {"raw": self.raw, "bootloader": self.bootloader, "tee": self.tee}
        out.update(snp=self.snp, microcode=self.microcode)
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True)
class GuestPolicy:
    """The guest POLICY the owner set at launch."""

    raw: int
    abi_minor: int
    abi_major: int
    smt: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allowed: bool
    mem_aes_256_xts: bool
    rapl_dis: bool
    ciphertext_hiding: bool
    page_swap_disable: bool

    @classmethod
    def decode(cls, raw: int) -> GuestPolicy:
        """Decode POLICY; reserved bits set wrongly raise EvidenceFormatError."""
        if not raw >> 17 & 1:
            raise EvidenceFormatError("SEV-SNP report: POLICY bit 17 is reserved and must be 1")
        if raw >> 26:
            raise EvidenceFormatError(
                f"SEV-SNP report: POLICY bits 26..63 are reserved and must be zero, got {raw:#x}"
            )

        def bit(n: int) -> bool:
            return bool(raw >> n & 1)

        return cls(
            raw=raw,
            abi_minor=raw & 0xFF,
            abi_major=raw >> 8 & 0xFF,
            smt=bit(16),
            migrate_ma=bit(18),
            debug=bit(19),
            single_socket=bit(20),
            cxl_allowed=bit(21),
            mem_aes_256_xts=bit(22),
            rapl_dis=bit(23),
            ciphertext_hiding=bit(24),
            page_swap_disable=bit(25),
        )


@dataclass(frozen=True)
class PlatformInfo:
    """PLATFORM_INFO: how the host platform is configured (``raw`` keeps every bit)."""

    raw: int
    smt_enabled: bool
    tsme_enabled: bool
    ecc_enabled: bool
    rapl_disabled: bool
    ciphertext_hiding_enabled: bool
    alias_check_complete: bool

    @classmethod
    def decode(cls, raw: int) -> PlatformInfo:
        """Decode PLATFORM_INFO."""
        # Unknown bits are kept in raw, not rejected: newer firmware adds platform bits
        # and the reference verifiers do not refuse them either.
        return cls(
            raw=raw,
            smt_enabled=bool(raw & 1),
            tsme_enabled=bool(raw >> 1 & 1),
            ecc_enabled=bool(raw >> 2 & 1),
            rapl_disabled=bool(raw >> 3 & 1),
            ciphertext_hiding_enabled=bool(raw >> 4 & 1),
            alias_check_complete=bool(raw >> 5 & 1),
        )


@dataclass(frozen=True)
class FirmwareVersion:
    """An SNP firmware version (CURRENT_* / COMMITTED_* fields)."""

    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True)
class SnpReport:
    """A parsed SEV-SNP ATTESTATION_REPORT (every field, in spec order).

    ``cpuid_*`` are None before version 3 and the mitigation vectors before version 5.
    ``product`` is the product whose TCB_VERSION layout decoded the TCB fields: the
    ``product`` passed to :func:`parse_snp_report`, else the one the CPUID fields name,
    else None (Milan/Genoa layout).
    """

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes
    signature_s: bytes
    product: SnpProduct | None
    raw: bytes

    @property
    def signed_bytes(self) -> bytes:
        """Bytes 0x000..0x29F: what the endorsement key signed."""
        return self.raw[:SIGNATURE_OFFSET]

    @property
    def cpuid_product(self) -> SnpProduct | None:
        """The product the CPUID fields name (None before version 3 or if unknown)."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    @property
    def current_version(self) -> FirmwareVersion:
        return FirmwareVersion(self.current_major, self.current_minor, self.current_build)

    @property
    def committed_version(self) -> FirmwareVersion:
        return FirmwareVersion(self.committed_major, self.committed_minor, self.committed_build)

    @property
    def signature_rs(self) -> tuple[int, int]:
        """The ECDSA signature as integers (R and S are stored little-endian)."""
        return (
            int.from_bytes(self.signature_r, "little"),
            int.from_bytes(self.signature_s, "little"),
        )


def _require_zero(data: bytes, start: int, end: int) -> None:
    if any(data[start:end]):
        last = end - 1
        raise EvidenceFormatError(
            f"SEV-SNP report: reserved bytes {start:#05x}..{last:#05x} must be zero"
        )


def parse_snp_report(data: bytes, *, product: SnpProduct | None = None) -> SnpReport:
    """Parse the attestation report in the first 0x4A0 bytes of ``data``.

    Like go-sev-guest and virtee/sev, longer input is accepted and the bytes after
    0x4A0 are not part of the report (in an extended report they are the certificate
    table: see :func:`parse_extended_report`). Reserved regions must be zero, as the
    reference verifiers require. ``product`` selects the TCB_VERSION layout; without
    it, version 3+ reports use the product their CPUID fields name and version 2
    reports (no CPUID) the Milan/Genoa layout.

    Raises :class:`~trustedml.errors.EvidenceFormatError` naming the field, or
    :class:`~trustedml.errors.UnsupportedEvidenceError` for an unknown version or
    signature algorithm.
    """
    if len(data) < REPORT_SIZE:
        raise EvidenceFormatError(
            f"SEV-SNP report: expected at least {REPORT_SIZE} (0x4A0) bytes, got {len(data)}"
        )
    data = bytes(data[:REPORT_SIZE])
    version, guest_svn, policy_raw = struct.unpack_from("<IIQ", data, 0x00)
    if not MIN_REPORT_VERSION <= version <= MAX_REPORT_VERSION:
        raise UnsupportedEvidenceError(
            f"SEV-SNP report: VERSION {version} is not supported "
            f"(expected {MIN_REPORT_VERSION}..{MAX_REPORT_VERSION})"
        )
    vmpl, sig_algo, current_raw, platform_raw, key_info = struct.unpack_from("<IIQQI", data, 0x30)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise UnsupportedEvidenceError(
            f"SEV-SNP report: SIGNATURE_ALGO {sig_algo} is not supported "
            f"(expected {SIG_ALGO_ECDSA_P384_SHA384}, ECDSA P-384 with SHA-384)"
        )
    policy = GuestPolicy.decode(policy_raw)
    if key_info >> 5:
        raise EvidenceFormatError(
            f"SEV-SNP report: bits 5..31 at 0x048 (after SIGNING_KEY) are reserved "
            f"and must be zero, got {key_info:#x}"
        )
    signing_value = key_info >> 2 & 0x7
    if signing_value not in SigningKey._value2member_map_:
        raise EvidenceFormatError(f"SEV-SNP report: SIGNING_KEY value {signing_value} is reserved")
    _require_zero(data, 0x04C, 0x050)

    has_cpuid = version >= _CPUID_VERSION
    cpuid: tuple[int, int, int] | tuple[None, None, None] = (None, None, None)
    if has_cpuid:
        cpuid = (data[0x188], data[0x189], data[0x18A])
    _require_zero(data, 0x18B if has_cpuid else 0x188, 0x1A0)
    _require_zero(data, 0x1EB, 0x1EC)
    _require_zero(data, 0x1EF, 0x1F0)
    has_mit = version >= _MIT_VECTOR_VERSION
    mit: tuple[int, int] | tuple[None, None] = (None, None)
    if has_mit:
        mit = struct.unpack_from("<QQ", data, 0x1F8)
    _require_zero(data, 0x208 if has_mit else 0x1F8, SIGNATURE_OFFSET)
    _require_zero(data, _ECDSA_END, REPORT_SIZE)

    if product is None and cpuid[0] is not None and cpuid[1] is not None:
        product = product_from_cpuid(cpuid[0], cpuid[1])
    (reported_raw,) = struct.unpack_from("<Q", data, 0x180)
    committed_raw, cur_build, cur_minor, cur_major = struct.unpack_from("<QBBB", data, 0x1E0)
    com_build, com_minor, com_major = struct.unpack_from("<BBB", data, 0x1EC)
    (launch_raw,) = struct.unpack_from("<Q", data, 0x1F0)
    fields: dict[str, Any] = {
        "version": version,
        "guest_svn": guest_svn,
        "policy": policy,
        "family_id": data[0x010:0x020],
        "image_id": data[0x020:0x030],
        "vmpl": vmpl,
        "signature_algo": sig_algo,
        "current_tcb": TcbVersion.decode(current_raw, product),
        "platform_info": PlatformInfo.decode(platform_raw),
        "author_key_en": bool(key_info & 1),
        "mask_chip_key": bool(key_info & 2),
        "signing_key": SigningKey(signing_value),
        "report_data": data[0x050:0x090],
        "measurement": data[0x090:0x0C0],
        "host_data": data[0x0C0:0x0E0],
        "id_key_digest": data[0x0E0:0x110],
        "author_key_digest": data[0x110:0x140],
        "report_id": data[0x140:0x160],
        "report_id_ma": data[0x160:0x180],
        "reported_tcb": TcbVersion.decode(reported_raw, product),
        "cpuid_fam_id": cpuid[0],
        "cpuid_mod_id": cpuid[1],
        "cpuid_step": cpuid[2],
        "chip_id": data[0x1A0:0x1E0],
        "committed_tcb": TcbVersion.decode(committed_raw, product),
        "current_build": cur_build,
        "current_minor": cur_minor,
        "current_major": cur_major,
        "committed_build": com_build,
        "committed_minor": com_minor,
        "committed_major": com_major,
        "launch_tcb": TcbVersion.decode(launch_raw, product),
        "launch_mit_vector": mit[0],
        "current_mit_vector": mit[1],
        "signature_r": data[SIGNATURE_OFFSET : SIGNATURE_OFFSET + _ECDSA_COMPONENT],
        "signature_s": data[SIGNATURE_OFFSET + _ECDSA_COMPONENT : _ECDSA_END],
        "product": product,
        "raw": data,
    }
    return SnpReport(**fields)


@dataclass(frozen=True)
class CertTableEntry:
    """One certificate of a GHCB certificate table, as stored (DER, normally)."""

    guid: uuid.UUID
    data: bytes

    @property
    def role(self) -> str | None:
        """``"vcek"``, ``"vlek"``, ``"ask"`` (ASK or ASVK), ``"ark"``, or None."""
        return _GUID_ROLES.get(self.guid)


@dataclass(frozen=True)
class CertTable:
    """The certificates an extended report request returned (configfs-tsm ``auxblob``)."""

    entries: tuple[CertTableEntry, ...]

    def get(self, guid: uuid.UUID) -> bytes | None:
        for entry in self.entries:
            if entry.guid == guid:
                return entry.data
        return None


def parse_cert_table(data: bytes) -> CertTable:
    """Parse a GHCB certificate table: 24-byte entries (GUID, offset, length, little
    endian) ended by an all-zero entry, then the certificates, offsets counted from the
    start of ``data``. Empty input is an empty table.

    Raises :class:`~trustedml.errors.EvidenceFormatError` for a missing terminator,
    an entry pointing into the header or past the end, or a repeated known GUID.
    """
    data = bytes(data)
    if not data:
        return CertTable(())
    headers: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + _CERT_ENTRY.size > len(data):
            raise EvidenceFormatError(
                f"SEV-SNP certificate table: entry {len(headers)} is truncated "
                "(no all-zero terminator entry)"
            )
        guid_bytes, offset, length = _CERT_ENTRY.unpack_from(data, pos)
        pos += _CERT_ENTRY.size
        if offset == 0 and length == 0 and not any(guid_bytes):
            break
        headers.append((uuid.UUID(bytes=guid_bytes), offset, length))
    entries: list[CertTableEntry] = []
    seen: set[uuid.UUID] = set()
    for index, (guid, offset, length) in enumerate(headers):
        if offset < pos:
            raise EvidenceFormatError(
                f"SEV-SNP certificate table: entry {index} offset {offset} points into "
                f"the {pos}-byte header"
            )
        if offset + length > len(data):
            raise EvidenceFormatError(
                f"SEV-SNP certificate table: entry {index} (offset {offset}, length "
                f"{length}) ends past the {len(data)}-byte table"
            )
        if guid in _GUID_ROLES:
            # Two VCEKs (say) leave no way to tell which one the host meant.
            if guid in seen:
                raise EvidenceFormatError(
                    f"SEV-SNP certificate table: GUID {guid} ({_GUID_ROLES[guid]}) "
                    "appears more than once"
                )
            seen.add(guid)
        entries.append(CertTableEntry(guid, data[offset : offset + length]))
    return CertTable(tuple(entries))


def parse_extended_report(data: bytes) -> tuple[SnpReport, CertTable]:
    """Parse an extended report: the 0x4A0-byte report, then a certificate table
    (empty when nothing follows the report)."""
    data = bytes(data)
    return parse_snp_report(data), parse_cert_table(data[REPORT_SIZE:])
