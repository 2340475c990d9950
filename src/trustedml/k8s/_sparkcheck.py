"""Spark's own Kubernetes code, run with no cluster, on a render: the driver and executor
pods it would create (``java/PodSpecs.java``)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustedml.errors import KubernetesError, SparkConfigError, TrustedMLError
from trustedml.k8s._manifests import APP_DIR
from trustedml.k8s._render import RenderedApp
from trustedml.spark import compiled_jar, read_properties, spark_home
from trustedml.tee import java_binary

__all__ = ["POD_SPECS_CLASS", "SparkPodSpecs", "pod_specs_jar", "spark_pod_specs"]

POD_SPECS_CLASS = "org.trustedml.k8s.PodSpecs"
JAVA_SOURCE = Path(__file__).resolve().parent / "java" / "PodSpecs.java"
SUBMIT_FILE = "spark-submit.json"
# A short-lived JVM (as the preflight's): no optimising compiler, a small heap, no log4j
# output; the verdict is the exit code and one line on stderr.
_JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m", "-Dlog4j2.level=OFF")
_ERROR_PREFIX = "pod-specs: "
# What the JVM inherits: enough to find Java and name the user, nothing that could hold
# a secret or point Spark or the Kubernetes client elsewhere.
_KEPT_ENV = ("PATH", "JAVA_HOME", "LANG", "LC_ALL", "TMPDIR", "HOME", "USER", "LOGNAME")


@dataclass(frozen=True)
class SparkPodSpecs:
    """What Spark's Kubernetes submission would send for one spark-submit command line:
    the driver pod as ``Client.run`` creates it (``driver_pod`` holds
    ``driver_container``), the system properties and the ConfigMap of ``spark.properties``
    the driver gets, the objects created before and after the driver (``pre_resources``,
    ``resources``), and one executor pod as the driver's allocator asks for it.
    ``document`` is the whole answer, for scans."""

    source: Path
    driver_pod: Mapping[str, Any]
    driver_container: Mapping[str, Any]
    driver_system_properties: Mapping[str, str]
    driver_conf_map: Mapping[str, Any]
    pre_resources: tuple[Mapping[str, Any], ...]
    resources: tuple[Mapping[str, Any], ...]
    executor_pod: Mapping[str, Any]
    executor_container: Mapping[str, Any]
    document: Mapping[str, Any]


def pod_specs_jar(cache_dir: Path | None = None) -> Path:
    """The jar of the pod-spec check, compiled against the installed pyspark (cached
    like :func:`trustedml.spark.fs_jar`; built at install)."""
    return compiled_jar(
        JAVA_SOURCE,
        POD_SPECS_CLASS,
        stem="trustedml-podspecs",
        what="the Spark-on-Kubernetes pod-spec check",
        cache_dir=cache_dir,
    )


def _submit_file(
    source: Path | RenderedApp, scratch: Path, index: int, app: tuple[str, ...]
) -> tuple[Path, Path]:
    """(the source's path, its spark-submit argv file) for a render (or its folder),
    an argv file, or a properties file (then the argv submits ``app`` to its
    spark.master)."""
    path = source.out if isinstance(source, RenderedApp) else Path(source)
    submit = path / SUBMIT_FILE if path.is_dir() else path
    if submit.suffix == ".json":
        if not submit.is_file():
            raise KubernetesError(f"{submit}: expected a spark-submit argv file (JSON), got none")
        return path, submit
    conf = {p.key: p.value for p in read_properties(path)}
    master = conf.get("spark.master", "")
    if not master.startswith("k8s://"):
        raise KubernetesError(f"{path}: expected spark.master=k8s://..., got {master!r}")
    argv = ["spark-submit", "--master", master, "--deploy-mode", "cluster"]
    argv += ["--properties-file", str(path.resolve()), *app]
    made = scratch / f"submit-{index}.json"
    made.write_text(json.dumps(argv), encoding="utf-8")
    return path, made


def _environment(scratch: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
    env["SPARK_HOME"] = str(spark_home())
    # Spark ships the files of SPARK_CONF_DIR in its ConfigMaps: none of this machine's.
    conf_dir = scratch / "conf"
    conf_dir.mkdir()
    env["SPARK_CONF_DIR"] = str(conf_dir)
    return env


def _parse(source: Path, line: str) -> SparkPodSpecs:
    doc = json.loads(line)
    driver, executor = doc["driver"], doc["executor"]
    return SparkPodSpecs(
        source=source,
        driver_pod=driver["pod"],
        driver_container=driver["container"],
        driver_system_properties=driver["systemProperties"],
        driver_conf_map=driver["confMap"],
        pre_resources=tuple(driver["preResources"]),
        resources=tuple(driver["resources"]),
        executor_pod=executor["pod"],
        executor_container=executor["container"],
        document=doc,
    )


def spark_pod_specs(
    sources: Iterable[Path | RenderedApp],
    *,
    app: str = f"local://{APP_DIR}/app.py",
    app_args: Iterable[str] = (),
    auth_secret_file: Path | None = None,
    timeout: float = 120.0,
) -> list[SparkPodSpecs]:
    """Run Spark 4's own Kubernetes submission code (SparkSubmit's argument handling,
    then the driver and executor feature steps) on each of ``sources``, in one JVM,
    with no cluster: the client Spark is given refuses every request.

    A source is a written render (:class:`RenderedApp` or its folder: its
    ``spark-submit.json``), a spark-submit argv file (JSON list), or a properties file
    holding ``spark.master=k8s://...`` (submitting ``app`` with ``app_args``).
    ``auth_secret_file`` is what the driver's
    SecurityManager reads as the Spark auth secret (by default a fresh random one):
    the executor pod is built knowing it, so a pod that carried it would show it.

    Raises :class:`KubernetesError` with Spark's reason when its code refuses a
    configuration (e.g. a pod template that cannot be read), or when Java is missing.
    """
    with tempfile.TemporaryDirectory(prefix="trustedml-podspecs-") as tmp:
        scratch = Path(tmp)
        try:
            given = (app, *app_args)
            submits = [_submit_file(s, scratch, i, given) for i, s in enumerate(sources)]
        except SparkConfigError as exc:
            raise KubernetesError(str(exc)) from exc
        if not submits:
            return []
        try:
            jar = pod_specs_jar()
        except TrustedMLError as exc:
            raise KubernetesError(f"cannot build the pod-spec check: {exc}") from exc
        java = str(java_binary() or "java")
        argv = [
            java,
            *_JVM_FLAGS,
            "-cp",
            os.pathsep.join([str(jar), str(spark_home() / "jars" / "*")]),
        ]
        argv.append(POD_SPECS_CLASS)
        if auth_secret_file is not None:
            argv += ["--auth-secret-file", str(Path(auth_secret_file).resolve())]
        argv += [str(submit) for _, submit in submits]
        try:
            done = subprocess.run(
                argv,
                env=_environment(scratch),
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KubernetesError(
                f"Spark's Kubernetes code gave no answer within {timeout:.0f} s"
            ) from exc
        except OSError as exc:
            raise KubernetesError(f"cannot run {java}: {exc.strerror}") from exc
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith(_ERROR_PREFIX)]
        detail = lines[-1].removeprefix(_ERROR_PREFIX) if lines else done.stderr.strip()[-500:]
        for source, submit in submits:
            # The JVM names the argv file it read; a made one means its properties file.
            detail = detail.replace(str(submit), str(source))
        raise KubernetesError(f"Spark's Kubernetes code refused the configuration: {detail}")
    answers = done.stdout.splitlines()
    if len(answers) != len(submits):
        raise KubernetesError(
            f"Spark's pod-spec check: expected {len(submits)} answers, got {len(answers)}"
        )
    try:
        return [_parse(s, line) for (s, _), line in zip(submits, answers, strict=True)]
    except (ValueError, KeyError, TypeError) as exc:
        raise KubernetesError(f"Spark's pod-spec check: unreadable answer ({exc})") from exc
