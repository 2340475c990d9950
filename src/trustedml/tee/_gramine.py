"""Gramine-SGX: a manifest per job, signed with the key directory's enclave key.

The manifest is generated whole (no Jinja template): entrypoint the java binary
(``submit``, running Spark's SparkSubmit class directly, not the bin/spark-submit
shell script) or the Python binary (``run``), arguments baked into ``loader.argv``,
only non-secret environment, and ``sgx.trusted_files`` pinning the job's files,
the conf files and the locked packages by SHA-256. See docs/tee-backends.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from trustedml._fs import make_private_dir, write_private
from trustedml._secret import Secret
from trustedml._version import __version__
from trustedml.errors import ConfigError, LaunchError
from trustedml.tee._backend import ENV_JOB_MEASUREMENT, ENV_TEE, Job, LaunchPlan
from trustedml.tee._measure import JobMeasurement, java_binary, sha256_file

__all__ = [
    "DEFAULT_ENCLAVE_SIZE",
    "DEFAULT_MAX_THREADS",
    "GramineBackend",
    "GramineRuntime",
    "build_manifest",
    "gramine_runtime",
    "render_manifest",
    "spark_java_command",
]

DEFAULT_ENCLAVE_SIZE = "8G"
DEFAULT_MAX_THREADS = 256
MIN_THREADS = 4  # Gramine's own helper threads need that many
_SIZE = re.compile(r"^[1-9][0-9]*[KMG]$")
_SUBMIT_CLASS = "org.apache.spark.deploy.SparkSubmit"
_LAUNCHER_CLASS = "org.apache.spark.launcher.Main"
_SCALA = re.compile(r"^spark-core_(\d+\.\d+)-.*\.jar$")
_TAIL_CHARS = 2000

# The job environment that may enter the enclave: none of it secret. Everything else
# (keystore passwords, the auth secret, KEKs) stays out: in an enclave, secrets come
# from attested key release, never from the host's environment.
_ENV_ALLOWED = (
    "SPARK_HOME",
    "SPARK_CONF_DIR",
    "SPARK_LOCAL_IP",
    "PYSPARK_PYTHON",
    "PYSPARK_DRIVER_PYTHON",
    "PYSPARK_SUBMIT_ARGS",
    "JAVA_HOME",
)
# Host variables gramine-sgx itself may see (the loader runs outside the enclave).
_HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TERM")
# Read by glibc and the JVM for name resolution and users; pinned by hash.
_ETC_FILES = (
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
)


@dataclass(frozen=True)
class GramineRuntime:
    """Where Gramine's LibOS and patched C library are on this host."""

    libos: Path
    runtime_dir: Path
    arch_libdir: Path


def _arch_libdir() -> Path:
    machine = os.uname().machine
    return Path(f"/lib/{machine}-linux-gnu")


def gramine_runtime() -> GramineRuntime:
    """Ask ``gramine-manifest`` where Gramine lives; Debian/Ubuntu package paths when
    it is not installed (the manifest is then only written, never signed)."""
    arch = _arch_libdir()
    default = GramineRuntime(
        libos=Path(f"/usr{arch}/gramine/libsysdb.so"),
        runtime_dir=Path(f"/usr{arch}/gramine/runtime/glibc"),
        arch_libdir=arch,
    )
    tool = shutil.which("gramine-manifest")
    if tool is None:
        return default
    template = 'libos = "{{ gramine.libos }}"\nruntime_dir = "{{ gramine.runtimedir() }}"\n'
    with tempfile.TemporaryDirectory(prefix="trustedml-gramine-") as tmp:
        src, out = Path(tmp) / "probe.manifest.template", Path(tmp) / "probe.manifest"
        src.write_text(template)
        try:
            done = subprocess.run(
                [tool, str(src), str(out)], capture_output=True, timeout=60, check=False
            )
            if done.returncode != 0:
                return default
            found = tomllib.loads(out.read_text())
        except (OSError, subprocess.TimeoutExpired, tomllib.TOMLDecodeError):
            return default
    return GramineRuntime(Path(found["libos"]), Path(found["runtime_dir"]), arch)


def check_enclave_size(value: str) -> str:
    if not isinstance(value, str) or not _SIZE.fullmatch(value):
        raise ConfigError(f"--enclave-size: expected a size like 512M or 8G, got {value!r}")
    return value


def check_isv(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ConfigError(f"--{name}: expected an integer 0..65535, got {value!r}")
    return value


def check_threads(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_THREADS:
        raise ConfigError(f"--threads: expected an integer >= {MIN_THREADS}, got {value!r}")
    return value


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def _scala_version(spark_home: Path) -> str:
    for jar in sorted((spark_home / "jars").glob("spark-core_*.jar")):
        match = _SCALA.match(jar.name)
        if match:
            return match.group(1)
    raise LaunchError(f"no spark-core jar in {spark_home / 'jars'}: the pyspark install is broken")


def spark_java_command(
    spark_home: Path, env: Mapping[str, str], submit_args: Sequence[str]
) -> list[str]:
    """The java command ``bin/spark-submit`` would exec for ``submit_args``, asked of
    Spark's own launcher (what ``bin/spark-class`` does), without any shell."""
    java = java_binary(env)
    if java is None:
        raise LaunchError("Java not found: Spark needs Java 17 or newer on PATH or JAVA_HOME")
    argv = [str(java), "-Xmx128m", "-cp", str(spark_home / "jars" / "*"), _LAUNCHER_CLASS]
    argv += [_SUBMIT_CLASS, *submit_args]
    launch_env = dict(env)
    launch_env["SPARK_HOME"] = str(spark_home)
    launch_env["SPARK_SCALA_VERSION"] = _scala_version(spark_home)
    try:
        done = subprocess.run(argv, env=launch_env, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"cannot run Spark's launcher with {java}: {exc}") from None
    marker = done.stdout.find(b"\0\n")
    if done.returncode != 0 or marker < 0:
        raise LaunchError(
            f"Spark's launcher failed (exit {done.returncode}):\n"
            + _tail(done.stderr.decode("utf-8", "replace"))
        )
    fields = done.stdout[marker + 2 :].split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    command = [f.decode("utf-8") for f in fields]
    if not command or _SUBMIT_CLASS not in command:
        raise LaunchError("Spark's launcher printed no SparkSubmit command")
    return command


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _mounts(paths: Iterable[Path], system: Sequence[Path]) -> list[Path]:
    """The smallest set of host directories, outside the system mounts, that holds
    every path (each mounted at its own path inside the enclave)."""
    chosen: list[Path] = []
    for path in sorted(set(paths), key=lambda p: (len(p.parts), str(p))):
        if _under(path, system) or _under(path, chosen):
            continue
        chosen.append(path)
    return sorted(chosen)


def _file(path: Path, sha256: str | None = None) -> dict[str, str] | str:
    uri = f"file:{path}"
    return {"uri": uri, "sha256": sha256} if sha256 else uri


def _dir(path: Path) -> str:
    return f"file:{str(path).rstrip('/')}/"


def _python_files(python: Path) -> list[tuple[Path, str]]:
    """The interpreter as the job names it (a venv's bin/python is a symlink: pinned
    with the hash of what it points to), its real binary, and pyvenv.cfg."""
    real = python.resolve()
    digest = sha256_file(real)
    out = [(real, digest)]
    if python != real:
        out.append((python, digest))
    venv_cfg = python.parent.parent / "pyvenv.cfg"
    if venv_cfg.is_file():
        out.append((venv_cfg, sha256_file(venv_cfg)))
    return out


def _pth_files() -> list[tuple[Path, str]]:
    # site.py executes import lines in *.pth files at start-up: they are code.
    out = []
    for site in {Path(p) for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib"))}:
        for pth in sorted(site.glob("*.pth")):
            out.append((pth, sha256_file(pth)))
    return out


def build_manifest(
    *,
    measurement: JobMeasurement,
    entrypoint: Path,
    argv: Sequence[str],
    env: Mapping[str, str],
    python: Path,
    java_home: Path | None,
    conf_files: Sequence[Path],
    scratch: Path,
    extra_mounts: Sequence[Path] = (),
    allowed_dirs: Sequence[Path] = (),
    runtime: GramineRuntime,
    enclave_size: str = DEFAULT_ENCLAVE_SIZE,
    max_threads: int = DEFAULT_MAX_THREADS,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    shell_tools: bool = False,
) -> dict[str, Any]:
    """The Gramine manifest (as a dict for TOML) for a measured job."""
    arch = runtime.arch_libdir
    trusted: list[dict[str, str] | str] = [
        _file(runtime.libos),
        _dir(runtime.runtime_dir),
        _dir(arch),
        _dir(Path("/usr") / arch.relative_to("/")),
        _file(entrypoint.resolve(), sha256_file(entrypoint.resolve())),
    ]
    trusted += [_file(p, sha) for p, sha in _python_files(python)]
    trusted.append(_dir(Path(sysconfig.get_path("stdlib"))))
    if java_home is not None:
        trusted.append(_dir(java_home))
    trusted += [_file(Path(p)) for p in _ETC_FILES if Path(p).is_file()]
    if shell_tools:
        # Spark sessions started by a Python script go through bin/spark-submit (bash).
        trusted.append(_dir(Path("/usr/bin")))
    trusted += [_file(p, sha256_file(p)) for p in conf_files]
    trusted += [_file(f.path, f.sha256) for f in measurement.trusted_files]
    trusted += [_file(p, sha) for p, sha in _pth_files()]
    unique: dict[str, dict[str, str] | str] = {}
    for entry in trusted:
        unique.setdefault(entry["uri"] if isinstance(entry, dict) else entry, entry)

    system = [Path("/lib"), arch, Path("/usr"), Path("/etc")]
    needed = [
        python.parent.parent,
        python.resolve().parent.parent,
        Path(sysconfig.get_path("stdlib")),
        *(f.path.parent for f in measurement.trusted_files),
        *(p.parent for p in conf_files),
        scratch,
        *extra_mounts,
    ]
    if java_home is not None:
        needed.append(java_home)
    mounts: list[dict[str, str]] = [
        {"path": "/lib", "uri": f"file:{runtime.runtime_dir}"},
        {"path": str(arch), "uri": f"file:{arch}"},
        {"path": "/usr", "uri": "file:/usr"},
        {"path": "/etc", "uri": "file:/etc"},
    ]
    mounts += [{"path": str(d), "uri": f"file:{d}"} for d in _mounts(needed, system)]

    loader_env = dict(env)
    loader_env["LD_LIBRARY_PATH"] = f"/lib:{arch}:/usr/lib:/usr{arch}"
    return {
        "loader": {
            "entrypoint": f"file:{runtime.libos}",
            "log_level": "error",
            "argv": list(argv),
            "env": dict(sorted(loader_env.items())),
        },
        "libos": {"entrypoint": str(entrypoint)},
        "fs": {"start_dir": str(scratch), "mounts": mounts},
        "sys": {"stack": {"size": "2M"}},
        "sgx": {
            "debug": False,
            "edmm_enable": False,
            "enclave_size": check_enclave_size(enclave_size),
            "max_threads": check_threads(max_threads),
            # Policies that allow an MRSIGNER match these rather than each job's MRENCLAVE.
            "isvprodid": check_isv("isv-prod-id", isv_prod_id),
            "isvsvn": check_isv("isv-svn", isv_svn),
            "remote_attestation": "dcap",
            "file_check_policy": "strict",
            "trusted_files": list(unique.values()),
            "allowed_files": [_dir(scratch), *(_dir(d) for d in allowed_dirs)],
        },
    }


def render_manifest(manifest: Mapping[str, Any], measurement: JobMeasurement) -> str:
    header = (
        f"# Gramine manifest generated by trusted-ml {__version__}\n"
        f"# job measurement (sha384): {measurement.hex}\n"
        "# Do not edit: the enclave signature covers all of it.\n\n"
    )
    return header + tomli_w.dumps(manifest)


def _check_no_secret_needed(conf: Mapping[str, str]) -> None:
    """Refuse settings under which Spark would need a secret inside the enclave: the
    enclave gets only non-secret environment, so Spark would read a placeholder as the
    password and fail at start-up, inside the enclave, with a confusing error."""
    needs = []
    if conf.get("spark.ui.enabled") == "true" and conf.get("spark.ssl.enabled") == "true":
        needs.append("the web UI's TLS keystore password (run with --no-ui)")
    if conf.get("spark.ssl.rpc.enabled") == "true":
        needs.append("the RPC TLS keystore password (drop --rpc-tls)")
    if "spark.authenticate.secret" in conf:
        needs.append("the standalone cluster's auth secret (use a local master)")
    if needs:
        raise ConfigError(
            "--tee gramine: the enclave receives no secrets from the host, but this job "
            f"needs {'; '.join(needs)}"
        )


class GramineBackend:
    """Run the job in an SGX enclave under Gramine.

    :meth:`prepare` writes ``trustedml-<digest>.manifest`` (with the job's conf files
    and scratch directory beside it) into ``manifest_dir``; unless ``dry_run``, signs
    it with ``signing_key`` (the key directory's enclave key, PEM) through
    ``gramine-sgx-sign`` and launches ``gramine-sgx``. Missing tools stop it with a
    :class:`LaunchError` after the manifest is written.
    """

    name = "gramine"
    hardware_protected = True
    measures = True

    def __init__(
        self,
        manifest_dir: str | Path,
        *,
        signing_key: Secret | None = None,
        enclave_size: str = DEFAULT_ENCLAVE_SIZE,
        max_threads: int = DEFAULT_MAX_THREADS,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        dry_run: bool = False,
        runtime: GramineRuntime | None = None,
    ) -> None:
        if not str(manifest_dir):
            raise ConfigError("--manifest-dir: expected a directory, got ''")
        self._manifest_dir = Path(manifest_dir).resolve()
        self._signing_key = signing_key
        self._enclave_size = check_enclave_size(enclave_size)
        self._max_threads = check_threads(max_threads)
        self._isv_prod_id = check_isv("isv-prod-id", isv_prod_id)
        self._isv_svn = check_isv("isv-svn", isv_svn)
        self._dry_run = bool(dry_run)
        self._runtime = runtime

    @property
    def manifest_dir(self) -> Path:
        return self._manifest_dir

    def wrap(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        raise LaunchError("--tee gramine needs the whole job: use prepare(job)")

    def prepare(self, job: Job) -> LaunchPlan:
        measurement = job.require_measurement(self.name)
        if job.app is None:
            raise ConfigError("--tee gramine: expected a Python application")
        _check_no_secret_needed(job.settings.conf())
        make_private_dir(self._manifest_dir)
        name = f"trustedml-{measurement.hex[:16]}"
        base = self._manifest_dir / name
        conf = Path(f"{base}.conf")
        scratch = Path(f"{base}.scratch")
        make_private_dir(conf)
        make_private_dir(scratch)
        conf_files = []
        for item in sorted(job.conf_dir.iterdir()):
            if item.is_file():
                write_private(conf / item.name, item.read_bytes())
                conf_files.append(conf / item.name)
        props = conf / "spark.properties"

        python = Path(job.settings.conf()["spark.pyspark.python"])
        env = {k: job.env[k] for k in _ENV_ALLOWED if k in job.env}
        env["SPARK_CONF_DIR"] = str(conf)
        env["PATH"] = f"{python.parent}:/usr/local/bin:/usr/bin:/bin"
        # Temporary files go to the job's own scratch directory (host-backed, because
        # Spark's JVM and Python workers share files there; a tmpfs is per process).
        # Nothing else is writable: /tmp is not even mounted.
        env["HOME"] = str(scratch)
        env["TMPDIR"] = str(scratch)
        env["LANG"] = "C.UTF-8"
        # The enclave cannot write pyc files next to trusted sources (and must not
        # read unpinned ones); say so rather than have Python try.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env[ENV_TEE] = self.name
        env[ENV_JOB_MEASUREMENT] = measurement.hex
        java = java_binary(job.env)
        java_home = Path(java).resolve().parent.parent if java is not None else None
        spark_home = Path(job.env["SPARK_HOME"])

        extra_mounts = [spark_home, job.app.parent]
        allowed: list[Path] = []
        local_dir = job.settings.conf().get("spark.local.dir")
        if local_dir:
            allowed.append(Path(local_dir))
            extra_mounts.append(Path(local_dir))
        if job.launcher == "submit":
            submit_args = ["--properties-file", str(props)]
            if job.py_files:
                submit_args += ["--py-files", ",".join(str(p) for p in job.py_files)]
            submit_args += [str(job.app), *job.args]
            launch_env = {**job.env, "SPARK_CONF_DIR": str(conf)}
            argv = spark_java_command(spark_home, launch_env, submit_args)
            argv.insert(1, f"-Djava.io.tmpdir={scratch}")
            entrypoint = Path(argv[0]).resolve()
        else:
            env["PYSPARK_SUBMIT_ARGS"] = f"--properties-file {props} pyspark-shell"
            argv = [str(python), str(job.app), *job.args]
            entrypoint = python.resolve()

        manifest = build_manifest(
            measurement=measurement,
            entrypoint=entrypoint,
            argv=argv,
            env=env,
            python=python,
            java_home=java_home,
            conf_files=conf_files,
            scratch=scratch,
            extra_mounts=extra_mounts,
            allowed_dirs=allowed,
            runtime=self._runtime or gramine_runtime(),
            enclave_size=self._enclave_size,
            max_threads=self._max_threads,
            isv_prod_id=self._isv_prod_id,
            isv_svn=self._isv_svn,
            shell_tools=job.launcher == "run",
        )
        manifest_path = Path(f"{base}.manifest")
        write_private(manifest_path, render_manifest(manifest, measurement).encode("utf-8"))
        # What trusted-ml set up for the job but keeps out of the enclave (names only).
        withheld = sorted(set(job.settings.environment()) - set(_ENV_ALLOWED))
        notes = [f"job measurement {measurement.hex}", f"gramine manifest: {manifest_path}"]
        if withheld:
            notes.append(
                "gramine: kept out of the enclave (secrets must come from attested key "
                f"release): {', '.join(withheld)}"
            )
        files = {"manifest": manifest_path, "conf": conf, "scratch": scratch}
        if self._dry_run:
            return LaunchPlan(
                argv=(), env={}, launch=False, notes=tuple(notes), files=files, cwd=job.cwd
            )

        signer = shutil.which("gramine-sgx-sign")
        if signer is None:
            raise LaunchError(
                f"gramine-sgx-sign not found on PATH: manifest written to {manifest_path}; "
                "install Gramine (https://gramine.readthedocs.io) to sign and launch it, "
                "or use --dry-run to only write it"
            )
        if self._signing_key is None:
            raise ConfigError(
                "--tee gramine: signing needs the enclave key of a key directory: "
                "give --keys DIR (from `trustedml keys init`), or --dry-run"
            )
        signed = Path(f"{base}.manifest.sgx")
        _sign(signer, manifest_path, signed, self._signing_key)
        files["signed_manifest"] = signed
        files["sigstruct"] = Path(f"{base}.sig")
        loader = shutil.which("gramine-sgx")
        if loader is None:
            raise LaunchError(
                f"gramine-sgx not found on PATH: manifest signed ({signed}) but cannot "
                "be launched here"
            )
        host_env = {k: job.env[k] for k in _HOST_ENV if k in job.env}
        return LaunchPlan(
            argv=(loader, str(base)),
            env=host_env,
            cwd=self._manifest_dir,
            notes=tuple(notes),
            files=files,
        )

    def __repr__(self) -> str:
        return (
            f"GramineBackend(manifest_dir={str(self._manifest_dir)!r}, "
            f"enclave_size={self._enclave_size!r}, max_threads={self._max_threads}, "
            f"dry_run={self._dry_run})"
        )


def _sign(signer: str, manifest: Path, output: Path, key: Secret) -> None:
    # gramine-sgx-sign reads the key from a file: a private one, removed at once.
    with tempfile.TemporaryDirectory(prefix="trustedml-sign-") as tmp:
        key_file = Path(tmp) / "enclave-key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.reveal())
        argv = [signer, "--manifest", str(manifest), "--output", str(output)]
        argv += ["--key", str(key_file)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(f"cannot run {signer}: {exc}") from None
        finally:
            key_file.unlink(missing_ok=True)
    if done.returncode != 0:
        raise LaunchError(
            f"gramine-sgx-sign failed (exit {done.returncode}) on {manifest}:\n"
            + _tail(done.stderr + done.stdout)
        )
