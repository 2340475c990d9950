"""The shared X.509 helper: BIT STRINGs of whole octets, cryptography's exceptions
wrapped into AttestationError subclasses naming the field, on the Intel and AMD paths."""

from __future__ import annotations

import base64
import functools
import json
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.attestation.builders import certificate, crl
from tests.attestation.test_corruption import canonical_pem, case, replace_pck_pem
from trustedml.attestation import _x509
from trustedml.errors import (
    AttestationError,
    CertificateChainError,
    CollateralError,
    EvidenceFormatError,
)
from trustedml.hazmat.attestation import der as _der
from trustedml.hazmat.attestation.intel import parse_quote

AMD_AT = datetime(2023, 1, 1, tzinfo=UTC)


@functools.cache
def pck_chain(name: str = "sgx_quote") -> list[bytes]:
    pem = parse_quote(case(name)[0]).signature_data.pck_certification_data.data
    return [
        c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pem)
    ]


def signature_bit_string(der: bytes) -> int:
    """Offset of the unused-bits octet of the signature BIT STRING (the last element)."""
    outer, _ = _der.read_tlv(der, 0, "test")
    header = len(der) - len(outer.value)
    pos = header
    for _ in range(2):
        _, pos = _der.read_tlv(der, pos, "test")
    tag = der[pos]
    assert tag == _der.BIT_STRING
    length_octets = 1 if der[pos + 1] < 0x80 else 1 + (der[pos + 1] & 0x7F)
    return pos + 1 + length_octets


def with_unused_bits(der: bytes, offset: int, count: int) -> bytes:
    out = bytearray(der)
    assert out[offset] == 0
    out[offset] = count
    return bytes(out)


# --- BIT STRING ---------------------------------------------------------------------


def test_octet_aligned_bit_string() -> None:
    assert _der.decode_octet_aligned_bit_string(b"\x00\xab\xcd", "key") == b"\xab\xcd"
    assert _der.decode_octet_aligned_bit_string(b"\x00", "key") == b""
    with pytest.raises(EvidenceFormatError, match="key: BIT STRING of whole octets: expected 0 "):
        _der.decode_octet_aligned_bit_string(b"\x01\xab\xce", "key")
    with pytest.raises(EvidenceFormatError, match="empty BIT STRING"):
        _der.decode_octet_aligned_bit_string(b"", "key")


def test_signature_with_unused_bits_is_refused_though_cryptography_takes_it() -> None:
    leaf, issuer = pck_chain()[:2]
    # The real leaf's signature ends in an even octet: 1 unused (zero) bit is a second
    # encoding of the same signature, and pyca/cryptography verifies it.
    assert leaf[-1] % 2 == 0
    malleable = with_unused_bits(leaf, signature_bit_string(leaf), 1)
    parent = x509.load_der_x509_certificate(issuer)
    x509.load_der_x509_certificate(malleable).verify_directly_issued_by(parent)
    with pytest.raises(CertificateChainError, match="expected 0 unused bits, got 1"):
        _x509.load_der_certificate(malleable, "leaf", CertificateChainError)
    # Through the verifier: the quote is otherwise untouched.
    evidence, collateral, verifier, at = case("sgx_quote")
    real = parse_quote(evidence).signature_data.pck_certification_data.data
    chain = canonical_pem(malleable) + "".join(canonical_pem(d) for d in pck_chain()[1:])
    tampered = replace_pck_pem("sgx_quote", chain.encode() + real[len(real.rstrip(b"\0")) :])
    with pytest.raises(CertificateChainError) as info:
        verifier.verify(tampered, collateral=collateral, at=at)
    assert str(info.value).startswith(
        "PCK certificate chain in the certification data: certificate 1: not a valid "
        "certificate: malformed DER: signature: BIT STRING of whole octets: expected 0 "
        "unused bits, got 1"
    )


def _spki_bit_string(der: bytes) -> int:
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = der.index(spki)
    inner, _ = _der.read_tlv(spki, 0, "spki")
    algorithm_end = _der.read_tlv(spki, len(spki) - len(inner.value), "alg")[1]
    bit_string = head + algorithm_end
    assert der[bit_string] == _der.BIT_STRING
    return bit_string + 2  # short-form length: a P-256 key is 66 octets


def test_public_key_with_unused_bits_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    while key.public_key().public_numbers().y % 2:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime(2025, 1, 1, tzinfo=UTC)
    der = certificate(
        name, name, key.public_key(), key, serial=5, not_before=now, not_after=now + timedelta(1)
    ).public_bytes(serialization.Encoding.DER)
    _x509.load_der_certificate(der, "test", CollateralError)
    bad = with_unused_bits(der, _spki_bit_string(der), 3)
    with pytest.raises(CollateralError, match="public key: BIT STRING of whole octets"):
        _x509.load_der_certificate(bad, "test", CollateralError)


def even_crl() -> bytes:
    """A CRL signed by a fresh P-256 key whose signature ends in an even octet (ECDSA
    signatures are random: sign until one does)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX Root CA")])
    now = datetime(2025, 1, 1, tzinfo=UTC)
    while True:
        revocations = crl(name, key, last_update=now, next_update=now + timedelta(days=30))
        der = revocations.public_bytes(serialization.Encoding.DER)
        if der[-1] % 2 == 0:
            return der


def test_crl_signature_with_unused_bits_is_refused() -> None:
    crl = even_crl()
    _x509.load_crl(crl, "root_ca_crl", CollateralError)
    bad = with_unused_bits(crl, signature_bit_string(crl), 1)
    x509.load_der_x509_crl(bad)  # cryptography takes it
    with pytest.raises(CollateralError, match="root_ca_crl: not a valid CRL: malformed DER"):
        _x509.load_crl(bad, "root_ca_crl", CollateralError)
    evidence, collateral_bytes, verifier, at = case("sgx_quote")
    collateral = json.loads(collateral_bytes)
    collateral["root_ca_crl"] = bad.hex()
    with pytest.raises(CollateralError, match="collateral root_ca_crl: not a valid CRL"):
        verifier.verify(evidence, collateral=json.dumps(collateral).encode(), at=at)


def test_amd_vcek_with_unused_bits_is_refused() -> None:
    from tests.attestation.test_amd import _genoa, fake_chain

    report, vcek = _genoa()
    while vcek[-1] % 2:  # RSA-PSS signatures are salted: sign until one ends even
        report, vcek = _genoa()
    assert fake_chain("Genoa").verifier.verify(report, collateral=vcek, at=AMD_AT)
    bad = with_unused_bits(vcek, signature_bit_string(vcek), 1)
    with pytest.raises(CollateralError, match="expected 0 unused bits, got 1"):
        fake_chain("Genoa").verifier.verify(report, collateral=bad, at=AMD_AT)


# --- cryptography's own exceptions, as the attacker's review met them ---------------------

# (quote, bit of the quote file to flip, what cryptography raises on the changed
# certificate): found by flipping every bit of the certification data.
FOREIGN = [
    ("sgx_quote", 8773, x509.InvalidVersion),
    ("sgx_quote", 10873, ValueError),
    ("sgx_quote", 25083, UnsupportedAlgorithm),
    ("tdx_quote", 36384, x509.DuplicateExtension),
]


def _touch(cert: x509.Certificate) -> None:
    _ = (cert.version, cert.subject, cert.issuer, cert.extensions)
    cert.public_key()


@pytest.mark.parametrize(("name", "bit", "raised"), FOREIGN)
def test_what_cryptography_raises_becomes_a_chain_error(
    name: str, bit: int, raised: type[Exception]
) -> None:
    evidence, collateral, verifier, at = case(name)
    changed = bytearray(evidence)
    changed[bit // 8] ^= 1 << (bit % 8)
    pem = parse_quote(bytes(changed)).signature_data.pck_certification_data.data
    with pytest.raises(raised), warnings.catch_warnings():  # noqa: PT012
        warnings.simplefilter("ignore")
        for cert in x509.load_pem_x509_certificates(pem):
            _touch(cert)
    with pytest.raises(AttestationError) as info:
        verifier.verify(bytes(changed), collateral=collateral, at=at)
    assert type(info.value) is CertificateChainError
    # A bad public key is met when the chain is checked; the rest when loading.
    assert str(info.value).startswith("PCK certificate chain")


# --- one helper for both vendors -------------------------------------------------------------


def test_intel_and_amd_modules_keep_no_certificate_helpers_of_their_own() -> None:
    from trustedml.attestation import _amd, _amd_collateral, _intel, _intel_chain, _intel_tcb

    for module in (_intel, _intel_chain, _intel_tcb, _amd, _amd_collateral):
        source = Path(module.__file__ or "").read_text()
        for call in (
            "load_pem_x509_certificates",
            "load_der_x509_certificate",
            "load_pem_x509_crl",
            "load_der_x509_crl",
            "verify_directly_issued_by",
            "is_signature_valid",
            "catch_warnings",
            "encode_dss_signature",
            "InvalidSignature",
            "resources.files",
            "def _cn(",
            "def _check_window(",
            "def _load_crl(",
        ):
            assert call not in source, f"{module.__name__} calls {call} itself"


def wide_pem(der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = b"\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def test_strict_pem_names_the_block_and_the_problem() -> None:
    leaf = pck_chain()[0]
    good = canonical_pem(leaf).encode()
    assert _x509.load_pem_certificates(good, "chain", CertificateChainError, strict=True)
    cases = {
        b" "
        + good: "chain: certificate 1: expected a line '-----BEGIN CERTIFICATE-----' at byte 0",
        good.replace(b"\n", b"\r\n", 1): "chain: certificate 1: expected a line",
        good[:-1] + b" ": "chain: certificate 1: expected a newline after the END line",
        good + b"\x00\x00": "chain: certificate 2: expected a line",
        good.replace(b"\n", b"", 2): "chain: certificate 1: expected a line",
        wide_pem(leaf): "chain: certificate 1: not canonical PEM",
        b"": "chain: no PEM certificate",
    }
    for data, message in cases.items():
        with pytest.raises(CertificateChainError) as info:
            _x509.load_pem_certificates(data, "chain", CertificateChainError, strict=True)
        assert str(info.value).startswith(message), (data[:40], str(info.value))
    # Lenient mode (operators' SEV-SNP files) ignores text around blocks.
    assert _x509.load_pem_certificates(b"note\n" + good + b"\n\n", "vcek", CollateralError)
