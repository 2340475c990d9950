from __future__ import annotations

import base64
import functools
import hashlib
import struct
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.attestation.builders import certificate, crl
from tests.hazmat.attestation.test_snp_layout import REPORTED_TCB, build_report
from trustedml.attestation._amd import PINNED_ARK_SHA256, SnpVerifier, _build_roots
from trustedml.attestation._model import EvidenceType, TcbStatus, Verifier
from trustedml.errors import (
    AttestationError,
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ConfigError,
    EvidenceFormatError,
    EvidenceSignatureError,
    UnsupportedEvidenceError,
)
from trustedml.hazmat.attestation.snp import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    SnpProduct,
    parse_snp_report,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = Path(__file__).parent / "vectors" / "go-sev-guest"
ROOTS = ROOT / "src" / "trustedml" / "attestation" / "roots"
AT = datetime(2023, 1, 1, tzinfo=UTC)
VCEK_NOT_AFTER = datetime(2029, 9, 24, 0, 55, 28, tzinfo=UTC)


@functools.cache
def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def load_vcek() -> x509.Certificate:
    with warnings.catch_warnings():
        # The real VCEK has serial number 0, which pyca/cryptography warns about.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(vector("vcek.testcer"))


def der_of_pem(pem: bytes) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(pem)]


def cert_table(entries: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    header = 24 * (len(entries) + 1)
    heads, body = bytearray(), bytearray()
    for guid, blob in entries:
        heads += guid.bytes + struct.pack("<II", header + len(body), len(blob))
        body += blob
    return bytes(heads + bytes(24) + body)


# --- the real go-sev-guest vector (Milan, report v2, VCEK) -----------------------------


def test_real_vector_verifies_with_the_pinned_milan_root() -> None:
    verified = SnpVerifier().verify(
        vector("attestation.bin"), collateral=vector("vcek.testcer"), at=AT
    )
    claims = verified.claims
    assert verified.evidence_type is EvidenceType.SNP
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.collateral_issued is None
    assert verified.collateral_expires is None
    assert claims.report_data == bytes.fromhex("0102030405") + bytes(59)
    assert claims.measurement == bytes.fromhex(
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
        "6bdf8a9ece31a5a608eb0cf2e4872b01"
    )
    assert claims.host_data == bytes(32)
    assert claims.vmpl == 0
    assert claims.guest_policy == 0xB0000
    assert claims.debug is True
    assert claims.simulated is False
    extra = claims.extra
    assert extra["product"] == "Milan"
    assert extra["product_name"] == "Milan-B0"
    assert extra["version"] == 2
    assert extra["signing_key"] == "vcek"
    assert extra["chip_id"].startswith("3ac3fe21e13fb099")
    assert extra["reported_tcb"] == {
        "raw": 0x4405000000000002,
        "bootloader": 2,
        "tee": 0,
        "snp": 5,
        "microcode": 68,
    }
    assert extra["family_id"] == extra["image_id"] == "00" * 16
    assert extra["current_firmware"] == "1.49.3"
    assert "VCEK hwID == CHIP_ID" in verified.checks
    assert "VCEK SPL extensions == REPORTED_TCB" in verified.checks
    assert claims.to_dict()["extra"]["reported_tcb"]["microcode"] == 68


def test_real_vcek_extensions_match_the_report() -> None:
    vcek = load_vcek()
    report = parse_snp_report(vector("attestation.bin"))

    def ext(oid: str) -> bytes:
        value = vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
        assert isinstance(value, x509.UnrecognizedExtension)
        return value.value

    assert ext("1.3.6.1.4.1.3704.1.4") == report.chip_id
    spl = {name: ext(f"1.3.6.1.4.1.3704.1.3.{n}") for name, n in [("bl", 1), ("tee", 2)]}
    spl |= {name: ext(f"1.3.6.1.4.1.3704.1.3.{n}") for name, n in [("snp", 3), ("ucode", 8)]}
    assert spl == {"bl": b"\x02\x01\x02", "tee": b"\x02\x01\x00", "snp": b"\x02\x01\x05"} | {
        "ucode": b"\x02\x01\x44"
    }
    tcb = report.reported_tcb
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == (2, 0, 5, 68)


@pytest.mark.parametrize(
    "form", ["der", "pem", "pem+chain", "der+der", "cert table", "extended report"]
)
def test_collateral_forms(form: str) -> None:
    report, vcek_der = vector("attestation.bin"), vector("vcek.testcer")
    vcek_pem = load_vcek().public_bytes(Encoding.PEM)
    ask_der, ark_der = der_of_pem(vector("ask_ark_milan.pem"))
    table = cert_table([(VCEK_GUID, vcek_der), (ASK_GUID, ask_der), (ARK_GUID, ark_der)])
    evidence, collateral = {
        "der": (report, vcek_der),
        "pem": (report, vcek_pem),
        "pem+chain": (report, vcek_pem + vector("ask_ark_milan.pem")),
        "der+der": (report, vcek_der + ask_der + ark_der),
        "cert table": (report, table),
        "extended report": (report + table, None),
    }[form]
    verified = SnpVerifier().verify(evidence, collateral=collateral, at=AT)
    assert verified.claims.extra["chip_id"] == parse_snp_report(report).chip_id.hex()


@pytest.mark.parametrize(
    "at",
    [
        VCEK_NOT_AFTER + timedelta(seconds=1),
        datetime(2030, 1, 1, tzinfo=UTC),
        datetime(2022, 9, 24, 0, 55, 27, tzinfo=UTC),
    ],
)
def test_outside_vcek_validity(at: datetime) -> None:
    with pytest.raises(CertificateChainError, match=r"VCEK certificate .* is not valid at"):
        SnpVerifier().verify(vector("attestation.bin"), collateral=vector("vcek.testcer"), at=at)


def test_last_valid_second_and_other_time_zones() -> None:
    verifier = SnpVerifier()
    verifier.verify(vector("attestation.bin"), collateral=vector("vcek.testcer"), at=VCEK_NOT_AFTER)
    east = datetime(2023, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))
    verifier.verify(vector("attestation.bin"), collateral=vector("vcek.testcer"), at=east)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        SnpVerifier().verify(
            vector("attestation.bin"), collateral=vector("vcek.testcer"), at=datetime(2023, 1, 1)
        )


def test_vlek_chain_cannot_anchor_a_vcek() -> None:
    verifier = SnpVerifier(ark_pems={"Milan": vector("ask_ark_milan_vlek.pem")})
    with pytest.raises(CertificateChainError, match="not signed by a known SEV-Milan"):
        verifier.verify(vector("attestation.bin"), collateral=vector("vcek.testcer"), at=AT)


def test_vcek_with_only_the_asvk_in_collateral_and_vlek_roots() -> None:
    verifier = SnpVerifier(ark_pems={"milan": vector("ask_ark_milan_vlek.pem")})
    collateral = vector("vcek.testcer") + der_of_pem(vector("ask_ark_milan_vlek.pem"))[0]
    with pytest.raises(CertificateChainError):
        verifier.verify(vector("attestation.bin"), collateral=collateral, at=AT)


def test_other_products_roots_do_not_anchor_milan() -> None:
    verifier = SnpVerifier(ark_pems={"Genoa": (ROOTS / "amd_genoa.pem").read_bytes()})
    with pytest.raises(CertificateChainError, match="no trusted AMD root key for Milan"):
        verifier.verify(vector("attestation.bin"), collateral=vector("vcek.testcer"), at=AT)
    with pytest.raises(CertificateChainError, match="ARK-Milan"):
        SnpVerifier(ark_pems={"Milan": (ROOTS / "amd_genoa.pem").read_bytes()})


def test_missing_collateral() -> None:
    verifier = SnpVerifier()
    with pytest.raises(CollateralError, match="no VCEK certificate"):
        verifier.verify(vector("attestation.bin"), collateral=None, at=AT)
    with pytest.raises(CollateralError, match="no VCEK certificate"):
        verifier.verify(vector("attestation.bin"), collateral=vector("ask_ark_milan.pem"), at=AT)
    with pytest.raises(CollateralError, match="neither PEM, DER"):
        verifier.verify(vector("attestation.bin"), collateral=b"\x01" * 40, at=AT)


def test_bad_extended_report_tail() -> None:
    with pytest.raises(EvidenceFormatError, match="certificate table"):
        SnpVerifier().verify(vector("attestation.bin") + b"\x01" * 30, collateral=None, at=AT)


TAMPER_REPORT = {
    "version": (0x000, 0xFF, UnsupportedEvidenceError),
    "guest_svn": (0x004, 0x01, EvidenceSignatureError),
    "policy abi minor": (0x008, 0x01, EvidenceSignatureError),
    "policy debug": (0x00A, 0x08, EvidenceSignatureError),
    "policy reserved bit 17": (0x00A, 0x02, EvidenceFormatError),
    "family_id": (0x010, 0x01, EvidenceSignatureError),
    "image_id": (0x02F, 0x01, EvidenceSignatureError),
    "vmpl": (0x030, 0x01, EvidenceSignatureError),
    "signature_algo": (0x034, 0x01, UnsupportedEvidenceError),
    "current_tcb": (0x038, 0x01, EvidenceSignatureError),
    "platform_info": (0x040, 0x02, EvidenceSignatureError),
    "author_key_en": (0x048, 0x01, EvidenceSignatureError),
    "signing_key -> vlek": (0x048, 0x04, CollateralError),
    "signing_key -> none": (0x048, 0x1C, EvidenceSignatureError),
    "key info reserved": (0x049, 0x01, EvidenceFormatError),
    "reserved 0x04c": (0x04C, 0x01, EvidenceFormatError),
    "report_data first": (0x050, 0x01, EvidenceSignatureError),
    "report_data last": (0x08F, 0x80, EvidenceSignatureError),
    "measurement first": (0x090, 0x01, EvidenceSignatureError),
    "measurement last": (0x0BF, 0x01, EvidenceSignatureError),
    "host_data": (0x0C0, 0x01, EvidenceSignatureError),
    "id_key_digest": (0x0E0, 0x01, EvidenceSignatureError),
    "report_id": (0x140, 0x01, EvidenceSignatureError),
    "report_id_ma": (0x160, 0x01, EvidenceSignatureError),
    "reported_tcb bootloader": (0x180, 0x01, EvidenceSignatureError),
    "reported_tcb microcode": (0x187, 0x01, EvidenceSignatureError),
    "reserved cpuid bytes (v2)": (0x188, 0x01, EvidenceFormatError),
    "chip_id first": (0x1A0, 0x01, EvidenceSignatureError),
    "chip_id last": (0x1DF, 0x01, EvidenceSignatureError),
    "committed_tcb": (0x1E0, 0x01, EvidenceSignatureError),
    "current build": (0x1E8, 0x01, EvidenceSignatureError),
    "launch_tcb": (0x1F0, 0x01, EvidenceSignatureError),
    "reserved 0x1f8": (0x1F8, 0x01, EvidenceFormatError),
    "signature R": (0x2A0, 0x01, EvidenceSignatureError),
    "signature R top byte": (0x2CF, 0x01, EvidenceSignatureError),
    "signature R beyond 384 bits": (0x2E7, 0x01, EvidenceSignatureError),
    "signature S": (0x2E8, 0x01, EvidenceSignatureError),
    "signature S top byte": (0x317, 0x80, EvidenceSignatureError),
    "signature reserved": (0x330, 0x01, EvidenceFormatError),
    "last byte": (0x49F, 0x01, EvidenceFormatError),
}


@pytest.mark.parametrize("case", TAMPER_REPORT)
def test_tampered_report(case: str) -> None:
    offset, mask, error = TAMPER_REPORT[case]
    data = bytearray(vector("attestation.bin"))
    data[offset] ^= mask
    with pytest.raises(error) as info:
        SnpVerifier().verify(bytes(data), collateral=vector("vcek.testcer"), at=AT)
    assert type(info.value) is error


TAMPER_VCEK = {
    "outer tag": (0, CollateralError),
    "tbs tag": (4, CollateralError),
    "tbs length": (5, CollateralError),
    "signature algorithm": (20, CertificateChainError),
    "subject key": (402, CertificateChainError),
    "hwID extension": (710, CertificateChainError),
    "spl extension": (760, CertificateChainError),
    "signature": (1350, CertificateChainError),
    "last byte": (1359, CertificateChainError),
}


@pytest.mark.parametrize("case", TAMPER_VCEK)
def test_tampered_vcek(case: str) -> None:
    offset, error = TAMPER_VCEK[case]
    vcek = bytearray(vector("vcek.testcer"))
    vcek[offset] ^= 0x01
    with pytest.raises(error) as info:
        SnpVerifier().verify(vector("attestation.bin"), collateral=bytes(vcek), at=AT)
    assert type(info.value) is error


def test_foreign_root_in_collateral_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    rogue = signed_cert("ARK-Milan", "ARK-Milan", key.public_key(), key, ca=True)
    collateral = vector("vcek.testcer") + rogue.public_bytes(Encoding.DER)
    with pytest.raises(CertificateChainError, match="not a pinned AMD root"):
        SnpVerifier().verify(vector("attestation.bin"), collateral=collateral, at=AT)


# --- packaged roots --------------------------------------------------------------------


@pytest.mark.parametrize("product", list(SnpProduct))
def test_packaged_roots_are_amd_pinned_and_self_consistent(product: SnpProduct) -> None:
    certs = x509.load_pem_x509_certificates(
        (ROOTS / f"amd_{product.value.lower()}.pem").read_bytes()
    )
    by_cn = {c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value: c for c in certs}
    assert set(by_cn) == {f"ARK-{product}", f"SEV-{product}", f"SEV-VLEK-{product}"}
    ark = by_cn[f"ARK-{product}"]
    assert hashlib.sha256(ark.public_bytes(Encoding.DER)).hexdigest() == PINNED_ARK_SHA256[product]
    for cert in certs:
        cert.verify_directly_issued_by(ark)
        assert isinstance(cert.signature_algorithm_parameters, padding.PSS)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size == 4096


def test_snp_verifier_is_a_verifier() -> None:
    verifier = SnpVerifier()
    assert isinstance(verifier, Verifier)
    assert verifier.evidence_type is EvidenceType.SNP


def test_a_modified_packaged_root_is_refused() -> None:
    pem = (ROOTS / "amd_milan.pem").read_bytes()
    with pytest.raises(CertificateChainError, match="pinned SHA-256"):
        _build_roots(SnpProduct.MILAN, pem, "00" * 32)


def test_unknown_product_in_ark_pems() -> None:
    with pytest.raises(ConfigError, match="unknown AMD product 'Naples'"):
        SnpVerifier(ark_pems={"Naples": b""})


def test_ark_pems_need_one_self_signed_root() -> None:
    pem = (ROOTS / "amd_milan.pem").read_bytes()
    only_ask = b"".join(
        c.public_bytes(Encoding.PEM)
        for c in x509.load_pem_x509_certificates(pem)
        if c.subject != c.issuer
    )
    with pytest.raises(CertificateChainError, match="exactly one self-signed ARK"):
        SnpVerifier(ark_pems={"Milan": only_ask})


# --- synthetic chains: report versions 3 and 5, Genoa/Turin, VLEK ----------------------

SPL_OID = "1.3.6.1.4.1.3704.1.3."
HWID_OID = "1.3.6.1.4.1.3704.1.4"


def amd_name(cn: str) -> x509.Name:
    oid = x509.NameOID
    return x509.Name(
        [
            x509.NameAttribute(oid.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(oid.COUNTRY_NAME, "US"),
            x509.NameAttribute(oid.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(oid.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(oid.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(oid.COMMON_NAME, cn),
        ]
    )


def signed_cert(
    subject: str,
    issuer: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signing_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    extensions: Sequence[tuple[str, bytes]] = (),
    not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC),
) -> x509.Certificate:
    return certificate(
        amd_name(subject),
        amd_name(issuer),
        public_key,
        signing_key,
        ca=True if ca else None,
        extensions=[
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
            for oid, value in extensions
        ],
        not_after=not_after,
        algorithm=hashes.SHA384(),
    )


@functools.cache
def rsa_key(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(n: int) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def der_int(value: int) -> bytes:
    body = value.to_bytes(1, "big") if value < 0x80 else b"\x00" + value.to_bytes(1, "big")
    return bytes([0x02, len(body)]) + body


@dataclass(frozen=True)
class FakeChain:
    product: str
    roots_pem: bytes

    @property
    def verifier(self) -> SnpVerifier:
        return SnpVerifier(ark_pems={self.product: self.roots_pem})


@functools.cache
def fake_chain(product: str) -> FakeChain:
    ark = signed_cert(f"ARK-{product}", f"ARK-{product}", rsa_key(0).public_key(), rsa_key(0))
    ask = signed_cert(f"SEV-{product}", f"ARK-{product}", rsa_key(1).public_key(), rsa_key(0))
    asvk = signed_cert(f"SEV-VLEK-{product}", f"ARK-{product}", rsa_key(1).public_key(), rsa_key(0))
    return FakeChain(product, b"".join(c.public_bytes(Encoding.PEM) for c in (ark, ask, asvk)))


def spl_extensions(tcb: bytes, *, turin: bool) -> dict[str, bytes]:
    if turin:  # fmc, bl, tee, snp, 3 reserved, ucode
        parts = {"9": tcb[0], "1": tcb[1], "2": tcb[2], "3": tcb[3], "8": tcb[7]}
    else:  # bl, tee, 4 reserved, snp, ucode
        parts = {"1": tcb[0], "2": tcb[1], "3": tcb[6], "8": tcb[7]}
    return {SPL_OID + n: der_int(v) for n, v in parts.items()}


def endorsement_cert(
    product: str,
    *,
    kind: str = "VCEK",
    hwid: bytes | None = None,
    tcb: bytes = REPORTED_TCB,
    drop: str | None = None,
    override: dict[str, bytes] | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    exts = spl_extensions(tcb, turin=product == "Turin")
    if hwid is not None:
        exts[HWID_OID] = hwid
    exts |= override or {}
    exts.pop(drop or "", None)
    issuer = f"SEV-VLEK-{product}" if kind == "VLEK" else f"SEV-{product}"
    public_key = (key or ec_key(0)).public_key()
    cert = signed_cert(f"SEV-{kind}", issuer, public_key, rsa_key(1), extensions=list(exts.items()))
    return cert.public_bytes(Encoding.DER)


def sign_report(report: bytearray, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    signature = (key or ec_key(0)).sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(signature)
    report[0x2A0:0x2E8] = r.to_bytes(72, "little")
    report[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(report)


GENOA_CHIP = hashlib.sha512(b"genoa chip").digest()
TURIN_CHIP = hashlib.sha256(b"turin chip").digest()[:8]


def test_genoa_report_v3_with_vcek() -> None:
    report = sign_report(build_report(version=3, cpuid=(0x19, 0x11, 0x01), chip_id=GENOA_CHIP))
    vcek = endorsement_cert("Genoa", hwid=b"\x04\x40" + GENOA_CHIP)
    verified = fake_chain("Genoa").verifier.verify(report, collateral=vcek, at=AT)
    extra = verified.claims.extra
    assert extra["product"] == "Genoa"
    assert extra["version"] == 3
    assert extra["cpuid"] == {"family": 0x19, "model": 0x11, "stepping": 1}
    assert extra["reported_tcb"]["bootloader"] == REPORTED_TCB[0]
    assert extra["reported_tcb"]["snp"] == REPORTED_TCB[6]
    assert "fmc" not in extra["reported_tcb"]
    assert verified.claims.debug is True
    assert verified.claims.vmpl == 1


def test_turin_report_v5_with_vcek_and_8_byte_hwid() -> None:
    chip = TURIN_CHIP + bytes(56)
    report = sign_report(build_report(version=5, cpuid=(0x1A, 0x02, 0x00), chip_id=chip))
    vcek = endorsement_cert("Turin", hwid=b"\x04\x08" + TURIN_CHIP)
    verified = fake_chain("Turin").verifier.verify(report, collateral=vcek, at=AT)
    extra = verified.claims.extra
    assert extra["product"] == "Turin"
    assert extra["reported_tcb"]["fmc"] == REPORTED_TCB[0]
    assert extra["reported_tcb"]["bootloader"] == REPORTED_TCB[1]
    assert extra["reported_tcb"]["snp"] == REPORTED_TCB[3]
    assert extra["launch_mit_vector"] == 0x0102030405060708
    assert extra["current_mit_vector"] == 0x1112131415161718


def test_turin_v2_report_is_decoded_with_the_chain_product() -> None:
    chip = TURIN_CHIP + bytes(56)
    report = sign_report(build_report(version=2, chip_id=chip))
    vcek = endorsement_cert("Turin", hwid=TURIN_CHIP)
    verified = fake_chain("Turin").verifier.verify(report, collateral=vcek, at=AT)
    assert verified.claims.extra["reported_tcb"]["fmc"] == REPORTED_TCB[0]


def test_turin_hwid_with_a_non_zero_chip_id_tail() -> None:
    report = sign_report(build_report(version=5, cpuid=(0x1A, 0x02, 0), chip_id=GENOA_CHIP))
    vcek = endorsement_cert("Turin", hwid=GENOA_CHIP[:8])
    with pytest.raises(CollateralError, match="hwID"):
        fake_chain("Turin").verifier.verify(report, collateral=vcek, at=AT)


@pytest.mark.parametrize("version", [2, 3, 5])
def test_vlek_signed_report(version: int) -> None:
    report = sign_report(
        build_report(version=version, signing_key=1, cpuid=(0x19, 0x01, 0x01), chip_id=bytes(64))
    )
    chain = fake_chain("Milan")
    vlek = endorsement_cert("Milan", kind="VLEK")
    table = cert_table([(VLEK_GUID, vlek)])
    verified = chain.verifier.verify(report, collateral=table, at=AT)
    assert verified.claims.extra["signing_key"] == "vlek"
    assert not any("hwID" in check for check in verified.checks)
    with pytest.raises(CollateralError, match="no VLEK certificate"):
        chain.verifier.verify(report, collateral=endorsement_cert("Milan"), at=AT)


def test_vlek_must_be_issued_by_the_asvk() -> None:
    report = sign_report(build_report(version=3, signing_key=1, cpuid=(0x19, 0x01, 0)))
    vlek_from_ask = signed_cert(
        "SEV-VLEK",
        "SEV-Milan",
        ec_key(0).public_key(),
        rsa_key(1),
        extensions=list(spl_extensions(REPORTED_TCB, turin=False).items()),
    ).public_bytes(Encoding.DER)
    with pytest.raises(CertificateChainError, match="not an AMD ASVK"):
        fake_chain("Milan").verifier.verify(report, collateral=vlek_from_ask, at=AT)


def test_masked_chip_id_skips_the_hwid_check() -> None:
    report = sign_report(build_report(version=3, mask_chip_key=True, chip_id=bytes(64)))
    vcek = endorsement_cert("Genoa", hwid=GENOA_CHIP)
    verified = fake_chain("Genoa").verifier.verify(report, collateral=vcek, at=AT)
    assert verified.claims.extra["chip_id_masked"] is True
    assert "VCEK hwID == CHIP_ID" not in verified.checks


@pytest.mark.parametrize(
    ("vcek_args", "match"),
    [
        ({"hwid": hashlib.sha512(b"other chip").digest()}, "hwID does not match"),
        ({"hwid": None}, "lacks the hwID extension"),
        ({"hwid": b"\x04\x10" + GENOA_CHIP[:16]}, "hwID does not match"),
        ({"hwid": GENOA_CHIP, "tcb": bytes([1]) + REPORTED_TCB[1:]}, "blSPL is 1"),
        ({"hwid": GENOA_CHIP, "override": {SPL_OID + "2": der_int(0x99)}}, "teeSPL is 153"),
        ({"hwid": GENOA_CHIP, "override": {SPL_OID + "3": der_int(0)}}, "snpSPL"),
        ({"hwid": GENOA_CHIP, "override": {SPL_OID + "8": der_int(0xFF)}}, "ucodeSPL is 255"),
        ({"hwid": GENOA_CHIP, "drop": SPL_OID + "8"}, "lacks the ucodeSPL extension"),
        ({"hwid": GENOA_CHIP, "override": {SPL_OID + "1": b"\x04\x01\x21"}}, "DER INTEGER"),
    ],
)
def test_vcek_does_not_match_the_report(vcek_args: dict[str, Any], match: str) -> None:
    report = sign_report(build_report(version=3, chip_id=GENOA_CHIP))
    vcek = endorsement_cert("Genoa", **vcek_args)
    with pytest.raises(CollateralError, match=match):
        fake_chain("Genoa").verifier.verify(report, collateral=vcek, at=AT)


def test_turin_needs_the_fmc_spl() -> None:
    report = sign_report(build_report(version=5, cpuid=(0x1A, 0x02, 0), chip_id=bytes(64)))
    vcek = endorsement_cert("Turin", drop=SPL_OID + "9")
    with pytest.raises(CollateralError, match="fmcSPL"):
        fake_chain("Turin").verifier.verify(report, collateral=vcek, at=AT)


def test_report_cpuid_must_name_the_chain_product() -> None:
    report = sign_report(build_report(version=3, cpuid=(0x19, 0x11, 1), chip_id=GENOA_CHIP))
    vcek = endorsement_cert("Milan", hwid=GENOA_CHIP)
    with pytest.raises(CollateralError, match=r"certified for Milan .* CPUID names Genoa"):
        fake_chain("Milan").verifier.verify(report, collateral=vcek, at=AT)


def test_unknown_cpuid_uses_the_chain_product() -> None:
    report = sign_report(build_report(version=3, cpuid=(0x19, 0x44, 0), chip_id=GENOA_CHIP))
    vcek = endorsement_cert("Genoa", hwid=GENOA_CHIP)
    verified = fake_chain("Genoa").verifier.verify(report, collateral=vcek, at=AT)
    assert verified.claims.extra["product"] == "Genoa"


def test_unsigned_report() -> None:
    report = sign_report(build_report(version=3, signing_key=7))
    with pytest.raises(EvidenceSignatureError, match="unsigned"):
        fake_chain("Genoa").verifier.verify(report, collateral=endorsement_cert("Genoa"), at=AT)


def test_report_signed_by_another_key() -> None:
    report = sign_report(build_report(version=3, chip_id=GENOA_CHIP), ec_key(1))
    vcek = endorsement_cert("Genoa", hwid=GENOA_CHIP)
    with pytest.raises(EvidenceSignatureError, match="does not verify"):
        fake_chain("Genoa").verifier.verify(report, collateral=vcek, at=AT)


def test_endorsement_key_must_be_p384() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    report = sign_report(build_report(version=3, chip_id=GENOA_CHIP), ec_key(0))
    vcek = signed_cert("SEV-VCEK", "SEV-Genoa", p256.public_key(), rsa_key(1))
    with pytest.raises(CertificateChainError, match="P-384"):
        fake_chain("Genoa").verifier.verify(
            report, collateral=vcek.public_bytes(Encoding.DER), at=AT
        )


def test_rogue_ask_in_collateral_is_not_trusted() -> None:
    rogue_key = rsa_key(2)
    rogue_ask = signed_cert("SEV-Genoa", "ARK-Genoa", rogue_key.public_key(), rogue_key)
    vcek = signed_cert(
        "SEV-VCEK",
        "SEV-Genoa",
        ec_key(0).public_key(),
        rogue_key,
        extensions=[(HWID_OID, GENOA_CHIP), *spl_extensions(REPORTED_TCB, turin=False).items()],
    )
    report = sign_report(build_report(version=3, chip_id=GENOA_CHIP))
    collateral = vcek.public_bytes(Encoding.DER) + rogue_ask.public_bytes(Encoding.DER)
    with pytest.raises(CertificateChainError, match="is not signed by ARK-Genoa"):
        fake_chain("Genoa").verifier.verify(report, collateral=collateral, at=AT)


def test_expired_intermediate() -> None:
    chain = fake_chain("Genoa")
    old_ask = signed_cert(
        "SEV-Genoa",
        "ARK-Genoa",
        rsa_key(1).public_key(),
        rsa_key(0),
        not_after=datetime(2022, 1, 1, tzinfo=UTC),
    )
    report = sign_report(build_report(version=3, chip_id=GENOA_CHIP))
    collateral = endorsement_cert("Genoa", hwid=GENOA_CHIP) + old_ask.public_bytes(Encoding.DER)
    roots = b"".join(
        c.public_bytes(Encoding.PEM)
        for c in x509.load_pem_x509_certificates(chain.roots_pem)
        if c.subject == c.issuer
    )
    verifier = SnpVerifier(ark_pems={"Genoa": roots})
    with pytest.raises(CertificateChainError, match=r"ASK certificate .* is not valid"):
        verifier.verify(report, collateral=collateral, at=AT)


def test_two_vceks_are_ambiguous() -> None:
    report = sign_report(build_report(version=3, chip_id=GENOA_CHIP))
    one = endorsement_cert("Genoa", hwid=GENOA_CHIP)
    two = endorsement_cert("Genoa", hwid=GENOA_CHIP, key=ec_key(1))
    with pytest.raises(CollateralError, match="2 VCEK certificates"):
        fake_chain("Genoa").verifier.verify(report, collateral=one + two, at=AT)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 0x49F), st.integers(1, 255)), min_size=1, max_size=4),
    st.binary(max_size=40),
)
def test_fuzz_verify_never_raises_anything_else(
    flips: list[tuple[int, int]], collateral_tail: bytes
) -> None:
    report = bytearray(sign_report(build_report(version=5, chip_id=GENOA_CHIP)))
    for offset, mask in flips:
        report[offset] ^= mask
    collateral = endorsement_cert("Genoa", hwid=GENOA_CHIP) + collateral_tail
    try:
        fake_chain("Genoa").verifier.verify(bytes(report), collateral=collateral, at=AT)
    except AttestationError:
        return


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1359), st.integers(1, 255)), min_size=1, max_size=3),
    st.sampled_from(["der", "pem", "table"]),
)
def test_fuzz_collateral(flips: list[tuple[int, int]], form: str) -> None:
    vcek = bytearray(vector("vcek.testcer"))
    for offset, mask in flips:
        vcek[offset] ^= mask
    collateral = {
        "der": bytes(vcek),
        "pem": b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(bytes(vcek))
        + b"-----END CERTIFICATE-----\n",
        "table": cert_table([(VCEK_GUID, bytes(vcek))]),
    }[form]
    try:
        SnpVerifier().verify(vector("attestation.bin"), collateral=collateral, at=AT)
    except AttestationError:
        return


# --- AMD's CRL (KDS /vcek/v1/{product}/crl): signed by the ARK, lists revoked ASKs -------


def _ask(product: str, kind: str = "ASK") -> x509.Certificate:
    name = f"SEV-VLEK-{product}" if kind == "ASVK" else f"SEV-{product}"
    certs = x509.load_pem_x509_certificates(fake_chain(product).roots_pem)
    (ask,) = [c for c in certs if c.subject.rfc4514_string().startswith(f"CN={name},")]
    return ask


def amd_crl(
    product: str,
    *,
    revoked: Sequence[int] = (),
    issued: datetime = AT - timedelta(days=1),
    next_update: datetime = AT + timedelta(days=7),
    signer: rsa.RSAPrivateKey | None = None,
    issuer: str | None = None,
) -> x509.CertificateRevocationList:
    return crl(
        amd_name(issuer or f"ARK-{product}"),
        signer or rsa_key(0),
        last_update=issued,
        next_update=next_update,
        revoked=revoked,
        revoked_at=issued - timedelta(days=30),
    )


def _genoa() -> tuple[bytes, bytes]:
    report = sign_report(build_report(version=3, cpuid=(0x19, 0x11, 0x01), chip_id=GENOA_CHIP))
    return report, endorsement_cert("Genoa", hwid=b"\x04\x40" + GENOA_CHIP)


@pytest.mark.parametrize("form", ["pem", "der"])
def test_a_current_crl_not_listing_the_ask_dates_the_collateral(form: str) -> None:
    report, vcek = _genoa()
    crl = amd_crl("Genoa", revoked=[12345])
    if form == "pem":
        collateral = x509.load_der_x509_certificate(vcek).public_bytes(Encoding.PEM)
        collateral += crl.public_bytes(Encoding.PEM)
    else:
        collateral = vcek + crl.public_bytes(Encoding.DER)
    verified = fake_chain("Genoa").verifier.verify(report, collateral=collateral, at=AT)
    assert verified.collateral_issued == AT - timedelta(days=1)
    assert verified.collateral_expires == AT + timedelta(days=7)
    assert any("SEV-Genoa not revoked (AMD CRL of" in check for check in verified.checks)
    # Without a CRL there is nothing to date.
    plain = fake_chain("Genoa").verifier.verify(report, collateral=vcek, at=AT)
    assert plain.collateral_issued is None


def test_a_revoked_ask_is_refused() -> None:
    report, vcek = _genoa()
    ask = _ask("Genoa")
    crl = amd_crl("Genoa", revoked=[7, ask.serial_number])
    with pytest.raises(
        CertificateChainError, match=r"ASK SEV-Genoa \(serial [0-9a-f]+\) is revoked"
    ):
        fake_chain("Genoa").verifier.verify(
            report, collateral=vcek + crl.public_bytes(Encoding.DER), at=AT
        )


def test_a_revoked_asvk_is_refused_for_vlek_reports() -> None:
    report = sign_report(
        build_report(version=3, cpuid=(0x19, 0x11, 0x01), chip_id=GENOA_CHIP, signing_key=1)
    )
    vlek = endorsement_cert("Genoa", kind="VLEK")
    crl = amd_crl("Genoa", revoked=[_ask("Genoa", "ASVK").serial_number])
    with pytest.raises(CertificateChainError, match=r"ASVK SEV-VLEK-Genoa .* is revoked"):
        fake_chain("Genoa").verifier.verify(
            report, collateral=vlek + crl.public_bytes(Encoding.DER), at=AT
        )


BAD_CRLS = {
    "signed by another key": (
        {"signer": 1},
        CollateralError,
        "signature does not verify with ARK-Genoa",
    ),
    "another issuer": (
        {"issuer": "ARK-Milan"},
        CollateralError,
        "issued by 'ARK-Milan', not ARK-Genoa",
    ),
    "past its next update": (
        {"next_update": AT - timedelta(hours=1)},
        CollateralExpiredError,
        "not current at",
    ),
    "issued later": ({"issued": AT + timedelta(hours=1)}, CollateralExpiredError, "not current at"),
}


@pytest.mark.parametrize("case", BAD_CRLS)
def test_a_bad_crl_is_refused_by_name(case: str) -> None:
    options, error, message = BAD_CRLS[case]
    if "signer" in options:
        options = {**options, "signer": rsa_key(options["signer"])}
    report, vcek = _genoa()
    crl = amd_crl("Genoa", **options)
    with pytest.raises(error, match=message):
        fake_chain("Genoa").verifier.verify(
            report, collateral=vcek + crl.public_bytes(Encoding.DER), at=AT
        )


def test_a_malformed_crl_is_a_collateral_error() -> None:
    report, vcek = _genoa()
    pem = x509.load_der_x509_certificate(vcek).public_bytes(Encoding.PEM)
    broken = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    with pytest.raises(CollateralError, match="not a valid CRL"):
        fake_chain("Genoa").verifier.verify(report, collateral=pem + broken, at=AT)


def test_collateral_files_join_into_one_bundle_as_kds_serves_them() -> None:
    from trustedml.attestation._verify import join_collateral

    report, vcek = _genoa()
    crl = amd_crl("Genoa", revoked=[12345])
    ask_pem = x509.load_pem_x509_certificates(fake_chain("Genoa").roots_pem)[1].public_bytes(
        Encoding.PEM
    )
    joined = join_collateral([vcek, ask_pem, crl.public_bytes(Encoding.DER)])
    assert joined is not None
    assert joined.count(b"-----BEGIN CERTIFICATE-----") == 2
    assert joined.count(b"-----BEGIN X509 CRL-----") == 1
    verified = fake_chain("Genoa").verifier.verify(report, collateral=joined, at=AT)
    assert verified.collateral_issued == AT - timedelta(days=1)
    assert join_collateral([vcek]) == vcek
    assert join_collateral([]) is None
    with pytest.raises(ConfigError, match="collateral 2: Intel collateral is one JSON document"):
        join_collateral([vcek, b' {"tcb_info": "..."}'])
    with pytest.raises(
        ConfigError, match="collateral 1: expected PEM, or a DER certificate or CRL"
    ):
        join_collateral([b"\x30\x03\x02\x01\x00", vcek])
