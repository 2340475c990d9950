"""What this machine can run: Java and Spark, the optional extras, a key directory,
the TEE backends, and a key broker. The checks only look; they change nothing."""

from __future__ import annotations

import contextlib
import enum
import importlib.metadata
import os
import shutil
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from trustedml.errors import TrustedMLError
from trustedml.keys import KeyDirectory
from trustedml.tee import java_binary, java_properties

__all__ = ["Check", "Status", "diagnose"]

MIN_JAVA = 17
CERT_WARN_DAYS = 30
# Where the kernel and the SGX driver put what the TEE backends use (tests pass trees).
SGX_DEVICES = (Path("/dev/sgx_enclave"), Path("/dev/sgx/enclave"))
TSM_REPORT = Path("/sys/kernel/config/tsm/report")
# Optional distributions: which extra brings them, and what needs them.
_EXTRAS = (
    ("pyspark", "spark", "every Spark job"),
    ("pyarrow", "spark", "the encrypted data source and pandas-on-Spark"),
    ("pandas", "spark", "pandas-on-Spark"),
    ("torch", "ml", "the LeNet and text examples"),
    ("xgboost-cpu", "ml", "the XGBoost examples"),
    ("scikit-learn", "ml", "xgboost.spark"),
    ("starlette", "server", "`trustedml broker serve`"),
    ("uvicorn", "server", "`trustedml broker serve`"),
    ("httpx", "server", "the key broker client (`--broker`)"),
    ("kubernetes", "k8s", "`trustedml k8s render --apply` and `submit --master k8s://`"),
    ("PyYAML", "k8s", "`trustedml k8s render` and `doctor --k8s`"),
)


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One finding: ``area`` (runtime, extras, keys, tee, broker), what was checked,
    its status, and a one-line detail a user can act on."""

    area: str
    name: str
    status: Status
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    head = version.split(".")[0].split("-")[0].split("+")[0]
    return int(head) if head.isdigit() else 0


def _runtime(env: Mapping[str, str]) -> list[Check]:
    py = ".".join(map(str, sys.version_info[:3]))
    checks = [
        Check("runtime", "python", Status.OK, f"{py} at {sys.executable}")
        if sys.version_info >= (3, 11)
        else Check("runtime", "python", Status.FAIL, f"expected 3.11 or later, got {py}")
    ]
    java = java_binary(env)
    if java is None:
        checks.append(
            Check(
                "runtime",
                "java",
                Status.FAIL,
                f"no java in $JAVA_HOME/bin or on PATH: Spark needs Java {MIN_JAVA} or later",
            )
        )
    else:
        try:
            props = java_properties(str(java.resolve()))
        except TrustedMLError as exc:
            checks.append(Check("runtime", "java", Status.FAIL, str(exc)))
        else:
            spec = props.get("java.specification.version", "")
            version = props["java.runtime.version"]
            ok = _major(spec or version) >= MIN_JAVA
            detail = f"{version} at {java}"
            checks.append(
                Check("runtime", "java", Status.OK, detail)
                if ok
                else Check(
                    "runtime", "java", Status.FAIL, f"expected Java {MIN_JAVA}+, got {detail}"
                )
            )
    for name in ("SPARK_LOCAL_IP", "PYSPARK_PYTHON"):
        if name not in env:
            checks.append(
                Check("runtime", name, Status.OK, "unset here; `trustedml submit` sets it")
            )
        else:
            checks.append(Check("runtime", name, Status.OK, env[name]))
    return checks


def _extras() -> list[Check]:
    checks = []
    for dist, extra, needed_by in _EXTRAS:
        version = _version(dist)
        if dist == "xgboost-cpu" and version is None:
            version = _version("xgboost")
        if version is None:
            checks.append(
                Check(
                    "extras",
                    dist,
                    Status.WARN,
                    f"not installed; needed by {needed_by}: pip install 'trustedml[{extra}]'",
                )
            )
        elif dist == "pyspark" and _major(version) != 4:
            checks.append(Check("extras", dist, Status.FAIL, f"expected 4.x, got {version}"))
        elif dist == "pandas" and _major(version) >= 3:
            checks.append(
                Check("extras", dist, Status.WARN, f"{version}: pyspark.pandas needs pandas<3")
            )
        elif dist == "torch" and "+cu" in version:
            checks.append(
                Check("extras", dist, Status.WARN, f"{version}: a CUDA build; the CPU one suffices")
            )
        else:
            checks.append(Check("extras", dist, Status.OK, version))
    return checks


def _keys(path: Path, now: datetime) -> list[Check]:
    try:
        keys = KeyDirectory(path)
        for name in ("keystore", "truststore", "ca_cert", "server_cert"):
            getattr(keys, name)
    except TrustedMLError as exc:
        return [Check("keys", str(path), Status.FAIL, str(exc))]
    checks = [Check("keys", "directory", Status.OK, f"{path} (format {keys.manifest.format})")]
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        checks.append(
            Check("keys", "permissions", Status.FAIL, f"expected 0700, got {mode:04o}: chmod 700")
        )
    try:
        not_after = datetime.fromisoformat(keys.manifest.tls_not_after)
    except ValueError:
        checks.append(Check("keys", "tls certificate", Status.WARN, "expiry date unreadable"))
    else:
        days = (not_after - now).days
        if not_after <= now:
            checks.append(
                Check("keys", "tls certificate", Status.FAIL, f"expired {not_after:%Y-%m-%d}")
            )
        elif days < CERT_WARN_DAYS:
            checks.append(Check("keys", "tls certificate", Status.WARN, f"expires in {days} days"))
        else:
            checks.append(
                Check("keys", "tls certificate", Status.OK, f"valid until {not_after:%Y-%m-%d}")
            )
    return checks


def _tees(
    env: Mapping[str, str], sgx_devices: Sequence[Path], tsm_root: Path, sim_key: Path | None
) -> list[Check]:
    checks = [Check("tee", "none", Status.OK, "available; the job runs unprotected on the host")]
    sim_detail = "available for development: NO hardware protection; brokers refuse it by default"
    if sim_key is not None:
        sim_detail += f"; key {sim_key}" + ("" if sim_key.is_file() else " (made on first use)")
    checks.append(Check("tee", "sim", Status.OK, sim_detail))

    missing = [
        tool
        for tool in ("gramine-sgx", "gramine-sgx-sign")
        if not shutil.which(tool, path=env.get("PATH"))
    ]
    device = next((d for d in sgx_devices if d.exists()), None)
    if device is None:
        missing.append(f"an SGX device ({', '.join(map(str, sgx_devices))})")
    checks.append(
        Check("tee", "gramine", Status.OK, f"can sign and launch (device {device})")
        if not missing
        else Check(
            "tee",
            "gramine",
            Status.WARN,
            f"manifests only (--dry-run); missing: {', '.join(missing)}",
        )
    )
    if tsm_root.is_dir():
        checks.append(Check("tee", "cvm", Status.OK, f"configfs-tsm reports at {tsm_root}"))
    else:
        checks.append(
            Check(
                "tee",
                "cvm",
                Status.WARN,
                f"not a TDX/SEV-SNP guest with configfs-tsm ({tsm_root} missing)",
            )
        )
    return checks


def _broker(url: str, ca: Path | None) -> list[Check]:
    try:
        import httpx

        from trustedml.broker import client_ssl_context
    except ImportError:
        return [Check("broker", url, Status.FAIL, "needs httpx: pip install 'trustedml[server]'")]
    if not url.startswith("https://"):
        return [Check("broker", url, Status.FAIL, "expected an https:// URL")]
    try:
        context = client_ssl_context(ca)
        with httpx.Client(verify=context, timeout=10.0) as client:
            started = time.perf_counter()
            response = client.get(url.rstrip("/") + "/v1/health")
            elapsed = (time.perf_counter() - started) * 1000
    except (httpx.HTTPError, ssl.SSLError, OSError, TrustedMLError) as exc:
        return [
            Check("broker", url, Status.FAIL, f"cannot be reached: {type(exc).__name__}: {exc}")
        ]
    if response.status_code != 200:
        return [Check("broker", url, Status.FAIL, f"/v1/health answered {response.status_code}")]
    return [Check("broker", url, Status.OK, f"healthy over TLS ({elapsed:.1f} ms)")]


def diagnose(
    *,
    env: Mapping[str, str] | None = None,
    keys: Path | None = None,
    broker_url: str | None = None,
    broker_ca: Path | None = None,
    sim_key: Path | None = None,
    sgx_devices: Sequence[Path] = SGX_DEVICES,
    tsm_root: Path = TSM_REPORT,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Check]:
    """Every check, in order: runtime, extras, keys (if given), TEE backends, broker
    (if given; verified against ``broker_ca``, else the CA of ``keys``). A
    :class:`Status.FAIL` means jobs of that kind cannot run here."""
    env = os.environ if env is None else env
    checks = _runtime(env) + _extras()
    if keys is not None:
        checks += _keys(keys, now())
    checks += _tees(env, sgx_devices, tsm_root, sim_key)
    if broker_url is not None:
        if broker_ca is None and keys is not None:
            # A broken directory is reported under "keys"; the system's trust store is tried.
            with contextlib.suppress(TrustedMLError):
                broker_ca = KeyDirectory(keys).ca_cert
        checks += _broker(broker_url, broker_ca)
    return checks
