"""The key directory: init, manifest, sealed vault, TLS stores and key-encryption keys."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustedml._fs import make_private_dir, write_private
from trustedml._secret import Secret
from trustedml._version import __version__
from trustedml.errors import KeyDirectoryError, KeyDirectoryExistsError
from trustedml.hazmat import sealing
from trustedml.hazmat.sealing import ScryptParams
from trustedml.keys import _enclave, _tls

MANIFEST_NAME = "keys.toml"
VAULT_NAME = "secrets.sealed"
MANIFEST_FORMAT = 1
VAULT_FORMAT = 1
MIN_PASSPHRASE_LENGTH = 8


class SecretName(StrEnum):
    """Names of the entries of a key directory's sealed vault."""

    SPARK_AUTH_SECRET = "spark_auth_secret"
    KEYSTORE_PASSWORD = "keystore_password"
    TRUSTSTORE_PASSWORD = "truststore_password"
    TLS_CA_KEY = "tls_ca_key"
    TLS_SERVER_KEY = "tls_server_key"
    ENCLAVE_SIGNING_KEY = "enclave_signing_key"


@dataclass(frozen=True)
class KeyManifest:
    """What a key directory holds and where (``keys.toml``); never a secret value."""

    created: str
    trustedml_version: str
    hosts: tuple[str, ...]
    tls_ca_cert: str
    tls_server_cert: str
    tls_keystore: str
    tls_truststore: str
    tls_store_type: str
    tls_not_after: str
    enclave_public_key: str
    enclave_key_bits: int
    enclave_key_exponent: int
    enclave_mrsigner: str
    sealed_file: str
    sealed_kdf: str
    sealed_entries: tuple[str, ...]
    format: int = MANIFEST_FORMAT

    def to_toml(self) -> bytes:
        doc = {
            "format": self.format,
            "created": self.created,
            "trustedml_version": self.trustedml_version,
            "tls": {
                "hosts": list(self.hosts),
                "ca_cert": self.tls_ca_cert,
                "server_cert": self.tls_server_cert,
                "keystore": self.tls_keystore,
                "truststore": self.tls_truststore,
                "store_type": self.tls_store_type,
                "not_after": self.tls_not_after,
                "keystore_password": f"sealed:{SecretName.KEYSTORE_PASSWORD}",
                "truststore_password": f"sealed:{SecretName.TRUSTSTORE_PASSWORD}",
                "ca_key": f"sealed:{SecretName.TLS_CA_KEY}",
                "server_key": f"sealed:{SecretName.TLS_SERVER_KEY}",
            },
            "spark": {"auth_secret": f"sealed:{SecretName.SPARK_AUTH_SECRET}"},
            "enclave": {
                "public_key": self.enclave_public_key,
                "private_key": f"sealed:{SecretName.ENCLAVE_SIGNING_KEY}",
                "key_bits": self.enclave_key_bits,
                "exponent": self.enclave_key_exponent,
                "mrsigner": self.enclave_mrsigner,
            },
            "sealed": {
                "file": self.sealed_file,
                "kdf": self.sealed_kdf,
                "cipher": "AES-256-GCM",
                "entries": list(self.sealed_entries),
            },
        }
        header = b"# trusted-ml key directory manifest: locations only, never secret values.\n"
        return header + tomli_w.dumps(doc).encode("utf-8")

    @classmethod
    def from_toml(cls, data: bytes, source: str) -> KeyManifest:
        try:
            doc = tomllib.loads(data.decode("utf-8"))
            fmt = doc["format"]
            if fmt != MANIFEST_FORMAT:
                raise KeyDirectoryError(
                    f"{source}: unsupported manifest format: expected {MANIFEST_FORMAT}, "
                    f"got {fmt!r}"
                )
            tls, enclave, sealed = doc["tls"], doc["enclave"], doc["sealed"]
            return cls(
                created=str(doc["created"]),
                trustedml_version=str(doc["trustedml_version"]),
                hosts=tuple(str(h) for h in tls["hosts"]),
                tls_ca_cert=_rel(tls["ca_cert"], source),
                tls_server_cert=_rel(tls["server_cert"], source),
                tls_keystore=_rel(tls["keystore"], source),
                tls_truststore=_rel(tls["truststore"], source),
                tls_store_type=str(tls["store_type"]),
                tls_not_after=str(tls["not_after"]),
                enclave_public_key=_rel(enclave["public_key"], source),
                enclave_key_bits=int(enclave["key_bits"]),
                enclave_key_exponent=int(enclave["exponent"]),
                enclave_mrsigner=str(enclave["mrsigner"]),
                sealed_file=_rel(sealed["file"], source),
                sealed_kdf=str(sealed["kdf"]),
                sealed_entries=tuple(str(e) for e in sealed["entries"]),
            )
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise KeyDirectoryError(f"{source}: not valid TOML: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyDirectoryError(f"{source}: missing or invalid field {exc}") from exc

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _rel(value: object, source: str) -> str:
    # Manifest paths are relative to the directory and may not escape it.
    path = str(value)
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or ".." in parts:
        raise KeyDirectoryError(f"{source}: path must stay inside the key directory: {path!r}")
    return path


class SealedSecrets(Mapping[str, Secret]):
    """The opened vault of a key directory: secret name -> :class:`Secret`."""

    def __init__(self, entries: Mapping[str, Secret]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Secret:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyDirectoryError(f"sealed vault has no entry {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SealedSecrets(names={sorted(self._entries)})"

    @property
    def spark_auth_secret(self) -> Secret:
        return self[SecretName.SPARK_AUTH_SECRET]

    @property
    def keystore_password(self) -> Secret:
        return self[SecretName.KEYSTORE_PASSWORD]

    @property
    def truststore_password(self) -> Secret:
        return self[SecretName.TRUSTSTORE_PASSWORD]

    def encode(self) -> bytes:
        doc = {
            "format": VAULT_FORMAT,
            "secrets": {
                name: base64.b64encode(value.reveal()).decode("ascii")
                for name, value in sorted(self._entries.items())
            },
        }
        return json.dumps(doc, sort_keys=True).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, source: str) -> SealedSecrets:
        try:
            doc = json.loads(data)
            if doc.get("format") != VAULT_FORMAT:
                raise KeyDirectoryError(
                    f"{source}: unsupported vault format: expected {VAULT_FORMAT}, "
                    f"got {doc.get('format')!r}"
                )
            return cls(
                {
                    str(name): Secret(base64.b64decode(value, validate=True))
                    for name, value in doc["secrets"].items()
                }
            )
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            # Never echo the plaintext: it holds secrets.
            raise KeyDirectoryError(f"{source}: vault contents are malformed") from exc


def check_new_passphrase(passphrase: Secret) -> None:
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise KeyDirectoryError(
            f"passphrase too short: expected at least {MIN_PASSPHRASE_LENGTH} bytes, "
            f"got {len(passphrase)}"
        )


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def init_key_directory(
    path: str | os.PathLike[str],
    passphrase: Secret,
    *,
    hosts: tuple[str, ...] | list[str] = (),
    force: bool = False,
    days: int = 365,
    kdf: ScryptParams | None = None,
    now: dt.datetime | None = None,
) -> KeyDirectory:
    """Create a key directory: TLS CA, server certificate and Java stores, Spark
    authentication secret, SGX enclave signing key, all secrets sealed under
    ``passphrase``. The directory appears whole or not at all.

    Raises :class:`KeyDirectoryExistsError` when ``path`` holds anything and
    ``force`` is false.
    """
    target = Path(path)
    if (target.exists() or target.is_symlink()) and not _is_empty_dir(target) and not force:
        raise KeyDirectoryExistsError(
            f"{target} already exists and is not empty; use --force to replace it"
        )
    check_new_passphrase(passphrase)
    all_hosts = _tls.normalize_hosts(hosts)
    now = now or dt.datetime.now(dt.UTC)
    kdf = kdf or ScryptParams()

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.init-"))
    try:
        _populate(staging, passphrase, all_hosts, days, kdf, now)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return KeyDirectory(target)


def _populate(
    root: Path,
    passphrase: Secret,
    hosts: tuple[str, ...],
    days: int,
    kdf: ScryptParams,
    now: dt.datetime,
) -> None:
    root.chmod(0o700)
    make_private_dir(root / "tls")
    make_private_dir(root / "enclave")

    material = _tls.generate_tls(hosts, days, now)
    enclave_key = _enclave.generate_enclave_key()
    vault = SealedSecrets(
        {
            SecretName.SPARK_AUTH_SECRET: Secret(secrets.token_hex(32)),
            SecretName.KEYSTORE_PASSWORD: Secret(secrets.token_urlsafe(32)),
            SecretName.TRUSTSTORE_PASSWORD: Secret(secrets.token_urlsafe(32)),
            SecretName.TLS_CA_KEY: Secret(_tls.private_pem(material.ca_key)),
            SecretName.TLS_SERVER_KEY: Secret(_tls.private_pem(material.server_key)),
            SecretName.ENCLAVE_SIGNING_KEY: Secret(_enclave.enclave_private_pem(enclave_key)),
        }
    )

    manifest = KeyManifest(
        created=now.replace(microsecond=0).isoformat(),
        trustedml_version=__version__,
        hosts=hosts,
        tls_ca_cert="tls/ca.pem",
        tls_server_cert="tls/server.pem",
        tls_keystore="tls/keystore.p12",
        tls_truststore="tls/truststore.p12",
        tls_store_type="PKCS12",
        tls_not_after=material.server_cert.not_valid_after_utc.isoformat(),
        enclave_public_key="enclave/signing-key.pub.pem",
        enclave_key_bits=_enclave.ENCLAVE_KEY_BITS,
        enclave_key_exponent=_enclave.ENCLAVE_KEY_EXPONENT,
        enclave_mrsigner=_enclave.mrsigner(enclave_key.public_key()),
        sealed_file=VAULT_NAME,
        sealed_kdf=f"scrypt(log2_n={kdf.log2_n}, r={kdf.r}, p={kdf.p})",
        sealed_entries=tuple(sorted(vault)),
    )

    write_private(root / manifest.tls_ca_cert, _tls.cert_pem(material.ca_cert))
    write_private(
        root / manifest.tls_server_cert,
        _tls.cert_pem(material.server_cert) + _tls.cert_pem(material.ca_cert),
    )
    write_private(
        root / manifest.tls_keystore, _tls.keystore_bytes(material, vault.keystore_password)
    )
    write_private(
        root / manifest.tls_truststore,
        _tls.truststore_bytes(material.ca_cert, vault.truststore_password),
    )
    write_private(root / manifest.enclave_public_key, _enclave.public_pem(enclave_key.public_key()))
    write_private(root / VAULT_NAME, sealing.seal(vault.encode(), passphrase, kdf))
    write_private(root / MANIFEST_NAME, manifest.to_toml())


def _swap_into_place(staging: Path, target: Path) -> None:
    if _is_empty_dir(target):
        target.rmdir()
    if not target.exists() and not target.is_symlink():
        os.rename(staging, target)
        return
    # --force: keep the old directory until the new one is in place.
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    old.rmdir()
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


class KeyDirectory:
    """An existing key directory made by :func:`init_key_directory`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        try:
            data = manifest_path.read_bytes()
        except FileNotFoundError:
            raise KeyDirectoryError(
                f"{self.path} is not a key directory (no {MANIFEST_NAME}); "
                "create one with `trustedml keys init`"
            ) from None
        except OSError as exc:
            raise KeyDirectoryError(f"cannot read {manifest_path}: {exc.strerror}") from exc
        self.manifest = KeyManifest.from_toml(data, str(manifest_path))

    def __repr__(self) -> str:
        return f"KeyDirectory({str(self.path)!r})"

    def file(self, relative: str) -> Path:
        """Absolute path of a file named in the manifest; it must exist."""
        path = (self.path / relative).resolve()
        if not path.is_file():
            raise KeyDirectoryError(f"key directory is incomplete: {path} is missing")
        return path

    @property
    def keystore(self) -> Path:
        return self.file(self.manifest.tls_keystore)

    @property
    def truststore(self) -> Path:
        return self.file(self.manifest.tls_truststore)

    @property
    def ca_cert(self) -> Path:
        return self.file(self.manifest.tls_ca_cert)

    @property
    def server_cert(self) -> Path:
        return self.file(self.manifest.tls_server_cert)

    def _check_private(self, path: Path) -> None:
        st = path.stat()
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            # A directory needs its x bit to be entered: 0700 is its private mode.
            expected = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            raise KeyDirectoryError(
                f"permissions too open on {path}: expected {expected:04o} (or stricter), "
                f"got {mode:04o} (chmod {expected:o} {path})"
            )

    def unseal(self, passphrase: Secret) -> SealedSecrets:
        """Open the sealed vault. Raises :class:`UnsealError` on a wrong passphrase."""
        vault = self.file(self.manifest.sealed_file)
        self._check_private(vault)
        self._check_private(self.path)
        plain = sealing.unseal(vault.read_bytes(), passphrase, name=str(vault))
        opened = SealedSecrets.decode(plain, str(vault))
        missing = set(SecretName) - set(opened)
        if missing:
            raise KeyDirectoryError(f"{vault}: vault lacks entries {sorted(missing)}")
        return opened

    def change_passphrase(self, old: Secret, new: Secret, kdf: ScryptParams | None = None) -> None:
        """Re-seal the vault under a new passphrase; nothing changes if ``old`` is wrong."""
        check_new_passphrase(new)
        opened = self.unseal(old)
        vault = self.file(self.manifest.sealed_file)
        params = kdf or sealing.read_params(vault.read_bytes(), str(vault))
        write_private(vault, sealing.seal(opened.encode(), new, params))

    def add_secret(self, passphrase: Secret, name: str, value: Secret) -> None:
        """Add one entry to the sealed vault (and the manifest's list of entries)."""
        opened = self.unseal(passphrase)
        if name in opened:
            raise KeyDirectoryError(f"sealed vault already has an entry {name!r}")
        vault = self.file(self.manifest.sealed_file)
        params = sealing.read_params(vault.read_bytes(), str(vault))
        updated = SealedSecrets({**opened, name: value})
        write_private(vault, sealing.seal(updated.encode(), passphrase, params))
        self.manifest = dataclasses.replace(self.manifest, sealed_entries=tuple(sorted(updated)))
        write_private(self.path / MANIFEST_NAME, self.manifest.to_toml())

    def fingerprints(self) -> dict[str, str]:
        """SHA-256 fingerprints of the public material, and the enclave MRSIGNER."""
        out: dict[str, str] = {}
        for label, rel in (
            ("tls_ca_cert", self.manifest.tls_ca_cert),
            ("tls_server_cert", self.manifest.tls_server_cert),
        ):
            cert = x509.load_pem_x509_certificate(self.file(rel).read_bytes())
            out[label] = "sha256:" + cert.fingerprint(hashes.SHA256()).hex()
        pub_pem = self.file(self.manifest.enclave_public_key).read_bytes()
        pub = serialization.load_pem_public_key(pub_pem)
        if not isinstance(pub, rsa.RSAPublicKey):
            raise KeyDirectoryError("enclave public key is not an RSA key")
        der = pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out["enclave_public_key"] = "sha256:" + hashlib.sha256(der).hexdigest()
        out["enclave_mrsigner"] = _enclave.mrsigner(pub)
        return out

    def verify(self, passphrase: Secret) -> list[str]:
        """Unseal and cross-check every file; return a list of checks passed."""
        opened = self.unseal(passphrase)
        done = ["vault unsealed"]
        try:
            key, cert, _ = serialization.pkcs12.load_key_and_certificates(
                self.keystore.read_bytes(), opened.keystore_password.reveal()
            )
        except ValueError as exc:
            raise KeyDirectoryError(
                f"{self.keystore}: does not open with the sealed keystore password"
            ) from exc
        server = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
        if cert is None or cert != server or key is None:
            raise KeyDirectoryError(f"{self.keystore}: does not hold the server certificate")
        done.append("keystore opens and holds the server certificate")
        if self.fingerprints()["enclave_mrsigner"] != self.manifest.enclave_mrsigner:
            raise KeyDirectoryError("enclave public key does not match the manifest's MRSIGNER")
        done.append("enclave key matches the manifest's MRSIGNER")
        return done
