"""Submit a rendered application to a Kubernetes cluster: apply, spark-submit, clean up."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from trustedml.errors import KubernetesError, LaunchError
from trustedml.k8s._apply import apply, delete
from trustedml.k8s._render import RenderedApp, SecretBundle
from trustedml.spark import KUBERNETES_RPC_TLS_ENV, spark_environment

__all__ = ["submission_argv", "submission_environment", "submit_kubernetes"]


# How Spark's Kubernetes client (fabric8) reports the API server's refusal of the pod.
_REFUSAL = re.compile(
    rb"KubernetesClientException: Failure executing: POST at: \S*/pods\. "
    rb"Message: (?P<message>.*?)\. Received status: Status\(.*?\bcode=(?P<code>\d+)"
)
_MAX_MESSAGE = 300


def _relay(stream: IO[bytes]) -> str | None:
    """Copy spark-submit's stderr to ours as it comes; return the API server's refusal
    of the driver pod (status and message) when Spark's client reported one."""
    refusal = None
    sink: IO[bytes] | None = getattr(sys.stderr, "buffer", None)
    for line in iter(stream.readline, b""):
        if sink is not None:
            sink.write(line)
            sink.flush()
        else:  # a text-only stderr (a test runner's)
            sys.stderr.write(line.decode("utf-8", "replace"))
        found = _REFUSAL.search(line)
        if found and refusal is None:
            message = found["message"].decode("utf-8", "replace")[:_MAX_MESSAGE]
            refusal = f"HTTP {found['code'].decode()}: {message}"
    return refusal


def submission_argv(rendered: RenderedApp, *, context: str | None = None) -> list[str]:
    """The spark-submit command line of ``rendered`` (no secret in it: the Spark conf is
    the render's properties file, which holds none)."""
    argv = list(rendered.argv)
    if context is not None:
        # Which kubeconfig context Spark's client uses: a name, not a credential.
        at = argv.index("--properties-file")
        argv[at:at] = ["--conf", f"spark.kubernetes.context={context}"]
    return argv


def submission_environment(
    base: Mapping[str, str] | None = None, *, kubeconfig: Path | None = None
) -> dict[str, str]:
    """The environment of the submitting spark-submit: the caller's minus every variable
    that carries a secret or redirects Spark, with ``KUBECONFIG`` when given. The pods
    get theirs from Secrets: the client needs no trusted-ml variable at all."""
    env = spark_environment(base)
    for name in [*KUBERNETES_RPC_TLS_ENV, *(n for n in env if n.startswith("TRUSTEDML_"))]:
        env.pop(name, None)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(Path(kubeconfig).resolve())
    return env


def submit_kubernetes(
    rendered: RenderedApp,
    bundle: SecretBundle,
    *,
    kubeconfig: Path | None = None,
    context: str | None = None,
    keep: bool = False,
) -> int:
    """Run ``rendered`` on its cluster: apply its objects (Secrets filled from
    ``bundle``), run spark-submit in cluster mode and wait for the application, then
    delete what was applied (``keep`` leaves it for inspection). Returns spark-submit's
    exit status; raises :class:`KubernetesError` naming the driver pod when the API
    server refused it (spark-submit's own output, passed through, has the details)."""
    rendered.write()
    apply(rendered, bundle, kubeconfig=kubeconfig, context=context)
    try:
        try:
            child = subprocess.Popen(
                submission_argv(rendered, context=context),
                env=submission_environment(kubeconfig=kubeconfig),
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise LaunchError(f"spark-submit could not start: {exc.strerror}") from exc
        with child:
            assert child.stderr is not None
            try:
                refusal = _relay(child.stderr)
            except BaseException:
                child.kill()  # as subprocess.run does: an interrupted submit ends here
                raise
        if child.returncode and refusal:
            # Spark's account is a page of JVM stack trace; this is the line that matters.
            pod = rendered.conf.get("spark.kubernetes.driver.pod.name", "")
            raise KubernetesError(
                f"Kubernetes refused the driver pod {rendered.namespace}/{pod} "
                f"(spark-submit exited {child.returncode}): {refusal}"
            )
        return int(child.returncode)
    finally:
        if not keep:
            delete(rendered.name, rendered.namespace, kubeconfig=kubeconfig, context=context)
