"""`trustedml submit/run/example/measure`: refused --conf, --broker without a TEE, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import APPS, EXAMPLES, cli_env, run_cli, write_passphrase_file
from tests.tee.conftest import run_measure
from trustedml import KeyDirectory

PI = EXAMPLES / "pi.py"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104  what an attacker would set; refused here

# The weakenings of the review, and one key of every refused category.
WEAKENING = [
    ("spark.ssl.ui.enabled=false", "TLS/UI"),
    ("spark.ui.enabled=true", "managed by the secure configuration"),
    (f"spark.driver.bindAddress={ALL_INTERFACES}", "managed by the secure configuration"),
    (f"spark.driver.host={ALL_INTERFACES}", "managed by the secure configuration"),
    ("spark.pyspark.python=/usr/bin/python3", "managed by the secure configuration"),
    ("spark.pyspark.driver.python=/usr/bin/python3", "managed by the secure configuration"),
    ("spark.executorEnv.LD_PRELOAD=/tmp/evil.so", "interpreter/environment injection"),
    ("spark.ssl.protocol=TLSv1", "managed by the secure configuration"),
    ("spark.authenticate=false", "managed by the secure configuration"),
    ("spark.authenticate.enableSaslFallback=true", "authentication"),
    ("spark.network.crypto.cipher=AES/CTR/NoPadding", "managed by the secure configuration"),
    ("spark.io.encryption.keygen.algorithm=DES", "crypto"),
    (f"spark.blockManager.bindAddress={ALL_INTERFACES}", "network bind/host"),
    ("spark.driver.port=7078", "network bind/host"),
    ("spark.executor.extraJavaOptions=-Djavax.net.debug=all", "JVM options"),
    ("spark.driver.extraClassPath=/tmp/evil.jar", "JVM options"),
    ("spark.jars=/tmp/evil.jar", "code loading"),
    ("spark.redaction.regex=nothing", "managed by the secure configuration"),
    ("spark.eventLog.enabled=true", "logs/redaction"),
    ("spark.python.unix.domain.socket.enabled=false", "managed by the secure configuration"),
    ("spark.master.rest.enabled=true", "managed by the secure configuration"),
    ("spark.kubernetes.namespace=default", "cluster manager"),
    ("spark.hadoop.fs.defaultFS=hdfs://evil:8020", "Hadoop/Parquet"),
    ("spark.some.future.setting=1", "unknown key"),
]


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(("conf", "said"), WEAKENING, ids=[c for c, _ in WEAKENING])
def test_submit_refuses_weakening_conf_before_anything_starts(
    session_keys: KeyDirectory, session_passphrase_file: Path, conf: str, said: str
) -> None:
    key = conf.partition("=")[0]
    result = run_cli(
        ["submit", "--keys", str(session_keys.path), "--passphrase-file",
         str(session_passphrase_file), "--conf", conf, str(APPS / "exit_code.py"), "0"],
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert f"--conf {key}:" in line
    assert said in line


def test_refusal_needs_no_passphrase_and_comes_first(tmp_path: Path) -> None:
    # No key directory, no passphrase: the --conf refusal is the first thing said.
    result = run_cli(["submit", "--conf", "spark.ssl.ui.enabled=false", str(PI)], timeout=60)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "spark.ssl.ui.enabled: refused (TLS/UI)" in line
    assert "--insecure for a plain development job" in line


def test_run_and_example_refuse_too(session_keys: KeyDirectory, tmp_path: Path) -> None:
    run = run_cli(["run", "--conf", "spark.executorEnv.X=1", "--", "python", str(PI)], timeout=60)
    assert run.returncode == 2
    assert "spark.executorEnv.X: refused (interpreter/environment injection)" in run.stderr
    example = run_cli(["example", "--conf", "spark.eventLog.enabled=true", "lenet"], timeout=60)
    assert example.returncode == 2
    assert "spark.eventLog.enabled: refused (logs/redaction)" in example.stderr


def test_gramine_never_gets_the_ui_back(tmp_path: Path) -> None:
    result = run_cli(
        ["submit", "--tee", "gramine", "--dry-run", "--manifest-dir", str(tmp_path),
         "--conf", "spark.ui.enabled=true", "--allow-insecure-conf", "spark.ui.enabled",
         str(PI)],
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "spark.ui.enabled: managed by the secure configuration" in result.stderr
    assert "--no-ui" in result.stderr


def test_insecure_keeps_its_meaning_and_refuses_allow_insecure_conf() -> None:
    measured = run_measure(["--insecure", "--conf", "spark.eventLog.enabled=false", str(PI)])
    assert measured.returncode == 0, measured.stderr
    both = run_cli(
        ["submit", "--insecure", "--conf", "spark.eventLog.enabled=false",
         "--allow-insecure-conf", "spark.eventLog.enabled", str(PI)],
        timeout=60,
    )  # fmt: skip
    assert both.returncode == 2
    assert "--allow-insecure-conf is for secure jobs" in both.stderr


@pytest.mark.parametrize("tee", [None, "none"])
@pytest.mark.parametrize("command", ["submit", "run", "example"])
def test_broker_needs_a_tee(
    session_keys: KeyDirectory,
    session_passphrase_file: Path,
    command: str,
    tee: str | None,
) -> None:
    target = {"submit": [str(PI)], "run": ["--", "python", str(PI)], "example": ["lenet"]}
    args = [command, "--keys", str(session_keys.path),
            "--passphrase-file", str(session_passphrase_file),
            "--broker", "https://127.0.0.1:8443"]  # fmt: skip
    if tee is not None:
        args += ["--tee", tee]
    result = run_cli([*args, *target[command]], timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        "error: --broker needs attestation evidence: choose --tee sim for development, "
        "or gramine/cvm" in result.stderr
    )


def _actual_digest(stderr: str) -> str:
    found = re.search(r"job measurement is ([0-9a-f]{96}), expected", stderr)
    assert found, stderr
    return found.group(1)


def test_allow_insecure_conf_changes_the_measurement_and_measure_predicts_it(
    session_keys: KeyDirectory, session_passphrase_file: Path
) -> None:
    conf = ["--conf", "spark.sql.shuffle.partitions=4", "--conf", "spark.eventLog.compress=false"]
    allow = ["--allow-insecure-conf", "spark.eventLog.compress"]
    refused = run_measure([*conf, str(PI), "10"])
    assert refused.returncode == 2
    assert "spark.eventLog.compress: refused (logs/redaction)" in refused.stderr

    plain = run_measure(["--json", "--conf", "spark.sql.shuffle.partitions=4", str(PI), "10"])
    allowed = run_measure(["--json", *conf, *allow, str(PI), "10"])
    assert plain.returncode == allowed.returncode == 0, plain.stderr + allowed.stderr
    plain_doc, allowed_doc = json.loads(plain.stdout), json.loads(allowed.stdout)
    assert "insecure_conf" not in plain_doc["parts"]
    assert allowed_doc["parts"]["insecure_conf"] == {"spark.eventLog.compress": "false"}
    assert allowed_doc["digest"] != plain_doc["digest"]
    assert "warning: --allow-insecure-conf: spark.eventLog.compress=false" in allowed.stderr

    # submit measures the same job to the same digest (a wrong pin makes it say so
    # and stop before Spark starts).
    submitted = run_cli(
        ["submit", "--keys", str(session_keys.path), "--passphrase-file",
         str(session_passphrase_file), *conf, *allow, "--expect-measurement", "00" * 48,
         str(PI), "10"],
        timeout=120,
    )  # fmt: skip
    assert submitted.returncode == 1, submitted.stderr
    assert _actual_digest(submitted.stderr) == allowed_doc["digest"]
    assert "warning: --allow-insecure-conf: spark.eventLog.compress=false" in submitted.stderr


def test_key_directory_arguments_are_usage_errors(
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path
) -> None:
    not_keys = run_cli(
        ["submit", "--keys", str(tmp_path), "--passphrase-file", str(session_passphrase_file),
         str(PI)],
        timeout=60,
    )  # fmt: skip
    assert not_keys.returncode == 2
    assert "is not a key directory" in _one_error_line(not_keys.stderr)
    unknown_kek = run_cli(
        ["submit", "--keys", str(session_keys.path), "--passphrase-file",
         str(session_passphrase_file), "--kek", "no-such-kek", str(PI)],
        timeout=60,
    )  # fmt: skip
    assert unknown_kek.returncode == 2, unknown_kek.stderr
    assert "--kek" in unknown_kek.stderr
    assert "no-such-kek" in unknown_kek.stderr
    # A wrong passphrase is not a usage error: the directory is right, the secret is not.
    wrong = write_passphrase_file(tmp_path / "wrong", "not the passphrase")
    unsealed = run_cli(
        ["submit", "--keys", str(session_keys.path), "--passphrase-file", str(wrong), str(PI)],
        timeout=60,
        env=cli_env(),
    )
    assert unsealed.returncode == 1
    assert "wrong passphrase" in unsealed.stderr
