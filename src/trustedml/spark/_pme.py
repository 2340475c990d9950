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

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from trustedml._env import ENV_KEYRING
from trustedml.data import KeyRing
from trustedml.errors import LaunchError
from trustedml.spark._submit import spark_home

__all__ = ["ENV_PME_KEYRING", "KMS_CLIENT_CLASS", "kms_client_jar", "pme_conf", "pme_environment"]

ENV_PME_KEYRING = ENV_KEYRING
KMS_CLIENT_CLASS = "org.trustedml.parquet.TrustedMLKmsClient"
CRYPTO_FACTORY_CLASS = "org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory"
JAVA_SOURCE = Path(__file__).resolve().parent / "java" / "TrustedMLKmsClient.java"
_CLASS_PATH = KMS_CLIENT_CLASS.replace(".", "/") + ".class"
_TAIL_CHARS = 2000


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trustedml" / "jars"


def _javac() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "javac").is_file():
        return str(Path(java_home) / "bin" / "javac")
    found = shutil.which("javac")
    if found is None:
        raise LaunchError(
            "javac not found: building the Parquet KMS client needs a Java 17+ JDK "
            "(not just a JRE) on PATH or JAVA_HOME"
        )
    return found


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def _pack(classes: Path, jar: Path) -> None:
    tool = shutil.which("jar")
    if tool is not None:
        done = subprocess.run(
            [tool, "--create", "--file", str(jar), "-C", str(classes), "."],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return
    # No jar tool (or it failed): a jar is a zip with an optional manifest.
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
        for path in sorted(classes.rglob("*.class")):
            zf.write(path, path.relative_to(classes).as_posix())


def kms_client_jar(cache_dir: Path | None = None) -> Path:
    """The jar holding the KMS client, compiled against the installed pyspark.

    Cached in ``cache_dir`` (default ``~/.cache/trustedml/jars``) under a hash of
    the Java source and the pyspark version; a cached jar is returned as is.
    """
    source = JAVA_SOURCE.read_bytes()
    version = importlib.metadata.version("pyspark")
    digest = hashlib.sha256(source + b"\x00pyspark " + version.encode()).hexdigest()
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    jar = cache / f"trustedml-parquet-kms-{digest[:16]}.jar"
    if jar.is_file():
        return jar
    jars = sorted((spark_home() / "jars").glob("*.jar"))
    if not jars:
        raise LaunchError(f"no jars in {spark_home() / 'jars'}: the pyspark install is broken")
    javac = _javac()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trustedml-javac-") as tmp:
        classes = Path(tmp) / "classes"
        classes.mkdir()
        argv = [javac, "--release", "17", "-encoding", "UTF-8", "-nowarn"]
        argv += ["-cp", os.pathsep.join(str(p) for p in jars), "-d", str(classes)]
        try:
            done = subprocess.run(
                [*argv, str(JAVA_SOURCE)], capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise LaunchError(f"cannot run {javac}: {exc.strerror}") from exc
        if done.returncode != 0 or not (classes / _CLASS_PATH).is_file():
            raise LaunchError(
                f"compiling {JAVA_SOURCE.name} failed (javac exit {done.returncode}):\n"
                + _tail(done.stderr + done.stdout)
            )
        # Built beside the target and renamed: concurrent builders never see half a jar.
        fd, name = tempfile.mkstemp(prefix=".partial-", suffix=".jar", dir=cache)
        os.close(fd)
        partial = Path(name)
        try:
            _pack(classes, partial)
            partial.replace(jar)
        finally:
            partial.unlink(missing_ok=True)
    return jar


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
