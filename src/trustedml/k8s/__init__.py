"""Trusted Spark on Kubernetes: driver and executors in TEE pods, secrets only through
Kubernetes Secrets, every manifest generated (and checkable offline)."""

from trustedml.k8s._apply import AppliedObject, ApplyResult, apply, delete
from trustedml.k8s._lint import lint_manifests
from trustedml.k8s._lint_rules import K8S_LINT_RULES
from trustedml.k8s._manifests import (
    APP_DIR,
    AUTH_DIR,
    AUTH_KEY,
    CONTAINER,
    LABEL_APP,
    LABEL_ROLE,
    LABEL_TEE,
    SIM_DIR,
    SIM_KEY,
    TLS_DIR,
    TLS_KEYS,
    TRUST_DIR,
)
from trustedml.k8s._options import (
    CVM_RUNTIME_CLASSES,
    DEFAULT_IMAGE,
    K8S_TEES,
    KubernetesOptions,
    Toleration,
    parse_toleration,
)
from trustedml.k8s._render import (
    FILES,
    IMAGE_PYTHON,
    RenderedApp,
    SecretBundle,
    render,
    secret_bundle,
)
from trustedml.k8s._sparkcheck import SparkPodSpecs, pod_specs_jar, spark_pod_specs
from trustedml.k8s._submit import submission_argv, submission_environment, submit_kubernetes

__all__ = [
    "APP_DIR",
    "AUTH_DIR",
    "AUTH_KEY",
    "CONTAINER",
    "CVM_RUNTIME_CLASSES",
    "DEFAULT_IMAGE",
    "FILES",
    "IMAGE_PYTHON",
    "K8S_LINT_RULES",
    "K8S_TEES",
    "LABEL_APP",
    "LABEL_ROLE",
    "LABEL_TEE",
    "SIM_DIR",
    "SIM_KEY",
    "TLS_DIR",
    "TLS_KEYS",
    "TRUST_DIR",
    "AppliedObject",
    "ApplyResult",
    "KubernetesOptions",
    "RenderedApp",
    "SecretBundle",
    "SparkPodSpecs",
    "Toleration",
    "apply",
    "delete",
    "lint_manifests",
    "parse_toleration",
    "pod_specs_jar",
    "render",
    "secret_bundle",
    "spark_pod_specs",
    "submission_argv",
    "submission_environment",
    "submit_kubernetes",
]
