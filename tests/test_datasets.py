"""The repository carries its own data: datasets/ matches its README's sha256 list, the
demo's and workloads' defaults resolve inside the checkout, and nothing points beside it."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ATTESTATION_VECTORS, DATASETS, ROOT, cli_env
from trustedml.ml import _datasets
from trustedml.ml._tabular import check_input, xgboost_parser
from trustedml.ml.workloads import lenet, nyc_taxi_prep, text_classification

SHA_LINE = re.compile(r"^ {4}([0-9a-f]{64})  (\S+)$", re.MULTILINE)


def _listed() -> dict[str, str]:
    return {name: digest for digest, name in SHA_LINE.findall((DATASETS / "README.md").read_text())}


def test_every_listed_dataset_is_there_with_its_sha256() -> None:
    listed = _listed()
    assert len(listed) >= 8  # mnist x4, boston, pima, nyc taxi, rotten tomatoes
    for name, digest in sorted(listed.items()):
        path = DATASETS / name
        assert path.is_file(), f"datasets/README.md lists {name}, absent from {DATASETS}"
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        assert got == digest, f"{name}: sha256 expected {digest}, got {got}"


def test_every_dataset_file_is_listed() -> None:
    present = {
        p.relative_to(DATASETS).as_posix()
        for p in DATASETS.rglob("*")
        if p.is_file() and p.name != "README.md"
    }
    assert present == set(_listed())


def test_vector_manifests_name_a_licence() -> None:
    for origin, licence in (("dcap-qvl", "MIT"), ("go-sev-guest", "Apache-2.0")):
        manifest = (ATTESTATION_VECTORS / origin / "MANIFEST.md").read_text()
        assert f"Licence: {licence}" in manifest


# -- the defaults resolve inside the checkout -------------------------------------------


def _workload_defaults() -> dict[str, Path]:
    return {
        "xgboost-regressor": xgboost_parser(
            "r", "", "boston_housing.csv", max_depth=1, n_estimators=1, learning_rate=0.1
        ).get_default("file_path"),
        "xgboost-classifier": xgboost_parser(
            "c", "", "pima-indians-diabetes.data.csv", max_depth=1, n_estimators=1,
            learning_rate=0.1,
        ).get_default("file_path"),
        "nyc-taxi-prep": nyc_taxi_prep.parse_args([]).file_path,
        "lenet": lenet._parser().get_default("data_path"),
        "text-classification": text_classification._parser().get_default("file_path"),
    }  # fmt: skip


def _pipeline_default() -> Path:
    script = (ROOT / "scripts" / "pipeline.sh").read_text()
    match = re.search(r"^data=\$\{TRUSTEDML_DEMO_DATA:-([^}]+)\}$", script, re.MULTILINE)
    assert match, "scripts/pipeline.sh: no data=${TRUSTEDML_DEMO_DATA:-...} line"
    return ROOT / match.group(1)  # the script runs from the repository root


def test_defaults_are_in_the_repository_and_exist() -> None:
    defaults = {**_workload_defaults(), "scripts/pipeline.sh": _pipeline_default()}
    for who, path in defaults.items():
        resolved = path.resolve()
        assert resolved.is_relative_to(DATASETS.resolve()), f"{who}: default {path}"
        assert resolved.exists(), f"{who}: default {path} is missing"


def test_lookup_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    code = "from trustedml.ml._datasets import default_dataset as d; print(d('nyc_taxi.csv'))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == DATASETS / "nyc_taxi.csv"


def test_an_absent_default_names_its_path_and_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "nyc_taxi.csv"
    parser = argparse.ArgumentParser(prog="nyc-taxi-prep")
    parser.add_argument("--file-path", type=Path, default=absent)
    with pytest.raises(SystemExit) as exit_info:
        check_input(parser, parser.parse_args([]).file_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--file-path: the default {absent} does not exist" in err
    assert "pass --file-path with your own copy" in err
    # A path the user gave is reported as such, not as a missing default.
    mine = tmp_path / "mine.csv"
    with pytest.raises(SystemExit):
        check_input(parser, mine)
    assert f"--file-path {mine}: no such file or directory" in capsys.readouterr().err
    message = _datasets.missing_default("--data-path", absent, absent)
    assert message == (
        f"--data-path: the default {absent} does not exist (it is in the datasets/ folder of"
        " a trusted-ml checkout); pass --data-path with your own copy"
    )
    assert _datasets.missing_default("--data-path", DATASETS, DATASETS) is None


def test_pipeline_names_a_missing_data_file(tmp_path: Path) -> None:
    absent = tmp_path / "absent.csv"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "pipeline.sh")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**cli_env(), "TRUSTEDML_DEMO_DATA": str(absent), "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert f"pipeline: NYC taxi dataset not found at {absent}" in result.stderr


# -- nothing points beside the checkout -------------------------------------------------

# Spelled in pieces so that this file does not match itself.
FORBIDDEN = ("../" + "shared", "shared/" + "datasets", "shared/" + "attestation-vectors")
SCANNED = ("src", "tests", "scripts", "examples", "bench", "docs", ".ci", "Makefile")
SKIPPED_DIRS = {"__pycache__", "results", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def _files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        top = ROOT / name
        if top.is_file():
            files.append(top)
            continue
        for folder, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
            files += [Path(folder) / n for n in names]
    return files


def test_nothing_refers_to_a_folder_beside_the_repository() -> None:
    files = _files()
    assert len(files) > 100
    found = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary evidence and datasets
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if any(word in line for word in FORBIDDEN):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
