"""The one place where Spark's security settings are decided."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trustedml._env import ENV_BROKER_CA, ENV_BROKER_URL, ENV_KEYRING
from trustedml._secret import Secret
from trustedml.data import KeyRing
from trustedml.errors import LaunchError, SparkConfigError
from trustedml.keys import KeyDirectory
from trustedml.spark._conf_policy import conf_refusal

# Environment variables that carry secrets to the Spark JVM. Spark reads the auth
# secret from _SPARK_AUTH_SECRET ahead of spark.authenticate.secret; the SSL
# passwords are referenced from the properties as ${env:NAME}, which Spark
# substitutes at use, so no secret value is ever a property, an argument or a file.
ENV_AUTH_SECRET = "_SPARK_AUTH_SECRET"
ENV_KEYSTORE_PASSWORD = "TRUSTEDML_SSL_KEYSTORE_PASSWORD"
ENV_TRUSTSTORE_PASSWORD = "TRUSTEDML_SSL_TRUSTSTORE_PASSWORD"
# Spark's own variables for RPC TLS, which executors also read.
ENV_RPC_KEYSTORE_PASSWORD = "_SPARK_SSL_RPC_KEY_STORE_PASSWORD"
ENV_RPC_KEY_PASSWORD = "_SPARK_SSL_RPC_KEY_PASSWORD"
ENV_RPC_TRUSTSTORE_PASSWORD = "_SPARK_SSL_RPC_TRUST_STORE_PASSWORD"

REDACTION_REGEX = (
    "(?i)secret|password|passphrase|token|access[.]?key|credential|private[.]?key|keyring"
)
_SECRET_LOOKING = re.compile(REDACTION_REGEX)
_LOCAL_MASTER = re.compile(r"^local(\[(\*|[1-9][0-9]*)(,[1-9][0-9]*)?\])?$")
_STANDALONE_MASTER = re.compile(r"^spark://[^\s/:]+:[0-9]{1,5}(,[^\s/:]+:[0-9]{1,5})*$")
_LOG_LEVELS = ("ALL", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")


class DeployMode(StrEnum):
    """Where the Spark job runs."""

    LOCAL = "local"
    STANDALONE = "standalone"


def _check_master(mode: DeployMode, master: str) -> None:
    pattern = _LOCAL_MASTER if mode is DeployMode.LOCAL else _STANDALONE_MASTER
    if not pattern.fullmatch(master):
        expected = (
            "local, local[N] or local[*]" if mode is DeployMode.LOCAL else ("spark://HOST:PORT")
        )
        raise SparkConfigError(f"master for {mode} mode: expected {expected}, got {master!r}")


def mode_for_master(master: str) -> DeployMode:
    """The deployment mode a master URL implies."""
    if _LOCAL_MASTER.fullmatch(master):
        return DeployMode.LOCAL
    if _STANDALONE_MASTER.fullmatch(master):
        return DeployMode.STANDALONE
    raise SparkConfigError(
        f"master: expected local[N] or spark://HOST:PORT, got {master!r} "
        "(Kubernetes: `trustedml submit --master k8s://...` or `trustedml k8s render`)"
    )


_CLUSTER_SECRET_INFO = b"trusted-ml cluster secret v1\0"


def cluster_secret(base: Secret, master_url: str) -> Secret:
    """The auth secret of the standalone cluster at ``master_url``: HKDF-SHA256 of the
    key directory's Spark auth secret ``base`` with the master URL as context, as 64
    hex characters. The same key directory on every host gives the daemons and the
    drivers of one cluster the same secret, and each cluster (master URL) its own."""
    _check_master(DeployMode.STANDALONE, master_url)
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=_CLUSTER_SECRET_INFO + master_url.encode("utf-8"),
    ).derive(base.reveal())
    return Secret(derived.hex())


def auth_secret_for(base: Secret, master: str) -> Secret:
    """The auth secret a job on ``master`` uses: :func:`cluster_secret` for a
    ``spark://`` master, ``base`` otherwise (local mode makes its own per-app secret)."""
    if mode_for_master(master) is DeployMode.STANDALONE:
        return cluster_secret(base, master)
    return base


def _check_extra(extra: Mapping[str, str]) -> None:
    for key, value in extra.items():
        if not key.startswith("spark.") and not key.startswith("parquet."):
            raise SparkConfigError(f"--conf {key}: expected a key starting with 'spark.'")
        if _SECRET_LOOKING.search(key):
            # A value given here would sit in argv or a file in plaintext.
            raise SparkConfigError(
                f"--conf {key}: secrets may not be passed as Spark properties; "
                "trusted-ml supplies them from the key directory"
            )
        if not isinstance(value, str):
            raise SparkConfigError(f"--conf {key}: expected a string value, got {value!r}")
        if "${" in value:
            # Spark substitutes ${env:NAME} in values, and the secrets are in the env.
            raise SparkConfigError(
                f"--conf {key}: values may not contain ${{...}} references "
                "(Spark would substitute environment variables, secrets included)"
            )


# Every key the secure configuration sets itself (in any mode, with any options; a
# test checks it against conf()), plus the Parquet encryption keys of _pme.pme_conf.
MANAGED_KEYS = frozenset(
    {
        "spark.master",
        "spark.driver.host",
        "spark.driver.bindAddress",
        "spark.pyspark.python",
        "spark.pyspark.driver.python",
        "spark.executorEnv.PYSPARK_PYTHON",
        "spark.executorEnv.SPARK_LOCAL_IP",
        "spark.log.level",
        "spark.ui.enabled",
        "spark.ui.showConsoleProgress",
        "spark.local.dir",
        "spark.authenticate",
        "spark.authenticate.secret",
        "spark.authenticate.enableSaslEncryption",
        "spark.network.crypto.enabled",
        "spark.network.crypto.cipher",
        "spark.network.crypto.authEngineVersion",
        "spark.network.crypto.saslFallback",
        "spark.io.encryption.enabled",
        "spark.io.encryption.keySizeBits",
        "spark.ssl.enabled",
        "spark.ssl.protocol",
        "spark.ssl.keyStore",
        "spark.ssl.keyStoreType",
        "spark.ssl.keyStorePassword",
        "spark.ssl.keyPassword",
        "spark.ssl.trustStore",
        "spark.ssl.trustStoreType",
        "spark.ssl.trustStorePassword",
        "spark.ssl.rpc.enabled",
        "spark.redaction.regex",
        "spark.python.unix.domain.socket.enabled",
        "spark.ui.killEnabled",
        "spark.master.rest.enabled",
        "spark.hadoop.parquet.crypto.factory.class",
        "spark.hadoop.parquet.encryption.kms.client.class",
        "spark.hadoop.parquet.encryption.double.wrapping",
        "spark.hadoop.parquet.encryption.key.material.store.internally",
        "spark.hadoop.parquet.encryption.algorithm",
        "spark.hadoop.parquet.encryption.data.key.length.bits",
        "spark.hadoop.fs.tml.impl",
        "spark.hadoop.fs.tml.impl.disable.cache",
    }
)
# Managed keys that have an option of their own.
_OPTION_FOR = {
    "spark.master": "--master",
    "spark.log.level": "--log-level",
    "spark.local.dir": "--local-dir",
    "spark.ui.enabled": "--no-ui",
    "spark.ssl.rpc.enabled": "--rpc-tls",
}


def check_secure_conf(extra: Mapping[str, str], allow_insecure: Collection[str] = ()) -> None:
    """Raise :class:`SparkConfigError` naming the first ``--conf`` key of ``extra`` a
    secure job refuses: a secret-looking key, a ``${...}`` value, a key trusted-ml
    manages, or a key off the allow-list (docs/spark-security.md) that is not in
    ``allow_insecure``; or an ``allow_insecure`` key that is not needed."""
    _check_extra(extra)
    managed = MANAGED_KEYS
    for key in sorted(allow_insecure):
        if key not in extra:
            raise SparkConfigError(
                f"--allow-insecure-conf {key}: expected a matching --conf {key}=VALUE, got none"
            )
    for key in sorted(extra):
        if key in managed:
            option = _OPTION_FOR.get(key)
            alternative = f"use {option}" if option else "use --insecure for plain Spark"
            raise SparkConfigError(
                f"--conf {key}: managed by the secure configuration, even with "
                f"--allow-insecure-conf; {alternative}"
            )
        why = conf_refusal(key)
        if why is None:
            if key in allow_insecure:
                raise SparkConfigError(
                    f"--allow-insecure-conf {key}: not needed, the key is on the allow-list"
                )
            continue
        if key not in allow_insecure:
            raise SparkConfigError(
                f"--conf {key}: refused ({why.category}): {why.reason}; {why.alternative} "
                f"(experts: --allow-insecure-conf {key} lets it through, recorded in the "
                "job measurement)"
            )


class SparkSettings(Protocol):
    """What a launcher needs from a Spark configuration."""

    @property
    def master(self) -> str: ...

    @property
    def secure(self) -> bool: ...

    def conf(self) -> dict[str, str]:
        """Non-secret Spark properties (safe to write to a file or log)."""
        ...

    def environment(self) -> dict[str, str]:
        """Variables for the Spark child process, secrets included."""
        ...

    def insecure_conf(self) -> dict[str, str]:
        """The --conf properties let through with --allow-insecure-conf (measured)."""
        ...

    def measured_conf(self) -> dict[str, str]:
        """The properties of :meth:`conf` that enter the job measurement."""
        ...


@dataclass(frozen=True)
class _Common:
    master: str = "local[2]"
    python: str = field(default_factory=lambda: sys.executable)
    local_ip: str = "127.0.0.1"
    log_level: str = "WARN"
    ui: bool = True
    local_dir: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    keyring: KeyRing | None = field(default=None, repr=False)
    pme_jar: Path | None = None
    # The tml:// file system (built at install; None where no JDK can build it).
    fs_jar: Path | None = None
    # Where the job's trusted runtime gets data keys after attesting (not secret).
    broker_url: str | None = None
    broker_ca: Path | None = None

    def _validate_common(self) -> None:
        if self.log_level.upper() not in _LOG_LEVELS:
            raise SparkConfigError(
                f"log level: expected one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        if not self.python:
            raise SparkConfigError("python: expected an interpreter path, got ''")
        _check_extra(self.extra)
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        if self.broker_url is not None and not self.broker_url.startswith("https://"):
            raise SparkConfigError(
                f"broker URL: expected https://HOST:PORT, got {self.broker_url!r}"
            )
        if self.keyring is not None and self.pme_jar is None:
            from trustedml.spark._pme import kms_client_jar

            object.__setattr__(self, "pme_jar", kms_client_jar())
        if self.fs_jar is None:
            from trustedml.spark._jvmfs import fs_jar

            # Without it the Python data source reads .tml files (and says why).
            with contextlib.suppress(LaunchError):
                object.__setattr__(self, "fs_jar", fs_jar())

    def _common_conf(self) -> dict[str, str]:
        conf = {
            "spark.master": self.master,
            "spark.driver.host": self.local_ip,
            "spark.driver.bindAddress": self.local_ip,
            "spark.pyspark.python": self.python,
            "spark.pyspark.driver.python": self.python,
            "spark.executorEnv.PYSPARK_PYTHON": self.python,
            "spark.log.level": self.log_level.upper(),
            "spark.ui.enabled": "true" if self.ui else "false",
            "spark.ui.showConsoleProgress": "false",
        }
        if not self.master.startswith("spark://"):
            # On a cluster an executor binds its worker's address (the worker's own
            # SPARK_LOCAL_IP, inherited), never the driver's.
            conf["spark.executorEnv.SPARK_LOCAL_IP"] = self.local_ip
        if self.local_dir is not None:
            conf["spark.local.dir"] = str(self.local_dir)
        return conf

    def _with_extra(self, conf: dict[str, str]) -> dict[str, str]:
        conf.update(self.extra)
        jars = []
        if self.pme_jar is not None:
            from trustedml.spark._pme import pme_conf

            pme = pme_conf(self.pme_jar)
            jars.append(pme.pop("spark.jars"))
            conf.update(pme)
        if "spark.jars" in self.extra:
            jars.append(self.extra["spark.jars"])
        if self.fs_jar is not None:
            from trustedml.spark._jvmfs import fs_conf

            tml = fs_conf(self.fs_jar)
            jars.append(tml.pop("spark.jars"))
            conf.update(tml)
        if jars:
            conf["spark.jars"] = ",".join(jars)
        return conf

    def insecure_conf(self) -> dict[str, str]:
        """The --conf properties let through with --allow-insecure-conf: none here."""
        return {}

    def measured_conf(self) -> dict[str, str]:
        """The properties of :meth:`conf` that enter the job measurement: all but the
        machine-local and secret-looking ones (:func:`trustedml.spark.measured_conf`)."""
        # Imported here: _measured builds configurations of this module.
        from trustedml.spark._measured import measured_conf

        return measured_conf(self.conf())

    def conf(self) -> dict[str, str]:
        """Non-secret Spark properties (each configuration builds its own)."""
        raise NotImplementedError

    def _common_env(self) -> dict[str, str]:
        env = {
            "SPARK_LOCAL_IP": self.local_ip,
            "PYSPARK_PYTHON": self.python,
            "PYSPARK_DRIVER_PYTHON": self.python,
        }
        if self.keyring is not None:
            env[ENV_KEYRING] = self.keyring.export().reveal_text()
        if self.broker_url is not None:
            env[ENV_BROKER_URL] = self.broker_url
            if self.broker_ca is not None:
                env[ENV_BROKER_CA] = str(self.broker_ca)
        return env


@dataclass(frozen=True)
class PlainSparkConfig(_Common):
    """Spark with no protection at all: for baselines only."""

    secure: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._validate_common()
        mode_for_master(self.master)

    def conf(self) -> dict[str, str]:
        return self._with_extra(self._common_conf())

    def environment(self) -> dict[str, str]:
        return self._common_env()


@dataclass(frozen=True)
class SecureSparkConfig(_Common):
    """Spark with every protection on, built from a key directory.

    Authenticated RPC (auth engine v2), AES-GCM RPC encryption, AES-256 encryption
    of shuffle and spill files, TLS for the web UIs (and optionally for RPC), Python
    workers over Unix domain sockets, secret redaction, and in standalone mode the
    unauthenticated REST submission port closed.
    """

    mode: DeployMode = DeployMode.LOCAL
    keystore: Path = Path()
    truststore: Path = Path()
    auth_secret: Secret = field(default_factory=lambda: Secret(b""), repr=False)
    keystore_password: Secret = field(default_factory=lambda: Secret(b""), repr=False)
    truststore_password: Secret = field(default_factory=lambda: Secret(b""), repr=False)
    rpc_tls: bool = False
    # --conf keys let through although the allow-list refuses them (experts only).
    allow_insecure: Collection[str] = frozenset()
    secure: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self._validate_common()
        object.__setattr__(self, "mode", DeployMode(self.mode))
        _check_master(self.mode, self.master)
        for name in ("keystore", "truststore"):
            path = getattr(self, name)
            if not Path(path).is_file():
                raise SparkConfigError(f"{name}: expected an existing file, got {str(path)!r}")
        for name in ("auth_secret", "keystore_password", "truststore_password"):
            if len(getattr(self, name)) < 16:
                raise SparkConfigError(f"{name}: expected at least 16 bytes of secret")
        if isinstance(self.allow_insecure, str):
            raise SparkConfigError(
                f"allow_insecure: expected a collection of keys, got {self.allow_insecure!r}"
            )
        object.__setattr__(self, "allow_insecure", frozenset(self.allow_insecure))
        check_secure_conf(self.extra, self.allow_insecure)

    @classmethod
    def from_key_directory(
        cls,
        keys: KeyDirectory,
        passphrase: Secret,
        *,
        master: str = "local[2]",
        mode: DeployMode | None = None,
        **options: object,
    ) -> SecureSparkConfig:
        """Unseal ``keys`` with ``passphrase`` and build the configuration for ``master``
        (for a ``spark://`` master, with that cluster's secret: :func:`cluster_secret`)."""
        opened = keys.unseal(passphrase)
        return cls(
            master=master,
            mode=mode or mode_for_master(master),
            keystore=keys.keystore,
            truststore=keys.truststore,
            auth_secret=auth_secret_for(opened.spark_auth_secret, master),
            keystore_password=opened.keystore_password,
            truststore_password=opened.truststore_password,
            **options,  # type: ignore[arg-type]
        )

    def insecure_conf(self) -> dict[str, str]:
        """The --conf properties let through with --allow-insecure-conf (measured)."""
        return {key: self.extra[key] for key in sorted(self.allow_insecure)}

    def _security_conf(self) -> dict[str, str]:
        conf = _security_properties(str(self.keystore), str(self.truststore), self.rpc_tls)
        if self.mode is DeployMode.STANDALONE:
            # Spark insists the property exists in standalone mode, but reads the
            # value from _SPARK_AUTH_SECRET first; this placeholder is never used.
            conf["spark.authenticate.secret"] = "${env:" + ENV_AUTH_SECRET + "}"
            # With auth on, the REST port still accepts unauthenticated submissions.
            conf["spark.master.rest.enabled"] = "false"
        return conf

    def conf(self) -> dict[str, str]:
        conf = self._with_extra(self._common_conf())
        conf.update(self._security_conf())
        return conf

    def environment(self) -> dict[str, str]:
        env = self._common_env()
        env[ENV_KEYSTORE_PASSWORD] = self.keystore_password.reveal_text()
        env[ENV_TRUSTSTORE_PASSWORD] = self.truststore_password.reveal_text()
        if self.mode is DeployMode.STANDALONE:
            # In local mode Spark makes a fresh per-application secret instead.
            env[ENV_AUTH_SECRET] = self.auth_secret.reveal_text()
        if self.rpc_tls:
            env[ENV_RPC_KEYSTORE_PASSWORD] = self.keystore_password.reveal_text()
            env[ENV_RPC_KEY_PASSWORD] = self.keystore_password.reveal_text()
            env[ENV_RPC_TRUSTSTORE_PASSWORD] = self.truststore_password.reveal_text()
        return env


def _security_properties(keystore: str, truststore: str, rpc_tls: bool) -> dict[str, str]:
    return {
        "spark.authenticate": "true",
        "spark.network.crypto.enabled": "true",
        # The default AES/CTR is unauthenticated (CVE-2025-55039).
        "spark.network.crypto.cipher": "AES/GCM/NoPadding",
        "spark.network.crypto.authEngineVersion": "2",
        "spark.network.crypto.saslFallback": "false",
        "spark.authenticate.enableSaslEncryption": "false",
        "spark.io.encryption.enabled": "true",
        "spark.io.encryption.keySizeBits": "256",
        "spark.ssl.enabled": "true",
        "spark.ssl.protocol": "TLSv1.3",
        "spark.ssl.keyStore": keystore,
        "spark.ssl.keyStoreType": "PKCS12",
        "spark.ssl.keyStorePassword": "${env:" + ENV_KEYSTORE_PASSWORD + "}",
        "spark.ssl.keyPassword": "${env:" + ENV_KEYSTORE_PASSWORD + "}",
        "spark.ssl.trustStore": truststore,
        "spark.ssl.trustStoreType": "PKCS12",
        "spark.ssl.trustStorePassword": "${env:" + ENV_TRUSTSTORE_PASSWORD + "}",
        "spark.ssl.rpc.enabled": "true" if rpc_tls else "false",
        "spark.redaction.regex": REDACTION_REGEX,
        # Without it, rows sent to Python workers cross loopback TCP in plaintext.
        "spark.python.unix.domain.socket.enabled": "true",
        "spark.ui.killEnabled": "false",
    }


# The in-pod environment variables of a Kubernetes job that carry secrets, each filled
# from a Secret key by Spark's secretKeyRef (name -> the key of the TLS Secret).
KUBERNETES_SECRET_ENV = {
    ENV_KEYSTORE_PASSWORD: "keystore-password",
    ENV_TRUSTSTORE_PASSWORD: "truststore-password",
}
KUBERNETES_RPC_TLS_ENV = {
    ENV_RPC_KEYSTORE_PASSWORD: "keystore-password",
    ENV_RPC_KEY_PASSWORD: "keystore-password",
    ENV_RPC_TRUSTSTORE_PASSWORD: "truststore-password",
}


def kubernetes_security_conf(
    *, keystore: str, truststore: str, auth_secret_file: str, rpc_tls: bool = False
) -> dict[str, str]:
    """The security properties of a Spark-on-Kubernetes job (the same protections as
    :class:`SecureSparkConfig`), with in-pod paths: ``keystore``/``truststore`` and
    ``auth_secret_file`` are where the job's Secrets are mounted. Spark reads the auth
    secret from that file on the driver and the executors, so it never becomes a pod
    env value; the passwords are ``${env:NAME}`` references the pods fill from a Secret
    (:data:`KUBERNETES_SECRET_ENV`, plus :data:`KUBERNETES_RPC_TLS_ENV` with ``rpc_tls``)."""
    for name, path in (
        ("keystore", keystore),
        ("truststore", truststore),
        ("auth_secret_file", auth_secret_file),
    ):
        if not path.startswith("/"):
            raise SparkConfigError(f"{name}: expected an absolute in-pod path, got {path!r}")
    conf = _security_properties(keystore, truststore, rpc_tls)
    conf["spark.authenticate.secret.file"] = auth_secret_file
    return conf


def properties_text(conf: Mapping[str, str]) -> str:
    """Render properties in the Java .properties syntax spark-submit reads."""
    lines = ["# written by trusted-ml; holds no secret values"]
    for key in sorted(conf):
        lines.append(f"{_escape(key, True)}={_escape(conf[key], False)}")
    return "\n".join(lines) + "\n"


def _escape(text: str, is_key: bool) -> str:
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch in "=:#!" or (ch == " " and (is_key or i == 0)):
            out.append("\\" + ch)
        elif ord(ch) > 126 or ord(ch) < 32:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)
