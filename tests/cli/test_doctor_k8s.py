"""`trustedml doctor --k8s DIR`: exit codes, the printed findings and --json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.k8s.conftest import APP_TEXT, options_for
from trustedml import KeyDirectory
from trustedml.cli import cli  # noqa: TID251  (a test of the CLI itself)
from trustedml.k8s import render

VALUE = "cli-secret-never-printed-7d2a"


@pytest.fixture(scope="module")
def renders(
    session_keys: KeyDirectory, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    app = tmp_path_factory.mktemp("app") / "count_app.py"
    app.write_text(APP_TEXT)
    out = {}
    for tee in ("gramine", "sim"):
        folder = tmp_path_factory.mktemp(f"doctor-{tee}")
        render(options_for(app, tee), session_keys, folder).write()
        out[tee] = folder
    return out


@pytest.fixture
def weak(renders: dict[str, Path], tmp_path: Path) -> Path:
    """The gramine render with a privileged executor and a Secret holding its data."""
    folder = tmp_path / "weak"
    shutil.copytree(renders["gramine"], folder)
    pod = yaml.safe_load((folder / "executor-pod.yaml").read_text())
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    (folder / "executor-pod.yaml").write_text(yaml.safe_dump(pod))
    secrets = list(yaml.safe_load_all((folder / "secrets.yaml").read_text()))
    secrets[0]["stringData"] = {"spark-auth-secret": VALUE}
    (folder / "secrets.yaml").write_text(yaml.safe_dump_all(secrets))
    return folder


def _doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["doctor", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_own_render_passes(renders: dict[str, Path]) -> None:
    code, output = _doctor("--k8s", str(renders["gramine"]))
    assert code == 0, output
    assert output.strip() == "no findings"


def test_sim_render_passes_with_its_notice(renders: dict[str, Path]) -> None:
    code, output = _doctor("--k8s", str(renders["sim"]))
    assert code == 0, output
    assert output.count("TML-K014 low") == 2
    assert "2 finding(s): 0 high, 0 medium, 2 low" in output


def test_weak_render_fails(weak: Path) -> None:
    code, output = _doctor("--k8s", str(weak))
    assert code == 1, output
    assert "TML-K008 high   privileged container: privileged: true" in output
    assert "  at executor-pod.yaml:" in output
    assert "TML-K017 medium" in output
    assert VALUE not in output


def test_json_shape(renders: dict[str, Path], weak: Path) -> None:
    code, output = _doctor("--k8s", str(weak), "--json")
    assert code == 1
    doc = json.loads(output)
    assert doc["ok"] is False
    assert {tuple(sorted(f)) for f in doc["findings"]} == {
        ("fix", "id", "severity", "title", "where")
    }
    assert {"TML-K008", "TML-K017"} <= {f["id"] for f in doc["findings"]}
    assert VALUE not in output
    code, output = _doctor("--k8s", str(renders["sim"]), "--json")
    assert code == 0
    doc = json.loads(output)
    assert doc["ok"] is True
    assert [f["severity"] for f in doc["findings"]] == ["low", "low"]


def test_several_folders_name_theirs(renders: dict[str, Path], weak: Path) -> None:
    code, output = _doctor("--k8s", str(renders["sim"]), "--k8s", str(weak), "--json")
    assert code == 1
    wheres = [f["where"] for f in json.loads(output)["findings"]]
    assert any(w.startswith(f"{weak}: executor-pod.yaml:") for w in wheres), wheres
    assert any(w.startswith(f"{renders['sim']}: driver-pod.yaml:") for w in wheres), wheres


def test_with_conf_files(renders: dict[str, Path], tmp_path: Path) -> None:
    conf = tmp_path / "spark-defaults.conf"
    conf.write_text("spark.authenticate=false\n")
    code, output = _doctor("--k8s", str(renders["gramine"]), "--conf", str(conf))
    assert code == 1
    assert "TML-C003 high" in output
    assert "TML-K" not in output


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("bad.yaml", b"kind: Pod\nspec: [\n", "error: bad.yaml:"),
        ("doc.yaml", b"- just\n- a list\n", "error: doc.yaml:1: expected a Kubernetes object"),
        ("bad.json", b"{", "error: bad.json:1: expected JSON"),
    ],
)
def test_unreadable_folder_is_exit_2(
    renders: dict[str, Path], tmp_path: Path, name: str, data: bytes, expected: str
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(renders["gramine"], folder)
    (folder / name).write_bytes(data)
    code, output = _doctor("--k8s", str(folder))
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(expected), lines


def test_not_a_folder_is_exit_2(tmp_path: Path) -> None:
    code, output = _doctor("--k8s", str(tmp_path / "missing"))
    assert code == 2
    assert "expected a folder of manifests" in output
