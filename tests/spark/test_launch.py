"""The launcher's building blocks, without starting Spark."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE
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
from trustedml.spark import _submit, spark_home


@pytest.fixture
def cfg(session_keys: KeyDirectory) -> SecureSparkConfig:
    return SecureSparkConfig.from_key_directory(session_keys, Secret(PASSPHRASE))


def test_spark_home_is_the_pyspark_distribution() -> None:
    home = spark_home()
    assert (home / "bin" / "spark-submit").is_file()
    assert (home / "jars").is_dir()


def test_child_environment_scrubs_redirections(cfg: SecureSparkConfig) -> None:
    base = {
        "PATH": "/usr/bin",
        "PYSPARK_SUBMIT_ARGS": "--master yarn pyspark-shell",
        "SPARK_CONF_DIR": "/etc/evil",
        "_SPARK_AUTH_SECRET": "inherited",
        "HOME": "/root",
    }
    env = _submit.child_environment(cfg, base)
    assert "PYSPARK_SUBMIT_ARGS" not in env
    assert "SPARK_CONF_DIR" not in env
    assert "_SPARK_AUTH_SECRET" not in env  # local mode: Spark makes its own
    assert env["HOME"] == "/root"
    assert env["SPARK_HOME"] == str(spark_home())
    assert env["PATH"].startswith(str(Path(cfg.python).parent))
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"


def test_conf_dir_is_private_and_secret_free(
    cfg: SecureSparkConfig, session_keys: KeyDirectory
) -> None:
    opened = session_keys.unseal(Secret(PASSPHRASE))
    with _submit.conf_dir(cfg) as confs:
        assert stat.S_IMODE(confs.stat().st_mode) == 0o700
        files = sorted(p.name for p in confs.iterdir())
        assert files == ["log4j2.properties", "spark.properties"]
        for p in confs.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
            blob = p.read_bytes()
            for name in opened:
                assert opened[name].reveal() not in blob
        props = (confs / "spark.properties").read_text()
        assert "spark.network.crypto.cipher=AES/GCM/NoPadding" in props
        assert "rootLogger.level = warn" in (confs / "log4j2.properties").read_text()
    assert not confs.exists()


def test_submit_argv_uses_properties_file(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    argv = _submit.submit_argv(app, ["--x", "1"], tmp_path / "p", [tmp_path / "a.py"])
    assert argv[0].endswith("bin/spark-submit")
    assert argv[1:3] == ["--properties-file", str(tmp_path / "p")]
    assert argv[3:5] == ["--py-files", str(tmp_path / "a.py")]
    assert argv[-3:] == [str(app), "--x", "1"]


def test_missing_app_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.py: expected an existing file"):
        submit(tmp_path / "nope.py", settings=PlainSparkConfig())


def test_run_needs_a_command() -> None:
    with pytest.raises(ConfigError, match="expected a command after --"):
        run([], settings=PlainSparkConfig())


def test_missing_java_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LaunchError, match="Java not found"):
        _submit._check_java({"PATH": "/nonexistent"})


def test_native_run_exit_code_and_environment(tmp_path: Path, cfg: SecureSparkConfig) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "import os, sys\n"
        "print(os.environ['SPARK_LOCAL_IP'], os.environ['PYSPARK_SUBMIT_ARGS'].split()[0])\n"
        "sys.exit(5)\n"
    )
    out = tmp_path / "out"
    with out.open("w") as fh:
        code = run(["python", str(script)], settings=cfg, stdout=fh)
    assert code == 5
    assert out.read_text() == "127.0.0.1 --properties-file\n"
