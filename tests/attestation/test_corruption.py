"""Corrupted certificates and CRLs in otherwise well-formed Intel evidence: every
single-bit flip of the certification data of the dcap-qvl SGX and TDX quotes, a seeded
sample of bit flips in the collateral's certificates and CRLs, and garbage
certificates and CRLs put in their place. The verifier must raise an AttestationError
subclass (nothing else: no ValueError, UnsupportedAlgorithm, DuplicateExtension...)
and must never accept."""

from __future__ import annotations

import base64
import functools
import json
import random
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.attestation.builders import SigningKey, certificate, crl
from trustedml.attestation._intel import IntelVerifier
from trustedml.attestation._model import EvidenceType
from trustedml.errors import AttestationError
from trustedml.hazmat.attestation.intel import parse_quote

VECTORS = Path(__file__).parent / "vectors" / "dcap-qvl"
KAT = json.loads((Path(__file__).parent / "vectors" / "intel_dcap.json").read_text())
QUOTES = ("sgx_quote", "tdx_quote")
CHAIN_KEYS = ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain")
CRL_KEYS = ("root_ca_crl", "pck_crl")
SEED = 20250704
COLLATERAL_FLIPS = 1500  # per quote


@functools.cache
def case(name: str) -> tuple[bytes, bytes, IntelVerifier, datetime]:
    exp = KAT[name]
    return (
        (VECTORS / name).read_bytes(),
        (VECTORS / exp["collateral"]).read_bytes(),
        IntelVerifier(EvidenceType(exp["evidence_type"])),
        datetime.fromisoformat(exp["verify_at"]),
    )


def refused(name: str, evidence: bytes, collateral: bytes | None = None) -> str:
    """Verify; return the error class name. Fails the test on acceptance or on any
    exception outside the AttestationError tree."""
    _, good_collateral, verifier, at = case(name)
    try:
        verifier.verify(evidence, collateral=collateral or good_collateral, at=at)
    except AttestationError as exc:
        return type(exc).__name__
    raise AssertionError(f"{name}: corrupted evidence or collateral verified")


def pem_region(name: str) -> tuple[int, int]:
    """(start, end) of the certification data: from the first certification data
    header (type 6 for TDX, else type 5) to the end of the PEM chain."""
    evidence = case(name)[0]
    quote = parse_quote(evidence)
    data = quote.signature_data.pck_certification_data.data
    start = evidence.index(data)
    headers = 6 if quote.version == 3 else 6 + 384 + 64 + 2 + 32 + 6
    # v3: type u16 + size u32 before the PEM; v4: the type 6 header, the QE report,
    # its signature, the auth data (u16 size + 32 bytes here), then the type 5 header.
    region_start = start - 6 if quote.version == 3 else quote_sig_data(evidence) + 128
    assert region_start <= start - 6
    assert start - region_start <= headers
    return region_start, start + len(data)


def quote_sig_data(evidence: bytes) -> int:
    return len(parse_quote(evidence).signed_bytes) + 4


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_the_unmodified_vectors_verify() -> None:
    for name in QUOTES:
        evidence, collateral, verifier, at = case(name)
        verifier.verify(evidence, collateral=collateral, at=at)


@pytest.mark.parametrize("name", QUOTES)
def test_every_bit_flip_in_the_certification_data(name: str) -> None:
    evidence = case(name)[0]
    start, end = pem_region(name)
    seen: dict[str, int] = {}
    for bit in range(start * 8, end * 8):
        kind = refused(name, flip(evidence, bit))
        seen[kind] = seen.get(kind, 0) + 1
    # Header flips are format errors; certificate flips chain errors.
    assert set(seen) <= {
        "CertificateChainError",
        "EvidenceFormatError",
        "UnsupportedEvidenceError",
        "EvidenceSignatureError",
        "EvidenceBindingError",
    }, seen
    assert seen["CertificateChainError"] > (end - start) * 8 // 2


# --- collateral: bit flips inside the DER of its certificates and CRLs ------------------


def canonical_pem(der: bytes, label: str = "CERTIFICATE") -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def chain_ders(pem: str) -> list[bytes]:
    return [
        c.public_bytes(serialization.Encoding.DER)
        for c in x509.load_pem_x509_certificates(pem.encode())
    ]


def collateral_targets(collateral: bytes) -> list[tuple[str, int, int]]:
    """(key, certificate index or -1 for a CRL, DER length) of every signed object."""
    doc = json.loads(collateral)
    out = [(key, -1, len(bytes.fromhex(doc[key]))) for key in CRL_KEYS]
    for key in CHAIN_KEYS:
        out += [(key, i, len(der)) for i, der in enumerate(chain_ders(doc[key]))]
    return out


def with_der(collateral: bytes, key: str, index: int, der: bytes) -> bytes:
    doc = json.loads(collateral)
    if index < 0:
        doc[key] = der.hex()
    else:
        ders = chain_ders(doc[key])
        ders[index] = der
        doc[key] = "".join(canonical_pem(d) for d in ders)
    return json.dumps(doc).encode()


def der_of(collateral: bytes, key: str, index: int) -> bytes:
    doc = json.loads(collateral)
    return bytes.fromhex(doc[key]) if index < 0 else chain_ders(doc[key])[index]


@pytest.mark.parametrize("name", QUOTES)
def test_sampled_bit_flips_in_the_collateral_certificates_and_crls(name: str) -> None:
    evidence, collateral, _, _ = case(name)
    targets = collateral_targets(collateral)
    total = sum(size for _, _, size in targets) * 8
    rng = random.Random(f"{SEED}-{name}")
    for bit in rng.sample(range(total), COLLATERAL_FLIPS):
        key, index, offset = locate(targets, bit)
        der = flip(der_of(collateral, key, index), offset)
        refused(name, evidence, with_der(collateral, key, index, der))


def locate(targets: list[tuple[str, int, int]], bit: int) -> tuple[str, int, int]:
    """Which object the bit falls in: (key, index, bit offset inside its DER)."""
    for key, index, size in targets:
        if bit < size * 8:
            return key, index, bit
        bit -= size * 8
    raise AssertionError("bit beyond the collateral")


@pytest.mark.parametrize("name", QUOTES)
def test_bit_flips_in_the_collateral_pem_text(name: str) -> None:
    evidence, collateral, _, _ = case(name)
    doc = json.loads(collateral)
    rng = random.Random(f"{SEED}-text-{name}")
    for key in CHAIN_KEYS:
        text = doc[key].encode()
        for bit in rng.sample(range(len(text) * 8), 100):
            changed = flip(text, bit).decode("latin-1")
            refused(name, evidence, json.dumps({**doc, key: changed}).encode())


# --- garbage certificates and CRLs in place of the real ones ----------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@functools.cache
def odd_certificates() -> tuple[bytes, ...]:
    """Well-formed certificates a verifier may choke on: RSA, Ed25519 and P-384 keys,
    Intel's names on a stranger's key, an absurd validity, no extensions."""
    now = datetime(2025, 7, 1, tzinfo=UTC)
    out = []
    keys: list[SigningKey] = [
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP256R1()),
    ]
    for key in keys:
        for cn in ("Intel SGX PCK Certificate", "Intel SGX TCB Signing", "Intel SGX Root CA"):
            cert = certificate(
                _name(cn),
                _name("Intel SGX Root CA"),
                key.public_key(),
                key,
                serial=1,
                ca=True,
                not_before=now - timedelta(days=1),
                not_after=now + timedelta(days=365),
                rsa_pss=False,
            )
            out.append(cert.public_bytes(serialization.Encoding.DER))
    return tuple(out)


@functools.cache
def odd_crls() -> tuple[bytes, ...]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime(2025, 7, 1, tzinfo=UTC)
    revocations = crl(
        _name("Intel SGX Root CA"), key, last_update=now, next_update=now + timedelta(days=30)
    )
    return (revocations.public_bytes(serialization.Encoding.DER),)


def der_like(draw: st.DrawFn) -> bytes:
    # Random bytes, random DER-ish SEQUENCEs, or a real certificate with random edits.
    kind = draw(st.sampled_from(["bytes", "sequence", "mutated", "truncated", "odd"]))
    if kind == "bytes":
        return draw(st.binary(min_size=0, max_size=300))
    if kind == "sequence":
        body = draw(st.binary(min_size=0, max_size=200))
        return (
            b"\x30"
            + (bytes([len(body)]) if len(body) < 128 else b"\x81" + bytes([len(body)]))
            + body
        )
    real = der_of(case("sgx_quote")[1], "tcb_info_issuer_chain", 0)
    if kind == "truncated":
        return real[: draw(st.integers(0, len(real) - 1))]
    if kind == "odd":
        return draw(st.sampled_from(odd_certificates() + odd_crls()))
    edited = bytearray(real)
    for _ in range(draw(st.integers(1, 8))):
        edited[draw(st.integers(0, len(real) - 1))] = draw(st.integers(0, 255))
    return bytes(edited)


def replace_pck_pem(name: str, pem: bytes) -> bytes:
    """The quote with its certification data PEM replaced, every size field fixed."""
    evidence = case(name)[0]
    quote = parse_quote(evidence)
    old = quote.signature_data.pck_certification_data.data
    start = evidence.index(old)
    delta = len(pem) - len(old)
    out = bytearray(evidence[:start] + pem + evidence[start + len(old) :])

    def bump(offset: int) -> None:
        struct.pack_into("<I", out, offset, struct.unpack_from("<I", out, offset)[0] + delta)

    bump(start - 4)  # type 5 size
    bump(len(quote.signed_bytes))  # signature data size
    if quote.version != 3:
        bump(quote_sig_data(evidence) + 128 + 2)  # type 6 size
    return bytes(out)


def test_replace_pck_pem_keeps_a_valid_quote() -> None:
    for name in QUOTES:
        pem = parse_quote(case(name)[0]).signature_data.pck_certification_data.data
        evidence, collateral, verifier, at = case(name)
        rebuilt = replace_pck_pem(name, pem + b"")
        assert rebuilt == evidence
        verifier.verify(replace_pck_pem(name, pem.rstrip(b"\0")), collateral=collateral, at=at)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(name=st.sampled_from(QUOTES), position=st.integers(0, 2), data=st.data())
def test_garbage_certificates_in_the_quote_chain(
    name: str, position: int, data: st.DataObject
) -> None:
    pem = parse_quote(case(name)[0]).signature_data.pck_certification_data.data
    ders = chain_ders(pem.rstrip(b"\0").decode())
    ders[position] = data.draw(st.composite(der_like)())
    chain = "".join(canonical_pem(d) for d in ders).encode() + b"\0"
    refused(name, replace_pck_pem(name, chain))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(name=st.sampled_from(QUOTES), data=st.data())
def test_garbage_certificates_and_crls_in_the_collateral(name: str, data: st.DataObject) -> None:
    evidence, collateral, _, _ = case(name)
    key, index, _ = data.draw(st.sampled_from(collateral_targets(collateral)))
    garbage = data.draw(st.composite(der_like)())
    refused(name, evidence, with_der(collateral, key, index, garbage))


def iter_text_garbage() -> Iterator[str]:
    yield ""
    yield "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
    yield "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    yield "-----BEGIN CERTIFICATE-----\nMIIB\n"
    yield "\x00" * 10
    yield "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"


@pytest.mark.parametrize("name", QUOTES)
def test_garbage_pem_text_in_the_collateral(name: str) -> None:
    evidence, collateral, _, _ = case(name)
    doc = json.loads(collateral)
    for key in (*CHAIN_KEYS, *CRL_KEYS):
        for text in iter_text_garbage():
            refused(name, evidence, json.dumps({**doc, key: text}).encode())
