"""Load a TLS certificate chain and private key held in memory into an ssl context."""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from trustedml._fs import write_private
from trustedml._secret import Secret
from trustedml.errors import ConfigError


def load_tls_identity(ctx: ssl.SSLContext, cert_chain: bytes, key_pem: Secret) -> None:
    """Load ``cert_chain`` (PEM) and the unencrypted PEM ``key_pem`` into ``ctx``.

    ssl reads keys only from files, so the key is re-encrypted under a one-time password
    into an anonymous memory file (Linux memfd) or, elsewhere, a private temporary file
    removed at once: it never reaches a disk in the clear. Raises
    :class:`~trustedml.errors.ConfigError` naming what does not load."""
    password = secrets.token_bytes(32)
    try:
        key = serialization.load_pem_private_key(key_pem.reveal(), password=None)
    except (ValueError, TypeError):
        raise ConfigError("TLS key: not an unencrypted PEM private key") from None
    sealed = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    try:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("tml-tls-identity", os.MFD_CLOEXEC)
            try:
                os.write(fd, sealed + cert_chain)
                ctx.load_cert_chain(f"/proc/self/fd/{fd}", password=password)
            finally:
                os.close(fd)
        else:  # pragma: no cover - non-Linux
            with tempfile.TemporaryDirectory(prefix="tml-tls-") as tmp:
                path = Path(tmp, "identity.pem")
                write_private(path, sealed + cert_chain)
                ctx.load_cert_chain(path, password=password)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"TLS certificate or key cannot be loaded: {exc}") from exc
