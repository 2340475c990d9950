"""TLS material of a key directory: a private CA, server and client certificates, PKCS#12."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustedml._secret import Secret
from trustedml.errors import ConfigError

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
KEYSTORE_ALIAS = b"trustedml-server"
TRUSTSTORE_ALIAS = b"trustedml-ca"


@dataclass(frozen=True)
class TlsMaterial:
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    server_cert: x509.Certificate
    server_key: ec.EllipticCurvePrivateKey


def normalize_hosts(extra: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    hosts: list[str] = list(DEFAULT_HOSTS)
    for raw in extra:
        host = raw.strip()
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise ConfigError(f"--host: expected a DNS name or IP address, got {raw!r}")
        if host not in hosts:
            hosts.append(host)
    return tuple(hosts)


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trusted-ml"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*granted: str) -> x509.KeyUsage:
    """A KeyUsage extension allowing exactly the ``granted`` uses."""
    uses = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{use: use in granted for use in uses})


def generate_tls(hosts: tuple[str, ...], days: int, now: dt.datetime) -> TlsMaterial:
    if days < 1:
        raise ConfigError(f"certificate validity must be at least 1 day, got {days}")
    not_before = now - dt.timedelta(minutes=5)  # tolerate small clock skew between hosts
    not_after = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("trusted-ml local CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage("digital_signature", "key_cert_sign", "crl_sign"),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage("digital_signature", "key_agreement"),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsMaterial(ca_cert, ca_key, server_cert, server_key)


def _pkcs12_encryption(password: Secret) -> serialization.KeySerializationEncryption:
    # PBES2/AES-256 with an HMAC-SHA256 MAC: what Java 17's keytool and Spark read,
    # instead of the legacy RC2/3DES defaults.
    return (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(100_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.reveal())
    )


def keystore_bytes(material: TlsMaterial, password: Secret) -> bytes:
    return pkcs12.serialize_key_and_certificates(
        name=KEYSTORE_ALIAS,
        key=material.server_key,
        cert=material.server_cert,
        cas=[material.ca_cert],
        encryption_algorithm=_pkcs12_encryption(password),
    )


def truststore_bytes(ca_cert: x509.Certificate, password: Secret) -> bytes:
    # A cert-only PKCS12 from serialize_key_and_certificates reads as 0 entries in
    # Java; the Java truststore form marks the certificate as trusted.
    return pkcs12.serialize_java_truststore(
        [pkcs12.PKCS12Certificate(ca_cert, TRUSTSTORE_ALIAS)],
        _pkcs12_encryption(password),
    )


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
