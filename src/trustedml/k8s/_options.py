"""What a Spark-on-Kubernetes job asks for, checked when made."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from trustedml._version import __version__
from trustedml.errors import ConfigError
from trustedml.spark import check_secure_conf

__all__ = [
    "CVM_RUNTIME_CLASSES",
    "DEFAULT_IMAGE",
    "K8S_TEES",
    "KubernetesOptions",
    "Toleration",
    "parse_toleration",
]

K8S_TEES = ("cvm", "gramine", "sim")
# Kata Containers' runtime classes for confidential guests (Confidential Containers).
CVM_RUNTIME_CLASSES = {"tdx": "kata-qemu-tdx", "snp": "kata-qemu-snp"}
DEFAULT_IMAGE = f"trusted-ml:{__version__}"
DEFAULT_GRAMINE_IMAGE = f"trusted-ml-gramine:{__version__}"
DEFAULT_EPC = "8G"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# Docker image references: [registry[:port]/]path[:tag][@sha256:...]; no spaces or quotes.
_IMAGE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
)
_QUANTITY = re.compile(r"^[1-9][0-9]*(k|m|g|t|K|M|G|T|Ki|Mi|Gi|Ti)?$")
_SPARK_MEMORY = re.compile(r"^[1-9][0-9]*[kmgtKMGT]?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Spark names pods and services after the app: keep room for "-driver-svc" etc.
_MAX_NAME = 40


@dataclass(frozen=True)
class Toleration:
    """A pod toleration (``key[=value]:effect``) for tainted TEE node pools."""

    key: str
    effect: str
    value: str | None = None

    def __post_init__(self) -> None:
        if not _LABEL_KEY.fullmatch(self.key):
            raise ConfigError(f"--toleration: expected a label key, got {self.key!r}")
        if self.effect not in _EFFECTS:
            raise ConfigError(
                f"--toleration {self.key}: expected an effect of {', '.join(_EFFECTS)}, "
                f"got {self.effect!r}"
            )
        if self.value is not None and not _LABEL_VALUE.fullmatch(self.value):
            raise ConfigError(
                f"--toleration {self.key}: expected a label value, got {self.value!r}"
            )

    def manifest(self) -> dict[str, str]:
        """The toleration as it appears in a pod spec."""
        if self.value is None:
            return {"key": self.key, "operator": "Exists", "effect": self.effect}
        return {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}


def parse_toleration(text: str) -> Toleration:
    """``KEY[=VALUE]:EFFECT`` as a :class:`Toleration`."""
    spec, sep, effect = text.rpartition(":")
    if not sep:
        raise ConfigError(f"--toleration: expected KEY[=VALUE]:EFFECT, got {text!r}")
    key, eq, value = spec.partition("=")
    return Toleration(key=key, effect=effect, value=value if eq else None)


def _endpoint(what: str, url: str, schemes: tuple[str, ...]) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{what}: expected a port number, got {url!r}") from exc
    if parts.scheme not in schemes or not parts.hostname or parts.username or parts.password:
        raise ConfigError(f"{what}: expected {schemes[0]}://HOST[:PORT], got {url!r}")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def host_is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address literal (a NetworkPolicy can name it)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class KubernetesOptions:
    """A Spark-on-Kubernetes job: the application, where it runs, and its TEE.

    ``master`` is ``k8s://https://HOST[:PORT]`` (the API server); ``app`` the PySpark
    file (shipped in a ConfigMap, mounted read-only in the pods); ``tee`` the backend
    the driver and every executor run in: ``gramine`` (SGX enclaves through the SGX
    device plugin), ``cvm`` (confidential containers: a Kata runtime class for TDX or
    SEV-SNP) or ``sim`` (no protection: development only). ``name`` (DNS label) names
    every object; by default ``tml-<app>-<random>``, fresh for each application.
    """

    master: str
    app: Path
    tee: str
    app_args: tuple[str, ...] = ()
    image: str | None = None
    namespace: str = "trustedml"
    name: str | None = None
    executors: int = 2
    driver_cores: int = 1
    executor_cores: int = 1
    driver_memory: str = "2g"
    executor_memory: str = "2g"
    enclave_size: str | None = None
    pccs_url: str | None = None
    runtime_class: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    broker_url: str | None = None
    py_files: tuple[Path, ...] = ()
    conf: Mapping[str, str] = field(default_factory=dict)
    rpc_tls: bool = False
    log_level: str = "WARN"

    def __post_init__(self) -> None:
        object.__setattr__(self, "app_args", tuple(self.app_args))
        object.__setattr__(self, "py_files", tuple(Path(p) for p in self.py_files))
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        object.__setattr__(self, "node_selector", MappingProxyType(dict(self.node_selector)))
        object.__setattr__(self, "conf", MappingProxyType(dict(self.conf)))
        if not self.master.startswith("k8s://"):
            raise ConfigError(f"--master: expected k8s://https://HOST:PORT, got {self.master!r}")
        _endpoint("--master", self.master[len("k8s://") :], ("https",))
        if self.tee not in K8S_TEES:
            raise ConfigError(
                f"--tee: expected one of {', '.join(K8S_TEES)} on Kubernetes "
                f"(the driver runs in a TEE too), got {self.tee!r}"
            )
        for path in (Path(self.app), *self.py_files):
            if path.suffix not in (".py", ".zip") or not path.is_file():
                raise ConfigError(f"{path}: expected an existing .py or .zip file")
        if self.image is not None and not _IMAGE.fullmatch(self.image):
            raise ConfigError(f"--image: expected an image reference, got {self.image!r}")
        if not _DNS_LABEL.fullmatch(self.namespace) or len(self.namespace) > 63:
            raise ConfigError(f"--namespace: expected a DNS-1123 label, got {self.namespace!r}")
        if self.name is not None and (
            not _DNS_LABEL.fullmatch(self.name) or len(self.name) > _MAX_NAME
        ):
            raise ConfigError(
                f"--name: expected a DNS-1123 label of at most {_MAX_NAME} characters, "
                f"got {self.name!r}"
            )
        for what, count in (
            ("--executors", self.executors),
            ("--driver-cores", self.driver_cores),
            ("--executor-cores", self.executor_cores),
        ):
            if not 1 <= count <= 1024:
                raise ConfigError(f"{what}: expected 1 to 1024, got {count}")
        for what, memory in (
            ("--driver-memory", self.driver_memory),
            ("--executor-memory", self.executor_memory),
        ):
            if not _SPARK_MEMORY.fullmatch(memory):
                raise ConfigError(f"{what}: expected a size such as 2g or 512m, got {memory!r}")
        self._check_tee_options()
        if self.name is None:
            # Fresh for each application: its own objects, Secrets and auth secret.
            stem = re.sub(r"[^a-z0-9]+", "-", Path(self.app).stem.lower()).strip("-")
            stem = stem[: _MAX_NAME - len("tml--") - 8].strip("-") or "app"
            object.__setattr__(self, "name", f"tml-{stem}-{secrets.token_hex(4)}")
        for key, value in self.node_selector.items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise ConfigError(
                    f"--node-selector: expected KEY=VALUE with label syntax, got {key}={value}"
                )
        if self.broker_url is not None:
            _endpoint("--broker", self.broker_url, ("https",))
        # The same refusals as any secure job: secret-looking keys, ${...}, managed
        # keys, and keys that could weaken it (spark.kubernetes.* included).
        check_secure_conf(self.conf)

    def _check_tee_options(self) -> None:
        given = {
            "--enclave-size": (self.enclave_size, "gramine"),
            "--pccs-url": (self.pccs_url, "gramine"),
            "--runtime-class": (self.runtime_class, "cvm"),
        }
        for flag, (value, tee) in given.items():
            if value is not None and self.tee != tee:
                raise ConfigError(f"{flag} applies to --tee {tee}, not --tee {self.tee}")
        if self.enclave_size is not None and not _QUANTITY.fullmatch(self.enclave_size):
            raise ConfigError(
                f"--enclave-size: expected a size such as 8G or 512Mi, got {self.enclave_size!r}"
            )
        if self.pccs_url is not None:
            _endpoint("--pccs-url", self.pccs_url, ("https",))
        if self.runtime_class is not None and not _DNS_LABEL.fullmatch(self.runtime_class):
            raise ConfigError(
                f"--runtime-class: expected a runtime class name such as "
                f"{CVM_RUNTIME_CLASSES['tdx']}, got {self.runtime_class!r}"
            )

    @property
    def app_name(self) -> str:
        """The application's name (``name``, or ``tml-<app>-<random>``)."""
        assert self.name is not None  # set in __post_init__
        return self.name

    @property
    def api_server(self) -> tuple[str, int]:
        """The API server's host and port (from ``master``)."""
        return _endpoint("--master", self.master[len("k8s://") :], ("https",))

    @property
    def broker_endpoint(self) -> tuple[str, int] | None:
        """The key broker's host and port, if the job has one."""
        if self.broker_url is None:
            return None
        return _endpoint("--broker", self.broker_url, ("https",))

    @property
    def pccs_endpoint(self) -> tuple[str, int] | None:
        """The PCCS host and port a gramine job fetches DCAP collateral from."""
        if self.pccs_url is None:
            return None
        return _endpoint("--pccs-url", self.pccs_url, ("https",))

    @property
    def container_image(self) -> str:
        """The image the pods run (``image``, or the default for the TEE)."""
        if self.image is not None:
            return self.image
        return DEFAULT_GRAMINE_IMAGE if self.tee == "gramine" else DEFAULT_IMAGE

    @property
    def epc(self) -> str:
        """The SGX EPC a gramine pod requests (its enclave size)."""
        size = self.enclave_size or DEFAULT_EPC
        # Gramine's 8G means GiB; as a Kubernetes quantity it would mean 10**9.
        return size + "i" if size[-1] in "KMGT" else size

    @property
    def cvm_runtime_class(self) -> str:
        """The runtime class of a cvm pod."""
        return self.runtime_class or CVM_RUNTIME_CLASSES["tdx"]
