"""Render a trusted Spark application for Kubernetes: manifests, Spark conf, argv."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustedml._fs import write_private
from trustedml._secret import Secret
from trustedml._version import __version__
from trustedml.attestation import SimKey
from trustedml.errors import ConfigError, KubernetesError, LaunchError
from trustedml.k8s._manifests import (
    APP_DIR,
    AUTH_DIR,
    AUTH_KEY,
    CONTAINER,
    SIM_DIR,
    SIM_KEY,
    TLS_DIR,
    config_maps,
    network_policy,
    pod_template,
    rbac,
    secret_names,
    secret_shells,
)
from trustedml.k8s._options import KubernetesOptions
from trustedml.keys import KeyDirectory
from trustedml.spark import (
    FS_CLASS,
    KUBERNETES_RPC_TLS_ENV,
    KUBERNETES_SECRET_ENV,
    kubernetes_security_conf,
    properties_text,
    spark_home,
)

__all__ = ["FILES", "IMAGE_PYTHON", "RenderedApp", "SecretBundle", "render", "secret_bundle"]

IMAGE_PYTHON = "/opt/trustedml/venv/bin/python"
IMAGE_FS_JAR = "local:///opt/trustedml/jars/trustedml-fs.jar"
# A ConfigMap holds at most 1 MiB; bigger code belongs in the image.
_MAX_CODE = 900 * 1024
# The files of a render, in the order a reader should look at them.
FILES = (
    "render.json",
    "spark.properties",
    "spark-submit.json",
    "driver-pod.yaml",
    "executor-pod.yaml",
    "rbac.yaml",
    "networkpolicy.yaml",
    "configmaps.yaml",
    "secrets.yaml",
)


class SecretBundle(Mapping[str, Mapping[str, Secret]]):
    """The data of an application's Secrets (name -> key -> value), held in memory
    only: what ``apply`` puts into the Secret shells of a render. Its repr names the
    Secrets and keys, never a value."""

    def __init__(self, data: Mapping[str, Mapping[str, Secret]]) -> None:
        self._data = {name: dict(keys) for name, keys in data.items()}

    def __getitem__(self, name: str) -> Mapping[str, Secret]:
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        shown = {name: sorted(keys) for name, keys in self._data.items()}
        return f"SecretBundle({shown})"

    def encoded(self, name: str) -> dict[str, str]:
        """The Secret ``name``'s data as a manifest's ``data`` (base64 values)."""
        return {
            key: base64.b64encode(value.reveal()).decode("ascii")
            for key, value in sorted(self._data[name].items())
        }


@dataclass(frozen=True)
class RenderedApp:
    """Everything a trusted Spark application on Kubernetes is made of, none of it
    secret: ``objects`` in the order they are applied (ServiceAccounts, Role,
    RoleBinding, NetworkPolicy, ConfigMaps, Secret shells), the two pod templates, the
    Spark ``conf`` and the would-be spark-submit ``argv`` (both name files of ``out``)."""

    options: KubernetesOptions
    out: Path
    objects: tuple[dict[str, Any], ...]
    driver_template: dict[str, Any]
    executor_template: dict[str, Any]
    conf: Mapping[str, str]
    argv: tuple[str, ...]
    secrets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The application's name."""
        return self.options.app_name

    @property
    def namespace(self) -> str:
        """The namespace every object lives in."""
        return self.options.namespace

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The objects of ``kind`` (e.g. ``"Secret"``)."""
        return [obj for obj in self.objects if obj["kind"] == kind]

    def summary(self) -> dict[str, Any]:
        """What ``render.json`` holds."""
        return {
            "app": self.name,
            "namespace": self.namespace,
            "tee": self.options.tee,
            "image": self.options.container_image,
            "master": self.options.master,
            "files": list(FILES),
            "secrets": {name: list(keys) for name, keys in self.secrets.items()},
            "trustedml": __version__,
        }

    def write(self) -> list[Path]:
        """Write the render into ``out`` (created 0700 if missing; files 0600)."""
        try:
            import yaml
        except ImportError as exc:
            raise KubernetesError(
                "writing manifests needs pyyaml: pip install 'trusted-ml[k8s]'"
            ) from exc

        class Dumper(yaml.SafeDumper):
            # Shared sub-dicts would become &anchors and *aliases: legal, but unreadable.
            def ignore_aliases(self, data: Any) -> bool:
                return True

        def dump_all(docs: list[dict[str, Any]]) -> bytes:
            text = yaml.dump_all(docs, Dumper=Dumper, sort_keys=False)
            return text.encode("utf-8")

        texts = {
            "render.json": json.dumps(self.summary(), indent=2).encode() + b"\n",
            "spark.properties": properties_text(self.conf).encode("utf-8"),
            "spark-submit.json": json.dumps(list(self.argv), indent=2).encode() + b"\n",
            "driver-pod.yaml": dump_all([self.driver_template]),
            "executor-pod.yaml": dump_all([self.executor_template]),
            "rbac.yaml": dump_all(
                self.of_kind("ServiceAccount") + self.of_kind("Role") + self.of_kind("RoleBinding")
            ),
            "networkpolicy.yaml": dump_all(self.of_kind("NetworkPolicy")),
            "configmaps.yaml": dump_all(self.of_kind("ConfigMap")),
            "secrets.yaml": dump_all(self.of_kind("Secret")),
        }
        try:
            self.out.mkdir(mode=0o700, parents=True, exist_ok=True)
            written = []
            for name in FILES:
                write_private(self.out / name, texts[name])
                written.append(self.out / name)
        except OSError as exc:
            raise KubernetesError(f"{self.out}: cannot write the render: {exc.strerror}") from exc
        return written


def _read_code(options: KubernetesOptions) -> dict[str, bytes]:
    code: dict[str, bytes] = {}
    for path in (Path(options.app), *options.py_files):
        if path.name in code:
            raise ConfigError(f"{path}: expected distinct file names, got {path.name} twice")
        code[path.name] = path.read_bytes()
    total = sum(len(data) for data in code.values())
    if total > _MAX_CODE:
        raise ConfigError(
            f"application files: expected at most {_MAX_CODE} bytes for a ConfigMap, got "
            f"{total} (put bigger code in the image)"
        )
    return code


def _secret_conf(options: KubernetesOptions) -> dict[str, str]:
    app = options.app_name
    conf: dict[str, str] = {}
    mounts = {f"{app}-auth": AUTH_DIR, f"{app}-tls": TLS_DIR}
    if options.tee == "sim":
        mounts[f"{app}-sim"] = SIM_DIR
    env = dict(KUBERNETES_SECRET_ENV)
    if options.rpc_tls:
        env.update(KUBERNETES_RPC_TLS_ENV)
    for role in ("driver", "executor"):
        for secret, path in mounts.items():
            conf[f"spark.kubernetes.{role}.secrets.{secret}"] = path
        for name, key in env.items():
            conf[f"spark.kubernetes.{role}.secretKeyRef.{name}"] = f"{app}-tls:{key}"
    return conf


def _spark_conf(options: KubernetesOptions, out: Path) -> dict[str, str]:
    app = options.app_name
    conf = {
        "spark.master": options.master,
        "spark.submit.deployMode": "cluster",
        "spark.app.name": app,
        "spark.kubernetes.namespace": options.namespace,
        "spark.kubernetes.container.image": options.container_image,
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent",
        "spark.kubernetes.authenticate.driver.serviceAccountName": f"{app}-driver",
        "spark.kubernetes.authenticate.executor.serviceAccountName": f"{app}-executor",
        "spark.kubernetes.driver.pod.name": f"{app}-driver",
        "spark.kubernetes.executor.podNamePrefix": app,
        "spark.kubernetes.executor.deleteOnTermination": "true",
        "spark.kubernetes.submission.waitAppCompletion": "true",
        "spark.executor.instances": str(options.executors),
        "spark.driver.cores": str(options.driver_cores),
        "spark.executor.cores": str(options.executor_cores),
        "spark.driver.memory": options.driver_memory,
        "spark.executor.memory": options.executor_memory,
        "spark.pyspark.python": IMAGE_PYTHON,
        "spark.pyspark.driver.python": IMAGE_PYTHON,
        "spark.log.level": options.log_level.upper(),
        "spark.ui.showConsoleProgress": "false",
        "spark.jars": IMAGE_FS_JAR,
        "spark.hadoop.fs.tml.impl": FS_CLASS,
        "spark.hadoop.fs.tml.impl.disable.cache": "true",
    }
    for role in ("driver", "executor"):
        conf[f"spark.kubernetes.{role}.podTemplateFile"] = str(out / f"{role}-pod.yaml")
        conf[f"spark.kubernetes.{role}.podTemplateContainerName"] = CONTAINER[role]
    if options.py_files:
        conf["spark.submit.pyFiles"] = ",".join(
            f"local://{APP_DIR}/{Path(p).name}" for p in options.py_files
        )
    conf.update(options.conf)
    conf.update(_secret_conf(options))
    conf.update(
        kubernetes_security_conf(
            keystore=f"{TLS_DIR}/keystore.p12",
            truststore=f"{TLS_DIR}/truststore.p12",
            auth_secret_file=f"{AUTH_DIR}/{AUTH_KEY}",
            rpc_tls=options.rpc_tls,
        )
    )
    return conf


def _spark_submit() -> str:
    try:
        return str(spark_home() / "bin" / "spark-submit")
    except LaunchError:
        return "spark-submit"


def render(
    options: KubernetesOptions, keys: KeyDirectory, out: Path, *, broker_ca: Path | None = None
) -> RenderedApp:
    """Everything ``options`` needs on a cluster, to be written into ``out``.

    ``keys`` gives the certificates the pods trust (its CA; ``broker_ca`` for the key
    broker, by default the same CA). No passphrase: a render holds no secret value.
    The Secrets are shells; :func:`secret_bundle` makes their data for ``apply``."""
    out = Path(out).resolve()
    try:
        ca = keys.ca_cert.read_text("ascii")
        trust = {"ca.pem": ca}
        if options.broker_url is not None:
            trust["broker-ca.pem"] = (broker_ca or keys.ca_cert).read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"CA certificate: expected a readable PEM file ({exc})") from exc
    code = _read_code(options)
    maps = config_maps(options, code, trust)
    objects = (
        *rbac(options),
        network_policy(options),
        *maps,
        *secret_shells(options),
    )
    conf = _spark_conf(options, out)
    argv = (
        _spark_submit(),
        "--master",
        options.master,
        "--deploy-mode",
        "cluster",
        "--name",
        options.app_name,
        "--properties-file",
        str(out / "spark.properties"),
        f"local://{APP_DIR}/{Path(options.app).name}",
        *options.app_args,
    )
    return RenderedApp(
        options=options,
        out=out,
        objects=tuple(objects),
        driver_template=pod_template(options, "driver"),
        executor_template=pod_template(options, "executor"),
        conf=conf,
        argv=argv,
        secrets=secret_names(options),
    )


def secret_bundle(
    rendered: RenderedApp, keys: KeyDirectory, passphrase: Secret, *, sim_key: Path | None = None
) -> SecretBundle:
    """The data of ``rendered``'s Secrets, in memory: a fresh random Spark auth secret
    for this application, the key directory's PKCS#12 keystore and truststore with
    their passwords (unsealed with ``passphrase``), and for ``--tee sim`` the sim key."""
    app = rendered.name
    opened = keys.unseal(passphrase)
    try:
        data: dict[str, dict[str, Secret]] = {
            f"{app}-auth": {AUTH_KEY: Secret(secrets.token_hex(32))},
            f"{app}-tls": {
                "keystore.p12": Secret(keys.keystore.read_bytes()),
                "truststore.p12": Secret(keys.truststore.read_bytes()),
                "keystore-password": opened.keystore_password,
                "truststore-password": opened.truststore_password,
            },
        }
        if rendered.options.tee == "sim":
            if sim_key is None:
                raise ConfigError("--tee sim: expected a sim key file for the pods, got none")
            # The pods sign sim evidence with this installation's key (made if missing),
            # so a broker that trusts it for development trusts them too.
            SimKey.load_or_create(Path(sim_key))
            data[f"{app}-sim"] = {SIM_KEY: Secret(Path(sim_key).read_bytes())}
    except OSError as exc:
        raise KubernetesError(f"cannot read a file for the Secrets: {exc.strerror}") from exc
    # apply checks these keys against the render's Secret shells before any request.
    return SecretBundle(data)
