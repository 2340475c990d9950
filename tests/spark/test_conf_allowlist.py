"""The --conf allow-list of secure jobs: what it refuses, why, and the expert override."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, PASSPHRASE
from trustedml import KeyDirectory, KeyRing, PlainSparkConfig, Secret, SecureSparkConfig
from trustedml.errors import ConfigError, SparkConfigError
from trustedml.spark import check_secure_conf, conf_refusal, measurement_settings
from trustedml.spark._conf_policy import ALLOWED_KEYS
from trustedml.spark._config import MANAGED_KEYS
from trustedml.tee import measure_job

PI = EXAMPLES / "pi.py"
# What an attacker would set; these tests expect it refused.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104

# (key, value, category the refusal names): keys trusted-ml does not set itself.
REFUSED = [
    ("spark.ssl.ui.enabled", "false", "TLS/UI"),
    ("spark.ssl.ui.port", "4443", "TLS/UI"),
    ("spark.ui.port", "4040", "TLS/UI"),
    ("spark.ui.reverseProxy", "true", "TLS/UI"),
    ("spark.history.ui.port", "18080", "TLS/UI"),
    ("spark.authenticate.enableSaslFallback", "true", "authentication"),
    ("spark.network.crypto.keyFactoryAlgorithm", "PBKDF2WithHmacSHA1", "crypto"),
    ("spark.io.encryption.keygen.algorithm", "DES", "crypto"),
    ("spark.python.unix.domain.socket.dir", "/tmp", "crypto"),
    ("spark.blockManager.bindAddress", ALL_INTERFACES, "network bind/host"),
    ("spark.driver.port", "7078", "network bind/host"),
    ("spark.blockManager.port", "7079", "network bind/host"),
    ("spark.port.maxRetries", "100", "network bind/host"),
    ("spark.pyspark.virtualenv.enabled", "true", "interpreter/environment injection"),
    ("spark.executorEnv.LD_PRELOAD", "/tmp/evil.so", "interpreter/environment injection"),
    ("spark.python.daemon.module", "evil", "interpreter/environment injection"),
    ("spark.executor.extraJavaOptions", "-Djavax.net.debug=all", "JVM options"),
    ("spark.driver.defaultJavaOptions", "-Xdebug", "JVM options"),
    ("spark.driver.extraClassPath", "/tmp/evil.jar", "JVM options"),
    ("spark.executor.extraLibraryPath", "/tmp", "JVM options"),
    ("spark.jars", "/tmp/evil.jar", "code loading"),
    ("spark.jars.packages", "org.evil:evil:1.0", "code loading"),
    ("spark.files", "/tmp/x", "code loading"),
    ("spark.submit.pyFiles", "/tmp/x.py", "code loading"),
    ("spark.plugins", "org.evil.Plugin", "code loading"),
    ("spark.extraListeners", "org.evil.Listener", "code loading"),
    ("spark.sql.extensions", "org.evil.Ext", "code loading"),
    ("spark.sql.queryExecutionListeners", "org.evil.L", "code loading"),
    ("spark.sql.adaptive.customCostEvaluatorClass", "org.evil.C", "code loading"),
    ("spark.sql.catalog.evil", "org.evil.Catalog", "code loading"),
    ("spark.serializer", "org.apache.spark.serializer.JavaSerializer", "code loading"),
    ("spark.kryo.registrator", "org.evil.R", "code loading"),
    ("spark.driver.resource.gpu.discoveryScript", "/tmp/x.sh", "code loading"),
    ("spark.sql.redaction.string.regex", "nothing", "logs/redaction"),
    ("spark.eventLog.enabled", "true", "logs/redaction"),
    ("spark.eventLog.dir", "/tmp/events", "logs/redaction"),
    ("spark.logConf", "true", "logs/redaction"),
    ("spark.master.ui.port", "8080", "network bind/host"),
    ("spark.deploy.recoveryMode", "FILESYSTEM", "cluster manager"),
    ("spark.submit.deployMode", "cluster", "code loading"),
    ("spark.kubernetes.namespace", "default", "cluster manager"),
    ("spark.yarn.appMasterEnv.X", "1", "cluster manager"),
    ("spark.shuffle.service.enabled", "true", "cluster manager"),
    ("spark.hadoop.fs.defaultFS", "hdfs://evil:8020", "Hadoop/Parquet"),
    ("spark.hadoop.parquet.encryption.plaintext.footer", "true", "Hadoop/Parquet"),
    ("parquet.encryption.plaintext.footer", "true", "Hadoop/Parquet"),
    ("spark.some.future.setting", "1", "unknown key"),
    ("spark.SSL.enabled", "false", "unknown key"),
]

# Keys trusted-ml sets itself: refused even with --allow-insecure-conf.
MANAGED = [
    ("spark.ui.enabled", "true", "--no-ui"),
    ("spark.ssl.protocol", "TLSv1", "--insecure"),
    ("spark.ssl.enabled", "false", "--insecure"),
    ("spark.driver.bindAddress", ALL_INTERFACES, "--insecure"),
    ("spark.driver.host", ALL_INTERFACES, "--insecure"),
    ("spark.pyspark.python", "/usr/bin/python3", "--insecure"),
    ("spark.executorEnv.PYSPARK_PYTHON", "/usr/bin/python3", "--insecure"),
    ("spark.redaction.regex", "nothing", "--insecure"),
    ("spark.python.unix.domain.socket.enabled", "false", "--insecure"),
    ("spark.master", "spark://evil:7077", "--master"),
    ("spark.master.rest.enabled", "true", "--insecure"),
    ("spark.log.level", "TRACE", "--log-level"),
    ("spark.local.dir", "/tmp", "--local-dir"),
    ("spark.ssl.rpc.enabled", "false", "--rpc-tls"),
    ("spark.hadoop.parquet.encryption.algorithm", "AES_GCM_CTR_V1", "--insecure"),
]


def secure(keys: KeyDirectory, **options: object) -> SecureSparkConfig:
    return SecureSparkConfig.from_key_directory(keys, Secret(PASSPHRASE), **options)


@pytest.mark.parametrize(("key", "value", "category"), REFUSED)
def test_weakening_keys_are_refused_with_their_category(
    session_keys: KeyDirectory, key: str, value: str, category: str
) -> None:
    why = conf_refusal(key)
    assert why is not None
    assert why.category == category
    expected = f"--conf {key}: refused ({category}): "
    with pytest.raises(SparkConfigError, match=re.escape(expected)) as raised:
        secure(session_keys, extra={key: value})
    assert why.alternative in str(raised.value)
    assert f"--allow-insecure-conf {key}" in str(raised.value)
    # --insecure keeps its meaning: plain Spark takes any non-secret key (spark.jars
    # also lists the tml:// file system's jar after the user's).
    assert PlainSparkConfig(extra={key: value}).conf()[key].split(",")[0] == value


@pytest.mark.parametrize(("key", "value", "alternative"), MANAGED)
def test_managed_keys_are_refused_even_when_allowed(
    session_keys: KeyDirectory, key: str, value: str, alternative: str
) -> None:
    for allow in (frozenset(), frozenset({key})):
        with pytest.raises(SparkConfigError, match=re.escape(f"--conf {key}: managed by")) as e:
            secure(session_keys, extra={key: value}, allow_insecure=allow)
        assert alternative in str(e.value)


def test_allowed_keys_pass_and_reach_the_configuration(session_keys: KeyDirectory) -> None:
    extra = {key: "1" for key in ALLOWED_KEYS}
    extra["spark.sql.adaptive.coalescePartitions.enabled"] = "false"
    conf = secure(session_keys, extra=extra).conf()
    for key, value in extra.items():
        assert conf[key] == value
    assert conf["spark.ssl.enabled"] == "true"


def test_the_allow_list_is_disjoint_from_managed_and_refused_keys() -> None:
    assert not ALLOWED_KEYS & MANAGED_KEYS
    for key in ALLOWED_KEYS:
        assert conf_refusal(key) is None, key


@pytest.mark.parametrize(
    "options",
    [
        {"master": "local[2]"},
        {"master": "spark://127.0.0.1:7077", "rpc_tls": True},
        {"master": "local[1]", "ui": False, "local_dir": Path("/tmp/scratch")},
        {"keyring": KeyRing({"k": b"\x01" * 32})},
    ],
)
def test_managed_keys_cover_every_key_the_secure_configuration_sets(
    session_keys: KeyDirectory, options: dict[str, object]
) -> None:
    conf = secure(session_keys, **options).conf()
    assert set(conf) - {"spark.jars"} <= MANAGED_KEYS


def test_values_with_substitution_references_are_refused(session_keys: KeyDirectory) -> None:
    # Spark would substitute the reference; the store passwords are in its environment.
    leak = {"spark.app.name": "${env:TRUSTEDML_SSL_KEYSTORE_PASSWORD}"}
    for build in (lambda: secure(session_keys, extra=leak), lambda: PlainSparkConfig(extra=leak)):
        with pytest.raises(SparkConfigError, match=r"spark.app.name: values may not contain"):
            build()
    with pytest.raises(SparkConfigError, match="values may not contain"):
        secure(
            session_keys,
            extra={"spark.eventLog.dir": "${system:user.home}"},
            allow_insecure={"spark.eventLog.dir"},
        )


def test_allow_insecure_lets_one_key_through(session_keys: KeyDirectory) -> None:
    cfg = secure(
        session_keys,
        extra={"spark.eventLog.enabled": "true", "spark.sql.shuffle.partitions": "3"},
        allow_insecure={"spark.eventLog.enabled"},
    )
    assert cfg.conf()["spark.eventLog.enabled"] == "true"
    assert cfg.insecure_conf() == {"spark.eventLog.enabled": "true"}
    # Only that key: a second refused key still fails.
    with pytest.raises(SparkConfigError, match=r"--conf spark.eventLog.dir: refused"):
        secure(
            session_keys,
            extra={"spark.eventLog.enabled": "true", "spark.eventLog.dir": "/tmp/e"},
            allow_insecure={"spark.eventLog.enabled"},
        )
    assert PlainSparkConfig().insecure_conf() == {}


def test_allow_insecure_misuse_is_refused(session_keys: KeyDirectory) -> None:
    with pytest.raises(SparkConfigError, match=r"spark.eventLog.enabled: expected a matching"):
        check_secure_conf({}, {"spark.eventLog.enabled"})
    with pytest.raises(SparkConfigError, match=r"spark.app.name: not needed"):
        check_secure_conf({"spark.app.name": "x"}, {"spark.app.name"})
    with pytest.raises(SparkConfigError, match="secrets may not be passed"):
        check_secure_conf({"spark.my.token": "x"}, {"spark.my.token"})
    with pytest.raises(SparkConfigError, match="expected a collection of keys"):
        secure(session_keys, allow_insecure="spark.eventLog.enabled")


def test_allowed_insecure_keys_are_recorded_in_the_measurement() -> None:
    extra = {"spark.sql.shuffle.partitions": "4", "spark.eventLog.compress": "false"}
    plain_extra = {"spark.sql.shuffle.partitions": "4"}
    base = measure_job(PI, ["10"], (), measurement_settings(extra=plain_extra))
    assert "insecure_conf" not in base.parts
    allowed = measure_job(
        PI,
        ["10"],
        (),
        measurement_settings(extra=extra, allow_insecure=["spark.eventLog.compress"]),
    )
    assert allowed.parts["insecure_conf"] == {"spark.eventLog.compress": "false"}
    assert allowed.parts["spark_conf"]["spark.eventLog.compress"] == "false"
    assert allowed.digest != base.digest
    # The part alone changes the digest: drop it and the digest is another one.
    parts = allowed.parts
    del parts["insecure_conf"]
    assert type(allowed).from_parts(parts).digest != allowed.digest
    with pytest.raises(ConfigError, match="is for secure jobs"):
        measurement_settings(secure=False, extra=extra, allow_insecure=["spark.eventLog.compress"])
