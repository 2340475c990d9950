"""Real evidence captured by others and published in public repositories.

Each folder under ``vectors/public/`` has a MANIFEST.md naming the origin (repository,
path, commit) and the values checked here. These vectors cover forms the dcap-qvl and
go-sev-guest vectors (vectors/dcap-qvl, vectors/go-sev-guest) do not: SEV-SNP reports
from Genoa and Turin, report versions 2 and 5 from several clouds, a Genoa VCEK whose
RSASSA-PSS parameters spell out the trailer field, a Turin VCEK with an 8-byte hwID and
fmcSPL, and a TDX 1.5 quote (v5, body type 3) from Alibaba Cloud with a non-empty QE
authentication data and MR_SERVICETD.
Later additions: a TDX 1.5 quote that verifies UpToDate (go-tdx-guest's v5 sample with
the Intel collateral frozen by Automata), SGX v3 and TDX v4 quotes verified at the
publisher's frozen time against its frozen collateral (verdicts compared with its
journal), a TDX v4 quote decoded from Project Oak's protobuf text, and an Azure Milan
report v3 whose VCEK has serial number 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from trustedml.attestation import (
    EvidenceType,
    TcbStatus,
    describe_evidence,
    detect_evidence_type,
    parse_evidence,
    verify_evidence,
)
from trustedml.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    EvidenceSignatureError,
)
from trustedml.hazmat.attestation.intel import (
    BODY_TYPE_TD15,
    CERT_TYPE_PCK_CERT_CHAIN,
    CERT_TYPE_QE_REPORT,
    SGX_EXTENSION_OID,
    PckExtension,
    Quote,
    SgxReportBody,
    TdReport15,
    parse_pck_extension,
    parse_quote,
)
from trustedml.hazmat.attestation.snp import SigningKey, SnpProduct, SnpReport, parse_snp_report

PUBLIC = Path(__file__).resolve().parent / "vectors" / "public"
DCAP_QVL = Path(__file__).resolve().parent / "vectors" / "dcap-qvl"


def _hex_file(path: Path) -> bytes:
    return bytes.fromhex("".join(path.read_text().split()))


def _snp(path: Path) -> SnpReport:
    report = parse_evidence(path.read_bytes() if path.suffix == ".bin" else _hex_file(path))
    assert isinstance(report, SnpReport)
    return report


def _tamper(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


# --- AMD SEV-SNP ------------------------------------------------------------------

GCP_MILAN_V5 = PUBLIC / "teekit-sev-gcp" / "sev-gcp.hex"
GCP_MILAN_VCEK = PUBLIC / "teekit-sev-gcp" / "sev-gcp-vcek.pem"
VIRTEE_MILAN_V2 = PUBLIC / "virtee-sev-milan" / "report_milan.hex"
ROUTEX_GENOA_V2 = PUBLIC / "routex-genoa-v2" / "report.bin"
OAK_GENOA_V2 = PUBLIC / "oak-genoa-v2" / "report.bin"
OAK_GENOA_VCEK = PUBLIC / "oak-genoa-v2" / "vcek.der"
OAK_TURIN_V5 = PUBLIC / "oak-turin-v5" / "report.bin"
OAK_TURIN_VCEK = PUBLIC / "oak-turin-v5" / "vcek.der"


def test_gcp_milan_v5_fields() -> None:
    data = _hex_file(GCP_MILAN_V5)
    assert len(data) == 0x4A0
    assert detect_evidence_type(data) is EvidenceType.SNP
    r = _snp(GCP_MILAN_V5)
    assert r.version == 5
    assert r.policy.raw == 0x30000
    assert r.policy.smt
    assert not r.policy.debug
    assert r.vmpl == 0
    assert r.signature_algo == 1
    assert r.signing_key is SigningKey.VCEK
    assert not r.mask_chip_key
    assert r.platform_info.raw == 0x25
    assert r.platform_info.smt_enabled
    assert r.platform_info.ecc_enabled
    assert r.platform_info.alias_check_complete
    assert not r.platform_info.tsme_enabled
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x01, 0x01)
    assert r.product is SnpProduct.MILAN
    assert r.report_data == bytes(64)
    assert r.measurement.hex() == (
        "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1"
        "b6d19251b8ee600fd16a3708f58406f3"
    )
    assert r.report_id.hex() == "9a0603343e711e1ec9b6b046023da5378e7c4cac6182e35d4f3ebeb46aef6c80"
    assert r.report_id_ma == b"\xff" * 32
    assert r.chip_id.hex().startswith("980cf7b61876cb37fd517cd44ce11c72")
    for tcb in (r.current_tcb, r.reported_tcb, r.committed_tcb, r.launch_tcb):
        assert tcb.raw == 0xDE1B000000000004
        assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc) == (4, 0, 27, 222, None)
    assert str(r.current_version) == str(r.committed_version) == "1.55.35"
    assert (r.launch_mit_vector, r.current_mit_vector) == (11, 11)


def test_gcp_milan_v5_verifies_with_its_vcek() -> None:
    data = _hex_file(GCP_MILAN_V5)
    vcek = GCP_MILAN_VCEK.read_bytes()
    verified = verify_evidence(data, collateral=vcek, at=datetime(2026, 1, 1, tzinfo=UTC))
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    extra = verified.claims.extra
    assert extra["product"] == "Milan"
    assert extra["product_name"] == "Milan-B0"
    assert extra["version"] == 5
    assert extra["signing_key"] == "vcek"
    assert extra["cpuid"] == {"family": 0x19, "model": 1, "stepping": 1}
    assert extra["launch_mit_vector"] == 11
    assert extra["current_mit_vector"] == 11
    assert extra["reported_tcb"]["snp"] == 27
    assert "fmc" not in extra["reported_tcb"]
    assert extra["current_firmware"] == "1.55.35"
    assert verified.claims.debug is False
    # The VCEK was issued 2025-12-05: before that it is not valid.
    with pytest.raises(CertificateChainError):
        verify_evidence(data, collateral=vcek, at=datetime(2025, 12, 1, tzinfo=UTC))
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(data, 0x90), collateral=vcek, at=datetime(2026, 1, 1, tzinfo=UTC))


def test_virtee_milan_v2_fields() -> None:
    r = _snp(VIRTEE_MILAN_V2)
    assert r.version == 2
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (None, None, None)
    assert r.launch_mit_vector is None
    assert r.current_mit_vector is None
    assert r.product is None  # no CPUID in v2: Milan/Genoa layout
    assert r.policy.raw == 0x30000
    assert r.platform_info.raw == 1
    assert r.report_data.hex().startswith("d447b55d197491bfe15cf298f9de9986")
    assert r.measurement.hex() == (
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
        "3e1a0dc39b2c60bd95b9c480cd81841f"
    )
    assert r.report_id.hex() == "92b3b47d59f0a2a10a74c5678868a80238cf593c01a82f3cffb878e904c28d5b"
    assert r.chip_id.hex().startswith("d49554ec717f4e5b0fe6b143bcf0405b")
    t = r.reported_tcb
    assert (t.bootloader, t.tee, t.snp, t.microcode) == (3, 0, 8, 115)
    assert str(r.current_version) == "1.52.4"


def test_routex_genoa_v2_fields() -> None:
    r = _snp(ROUTEX_GENOA_V2)
    assert r.version == 2
    assert r.product is None
    assert r.policy.raw == 0x30000
    assert r.platform_info.raw == 1
    assert r.report_data == bytes(64)
    assert r.measurement.hex() == (
        "eb94937547f1f14613dd835752c81c160a98ca954ce2d25b316cbee45540e8f8"
        "2338b7043ac45e926efd323548beb8cb"
    )
    assert r.report_id.hex() == "8c44966159e86a060c1c8972cb739f6f8d8a7ee493877ea43116b3a0ba687c1e"
    assert r.chip_id.hex().startswith("d932d021261a3010c08aa11c8b5efcfb")
    t = r.reported_tcb
    assert (t.bootloader, t.tee, t.snp, t.microcode) == (7, 0, 14, 68)
    assert str(r.current_version) == str(r.committed_version) == "1.55.21"


def test_oak_genoa_v2_verifies_with_its_vcek() -> None:
    data = OAK_GENOA_V2.read_bytes()
    r = _snp(OAK_GENOA_V2)
    assert r.version == 2
    assert r.cpuid_fam_id is None
    assert r.report_data.hex() == (
        "e8c6c542bb712e5d794d69e55be5cc9a88e60863180384d2233a1449cf3be8cf" + "00" * 32
    )
    assert r.measurement.hex() == (
        "de654ed1eb03b69567338d357f86735c64fc771676bcd5d05ca6afe86f3eb9f7"
        "549222afae6139a8d282a34d09d59f95"
    )
    t = r.reported_tcb
    assert (t.bootloader, t.tee, t.snp, t.microcode) == (7, 0, 15, 62)
    assert str(r.current_version) == "1.55.24"

    vcek = OAK_GENOA_VCEK.read_bytes()
    # This VCEK's RSASSA-PSS parameters carry an explicit trailerField (a3 03 02 01 01).
    assert b"\xa3\x03\x02\x01\x01" in vcek
    at = datetime(2025, 1, 1, tzinfo=UTC)
    verified = verify_evidence(data, collateral=vcek, at=at)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    extra = verified.claims.extra
    assert extra["product"] == "Genoa"
    assert extra["product_name"] == "Genoa"
    assert extra["chip_id"] == r.chip_id.hex()
    assert extra["chip_id_masked"] is False
    assert "cpuid" not in extra
    assert "launch_mit_vector" not in extra
    assert extra["reported_tcb"] == {
        "raw": r.reported_tcb.raw,
        "bootloader": 7,
        "tee": 0,
        "snp": 15,
        "microcode": 62,
    }
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(data, 0x50), collateral=vcek, at=at)
    with pytest.raises(CertificateChainError):
        verify_evidence(data, collateral=vcek, at=datetime(2031, 7, 1, tzinfo=UTC))


def test_oak_turin_v5_fields() -> None:
    r = _snp(OAK_TURIN_V5)
    assert r.version == 5
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x1A, 0x02, 0x01)
    assert r.product is SnpProduct.TURIN
    assert r.platform_info.raw == 0x67
    assert r.platform_info.tsme_enabled
    assert r.platform_info.alias_check_complete
    assert r.report_data.hex() == (
        "e0fd0bdb6aa4030a6ddea9073e1fcec5be6c782a2c8075a0825dfb3d9a81b924" + "00" * 32
    )
    assert r.measurement.hex() == (
        "f924dd18f168df60fbea937f0b086284d51b1b376de872bac43694f61134d579"
        "67c318018de7335503023dbb50dee624"
    )
    # Turin CHIP_ID: 8 bytes, the rest zero.
    assert r.chip_id == bytes.fromhex("3b42092f69c656d3") + bytes(56)
    for tcb in (r.current_tcb, r.reported_tcb, r.committed_tcb, r.launch_tcb):
        assert (tcb.fmc, tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == (0, 1, 0, 2, 71)
    assert str(r.current_version) == "1.55.61"
    assert (r.launch_mit_vector, r.current_mit_vector) == (0, 0)
    # Decoding the same TCB in the Milan/Genoa layout would read other bytes.
    other = parse_snp_report(OAK_TURIN_V5.read_bytes(), product=SnpProduct.GENOA)
    assert (other.reported_tcb.bootloader, other.reported_tcb.snp) == (0, 0)


def test_oak_turin_v5_verifies_with_its_vcek() -> None:
    data = OAK_TURIN_V5.read_bytes()
    vcek = OAK_TURIN_VCEK.read_bytes()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    verified = verify_evidence(data, collateral=vcek, at=at)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    extra = verified.claims.extra
    assert extra["product"] == "Turin"
    assert extra["product_name"] == "Turin"
    assert extra["reported_tcb"]["fmc"] == 0
    assert extra["reported_tcb"]["microcode"] == 71
    assert extra["cpuid"] == {"family": 0x1A, "model": 2, "stepping": 1}
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(data, 0x90), collateral=vcek, at=at)
    # A Genoa VCEK cannot endorse the Turin report.
    with pytest.raises((CollateralError, EvidenceSignatureError)):
        verify_evidence(data, collateral=OAK_GENOA_VCEK.read_bytes(), at=at)


def test_snp_describe_is_json_ready() -> None:
    described = describe_evidence(OAK_TURIN_V5.read_bytes())
    assert described["evidence_type"] == "sev-snp"
    fields = described["fields"]
    assert isinstance(fields, dict)
    assert fields["version"] == 5
    assert fields["product"] == "Turin"
    assert fields["reported_tcb"]["fmc"] == 0
    assert fields["chip_id"] == "3b42092f69c656d3" + "00" * 56


# --- Intel TDX ------------------------------------------------------------------

ALIBABA_TDX_V5 = PUBLIC / "automata-alibaba-tdx-v5" / "quote.hex"
DCAP_QVL_90C06F = DCAP_QVL / "tdx_quote_outdated_collateral.json"


def _raw_sig(sig: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def _alibaba() -> tuple[bytes, Quote]:
    raw = _hex_file(ALIBABA_TDX_V5)
    quote = parse_evidence(raw)
    assert isinstance(quote, Quote)
    return raw, quote


def test_alibaba_tdx_v5_layout() -> None:
    raw, q = _alibaba()
    assert len(raw) == 5006
    assert q.size == 5006
    assert detect_evidence_type(raw) is EvidenceType.TDX
    assert q.version == 5
    assert q.header.att_key_type == 2
    assert q.header.tee_type == 0x81
    assert q.header.user_data.hex() == "da2c7e326c5696889a6a6ab4f8a64b1700000000"
    assert q.body_type == BODY_TYPE_TD15
    body = q.body
    assert isinstance(body, TdReport15)
    assert body.tee_tcb_svn.hex() == "05010200000000000000000000000000"
    assert body.tee_tcb_svn2 == body.tee_tcb_svn
    assert body.tdx_module_version == 1
    assert body.td_attributes.hex() == "0000001000000000"
    assert not body.debug
    assert body.xfam.hex() == "e742060000000000"
    assert body.mr_seam.hex().startswith("1cc6a17ab799e9a693fac7536be61c12")
    assert body.mr_td.hex() == (
        "157768a71a6a31f5561978c4cde665809d22976ef5dead2952839b7b3ea23b6c"
        "2931c9148fe1d117c99faefac18bb73b"
    )
    assert body.rtmrs[3] == bytes(48)
    assert body.rtmrs[0].hex().startswith("cdf337cef3d59099")
    assert body.report_data.hex().startswith("83ded8a0ee745596dbd961624da760cf")
    # A migration/service TD is bound to this TD: MR_SERVICETD is not zero.
    assert body.mr_servicetd.hex().startswith("383c87d3bbb047b2d171eaca95312ede")
    # The signed bytes are header + body descriptor + the 648-byte body.
    assert q.signed_bytes == raw[: 48 + 6 + 648]

    sd = q.signature_data
    assert sd.certification_data.cert_type == CERT_TYPE_QE_REPORT
    assert sd.pck_certification_data.cert_type == CERT_TYPE_PCK_CERT_CHAIN
    assert sd.qe_auth_data == bytes(range(32))  # a non-empty QE authentication data
    assert sd.qe_report.isv_svn == 6
    assert sd.pck_certification_data.data.endswith(b"-----END CERTIFICATE-----\n\x00")


def test_alibaba_tdx_v5_signatures_check_independently() -> None:
    # Every signature inside the quote, checked with pyca/cryptography alone: the bytes
    # are exactly what the platform produced.
    _, q = _alibaba()
    sd = q.signature_data
    certs = x509.load_pem_x509_certificates(sd.pck_certification_data.data)
    assert len(certs) == 3
    for child, parent in zip(certs, [*certs[1:], certs[-1]], strict=True):
        child.verify_directly_issued_by(parent)
    pck_key = certs[0].public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    pck_key.verify(_raw_sig(sd.qe_report_signature), sd.qe_report.raw, ec.ECDSA(hashes.SHA256()))
    digest = hashlib.sha256(sd.attestation_key + sd.qe_auth_data).digest()
    assert sd.qe_report.report_data[:32] == digest
    att_key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + sd.attestation_key
    )
    att_key.verify(_raw_sig(sd.signature), q.signed_bytes, ec.ECDSA(hashes.SHA256()))

    ext = parse_pck_extension(
        certs[0]
        .extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
        .value.value  # type: ignore[attr-defined]
    )
    assert ext.fmspc.hex() == "90c06f000000"
    assert ext.pce_id == b"\x00\x00"
    assert ext.pce_svn == 13
    assert ext.tcb_components == (2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)


def test_alibaba_tdx_v5_against_intel_collateral_for_its_fmspc() -> None:
    # dcap-qvl's collateral for FMSPC 90C06F000000 (Intel-signed TCB info, QE identity
    # and CRLs) also covers this platform. Its SGX components match the second TCB
    # level (OutOfDate, 2024-03-13) and its TDX module (TDX_01, SVN 5) the OutOfDate
    # level with isvsvn 4.
    raw, _ = _alibaba()
    at = datetime(2026, 3, 5, 10, 50, 3, tzinfo=UTC)
    verified = verify_evidence(raw, collateral=DCAP_QVL_90C06F.read_bytes(), at=at)
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.advisory_ids == (
        "INTEL-SA-01036",
        "INTEL-SA-01079",
        "INTEL-SA-01099",
        "INTEL-SA-01103",
        "INTEL-SA-01111",
    )
    extra = verified.claims.extra
    assert extra["qe_tcb_status"] == "UpToDate"
    assert extra["platform_tcb_status"] == "OutOfDate"
    assert extra["td_relaunch_advised"] is False
    assert extra["tcb_date"] == "2024-03-13T00:00:00Z"
    assert extra["fmspc"] == "90c06f000000"
    assert verified.claims.extra["mr_servicetd"].startswith("383c87d3")
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(raw, 48 + 6 + 136), collateral=DCAP_QVL_90C06F.read_bytes(), at=at)


def test_alibaba_tdx_v5_parse_quote_matches_parse_evidence() -> None:
    raw, q = _alibaba()
    again = parse_quote(raw + bytes(70))  # trailing bytes are ignored
    assert again.size == q.size
    assert again.signed_bytes == q.signed_bytes


# --- Intel SGX v3 and TDX v4 from Platform-CA platforms, with Intel collateral ------------

ATA_SGX_V3 = PUBLIC / "ata-sgx-v3-platform-ca"
ATA_TDX_V4 = PUBLIC / "ata-tdx-v4-platform-ca"
# The origin's frozen verification time (1789139978).
ATA_AT = datetime(2026, 9, 11, 15, 19, 38, tzinfo=UTC)


def _quote_from(folder: Path) -> tuple[bytes, Quote]:
    raw = _hex_file(folder / "quote.hex")
    quote = parse_evidence(raw)
    assert isinstance(quote, Quote)
    return raw, quote


def _pck_certs(q: Quote) -> list[x509.Certificate]:
    sd = q.signature_data
    chain = sd.pck_certification_data if q.version >= 4 else sd.certification_data
    assert chain.cert_type == CERT_TYPE_PCK_CERT_CHAIN
    return x509.load_pem_x509_certificates(chain.data)


def _pck_ext(cert: x509.Certificate) -> PckExtension:
    return parse_pck_extension(
        cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value.value  # type: ignore[attr-defined]
    )


@dataclass(frozen=True)
class SgxV3Layout:
    """What a published SGX quote v3 holds, field by field (from its MANIFEST.md)."""

    sha256: str
    qe_svn: int
    pce_svn: int
    user_data: str
    cpusvn: str
    mrenclave: str
    mrsigner: str
    report_data: bytes
    qe_isv_svn: int
    pck_tcb: tuple[int, ...]


def _check_sgx_v3_layout(folder: Path, want: SgxV3Layout) -> Quote:
    raw, q = _quote_from(folder)
    assert len(raw) == q.size == 4734
    assert hashlib.sha256(raw).hexdigest() == want.sha256
    assert detect_evidence_type(raw) is EvidenceType.SGX
    h = q.header
    assert (q.version, h.att_key_type, h.tee_type) == (3, 2, 0)
    assert (h.qe_svn, h.pce_svn) == (want.qe_svn, want.pce_svn)
    assert h.user_data.hex() == want.user_data
    body = q.body
    assert isinstance(body, SgxReportBody)
    assert body.cpusvn.hex() == want.cpusvn
    assert body.attributes.hex() == "0500000000000000e700000000000000"
    assert body.mrenclave.hex() == want.mrenclave
    assert body.mrsigner.hex() == want.mrsigner
    assert (body.isv_prod_id, body.isv_svn) == (0, 0)
    assert body.report_data == want.report_data
    assert q.signed_bytes == raw[: 48 + 384]
    sd = q.signature_data
    assert sd.certification_data.cert_type == CERT_TYPE_PCK_CERT_CHAIN
    assert sd.certification_data.data.endswith(b"-----END CERTIFICATE-----\n\x00")
    assert sd.qe_auth_data == bytes(range(32))
    assert (sd.qe_report.isv_prod_id, sd.qe_report.isv_svn) == (1, want.qe_isv_svn)
    certs = _pck_certs(q)
    assert [c.subject.rfc4514_string().split("CN=")[1] for c in certs] == [
        "Intel SGX PCK Certificate",
        "Intel SGX PCK Platform CA",
        "Intel SGX Root CA",
    ]
    ext = _pck_ext(certs[0])
    assert ext.fmspc.hex() == "00606a000000"
    assert ext.pce_svn == 13
    assert ext.tcb_components == want.pck_tcb
    assert ext.sgx_type == 1  # Scalable
    assert (ext.dynamic_platform, ext.cached_keys, ext.smt_enabled) == (True, False, False)
    return q


def test_ata_sgx_v3_layout() -> None:
    q = _check_sgx_v3_layout(
        ATA_SGX_V3,
        SgxV3Layout(
            sha256="93aeaad2128ee866149de0491f4857ebc90e9336adec003919e4f47f3289b550",
            qe_svn=11,
            pce_svn=16,
            user_data="958a27bd734d30d998a46126252f61f500000000",
            cpusvn="10101110ffff01000000000000000000",
            mrenclave="6b2fb25e0084ad6ecbf6cfcefe09e2fa0fca2b84092f72c01f8fe98e9d7db5cd",
            mrsigner="334d8d7c1be636f4a2811c97bb31cb25419acf287f8acd548e1e2adc30b2c7f9",
            report_data=bytes.fromhex(
                "c28cac196a6a0a3456bfcc15bbc34abacf72bd27b576f206dac4217c135553bf"
            )
            + bytes(32),
            qe_isv_svn=11,
            pck_tcb=(16, 16, 3, 3, 255, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        ),
    )
    # A Platform-CA PCK certificate carries the platform instance ID and configuration.
    ext = _pck_ext(_pck_certs(q)[0])
    assert ext.platform_instance_id is not None
    assert ext.platform_instance_id.hex() == "9cd2ff73db174b44746e3f2b6abf79d9"


def test_ata_sgx_v3_verdict_with_intel_collateral() -> None:
    raw, _ = _quote_from(ATA_SGX_V3)
    collateral = (ATA_SGX_V3 / "collateral.json").read_bytes()
    verified = verify_evidence(raw, collateral=collateral, at=ATA_AT)
    assert verified.tcb_status is TcbStatus.SW_HARDENING_NEEDED
    assert verified.advisory_ids == ("INTEL-SA-00615",)
    extra = verified.claims.extra
    assert extra["quote_version"] == 3
    assert extra["fmspc"] == "00606a000000"
    assert extra["pce_svn"] == 13
    assert extra["cpusvn"] == "10100303ffff01000000000000000000"
    assert extra["sgx_type"] == "Scalable"
    assert extra["qe_svn"] == 11
    assert extra["qe_tcb_status"] == "UpToDate"
    assert extra["platform_tcb_status"] == "SWHardeningNeeded"
    assert extra["tcb_date"] == "2025-08-13T00:00:00Z"
    assert extra["tcb_evaluation_data_number"] == 20
    assert verified.claims.debug is False
    assert verified.collateral_issued == datetime(2026, 9, 10, 13, 56, 26, tzinfo=UTC)
    assert verified.collateral_expires == datetime(2026, 10, 10, 13, 56, 26, tzinfo=UTC)
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(raw, 48 + 64), collateral=collateral, at=ATA_AT)
    # After the PCK CRL's nextUpdate the collateral is stale.
    with pytest.raises(CollateralExpiredError):
        verify_evidence(raw, collateral=collateral, at=datetime(2026, 10, 11, tzinfo=UTC))


def test_ata_tdx_v4_layout() -> None:
    raw, q = _quote_from(ATA_TDX_V4)
    assert len(raw) == q.size == 4935
    assert hashlib.sha256(raw).hexdigest() == (
        "4538f18e97ebc66dcec1a00c5e5d942784a5e8ca507221b090d128a4081f8dc8"
    )
    assert detect_evidence_type(raw) is EvidenceType.TDX
    assert (q.version, q.header.tee_type, q.header.att_key_type) == (4, 0x81, 2)
    assert q.header.user_data == bytes(20)
    body = q.body
    assert not isinstance(body, TdReport15)
    assert body.tee_tcb_svn.hex() == "0f010a00000000000000000000000000"
    assert body.tdx_module_version == 1
    assert body.mr_seam.hex().startswith("ab62561a173acbd18ee50ff37750db44")
    assert body.mr_signer_seam == bytes(48)
    assert body.td_attributes.hex() == "0000001000000000"
    assert not body.debug
    assert body.xfam.hex() == "e702060000000000"
    assert body.mr_td.hex() == (
        "c1ee9c16e3afc506cfe042c5b846a368528f3b37618eafb27469bc114cf914e9"
        "222c91618470e7f2b28ac360968270a5"
    )
    assert body.mr_config_id == bytes(48)
    assert body.mr_owner.hex().startswith("0d54cd0bfbf78c00d8fb827052cbd94b")
    assert body.mr_owner_config == bytes(48)
    assert [r.hex()[:16] for r in body.rtmrs] == [
        "995eeda4ddf8499f",
        "4c40f4f67311bdaf",
        "d94af65abf90ea31",
        "77396dcda5b1dc14",
    ]
    assert body.report_data == bytes(64)
    assert q.signed_bytes == raw[: 48 + 584]
    sd = q.signature_data
    assert sd.certification_data.cert_type == CERT_TYPE_QE_REPORT
    assert sd.qe_auth_data == bytes(32)
    assert (sd.qe_report.isv_prod_id, sd.qe_report.isv_svn) == (2, 6)
    # No NUL after the PEM chain here (the SGX quote above has one).
    assert sd.pck_certification_data.data.endswith(b"-----END CERTIFICATE-----\n")
    ext = _pck_ext(_pck_certs(q)[0])
    assert ext.fmspc.hex() == "00806f050000"
    assert ext.pce_svn == 11
    assert ext.tcb_components == (9, 9, 2, 2, 4, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0)
    assert (ext.dynamic_platform, ext.cached_keys, ext.smt_enabled) == (True, False, True)
    # The padded original (3065 zero bytes after the quote) parses to the same quote.
    again = parse_quote(raw + bytes(3065))
    assert again.size == 4935
    assert again.signed_bytes == q.signed_bytes


def test_ata_tdx_v4_verdict_with_intel_collateral() -> None:
    raw, _ = _quote_from(ATA_TDX_V4)
    collateral = (ATA_TDX_V4 / "collateral.json").read_bytes()
    verified = verify_evidence(raw, collateral=collateral, at=ATA_AT)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.advisory_ids == ()
    extra = verified.claims.extra
    assert extra["quote_version"] == 4
    assert extra["fmspc"] == "00806f050000"
    assert extra["qe_svn"] == 6
    assert extra["qe_tcb_status"] == "UpToDate"
    assert extra["platform_tcb_status"] == "UpToDate"
    assert extra["tcb_date"] == "2025-08-13T00:00:00Z"
    assert extra["tee_tcb_svn"] == "0f010a00000000000000000000000000"
    assert "mr_servicetd" not in extra
    assert verified.claims.debug is False
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(raw, 48 + 136), collateral=collateral, at=ATA_AT)
    # An SGX collateral set (QE identity "QE", SGX TCB info) does not fit a TDX quote.
    with pytest.raises(CollateralError):
        verify_evidence(raw, collateral=(ATA_SGX_V3 / "collateral.json").read_bytes(), at=ATA_AT)


# --- AMD SEV-SNP report v3 (Azure Genoa) ---------------------------------------------

AZURE_GENOA_V3 = PUBLIC / "trustee-azure-genoa-v3" / "report.bin"
AZURE_GENOA_VCEK = PUBLIC / "trustee-azure-genoa-v3" / "vcek-genoa.pem"


def test_azure_genoa_v3_fields() -> None:
    r = _snp(AZURE_GENOA_V3)
    assert r.version == 3
    assert r.guest_svn == 0x1000B
    assert r.policy.raw == 0x3001F
    assert (r.policy.abi_minor, r.policy.abi_major) == (31, 0)
    assert r.policy.smt
    assert not r.policy.debug
    assert r.family_id.hex() == "01232000" + "00" * 12
    assert r.image_id.hex() == "02" + "00" * 15
    assert r.platform_info.raw == 0x24
    assert not r.platform_info.smt_enabled
    assert r.platform_info.ecc_enabled
    assert r.platform_info.alias_check_complete
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x11, 0x01)
    assert r.product is SnpProduct.GENOA
    assert r.launch_mit_vector is None  # version 3: no mitigation vectors
    assert r.report_data.hex() == (
        "b581f12e29a2d7d64e5e0b738d563879a78b51c644d0fa0cce02b48699f6bf5f" + "00" * 32
    )
    assert r.measurement.hex() == (
        "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3"
        "706faf814c9e61065768a6ff917c89ae"
    )
    assert r.id_key_digest.hex().startswith("942fd93ebde6ea7a96efadeafc60f1c6")
    assert r.author_key_digest == bytes(48)
    assert r.report_id.hex() == "8c678f0cba548b25bc8ed1f723231570447886c74b1fa1f7eb23699755cb4801"
    assert r.chip_id.hex().startswith("0506ffba875e939c2729d20c74eb72b4")
    for tcb in (r.current_tcb, r.reported_tcb, r.committed_tcb, r.launch_tcb):
        assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc) == (10, 0, 23, 84, None)
    assert str(r.current_version) == str(r.committed_version) == "1.55.40"


def test_azure_genoa_v3_verifies_with_its_vcek() -> None:
    data = AZURE_GENOA_V3.read_bytes()
    vcek = AZURE_GENOA_VCEK.read_bytes()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    verified = verify_evidence(data, collateral=vcek, at=at)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    extra = verified.claims.extra
    assert extra["product"] == "Genoa"
    assert extra["version"] == 3
    assert extra["cpuid"] == {"family": 0x19, "model": 0x11, "stepping": 1}
    assert "launch_mit_vector" not in extra
    assert extra["guest_svn"] == 0x1000B
    assert extra["reported_tcb"]["snp"] == 23
    assert extra["current_firmware"] == "1.55.40"
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(data, 0x50), collateral=vcek, at=at)
    with pytest.raises(CertificateChainError):
        verify_evidence(data, collateral=vcek, at=datetime(2025, 1, 1, tzinfo=UTC))
    # Another Genoa chip's VCEK does not endorse this report.
    with pytest.raises((CollateralError, EvidenceSignatureError)):
        verify_evidence(data, collateral=OAK_GENOA_VCEK.read_bytes(), at=at)


# --- Intel TDX 1.5 quote v5 that verifies (go-tdx-guest sample) ----------------------

GOTDX_V5 = PUBLIC / "gotdx-v5-90c06f"
# The origin's frozen verification time (1789052566).
GOTDX_AT = datetime(2026, 9, 10, 15, 2, 46, tzinfo=UTC)


def test_gotdx_v5_layout() -> None:
    raw, q = _quote_from(GOTDX_V5)
    assert len(raw) == q.size == 5006
    # The SHA-256 the origin publishes for go-tdx-guest's quote_sample_v5.dat.
    assert hashlib.sha256(raw).hexdigest() == (
        "cf77a6e91e48291d5d338c5f3b5d0674225a4d13e7d83ff5e537a4914bf22e1d"
    )
    assert detect_evidence_type(raw) is EvidenceType.TDX
    assert (q.version, q.header.att_key_type, q.header.tee_type) == (5, 2, 0x81)
    assert q.header.user_data.hex() == "ba103c0e5dffa40351f9d5dd559888eb00000000"
    assert q.body_type == BODY_TYPE_TD15
    body = q.body
    assert isinstance(body, TdReport15)
    assert body.tee_tcb_svn.hex() == "0b010400000000000000000000000000"
    # The module loaded now (TEE_TCB_SVN2, SVN 13) is newer than the one the TD runs on.
    assert body.tee_tcb_svn2.hex() == "0d010400000000000000000000000000"
    assert body.tdx_module_version == 1
    assert body.mr_seam.hex().startswith("7bf063280e94fb051f5dd7b1fc59ce9a")
    assert body.mr_signer_seam == bytes(48)
    assert body.td_attributes.hex() == "0000001000000000"
    assert body.xfam.hex() == "e702060000000000"
    assert body.mr_td.hex() == (
        "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb0"
        "01a1ced3ee19747dda8f750c3bc8f876"
    )
    assert body.mr_config_id == body.mr_owner == body.mr_owner_config == bytes(48)
    assert [r.hex()[:16] for r in body.rtmrs] == [
        "5c8daf76063a71ac",
        "463acaace1b6e97c",
        "6369b9c9a3b791eb",
        "0000000000000000",
    ]
    assert body.report_data.hex().startswith("945eaacf5abc1f719d8666a942fda03d")
    assert body.mr_servicetd == bytes(48)
    assert q.signed_bytes == raw[: 48 + 6 + 648]
    sd = q.signature_data
    assert sd.certification_data.cert_type == CERT_TYPE_QE_REPORT
    assert sd.qe_auth_data == bytes(range(32))
    assert (sd.qe_report.isv_prod_id, sd.qe_report.isv_svn) == (2, 7)
    assert sd.pck_certification_data.data.endswith(b"-----END CERTIFICATE-----\n\x00")
    certs = _pck_certs(q)
    ext = _pck_ext(certs[0])
    assert ext.fmspc.hex() == "90c06f000000"
    assert ext.pce_svn == 13
    assert ext.tcb_components == (4, 4, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.ppid.hex() == "2734b654f553596897eaadfb5667a954"
    # Every signature inside the quote checks with pyca/cryptography alone.
    certs[0].verify_directly_issued_by(certs[1])
    pck_key = certs[0].public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    pck_key.verify(_raw_sig(sd.qe_report_signature), sd.qe_report.raw, ec.ECDSA(hashes.SHA256()))
    assert (
        sd.qe_report.report_data[:32]
        == hashlib.sha256(sd.attestation_key + sd.qe_auth_data).digest()
    )
    att_key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + sd.attestation_key
    )
    att_key.verify(_raw_sig(sd.signature), q.signed_bytes, ec.ECDSA(hashes.SHA256()))


def test_gotdx_v5_verifies_up_to_date() -> None:
    # Platform level 1 (4,4,2,2,4,1,0,5 / PCESVN 13 / TDX microcode 4, UpToDate), module
    # TDX_01 SVN 11 (UpToDate level), TD_QE ISVSVN 7 >= 4: UpToDate, no advisories. The
    # origin's frozen journal records status 0 (OK) for this input.
    raw, _ = _quote_from(GOTDX_V5)
    collateral = (GOTDX_V5 / "collateral.json").read_bytes()
    verified = verify_evidence(raw, collateral=collateral, at=GOTDX_AT)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.advisory_ids == ()
    extra = verified.claims.extra
    assert extra["quote_version"] == 5
    assert extra["fmspc"] == "90c06f000000"
    assert extra["pce_svn"] == 13
    assert extra["cpusvn"] == "04040202040100050000000000000000"
    assert extra["qe_svn"] == 7
    assert extra["qe_tcb_status"] == "UpToDate"
    assert extra["platform_tcb_status"] == "UpToDate"
    assert extra["tcb_date"] == "2025-08-13T00:00:00Z"
    assert extra["tcb_evaluation_data_number"] == 20
    assert extra["tee_tcb_svn2"] == "0d010400000000000000000000000000"
    assert extra["td_relaunch_advised"] is False
    assert extra["mr_servicetd"] == "00" * 48
    assert verified.claims.debug is False
    assert verified.collateral_issued == datetime(2026, 9, 10, 13, 56, 26, tzinfo=UTC)
    assert verified.collateral_expires == datetime(2026, 10, 10, 13, 56, 26, tzinfo=UTC)
    described = describe_evidence(raw)
    assert described["evidence_type"] == "tdx-dcap"
    fields = described["fields"]
    assert isinstance(fields, dict)
    assert fields["body_type"] == 3
    assert fields["body"]["tee_tcb_svn2"] == "0d010400000000000000000000000000"
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(raw, 48 + 6 + 200), collateral=collateral, at=GOTDX_AT)
    # Before the TCB info's issueDate (2026-09-10T14:43:57Z) the collateral is not valid yet.
    with pytest.raises(CollateralExpiredError):
        verify_evidence(raw, collateral=collateral, at=datetime(2026, 9, 10, 14, 40, tzinfo=UTC))


def test_gotdx_v5_against_older_collateral_for_its_fmspc() -> None:
    # dcap-qvl's evaluation-18 collateral for the same FMSPC also covers this quote: its
    # newest platform level (2024-11-13) already matches this platform.
    raw, _ = _quote_from(GOTDX_V5)
    at = datetime(2026, 3, 5, 10, 50, 3, tzinfo=UTC)
    verified = verify_evidence(raw, collateral=DCAP_QVL_90C06F.read_bytes(), at=at)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.claims.extra["tcb_date"] == "2024-11-13T00:00:00Z"
    assert verified.claims.extra["tcb_evaluation_data_number"] == 18


# --- Intel SGX quote v3 with QE SVN 9 (automata rust-crates sample) ------------------

ATA_SGX_V3_QE9 = PUBLIC / "ata-sgx-v3-qesvn9"
# The origin's frozen verification time (1755236700).
ATA_V3_AT = datetime(2025, 8, 15, 5, 45, tzinfo=UTC)


def test_ata_sgx_v3_qesvn9_layout() -> None:
    _check_sgx_v3_layout(
        ATA_SGX_V3_QE9,
        SgxV3Layout(
            sha256="c81a90ee23bbc132b4073fe78ad2a58bac8a538a56e4b97b4557216353a0e511",
            qe_svn=9,
            pce_svn=14,
            user_data="f28dda234595e56eaeb7ce9b681a62cd00000000",
            cpusvn="0e0e100fffff01000000000000000000",
            mrenclave="a4f45c39dac622cb1dd32ddb35a52ec92db41d0fa88a1c911c49e59c534f61cd",
            mrsigner="8f2dbc0f9c5d3378d596974b2deed1f93223cc49242899f83809bcc92546132c",
            report_data=bytes(64),
            qe_isv_svn=9,
            pck_tcb=(14, 14, 3, 3, 255, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        ),
    )


def test_ata_sgx_v3_qesvn9_verdict_at_origin_time() -> None:
    # Evaluation-17 collateral: the PCK TCB matches the first level (2024-03-13,
    # SWHardeningNeeded); QE ISVSVN 9 >= 8 is UpToDate. The origin's frozen journal records
    # status 1 (SW_HARDENING_NEEDED) and advisory INTEL-SA-00615.
    raw, _ = _quote_from(ATA_SGX_V3_QE9)
    collateral = (ATA_SGX_V3_QE9 / "collateral.json").read_bytes()
    verified = verify_evidence(raw, collateral=collateral, at=ATA_V3_AT)
    assert verified.tcb_status is TcbStatus.SW_HARDENING_NEEDED
    assert verified.advisory_ids == ("INTEL-SA-00615",)
    extra = verified.claims.extra
    assert extra["qe_svn"] == 9
    assert extra["qe_tcb_status"] == "UpToDate"
    assert extra["tcb_date"] == "2024-03-13T00:00:00Z"
    assert extra["tcb_evaluation_data_number"] == 17
    assert extra["cpusvn"] == "0e0e0303ffff01000000000000000000"
    assert verified.collateral_issued == datetime(2025, 8, 15, 4, 36, 46, tzinfo=UTC)
    assert verified.collateral_expires == datetime(2025, 9, 14, 4, 36, 46, tzinfo=UTC)
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(raw, 48 + 64), collateral=collateral, at=ATA_V3_AT)


def test_ata_sgx_v3_qesvn9_with_newer_collateral() -> None:
    # Evaluation 20 (2026-09) moved the same platform down: its TCB now first matches the
    # 2024-03-13 OutOfDate level.
    raw, _ = _quote_from(ATA_SGX_V3_QE9)
    collateral = (ATA_SGX_V3 / "collateral.json").read_bytes()
    verified = verify_evidence(raw, collateral=collateral, at=ATA_AT)
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.advisory_ids == (
        "INTEL-SA-01079",
        "INTEL-SA-01103",
        "INTEL-SA-00657",
        "INTEL-SA-00767",
        "INTEL-SA-01153",
        "INTEL-SA-00615",
    )
    assert verified.claims.extra["tcb_evaluation_data_number"] == 20


# --- Intel TDX quote v4 with evaluation-17 collateral (OutOfDate) ---------------------

ATA_TDX_V4_EVAL17 = PUBLIC / "ata-tdx-v4-eval17"
# The origin's frozen verification time (1749095100).
ATA_V4_AT = datetime(2025, 6, 5, 3, 45, tzinfo=UTC)


def test_ata_tdx_v4_eval17_layout() -> None:
    raw, q = _quote_from(ATA_TDX_V4_EVAL17)
    assert len(raw) == q.size == 4935
    assert hashlib.sha256(raw).hexdigest() == (
        "4b23198ac8852da84d997a0722f30b93c9b9b95527431e2c0e430b175640c2fa"
    )
    assert (q.version, q.header.tee_type) == (4, 0x81)
    assert q.header.user_data == bytes(20)
    body = q.body
    assert not isinstance(body, TdReport15)
    assert body.tee_tcb_svn.hex() == "04010700000000000000000000000000"
    assert body.mr_seam.hex().startswith("ffc97a88587660fb04e1f7c851300c96")
    assert body.xfam.hex() == "e700060000000000"
    assert body.mr_td.hex() == (
        "935be7742dd89c6a4df6dba8353d89041ae0f052beef993b1e7f4524d3bc5765"
        "0df20e5582158352e1240b3f1fed55d8"
    )
    assert all(r == bytes(48) for r in body.rtmrs)
    assert body.report_data == bytes(64)
    sd = q.signature_data
    assert (sd.qe_report.isv_prod_id, sd.qe_report.isv_svn) == (2, 6)
    assert sd.qe_auth_data == bytes(32)
    ext = _pck_ext(_pck_certs(q)[0])
    assert ext.fmspc.hex() == "00806f050000"
    assert ext.pce_svn == 11
    assert ext.tcb_components == (6, 6, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)


def test_ata_tdx_v4_eval17_verdict_at_origin_time() -> None:
    # The origin's frozen journal: status 4 (OutOfDate) with three advisories.
    raw, _ = _quote_from(ATA_TDX_V4_EVAL17)
    collateral = (ATA_TDX_V4_EVAL17 / "collateral.json").read_bytes()
    verified = verify_evidence(raw, collateral=collateral, at=ATA_V4_AT)
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.advisory_ids == ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")
    extra = verified.claims.extra
    assert extra["platform_tcb_status"] == "OutOfDate"
    assert extra["qe_tcb_status"] == "UpToDate"
    assert extra["tcb_date"] == "2023-08-09T00:00:00Z"
    assert extra["tcb_evaluation_data_number"] == 17
    assert extra["qe_svn"] == 6
    assert verified.collateral_issued == datetime(2025, 6, 4, 9, 19, 31, tzinfo=UTC)
    assert verified.collateral_expires == datetime(2025, 7, 4, 9, 19, 31, tzinfo=UTC)
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(raw, 48 + 200), collateral=collateral, at=ATA_V4_AT)
    # After the PCK CRL's nextUpdate the collateral is stale.
    with pytest.raises(CollateralExpiredError):
        verify_evidence(raw, collateral=collateral, at=datetime(2025, 7, 5, tzinfo=UTC))


def test_ata_tdx_v4_eval17_with_evaluation_20() -> None:
    # The same platform against the evaluation-20 TCB info of ../ata-tdx-v4-platform-ca:
    # the platform still matches the 2023-08-09 level (now with more advisories) and module
    # TDX_01 SVN 4 an OutOfDate module level; the advisories are the union, platform first.
    raw, _ = _quote_from(ATA_TDX_V4_EVAL17)
    collateral = (ATA_TDX_V4 / "collateral.json").read_bytes()
    verified = verify_evidence(raw, collateral=collateral, at=ATA_AT)
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.claims.extra["tcb_date"] == "2023-08-09T00:00:00Z"
    assert verified.advisory_ids[:3] == ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")
    assert "INTEL-SA-01312" in verified.advisory_ids
    assert len(set(verified.advisory_ids)) == len(verified.advisory_ids) == 14


# --- Intel TDX quote v4 from Project Oak (decoded from protobuf text) -----------------

OAK_TDX_V4 = PUBLIC / "oak-tdx-v4"


def test_oak_tdx_v4_layout_and_signatures() -> None:
    raw, q = _quote_from(OAK_TDX_V4)
    assert len(raw) == q.size == 4935
    assert hashlib.sha256(raw).hexdigest() == (
        "c39a3a2526daa408c849de157d77c42be9d58eff1e6c4c62d033a7a509002f17"
    )
    assert (q.version, q.header.tee_type) == (4, 0x81)
    body = q.body
    assert not isinstance(body, TdReport15)
    assert body.tee_tcb_svn.hex() == "08010800000000000000000000000000"
    assert body.mr_seam.hex().startswith("bfb360ac8e6233a1bca1433caf7382d9")
    assert body.td_attributes.hex() == "0000001000000000"
    assert body.xfam.hex() == "e700000000000000"
    assert body.mr_td.hex() == (
        "7b5ee9a304d036f963dbd194c329cb2524817ee91bcf1cff23efe88a25af827c"
        "11e04cbf264ae401e5b17fc2e18736be"
    )
    assert body.rtmrs[0] == body.rtmrs[1] == body.rtmrs[3] == bytes(48)
    assert body.rtmrs[2].hex().startswith("3b5936af913e65c22eb7e9cf8a1460f0")
    assert body.report_data == bytes(64)
    sd = q.signature_data
    assert (sd.qe_report.isv_prod_id, sd.qe_report.isv_svn) == (2, 6)
    assert sd.qe_auth_data == bytes(32)
    certs = _pck_certs(q)
    certs[0].verify_directly_issued_by(certs[1])
    pck_key = certs[0].public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    pck_key.verify(_raw_sig(sd.qe_report_signature), sd.qe_report.raw, ec.ECDSA(hashes.SHA256()))
    att_key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + sd.attestation_key
    )
    att_key.verify(_raw_sig(sd.signature), q.signed_bytes, ec.ECDSA(hashes.SHA256()))
    ext = _pck_ext(certs[0])
    assert ext.fmspc.hex() == "00806f050000"
    assert ext.pce_svn == 11
    assert ext.tcb_components == (8, 8, 2, 2, 4, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0)
    # The origin's buffer continues with zero bytes after the quote: same parse.
    assert parse_quote(raw + bytes(3065)).signed_bytes == q.signed_bytes


def test_oak_tdx_v4_verdicts_with_collateral_for_its_fmspc() -> None:
    raw, _ = _quote_from(OAK_TDX_V4)
    verified = verify_evidence(
        raw, collateral=(ATA_TDX_V4 / "collateral.json").read_bytes(), at=ATA_AT
    )
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.advisory_ids == (
        "INTEL-SA-01192",
        "INTEL-SA-01245",
        "INTEL-SA-01312",
        "INTEL-SA-01313",
    )
    extra = verified.claims.extra
    assert extra["platform_tcb_status"] == "OutOfDate"
    assert extra["tcb_date"] == "2025-05-14T00:00:00Z"
    assert extra["qe_tcb_status"] == "UpToDate"
    assert extra["xfam"] == "e700000000000000"
    # Under evaluation 17 the same platform and module were the newest listed.
    older = verify_evidence(
        raw, collateral=(ATA_TDX_V4_EVAL17 / "collateral.json").read_bytes(), at=ATA_V4_AT
    )
    assert older.tcb_status is TcbStatus.UP_TO_DATE
    assert older.advisory_ids == ()
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(
            _tamper(raw, 48 + 520),
            collateral=(ATA_TDX_V4 / "collateral.json").read_bytes(),
            at=ATA_AT,
        )


# --- AMD SEV-SNP report v3 (Azure Milan), VCEK with serial number 0 ------------------

AZURE_MILAN_V3 = PUBLIC / "trustee-azure-milan-v3" / "report.bin"
AZURE_MILAN_VCEK = PUBLIC / "trustee-azure-milan-v3" / "vcek.der"


def test_azure_milan_v3_fields() -> None:
    data = AZURE_MILAN_V3.read_bytes()
    assert hashlib.sha256(data).hexdigest() == (
        "14fd2b6e459c85e71d42f9e499a5e67861414457ca43d2f90a26620068a5453e"
    )
    r = _snp(AZURE_MILAN_V3)
    assert (r.version, r.guest_svn, r.vmpl) == (3, 12, 0)
    assert r.policy.raw == 0x3001F
    assert r.family_id.hex() == "02212000" + "00" * 12
    assert r.image_id.hex() == "02" + "00" * 15
    assert r.platform_info.raw == 0x25
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x01, 0x01)
    assert r.product is SnpProduct.MILAN
    assert r.signing_key is SigningKey.VCEK
    assert r.report_data.hex() == (
        "cf7cc0731c50f64876804b3943b2bfbd93dba69f5928e3df223e78ff34dd46ee" + "00" * 32
    )
    assert r.measurement.hex() == (
        "5b0ce64ad1c1f6375dbda5f760b98526ca1bcf91b8195091afc28e7b024251d6"
        "8fe32e05af34048d6607678cd23283ff"
    )
    assert r.host_data == bytes(32)
    assert r.id_key_digest.hex().startswith("942fd93ebde6ea7a96efadeafc60f1c6")
    assert r.report_id.hex() == "ad29db593a7c2498cc5e987f9c9f51947fe01e18af0eb68d9b35076ae5437050"
    assert r.chip_id.hex().startswith("2e0e62a0e6f39bc491381b091ff79cfe")
    for tcb in (r.current_tcb, r.reported_tcb, r.committed_tcb, r.launch_tcb):
        assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc) == (4, 0, 24, 219, None)
    assert str(r.current_version) == str(r.committed_version) == "1.55.29"


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_azure_milan_v3_verifies_with_its_serial_zero_vcek() -> None:
    data = AZURE_MILAN_V3.read_bytes()
    vcek = AZURE_MILAN_VCEK.read_bytes()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    verified = verify_evidence(data, collateral=vcek, at=at)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    extra = verified.claims.extra
    assert extra["product"] == "Milan"
    assert extra["product_name"] == "Milan-B0"
    assert extra["guest_svn"] == 12
    assert extra["reported_tcb"]["microcode"] == 219
    assert extra["cpuid"] == {"family": 0x19, "model": 1, "stepping": 1}
    assert extra["endorsement_not_after"] == "2032-01-28T16:33:43+00:00"
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(_tamper(data, 0x50), collateral=vcek, at=at)
    with pytest.raises(CertificateChainError):
        verify_evidence(data, collateral=vcek, at=datetime(2025, 1, 1, tzinfo=UTC))
    # A Genoa VCEK cannot endorse this Milan report.
    with pytest.raises((CollateralError, EvidenceSignatureError)):
        verify_evidence(data, collateral=AZURE_GENOA_VCEK.read_bytes(), at=at)


def test_alibaba_tdx_v5_matches_the_origin_journal_with_evaluation_20() -> None:
    # Automata's alibaba-v5.json verifies this quote with the evaluation-20 collateral of
    # the go-tdx-guest fixture (same FMSPC) at its frozen time; its journal records status
    # 4 (OutOfDate) and these nine advisories, in this order.
    raw, _ = _alibaba()
    collateral = (GOTDX_V5 / "collateral.json").read_bytes()
    verified = verify_evidence(raw, collateral=collateral, at=GOTDX_AT)
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.advisory_ids == (
        "INTEL-SA-01036",
        "INTEL-SA-01079",
        "INTEL-SA-01099",
        "INTEL-SA-01103",
        "INTEL-SA-01111",
        "INTEL-SA-01192",
        "INTEL-SA-01245",
        "INTEL-SA-01312",
        "INTEL-SA-01313",
    )
    extra = verified.claims.extra
    assert extra["platform_tcb_status"] == "OutOfDate"
    assert extra["tcb_date"] == "2024-03-13T00:00:00Z"
    assert extra["td_relaunch_advised"] is False
