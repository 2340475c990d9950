from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import FAST_KDF, PASSPHRASE
from trustedml import (
    KeyDirectory,
    KeyDirectoryError,
    KeyDirectoryExistsError,
    Secret,
    UnsealError,
    init_key_directory,
)
from trustedml.keys import SecretName, _directory


def snapshot(root: Path) -> dict[str, tuple[bytes, int, float]]:
    """Content, mode and mtime of every file under root."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "keys"
    init_key_directory(root, Secret(PASSPHRASE), hosts=["spark.internal", "10.1.2.3"], kdf=FAST_KDF)
    return root


@pytest.fixture
def keys(template: Path, tmp_path: Path) -> KeyDirectory:
    # RSA-3072 generation costs about a second: copy one directory per test instead.
    shutil.copytree(template, tmp_path / "keys")
    return KeyDirectory(tmp_path / "keys")


def test_layout_and_permissions(keys: KeyDirectory) -> None:
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o700
    entries = list(keys.path.rglob("*"))
    assert {p.relative_to(keys.path).as_posix() for p in entries if p.is_file()} == {
        "keys.toml",
        "secrets.sealed",
        "tls/ca.pem",
        "tls/server.pem",
        "tls/keystore.p12",
        "tls/truststore.p12",
        "enclave/signing-key.pub.pem",
    }
    for p in entries:
        expected = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == expected, p


def test_no_secret_appears_in_any_plain_file(keys: KeyDirectory) -> None:
    opened = keys.unseal(Secret(PASSPHRASE))
    blobs = {p: p.read_bytes() for p in keys.path.rglob("*") if p.is_file()}
    for name in SecretName:
        value = opened[name].reveal()
        needles = [value]
        if value.startswith(b"-----BEGIN"):
            # A PEM key: look for its base64 body lines too.
            needles += [line for line in value.splitlines() if len(line) > 40][:3]
        for path, blob in blobs.items():
            for needle in needles:
                assert needle not in blob, f"{name} found in {path}"


def test_manifest_describes_the_directory(keys: KeyDirectory) -> None:
    m = keys.manifest
    assert m.hosts == ("127.0.0.1", "localhost", "spark.internal", "10.1.2.3")
    assert m.tls_store_type == "PKCS12"
    assert set(m.sealed_entries) == {str(n) for n in SecretName}
    assert m.sealed_kdf == "scrypt(log2_n=12, r=8, p=1)"
    text = (keys.path / "keys.toml").read_text()
    assert 'keystore_password = "sealed:keystore_password"' in text


def test_server_certificate_covers_hosts_and_chains_to_ca(keys: KeyDirectory) -> None:
    server = x509.load_pem_x509_certificates(keys.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
    assert server[1] == ca
    server[0].verify_directly_issued_by(ca)
    san = server[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "spark.internal"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.1.2.3",
    }
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_enclave_key_is_rsa3072_e3_and_mrsigner_matches(keys: KeyDirectory) -> None:
    opened = keys.unseal(Secret(PASSPHRASE))
    key = serialization.load_pem_private_key(opened[SecretName.ENCLAVE_SIGNING_KEY].reveal(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072
    assert key.public_key().public_numbers().e == 3
    modulus = key.public_key().public_numbers().n.to_bytes(384, "little")
    assert keys.manifest.enclave_mrsigner == hashlib.sha256(modulus).hexdigest()
    assert keys.fingerprints()["enclave_mrsigner"] == keys.manifest.enclave_mrsigner


def _keytool_list(store: Path, password: Secret, tmp_path: Path) -> str:
    pw_file = tmp_path / "storepass"
    pw_file.write_bytes(password.reveal())
    pw_file.chmod(0o600)
    out = subprocess.run(
        ["keytool", "-list", "-storetype", "PKCS12", "-keystore", str(store),
         "-storepass:file", str(pw_file)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout


def test_java_reads_keystore_and_truststore(keys: KeyDirectory, tmp_path: Path) -> None:
    opened = keys.unseal(Secret(PASSPHRASE))
    ks = _keytool_list(keys.keystore, opened.keystore_password, tmp_path)
    assert "Your keystore contains 1 entry" in ks
    assert "PrivateKeyEntry" in ks
    ts = _keytool_list(keys.truststore, opened.truststore_password, tmp_path)
    assert "Your keystore contains 1 entry" in ts
    assert "trustedCertEntry" in ts


def test_verify_cross_checks_files(keys: KeyDirectory) -> None:
    assert keys.verify(Secret(PASSPHRASE)) == [
        "vault unsealed",
        "keystore opens and holds the server certificate",
        "enclave key matches the manifest's MRSIGNER",
    ]


def test_refuses_to_overwrite_without_force(keys: KeyDirectory) -> None:
    before = snapshot(keys.path)
    with pytest.raises(KeyDirectoryExistsError, match="already exists and is not empty"):
        init_key_directory(keys.path, Secret(PASSPHRASE), kdf=FAST_KDF)
    assert snapshot(keys.path) == before


def test_force_replaces_whole_directory(keys: KeyDirectory) -> None:
    old = keys.fingerprints()
    (keys.path / "stray-file").write_text("x")
    new = init_key_directory(keys.path, Secret("another passphrase"), force=True, kdf=FAST_KDF)
    assert new.fingerprints()["tls_ca_cert"] != old["tls_ca_cert"]
    assert not (keys.path / "stray-file").exists()
    assert [p.name for p in keys.path.parent.iterdir()] == ["keys"]


def test_empty_existing_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    init_key_directory(tmp_path / "k", Secret(PASSPHRASE), kdf=FAST_KDF)
    assert (tmp_path / "k" / "keys.toml").is_file()


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_seal(*args: object, **kwargs: object) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_directory.sealing, "seal", broken_seal)
    with pytest.raises(OSError, match="No space left"):
        init_key_directory(tmp_path / "keys", Secret(PASSPHRASE), kdf=FAST_KDF)
    assert list(tmp_path.iterdir()) == []


def test_wrong_passphrase_fails_and_changes_nothing(keys: KeyDirectory) -> None:
    before = snapshot(keys.path)
    with pytest.raises(UnsealError, match="wrong passphrase"):
        keys.unseal(Secret("wrong passphrase!"))
    with pytest.raises(UnsealError):
        keys.change_passphrase(Secret("wrong passphrase!"), Secret("new passphrase 1"))
    assert snapshot(keys.path) == before


def test_change_passphrase(keys: KeyDirectory) -> None:
    before = keys.unseal(Secret(PASSPHRASE))
    keys.change_passphrase(Secret(PASSPHRASE), Secret("a brand new passphrase"))
    after = keys.unseal(Secret("a brand new passphrase"))
    assert dict(after) == dict(before)
    with pytest.raises(UnsealError):
        keys.unseal(Secret(PASSPHRASE))


def test_short_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyDirectoryError, match="expected at least 8 bytes, got 5"):
        init_key_directory(tmp_path / "k", Secret("short"), kdf=FAST_KDF)
    assert not (tmp_path / "k").exists()


def test_open_permissions_are_refused(keys: KeyDirectory) -> None:
    (keys.path / "secrets.sealed").chmod(0o644)
    with pytest.raises(KeyDirectoryError, match=r"permissions too open.*got 0644"):
        keys.unseal(Secret(PASSPHRASE))


def test_not_a_key_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyDirectoryError, match="is not a key directory"):
        KeyDirectory(tmp_path)


def test_manifest_paths_cannot_escape(keys: KeyDirectory) -> None:
    manifest = keys.path / "keys.toml"
    manifest.write_text(manifest.read_text().replace('"tls/ca.pem"', '"../../etc/passwd"'))
    with pytest.raises(KeyDirectoryError, match="must stay inside the key directory"):
        KeyDirectory(keys.path)


def test_garbled_manifest(keys: KeyDirectory) -> None:
    (keys.path / "keys.toml").write_text("format = [")
    with pytest.raises(KeyDirectoryError, match="not valid TOML"):
        KeyDirectory(keys.path)


def test_missing_file_is_named(keys: KeyDirectory) -> None:
    (keys.path / "tls" / "keystore.p12").unlink()
    with pytest.raises(KeyDirectoryError, match=r"incomplete: .*keystore.p12 is missing"):
        _ = keys.keystore


def test_bad_host_is_refused(tmp_path: Path) -> None:
    from trustedml import ConfigError

    with pytest.raises(ConfigError, match="expected a DNS name or IP address"):
        init_key_directory(tmp_path / "k", Secret(PASSPHRASE), hosts=["a b"], kdf=FAST_KDF)


def test_reprs_hide_secrets(keys: KeyDirectory) -> None:
    opened = keys.unseal(Secret(PASSPHRASE))
    text = repr(opened) + repr(keys) + repr(keys.manifest)
    for name in SecretName:
        assert opened[name].reveal_text()[:20] not in text
