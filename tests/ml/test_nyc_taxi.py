"""The pandas-on-Spark NYC taxi prep workload, end to end through the real CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DATASETS
from tests.ml.conftest import MLKeys, launch
from trustedml import KeyRing, decrypt_path, encrypt_file
from trustedml.ml.workloads import nyc_taxi_prep
from trustedml.runtime import ENV_KEYRING

NYC_TAXI = DATASETS / "nyc_taxi.csv"


@pytest.mark.spark
@pytest.mark.slow
def test_prep_of_an_encrypted_copy_writes_the_busy_half_encrypted(
    ml_keys: MLKeys, tmp_path: Path
) -> None:
    plain = pd.read_csv(NYC_TAXI)
    busy = plain[plain["value"] > plain["value"].median()]
    encrypted = tmp_path / "nyc_taxi.csv.tml"
    encrypt_file(NYC_TAXI, encrypted, key_id="data", keystore=ml_keys.store)
    output = tmp_path / "busy"

    result = launch([
        "example", *ml_keys.submit_args(), "nyc-taxi-prep",
        "--file-path", str(encrypted), "--output", str(output),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert len(plain) == 10_320
    assert "data collected: 10320 rows" in out
    match = re.search(r"^data2 collected \(value > median [\d.]+\): (\d+) rows$", out, re.M)
    assert match, out
    assert int(match.group(1)) == len(busy)
    # head() and tail() of the input, then of the prepared rows (re-indexed from 0).
    assert re.search(r"^0\s+2014-07-01 00:00:00\s+10844$", out, re.M), out
    assert re.search(r"^10319\s+2015-01-31 23:30:00\s+26288$", out, re.M), out
    first = busy.iloc[0]
    assert re.search(rf"^0\s+{first['timestamp']}\s+{first['value']}\s+{first['timestamp']}", out,
                     re.M), out  # fmt: skip
    assert re.search(rf"^{len(busy) - 1}\s+{busy.iloc[-1]['timestamp']}\s", out, re.M), out

    parts = sorted(output.glob("part-*.csv.tml"))
    assert parts
    for part in parts:
        assert b"2014-07-01" not in part.read_bytes()
    decrypted = tmp_path / "decrypted"
    decrypt_path(output, decrypted, keystore=ml_keys.store)
    frame = pd.concat(
        [pd.read_csv(p) for p in sorted(decrypted.glob("part-*.csv"))], ignore_index=True
    )
    assert list(frame.columns) == ["timestamp", "value", "datetime", "hours", "awake"]
    assert frame["timestamp"].tolist() == busy["timestamp"].tolist()
    assert frame["value"].tolist() == busy["value"].tolist()
    assert frame["datetime"].tolist() == frame["timestamp"].tolist()
    hours = pd.to_datetime(frame["timestamp"]).dt.hour
    assert frame["hours"].tolist() == hours.tolist()
    asleep = hours.between(1, 5)
    assert frame["awake"].tolist() == (~asleep).astype(int).tolist()
    # Busy weekend nights keep rows on both sides of the rule.
    assert set(frame["awake"]) == {0, 1}


def test_missing_input_is_a_usage_error_before_spark_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        nyc_taxi_prep.main(["--file-path", str(tmp_path / "absent.csv")])
    assert exc.value.code == 2
    assert "absent.csv: no such file or directory" in capsys.readouterr().err


def test_existing_output_is_a_usage_error_before_spark_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_KEYRING, KeyRing({"data": b"\x01" * 32}).export().reveal_text())
    data = tmp_path / "in.csv"
    data.write_text("timestamp,value\n")
    output = tmp_path / "out"
    output.mkdir()
    (output / "part-00000.csv.tml").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        nyc_taxi_prep.main(["--file-path", str(data), "--output", str(output)])
    assert exc.value.code == 2
    assert "exists and is not empty (add --overwrite)" in capsys.readouterr().err
