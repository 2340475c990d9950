"""Parquet Modular Encryption (PME) in Spark with trusted-ml key-encryption keys.

Spark's Parquet (parquet-mr) encrypts through a pluggable KMS client. Ours,
``org.trustedml.parquet.TrustedMLKmsClient`` (``java/TrustedMLKmsClient.java``),
wraps data keys in exactly the format of :mod:`trustedml.hazmat.keywrap`, like
:mod:`trustedml.data._pme` on the pyarrow side, so either side reads the other's
files. Three pieces wire it up:

* :func:`kms_client_jar` compiles the client against the jars of the installed
  pyspark and caches the jar;
* :func:`pme_conf` gives the Spark properties (no secrets: pass them as ``--conf``
  or in a properties file);
* :func:`pme_environment` gives the environment variable that carries the KEKs to
  the JVM (secret: only ever in the child's environment). In local mode the driver
  JVM does all the work; executors on other hosts need the variable set too.

Which keys encrypt what is chosen per write, as DataFrameWriter options::

    (df.write
       .option("parquet.encryption.footer.key", "footer-kek")
       # either every column under one key...
       .option("parquet.encryption.uniform.key", "footer-kek")
       # ...or named columns under named keys ("id:col,col;id:col"), others plaintext:
       # .option("parquet.encryption.column.keys", "pii-kek:name,email")
       .parquet(path))

Reading needs no options: the key ids are recorded in each file.
"""

from __future__ import annotations

from pathlib import Path

from trustedml._env import ENV_KEYRING
from trustedml.data import KeyRing
from trustedml.spark._javac import compiled_jar

__all__ = ["ENV_PME_KEYRING", "KMS_CLIENT_CLASS", "kms_client_jar", "pme_conf", "pme_environment"]

ENV_PME_KEYRING = ENV_KEYRING
KMS_CLIENT_CLASS = "org.trustedml.parquet.TrustedMLKmsClient"
CRYPTO_FACTORY_CLASS = "org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory"
JAVA_SOURCE = Path(__file__).resolve().parent / "java" / "TrustedMLKmsClient.java"


def kms_client_jar(cache_dir: Path | None = None) -> Path:
    """The jar holding the KMS client, compiled against the installed pyspark.

    Cached in ``cache_dir`` (default ``~/.cache/trustedml/jars``) under a hash of
    the Java source and the pyspark version; a cached jar is returned as is.
    """
    return compiled_jar(
        JAVA_SOURCE,
        KMS_CLIENT_CLASS,
        stem="trustedml-parquet-kms",
        what="the Parquet KMS client",
        cache_dir=cache_dir,
    )


def pme_conf(jar: Path) -> dict[str, str]:
    """Spark properties enabling PME through ``jar`` (from :func:`kms_client_jar`).

    Holds no secrets. The writer defaults match :func:`trustedml.data._pme.
    write_encrypted_parquet`: single wrapping, key material inside the files,
    AES-GCM, 256-bit data keys.
    """
    return {
        "spark.jars": str(Path(jar).resolve()),
        "spark.hadoop.parquet.crypto.factory.class": CRYPTO_FACTORY_CLASS,
        "spark.hadoop.parquet.encryption.kms.client.class": KMS_CLIENT_CLASS,
        # Our KEKs are the "KMS": an extra locally generated KEK layer buys nothing.
        "spark.hadoop.parquet.encryption.double.wrapping": "false",
        # External key material would live in side files pyarrow cannot find.
        "spark.hadoop.parquet.encryption.key.material.store.internally": "true",
        "spark.hadoop.parquet.encryption.algorithm": "AES_GCM_V1",
        "spark.hadoop.parquet.encryption.data.key.length.bits": "256",
    }


def pme_environment(keyring: KeyRing) -> dict[str, str]:
    """The variable giving ``keyring``'s KEKs to the KMS client: secret, so for a
    child process's environment only (never a property, argument or file)."""
    return {ENV_PME_KEYRING: keyring.export().reveal_text()}
