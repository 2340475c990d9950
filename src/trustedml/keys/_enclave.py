"""The enclave signing key: RSA-3072 with exponent 3, as SGX SIGSTRUCT requires."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# SGX SIGSTRUCT requires RSA-3072 with public exponent 3.
ENCLAVE_KEY_BITS = 3072
ENCLAVE_KEY_EXPONENT = 3


def generate_enclave_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=ENCLAVE_KEY_EXPONENT, key_size=3072)


def mrsigner(public_key: rsa.RSAPublicKey) -> str:
    """SGX MRSIGNER: SHA-256 of the modulus as 384 little-endian bytes."""
    modulus = public_key.public_numbers().n
    return hashlib.sha256(modulus.to_bytes(ENCLAVE_KEY_BITS // 8, "little")).hexdigest()


def enclave_private_pem(key: rsa.RSAPrivateKey) -> bytes:
    # Traditional OpenSSL PEM: the form gramine-sgx-sign loads.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
