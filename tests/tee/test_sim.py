from __future__ import annotations

import hashlib
import json
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import APPS, EXAMPLES, run_cli
from tests.tee.conftest import PYTHON, measure_script, run_measure, write_app
from trustedml import (
    ConfigError,
    KeyDirectory,
    LaunchError,
    PlainSparkConfig,
    SparkSettings,
    run,
    submit,
)
from trustedml.attestation._sim import SimKey, SimVerifier
from trustedml.errors import EvidenceProviderError
from trustedml.spark import measurement_settings
from trustedml.tee import (
    Job,
    LaunchPlan,
    NoTee,
    SimBackend,
    job_evidence_provider,
    measure_job,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _verify(evidence: bytes, key: Path) -> tuple[bytes, bytes]:
    verifier = SimVerifier([SimKey.load(key).public_key_pem()])
    claims = verifier.verify(evidence, collateral=None, at=NOW).claims
    assert claims.simulated is True
    assert claims.measurement is not None
    return claims.measurement, claims.report_data


def test_sim_runs_the_job_with_its_measurement_and_evidence(
    tmp_path: Path, plain: PlainSparkConfig
) -> None:
    app, out = write_app(tmp_path / "job.py"), tmp_path / "out.json"
    key = tmp_path / "k" / "sim.pem"
    plans: list[LaunchPlan] = []
    code = run(
        ["python", str(app), str(out)], settings=plain, tee=SimBackend(key), on_plan=plans.append
    )
    assert code == 0
    measurement = measure_script(app, [str(out)], plain)
    assert json.loads(out.read_text()) == {
        "TRUSTEDML_TEE": "sim",
        "TRUSTEDML_JOB_MEASUREMENT": measurement.hex,
        "TRUSTEDML_SIM_KEY": str(key.resolve()),
    }
    (plan,) = plans
    assert plan.banner is not None
    assert "NO HARDWARE PROTECTION IS PRESENT" in plan.banner
    assert str(key) in plan.banner
    assert plan.notes == (f"job measurement {measurement.hex}",)
    assert plan.evidence is not None
    bound, report_data = _verify(plan.evidence, key)
    assert bound == measurement.digest
    assert report_data == measurement.digest + bytes(16)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


class _Tampering(SimBackend):
    """Changes the app after the measurement and the plan, just before launch."""

    def __init__(self, key: Path, victim: Path) -> None:
        super().__init__(key)
        self.victim = victim
        self.old = hashlib.sha256(victim.read_bytes()).hexdigest()

    def prepare(self, job: Job) -> LaunchPlan:
        plan = super().prepare(job)
        self.victim.write_text("print('not what was measured')\n")
        return plan


@pytest.mark.parametrize("launcher", ["run", "submit"])
def test_a_file_changed_between_measurement_and_launch_is_refused(
    tmp_path: Path, plain: PlainSparkConfig, launcher: str
) -> None:
    out = tmp_path / "out.json"
    if launcher == "run":
        app = write_app(tmp_path / "job.py")
    else:
        app = tmp_path / "pi.py"
        shutil.copy(EXAMPLES / "pi.py", app)
    backend = _Tampering(tmp_path / "sim.pem", app)
    new = hashlib.sha256(b"print('not what was measured')\n").hexdigest()

    def launch() -> int:
        if launcher == "run":
            return run([PYTHON, str(app), str(out)], settings=plain, tee=backend)
        return submit(app, [str(out)], settings=plain, tee=backend)

    with pytest.raises(LaunchError) as info:
        launch()
    assert str(info.value) == (
        f"trusted file app:{app.name} ({app}) changed since it was measured: "
        f"measured sha256 {backend.old}, now {new}"
    )
    assert not out.exists()


def test_the_job_gets_a_sim_provider_bound_to_its_measurement(
    tmp_path: Path, plain: PlainSparkConfig
) -> None:
    key = tmp_path / "sim.pem"
    app = write_app(tmp_path / "job.py")
    measurement = measure_script(app, [], plain)
    plan = SimBackend(key).prepare(
        Job(launcher="run", argv=(), env={}, settings=plain, conf_dir=tmp_path,
            app=app, measurement=measurement)
    )  # fmt: skip
    provider = job_evidence_provider(plan.env)
    bound, report_data = _verify(provider.get_evidence(b"nonce"), key)
    assert bound == measurement.digest
    assert report_data == b"nonce" + bytes(59)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, r"runs without a TEE \(--tee none\)"),
        ({"TRUSTEDML_TEE": "none"}, "runs without a TEE"),
        ({"TRUSTEDML_TEE": "sim"}, "must be set by the launcher"),
        ({"TRUSTEDML_TEE": "sim", "TRUSTEDML_JOB_MEASUREMENT": "abc"}, "expected 96 hex digits"),
    ],
)
def test_job_evidence_provider_refusals(env: dict[str, str], message: str) -> None:
    with pytest.raises(EvidenceProviderError, match=message):
        job_evidence_provider(env)


def test_expected_measurement(tmp_path: Path, plain: PlainSparkConfig) -> None:
    app, out = write_app(tmp_path / "job.py"), tmp_path / "out.json"
    command = [PYTHON, str(app), str(out)]
    good = measure_script(app, [str(out)], plain).hex
    bad = "00" * 48
    with pytest.raises(LaunchError, match=f"job measurement is {good}, expected {bad}"):
        run(command, settings=plain, tee=NoTee(), expected_measurement=bad)
    assert not out.exists()
    with pytest.raises(ConfigError, match="expected 96 hex digits"):
        run(command, settings=plain, expected_measurement="xyz")
    assert run(command, settings=plain, expected_measurement=good) == 0
    # Measured (because a digest was expected), so the job learns it even without a TEE.
    assert json.loads(out.read_text()) == {
        "TRUSTEDML_TEE": "none",
        "TRUSTEDML_JOB_MEASUREMENT": good,
    }


def test_measuring_run_needs_a_python_script(tmp_path: Path, plain: PlainSparkConfig) -> None:
    with pytest.raises(ConfigError, match=r"`run` can only measure `python SCRIPT\.py"):
        run(["echo", "hi"], settings=plain, tee=SimBackend(tmp_path / "k.pem"))


def test_cli_sim_banner_and_evidence(tmp_path: Path) -> None:
    app, out = write_app(tmp_path / "job.py"), tmp_path / "out.json"
    key, evidence = tmp_path / "sim.pem", tmp_path / "launch.evidence"
    result = run_cli(
        ["run", "--insecure", "--tee", "sim", "--sim-key", str(key),
         "--evidence-out", str(evidence), "--", "python", str(app), str(out)]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Loud even though stderr is a pipe, not a terminal.
    assert "WARNING: NO HARDWARE PROTECTION" in result.stderr
    assert "NO HARDWARE PROTECTION IS PRESENT" in result.stderr
    assert "╭" in result.stderr
    measured = json.loads(out.read_text())["TRUSTEDML_JOB_MEASUREMENT"]
    bound, _ = _verify(evidence.read_bytes(), key)
    assert bound.hex() == measured
    assert f"job measurement {measured}" in result.stderr


def test_cli_expect_measurement_mismatch_starts_nothing(tmp_path: Path) -> None:
    app, out = write_app(tmp_path / "job.py"), tmp_path / "out.json"
    result = run_cli(
        ["run", "--insecure", "--expect-measurement", "ab" * 48, "--", "python", str(app),
         str(out)]
    )  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job measurement is ")
    assert f"expected {'ab' * 48}" in last
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tee", "sim", "--dry-run"], "--dry-run applies to --tee gramine, not --tee sim"),
        (["--enclave-size", "4G"], "--enclave-size applies to --tee gramine, not --tee none"),
        (["--tee", "gramine", "--evidence-out", "e"], "--evidence-out applies to --tee sim or"),
        (["--tee", "sgx"], "'sgx' is not one of 'cvm', 'gramine', 'none', 'sim'"),
    ],
)
def test_cli_tee_flag_misuse(flags: list[str], message: str) -> None:
    result = run_cli(["submit", "--insecure", *flags, str(APPS / "exit_code.py"), "0"])
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.spark
def test_spark_job_under_sim_matches_trustedml_measure(
    session_keys: KeyDirectory, session_passphrase_file: Path, tmp_path: Path
) -> None:
    out, job_evidence, key = tmp_path / "out.json", tmp_path / "job.evidence", tmp_path / "s.pem"
    options = ["--keys", str(session_keys.path), "--passphrase-file", str(session_passphrase_file),
               "--no-ui", "--tee", "sim", "--sim-key", str(key)]  # fmt: skip
    app_and_args = [str(APPS / "tee_probe.py"), str(out), str(job_evidence)]
    # The data owner computes the digest ahead of time, with the same command line and
    # no passphrase; the launcher pins it.
    measured = run_measure([*options, *app_and_args])
    assert measured.returncode == 0, measured.stderr
    digest = measured.stdout.strip()
    assert measure_job(APPS / "tee_probe.py", app_and_args[1:], (), _settings()).hex == digest
    result = run_cli(["submit", *options, "--expect-measurement", digest, *app_and_args])
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report == {"tee": "sim", "measurement": digest, "count": 10}
    bound, report_data = _verify(job_evidence.read_bytes(), key)
    assert bound.hex() == digest
    assert report_data == b"probe-nonce".ljust(64, b"\x00")
    assert "NO HARDWARE PROTECTION IS PRESENT" in result.stderr


def _settings() -> SparkSettings:
    return measurement_settings(ui=False)
