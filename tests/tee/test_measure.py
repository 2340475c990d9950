from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, PASSPHRASE
from trustedml import ConfigError, KeyDirectory, LaunchError, PlainSparkConfig, Secret
from trustedml import SecureSparkConfig as Secure
from trustedml.spark import MACHINE_LOCAL_KEYS, measured_conf, measurement_settings
from trustedml.tee import JobMeasurement, measure_job
from trustedml.tee._measure import DOMAIN, canonical_json

PI = EXAMPLES / "pi.py"
HELPER = "def double(x):\n    return 2 * x\n"


def _tree(root: Path) -> tuple[Path, Path]:
    """A copy of examples/pi.py and a py-file, as one checkout would have them."""
    root.mkdir(parents=True)
    app = root / "jobs" / "pi.py"
    app.parent.mkdir()
    shutil.copy(PI, app)
    helper = root / "lib" / "helper.py"
    helper.parent.mkdir()
    helper.write_text(HELPER)
    return app, helper


def test_digest_is_sha384_over_the_domain_and_canonical_parts() -> None:
    m = measure_job(PI, ["4"], (), measurement_settings())
    assert len(m.digest) == 48
    assert m.hex == m.digest.hex()
    # Recomputed the way docs/measurement.md says, from the printed parts alone.
    parts = m.to_dict()["parts"]
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha384(DOMAIN + canonical.encode("utf-8")).hexdigest() == m.hex
    assert DOMAIN == b"trustedml/job-measurement/v1\n"
    assert m.to_dict()["algorithm"] == "sha384"
    assert repr(m) == f"JobMeasurement(digest={m.hex})"


def test_parts_of_pi() -> None:
    m = measure_job(PI, ["4"], (), measurement_settings())
    parts = m.parts
    assert parts["version"] == 1
    assert parts["launcher"] == "submit"
    assert parts["app"] == {"name": "pi.py", "sha256": hashlib.sha256(PI.read_bytes()).hexdigest()}
    assert parts["args"] == ["4"]
    assert parts["py_files"] == []
    assert parts["python"]["implementation"] == "cpython"
    assert parts["java"]["runtime_version"].startswith("17")
    names = {p["name"] for p in parts["packages"]}
    assert {"pyspark", "py4j", "trusted-ml", "cryptography"} <= names
    assert parts["unresolved_imports"] == []
    conf = parts["spark_conf"]
    assert conf["spark.network.crypto.cipher"] == "AES/GCM/NoPadding"
    assert conf["spark.master"] == "local[2]"
    assert not MACHINE_LOCAL_KEYS & conf.keys()
    assert not any("assword" in k or "secret" in k for k in conf)


def test_stable_across_runs_and_checkouts(tmp_path: Path) -> None:
    settings = measurement_settings()
    a_app, a_helper = _tree(tmp_path / "checkout-a")
    b_app, b_helper = _tree(tmp_path / "elsewhere" / "checkout-b")
    first = measure_job(a_app, ["7"], [a_helper], settings)
    again = measure_job(a_app, ["7"], [a_helper], measurement_settings())
    other = measure_job(b_app, ["7"], [b_helper], settings)
    assert first.digest == again.digest == other.digest
    assert str(tmp_path) not in first.canonical.decode()


@pytest.mark.parametrize(
    "change",
    ["app", "argument", "conf value", "py-file", "added py-file", "launcher", "master", "mode"],
)
def test_any_change_changes_the_digest(tmp_path: Path, change: str) -> None:
    app, helper = _tree(tmp_path / "tree")
    before = measure_job(
        app, ["7"], [helper], measurement_settings(extra={"spark.sql.shuffle.partitions": "1"})
    )
    args, files, launcher = ["7"], [helper], "submit"
    settings = measurement_settings(extra={"spark.sql.shuffle.partitions": "1"})
    if change == "app":
        app.write_bytes(app.read_bytes() + b"\n")
    elif change == "argument":
        args = ["8"]
    elif change == "conf value":
        settings = measurement_settings(extra={"spark.sql.shuffle.partitions": "2"})
    elif change == "py-file":
        helper.write_text(HELPER.replace("2 *", "3 *"))
    elif change == "added py-file":
        extra = tmp_path / "extra.py"
        extra.write_text("")
        files = [helper, extra]
    elif change == "launcher":
        launcher = "run"
    elif change == "master":
        settings = measurement_settings(
            master="local[4]", extra={"spark.sql.shuffle.partitions": "1"}
        )
    elif change == "mode":
        settings = measurement_settings(secure=False, extra={"spark.sql.shuffle.partitions": "1"})
    after = measure_job(app, args, files, settings, launcher=launcher)
    assert after.digest != before.digest


def test_machine_local_settings_do_not_change_the_digest(
    session_keys: KeyDirectory, tmp_path: Path
) -> None:
    # A real configuration from a key directory measures like the keyless one the
    # `measure` command builds, whatever the scratch directory.
    real = Secure.from_key_directory(
        session_keys, Secret(PASSPHRASE), local_dir=tmp_path / "scratch", ui=False
    )
    keyless = measurement_settings(ui=False)
    assert measured_conf(real.conf()) == measured_conf(keyless.conf())
    assert measure_job(PI, [], (), real).digest == measure_job(PI, [], (), keyless).digest
    elsewhere = PlainSparkConfig(python="/opt/other/python3")
    assert measured_conf(elsewhere.conf()) == measured_conf(PlainSparkConfig().conf())


def test_keks_turn_on_parquet_encryption_but_the_jar_path_is_not_measured() -> None:
    with_keys = measured_conf(measurement_settings(with_keys=True).conf())
    assert with_keys["spark.hadoop.parquet.encryption.kms.client.class"].endswith("KmsClient")
    assert "spark.jars" not in with_keys
    conf = {"spark.jars": "/a/trustedml-parquet-kms-0123.jar,/b/user.jar", "spark.x": "1"}
    assert measured_conf(conf) == {"spark.jars": "/b/user.jar", "spark.x": "1"}
    assert measured_conf({"spark.jars": "/cache/trustedml-parquet-kms-0123.jar"}) == {}


def test_package_lock_follows_imports(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "import os, json\nimport numpy as np\nfrom helper import double\n"
        "def f():\n    import not_a_module_anyone_has\n    from . import sibling\n"
    )
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER)
    parts = measure_job(app, [], [helper], PlainSparkConfig(), launcher="run").parts
    names = [p["name"] for p in parts["packages"]]
    assert names == sorted(names)
    assert "numpy" in names
    assert "trusted-ml" in names
    # run does not imply Spark; nothing imported it.
    assert "pyspark" not in names
    assert parts["unresolved_imports"] == ["not_a_module_anyone_has"]


def test_zip_py_files_are_scanned(tmp_path: Path) -> None:
    archive = tmp_path / "deps.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("mypkg/__init__.py", "import numpy\n")
        zf.writestr("tool.py", "import mypkg\n")
    app = tmp_path / "app.py"
    app.write_text("import mypkg, tool\n")
    parts = measure_job(app, [], [archive], PlainSparkConfig()).parts
    assert "numpy" in {p["name"] for p in parts["packages"]}
    assert parts["unresolved_imports"] == []
    assert parts["py_files"] == [
        {"name": "deps.zip", "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}
    ]


def test_package_files_digest_is_recomputable_from_record() -> None:
    dist = importlib.metadata.distribution("py4j")
    lines = []
    for entry in dist.files or ():
        parts = Path(str(entry)).parts
        if entry.hash is None or parts[0] == ".." or parts[0].endswith(".dist-info"):
            continue
        raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
        lines.append(f"{entry}\t{raw.hex()}\n")
    expected = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    parts = measure_job(PI, [], (), PlainSparkConfig()).parts
    (py4j,) = [p for p in parts["packages"] if p["name"] == "py4j"]
    assert py4j == {"name": "py4j", "version": dist.version, "files": expected}


def test_trusted_files_and_their_check(tmp_path: Path) -> None:
    app, helper = _tree(tmp_path / "tree")
    m = measure_job(app, [], [helper], PlainSparkConfig())
    by_name = {f.name: f for f in m.trusted_files}
    assert by_name["app:pi.py"].path == app.resolve()
    assert by_name["py-file:helper.py"].sha256 == hashlib.sha256(HELPER.encode()).hexdigest()
    assert any(name.startswith("pyspark:pyspark/jars/") for name in by_name)
    assert any(name.startswith("trusted-ml:trustedml/tee/") for name in by_name)
    m.verify_files()
    old = by_name["py-file:helper.py"].sha256
    helper.write_text("evil = True\n")
    new = hashlib.sha256(b"evil = True\n").hexdigest()
    with pytest.raises(LaunchError) as info:
        m.verify_files()
    assert str(info.value) == (
        f"trusted file py-file:helper.py ({helper}) changed since it was measured: "
        f"measured sha256 {old}, now {new}"
    )
    helper.unlink()
    with pytest.raises(LaunchError, match=r"helper\.py .* cannot be read since it was measured"):
        m.verify_files()


def test_java_is_the_one_spark_would_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", "/nonexistent/jdk")
    assert measure_job(PI, [], (), PlainSparkConfig()).parts["java"] is None


def test_measurement_round_trips_and_is_immutable() -> None:
    m = measure_job(PI, [], (), PlainSparkConfig())
    parts = m.parts
    parts["args"].append("changed")
    assert m.parts["args"] == []
    assert JobMeasurement.from_parts(m.parts).digest == m.digest
    assert canonical_json({"b": 1, "a": ["é"]}) == '{"a":["é"],"b":1}'.encode()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"args": ["\udcff"]}, "measurement: expected UTF-8 text"),
        ({"launcher": "cluster"}, "launcher: expected one of submit, run, got 'cluster'"),
        ({"settings": None}, "settings: expected the job's Spark configuration"),
    ],
)
def test_refusals(kwargs: dict[str, object], message: str) -> None:
    call: dict[str, object] = {"args": [], "settings": PlainSparkConfig(), **kwargs}
    with pytest.raises(ConfigError, match=message):
        measure_job(PI, **call)  # type: ignore[arg-type]


def test_app_must_be_python(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    with pytest.raises(ConfigError, match=r"bad\.py: expected Python source"):
        measure_job(bad, [], (), PlainSparkConfig())
    with pytest.raises(ConfigError, match=r"missing\.py: expected a readable file"):
        measure_job(tmp_path / "missing.py", [], (), PlainSparkConfig())


def test_the_test_vector_in_the_docs() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "measurement.md").read_text()
    (line,) = [x for x in doc.splitlines() if x.startswith('{"app":')]
    assert canonical_json(json.loads(line)) == line.encode("utf-8")
    assert len(line.encode("utf-8")) == 577
    digest = hashlib.sha384(DOMAIN + line.encode("utf-8")).hexdigest()
    assert digest == JobMeasurement.from_parts(json.loads(line)).hex
    assert f"gives `{digest}`" in doc
