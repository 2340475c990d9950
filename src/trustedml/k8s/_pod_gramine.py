"""The gramine image's enclave: its manifest, and the pod's step into it.

The manifest is made and signed at image build and fixed per image, so its MRENCLAVE
is what a broker policy pins: the Python and Java runtimes, the venv (trusted-ml,
pyspark and their dependencies) and the compiled jars are trusted files. Which role
runs, with which arguments, is the pod's choice (Spark's): the entrypoint outside the
enclave hands them in through one variable, and inside the enclave the job is measured
(code, conf, arguments) before anything of it runs, the digest bound into every
quote's report_data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from trustedml._fs import make_private_dir, write_private
from trustedml._version import __version__
from trustedml.errors import ConfigError
from trustedml.k8s._manifests import APP_DIR
from trustedml.k8s._pod_tee import ENV_POD_WORK, PodLaunch, executor_measurement
from trustedml.spark import KUBERNETES_RPC_TLS_ENV, KUBERNETES_SECRET_ENV, spark_home
from trustedml.tee import (
    DEFAULT_ENCLAVE_SIZE,
    DEFAULT_MAX_THREADS,
    ENV_TEE,
    GramineRuntime,
    build_manifest,
    java_binary,
)

__all__ = [
    "ENV_POD_ARGV",
    "GRAMINE_DIR",
    "MANIFEST_NAME",
    "PASSTHROUGH_ENV",
    "SEALED_DIR",
    "enclave_launch",
    "image_manifest",
    "in_enclave",
    "main",
    "pod_argv",
]

GRAMINE_DIR = Path("/opt/trustedml/gramine")
MANIFEST_NAME = "trustedml-pod"
ENV_POD_ARGV = "TRUSTEDML_POD_ARGV"
# Encrypted with a key sealed to MRENCLAVE: the driver's measured copies live there,
# so the host can neither read nor swap them between measuring and running.
SEALED_DIR = Path("/tmp/trustedml-sealed")  # noqa: S108 (the pod's own emptyDir)
_SCRATCH = Path("/tmp")  # noqa: S108
_JAVA_OPTS = 64  # SPARK_JAVA_OPT_0..63: more than Spark passes an executor
# What the pod's environment may hand the enclave: Spark's per-pod values, the
# broker's address, and the Spark TLS passwords Spark's secretKeyRef puts in the pod.
PASSTHROUGH_ENV = (
    ENV_POD_ARGV,
    "HOSTNAME",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "PYSPARK_PYTHON",
    "PYSPARK_DRIVER_PYTHON",
    "SPARK_APPLICATION_ID",
    "SPARK_CLASSPATH",
    "SPARK_CONF_DIR",
    "SPARK_DRIVER_BIND_ADDRESS",
    "SPARK_DRIVER_URL",
    "SPARK_EXECUTOR_CORES",
    "SPARK_EXECUTOR_ID",
    "SPARK_EXECUTOR_MEMORY",
    "SPARK_EXECUTOR_POD_IP",
    "SPARK_EXECUTOR_POD_NAME",
    "SPARK_EXTRA_CLASSPATH",
    "SPARK_LOCAL_DIRS",
    "SPARK_RESOURCE_PROFILE_ID",
    "SPARK_USER",
    "TRUSTEDML_BROKER_CA",
    "TRUSTEDML_BROKER_URL",
    *sorted({*KUBERNETES_SECRET_ENV, *KUBERNETES_RPC_TLS_ENV}),
    *(f"SPARK_JAVA_OPT_{n}" for n in range(_JAVA_OPTS)),
)
# Host paths the enclave reads but does not trust: the job's code (measured by the
# entrypoint), Spark's conf and pod template, the mounted Secrets and CAs, the
# service account token, Spark's local dirs.
_ALLOWED = (
    Path(APP_DIR),
    Path("/opt/spark/conf"),
    Path("/opt/spark/pod-template"),
    Path("/etc/trustedml"),
    Path("/var/run/secrets/kubernetes.io/serviceaccount"),
    Path("/var/data"),
)


def in_enclave(device: Path = Path("/dev/attestation")) -> bool:
    """Whether this process runs inside a Gramine SGX enclave (only there does
    Gramine's attestation pseudo-device exist)."""
    return (device / "attestation_type").is_file()


def enclave_launch(argv: Sequence[str], env: Mapping[str, str]) -> PodLaunch:
    """Outside the enclave: start the image's signed enclave, which runs this entrypoint
    again with ``argv`` (the role and Spark's arguments) inside."""
    loader = shutil.which("gramine-sgx", path=env.get("PATH"))
    if loader is None:
        raise ConfigError("--tee gramine: gramine-sgx is not in this image (use the gramine image)")
    signed = GRAMINE_DIR / f"{MANIFEST_NAME}.manifest.sgx"
    if not signed.is_file():
        raise ConfigError(f"--tee gramine: {signed} is missing (the image was built unsigned)")
    outside = dict(env)
    outside[ENV_POD_ARGV] = json.dumps(list(argv))
    return PodLaunch((loader, str(GRAMINE_DIR / MANIFEST_NAME)), outside)


def pod_argv(env: Mapping[str, str]) -> list[str]:
    """Inside the enclave: the role and arguments the pod asked for."""
    text = env.get(ENV_POD_ARGV, "")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise ConfigError(f"{ENV_POD_ARGV}: expected a JSON list of the pod's arguments")
    return value


def image_manifest(
    *,
    runtime: GramineRuntime,
    python: Path,
    java_home: Path,
    venv: Path,
    cache: Path,
    enclave_size: str = DEFAULT_ENCLAVE_SIZE,
    max_threads: int = DEFAULT_MAX_THREADS,
) -> dict[str, Any]:
    """The image's enclave manifest (a dict for TOML): the pod entrypoint under this
    ``python``, the venv, ``java_home`` and the compiled jars in ``cache`` trusted."""
    env = {
        ENV_TEE: "gramine",
        ENV_POD_WORK: str(SEALED_DIR),
        "SPARK_HOME": str(spark_home()),
        "JAVA_HOME": str(java_home),
        "PATH": f"{python.parent}:{java_home}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(_SCRATCH),
        "TMPDIR": str(_SCRATCH),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "XDG_CACHE_HOME": str(cache),
    }
    manifest = build_manifest(
        measurement=executor_measurement(java_home / "bin" / "java"),
        entrypoint=python.resolve(),
        argv=[str(python), "-m", "trustedml.k8s.entrypoint"],
        env=env,
        python=python,
        java_home=java_home,
        conf_files=(),
        scratch=_SCRATCH,
        extra_mounts=[venv, cache, *_ALLOWED],
        allowed_dirs=_ALLOWED,
        runtime=runtime,
        enclave_size=enclave_size,
        max_threads=max_threads,
        # The driver runs bin/spark-submit, a bash script: the shell tools are trusted.
        shell_tools=True,
    )
    # Whole directories (every dependency an application may import, the jars): one
    # entry each, in place of the package files build_manifest listed one by one.
    dirs = [f"file:{Path(sysconfig.get_path('purelib'))}/", f"file:{cache}/"]
    sgx = manifest["sgx"]
    sgx["trusted_files"] = [
        t for t in sgx["trusted_files"] if not _uri(t).startswith(tuple(dirs))
    ] + dirs
    manifest["fs"]["mounts"].append(
        {"path": str(SEALED_DIR), "uri": f"file:{SEALED_DIR}", "type": "encrypted",
         "key_name": "_sgx_mrenclave"}
    )  # fmt: skip
    for name in PASSTHROUGH_ENV:
        manifest["loader"]["env"][name] = {"passthrough": True}
    return manifest


def _uri(entry: str | Mapping[str, str]) -> str:
    return entry if isinstance(entry, str) else entry["uri"]


def _default_runtime() -> GramineRuntime:
    arch = Path(f"/lib/{os.uname().machine}-linux-gnu")
    return GramineRuntime(
        libos=Path(f"/usr{arch}/gramine/libsysdb.so"),
        runtime_dir=Path(f"/usr{arch}/gramine/runtime/glibc"),
        arch_libdir=arch,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trustedml.k8s._pod_gramine OUT_DIR``: write the image's manifest
    (run at image build, before gramine-sgx-sign)."""
    parser = argparse.ArgumentParser(prog="python -m trustedml.k8s._pod_gramine")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--enclave-size", default=DEFAULT_ENCLAVE_SIZE)
    parser.add_argument("--max-threads", type=int, default=DEFAULT_MAX_THREADS)
    parser.add_argument("--cache", type=Path, default=Path("/opt/trustedml/cache"))
    ns = parser.parse_args(argv)
    java = java_binary()
    if java is None:
        print("Java not found: set JAVA_HOME", file=sys.stderr)
        return 2
    runtime = _default_runtime()
    manifest = image_manifest(
        runtime=runtime,
        python=Path(sys.executable),
        java_home=java.resolve().parent.parent,
        venv=Path(sys.prefix),
        cache=ns.cache,
        enclave_size=ns.enclave_size,
        max_threads=ns.max_threads,
    )
    make_private_dir(ns.out_dir)
    header = f"# Gramine manifest of the trusted-ml {__version__} pod image; do not edit.\n\n"
    path = ns.out_dir / f"{MANIFEST_NAME}.manifest"
    write_private(path, (header + tomli_w.dumps(manifest)).encode("utf-8"))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
