"""IntelVerifier: the real dcap-qvl vectors (verdicts, expiry, tampering, wrong root)
and a synthetic Intel-like PKI for the rules the vectors do not reach."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.attestation.builders import certificate, crl
from tests.hazmat.attestation.test_intel_layout import integer, oid, tlv
from trustedml.attestation import _intel
from trustedml.attestation._intel import INTEL_SGX_ROOT_CA_SHA256, IntelVerifier, parse_quote
from trustedml.attestation._model import EvidenceType, TcbStatus, Verifier
from trustedml.errors import (
    AttestationError,
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ConfigError,
    EvidenceBindingError,
    EvidenceSignatureError,
    TcbLevelNotFoundError,
    UnsupportedEvidenceError,
)
from trustedml.hazmat.attestation.intel import INTEL_QE_VENDOR_ID, SGX_EXTENSION_OID

ROOT = Path(__file__).resolve().parents[2]
VECTORS = Path(__file__).parent / "vectors" / "dcap-qvl"
KAT: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "intel_dcap.json").read_text()
)
NAMES = sorted(name for name in KAT if not name.startswith("_"))


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


@functools.cache
def load(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def vector(name: str) -> tuple[bytes, bytes, IntelVerifier, datetime]:
    exp = KAT[name]
    verifier = IntelVerifier(EvidenceType(exp["evidence_type"]))
    return load(name), load(exp["collateral"]), verifier, when(exp["verify_at"])


# --- real vectors -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_vector_verdict(name: str) -> None:
    exp = KAT[name]
    evidence, collateral, verifier, at = vector(name)
    assert isinstance(verifier, Verifier)
    if "error" in exp:
        with pytest.raises(TcbLevelNotFoundError, match="no TCB level matches"):
            verifier.verify(evidence, collateral=collateral, at=at)
        return
    verified = verifier.verify(evidence, collateral=collateral, at=at)
    assert verified.tcb_status is TcbStatus(exp["status"])
    assert verified.advisory_ids == tuple(exp["advisory_ids"])
    assert verified.evidence_type is EvidenceType(exp["evidence_type"])
    assert verified.collateral_expires == when(exp["earliest_next_update"])
    assert verified.collateral_issued == when(exp["earliest_issue"])
    claims = verified.claims
    body = exp["body"]
    assert claims.report_data.hex() == body["report_data"]
    assert claims.debug is body["debug"]
    assert claims.simulated is False
    assert claims.extra["fmspc"] == exp["pck"]["fmspc"]
    assert claims.extra["quote_version"] == exp["quote"]["version"]
    if claims.evidence_type is EvidenceType.SGX:
        assert claims.mrenclave is not None
        assert claims.mrenclave.hex() == body["mrenclave"]
        assert claims.mrsigner is not None
        assert claims.mrsigner.hex() == body["mrsigner"]
        assert (claims.isv_prod_id, claims.isv_svn) == (body["isv_prod_id"], body["isv_svn"])
        assert claims.extra["qe_svn"] == 10
        assert claims.mrtd is None
    else:
        assert claims.mrtd is not None
        assert claims.mrtd.hex() == body["mr_td"]
        assert claims.mr_seam is not None
        assert claims.mr_seam.hex() == body["mr_seam"]
        assert [r.hex() for r in claims.rtmrs or ()] == body["rtmrs"]
        assert claims.mr_config_id == bytes(48)
        assert claims.mr_owner == bytes(48)
        assert claims.extra["tee_tcb_svn"] == body["tee_tcb_svn"]
        assert claims.mrenclave is None
    json.dumps(claims.to_dict())


@pytest.mark.parametrize("name", NAMES)
def test_vector_expires(name: str) -> None:
    evidence, collateral, verifier, _ = vector(name)
    expires = when(KAT[name]["earliest_next_update"])
    with pytest.raises(CollateralExpiredError, match=r"expired at .*\(nextUpdate"):
        verifier.verify(evidence, collateral=collateral, at=expires + timedelta(days=1))
    with pytest.raises(CollateralExpiredError, match="not valid yet"):
        verifier.verify(
            evidence, collateral=collateral, at=when(KAT[name]["earliest_issue"]) - timedelta(1)
        )


def _quote_offsets(name: str) -> dict[str, int]:
    data = load(name)
    quote = parse_quote(data)
    sig = len(quote.signed_bytes) + 4
    qe = sig + 128 + (0 if quote.version == 3 else 6)
    auth = qe + 384 + 64 + 2
    leaf = data.index(b"-----BEGIN CERTIFICATE-----", auth)
    return {
        "header": 30,  # user data
        "body": len(quote.signed_bytes) - 100,
        "quote signature": sig + 10,
        "attestation key": sig + 64 + 20,
        "QE report": qe + 100,
        "QE report signature": qe + 384 + 10,
        "QE auth data": auth + 5,
        "PCK certificate": leaf + 500,
    }


QUOTE_TAMPERING = {
    "header": EvidenceSignatureError,
    "body": EvidenceSignatureError,
    "quote signature": EvidenceSignatureError,
    "attestation key": EvidenceBindingError,
    "QE report": EvidenceSignatureError,
    "QE report signature": EvidenceSignatureError,
    "QE auth data": EvidenceBindingError,
    "PCK certificate": CertificateChainError,
}


@pytest.mark.parametrize("name", ["sgx_quote", "tdx_quote"])
@pytest.mark.parametrize("region", sorted(QUOTE_TAMPERING))
def test_tampered_quote(name: str, region: str) -> None:
    evidence, collateral, verifier, at = vector(name)
    offset = _quote_offsets(name)[region]
    tampered = evidence[:offset] + bytes([evidence[offset] ^ 0x01]) + evidence[offset + 1 :]
    with pytest.raises(AttestationError) as exc:
        verifier.verify(tampered, collateral=collateral, at=at)
    assert type(exc.value) is QUOTE_TAMPERING[region], exc.value


def _flip_text(text: str, index: int) -> str:
    char = text[index]
    new = {"0": "1", "1": "2"}.get(char, "0") if char in "0123456789abcdefABCDEF" else "x"
    return text[:index] + new + text[index + 1 :]


COLLATERAL_TAMPERING: dict[str, tuple[str, int, type[AttestationError]]] = {
    # key: (collateral key, index of the character to change, expected error)
    "tcb_info": ("tcb_info", 200, CollateralError),
    "tcb_info date": ("tcb_info", 40, CollateralError),
    "qe_identity": ("qe_identity", 300, CollateralError),
    "tcb_info_signature": ("tcb_info_signature", 70, CollateralError),
    "qe_identity_signature": ("qe_identity_signature", 5, CollateralError),
    "root_ca_crl signature": ("root_ca_crl", -10, CollateralError),
    "root_ca_crl body": ("root_ca_crl", 100, CollateralError),
    "pck_crl signature": ("pck_crl", -10, CollateralError),
    "pck_crl body": ("pck_crl", 150, CollateralError),
    "tcb_info_issuer_chain": ("tcb_info_issuer_chain", 400, CertificateChainError),
    "qe_identity_issuer_chain": ("qe_identity_issuer_chain", 600, CertificateChainError),
    "pck_crl_issuer_chain": ("pck_crl_issuer_chain", 500, CertificateChainError),
}


@pytest.mark.parametrize("name", ["sgx_quote", "tdx_quote"])
@pytest.mark.parametrize("case", sorted(COLLATERAL_TAMPERING))
def test_tampered_collateral(name: str, case: str) -> None:
    evidence, collateral, verifier, at = vector(name)
    key, index, expected = COLLATERAL_TAMPERING[case]
    doc = json.loads(collateral)
    doc[key] = _flip_text(doc[key], index)
    with pytest.raises(AttestationError) as exc:
        verifier.verify(evidence, collateral=json.dumps(doc).encode(), at=at)
    assert type(exc.value) is expected, exc.value


def self_signed(cn: str = "Intel SGX Root CA") -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(cn, key.public_key(), cn, key, ca=True, serial=7)
    return key, cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_root(name: str) -> None:
    evidence, collateral, _, at = vector(name)
    exp = KAT[name]
    verifier = IntelVerifier(EvidenceType(exp["evidence_type"]), root_ca_der=self_signed()[1])
    with pytest.raises(CertificateChainError, match="not issued by 'Intel SGX Root CA'"):
        verifier.verify(evidence, collateral=collateral, at=at)


def test_pinned_root() -> None:
    der = (
        ROOT / "src" / "trustedml" / "attestation" / "roots" / "intel_sgx_root_ca.der"
    ).read_bytes()
    assert hashlib.sha256(der).hexdigest() == INTEL_SGX_ROOT_CA_SHA256
    assert der == load("TrustedRootCA.der")


def test_swapped_root_file_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    _intel._pinned_root.cache_clear()
    monkeypatch.setattr(_intel, "_ROOT_RESOURCE", "_model.py")
    try:
        with pytest.raises(CertificateChainError, match="is not the pinned"):
            IntelVerifier(EvidenceType.SGX)
    finally:
        _intel._pinned_root.cache_clear()


def test_wrong_evidence_type() -> None:
    evidence, collateral, _, at = vector("tdx_quote")
    with pytest.raises(UnsupportedEvidenceError, match="checks sgx-dcap, got tdx-dcap"):
        IntelVerifier(EvidenceType.SGX).verify(evidence, collateral=collateral, at=at)


def test_collateral_of_another_platform() -> None:
    evidence, _, verifier, at = vector("sgx_quote")
    with pytest.raises(CollateralError, match=r"pck_crl: issued by .*PCK Platform CA"):
        verifier.verify(evidence, collateral=load("tdx_quote_collateral.json"), at=at)


@pytest.mark.parametrize(
    "key",
    [
        "pck_crl_issuer_chain",
        "root_ca_crl",
        "pck_crl",
        "tcb_info_issuer_chain",
        "tcb_info",
        "tcb_info_signature",
        "qe_identity_issuer_chain",
        "qe_identity",
        "qe_identity_signature",
    ],
)
def test_collateral_key_missing_or_mistyped(key: str) -> None:
    evidence, collateral, verifier, at = vector("sgx_quote")
    doc = json.loads(collateral)
    value = doc.pop(key)
    with pytest.raises(CollateralError, match=f"key '{key}' is missing"):
        verifier.verify(evidence, collateral=json.dumps(doc).encode(), at=at)
    doc[key] = [value]
    with pytest.raises(CollateralError, match=f"key '{key}': expected a string, got list"):
        verifier.verify(evidence, collateral=json.dumps(doc).encode(), at=at)


def test_collateral_not_json_or_absent() -> None:
    evidence, _, verifier, at = vector("sgx_quote")
    with pytest.raises(CollateralError, match="needs the QuoteCollateralV3 JSON"):
        verifier.verify(evidence, collateral=None, at=at)
    with pytest.raises(CollateralError, match="not valid JSON"):
        verifier.verify(evidence, collateral=b"\xff{", at=at)
    with pytest.raises(CollateralError, match="expected a JSON object, got list"):
        verifier.verify(evidence, collateral=b"[]", at=at)


def test_naive_time_is_refused() -> None:
    evidence, collateral, verifier, at = vector("sgx_quote")
    with pytest.raises(ConfigError, match="timezone-aware"):
        verifier.verify(evidence, collateral=collateral, at=at.replace(tzinfo=None))


def test_constructor_arguments() -> None:
    with pytest.raises(ConfigError, match="sgx-dcap or tdx-dcap"):
        IntelVerifier(EvidenceType.SNP)
    with pytest.raises(ConfigError, match="root_ca_der"):
        IntelVerifier(EvidenceType.SGX, root_ca_der=b"not a certificate")
    assert IntelVerifier(EvidenceType.TDX).evidence_type is EvidenceType.TDX


# --- a synthetic Intel-like PKI -----------------------------------------------------------

AT = datetime(2030, 1, 1, tzinfo=UTC)
ISSUED = AT - timedelta(days=10)
NEXT = AT + timedelta(days=20)
QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
FMSPC = "00906ED50000"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    cn: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer_cn: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
    extensions: tuple[x509.ExtensionType, ...] = (),
    not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC),
) -> x509.Certificate:
    return certificate(
        _name(cn),
        _name(issuer_cn),
        public_key,
        issuer_key,
        serial=serial,
        ca=ca,
        extensions=extensions,
        not_after=not_after,
    )


def _raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _entry(suffix: str, value: bytes) -> bytes:
    return tlv(0x30, oid(f"{SGX_EXTENSION_OID}.{suffix}") + value)


def sgx_extension(components: tuple[int, ...], pce_svn: int, fmspc: str, pce_id: str) -> bytes:
    tcb = b"".join(_entry(f"2.{i + 1}", integer(svn)) for i, svn in enumerate(components))
    tcb += _entry("2.17", integer(pce_svn)) + _entry("2.18", tlv(0x04, bytes(components)))
    return tlv(
        0x30,
        _entry("1", tlv(0x04, b"\x42" * 16))
        + _entry("2", tlv(0x30, tcb))
        + _entry("3", tlv(0x04, bytes.fromhex(pce_id)))
        + _entry("4", tlv(0x04, bytes.fromhex(fmspc)))
        + _entry("5", integer(0, tag=0x0A)),
    )


@dataclass(frozen=True)
class Pki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb: x509.Certificate


@functools.cache
def pki() -> Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(
        "Intel SGX Root CA", root_key.public_key(), "Intel SGX Root CA", root_key, ca=True, serial=1
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(
        "Intel SGX PCK Platform CA",
        ca_key.public_key(),
        "Intel SGX Root CA",
        root_key,
        ca=True,
        serial=2,
    )
    tcb_key = ec.generate_private_key(ec.SECP256R1())
    tcb = _cert(
        "Intel SGX TCB Signing",
        tcb_key.public_key(),
        "Intel SGX Root CA",
        root_key,
        ca=False,
        serial=3,
    )
    return Pki(root_key, root, ca_key, ca, tcb_key, tcb)


def level(
    sgx: tuple[int, ...],
    pce_svn: int,
    status: str = "UpToDate",
    advisories: tuple[str, ...] = (),
    tdx: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    tcb: dict[str, Any] = {
        "sgxtcbcomponents": [{"svn": s} for s in sgx + (0,) * (16 - len(sgx))],
        "pcesvn": pce_svn,
    }
    if tdx is not None:
        tcb["tdxtcbcomponents"] = [{"svn": s} for s in tdx + (0,) * (16 - len(tdx))]
    out: dict[str, Any] = {"tcb": tcb, "tcbDate": "2029-01-01T00:00:00Z", "tcbStatus": status}
    if advisories:
        out["advisoryIDs"] = list(advisories)
    return out


def module_identity(
    ident: str, levels: list[tuple[int, str, tuple[str, ...]]], mrsigner: bytes = bytes(48)
) -> dict[str, Any]:
    return {
        "id": ident,
        "mrsigner": mrsigner.hex().upper(),
        "attributes": "0000000000000000",
        "attributesMask": "FFFFFFFFFFFFFFFF",
        "tcbLevels": [
            {
                "tcb": {"isvsvn": svn},
                "tcbDate": "2029-01-01T00:00:00Z",
                "tcbStatus": status,
                **({"advisoryIDs": list(adv)} if adv else {}),
            }
            for svn, status, adv in levels
        ],
    }


def _v2(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k != "id"}
    out["version"] = 2
    out["tcbLevels"] = []
    for lvl in doc["tcbLevels"]:
        tcb = {
            f"sgxtcbcomp{i + 1:02d}svn": c["svn"]
            for i, c in enumerate(lvl["tcb"]["sgxtcbcomponents"])
        }
        tcb["pcesvn"] = lvl["tcb"]["pcesvn"]
        out["tcbLevels"].append({**lvl, "tcb": tcb})
    return out


@dataclass
class Synth:
    """One platform and its quote and collateral; fields say what to vary."""

    tee: str = "sgx"  # "sgx" (v3), "tdx" (v4), "tdx15" (v5 body type 3), "tdx10v5"
    components: tuple[int, ...] = (5, 5, 2, 2, 3, 1, 0, 5) + (0,) * 8
    pce_svn: int = 10
    pck_fmspc: str = FMSPC
    tcb_fmspc: str = FMSPC
    pck_pce_id: str = "0000"
    tcb_pce_id: str = "0000"
    tcb_levels: list[dict[str, Any]] | None = None
    tcb_version: int = 3
    tcb_id: str | None = None
    tee_tcb_svn: bytes = bytes([4, 1, 3]) + bytes(13)
    tee_tcb_svn2: bytes = bytes(16)
    mr_signer_seam: bytes = bytes(48)
    tdx_module: dict[str, Any] | None = None
    module_identities: list[dict[str, Any]] | None = None
    qe_svn: int = 8
    qe_prod_id: int | None = None
    qe_id: str | None = None
    qe_mrsigner: bytes = QE_MRSIGNER
    qe_levels: list[tuple[int, str, tuple[str, ...]]] = field(
        default_factory=lambda: [(8, "UpToDate", ()), (6, "OutOfDate", ("INTEL-SA-00615",))]
    )
    debug: bool = False
    pck_serial: int = 0x1234
    pck_cn: str = "Intel SGX PCK Certificate"
    pck_not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC)
    pck_extension: bool = True
    pck_cert_type: int = 5
    pck_crl_revoked: tuple[int, ...] = ()
    root_crl_revoked: tuple[int, ...] = ()
    tcb_signed_by_pck: bool = False
    tcb_next_update: datetime = NEXT

    @property
    def is_tdx(self) -> bool:
        return self.tee != "sgx"

    def _levels(self) -> list[dict[str, Any]]:
        if self.tcb_levels is not None:
            return self.tcb_levels
        tdx = (4, 1, 3) if self.is_tdx else None
        older = (3, 1, 2) if self.is_tdx else None
        return [
            level(self.components[:8], 10, "UpToDate", tdx=tdx),
            level((4, 4, 2, 2, 3, 1, 0, 5), 9, "OutOfDate", ("INTEL-SA-00001",), tdx=older),
        ]

    def tcb_info(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.tcb_id or ("TDX" if self.is_tdx else "SGX"),
            "version": 3,
            "issueDate": ISSUED.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nextUpdate": self.tcb_next_update.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fmspc": self.tcb_fmspc,
            "pceId": self.tcb_pce_id,
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
        }
        if doc["id"] == "TDX":
            doc["tdxModule"] = self.tdx_module or {
                "mrsigner": "00" * 48,
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            }
            identities = self.module_identities
            if identities is None:
                identities = [
                    module_identity(
                        "TDX_01", [(4, "UpToDate", ()), (2, "OutOfDate", ("INTEL-SA-00099",))]
                    )
                ]
            if identities:
                doc["tdxModuleIdentities"] = identities
        doc["tcbLevels"] = self._levels()
        return _v2(doc) if self.tcb_version == 2 else doc

    def qe_identity(self) -> dict[str, Any]:
        return {
            "id": self.qe_id or ("TD_QE" if self.is_tdx else "QE"),
            "version": 2,
            "issueDate": ISSUED.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nextUpdate": NEXT.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": 2 if self.is_tdx else 1,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": svn},
                    "tcbDate": "2029-01-01T00:00:00Z",
                    "tcbStatus": status,
                    **({"advisoryIDs": list(adv)} if adv else {}),
                }
                for svn, status, adv in self.qe_levels
            ],
        }

    def body(self) -> bytes:
        if not self.is_tdx:
            raw = bytearray(384)
            raw[48] = 0x07 if self.debug else 0x05
            raw[64:96] = b"E" * 32  # mrenclave
            raw[128:160] = b"S" * 32  # mrsigner
            struct.pack_into("<HH", raw, 256, 3, 7)
            raw[320:384] = b"report data".ljust(64, b"\x00")
            return bytes(raw)
        raw = bytearray(648 if self.tee == "tdx15" else 584)
        raw[0:16] = self.tee_tcb_svn
        raw[16:64] = b"M" * 48  # mr_seam
        raw[64:112] = self.mr_signer_seam
        raw[120] = 0x01 if self.debug else 0x00
        raw[136:184] = b"T" * 48  # mr_td
        for i in range(4):
            raw[328 + 48 * i : 376 + 48 * i] = bytes([i + 1]) * 48
        raw[520:584] = b"td report data".ljust(64, b"\x00")
        if self.tee == "tdx15":
            raw[584:600] = self.tee_tcb_svn2
        return bytes(raw)

    def build(self) -> tuple[bytes, bytes]:
        p = pki()
        pck_key = ec.generate_private_key(ec.SECP256R1())
        extensions: tuple[x509.ExtensionType, ...] = ()
        if self.pck_extension:
            der = sgx_extension(self.components, self.pce_svn, self.pck_fmspc, self.pck_pce_id)
            extensions = (
                x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), der),
            )
        leaf = _cert(
            self.pck_cn,
            pck_key.public_key(),
            "Intel SGX PCK Platform CA",
            p.ca_key,
            ca=False,
            serial=self.pck_serial,
            extensions=extensions,
            not_after=self.pck_not_after,
        )
        chain = _pem(leaf, p.ca, p.root).encode() + b"\x00"

        att_key = ec.generate_private_key(ec.SECP256R1())
        numbers = att_key.public_key().public_numbers()
        att_raw = numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
        auth = bytes(range(32))
        qe = bytearray(384)
        qe[48] = 0x11
        qe[128:160] = self.qe_mrsigner
        default_prod = 2 if self.is_tdx else 1
        struct.pack_into("<HH", qe, 256, self.qe_prod_id or default_prod, self.qe_svn)
        qe[320:352] = hashlib.sha256(att_raw + auth).digest()
        qe_sig = _raw_sign(pck_key, bytes(qe))

        version = {"sgx": 3, "tdx": 4}.get(self.tee, 5)
        tee = 0x81 if self.is_tdx else 0
        header = struct.pack("<HHIHH16s20s", version, 2, tee, 0, 0, INTEL_QE_VENDOR_ID, b"u" * 20)
        body = self.body()
        if version == 5:
            header += struct.pack("<HI", 3 if self.tee == "tdx15" else 2, len(body))
        signed = header + body
        cert = struct.pack("<HI", self.pck_cert_type, len(chain)) + chain
        qe_part = bytes(qe) + qe_sig + struct.pack("<H", len(auth)) + auth
        if version == 3:
            rest = qe_part + cert
        else:
            inner = qe_part + cert
            rest = struct.pack("<HI", 6, len(inner)) + inner
        sig_data = _raw_sign(att_key, signed) + att_raw + rest
        evidence = signed + struct.pack("<I", len(sig_data)) + sig_data

        tcb_text = json.dumps(self.tcb_info(), separators=(",", ":"))
        qe_text = json.dumps(self.qe_identity(), separators=(",", ":"))
        signer_key, signer_chain = p.tcb_key, _pem(p.tcb, p.root)
        if self.tcb_signed_by_pck:
            signer_key, signer_chain = pck_key, _pem(leaf, p.ca, p.root)
        collateral = {
            "pck_crl_issuer_chain": _pem(p.ca, p.root),
            "root_ca_crl": _crl(p.root_key, "Intel SGX Root CA", self.root_crl_revoked).hex(),
            "pck_crl": _crl(p.ca_key, "Intel SGX PCK Platform CA", self.pck_crl_revoked).hex(),
            "tcb_info_issuer_chain": signer_chain,
            "tcb_info": tcb_text,
            "tcb_info_signature": _raw_sign(signer_key, tcb_text.encode()).hex(),
            "qe_identity_issuer_chain": _pem(p.tcb, p.root),
            "qe_identity": qe_text,
            "qe_identity_signature": _raw_sign(p.tcb_key, qe_text.encode()).hex(),
        }
        if self.pck_cert_type != 5:
            collateral["pck_certificate_chain"] = _pem(leaf, p.ca, p.root)
        return evidence, json.dumps(collateral).encode()

    def verify(self, at: datetime = AT) -> Any:
        evidence, collateral = self.build()
        kind = EvidenceType.TDX if self.is_tdx else EvidenceType.SGX
        verifier = IntelVerifier(
            kind, root_ca_der=pki().root.public_bytes(serialization.Encoding.DER)
        )
        return verifier.verify(evidence, collateral=collateral, at=at)


def _crl(key: ec.EllipticCurvePrivateKey, issuer: str, revoked: tuple[int, ...]) -> bytes:
    revocations = crl(
        _name(issuer),
        key,
        last_update=ISSUED,
        next_update=NEXT + timedelta(days=300),
        revoked=revoked,
    )
    return revocations.public_bytes(serialization.Encoding.DER)


def test_synthetic_sgx_up_to_date() -> None:
    verified = Synth().verify()
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.advisory_ids == ()
    claims = verified.claims
    assert (claims.mrenclave, claims.mrsigner) == (b"E" * 32, b"S" * 32)
    assert (claims.isv_prod_id, claims.isv_svn, claims.debug) == (3, 7, False)
    assert claims.extra["fmspc"] == FMSPC.lower()
    assert claims.extra["pce_svn"] == 10
    assert verified.collateral_expires == NEXT
    assert verified.collateral_issued == ISSUED


def test_synthetic_tcb_info_v2() -> None:
    older = Synth(components=(4, 4, 2, 2, 3, 1, 0, 5) + (0,) * 8, pce_svn=9, tcb_version=2)
    verified = older.verify()
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.advisory_ids == ("INTEL-SA-00001",)
    assert verified.claims.extra["platform_tcb_status"] == "OutOfDate"


def test_synthetic_debug_claims() -> None:
    assert Synth(debug=True).verify().claims.debug is True
    assert Synth(tee="tdx", debug=True).verify().claims.debug is True


@pytest.mark.parametrize(
    ("platform", "qe_svn", "expected", "advisories"),
    [
        ("UpToDate", 8, TcbStatus.UP_TO_DATE, ("INTEL-SA-1",)),
        ("UpToDate", 7, TcbStatus.OUT_OF_DATE, ("INTEL-SA-1", "INTEL-SA-00615")),
        ("SWHardeningNeeded", 6, TcbStatus.OUT_OF_DATE, ("INTEL-SA-1", "INTEL-SA-00615")),
        (
            "ConfigurationNeeded",
            6,
            TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED,
            ("INTEL-SA-1", "INTEL-SA-00615"),
        ),
        (
            "ConfigurationAndSWHardeningNeeded",
            8,
            TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
            ("INTEL-SA-1",),
        ),
        ("OutOfDate", 6, TcbStatus.OUT_OF_DATE, ("INTEL-SA-1", "INTEL-SA-00615")),
        ("Revoked", 8, TcbStatus.REVOKED, ("INTEL-SA-1",)),
        ("UpToDate", 3, TcbStatus.REVOKED, ("INTEL-SA-1", "INTEL-SA-00615", "INTEL-SA-2")),
    ],
)
def test_qe_status_converges_like_qvl(
    platform: str, qe_svn: int, expected: TcbStatus, advisories: tuple[str, ...]
) -> None:
    synth = Synth(
        qe_svn=qe_svn,
        tcb_levels=[level((5, 5, 2, 2, 3, 1, 0, 5), 10, platform, ("INTEL-SA-1",))],
        qe_levels=[
            (8, "UpToDate", ()),
            (6, "OutOfDate", ("INTEL-SA-00615",)),
            (3, "Revoked", ("INTEL-SA-00615", "INTEL-SA-2")),
        ],
    )
    verified = synth.verify()
    assert verified.tcb_status is expected
    assert verified.advisory_ids == advisories


def test_qe_svn_below_every_level() -> None:
    with pytest.raises(TcbLevelNotFoundError, match="QE report: ISVSVN 5 is below every"):
        Synth(qe_svn=5).verify()


def test_components_compare_one_by_one() -> None:
    # (5, 3, ...) is lexicographically above (4, 4, ...) but its second component is lower.
    synth = Synth(
        components=(5, 3, 2, 2, 3, 1, 0, 5) + (0,) * 8,
        tcb_levels=[
            level((4, 4, 2, 2, 3, 1, 0, 5), 10, "UpToDate"),
            level((4, 3, 2, 2, 3, 1, 0, 5), 11, "SWHardeningNeeded", ("A",)),
            level((4, 3, 2, 2, 3, 1, 0, 5), 10, "OutOfDate", ("B",)),
        ],
    )
    verified = synth.verify()
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.advisory_ids == ("B",)


def test_no_tcb_level() -> None:
    synth = Synth(components=(1,) * 16, tcb_levels=[level((5, 5, 2, 2, 3, 1, 0, 5), 10)])
    with pytest.raises(TcbLevelNotFoundError, match=r"SGX components \[1, 1,"):
        synth.verify()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tcb_fmspc": "00906ED50001"}, "fmspc 00906ED50001 is not the PCK certificate's"),
        ({"tcb_pce_id": "0001"}, "pceId 0001 is not the PCK certificate's"),
        (
            {"tcb_id": "TDX", "tcb_levels": [level((5, 5, 2, 2, 3, 1, 0, 5), 10, tdx=(4, 1, 3))]},
            "SGX quote needs SGX TCB info",
        ),
        ({"tee": "tdx", "tcb_id": "SGX"}, "TDX quote needs TDX TCB info v3"),
        ({"qe_id": "TD_QE"}, "is not the QE identity"),
        ({"tee": "tdx", "qe_id": "QE"}, "is not the TD_QE identity"),
        ({"tee": "tdx", "module_identities": []}, "'tdxModuleIdentities' is missing"),
    ],
)
def test_collateral_mismatch(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(CollateralError, match=match) as exc:
        Synth(**changes).verify()
    assert type(exc.value) is CollateralError


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"qe_mrsigner": b"\x01" * 32}, "QE report MRSIGNER"),
        ({"qe_prod_id": 9}, "QE report ISVPRODID 9"),
        ({"tee": "tdx", "mr_signer_seam": b"\x01" * 48}, "MRSIGNER_SEAM"),
    ],
)
def test_identity_mismatch(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(EvidenceBindingError, match=match):
        Synth(**changes).verify()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"pck_crl_revoked": (0x1234,)}, "serial 0x1234 is revoked"),
        ({"root_crl_revoked": (2,)}, "'Intel SGX PCK Platform CA' serial 0x2 is revoked"),
        ({"root_crl_revoked": (3,)}, "'Intel SGX TCB Signing' serial 0x3 is revoked"),
        ({"tcb_signed_by_pck": True}, "is not the Intel SGX TCB Signing certificate"),
        ({"pck_not_after": AT - timedelta(days=1)}, "'Intel SGX PCK Certificate' expired"),
        ({"pck_extension": False}, "has no SGX extension"),
        ({"pck_cn": "Intel SGX TCB Signing"}, "is not an SGX PCK Certificate"),
    ],
)
def test_certificate_problems(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(CertificateChainError, match=match):
        Synth(**changes).verify()


def test_expired_tcb_info_names_item_and_date() -> None:
    synth = Synth(tcb_next_update=AT - timedelta(hours=1))
    with pytest.raises(CollateralExpiredError, match=r"tcb_info: expired .*\(nextUpdate 2029-12"):
        synth.verify()


def test_pck_chain_from_collateral_when_quote_has_none() -> None:
    assert Synth(pck_cert_type=3).verify().tcb_status is TcbStatus.UP_TO_DATE
    evidence, collateral = Synth(pck_cert_type=3).build()
    doc = json.loads(collateral)
    del doc["pck_certificate_chain"]
    verifier = IntelVerifier(
        EvidenceType.SGX, root_ca_der=pki().root.public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(UnsupportedEvidenceError, match="certification data type 3"):
        verifier.verify(evidence, collateral=json.dumps(doc).encode(), at=AT)


def test_tdx_v4_module_identity() -> None:
    verified = Synth(tee="tdx").verify()
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    claims = verified.claims
    assert claims.evidence_type is EvidenceType.TDX
    assert claims.mrtd == b"T" * 48
    assert claims.rtmrs == tuple(bytes([i]) * 48 for i in (1, 2, 3, 4))
    assert claims.mr_seam == b"M" * 48
    assert "td_relaunch_advised" not in claims.extra


def test_tdx_module_out_of_date() -> None:
    verified = Synth(tee="tdx", tee_tcb_svn=bytes([3, 1, 3]) + bytes(13)).verify()
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.advisory_ids == ("INTEL-SA-00099",)


def test_tdx_module_svn_below_every_level() -> None:
    with pytest.raises(TcbLevelNotFoundError, match="TDX module TDX_01: ISVSVN 1"):
        Synth(tee="tdx", tee_tcb_svn=bytes([1, 1, 3]) + bytes(13)).verify()


def test_tdx_module_identity_missing() -> None:
    with pytest.raises(TcbLevelNotFoundError, match="no TDX module identity TDX_02"):
        Synth(tee="tdx", tee_tcb_svn=bytes([4, 2, 3]) + bytes(13)).verify()


def test_tdx_components_skip_module_bytes_when_versioned() -> None:
    # With TEE_TCB_SVN[1] > 0, bytes 0-1 belong to the module identity check.
    levels = [level((5, 5, 2, 2, 3, 1, 0, 5), 10, "UpToDate", tdx=(99, 99, 3))]
    assert Synth(tee="tdx", tcb_levels=levels).verify().tcb_status is TcbStatus.UP_TO_DATE
    # Unversioned module (TEE_TCB_SVN[1] == 0): every byte counts, tdxModule applies.
    unversioned = Synth(tee="tdx", tcb_levels=levels, tee_tcb_svn=bytes([4, 0, 3]) + bytes(13))
    with pytest.raises(TcbLevelNotFoundError, match="TEE_TCB_SVN 04000300"):
        unversioned.verify()
    levels = [level((5, 5, 2, 2, 3, 1, 0, 5), 10, "UpToDate", tdx=(4, 0, 3))]
    ok = Synth(tee="tdx", tcb_levels=levels, tee_tcb_svn=bytes([4, 0, 3]) + bytes(13))
    assert ok.verify().tcb_status is TcbStatus.UP_TO_DATE


def test_tdx_sgx_level_matches_but_tdx_level_does_not() -> None:
    synth = Synth(tee="tdx", tee_tcb_svn=bytes([4, 1, 1]) + bytes(13))
    with pytest.raises(TcbLevelNotFoundError, match="TEE_TCB_SVN 040101"):
        synth.verify()


def test_tdx_v5_body_types() -> None:
    v5_10 = Synth(tee="tdx10v5").verify()
    assert v5_10.tcb_status is TcbStatus.UP_TO_DATE
    assert v5_10.claims.extra["quote_version"] == 5
    v5_15 = Synth(tee="tdx15").verify()
    assert v5_15.tcb_status is TcbStatus.UP_TO_DATE
    assert v5_15.claims.extra["mr_servicetd"] == "00" * 48
    assert v5_15.claims.extra["td_relaunch_advised"] is False


def test_tdx15_relaunch_advised() -> None:
    # The TD runs on module SVN 3 (OutOfDate); the platform has SVN 4 loaded (TEE_TCB_SVN2).
    synth = Synth(
        tee="tdx15",
        tee_tcb_svn=bytes([3, 1, 3]) + bytes(13),
        tee_tcb_svn2=bytes([4, 1, 3]) + bytes(13),
    )
    verified = synth.verify()
    assert verified.tcb_status is TcbStatus.OUT_OF_DATE
    assert verified.claims.extra["td_relaunch_advised"] is True
    stale = dataclasses.replace(synth, tee_tcb_svn2=bytes([3, 1, 3]) + bytes(13))
    assert stale.verify().claims.extra["td_relaunch_advised"] is False
