"""Compile trusted-ml's small Java helpers against the installed pyspark, once, into cached jars."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from trustedml.errors import LaunchError
from trustedml.spark._submit import spark_home

__all__ = ["compiled_jar", "spark_classpath"]

_TAIL_CHARS = 2000


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trustedml" / "jars"


def spark_classpath() -> list[Path]:
    """The jars of the installed pyspark (what the helpers compile and run against)."""
    jars = sorted((spark_home() / "jars").glob("*.jar"))
    if not jars:
        raise LaunchError(f"no jars in {spark_home() / 'jars'}: the pyspark install is broken")
    return jars


def _javac(what: str) -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "javac").is_file():
        return str(Path(java_home) / "bin" / "javac")
    found = shutil.which("javac")
    if found is None:
        raise LaunchError(
            f"javac not found: building {what} needs a Java 17+ JDK "
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


def _sources_digest(sources: Sequence[Path]) -> str:
    """The hash of the sources and the pyspark version; one source hashes as it always did
    (cached jars stay valid)."""
    version = importlib.metadata.version("pyspark")
    if len(sources) == 1:
        text = sources[0].read_bytes()
    else:
        # Each file's name and length frame its bytes: moving code between files changes it.
        parts = []
        for path in sorted(sources, key=lambda p: p.name):
            body = path.read_bytes()
            parts.append(b"%s\x00%d\x00%s" % (path.name.encode(), len(body), body))
        text = b"".join(parts)
    return hashlib.sha256(text + b"\x00pyspark " + version.encode()).hexdigest()


def compiled_jar(
    source: Path | Sequence[Path],
    class_name: str,
    *,
    stem: str,
    what: str,
    cache_dir: Path | None = None,
) -> Path:
    """The jar of the Java file(s) ``source`` (one of them defining ``class_name``),
    compiled together against the installed pyspark's jars; ``what`` names it in errors.

    Cached in ``cache_dir`` (default ``~/.cache/trustedml/jars``) as
    ``STEM-HASH.jar``, the hash covering the sources and the pyspark version; a cached
    jar is returned as is.
    """
    sources = [Path(source)] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise LaunchError(f"building {what}: no Java sources given")
    digest = _sources_digest(sources)
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    jar = cache / f"{stem}-{digest[:16]}.jar"
    if jar.is_file():
        return jar
    jars = spark_classpath()
    javac = _javac(what)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trustedml-javac-") as tmp:
        classes = Path(tmp) / "classes"
        classes.mkdir()
        argv = [javac, "--release", "17", "-encoding", "UTF-8", "-nowarn"]
        argv += ["-cp", os.pathsep.join(str(p) for p in jars), "-d", str(classes)]
        try:
            done = subprocess.run(
                [*argv, *(str(p) for p in sources)], capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise LaunchError(f"cannot run {javac}: {exc.strerror}") from exc
        if (
            done.returncode != 0
            or not (classes / (class_name.replace(".", "/") + ".class")).is_file()
        ):
            raise LaunchError(
                f"compiling {', '.join(p.name for p in sources)} failed "
                f"(javac exit {done.returncode}):\n" + _tail(done.stderr + done.stdout)
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
