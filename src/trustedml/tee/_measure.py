"""The job measurement: one digest of everything that decides what a job does.

The byte-exact definition is in docs/measurement.md; keep the two in step (a change
to what is measured, or how, is a new format version).
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from trustedml._version import __version__
from trustedml.errors import ConfigError, LaunchError
from trustedml.tee._settings import JobSettings

__all__ = [
    "DIGEST_SIZE",
    "DOMAIN",
    "FORMAT_VERSION",
    "JobMeasurement",
    "TrustedFile",
    "canonical_json",
    "measure_job",
    "sha256_file",
]

DOMAIN = b"trustedml/job-measurement/v1\n"
FORMAT_VERSION = 1
# SHA-384: 48 bytes, the size of a TDX RTMR / MRTD and an SEV-SNP measurement.
DIGEST_SIZE = 48
LAUNCHERS = ("submit", "run")
SELF_DISTRIBUTION = "trusted-ml"
SELF_PACKAGE = "trustedml"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's content, lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> bytes:
    """The canonical encoding of measurement parts: JSON with sorted keys, no
    whitespace, UTF-8, non-ASCII characters unescaped."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates: an argument that was not valid UTF-8 on the command line.
        raise ConfigError(f"measurement: expected UTF-8 text, got {exc.object!r}") from None


@dataclass(frozen=True)
class TrustedFile:
    """A file whose content the measurement pins: ``name`` as measured, ``path`` on
    this machine, ``sha256`` (hex) at measurement time."""

    name: str
    path: Path
    sha256: str

    def check(self) -> None:
        """Raise :class:`LaunchError` unless the file still has the measured content."""
        try:
            actual = sha256_file(self.path)
        except OSError as exc:
            raise LaunchError(
                f"trusted file {self.name} ({self.path}) cannot be read since it was "
                f"measured: {exc.strerror or exc}"
            ) from None
        if actual != self.sha256:
            raise LaunchError(
                f"trusted file {self.name} ({self.path}) changed since it was measured: "
                f"measured sha256 {self.sha256}, now {actual}"
            )


@dataclass(frozen=True)
class JobMeasurement:
    """The measurement of a job: its canonical parts and their SHA-384 digest.

    ``trusted_files`` lists every file whose hash is in the parts, with its local path,
    so that a launcher can check them again right before it starts the job.
    """

    canonical: bytes = field(repr=False)
    trusted_files: tuple[TrustedFile, ...] = field(default=(), repr=False)
    digest: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha384(DOMAIN + self.canonical).digest())

    @classmethod
    def from_parts(
        cls, parts: Mapping[str, Any], trusted_files: Iterable[TrustedFile] = ()
    ) -> JobMeasurement:
        """Encode ``parts`` canonically and digest them."""
        return cls(canonical_json(dict(parts)), tuple(trusted_files))

    @property
    def parts(self) -> dict[str, Any]:
        """A fresh copy of the measured parts."""
        parts: dict[str, Any] = json.loads(self.canonical)
        return parts

    @property
    def hex(self) -> str:
        return self.digest.hex()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the algorithm, the digest (hex) and the parts."""
        return {"algorithm": "sha384", "digest": self.hex, "parts": self.parts}

    def verify_files(self) -> None:
        """Hash every trusted file again; :class:`LaunchError` naming the first that
        changed, with both hashes."""
        for trusted in self.trusted_files:
            trusted.check()

    def __repr__(self) -> str:
        return f"JobMeasurement(digest={self.hex})"


# -- imports and the package lock --------------------------------------------------------


def _imports_in_source(source: bytes, name: str) -> set[str]:
    try:
        tree = ast.parse(source, filename=name)
    except (SyntaxError, ValueError) as exc:
        raise ConfigError(f"{name}: expected Python source: {exc}") from None
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _scan_file(path: Path, data: bytes) -> tuple[set[str], set[str]]:
    """(imported top-level modules, top-level modules this file provides)."""
    if path.suffix == ".py":
        return _imports_in_source(data, path.name), {path.stem}
    if not zipfile.is_zipfile(path):
        return set(), set()
    imports: set[str] = set()
    provides: set[str] = set()
    with zipfile.ZipFile(path) as archive:
        for member in sorted(archive.namelist()):
            if not member.endswith(".py"):
                continue
            parts = PurePosixPath(member).parts
            provides.add(parts[0] if len(parts) > 1 else PurePosixPath(member).stem)
            imports |= _imports_in_source(archive.read(member), f"{path.name}:{member}")
    return imports, provides


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requirements(dist: importlib.metadata.Distribution) -> list[str]:
    names = []
    for requirement in dist.requires or ():
        spec, _, marker = requirement.partition(";")
        # Extras are optional features nobody asked for; other markers are not
        # evaluated: a requirement counts when it is installed.
        if "extra" in marker:
            continue
        match = _REQUIREMENT_NAME.match(spec)
        if match:
            names.append(_normalize(match.group(1)))
    return names


def _find_distribution(name: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _record_b64_to_hex(value: str) -> str:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def _files_digest(entries: Iterable[tuple[str, str]]) -> str:
    lines = "".join(f"{name}\t{sha}\n" for name, sha in sorted(entries))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _record_files(dist: importlib.metadata.Distribution) -> Iterator[tuple[str, Path, str]]:
    """(path as recorded, local path, sha256 hex) of the distribution's installed
    files inside its site directory, as its RECORD pins them."""
    for entry in dist.files or ():
        parts = PurePosixPath(str(entry)).parts
        if not parts or parts[0] == ".." or parts[0].endswith(".dist-info"):
            continue
        if "__pycache__" in parts or entry.hash is None:
            continue
        local = Path(str(dist.locate_file(entry)))
        if entry.hash.mode == "sha256":
            sha = _record_b64_to_hex(entry.hash.value)
        else:
            try:
                sha = sha256_file(local)
            except OSError as exc:
                raise LaunchError(f"cannot read {local}: {exc.strerror or exc}") from None
        yield str(entry), local, sha


def _self_files() -> Iterator[tuple[str, Path, str]]:
    """trusted-ml's own package files, hashed where they are: the same lines whether
    it is installed from a wheel or from a checkout (editable)."""
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package.parent)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        yield rel.as_posix(), path, sha256_file(path)


def _lock(
    imports: set[str], local_modules: set[str], launcher: str
) -> tuple[list[dict[str, str]], list[str], list[TrustedFile]]:
    """The package lock: (packages, unresolved imports, trusted files)."""
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    mapping = importlib.metadata.packages_distributions()
    roots: set[str] = {SELF_DISTRIBUTION}
    if launcher == "submit":
        roots.add("pyspark")
    unresolved: set[str] = set()
    for module in sorted(imports - stdlib - local_modules):
        if module == SELF_PACKAGE:
            continue
        dists = mapping.get(module)
        if dists:
            roots.update(_normalize(d) for d in dists)
        else:
            unresolved.add(module)

    packages: list[dict[str, str]] = []
    trusted: list[TrustedFile] = []
    seen: set[str] = set()
    todo = sorted(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        dist = _find_distribution(name)
        if dist is None:
            if name == SELF_DISTRIBUTION:
                # Running from a source tree that is not installed: still measured.
                files = list(_self_files())
                version = __version__
            else:
                continue
        else:
            files = list(_self_files() if name == SELF_DISTRIBUTION else _record_files(dist))
            version = dist.version
            todo.extend(r for r in _requirements(dist) if r not in seen)
        packages.append(
            {
                "name": name,
                "version": version,
                "files": _files_digest((rel, sha) for rel, _, sha in files),
            }
        )
        trusted.extend(TrustedFile(f"{name}:{rel}", local, sha) for rel, local, sha in files)
    packages.sort(key=lambda p: p["name"])
    return packages, sorted(unresolved), trusted


# -- Python and Java --------------------------------------------------------------------


def java_binary(env: Mapping[str, str] | None = None) -> Path | None:
    """The java that Spark's launcher runs: ``$JAVA_HOME/bin/java``, else ``java`` on
    PATH (the rule of ``bin/spark-class``)."""
    env = os.environ if env is None else env
    java_home = env.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        return candidate if candidate.is_file() else None
    found = shutil.which("java", path=env.get("PATH"))
    return Path(found) if found else None


@functools.lru_cache(maxsize=8)
def java_properties(java: str) -> dict[str, str]:
    """``java -XshowSettings:properties`` as a dict (cached per binary and process)."""
    try:
        done = subprocess.run(
            [java, "-XshowSettings:properties", "-version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"cannot run {java} -version: {exc}") from None
    props: dict[str, str] = {}
    for line in done.stderr.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep and key.startswith("java."):
            props[key] = value
    if done.returncode != 0 or "java.runtime.version" not in props:
        raise LaunchError(f"{java} -version failed (exit {done.returncode})")
    return props


def _java_part(java: Path | None) -> dict[str, str] | None:
    if java is None:
        return None
    props = java_properties(str(java.resolve()))
    return {
        "runtime_version": props["java.runtime.version"],
        "vendor": props.get("java.vendor", ""),
        "vm": props.get("java.vm.name", ""),
    }


def _python_part() -> dict[str, str]:
    return {"implementation": sys.implementation.name, "version": platform.python_version()}


# -- the measurement --------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: expected a readable file ({exc.strerror or exc})") from None


def measure_job(
    app: str | os.PathLike[str],
    args: Sequence[str] = (),
    py_files: Sequence[str | os.PathLike[str]] = (),
    settings: JobSettings | None = None,
    *,
    launcher: str = "submit",
    java: Path | None = None,
) -> JobMeasurement:
    """Measure the job that ``trustedml submit`` (or ``run``) would start.

    Hashes the application and ``py_files`` (named by file name, so the digest does
    not depend on where they are), scans them for imports to build the package lock,
    and adds the arguments, the measured Spark properties of ``settings``, the Python
    and Java versions and trusted-ml's own files. ``java`` defaults to the one Spark
    would run. See docs/measurement.md.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if settings is None:
        raise ConfigError("settings: expected the job's Spark configuration, got None")
    args = list(args)
    for arg in args:
        if not isinstance(arg, str):
            raise ConfigError(f"args: expected strings, got {type(arg).__name__}")
    app_path = Path(app).resolve()
    files = [Path(p).resolve() for p in py_files]

    trusted: list[TrustedFile] = []
    imports: set[str] = set()
    local: set[str] = set()
    app_data = _read(app_path)
    app_sha = hashlib.sha256(app_data).hexdigest()
    trusted.append(TrustedFile(f"app:{app_path.name}", app_path, app_sha))
    found, _ = _scan_file(app_path, app_data)
    imports |= found
    py_parts = []
    for path in files:
        data = _read(path)
        sha = hashlib.sha256(data).hexdigest()
        trusted.append(TrustedFile(f"py-file:{path.name}", path, sha))
        py_parts.append({"name": path.name, "sha256": sha})
        found, provided = _scan_file(path, data)
        imports |= found
        local |= provided

    packages, unresolved, package_files = _lock(imports, local, launcher)
    parts: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "launcher": launcher,
        "app": {"name": app_path.name, "sha256": app_sha},
        "py_files": py_parts,
        "args": args,
        "spark_conf": dict(settings.measured_conf()),
        "trustedml": __version__,
        "python": _python_part(),
        "java": _java_part(java if java is not None else java_binary()),
        "packages": packages,
        "unresolved_imports": unresolved,
    }
    insecure = settings.insecure_conf()
    if insecure:
        # Present only when keys were let through, so other digests stay as they were.
        parts["insecure_conf"] = dict(insecure)
    return JobMeasurement.from_parts(parts, [*trusted, *package_files])
