"""What a broker needs to run: where its state is, its secrets and its limits."""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from trustedml._secret import Secret
from trustedml.broker._master import ADMIN_TOKEN_SECRET, MASTER_KEY_SECRET, MasterKey
from trustedml.errors import ConfigError
from trustedml.keys import KeyDirectory, SealedSecrets

KIB = 1024


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Settings of one key broker. ``repr`` never shows a secret.

    Build one from a key directory with :meth:`from_key_directory`.
    """

    db: str
    master_key: Secret = field(repr=False)
    admin_token: Secret = field(repr=False)
    tls_cert_chain: bytes = field(repr=False)  # server certificate then CA (PEM)
    tls_key: Secret = field(repr=False)  # server private key (PKCS#8 PEM)
    ca_cert: bytes = field(default=b"", repr=False)  # what clients trust (PEM)
    host: str = "127.0.0.1"
    port: int = 8443
    trusted_sim_keys: tuple[bytes, ...] = field(default=(), repr=False)
    challenge_ttl: float = 60.0
    token_ttl: float = 300.0
    challenge_rate: float = 20.0  # challenges per second per client address...
    challenge_burst: int = 100  # ...with bursts up to this many
    max_body: int = 16 * KIB
    max_attest_body: int = 512 * KIB
    max_admin_body: int = 64 * KIB
    max_outstanding_challenges: int = 100_000
    max_sessions: int = 100_000
    max_connections: int = 2048
    graceful_shutdown: float = 10.0
    json_logs: bool = False
    access_log: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected 0..65535, got {self.port}")
        for name in ("challenge_ttl", "token_ttl", "challenge_rate", "graceful_shutdown"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name}: expected a positive number, got {value}")
        for name in (
            "challenge_burst",
            "max_body",
            "max_attest_body",
            "max_admin_body",
            "max_outstanding_challenges",
            "max_sessions",
            "max_connections",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
        MasterKey(self.master_key)  # checks the size
        if len(self.admin_token) < 16:
            raise ConfigError("admin token: expected at least 16 bytes")
        for index, pem in enumerate(self.trusted_sim_keys):
            try:
                key = serialization.load_pem_public_key(pem)
            except (ValueError, TypeError):
                key = None
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"trusted sim key {index + 1}: expected a PEM Ed25519 public key")

    def replace(self, **changes: Any) -> BrokerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_key_directory(
        cls,
        keys: KeyDirectory,
        passphrase: Secret,
        *,
        db: str | os.PathLike[str],
        create_secrets: bool = True,
        **options: Any,
    ) -> BrokerConfig:
        """Unseal ``keys`` and take the TLS certificate and key, the broker master key
        and the admin token from it (creating the last two on first use when
        ``create_secrets``)."""
        opened = broker_secrets(keys, passphrase, create=create_secrets)
        return cls(
            db=os.fspath(db),
            master_key=opened[MASTER_KEY_SECRET],
            admin_token=opened[ADMIN_TOKEN_SECRET],
            tls_cert_chain=keys.server_cert.read_bytes(),
            tls_key=opened["tls_server_key"],
            ca_cert=keys.ca_cert.read_bytes(),
            **options,
        )


def broker_secrets(keys: KeyDirectory, passphrase: Secret, *, create: bool = True) -> SealedSecrets:
    """The opened vault of ``keys``, with the broker master key and admin token in it
    (created on first use when ``create``)."""
    opened = keys.unseal(passphrase)
    for name, make in (
        (MASTER_KEY_SECRET, MasterKey.generate),
        (ADMIN_TOKEN_SECRET, lambda: Secret(secrets.token_urlsafe(32))),
    ):
        if name not in opened:
            if not create:
                raise ConfigError(
                    f"{keys.path}: no broker secrets yet; start the broker once "
                    "(`trustedml broker serve`) to create them"
                )
            keys.add_secret(passphrase, name, make())
            opened = keys.unseal(passphrase)
    return opened


def read_trusted_sim_keys(paths: list[Path]) -> tuple[bytes, ...]:
    out = []
    for path in paths:
        try:
            out.append(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read sim public key {path}: {exc.strerror}") from exc
    return tuple(out)
