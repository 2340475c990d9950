"""Certificates and CRLs for the attestation tests, built with pyca/cryptography: one
builder each, so a test says only what is particular to it (names, keys, dates,
extensions, revoked serials)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
Hash = hashes.SHA256 | hashes.SHA384
# RSASSA-PSS as AMD signs: SHA-384, salt as long as the hash.
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2040, 1, 1, tzinfo=UTC)


def cn_name(cn: str) -> x509.Name:
    """A name that is only a common name."""
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])


def _sign(
    builder: x509.CertificateBuilder | x509.CertificateRevocationListBuilder,
    key: SigningKey,
    algorithm: Hash,
    rsa_pss: bool,
) -> x509.Certificate | x509.CertificateRevocationList:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)
    if isinstance(key, rsa.RSAPrivateKey) and rsa_pss:
        return builder.sign(key, algorithm, rsa_padding=PSS)
    return builder.sign(key, algorithm)


def _default_hash(key: SigningKey, rsa_pss: bool) -> Hash:
    return hashes.SHA384() if isinstance(key, rsa.RSAPrivateKey) and rsa_pss else hashes.SHA256()


def certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    signing_key: SigningKey,
    *,
    serial: int | None = None,
    ca: bool | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
    algorithm: Hash | None = None,
    rsa_pss: bool = True,
) -> x509.Certificate:
    """A certificate; ``ca`` adds a critical basicConstraints (None: none), an RSA
    key signs with PSS unless ``rsa_pss`` is false, and ``algorithm`` defaults to
    SHA-256 (SHA-384 for RSA with PSS, as AMD signs)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    cert = _sign(builder, signing_key, algorithm or _default_hash(signing_key, rsa_pss), rsa_pss)
    assert isinstance(cert, x509.Certificate)
    return cert


def crl(
    issuer: x509.Name,
    signing_key: SigningKey,
    *,
    last_update: datetime,
    next_update: datetime,
    revoked: Sequence[int] = (),
    revoked_at: datetime | None = None,
    algorithm: Hash | None = None,
) -> x509.CertificateRevocationList:
    """A CRL listing ``revoked`` serials (revoked at ``revoked_at``, default
    ``last_update``)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(last_update)
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(revoked_at or last_update)
            .build()
        )
    out = _sign(builder, signing_key, algorithm or _default_hash(signing_key, True), True)
    assert isinstance(out, x509.CertificateRevocationList)
    return out
