"""The XGBoost workloads, end to end through the real CLI in secure mode (launched once
each, side by side, for the tests that check them), and their checks before Spark starts."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import DATASETS
from tests.ml.conftest import MLKeys, launch, side_by_side
from trustedml import KeyRing, encrypt_file, read_encrypted_bytes
from trustedml.attestation import SimKey
from trustedml.ml.workloads import xgboost_classifier, xgboost_regressor
from trustedml.runtime import ENV_BROKER_URL, ENV_KEYRING
from trustedml.tee import ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TEE

xgb = pytest.importorskip("xgboost")  # the `ml` extra

BOSTON = DATASETS / "boston_housing.csv"
PIMA = DATASETS / "pima-indians-diabetes.data.csv"


def _metric(name: str, stdout: str) -> float:
    match = re.search(rf"^{name}: (\d+\.\d{{4}})$", stdout, re.MULTILINE)
    assert match, stdout
    return float(match.group(1))


def _header(columns: list[str], stdout: str) -> bool:
    cells = r"\|".join(rf"\s*{re.escape(c)}" for c in columns)
    return re.search(rf"^\|{cells}\|$", stdout, re.MULTILINE) is not None


def _load_encrypted_booster(path: Path, keys: MLKeys) -> Any:
    blob = path.read_bytes()
    # XGBoost JSON starts with {"learner": ...; none of it may show through.
    assert b"learner" not in blob
    assert b"tree_param" not in blob
    booster = xgb.Booster()
    booster.load_model(bytearray(read_encrypted_bytes(path, keystore=keys.store)))
    return booster


@dataclass(frozen=True)
class Runs:
    """Both workloads run once, side by side, for the tests below."""

    directory: Path
    regressor: subprocess.CompletedProcess[str]
    classifier: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def runs(ml_keys: MLKeys, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    directory = tmp_path_factory.mktemp("xgboost")
    encrypted = directory / "pima.csv.tml"
    encrypt_file(PIMA, encrypted, key_id="data", keystore=ml_keys.store)
    regressor, classifier = side_by_side(
        partial(launch, [
            "example", *ml_keys.submit_args(), "xgboost-regressor", "--file-path", str(BOSTON),
            "--model-out", str(directory / "boston.json"), "--show", "5",
        ]),
        partial(launch, [
            "example", *ml_keys.submit_args(), "xgboost-classifier", "--file-path", str(encrypted),
            "--model-out", str(directory / "pima.json"), "--show", "5",
        ]),
    )  # fmt: skip
    return Runs(directory, regressor, classifier)


@pytest.mark.spark
@pytest.mark.slow
def test_regressor_trains_reports_rmse_and_saves_an_encrypted_booster(
    runs: Runs, ml_keys: MLKeys
) -> None:
    result = runs.regressor
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert _header(["features", "label", "prediction"], out), out
    assert _metric("RMSE", out) <= 5.0

    saved = runs.directory / "boston.json.tml"
    assert saved.is_file()
    assert not (runs.directory / "boston.json").exists()
    booster = _load_encrypted_booster(saved, ml_keys)
    frame = pd.read_csv(BOSTON)
    features, target = frame.iloc[:, :-1].to_numpy(), frame.iloc[:, -1].to_numpy()
    predicted = booster.predict(xgb.DMatrix(features))
    assert predicted.shape == (506,)
    # Mostly rows it trained on, so well under the held-out floor.
    assert float(np.sqrt(np.mean((predicted - target) ** 2))) <= 5.0


@pytest.mark.spark
@pytest.mark.slow
def test_classifier_on_an_encrypted_copy_reports_accuracy_and_auc(
    runs: Runs, ml_keys: MLKeys
) -> None:
    result = runs.classifier
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    shown = [*xgboost_classifier.FEATURES, "label", "rawPrediction", "probability", "prediction"]
    assert _header(shown, out), out
    assert _metric("accuracy", out) >= 0.70
    assert _metric("AUC", out) >= 0.75

    booster = _load_encrypted_booster(runs.directory / "pima.json.tml", ml_keys)
    frame = pd.read_csv(PIMA, header=None)
    features, outcome = frame.iloc[:, :8].to_numpy(), frame.iloc[:, 8].to_numpy()
    probability = booster.predict(xgb.DMatrix(features))
    assert ((probability >= 0) & (probability <= 1)).all()
    assert float(np.mean((probability > 0.5) == outcome)) >= 0.70


@pytest.mark.parametrize("main", [xgboost_regressor.main, xgboost_classifier.main])
def test_missing_input_is_a_usage_error_before_spark_starts(
    main: Callable[[list[str]], int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--file-path", str(tmp_path / "absent.csv")])
    assert exc.value.code == 2
    assert "absent.csv: no such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("keks", "message"),
    [
        (None, "--model-key-id: this job has no keys"),
        ({"data": b"\x01" * 32}, "--model-key-id 'models': this job has no such key (it has data;"),
    ],
)
def test_model_out_without_its_key_is_a_usage_error_before_spark_starts(
    keks: dict[str, bytes] | None,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if keks is None:
        monkeypatch.delenv(ENV_KEYRING, raising=False)
    else:
        monkeypatch.setenv(ENV_KEYRING, KeyRing(keks).export().reveal_text())
    data = tmp_path / "in.csv"
    data.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit) as exc:
        xgboost_regressor.main(["--file-path", str(data), "--model-out", str(tmp_path / "m")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_model_out_under_a_broker_attests_before_spark_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on port 9: the broker is asked (attestation for the model key) in
    # argument checking, so the job stops with one runtime-error line before any training.
    sim_key = tmp_path / "sim-key.pem"
    SimKey.generate().save(sim_key)
    os.chmod(sim_key, 0o600)
    monkeypatch.setenv(ENV_BROKER_URL, "https://127.0.0.1:9")
    monkeypatch.setenv(ENV_TEE, "sim")
    monkeypatch.setenv(ENV_SIM_KEY, str(sim_key))
    monkeypatch.setenv(ENV_JOB_MEASUREMENT, "ab" * 48)
    data = tmp_path / "in.csv"
    data.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit) as exc:
        xgboost_regressor.main(["--file-path", str(data), "--model-out", str(tmp_path / "m")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "error: --model-key-id 'models': " in err
    assert "Traceback" not in err
