"""`trustedml k8s render` and `submit --master k8s://`: files, argv, refusals, exit codes."""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.conftest import EXAMPLES, PASSPHRASE, ROOT
from tests.k8s.conftest import BROKER, MASTER
from tests.secret_scan import hits
from trustedml import KeyDirectory, Secret
from trustedml.cli import cli  # noqa: TID251  (a test of the CLI itself)
from trustedml.k8s import FILES


@pytest.fixture(autouse=True)
def _private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `submit --dry-run` keeps its render folder (the printed argv names it): in tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("k8s-cli") / "wordcount.py"
    path.write_text("print('count')\n")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _error(result: Result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("tee", ["gramine", "cvm", "sim"])
def test_render_writes_every_file_and_prints_the_folder(
    app: Path, session_keys: KeyDirectory, tmp_path: Path, tee: str
) -> None:
    out = tmp_path / "out"
    extra = ["--pccs-url", "https://198.18.0.3:8081"] if tee == "gramine" else []
    result = invoke(
        "k8s", "render", str(app), "input.txt", "--master", MASTER, "--keys",
        str(session_keys.path), "--tee", tee, "--out", str(out), "--broker", BROKER,
        "--namespace", "team-a", "--executors", "4", "--node-selector", "pool=tee", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out.resolve())
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    summary = json.loads((out / "render.json").read_text())
    assert summary["tee"] == tee
    assert summary["namespace"] == "team-a"
    argv = json.loads((out / "spark-submit.json").read_text())
    assert argv[-2:] == ["local:///opt/trustedml/app/wordcount.py", "input.txt"]
    props = (out / "spark.properties").read_text()
    assert "spark.executor.instances=4" in props
    assert ("SIMULATED TEE" in result.stderr) is (tee == "sim")


def test_submit_dry_run_prints_the_argv_with_no_secret_in_it(
    app: Path, session_keys: KeyDirectory
) -> None:
    result = invoke(
        "submit", "--master", MASTER, "--keys", str(session_keys.path), "--tee", "cvm",
        "--broker", BROKER, "--runtime-class", "kata-qemu-snp", "--dry-run", str(app), "--x",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    argv = json.loads(result.stdout)
    assert argv[1:6] == ["--master", MASTER, "--deploy-mode", "cluster", "--name"]
    assert argv[-2:] == ["local:///opt/trustedml/app/wordcount.py", "--x"]
    out = Path(argv[argv.index("--properties-file") + 1]).parent
    assert (out / "driver-pod.yaml").is_file()
    opened = session_keys.unseal(Secret(PASSPHRASE))
    secrets = {
        "Spark secret": opened.spark_auth_secret.reveal(),
        "keystore password": opened.keystore_password.reveal(),
        "truststore password": opened.truststore_password.reveal(),
    }
    blobs = {"argv": result.stdout.encode(), "stderr": result.stderr.encode()}
    blobs |= {p.name: p.read_bytes() for p in out.iterdir()}
    assert hits(blobs, secrets) == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--tee", "none"], "the driver runs in a TEE too"),
        (["--tee", "sim", "--insecure"], "--insecure (Kubernetes jobs are secure only)"),
        (["--tee", "sim", "--kek", "k1"], "--kek (give the job a broker"),
        (["--tee", "sim", "--conf", "spark.kubernetes.namespace=x"], "refused"),
        (["--tee", "sim", "--conf", "spark.authenticate.secret=x"], "secrets may not be"),
        (["--tee", "cvm", "--toleration", "tee"], "expected KEY[=VALUE]:EFFECT"),
        (["--tee", "cvm", "--node-selector", "novalue"], "expected KEY=VALUE"),
        (["--tee", "cvm", "--pccs-url", "https://p:8081"], "applies to --tee gramine"),
    ],
)
def test_submit_on_kubernetes_refuses_with_the_reason_and_exit_2(
    app: Path, session_keys: KeyDirectory, args: list[str], said: str
) -> None:
    result = invoke(
        "submit", "--master", MASTER, "--keys", str(session_keys.path), *args, "--dry-run",
        str(app),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert said in _error(result)


@pytest.mark.parametrize(
    "args",
    [
        ["--image", "x:1"],
        ["--namespace", "ns"],
        ["--executors", "3"],
        ["--toleration", "a:NoExecute"],
    ],
)
def test_kubernetes_options_are_refused_with_another_master(
    app: Path, session_keys: KeyDirectory, args: list[str]
) -> None:
    result = invoke("submit", "--keys", str(session_keys.path), *args, str(app))
    assert result.exit_code == 2, result.output
    assert f"{args[0]} applies to --master k8s://, not --master local[2]" in _error(result)


def test_render_without_keys_says_how_to_make_them(app: Path, tmp_path: Path) -> None:
    result = CliRunner(env={"TRUSTEDML_KEYS": ""}).invoke(
        cli, ["k8s", "render", str(app), "--master", MASTER, "--tee", "sim", "--out",
              str(tmp_path / "o")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "trustedml keys init" in _error(result)


def test_apply_needs_a_passphrase_and_writes_the_render_first(
    app: Path, session_keys: KeyDirectory, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    result = CliRunner(env={"TRUSTEDML_PASSPHRASE_FILE": ""}).invoke(
        cli, ["k8s", "render", str(app), "--master", MASTER, "--keys", str(session_keys.path),
              "--tee", "cvm", "--out", str(out), "--apply"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "a passphrase is needed" in result.stderr
    assert (out / "secrets.yaml").is_file()


def test_spark_check_builds_the_pods_with_sparks_own_code(
    app: Path, session_keys: KeyDirectory, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rendered = invoke(
        "k8s", "render", str(app), "--master", MASTER, "--keys", str(session_keys.path),
        "--tee", "cvm", "--out", str(out), "--name", "tml-check",
    )  # fmt: skip
    assert rendered.exit_code == 0, rendered.output
    result = invoke("k8s", "spark-check", str(out))
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert "Spark built driver pod tml-check-driver and executor pod tml-check-exec-1" in said
    assert (
        "from Secrets: TRUSTEDML_SSL_KEYSTORE_PASSWORD, TRUSTEDML_SSL_TRUSTSTORE_PASSWORD" in said
    )
    missing = invoke("k8s", "spark-check", str(tmp_path / "nothing"))
    assert missing.exit_code == 2
    assert "Traceback" not in missing.output


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running on Kubernetes", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("trustedml "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_readme_walkthrough_runs_as_written(
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path
) -> None:
    # The walkthrough's own commands, with this machine's key directory and folders; the
    # submit is a --dry-run (no cluster here) and needs no kubeconfig.
    local = {
        "~/keys": str(session_keys.path),
        "~/pp": str(session_passphrase_file),
        "out/": str(tmp_path / "out"),
        "examples/pi.py": str(EXAMPLES / "pi.py"),
    }
    commands = _readme_commands()
    assert [c[:2] for c in commands] == [
        ["k8s", "render"],
        ["doctor", "--k8s"],
        ["submit", "--master"],
    ]
    for args in commands:
        args = [local.get(arg, arg) for arg in args]
        if args[0] == "submit":
            at = args.index("--kubeconfig")
            args[at : at + 2] = ["--dry-run"]
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    assert json.loads((tmp_path / "out" / "render.json").read_text())["namespace"] == "ml-jobs"
