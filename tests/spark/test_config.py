from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE
from trustedml import (
    DeployMode,
    KeyDirectory,
    PlainSparkConfig,
    Secret,
    SecureSparkConfig,
    SparkConfigError,
    UnsealError,
)
from trustedml.spark import _config, mode_for_master


def secure(keys: KeyDirectory, master: str = "local[2]", **options: object) -> SecureSparkConfig:
    return SecureSparkConfig.from_key_directory(keys, Secret(PASSPHRASE), master=master, **options)


def secret_values(keys: KeyDirectory) -> list[str]:
    opened = keys.unseal(Secret(PASSPHRASE))
    return [opened[name].reveal_text() for name in opened]


def test_standalone_uses_aes_gcm_and_auth_engine_v2(session_keys: KeyDirectory) -> None:
    cfg = secure(session_keys, "spark://127.0.0.1:7077")
    conf = cfg.conf()
    assert cfg.mode is DeployMode.STANDALONE
    assert conf["spark.authenticate"] == "true"
    assert conf["spark.network.crypto.enabled"] == "true"
    assert conf["spark.network.crypto.cipher"] == "AES/GCM/NoPadding"
    assert conf["spark.network.crypto.authEngineVersion"] == "2"
    assert conf["spark.network.crypto.saslFallback"] == "false"
    assert conf["spark.master.rest.enabled"] == "false"
    assert conf["spark.io.encryption.enabled"] == "true"
    assert conf["spark.io.encryption.keySizeBits"] == "256"
    assert conf["spark.python.unix.domain.socket.enabled"] == "true"
    assert "spark.network.crypto.keyLength" not in conf  # removed in Spark 4.3


def test_ui_tls_comes_from_the_key_directory(session_keys: KeyDirectory) -> None:
    conf = secure(session_keys).conf()
    assert conf["spark.ssl.enabled"] == "true"
    assert conf["spark.ssl.protocol"] == "TLSv1.3"
    assert conf["spark.ssl.keyStore"] == str(session_keys.keystore)
    assert conf["spark.ssl.trustStore"] == str(session_keys.truststore)
    assert conf["spark.ssl.keyStorePassword"] == "${env:TRUSTEDML_SSL_KEYSTORE_PASSWORD}"
    assert conf["spark.ssl.rpc.enabled"] == "false"


def test_secrets_travel_only_in_the_environment(session_keys: KeyDirectory) -> None:
    for master in ("local[2]", "spark://127.0.0.1:7077"):
        cfg = secure(session_keys, master, rpc_tls=True)
        text = _config.properties_text(cfg.conf()) + repr(cfg)
        env = cfg.environment()
        for value in secret_values(session_keys):
            assert value not in text
        opened = session_keys.unseal(Secret(PASSPHRASE))
        assert env["TRUSTEDML_SSL_KEYSTORE_PASSWORD"] == opened.keystore_password.reveal_text()
        assert env["_SPARK_SSL_RPC_KEY_STORE_PASSWORD"] == opened.keystore_password.reveal_text()
        if master.startswith("spark://"):
            # The cluster's own secret, derived from the key directory's and the URL.
            derived = _config.cluster_secret(opened.spark_auth_secret, master)
            assert env["_SPARK_AUTH_SECRET"] == derived.reveal_text()
            # Spark requires the property in standalone mode; it holds only a reference.
            assert cfg.conf()["spark.authenticate.secret"] == "${env:_SPARK_AUTH_SECRET}"
        else:
            # Local mode: Spark generates a fresh secret per application.
            assert "_SPARK_AUTH_SECRET" not in env
            assert "spark.authenticate.secret" not in cfg.conf()


def test_common_environment(session_keys: KeyDirectory) -> None:
    env = secure(session_keys, python="/opt/py/bin/python").environment()
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["PYSPARK_PYTHON"] == "/opt/py/bin/python"


def test_security_settings_cannot_be_overridden(session_keys: KeyDirectory) -> None:
    with pytest.raises(SparkConfigError, match=r"spark.network.crypto.cipher: managed by"):
        secure(session_keys, extra={"spark.network.crypto.cipher": "AES/CTR/NoPadding"})


@pytest.mark.parametrize(
    "key",
    ["spark.authenticate.secret", "spark.ssl.keyStorePassword", "spark.hadoop.fs.s3a.access.key"],
)
def test_secret_properties_are_refused_everywhere(session_keys: KeyDirectory, key: str) -> None:
    with pytest.raises(SparkConfigError, match="secrets may not be passed"):
        secure(session_keys, extra={key: "x"})
    with pytest.raises(SparkConfigError, match="secrets may not be passed"):
        PlainSparkConfig(extra={key: "x"})


def test_user_conf_is_kept(session_keys: KeyDirectory) -> None:
    conf = secure(session_keys, extra={"spark.sql.shuffle.partitions": "7"}).conf()
    assert conf["spark.sql.shuffle.partitions"] == "7"
    with pytest.raises(SparkConfigError, match=r"expected a key starting with 'spark.'"):
        secure(session_keys, extra={"sql.shuffle.partitions": "7"})


@pytest.mark.parametrize(
    ("mode", "master"),
    [
        ("local", "spark://h:7077"),
        ("standalone", "local[2]"),
        ("local", "yarn"),
        ("local", "local[0]"),
        # A trailing newline passed a `$` anchored .match().
        ("local", "local[2]\n"),
        ("standalone", "spark://h:7077\n"),
    ],
)
def test_master_must_match_mode(session_keys: KeyDirectory, mode: str, master: str) -> None:
    with pytest.raises(SparkConfigError, match=f"expected .*, got {re.escape(repr(master))}"):
        secure(session_keys, master, mode=DeployMode(mode))


def test_mode_for_master() -> None:
    assert mode_for_master("local[*]") is DeployMode.LOCAL
    assert mode_for_master("local") is DeployMode.LOCAL
    assert mode_for_master("spark://a:1,b:2") is DeployMode.STANDALONE
    with pytest.raises(SparkConfigError, match=r"Kubernetes: `trustedml submit --master k8s://"):
        mode_for_master("k8s://https://x")
    with pytest.raises(SparkConfigError, match="got 'local\\\\n'"):
        mode_for_master("local\n")


def test_bad_log_level(session_keys: KeyDirectory) -> None:
    with pytest.raises(SparkConfigError, match=r"expected one of ALL, .*got 'LOUD'"):
        secure(session_keys, log_level="LOUD")


def test_wrong_passphrase(session_keys: KeyDirectory) -> None:
    with pytest.raises(UnsealError):
        SecureSparkConfig.from_key_directory(session_keys, Secret("wrong one!"))


def test_missing_keystore_is_named(tmp_path: Path) -> None:
    with pytest.raises(SparkConfigError, match="keystore: expected an existing file"):
        SecureSparkConfig(keystore=tmp_path / "nope", truststore=tmp_path / "nope")


def test_plain_config_has_no_protection() -> None:
    conf = PlainSparkConfig(master="local[1]").conf()
    assert not any(
        k.startswith(("spark.ssl", "spark.authenticate", "spark.network.crypto")) for k in conf
    )
    assert conf["spark.master"] == "local[1]"


def test_properties_escaping() -> None:
    text = _config.properties_text(
        {"spark.a": "x=y:z #!", "spark.b": "line\nbreak", "spark.c": " lead"}
    )
    assert "spark.a=x\\=y\\:z \\#\\!" in text
    assert "spark.b=line\\nbreak" in text
    assert "spark.c=\\ lead" in text


def test_job_keyring_enables_parquet_encryption_through_the_environment(
    session_keys: KeyDirectory,
) -> None:
    from trustedml import KeyRing

    ring = KeyRing({"pii": b"\x33" * 32})
    cfg = secure(
        session_keys,
        keyring=ring,
        extra={"spark.jars": "/opt/extra.jar"},
        allow_insecure={"spark.jars"},
    )
    conf, env = cfg.conf(), cfg.environment()
    assert conf["spark.hadoop.parquet.encryption.kms.client.class"].endswith("TrustedMLKmsClient")
    jars = conf["spark.jars"].split(",")
    assert jars[1] == "/opt/extra.jar"
    assert Path(jars[0]).is_file()
    assert KeyRing.parse(Secret(env["TRUSTEDML_KEYRING"])) == ring
    text = _config.properties_text(conf) + repr(cfg)
    assert ring.export().reveal_text().split(":", 1)[1] not in text
    assert "keyring" in _config.REDACTION_REGEX
