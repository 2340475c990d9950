from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ATTESTATION_VECTORS, ROOT, cli_env, run_cli

INTEL = ATTESTATION_VECTORS / "dcap-qvl"
AMD = ATTESTATION_VECTORS / "go-sev-guest"

SGX_TIME = "2025-07-04T10:28:44Z"
TDX_TIME = "2025-07-04T10:16:31Z"
SNP_TIME = "2023-01-01T00:00:00Z"


def test_show_prints_every_sgx_field_as_json() -> None:
    proc = run_cli(["attest", "show", str(INTEL / "sgx_quote"), "--json"])
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["evidence_type"] == "sgx-dcap"
    text = json.dumps(shown)
    assert "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb" in text
    assert "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6" in text


def test_show_reads_snp_and_names_measurement() -> None:
    proc = run_cli(["attest", "show", str(AMD / "attestation.bin")])
    assert proc.returncode == 0, proc.stderr
    assert "measurement" in proc.stdout
    assert "b07af9620f3b839b" in proc.stdout.replace("\n", "")


def test_show_refuses_garbage_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 10)
    proc = run_cli(["attest", "show", str(junk)])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "evidence" in proc.stderr


def test_verify_sgx_without_policy_refuses_outdated_platform_with_reasons() -> None:
    proc = run_cli(
        [
            "attest", "verify", str(INTEL / "sgx_quote"),
            "--collateral", str(INTEL / "sgx_quote_collateral.json"),
            "--at", SGX_TIME, "--json",
        ]
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["accepted"] is False
    assert verdict["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert verdict["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert any("ConfigurationAndSWHardeningNeeded" in r for r in verdict["reasons"])


def test_verify_sgx_accepted_by_a_policy_that_tolerates_its_advisories(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'min_tcb_status = "ConfigurationAndSWHardeningNeeded"\n'
        'allowed_advisory_ids = ["INTEL-SA-00289", "INTEL-SA-00615"]\n'
        "[[allow]]\n"
        'mrenclave = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"\n'
    )
    base = [
        "attest", "verify", str(INTEL / "sgx_quote"),
        "--collateral", str(INTEL / "sgx_quote_collateral.json"),
        "--at", SGX_TIME, "--policy", str(policy),
    ]  # fmt: skip
    proc = run_cli(base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ACCEPTED" in proc.stdout
    hello = b"Hello, world!".hex()
    assert run_cli([*base, "--report-data", hello]).returncode == 0
    wrong = run_cli([*base, "--report-data", b"Goodbye".hex()])
    assert wrong.returncode == 4
    assert "report_data" in wrong.stdout


def test_verify_tdx_v4_is_up_to_date_and_accepted() -> None:
    proc = run_cli(
        [
            "attest", "verify", str(INTEL / "tdx_quote"),
            "--collateral", str(INTEL / "tdx_quote_collateral.json"),
            "--at", TDX_TIME,
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "UpToDate" in proc.stdout


def test_verify_after_collateral_expiry_is_refused() -> None:
    proc = run_cli(
        [
            "attest", "verify", str(INTEL / "tdx_quote"),
            "--collateral", str(INTEL / "tdx_quote_collateral.json"),
            "--at", "2025-09-01T00:00:00Z",
        ]
    )  # fmt: skip
    assert proc.returncode == 3
    assert "expired" in proc.stderr.lower() or "not valid" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


def test_verify_snp_with_vcek() -> None:
    proc = run_cli(
        [
            "attest", "verify", str(AMD / "attestation.bin"),
            "--collateral", str(AMD / "vcek.testcer"), "--at", SNP_TIME, "--json",
        ]
    )  # fmt: skip
    verdict = json.loads(proc.stdout)
    # The captured guest was launched with the debug policy bit set: genuine, but
    # the default platform policy must not accept a debuggable guest.
    assert verdict["claims"]["debug"] is True
    assert proc.returncode == 4
    assert any("debug" in r for r in verdict["reasons"])


def test_bad_time_is_a_usage_error() -> None:
    proc = run_cli(["attest", "verify", str(INTEL / "tdx_quote"), "--at", "yesterday-ish"])
    assert proc.returncode == 2
    assert "--at" in proc.stderr


def test_sim_quote_round_trip_needs_a_policy_that_allows_simulation(tmp_path: Path) -> None:
    key = tmp_path / "sim-key.pem"
    evidence = tmp_path / "sim.bin"
    measurement = "ab" * 48
    proc = run_cli(
        [
            "attest", "quote", "--provider", "sim", "--report-data", "0102",
            "--measurement", measurement, "--sim-key", str(key), "--out", str(evidence),
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" in proc.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    public = tmp_path / "sim-pub.pem"
    from trustedml.attestation import SimKey

    public.write_bytes(SimKey.load(key).public_key_pem())
    strict = run_cli(["attest", "verify", str(evidence), "--sim-key", str(public), "--json"])
    assert strict.returncode == 4
    assert any("simulated" in r for r in json.loads(strict.stdout)["reasons"])
    policy = tmp_path / "p.json"
    policy.write_text(
        json.dumps(
            {"allow_simulated": True, "allow": [{"type": "sim", "measurement": measurement}]}
        )
    )
    ok = run_cli(
        [
            "attest", "verify", str(evidence), "--sim-key", str(public),
            "--policy", str(policy), "--report-data", "0102",
        ]
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "WARNING" in ok.stderr
    # Another installation's key does not vouch for this evidence.
    other = tmp_path / "other.pem"
    run_cli(
        [
            "attest", "quote", "--provider", "sim", "--report-data", "00",
            "--measurement", measurement, "--sim-key", str(other), "--out", str(tmp_path / "o.bin"),
        ],
        env=cli_env(),
    )  # fmt: skip
    other_pub = tmp_path / "other-pub.pem"
    other_pub.write_bytes(SimKey.load(other).public_key_pem())
    forged = run_cli(["attest", "verify", str(evidence), "--sim-key", str(other_pub)])
    assert forged.returncode == 3
    assert "untrusted key" in forged.stderr


def test_verify_takes_collateral_in_several_files() -> None:
    vector = ROOT / "tests" / "attestation" / "vectors" / "public" / "oak-turin-v5"
    roots = ROOT / "src" / "trustedml" / "attestation" / "roots" / "amd_turin.pem"
    result = run_cli(
        ["attest", "verify", str(vector / "report.bin"), "--collateral", str(vector / "vcek.der"),
         "--collateral", str(roots), "--at", "2026-01-01T00:00:00Z"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "verdict: ACCEPTED" in result.stdout
    assert "Warning" not in result.stderr


# --- one JSON verdict whatever the outcome, distinct exit codes -------------------------

VERDICT_KEYS = {"ok", "verdict", "exit_code", "reason", "field", "error"}


def _verify_json(*args: str) -> tuple[int, dict[str, object], str]:
    proc = run_cli(["attest", "verify", *args, "--json"])
    assert "Traceback" not in proc.stderr, proc.stderr
    verdict = json.loads(proc.stdout)
    assert isinstance(verdict, dict)
    assert set(verdict) >= VERDICT_KEYS
    assert verdict["exit_code"] == proc.returncode
    return proc.returncode, verdict, proc.stderr


def test_json_verdict_when_accepted() -> None:
    code, verdict, _ = _verify_json(
        str(INTEL / "tdx_quote"), "--collateral", str(INTEL / "tdx_quote_collateral.json"),
        "--at", TDX_TIME,
    )  # fmt: skip
    assert code == 0
    assert verdict["ok"] is True
    assert verdict["verdict"] == "accepted"
    assert (verdict["reason"], verdict["field"], verdict["error"]) == (None, None, None)
    claims = verdict["claims"]
    assert isinstance(claims, dict)
    assert claims["evidence_type"] == "tdx-dcap"


def test_json_verdict_when_refused_by_policy_exits_4() -> None:
    code, verdict, _ = _verify_json(
        str(INTEL / "sgx_quote"), "--collateral", str(INTEL / "sgx_quote_collateral.json"),
        "--at", SGX_TIME,
    )  # fmt: skip
    assert code == 4
    assert verdict["ok"] is False
    assert verdict["verdict"] == "refused"
    assert verdict["field"] == "policy"
    assert verdict["error"] is None
    assert "ConfigurationAndSWHardeningNeeded" in str(verdict["reason"])
    # The evidence verified: its claims are there for the operator.
    claims = verdict["claims"]
    assert isinstance(claims, dict)
    assert claims["mrenclave"] == (
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    )


def test_json_verdict_when_the_pck_certificate_is_corrupt_exits_3(tmp_path: Path) -> None:
    data = bytearray((INTEL / "sgx_quote").read_bytes())
    leaf = data.index(b"-----BEGIN CERTIFICATE-----")
    data[leaf + 500] ^= 0x01
    tampered = tmp_path / "quote"
    tampered.write_bytes(bytes(data))
    code, verdict, stderr = _verify_json(
        str(tampered), "--collateral", str(INTEL / "sgx_quote_collateral.json"), "--at", SGX_TIME
    )
    assert code == 3
    assert verdict["ok"] is False
    assert verdict["verdict"] == "invalid"
    assert verdict["error"] == "CertificateChainError"
    assert str(verdict["field"]).startswith("PCK certificate chain")
    assert "claims" not in verdict
    # Humans get the same reason as one line on stderr.
    assert stderr.strip() == f"error: {verdict['reason']}"


def test_json_verdict_for_garbage_and_for_expired_collateral(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x07" * 64)
    code, verdict, _ = _verify_json(str(garbage))
    assert (code, verdict["verdict"], verdict["error"]) == (
        3,
        "invalid",
        "UnsupportedEvidenceError",
    )
    assert verdict["field"] == "evidence"
    code, verdict, _ = _verify_json(
        str(INTEL / "tdx_quote"), "--collateral", str(INTEL / "tdx_quote_collateral.json"),
        "--at", "2025-09-01T00:00:00Z",
    )  # fmt: skip
    assert (code, verdict["error"]) == (3, "CollateralExpiredError")
    assert verdict["verified_at"] == "2025-09-01T00:00:00+00:00"


def test_json_verdict_for_usage_errors_exits_2(tmp_path: Path) -> None:
    code, verdict, stderr = _verify_json(str(INTEL / "tdx_quote"), "--at", "yesterday-ish")
    assert (code, verdict["verdict"], verdict["error"]) == (2, "error", "ConfigError")
    assert verdict["field"] == "--at"
    assert "--at" in stderr
    policy = tmp_path / "policy.toml"
    policy.write_text("vmpl = [7]\n")
    code, verdict, _ = _verify_json(
        str(INTEL / "tdx_quote"), "--collateral", str(INTEL / "tdx_quote_collateral.json"),
        "--at", TDX_TIME, "--policy", str(policy),
    )  # fmt: skip
    # PolicyError is an AttestationError too, but a bad policy is a usage error.
    assert (code, verdict["error"]) == (2, "PolicyError")
    assert "vmpl[0]: expected an integer 0..3, got 7" in str(verdict["reason"])


def test_verify_help_documents_the_exit_codes() -> None:
    proc = run_cli(["attest", "verify", "--help"])
    assert proc.returncode == 0
    for line in (
        "0  accepted",
        "1  runtime error",
        "2  usage",
        "3  evidence invalid",
        "4  evidence valid but refused",
    ):
        assert line in proc.stdout, proc.stdout
