from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.conftest import EXAMPLES, PASSPHRASE, run_cli
from trustedml import (
    ConfigError,
    KeyDirectory,
    LaunchError,
    PlainSparkConfig,
    Secret,
    SecureSparkConfig,
    run,
    submit,
)
from trustedml.keys import SecretName
from trustedml.tee import GramineBackend, GramineRuntime, LaunchPlan
from trustedml.tee._measure import java_binary

PI = EXAMPLES / "pi.py"
GOLDEN = Path(__file__).parent / "golden" / "pi.manifest.toml"
RUNTIME = GramineRuntime(
    libos=Path("/opt/gramine/lib/libsysdb.so"),
    runtime_dir=Path("/opt/gramine/runtime/glibc"),
    arch_libdir=Path("/lib/x86_64-linux-gnu"),
)
SITE = Path(sysconfig.get_path("purelib"))
SYSTEM_MOUNTS = ("/lib", "/lib/x86_64-linux-gnu", "/usr", "/etc")


def _prepare(
    tmp: Path, settings: Any, *, launcher: str = "submit", **options: Any
) -> tuple[LaunchPlan, dict[str, Any], str]:
    plans: list[LaunchPlan] = []
    backend = GramineBackend(tmp / "manifests", dry_run=True, runtime=RUNTIME, **options)
    if launcher == "submit":
        code = submit(PI, ["4"], settings=settings, tee=backend, on_plan=plans.append)
    else:
        code = run(["python", str(PI), "4"], settings=settings, tee=backend, on_plan=plans.append)
    assert code == 0
    (plan,) = plans
    assert plan.launch is False
    text = plan.files["manifest"].read_text()
    return plan, tomllib.loads(text), text


@pytest.fixture(scope="module")
def secure(session_keys: KeyDirectory) -> SecureSparkConfig:
    return SecureSparkConfig.from_key_directory(session_keys, Secret(PASSPHRASE), ui=False)


@pytest.fixture(scope="module")
def pi_manifest(
    secure: SecureSparkConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LaunchPlan, dict[str, Any], str]:
    return _prepare(tmp_path_factory.mktemp("gramine"), secure)


def _trusted(manifest: dict[str, Any]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for entry in manifest["sgx"]["trusted_files"]:
        if isinstance(entry, dict):
            out[entry["uri"]] = entry["sha256"]
        else:
            out[entry] = None
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pi_manifest_entrypoint_is_the_java_binary(
    pi_manifest: tuple[LaunchPlan, dict[str, Any], str],
) -> None:
    _, manifest, _ = pi_manifest
    java = java_binary()
    assert java is not None
    entry = Path(manifest["libos"]["entrypoint"])
    assert entry == java.resolve()
    assert entry.read_bytes()[:4] == b"\x7fELF"  # a binary, not a shell script
    argv = manifest["loader"]["argv"]
    assert Path(argv[0]).resolve() == entry
    assert argv[argv.index("org.apache.spark.deploy.SparkSubmit") + 1] == "--properties-file"
    assert argv[-2:] == [str(PI), "4"]
    assert manifest["loader"]["entrypoint"] == "file:/opt/gramine/lib/libsysdb.so"
    assert _trusted(manifest)[f"file:{entry}"] == _sha(entry)


def test_pi_manifest_pins_the_app_and_is_production(
    pi_manifest: tuple[LaunchPlan, dict[str, Any], str], session_keys: KeyDirectory
) -> None:
    plan, manifest, text = pi_manifest
    trusted = _trusted(manifest)
    assert trusted[f"file:{PI}"] == hashlib.sha256(PI.read_bytes()).hexdigest()
    sgx = manifest["sgx"]
    assert sgx["debug"] is False
    assert sgx["edmm_enable"] is False
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["file_check_policy"] == "strict"
    assert (sgx["enclave_size"], sgx["max_threads"]) == ("8G", 256)
    assert "allow_all_but_log" not in text
    assert "insecure__" not in text  # no host argv, no host env passthrough
    assert "passthrough" not in text
    # The conf files the job reads are pinned too.
    conf = plan.files["conf"]
    props = conf / "spark.properties"
    assert trusted[f"file:{props}"] == _sha(props)
    assert str(props) in manifest["loader"]["argv"]
    # Only non-secret environment; no secret value anywhere in the manifest.
    env = manifest["loader"]["env"]
    assert env["TRUSTEDML_TEE"] == "gramine"
    assert env["TRUSTEDML_JOB_MEASUREMENT"] in plan.notes[0]
    assert env["SPARK_CONF_DIR"] == str(conf)
    opened = session_keys.unseal(Secret(PASSPHRASE))
    for name in opened:
        assert opened[name].reveal_text() not in text
    assert not any("PASSWORD" in k or "SECRET" in k for k in env)
    assert any("TRUSTEDML_SSL_KEYSTORE_PASSWORD" in note for note in plan.notes)


def test_pi_manifest_mounts_every_trusted_file(
    pi_manifest: tuple[LaunchPlan, dict[str, Any], str],
) -> None:
    plan, manifest, _ = pi_manifest
    # Trusted-file URIs name host files; each must be reachable through a mount (the
    # LibOS itself is loaded by Gramine's loader, outside the enclave's file system).
    hosts = [Path(m["uri"].removeprefix("file:")) for m in manifest["fs"]["mounts"]]
    for m in manifest["fs"]["mounts"]:
        assert m["uri"] == f"file:{m['path']}" or m["path"] == "/lib"
    for uri in _trusted(manifest):
        if uri == manifest["loader"]["entrypoint"]:
            continue
        path = Path(uri.removeprefix("file:"))
        assert any(path == h or h in path.parents for h in hosts), path
    scratch = plan.files["scratch"]
    assert manifest["sgx"]["allowed_files"] == [f"file:{scratch}/"]
    assert manifest["fs"]["start_dir"] == str(scratch)
    assert f"-Djava.io.tmpdir={scratch}" in manifest["loader"]["argv"]
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700


def _normalize(manifest: dict[str, Any], plan: LaunchPlan) -> dict[str, Any]:
    """Machine-specific paths and hashes replaced by placeholders; the per-file
    entries of installed packages and of trusted-ml collapsed to one line each."""
    java = java_binary()
    assert java is not None
    base = plan.files["manifest"].name.removesuffix(".manifest")
    digest = manifest["loader"]["env"]["TRUSTEDML_JOB_MEASUREMENT"]
    real_python = Path(sys.executable).resolve()
    roots = {
        str(plan.files["manifest"].parent): "{manifest_dir}",
        base: "trustedml-{digest16}",
        digest: "{measurement}",
        str(SITE / "pyspark"): "{spark_home}",
        str(SITE): "{site_packages}",
        str(Path(sys.executable).parent): "{python_bin}",
        str(real_python): "{python_binary}",
        sysconfig.get_path("stdlib"): "{stdlib}",
        str(Path(sys.prefix)): "{venv}",
        str(Path(sys.base_prefix)): "{python_prefix}",
        str(java.resolve().parent.parent): "{java_home}",
        str(EXAMPLES): "{examples}",
        str(Path(__file__).resolve().parents[2] / "src" / "trustedml"): "{trustedml}",
    }

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            for old in sorted(roots, key=len, reverse=True):
                value = value.replace(old, roots[old])
            return value
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    out = fix(manifest)
    trusted: list[Any] = []
    for entry in out["sgx"]["trusted_files"]:
        uri = entry["uri"] if isinstance(entry, dict) else entry
        if uri.startswith(("file:{site_packages}/", "file:{spark_home}/")):
            entry = "file:{site_packages}/** (locked packages, sha256 from RECORD)"
        elif uri.startswith("file:{trustedml}/"):
            entry = "file:{trustedml}/** (trusted-ml's files, sha256)"
        elif uri.startswith("file:/etc/"):
            continue  # which of them exist depends on the host
        elif isinstance(entry, dict):
            entry = {"uri": uri, "sha256": "<sha256>"}
        if entry not in trusted:
            trusted.append(entry)
    out["sgx"]["trusted_files"] = trusted
    # Host mounts are sorted by their real paths, which differ per checkout (the
    # examples may sort before or after the temporary manifest directory).
    mounts = out["fs"]["mounts"]
    system = [m for m in mounts if m["path"] in SYSTEM_MOUNTS]
    host = [m for m in mounts if m["path"].startswith(("{manifest_dir}", "{examples}"))]
    out["fs"]["mounts"] = system + sorted(host, key=lambda m: m["path"])
    return out


def test_pi_manifest_matches_the_golden_file(
    pi_manifest: tuple[LaunchPlan, dict[str, Any], str],
) -> None:
    plan, manifest, _ = pi_manifest
    normalized = tomli_w.dumps(_normalize(manifest, plan))
    if os.environ.get("TRUSTEDML_UPDATE_GOLDEN"):
        GOLDEN.write_text(normalized)
    assert normalized == GOLDEN.read_text(), (
        "the generated manifest changed; if on purpose, rerun with TRUSTEDML_UPDATE_GOLDEN=1 "
        "and review the diff of tests/tee/golden/pi.manifest.toml"
    )


def test_run_manifest_entrypoint_is_the_python_binary(
    tmp_path: Path, secure: SecureSparkConfig
) -> None:
    _, manifest, _ = _prepare(tmp_path, secure, launcher="run")
    real = Path(sys.executable).resolve()
    assert Path(manifest["libos"]["entrypoint"]) == real
    # argv[0] is the venv's interpreter so that Python finds the venv's packages.
    assert manifest["loader"]["argv"] == [sys.executable, str(PI), "4"]
    trusted = _trusted(manifest)
    assert trusted[f"file:{real}"] == _sha(real)
    assert trusted[f"file:{sys.executable}"] == _sha(real)
    assert trusted[f"file:{PI}"] == _sha(PI)
    assert "file:/usr/bin/" in trusted
    env = manifest["loader"]["env"]
    assert env["PYSPARK_SUBMIT_ARGS"].startswith("--properties-file ")
    assert env["PYSPARK_SUBMIT_ARGS"].endswith("spark.properties pyspark-shell")


def test_enclave_options(tmp_path: Path) -> None:
    plain = PlainSparkConfig(ui=False)
    _, manifest, _ = _prepare(tmp_path, plain, enclave_size="2G", max_threads=64)
    assert (manifest["sgx"]["enclave_size"], manifest["sgx"]["max_threads"]) == ("2G", 64)
    with pytest.raises(ConfigError, match="--enclave-size: expected a size like 512M or 8G"):
        GramineBackend(tmp_path, enclave_size="8GB")
    with pytest.raises(ConfigError, match="--enclave-size: expected a size like 512M or 8G"):
        GramineBackend(tmp_path, enclave_size="8G\n")  # would end up in the manifest
    with pytest.raises(ConfigError, match="--threads: expected an integer >= 4, got 2"):
        GramineBackend(tmp_path, max_threads=2)
    with pytest.raises(ConfigError, match=r"--isv-svn: expected an integer 0\.\.65535, got 65536"):
        GramineBackend(tmp_path, isv_svn=65536)
    with pytest.raises(ConfigError, match=r"--isv-prod-id: expected an integer 0\.\.65535, got -1"):
        GramineBackend(tmp_path, isv_prod_id=-1)


@pytest.fixture
def no_gramine(monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "gramine-sgx").exists()
    )
    monkeypatch.setenv("PATH", path)


@pytest.mark.usefixtures("no_gramine")
def test_without_gramine_the_manifest_is_written_and_launch_stops(tmp_path: Path) -> None:
    backend = GramineBackend(tmp_path / "m", runtime=RUNTIME, signing_key=Secret("k"))
    with pytest.raises(LaunchError, match="gramine-sgx-sign not found on PATH: manifest written"):
        submit(PI, [], settings=PlainSparkConfig(ui=False), tee=backend)
    (manifest,) = (tmp_path / "m").glob("*.manifest")
    tomllib.loads(manifest.read_text())


_FAKE_SIGN = """#!{python}
import json, os, stat, sys
from cryptography.hazmat.primitives import serialization
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
key = args["--key"]
mode = stat.S_IMODE(os.stat(key).st_mode)
pem = open(key, "rb").read()
rsa = serialization.load_pem_private_key(pem, password=None)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"tool": "sign", "args": args, "mode": mode,
                          "bits": rsa.key_size, "e": rsa.public_key().public_numbers().e}}) + "\\n")
open(args["--output"], "w").write(open(args["--manifest"]).read())
open(args["--output"].removesuffix(".manifest.sgx") + ".sig", "wb").write(b"sig")
"""
_FAKE_LOADER = """#!{python}
import json, os, sys
# Its environment is scrubbed (on purpose): log beside the script.
with open(os.path.join(os.path.dirname(sys.argv[0]), "loader.log"), "a") as log:
    log.write(json.dumps({{"tool": "sgx", "argv": sys.argv, "cwd": os.getcwd(),
                          "env": sorted(os.environ)}}) + "\\n")
sys.exit(3)
"""


@pytest.fixture
def fake_gramine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in (("gramine-sgx-sign", _FAKE_SIGN), ("gramine-sgx", _FAKE_LOADER)):
        (tools / name).write_text(body.format(python=sys.executable))
        (tools / name).chmod(0o755)
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    return log


def test_signs_with_the_enclave_key_and_launches_gramine_sgx(
    tmp_path: Path, fake_gramine: Path, session_keys: KeyDirectory, secure: SecureSparkConfig
) -> None:
    key = session_keys.unseal(Secret(PASSPHRASE))[SecretName.ENCLAVE_SIGNING_KEY]
    backend = GramineBackend(tmp_path / "m", runtime=RUNTIME, signing_key=key)
    plans: list[LaunchPlan] = []
    code = submit(PI, ["4"], settings=secure, tee=backend, on_plan=plans.append)
    assert code == 3  # gramine-sgx's exit code is the job's
    (sign,) = (json.loads(line) for line in fake_gramine.read_text().splitlines())
    (loader,) = (json.loads(x) for x in (tmp_path / "bin" / "loader.log").read_text().splitlines())
    (plan,) = plans
    manifest = plan.files["manifest"]
    assert sign["args"]["--manifest"] == str(manifest)
    assert sign["args"]["--output"] == f"{manifest}.sgx"
    assert (sign["mode"], sign["bits"], sign["e"]) == (0o600, 3072, 3)
    assert not Path(sign["args"]["--key"]).exists()  # the key file is gone
    assert loader["argv"][1:] == [str(manifest).removesuffix(".manifest")]
    assert loader["cwd"] == str(manifest.parent)
    # The untrusted loader gets no secret from the host side either.
    assert not any("PASSWORD" in k or "SECRET" in k or "KEYRING" in k for k in loader["env"])
    assert plan.files["signed_manifest"].is_file()


@pytest.mark.usefixtures("fake_gramine")
def test_signing_needs_the_enclave_key(tmp_path: Path) -> None:
    backend = GramineBackend(tmp_path / "m", runtime=RUNTIME)
    with pytest.raises(ConfigError, match="signing needs the enclave key"):
        submit(PI, [], settings=PlainSparkConfig(ui=False), tee=backend)


@pytest.mark.usefixtures("no_gramine")
def test_cli_gramine(
    tmp_path: Path, session_keys: KeyDirectory, session_passphrase_file: Path
) -> None:
    manifests = tmp_path / "manifests"
    dry = run_cli(
        ["submit", "--insecure", "--tee", "gramine", "--dry-run", "--manifest-dir", str(manifests),
         "--enclave-size", "4G", "--threads", "32", "--isv-prod-id", "7", "--isv-svn", "3",
         str(PI), "4"]
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    (written,) = manifests.glob("*.manifest")
    assert f"--dry-run: manifest written to {written}; not launched" in dry.stderr
    sgx = tomllib.loads(written.read_text())["sgx"]
    assert (sgx["enclave_size"], sgx["max_threads"]) == ("4G", 32)
    assert (sgx["isvprodid"], sgx["isvsvn"]) == (7, 3)
    wrong = run_cli(["submit", "--insecure", "--tee", "sim", "--isv-svn", "3", str(PI)])
    assert wrong.returncode == 2
    assert "--isv-svn applies to --tee gramine, not --tee sim" in wrong.stderr

    keys = ["--keys", str(session_keys.path), "--passphrase-file", str(session_passphrase_file)]
    secure_dir = tmp_path / "secure-manifests"
    real = run_cli(
        ["submit", *keys, "--tee", "gramine", "--manifest-dir", str(secure_dir), str(PI)]
    )
    assert real.returncode == 1
    assert "gramine-sgx-sign not found on PATH: manifest written to" in real.stderr
    # Secure mode: the UI's TLS password never enters the enclave, so the UI is off.
    assert "--tee gramine: the Spark web UI is off" in real.stderr
    (props,) = secure_dir.glob("*.conf/spark.properties")
    assert "spark.ui.enabled=false" in props.read_text()

    nokeys = run_cli(["submit", "--insecure", "--tee", "gramine", str(PI)])
    assert nokeys.returncode == 2
    assert "--tee gramine signs the enclave with the key directory's enclave key" in nokeys.stderr


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"ui": True}, "web UI's TLS keystore password (run with --no-ui)"),
        ({"ui": False, "rpc_tls": True}, "RPC TLS keystore password"),
        ({"ui": False, "master": "spark://127.0.0.1:7077"}, "standalone cluster's auth secret"),
    ],
)
def test_settings_that_need_a_host_secret_are_refused_before_any_file_is_written(
    tmp_path: Path, session_keys: KeyDirectory, options: dict[str, Any], names: str
) -> None:
    settings = SecureSparkConfig.from_key_directory(session_keys, Secret(PASSPHRASE), **options)
    backend = GramineBackend(tmp_path / "manifests", dry_run=True)
    with pytest.raises(ConfigError, match="receives no secrets from the host") as info:
        submit(PI, [], settings=settings, tee=backend)
    assert names in str(info.value)
    assert not (tmp_path / "manifests").exists()


@pytest.mark.usefixtures("no_gramine")
def test_measure_predicts_the_gramine_job_measurement(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    args = ["--insecure", "--tee", "gramine", "--dry-run", "--manifest-dir", str(manifests)]
    dry = run_cli(["submit", *args, str(PI), "4"])
    assert dry.returncode == 0, dry.stderr
    (written,) = manifests.glob("*.manifest")
    launched = tomllib.loads(written.read_text())["loader"]["env"]["TRUSTEDML_JOB_MEASUREMENT"]
    measured = run_cli(["measure", *args, str(PI), "4"])
    assert measured.returncode == 0, measured.stderr
    assert measured.stdout.strip() == launched
