from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.conftest import EXAMPLES
from tests.tee.conftest import run_measure
from trustedml.spark import measurement_settings
from trustedml.tee import measure_job

PI = EXAMPLES / "pi.py"


def _digest(*args: str) -> str:
    result = run_measure(list(args))
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert re.fullmatch("[0-9a-f]{96}", digest), result.stdout
    return digest


def test_measure_is_stable_across_runs_and_checkouts(tmp_path: Path) -> None:
    copies = []
    for checkout in ("one", "two/deeper"):
        app = tmp_path / checkout / "examples" / "pi.py"
        app.parent.mkdir(parents=True)
        shutil.copy(PI, app)
        copies.append(app)
    first = _digest(str(copies[0]), "10")
    assert _digest(str(copies[0]), "10") == first
    assert _digest(str(copies[1]), "10") == first
    assert measure_job(PI, ["10"], (), measurement_settings()).hex == first


def test_measure_json_and_what_changes_the_digest(tmp_path: Path) -> None:
    result = run_measure(["--json", "--conf", "spark.sql.shuffle.partitions=4", str(PI), "10"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["algorithm"] == "sha384"
    assert doc["parts"]["app"]["name"] == "pi.py"
    assert doc["parts"]["args"] == ["10"]
    assert doc["parts"]["spark_conf"]["spark.sql.shuffle.partitions"] == "4"
    base = doc["digest"]
    # submit's options are accepted (a submit command line measures as is), and the
    # ones that do not enter the measurement need no passphrase and change nothing.
    same = _digest(
        "--keys", str(tmp_path / "no-such-keys"), "--passphrase-file", str(tmp_path / "none"),
        "--tee", "sim", "--local-dir", str(tmp_path), "--conf", "spark.sql.shuffle.partitions=4",
        str(PI), "10",
    )  # fmt: skip
    assert same == base
    changed = {
        _digest("--conf", "spark.sql.shuffle.partitions=8", str(PI), "10"),
        _digest("--insecure", "--conf", "spark.sql.shuffle.partitions=4", str(PI), "10"),
        _digest("--conf", "spark.sql.shuffle.partitions=4", str(PI), "11"),
        _digest("--kek", "k", "--conf", "spark.sql.shuffle.partitions=4", str(PI), "10"),
        _digest("--launcher", "run", "--conf", "spark.sql.shuffle.partitions=4", str(PI), "10"),
    }
    assert len(changed) == 5
    assert base not in changed


def test_measure_refusals() -> None:
    secret = run_measure(["--conf", "spark.my.password=x", str(PI)])
    assert secret.returncode == 2
    assert "secrets may not be passed as Spark properties" in secret.stderr
    missing = run_measure(["no-such-app.py"])
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
