"""`trustedml submit --master k8s://` end to end, against a stand-in API server over TLS.

One submission for the module: `trustedml` applies the render with the official Python
client, then Spark's real submission client (spark-submit --deploy-mode cluster,
fabric8) sends its driver pod, which the stand-in refuses (nothing runs here), and
`trustedml` deletes what it applied. The tests read what a cluster would have received,
what the command printed, and the argv and environment of every process it started.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.conftest import EXAMPLES, PASSPHRASE, cli_env, write_passphrase_file
from tests.k8s.standin import NO_PODS, Request, serve, server_tls
from tests.k8s.standin import kubeconfig as make_kubeconfig
from tests.secret_scan import hits
from trustedml import KeyDirectory, Secret
from trustedml.k8s._submit import _relay

pytestmark = pytest.mark.slow

APP = "tml-e2e"
NAMESPACE = "ml-jobs"
APPLIED = [
    ("POST", "serviceaccounts"), ("POST", "serviceaccounts"), ("POST", "roles"),
    ("POST", "rolebindings"), ("POST", "networkpolicies"), ("POST", "configmaps"),
    ("POST", "configmaps"), ("POST", "secrets"), ("POST", "secrets"), ("POST", "secrets"),
]  # fmt: skip
DELETED = [
    ("DELETE", plural)
    for plural in (
        "secrets", "configmaps", "networkpolicies", "rolebindings", "roles", "serviceaccounts",
    )
]  # fmt: skip


@dataclass(frozen=True)
class Submission:
    """What one `trustedml submit --master k8s://` did and left behind."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    requests: tuple[Request, ...]
    objects_left: int
    # "pid N: argv" -> the argv / the environment of each process it started.
    argv: dict[str, bytes]
    environ: dict[str, bytes]
    tmp: Path
    keys: KeyDirectory
    sim_key: Path

    def secret_data(self, name: str) -> dict[str, bytes]:
        """The data of Secret ``name`` as the stand-in received it."""
        [body] = [r.body for r in self.requests if r.plural == "secrets" and r.method == "POST"
                  and (r.body or {})["metadata"]["name"] == name]  # fmt: skip
        assert body is not None
        return {k: base64.b64decode(v) for k, v in body["data"].items()}

    def driver_pod(self) -> dict[str, Any]:
        [pod] = [r.body for r in self.requests if r.plural == "pods"]
        assert pod is not None
        return pod


def _descendants(root: int) -> list[int]:
    """The processes under ``root`` (from each process's parent in /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        parent[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier}
        found += sorted(frontier)
    return found


def _watch(proc: subprocess.Popen[bytes], argv: dict[str, bytes], env: dict[str, bytes]) -> None:
    """Until ``proc`` ends: the argv and environment of every process under it (the
    spark-submit script, then the JVM it execs into)."""
    while proc.poll() is None:
        for pid in _descendants(proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if cmdline:
                name = f"pid {pid}: {cmdline.replace(bytes(1), b' ')[:120].decode()}"
                argv[name], env[name] = cmdline, environ
        time.sleep(0.02)


@pytest.fixture(scope="module")
def submission(
    session_keys: KeyDirectory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Submission]:
    tmp = tmp_path_factory.mktemp("k8s-submit")
    passphrase_file = write_passphrase_file(tmp / "passphrase")
    (tmp / "tmp").mkdir()  # the child's TMPDIR: where its private render folder goes
    sim_key = tmp / "sim-key.pem"  # made by the submission
    server_key = session_keys.unseal(Secret(PASSPHRASE))["tls_server_key"]
    tls = server_tls(session_keys.server_cert.read_bytes(), server_key)
    with serve(tls) as api:
        ca = session_keys.ca_cert.read_bytes()
        kubeconfig = make_kubeconfig(tmp / "kubeconfig", api.url, ca)
        command = [
            sys.executable, "-m", "trustedml", "submit", "--master", f"k8s://{api.url}",
            "--kubeconfig", str(kubeconfig), "--keys", str(session_keys.path),
            "--passphrase-file", str(passphrase_file), "--tee", "sim",
            "--sim-key", str(sim_key), "--broker", "https://127.0.0.1:9",
            "--namespace", NAMESPACE, "--name", APP, str(EXAMPLES / "pi.py"), "10",
        ]  # fmt: skip
        argv: dict[str, bytes] = {}
        environ: dict[str, bytes] = {}
        start = time.monotonic()
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(TMPDIR=str(tmp / "tmp"), SPARK_LOCAL_IP="127.0.0.1"),
            cwd=tmp,
            start_new_session=True,  # its own group: a timeout ends spark-submit too
        )
        watcher = threading.Thread(target=_watch, args=(proc, argv, environ), daemon=True)
        watcher.start()
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:  # the timeout hit
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            watcher.join(10)
        seconds = time.monotonic() - start
        yield Submission(
            returncode=proc.returncode,
            stdout=stdout.decode(),
            stderr=stderr.decode(),
            seconds=seconds,
            requests=tuple(api.requests),
            objects_left=len(api.objects),
            argv=argv,
            environ=environ,
            tmp=tmp,
            keys=session_keys,
            sim_key=sim_key,
        )


def test_a_refused_driver_pod_is_one_clear_error_line(submission: Submission) -> None:
    assert submission.returncode == 1
    assert "Traceback" not in submission.stderr
    errors = [line for line in submission.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: Kubernetes refused the driver pod {NAMESPACE}/{APP}-driver "
        f'(spark-submit exited 1): HTTP 403: pods "{APP}-driver" is forbidden: {NO_PODS}'
    ]
    assert submission.stderr.rstrip().endswith(errors[0])
    # Spark's own account passes through above it.
    assert "KubernetesClientException: Failure executing: POST" in submission.stderr
    # A refusal ends the submission at once: fabric8 does not retry a 403.
    assert submission.seconds < 30, f"{submission.seconds:.1f} s"


def test_the_server_sees_apply_then_sparks_pod_then_the_deletes(submission: Submission) -> None:
    calls = [(r.method, r.plural) for r in submission.requests]
    # Spark creates its ConfigMaps and Service only once the driver pod exists (owned by
    # it); a refused pod leaves nothing of Spark's and nothing for it to remove.
    assert calls == [*APPLIED, ("POST", "pods"), *DELETED]
    for request in submission.requests:
        assert f"/namespaces/{NAMESPACE}/" in request.path
        if request.method == "DELETE":
            assert request.query == {"labelSelector": [f"trustedml.io/app={APP}"]}
    assert submission.objects_left == 0
    names = [(r.body or {}).get("metadata", {}).get("name") for r in submission.requests]
    assert names[: len(APPLIED)] == [
        f"{APP}-driver", f"{APP}-executor", f"{APP}-driver", f"{APP}-driver", APP,
        f"{APP}-code", f"{APP}-trust", f"{APP}-auth", f"{APP}-tls", f"{APP}-sim",
    ]  # fmt: skip


def test_the_secrets_carry_a_fresh_auth_secret_and_the_key_directorys_stores(
    submission: Submission,
) -> None:
    auth = submission.secret_data(f"{APP}-auth")
    assert list(auth) == ["spark-auth-secret"]
    assert re.fullmatch(rb"[0-9a-f]{64}", auth["spark-auth-secret"])
    vault = submission.keys.unseal(Secret(PASSPHRASE))
    assert auth["spark-auth-secret"] != vault["spark_auth_secret"].reveal()
    assert submission.secret_data(f"{APP}-tls") == {
        "keystore.p12": submission.keys.keystore.read_bytes(),
        "truststore.p12": submission.keys.truststore.read_bytes(),
        "keystore-password": vault.keystore_password.reveal(),
        "truststore-password": vault.truststore_password.reveal(),
    }
    assert submission.secret_data(f"{APP}-sim") == {"sim-key.pem": submission.sim_key.read_bytes()}


def test_sparks_driver_pod_takes_its_secrets_by_reference(submission: Submission) -> None:
    pod = submission.driver_pod()
    # What Spark's client sent is a valid Pod for the API server.
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    meta = pod["metadata"]
    assert meta["name"] == f"{APP}-driver"
    labels = meta["labels"]
    assert labels["trustedml.io/app"] == APP
    assert (labels["trustedml.io/tee"], labels["trustedml.io/role"]) == ("sim", "driver")
    assert meta["annotations"]["trustedml.io/warning"] == "SIMULATED TEE: no hardware protection"
    [container] = pod["spec"]["containers"]
    assert container["name"] == "spark-driver"
    env = {e["name"]: e for e in container["env"]}
    assert "_SPARK_AUTH_SECRET" not in env
    for name, key in (
        ("TRUSTEDML_SSL_KEYSTORE_PASSWORD", "keystore-password"),
        ("TRUSTEDML_SSL_TRUSTSTORE_PASSWORD", "truststore-password"),
    ):
        assert env[name] == {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": f"{APP}-tls", "key": key}},
        }
    assert env["TRUSTEDML_TEE"]["value"] == "sim"
    secret_volumes = {
        v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v
    }
    assert sorted(secret_volumes.values()) == [f"{APP}-auth", f"{APP}-sim", f"{APP}-tls"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert {secret_volumes[v]: mounts[v] for v in secret_volumes} == {
        f"{APP}-auth": "/etc/trustedml/auth",
        f"{APP}-tls": "/etc/trustedml/tls",
        f"{APP}-sim": "/etc/trustedml/sim",
    }
    args = container["args"]
    assert args[:2] == ["driver", "--properties-file"]
    assert args[-2:] == ["local:///opt/trustedml/app/pi.py", "10"]
    assert pod["spec"]["serviceAccountName"] == f"{APP}-driver"


def test_no_secret_value_outside_the_secrets(submission: Submission) -> None:
    vault = submission.keys.unseal(Secret(PASSPHRASE))
    values = {
        f"{name}/{key}": value
        for name in (f"{APP}-auth", f"{APP}-tls", f"{APP}-sim")
        for key, value in submission.secret_data(name).items()
        if key != "truststore.p12"  # public: the CA certificate
    }
    values["passphrase"] = PASSPHRASE.encode()
    values["the key directory's Spark secret"] = vault["spark_auth_secret"].reveal()
    # The scan finds them where they are: in the Secrets' own requests (each value but
    # the passphrase and the key directory's Spark secret, which go nowhere).
    in_secrets = b"".join(r.raw for r in submission.requests if r.plural == "secrets")
    found = {hit.split(" as ")[0] for hit in hits({"Secrets": in_secrets}, values)}
    assert found == set(values) - {"passphrase", "the key directory's Spark secret"}
    blobs = {f"{r.method} {r.path}": r.raw for r in submission.requests if r.plural != "secrets"}
    blobs["stdout"] = submission.stdout.encode()
    blobs["stderr"] = submission.stderr.encode()
    # The spark-submit script and the JVM it becomes were both seen.
    assert any(b"SparkSubmit" in argv for argv in submission.argv.values()), submission.argv
    for name, argv in submission.argv.items():
        blobs[f"argv of {name}"] = argv
        blobs[f"environment of {name}"] = submission.environ[name]
    assert hits(blobs, values) == []


def test_nothing_is_left_behind(submission: Submission) -> None:
    said = re.search(rf"rendered {APP} \(--tee sim\) into\s+(\S+)", submission.stderr)
    assert said, submission.stderr
    render_dir = Path(said[1])
    assert render_dir.parent == submission.tmp / "tmp"
    assert render_dir.name.startswith(f"trustedml-{APP}-")
    assert list((submission.tmp / "tmp").glob(f"trustedml-{APP}-*")) == []
    assert _still_running(submission.argv) == []


def _still_running(argv: dict[str, bytes], wait: float = 10) -> list[str]:
    """The processes of ``argv`` still running (the same pid with the same argv: a
    zombie has none, a reused pid another) after up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        left = [name for name, cmdline in argv.items() if _cmdline(name) == cmdline]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _cmdline(name: str) -> bytes:
    try:
        return Path(f"/proc/{name.split()[1].rstrip(':')}/cmdline").read_bytes()
    except OSError:
        return b""


def test_only_a_refused_pod_becomes_the_error_line(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    """Spark's stderr passes through whole; the refusal of the pod is read from it, and
    any other failure (a certificate the client rejects) leaves spark-submit's status."""
    refused = (
        b'26/12/04 23:56:15 ERROR Client: Please check "kubectl auth can-i create pod" first.\n'
        b'Exception in thread "main" io.fabric8.kubernetes.client.KubernetesClientException: '
        b"Failure executing: POST at: https://127.0.0.1:1/api/v1/namespaces/ns/pods. Message: "
        b'pods "x-driver" is forbidden: quota. Received status: Status(apiVersion=v1, code=403, '
        b"details=null, kind=Status, message=...).\n\tat io.fabric8.Some.frame(Some.java:1)\n"
    )
    other = (
        b'Exception in thread "main" io.fabric8.kubernetes.client.KubernetesClientException: '
        b"An error has occurred.\nCaused by: javax.net.ssl.SSLHandshakeException: PKIX path "
        b"building failed\n"
    )
    assert _relay(io.BytesIO(refused)) == 'HTTP 403: pods "x-driver" is forbidden: quota'
    assert _relay(io.BytesIO(other)) is None
    assert capsysbinary.readouterr().err == refused + other
