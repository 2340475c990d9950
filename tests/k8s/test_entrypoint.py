"""The pods' entrypoint: what it runs for Spark's driver and executor pods (fed with the
pods Spark's own Kubernetes code builds from a render), what it measures, that no
secret reaches argv, that a pod missing a variable is refused with exit 2, and a real
driver that attests to a real broker with its pod's sim evidence."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.broker.conftest import (  # noqa: F401 (fixtures)
    Broker,
    base_config,
    broker,
    broker_keys,
    new_key_id,
    save_sim_private_key,
    sim_key,
    sim_policy,
)
from tests.conftest import PASSPHRASE, ROOT, cli_env
from tests.k8s.conftest import Render
from tests.secret_scan import hits
from trustedml import KeyDirectory, Secret, runtime
from trustedml.attestation import SimProvider
from trustedml.errors import BrokerRefusedError, ConfigError
from trustedml.k8s import RenderedApp, SparkPodSpecs, _pod_gramine, secret_bundle, spark_pod_specs
from trustedml.k8s._pod import EXECUTOR_CLASS, EXECUTOR_ENV, PYTHON_RUNNER, executor_command
from trustedml.k8s._pod_gramine import (
    ENV_POD_ARGV,
    PASSTHROUGH_ENV,
    SEALED_DIR,
    enclave_launch,
    image_manifest,
    in_enclave,
    pod_argv,
)
from trustedml.k8s._pod_tee import (
    SUBMISSION_KEYS,
    PodLaunch,
    driver_launch,
    executor_launch,
    executor_measurement,
    pod_conf,
)
from trustedml.k8s.entrypoint import TINI, exec_command, main
from trustedml.runtime import ExecutorKeyStore, on_standalone_cluster
from trustedml.spark import measured_conf, parse_properties, spark_home
from trustedml.tee import GramineRuntime, java_binary, job_evidence_provider

APP = "local:///opt/trustedml/app/count_app.py"
ARGS = ("--rows", "10")
POD_IP = "10.244.1.7"


class Pods:
    """Two submissions of one sim render through Spark's own code (one JVM), the
    render's Secret data, and a sim key file standing for the mounted Secret."""

    def __init__(
        self,
        rendered: RenderedApp,
        specs: list[SparkPodSpecs],
        secrets: dict[str, dict[str, Secret]],
    ) -> None:
        self.rendered = rendered
        self.specs = specs
        self.secrets = secrets

    def secret_values(self) -> dict[str, bytes]:
        return {
            f"{name}/{key}": value.reveal()
            for name, data in self.secrets.items()
            for key, value in data.items()
        }


@pytest.fixture(scope="module")
def pods(
    render_for: Render, session_keys: KeyDirectory, tmp_path_factory: pytest.TempPathFactory
) -> Pods:
    scratch = tmp_path_factory.mktemp("entrypoint-pods")
    rendered = render_for("sim")
    bundle = secret_bundle(
        rendered, session_keys, Secret(PASSPHRASE), sim_key=scratch / "sim-key.pem"
    )
    specs = spark_pod_specs([rendered, rendered], app=APP, app_args=ARGS)
    return Pods(rendered, specs, {name: dict(bundle[name]) for name in bundle})


def pod_env(
    container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, Secret]], pod_name: str
) -> dict[str, str]:
    """The environment the kubelet gives ``container``: literal values, the Secret keys
    its secretKeyRefs name, and the pod fields; plus the image's own ENV."""
    env = {"PATH": os.environ["PATH"], "SPARK_HOME": str(spark_home())}
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    fields = {"status.podIP": POD_IP, "metadata.name": pod_name}
    for item in container.get("env", []):
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = item.get("value", "")
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]].reveal_text()
        else:
            env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
    return env


def _sim_key_file(pods: Pods, tmp_path: Path) -> Path:
    # The sim Secret's key, where the pod would see it mounted.
    (name,) = [n for n in pods.secrets if n.endswith("-sim")]
    path = tmp_path / "sim-key.pem"
    path.write_bytes(pods.secrets[name]["sim-key.pem"].reveal())
    path.chmod(0o600)
    return path


def executor_env(pods: Pods, tmp_path: Path) -> dict[str, str]:
    env = pod_env(pods.specs[0].executor_container, pods.secrets, "tml-count-exec-1")
    env["TRUSTEDML_SIM_KEY"] = str(_sim_key_file(pods, tmp_path))
    return env


def driver_pod(
    pods: Pods, n: int, tmp_path: Path, app_text: str
) -> tuple[list[str], dict[str, str]]:
    """Spark's driver arguments and environment for submission ``n``, with the mounted
    files (the conf ConfigMap, the application) at paths of this test."""
    spec = pods.specs[n]
    tmp_path.mkdir(parents=True, exist_ok=True)
    props = tmp_path / f"spark-{n}.properties"
    props.write_text(spec.driver_conf_map["data"]["spark.properties"])
    app = tmp_path / "count_app.py"
    app.write_text(app_text)
    args = list(spec.driver_container["args"])
    assert args[0] == "driver"
    args = [str(props) if a == "/opt/spark/conf/spark.properties" else a for a in args[1:]]
    args = [f"local://{app}" if a == APP else a for a in args]
    env = pod_env(spec.driver_container, pods.secrets, "tml-count-driver")
    env["TRUSTEDML_SIM_KEY"] = str(_sim_key_file(pods, tmp_path))
    env["TRUSTEDML_POD_WORK"] = str(tmp_path / "work")
    return args, env


# -- executor -----------------------------------------------------------------------------


@pytest.mark.spark
def test_the_executor_runs_what_sparks_entrypoint_would_with_the_pods_evidence(
    pods: Pods, tmp_path: Path
) -> None:
    env = executor_env(pods, tmp_path)
    plan = executor_launch(env)
    # Spark's entrypoint.sh: java, SPARK_JAVA_OPT_* by number, -Xms/-Xmx, the class path
    # (conf dir, SPARK_CLASSPATH, Spark's jars), the backend and its flags from the env.
    opts = sorted(
        (int(k.rsplit("_", 1)[1]), v) for k, v in env.items() if k.startswith("SPARK_JAVA_OPT_")
    )
    assert len(opts) > 10  # Spark passes the security properties this way
    memory = env["SPARK_EXECUTOR_MEMORY"]
    expected = [
        str(java_binary(env)),
        *(v for _, v in opts),
        f"-Xms{memory}",
        f"-Xmx{memory}",
        "-cp",
        f"{env['SPARK_CONF_DIR']}:{spark_home()}/jars/*",
        EXECUTOR_CLASS,
        "--driver-url", env["SPARK_DRIVER_URL"],
        "--executor-id", env["SPARK_EXECUTOR_ID"],
        "--cores", env["SPARK_EXECUTOR_CORES"],
        "--app-id", env["SPARK_APPLICATION_ID"],
        "--hostname", POD_IP,
        "--resourceProfileId", env["SPARK_RESOURCE_PROFILE_ID"],
        "--podName", "tml-count-exec-1",
    ]  # fmt: skip
    assert list(plan.argv) == expected
    assert hits({"argv": "\0".join(plan.argv).encode()}, pods.secret_values()) == []
    # Passwords stay in the environment, where Spark's ${env:...} references find them.
    tls = next(n for n in pods.secrets if n.endswith("-tls"))
    password = pods.secrets[tls]["keystore-password"].reveal_text()
    assert plan.env["TRUSTEDML_SSL_KEYSTORE_PASSWORD"] == password
    # The pod's own evidence: sim, measuring this image's executor, naming the pod.
    measurement = executor_measurement()
    assert plan.env["TRUSTEDML_TEE"] == "sim"
    assert plan.env["TRUSTEDML_JOB_MEASUREMENT"] == measurement.hex
    assert plan.env["TRUSTEDML_WORKER"] == "executor-1@tml-count-exec-1"
    assert plan.banner is not None
    assert "SIMULATED TEE" in plan.banner
    provider = job_evidence_provider(plan.env)
    assert isinstance(provider, SimProvider)
    assert provider.measurement == measurement.digest


@pytest.mark.spark
def test_an_executor_pod_attests_for_its_own_keys_bound_to_the_job(
    pods: Pods,
    broker: Broker,  # noqa: F811 (the fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the executor's key agent does with the environment the entrypoint gave the
    JVM: attest with the pod's evidence, binding the job the driver handed it."""
    env = executor_env(pods, tmp_path)
    env["TRUSTEDML_SIM_KEY"] = str(save_sim_private_key(broker.sim_key, tmp_path / "b.pem"))
    plan = executor_launch(env)
    for name in ("TRUSTEDML_TEE", "TRUSTEDML_JOB_MEASUREMENT", "TRUSTEDML_SIM_KEY"):
        monkeypatch.setenv(name, plan.env[name])
    monkeypatch.setenv("TRUSTEDML_WORKER", plan.env["TRUSTEDML_WORKER"])
    job, other_job = bytes.fromhex("44" * 48), bytes.fromhex("55" * 48)
    pod = plan.env["TRUSTEDML_JOB_MEASUREMENT"]
    allow = {"type": "sim", "measurement": pod, "job_measurement": job.hex()}
    key_id = broker.new_key({"allow_simulated": True, "allow": [allow]})
    ca = broker.ca.read_bytes()
    try:
        key = ExecutorKeyStore(broker.url, ca, job, [key_id]).generate_data_key(key_id)
        assert len(key.plaintext.reveal()) == 32
        with pytest.raises(BrokerRefusedError, match="worker executor-1@tml-count-exec-1: "):
            ExecutorKeyStore(broker.url, ca, other_job, [key_id]).generate_data_key(key_id)
    finally:
        with runtime._STORE_LOCK:
            made = [k for k in runtime._EXECUTOR_STORES if k[0] == broker.url]
            stores = [runtime._EXECUTOR_STORES.pop(k) for k in made]
        for store in stores:
            store.client.close()


def test_the_executor_measurement_is_one_per_image_and_not_a_workers() -> None:
    first, again = executor_measurement(), executor_measurement()
    assert first.digest == again.digest
    parts = first.parts
    assert parts["options"]["kubernetes"] == "executor"
    assert parts["spark_conf"] == {}
    assert {p["name"] for p in parts["packages"]} >= {"trusted-ml", "pyspark"}


EXECUTOR_VARIABLES = [name for name, _ in EXECUTOR_ENV] + ["SPARK_EXECUTOR_MEMORY"]


@pytest.mark.parametrize("missing", EXECUTOR_VARIABLES)
def test_an_executor_pod_missing_a_variable_is_refused_with_exit_2(
    missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {name: "1" for name in EXECUTOR_VARIABLES} | {"SPARK_EXECUTOR_MEMORY": "1g"}
    env.pop(missing)
    for name in EXECUTOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRUSTEDML_TEE", "sim")
    assert main(["executor"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{missing} is not set" in err


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        ([], {"TRUSTEDML_TEE": "sim"}, "no command"),
        (["shell"], {"TRUSTEDML_TEE": "sim"}, "unknown command 'shell'"),
        (["executor", "--x"], {"TRUSTEDML_TEE": "sim"}, "unexpected arguments"),
        (["executor"], {}, "TRUSTEDML_TEE is not set"),
        (["executor"], {"TRUSTEDML_TEE": "none"}, "expected one of gramine, cvm, sim"),
        (["driver", "--properties-file", "/p", "--class", PYTHON_RUNNER, APP],
         {"TRUSTEDML_TEE": "sim"}, "SPARK_DRIVER_BIND_ADDRESS is not set"),
        (["driver", "--properties-file", "/p", "--class", "org.example.Main", "local:///a.jar"],
         {"TRUSTEDML_TEE": "sim"}, "expected a Python application"),
        (["driver", "--class", PYTHON_RUNNER, APP], {"TRUSTEDML_TEE": "sim"},
         "--properties-file is missing"),
        (["driver", "--verbose", "--class", PYTHON_RUNNER, APP], {"TRUSTEDML_TEE": "sim"},
         "unexpected option '--verbose'"),
        (["executor"], {"TRUSTEDML_TEE": "gramine", "PATH": "/nonexistent"},
         "gramine-sgx is not in this image"),
    ],
)  # fmt: skip
def test_what_a_pod_cannot_run_is_refused_in_one_line_with_exit_2(
    argv: list[str],
    env: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("TRUSTEDML_TEE", "SPARK_DRIVER_BIND_ADDRESS", *EXECUTOR_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert said in err, err


def test_the_module_refuses_a_pod_without_sparks_variables() -> None:
    env = {k: v for k, v in cli_env(TRUSTEDML_TEE="sim").items() if not k.startswith("SPARK_")}
    done = subprocess.run(
        [sys.executable, "-m", "trustedml.k8s.entrypoint", "executor"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "trustedml entrypoint: SPARK_DRIVER_URL is not set: Spark's executor pod sets it "
        "(start executors through spark-submit, not by hand)"
    ]


# -- driver -------------------------------------------------------------------------------


@pytest.mark.spark
def test_the_driver_runs_sparks_client_mode_submit_on_measured_private_copies(
    pods: Pods, tmp_path: Path
) -> None:
    app_text = "print('count')\n"
    args, env = driver_pod(pods, 0, tmp_path, app_text)
    plan = driver_launch(args, env)
    argv = list(plan.argv)
    props, app = Path(argv[argv.index("--properties-file") + 1]), Path(argv[-3])
    # What Spark's entrypoint.sh runs for `driver ARGS`, on the copies.
    assert argv == [
        f"{spark_home()}/bin/spark-submit",
        "--conf", f"spark.driver.bindAddress={POD_IP}",
        "--deploy-mode", "client",
        "--properties-file", str(props),
        "--class", PYTHON_RUNNER,
        str(app), *ARGS,
    ]  # fmt: skip
    work = tmp_path / "work"
    assert props.parent == app.parent
    assert props.parent.parent == work
    assert stat.S_IMODE(props.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(app.stat().st_mode) == 0o600
    assert app.read_text() == app_text
    assert props.read_bytes() == Path(args[1]).read_bytes()
    assert hits({"argv": "\0".join(argv).encode()}, pods.secret_values()) == []
    assert plan.env["TRUSTEDML_TEE"] == "sim"
    assert plan.env["TRUSTEDML_SIM_KEY"] == env["TRUSTEDML_SIM_KEY"]
    assert plan.env["TRUSTEDML_BROKER_URL"] == env["TRUSTEDML_BROKER_URL"]
    for check in plan.checks:
        check()  # the copies are what was measured


@pytest.mark.spark
def test_the_same_render_measures_the_same_on_every_submission(
    pods: Pods, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spark adds ids, times, names and addresses per submission: left out, so a broker
    policy can pin the job's digest (``measure-driver`` gives it from the render, before
    any submission); the application, its arguments and the security properties stay
    in."""
    first = [
        driver_launch(*driver_pod(pods, n, tmp_path / str(n), "print(1)\n")).env[
            "TRUSTEDML_JOB_MEASUREMENT"
        ]
        for n in (0, 1)
    ]
    confs = [
        {p.key: p.value for p in parse_properties(s.driver_conf_map["data"]["spark.properties"])}
        for s in pods.specs
    ]
    differing = {k for k in confs[0].keys() | confs[1].keys() if confs[0].get(k) != confs[1].get(k)}
    assert differing
    assert differing <= SUBMISSION_KEYS
    assert first[0] == first[1]
    measured = measured_conf(pod_conf(confs[0]))
    assert measured["spark.network.crypto.enabled"] == "true"
    assert "spark.app.id" not in measured
    assert "spark.driver.host" not in measured

    # Before any submission, from the render's own spark.properties: the same digest.
    args, env = driver_pod(pods, 0, tmp_path / "render", "print(1)\n")
    args[1] = str(pods.rendered.out / "spark.properties")
    monkeypatch.setenv("TRUSTEDML_POD_WORK", env["TRUSTEDML_POD_WORK"])
    assert main(["measure-driver", *args]) == 0
    assert capsys.readouterr().out.strip() == first[0]

    other_code = driver_launch(*driver_pod(pods, 0, tmp_path / "code", "print(2)\n"))
    args, env = driver_pod(pods, 0, tmp_path / "args", "print(1)\n")
    other_args = driver_launch([*args[:-1], "11"], env)
    args, env = driver_pod(pods, 0, tmp_path / "conf", "print(1)\n")
    weak = (
        Path(args[1])
        .read_text()
        .replace("spark.network.crypto.enabled=true", "spark.network.crypto.enabled=false")
    )
    Path(args[1]).write_text(weak)
    other_conf = driver_launch(args, env)
    others = {p.env["TRUSTEDML_JOB_MEASUREMENT"] for p in (other_code, other_args, other_conf)}
    assert len(others) == 3
    assert first[0] not in others


def test_the_driver_refuses_a_remote_application(tmp_path: Path) -> None:
    props = tmp_path / "spark.properties"
    props.write_text("spark.master=k8s://https://10.0.0.1:6443\n")
    env = {"TRUSTEDML_TEE": "sim", "SPARK_DRIVER_BIND_ADDRESS": POD_IP}
    env["TRUSTEDML_POD_WORK"] = str(tmp_path / "work")
    with pytest.raises(ConfigError, match="expected a file in the image or the pod"):
        driver_launch(
            ["--properties-file", str(props), "--class", PYTHON_RUNNER, "https://x/app.py"], env
        )


def test_a_k8s_driver_hands_its_executors_a_store_that_attests_in_each_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUSTEDML_SPARK_MASTER", "k8s://https://10.0.0.1:6443")
    assert on_standalone_cluster()
    monkeypatch.setenv("TRUSTEDML_SPARK_MASTER", "local[2]")
    assert not on_standalone_cluster()


# -- gramine ------------------------------------------------------------------------------


def test_the_gramine_image_manifest_trusts_the_image_and_passes_only_names_in(
    tmp_path: Path,
) -> None:
    java = java_binary()
    assert java is not None
    runtime = GramineRuntime(
        tmp_path / "libsysdb.so", tmp_path / "glibc", Path("/lib/x86_64-linux-gnu")
    )
    manifest = image_manifest(
        runtime=runtime,
        python=Path(sys.executable),
        java_home=java.resolve().parent.parent,
        venv=Path(sys.prefix),
        cache=tmp_path / "cache",
    )
    tomli_w.dumps(manifest)  # writable as TOML
    assert manifest["loader"]["argv"] == [sys.executable, "-m", "trustedml.k8s.entrypoint"]
    env = manifest["loader"]["env"]
    assert env["TRUSTEDML_TEE"] == "gramine"  # measured: the pod cannot change it
    assert env["TRUSTEDML_POD_WORK"] == str(SEALED_DIR)
    passed = {k for k, v in env.items() if v == {"passthrough": True}}
    assert passed == set(PASSTHROUGH_ENV)
    assert "_SPARK_AUTH_SECRET" not in env
    assert "TRUSTEDML_JOB_MEASUREMENT" not in env
    sealed = [m for m in manifest["fs"]["mounts"] if m["path"] == str(SEALED_DIR)]
    assert sealed == [
        {"path": str(SEALED_DIR), "uri": f"file:{SEALED_DIR}", "type": "encrypted",
         "key_name": "_sgx_mrenclave"}
    ]  # fmt: skip
    sgx = manifest["sgx"]
    assert sgx["debug"] is False
    assert sgx["file_check_policy"] == "strict"
    trusted = {t["uri"] if isinstance(t, dict) else t for t in sgx["trusted_files"]}
    site = next(p for p in sys.path if p.endswith("site-packages"))
    assert f"file:{site}/" in trusted
    assert f"file:{tmp_path / 'cache'}/" in trusted
    # Each file once: no package file listed again inside a trusted directory.
    assert not [t for t in trusted if t.startswith(f"file:{site}/") and t != f"file:{site}/"]
    assert "file:/opt/trustedml/app/" in sgx["allowed_files"]
    assert not any(t.startswith("file:/opt/trustedml/app") for t in trusted)


def test_the_pods_command_runs_under_tini_outside_an_enclave() -> None:
    plan = PodLaunch(("/opt/java/bin/java", "-version"), {})
    assert exec_command(plan, enclave=True) == ["/opt/java/bin/java", "-version"]
    under = [TINI, "-s", "--"] if os.access(TINI, os.X_OK) else []
    assert exec_command(plan) == [*under, "/opt/java/bin/java", "-version"]


def test_the_executors_class_path_follows_sparks_image() -> None:
    home = Path("/spark")
    env = {"SPARK_CLASSPATH": "/x.jar", "SPARK_EXTRA_CLASSPATH": "/e.jar"}
    env |= {name: "1" for name, _ in EXECUTOR_ENV} | {"SPARK_EXECUTOR_MEMORY": "1g"}
    argv = executor_command(env, Path("/java"), home)
    assert argv[argv.index("-cp") + 1] == "/spark/conf:/x.jar:/spark/jars/*:/e.jar"
    env |= {"SPARK_CONF_DIR": "/c", "HADOOP_CONF_DIR": "/h", "SPARK_DIST_CLASSPATH": "/d"}
    argv = executor_command(env, Path("/java"), home)
    assert argv[argv.index("-cp") + 1] == "/c:/h:/x.jar:/spark/jars/*:/e.jar:/d"


def test_outside_the_enclave_the_pod_enters_the_images_signed_enclave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = tmp_path / "gramine-sgx"
    loader.write_text("#!/bin/sh\n")
    loader.chmod(0o755)
    monkeypatch.setattr(_pod_gramine, "GRAMINE_DIR", tmp_path)
    with pytest.raises(ConfigError, match="built unsigned"):
        enclave_launch(["executor"], {"PATH": str(tmp_path)})
    (tmp_path / "trustedml-pod.manifest.sgx").write_text("signed")
    plan = enclave_launch(["driver", "--class", PYTHON_RUNNER], {"PATH": str(tmp_path)})
    assert plan.argv == (str(loader), str(tmp_path / "trustedml-pod"))
    assert pod_argv(plan.env) == ["driver", "--class", PYTHON_RUNNER]


def test_inside_the_enclave_the_pods_arguments_come_from_one_variable(tmp_path: Path) -> None:
    assert not in_enclave(tmp_path)
    (tmp_path / "attestation_type").write_text("dcap")
    assert in_enclave(tmp_path)
    assert pod_argv({ENV_POD_ARGV: json.dumps(["executor"])}) == ["executor"]
    for bad in ("", "[]", '"driver"', "[1]"):
        with pytest.raises(ConfigError, match=ENV_POD_ARGV):
            pod_argv({ENV_POD_ARGV: bad})


# -- a real driver ------------------------------------------------------------------------

KEY_APP = """\
import json, sys
from trustedml.runtime import job_keystore
from trustedml.tee import job_measurement
key = job_keystore().generate_data_key(sys.argv[1])
size = len(key.plaintext.reveal())
print(json.dumps({"measurement": job_measurement().hex(), "key_bytes": size}))
"""


@pytest.mark.spark
def test_a_driver_pod_attests_to_the_broker_and_gets_a_key(
    broker: Broker,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """``python -m trustedml.k8s.entrypoint driver ...`` for real (local master, one
    JVM): it measures the job, exec's spark-submit through the sim backend, and the
    application's job_keystore() gets a data key from a broker whose policy allows
    only that measurement."""
    app = tmp_path / "key_app.py"
    app.write_text(KEY_APP)
    props = tmp_path / "spark.properties"
    props.write_text(
        "spark.master=local[1]\n"
        f"spark.pyspark.python={sys.executable}\n"
        "spark.ui.enabled=false\n"
        "spark.app.id=spark-1\n"  # a submission's, left out of the measurement
    )
    key_id = new_key_id("pod")
    env = cli_env(
        TRUSTEDML_TEE="sim",
        TRUSTEDML_SIM_KEY=str(save_sim_private_key(broker.sim_key, tmp_path / "sim-key.pem")),
        TRUSTEDML_BROKER_URL=broker.url,
        TRUSTEDML_BROKER_CA=str(broker.ca),
        TRUSTEDML_POD_WORK=str(tmp_path / "work"),
        SPARK_DRIVER_BIND_ADDRESS="127.0.0.1",
        SPARK_LOCAL_IP="127.0.0.1",
    )
    args = ["--properties-file", str(props), "--class", PYTHON_RUNNER, f"local://{app}", key_id]
    expected = driver_launch(args, env).env["TRUSTEDML_JOB_MEASUREMENT"]
    broker.admin().create_key(key_id, sim_policy(bytes.fromhex(expected)))
    done = subprocess.run(
        [sys.executable, "-m", "trustedml.k8s.entrypoint", "driver", *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said == {"measurement": expected, "key_bytes": 32}
    assert "SIMULATED TEE" in done.stderr
