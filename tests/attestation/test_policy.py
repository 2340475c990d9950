from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from trustedml.attestation._model import Claims, EvidenceType, TcbStatus, VerifiedEvidence
from trustedml.attestation._policy import (
    Appraisal,
    Identity,
    Policy,
    format_duration,
    parse_duration,
)
from trustedml.attestation._sim import SimKey, SimProvider, SimVerifier
from trustedml.errors import AttestationError, ConfigError, PolicyError

AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MRENCLAVE = bytes.fromhex("11" * 32)
MRSIGNER = bytes.fromhex("22" * 32)
MRTD = bytes.fromhex("33" * 48)
RTMRS = tuple(bytes([0x40 + i]) * 48 for i in range(4))
SNP_MEASUREMENT = bytes.fromhex("55" * 48)
HOST_DATA = bytes.fromhex("66" * 32)
SIM_MEASUREMENT = bytes.fromhex("ab12" * 16)
NONCE = b"nonce-1234"

KEY = SimKey.generate()


def sim_verified(measurement: bytes = SIM_MEASUREMENT, *, debug: bool = False) -> VerifiedEvidence:
    blob = SimProvider(KEY, measurement=measurement, debug=debug).get_evidence(NONCE)
    return SimVerifier([KEY.public_key_pem()]).verify(blob, collateral=None, at=AT)


def sgx_verified(
    *,
    tcb_status: TcbStatus = TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    advisory_ids: tuple[str, ...] = ("INTEL-SA-00289", "INTEL-SA-00615"),
    isv_svn: int = 3,
    debug: bool = False,
    issued: datetime | None = AT - timedelta(days=10),
    extra: dict[str, Any] | None = None,
) -> VerifiedEvidence:
    claims = Claims(
        evidence_type=EvidenceType.SGX,
        report_data=NONCE.ljust(64, b"\x00"),
        debug=debug,
        mrenclave=MRENCLAVE,
        mrsigner=MRSIGNER,
        isv_prod_id=7,
        isv_svn=isv_svn,
        extra=extra or {"fmspc": "00906ED50000"},
    )
    return VerifiedEvidence(
        claims=claims,
        tcb_status=tcb_status,
        advisory_ids=advisory_ids,
        collateral_issued=issued,
        collateral_expires=None if issued is None else issued + timedelta(days=30),
    )


def tdx_verified() -> VerifiedEvidence:
    claims = Claims(
        evidence_type=EvidenceType.TDX,
        report_data=NONCE.ljust(64, b"\x00"),
        debug=False,
        mrtd=MRTD,
        rtmrs=RTMRS,
    )
    return VerifiedEvidence(claims=claims, tcb_status=TcbStatus.UP_TO_DATE)


def snp_verified() -> VerifiedEvidence:
    claims = Claims(
        evidence_type=EvidenceType.SNP,
        report_data=NONCE.ljust(64, b"\x00"),
        debug=False,
        measurement=SNP_MEASUREMENT,
        host_data=HOST_DATA,
        vmpl=0,
    )
    return VerifiedEvidence(claims=claims, tcb_status=TcbStatus.UP_TO_DATE)


SGX_IDENTITY = Identity(
    evidence_type=EvidenceType.SGX, mrsigner=MRSIGNER, isv_prod_id=7, min_isv_svn=2
)
SGX_POLICY = Policy(
    allow=(SGX_IDENTITY,),
    min_tcb_status=TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    allowed_advisory_ids=frozenset({"INTEL-SA-00289", "INTEL-SA-00615"}),
    max_collateral_age=timedelta(days=30),
)
SIM_IDENTITY = Identity(evidence_type=EvidenceType.SIM, measurement=SIM_MEASUREMENT)


# -- sim evidence -----------------------------------------------------------------------


def test_default_policy_refuses_sim_evidence() -> None:
    appraisal = Policy(allow=(SIM_IDENTITY,)).appraise(sim_verified(), at=AT)
    assert not appraisal.accepted
    assert appraisal.reasons == (
        "simulated evidence is not allowed by this policy (no hardware protection; "
        "set allow_simulated for development only)",
    )


def test_allow_simulated_accepts_a_matching_measurement() -> None:
    policy = Policy(allow=(SIM_IDENTITY,), allow_simulated=True)
    appraisal = policy.appraise(sim_verified(), at=AT, expected_report_data=NONCE)
    assert appraisal.accepted
    assert appraisal.reasons == ()


def test_allow_simulated_refuses_another_measurement_and_says_why() -> None:
    policy = Policy(allow=(SIM_IDENTITY,), allow_simulated=True)
    other = bytes.fromhex("cd34" * 16)
    appraisal = policy.appraise(sim_verified(other), at=AT)
    assert not appraisal.accepted
    assert appraisal.reasons == (
        "no allowed identity matches; closest: allow[0] "
        "(measurement: expected ab12ab12ab12ab12…, got cd34cd34cd34cd34…)",
    )


def test_claims_of_type_sim_count_as_simulated_even_without_the_flag() -> None:
    verified = sim_verified()
    unflagged = replace(verified, claims=replace(verified.claims, simulated=False))
    appraisal = Policy(allow=(SIM_IDENTITY,)).appraise(unflagged, at=AT)
    assert appraisal.reasons[0].startswith("simulated evidence is not allowed")


def test_sim_debug_needs_allow_debug() -> None:
    policy = Policy(allow=(SIM_IDENTITY,), allow_simulated=True)
    appraisal = policy.appraise(sim_verified(debug=True), at=AT)
    assert appraisal.reasons == (
        "debug-mode TEE is not allowed by this policy (the host can read its memory)",
    )
    assert replace(policy, allow_debug=True).appraise(sim_verified(debug=True), at=AT).accepted


# -- Intel / AMD claims -----------------------------------------------------------------


def test_sgx_accepted_with_tolerated_tcb_and_advisories() -> None:
    appraisal = SGX_POLICY.appraise(sgx_verified(), at=AT, expected_report_data=NONCE)
    assert appraisal.accepted, appraisal.reasons


def test_min_tcb_status_says_both_statuses() -> None:
    policy = replace(SGX_POLICY, min_tcb_status=TcbStatus.SW_HARDENING_NEEDED)
    appraisal = policy.appraise(sgx_verified(), at=AT)
    assert appraisal.reasons == (
        "TCB status ConfigurationAndSWHardeningNeeded is worse than the policy minimum "
        "SWHardeningNeeded",
    )


def test_better_tcb_than_minimum_passes() -> None:
    appraisal = SGX_POLICY.appraise(sgx_verified(tcb_status=TcbStatus.UP_TO_DATE), at=AT)
    assert appraisal.accepted


def test_unlisted_advisories_are_listed() -> None:
    policy = replace(SGX_POLICY, allowed_advisory_ids=frozenset({"INTEL-SA-00289"}))
    appraisal = policy.appraise(sgx_verified(), at=AT)
    assert appraisal.reasons == ("security advisories not allowed by this policy: INTEL-SA-00615",)


def test_collateral_age() -> None:
    old = sgx_verified(issued=AT - timedelta(days=45, hours=3))
    appraisal = SGX_POLICY.appraise(old, at=AT)
    assert appraisal.reasons == (
        "collateral issued 2025-04-17T09:00:00+00:00 is 45d3h old at "
        "2025-06-01T12:00:00+00:00, more than max_collateral_age 30d",
    )
    # No issue date (e.g. SNP with a VCEK only): the age rule does not apply.
    assert SGX_POLICY.appraise(sgx_verified(issued=None), at=AT).accepted


def test_report_data_binding() -> None:
    appraisal = SGX_POLICY.appraise(sgx_verified(), at=AT, expected_report_data=b"other")
    assert len(appraisal.reasons) == 1
    assert appraisal.reasons[0].startswith("report_data does not bind the expected value")
    # Zero-padding: the unpadded and the padded value are the same binding.
    padded = NONCE.ljust(64, b"\x00")
    assert SGX_POLICY.appraise(sgx_verified(), at=AT, expected_report_data=padded).accepted
    with pytest.raises(ConfigError, match="expected_report_data: expected at most 64 bytes"):
        SGX_POLICY.appraise(sgx_verified(), at=AT, expected_report_data=b"x" * 65)


def test_every_reason_is_reported_at_once() -> None:
    policy = Policy(
        allow=(replace(SGX_IDENTITY, min_isv_svn=5),),
        min_tcb_status=TcbStatus.UP_TO_DATE,
        allowed_advisory_ids=frozenset(),
        max_collateral_age=timedelta(days=1),
    )
    appraisal = policy.appraise(sgx_verified(debug=True), at=AT, expected_report_data=b"x")
    assert not appraisal.accepted
    assert [r.split(" ")[0] for r in appraisal.reasons] == [
        "debug-mode",
        "TCB",
        "security",
        "collateral",
        "report_data",
        "no",
    ]
    assert "isv_svn: expected ≥ 5, got 3" in appraisal.reasons[-1]
    assert "INTEL-SA-00289, INTEL-SA-00615" in appraisal.reasons[2]


def test_closest_candidates_of_the_same_type_are_named() -> None:
    policy = Policy(
        allow=(
            Identity(evidence_type=EvidenceType.TDX, mrtd=MRTD),
            Identity(evidence_type=EvidenceType.SGX, mrenclave=b"\x99" * 32, mrsigner=MRSIGNER),
            Identity(evidence_type=EvidenceType.SGX, mrenclave=b"\x98" * 32, isv_prod_id=8),
            Identity(mrsigner=b"\x01" * 32),
        ),
        min_tcb_status=TcbStatus.REVOKED,
        allowed_advisory_ids=frozenset({"INTEL-SA-00289", "INTEL-SA-00615"}),
    )
    (reason,) = policy.appraise(sgx_verified(), at=AT).reasons
    # allow[1] and allow[3] differ in one field; allow[2] in two; allow[0] is TDX.
    assert reason == (
        "no allowed identity matches; closest: "
        "allow[1] (mrenclave: expected 9999999999999999…, got 1111111111111111…), "
        "allow[3] (mrsigner: expected 0101010101010101…, got 2222222222222222…)"
    )


def test_no_identity_for_this_type() -> None:
    policy = Policy(allow=(Identity(evidence_type=EvidenceType.TDX, mrtd=MRTD),))
    appraisal = policy.appraise(snp_verified(), at=AT)
    assert appraisal.reasons == ("no allowed identity is for sev-snp evidence",)


def test_empty_allow_refuses() -> None:
    appraisal = Policy().appraise(snp_verified(), at=AT)
    assert appraisal.reasons == ("no identity is allowed: the policy's allow list is empty",)


def test_first_matching_identity_wins() -> None:
    policy = Policy(
        allow=(
            Identity(evidence_type=EvidenceType.SNP, measurement=b"\x00" * 48),
            Identity(evidence_type=EvidenceType.SNP, measurement=SNP_MEASUREMENT),
        )
    )
    assert policy.appraise(snp_verified(), at=AT).accepted


def test_tdx_rtmrs_with_dont_cares() -> None:
    want = Identity(evidence_type=EvidenceType.TDX, mrtd=MRTD, rtmrs=(None, RTMRS[1], None))
    assert Policy(allow=(want,)).appraise(tdx_verified(), at=AT).accepted
    wrong = replace(want, rtmrs=(None, None, b"\x00" * 48))
    (reason,) = Policy(allow=(wrong,)).appraise(tdx_verified(), at=AT).reasons
    assert "rtmr2: expected 0000000000000000…, got 4242424242424242…" in reason


def test_snp_host_data() -> None:
    identity = Identity(evidence_type=EvidenceType.SNP, host_data=b"\x00" * 32)
    (reason,) = Policy(allow=(identity,)).appraise(snp_verified(), at=AT).reasons
    assert "host_data: expected 0000000000000000…, got 6666666666666666…" in reason


def test_job_measurement_from_extra() -> None:
    job = bytes.fromhex("77" * 32)
    identity = replace(SGX_IDENTITY, job_measurement=job)
    policy = replace(SGX_POLICY, allow=(identity,))
    ok = sgx_verified(extra={"job_measurement": job.hex()})
    assert policy.appraise(ok, at=AT).accepted
    (reason,) = policy.appraise(sgx_verified(), at=AT).reasons
    assert "job_measurement: expected 7777777777777777…, got none" in reason
    (reason,) = policy.appraise(sgx_verified(extra={"job_measurement": "zz"}), at=AT).reasons
    assert "got none" in reason


def test_a_shared_prefix_shows_the_full_values() -> None:
    near = SIM_MEASUREMENT[:-1] + b"\x00"
    policy = Policy(allow=(replace(SIM_IDENTITY, measurement=near),), allow_simulated=True)
    (reason,) = policy.appraise(sim_verified(), at=AT).reasons
    assert near.hex() in reason
    assert SIM_MEASUREMENT.hex() in reason


def test_naive_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        SGX_POLICY.appraise(sgx_verified(), at=datetime(2025, 1, 1))


def test_appraisal_to_dict_is_json() -> None:
    appraisal = SGX_POLICY.appraise(sgx_verified(isv_svn=1), at=AT)
    out = json.loads(json.dumps(appraisal.to_dict()))
    assert out["accepted"] is False
    assert out["reasons"] == list(appraisal.reasons)
    assert out["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert out["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert out["claims"]["mrsigner"] == MRSIGNER.hex()
    assert out["evidence_type"] == "sgx-dcap"
    assert out["simulated"] is False
    assert out["collateral_issued"] == "2025-05-22T12:00:00+00:00"


def test_appraisal_reasons_agree_with_the_verdict() -> None:
    with pytest.raises(ValueError, match="reasons exactly when refused"):
        Appraisal(accepted=True, reasons=("x",), verified=snp_verified())
    with pytest.raises(ValueError, match="reasons exactly when refused"):
        Appraisal(accepted=False, reasons=(), verified=snp_verified())


# -- Identity and Policy construction ---------------------------------------------------


def test_identity_with_no_field_is_refused() -> None:
    with pytest.raises(PolicyError, match="sets no field"):
        Identity()


def test_type_alone_is_an_explicit_allow_any() -> None:
    policy = Policy(allow=(Identity(evidence_type=EvidenceType.SNP),))
    assert policy.appraise(snp_verified(), at=AT).accepted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mrsigner": b"\x00" * 31},
            r"mrsigner: expected 32 bytes \(64 hex characters\), got 31 bytes",
        ),
        ({"mrtd": b"\x00" * 32}, "mrtd: expected 48 bytes"),
        (
            {"evidence_type": EvidenceType.SNP, "measurement": b"\x00" * 32},
            "measurement: expected 48 bytes",
        ),
        ({"measurement": b"\x00" * 65}, r"measurement: expected 1\.\.64 bytes"),
        ({"isv_prod_id": -1}, r"isv_prod_id: expected an integer in 0\.\.65535, got -1"),
        ({"min_isv_svn": True}, "min_isv_svn: expected an integer"),
        ({"rtmrs": (None, None)}, "rtmrs: expected at least one RTMR value"),
        ({"rtmrs": (b"\x00" * 48,) * 5}, r"rtmrs: expected a tuple of 1\.\.4 entries, got 5"),
        ({"rtmrs": (b"\x00" * 47,)}, r"rtmrs\[0\]: expected 48 bytes"),
        (
            {"evidence_type": EvidenceType.TDX, "mrenclave": b"\x00" * 32},
            "mrenclave: applies to sgx-dcap evidence, not tdx-dcap",
        ),
        (
            {"mrenclave": b"\x00" * 32, "mrtd": b"\x00" * 48},
            "mrtd: applies to tdx-dcap evidence, but mrenclave applies to sgx-dcap",
        ),
        ({"evidence_type": "tpm"}, "evidence_type: expected one of sgx-dcap"),
    ],
)
def test_identity_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Identity(**kwargs)


def test_identity_accepts_a_type_string() -> None:
    assert Identity(evidence_type="sim").evidence_type is EvidenceType.SIM  # type: ignore[arg-type]


def test_policy_validation() -> None:
    with pytest.raises(PolicyError, match=r"allow\[0\]: expected an Identity, got a table"):
        Policy(allow=({"type": "sim"},))  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="allow_debug: expected true or false, got 'yes'"):
        Policy(allow_debug="yes")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="min_tcb_status: expected one of UpToDate"):
        Policy(min_tcb_status="Fine")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="allowed_advisory_ids: expected a list of IDs"):
        Policy(allowed_advisory_ids="INTEL-SA-00289")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="max_collateral_age: expected a positive"):
        Policy(max_collateral_age=timedelta(0))
    policy = Policy(allow=[SIM_IDENTITY], min_tcb_status="OutOfDate")  # type: ignore[arg-type]
    assert policy.allow == (SIM_IDENTITY,)
    assert policy.min_tcb_status is TcbStatus.OUT_OF_DATE


# -- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("15m", 900), ("3600s", 3600), (3600, 3600)],
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["30", "1w", "-5m", "1.5h", "", "30 days", True, 0, -1, 1.5])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(PolicyError, match="max_collateral_age: expected"):
        parse_duration(bad, "max_collateral_age")


@pytest.mark.parametrize(
    ("seconds", "text"), [(86400 * 30, "30d"), (7200, "2h"), (900, "15m"), (3601, "3601s")]
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text
    assert parse_duration(text) == timedelta(seconds=seconds)


# -- file form --------------------------------------------------------------------------

POLICY_TOML = f"""
allow_simulated = false
allow_debug = false
min_tcb_status = "SWHardeningNeeded"
allowed_advisory_ids = ["INTEL-SA-00289"]
max_collateral_age = "30d"

[[allow]]
type = "sgx-dcap"
mrsigner = "{MRSIGNER.hex()}"
isv_prod_id = 0
min_isv_svn = 1

[[allow]]
type = "tdx-dcap"
mrtd = "{MRTD.hex()}"
rtmrs = ["*", "{RTMRS[1].hex()}"]

[[allow]]
type = "sim"
measurement = "{SIM_MEASUREMENT.hex().upper()}"
"""


def test_load_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_TOML)
    policy = Policy.load(path)
    assert policy == Policy(
        allow=(
            Identity(
                evidence_type=EvidenceType.SGX, mrsigner=MRSIGNER, isv_prod_id=0, min_isv_svn=1
            ),
            Identity(evidence_type=EvidenceType.TDX, mrtd=MRTD, rtmrs=(None, RTMRS[1])),
            Identity(evidence_type=EvidenceType.SIM, measurement=SIM_MEASUREMENT),
        ),
        min_tcb_status=TcbStatus.SW_HARDENING_NEEDED,
        allowed_advisory_ids=frozenset({"INTEL-SA-00289"}),
        max_collateral_age=timedelta(days=30),
    )


def test_to_dict_round_trips_through_toml_and_json(tmp_path: Path) -> None:
    policy = Policy.from_dict(tomllib.loads(POLICY_TOML))
    data = policy.to_dict()
    assert Policy.from_dict(data) == policy
    toml_path = tmp_path / "p.toml"
    toml_path.write_text(tomli_w.dumps(data))
    assert Policy.load(toml_path) == policy
    json_path = tmp_path / "p.json"
    json_path.write_text(json.dumps(data))
    assert Policy.load(json_path) == policy
    assert data["allow"][1]["rtmrs"] == ["*", RTMRS[1].hex()]
    assert data["max_collateral_age"] == "30d"


def test_default_policy_round_trips() -> None:
    data = Policy().to_dict()
    assert "max_collateral_age" not in data
    assert Policy.from_dict(data) == Policy()


def test_json_null_is_a_dont_care_rtmr() -> None:
    data = {"allow": [{"type": "tdx-dcap", "rtmrs": [None, RTMRS[1].hex()]}]}
    assert Policy.from_dict(data).allow[0].rtmrs == (None, RTMRS[1])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"allow_simulate": True}, "allow_simulate: unknown key; did you mean 'allow_simulated'?"),
        ({"allow": [{"type": "sim", "measurment": "00"}]}, r"allow\[0\]\.measurment: unknown key"),
        (
            {"allow": [{"type": "sgx-dcap", "mrsigner": "00" * 31}]},
            r"allow\[0\]\.mrsigner: expected 32 bytes \(64 hex characters\), "
            r"got 31 bytes \(62 hex characters\)",
        ),
        ({"allow": [{"mrsigner": "xyz"}]}, r"allow\[0\]\.mrsigner: expected an even number of hex"),
        ({"allow": [{"mrsigner": 5}]}, r"allow\[0\]\.mrsigner: expected a hex string, got 5"),
        ({"allow": [{"type": "tpm"}]}, r"allow\[0\]\.type: expected one of sgx-dcap, .*got 'tpm'"),
        ({"allow": [{}]}, r"allow\[0\]: sets no field"),
        ({"allow": ["sim"]}, r"allow\[0\]: expected a table, got 'sim'"),
        ({"allow": {"type": "sim"}}, r"allow: expected a list of tables \(\[\[allow\]\]"),
        ({"allow": [{"isv_prod_id": "1"}]}, r"allow\[0\]\.isv_prod_id: expected an integer"),
        ({"allow": [{"rtmrs": "00"}]}, r"allow\[0\]\.rtmrs: expected a list"),
        ({"allow": [{"rtmrs": ["*", "00"]}]}, r"allow\[0\]\.rtmrs\[1\]: expected 48 bytes"),
        (
            {"allow": [{"type": "tdx-dcap", "mrenclave": "00" * 32}]},
            r"allow\[0\]\.mrenclave: applies to sgx-dcap evidence, not tdx-dcap",
        ),
        ({"allow_debug": 1}, "allow_debug: expected true or false, got 1"),
        ({"min_tcb_status": "uptodate"}, "min_tcb_status: expected one of UpToDate, "),
        ({"allowed_advisory_ids": "INTEL-SA-00289"}, "allowed_advisory_ids: expected a list"),
        ({"allowed_advisory_ids": ["ok", 3]}, r"allowed_advisory_ids\[1\]: expected an advisory"),
        ({"max_collateral_age": "30 days"}, "max_collateral_age: expected a duration like '30d'"),
        ({"max_collateral_age": True}, "max_collateral_age: expected a duration"),
    ],
)
def test_from_dict_names_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(data)


def test_from_dict_needs_a_table() -> None:
    with pytest.raises(PolicyError, match="policy: expected a table, got a list"):
        Policy.from_dict([])  # type: ignore[arg-type]


def test_toml_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('allow_debug = false\n[[allow]]\ntype = "sim"\nmeasurement = "abc"\n')
    with pytest.raises(
        PolicyError, match=r"policy\.toml: allow\[0\]\.measurement: expected an even"
    ):
        Policy.load(path)
    path.write_text("allow_debug = \n")
    with pytest.raises(PolicyError, match=r"policy\.toml: not valid TOML"):
        Policy.load(path)
    path.write_text("[allow]\ntype = 'sim'\n")
    with pytest.raises(PolicyError, match=r"policy\.toml: allow: expected a list of tables"):
        Policy.load(path)


def test_json_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"allow": [{"type": "sim", "measurement": "00"}], "extra": 1}))
    with pytest.raises(PolicyError, match=r"policy\.json: extra: unknown key"):
        Policy.load(path)
    path.write_text("{")
    with pytest.raises(PolicyError, match=r"policy\.json: not valid JSON"):
        Policy.load(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="expected UTF-8 text"):
        Policy.load(path)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"expected a \.toml or \.json policy file, got '\.yaml'"):
        Policy.load(tmp_path / "policy.yaml")
    with pytest.raises(PolicyError, match="cannot read policy file"):
        Policy.load(tmp_path / "missing.toml")


def test_policy_errors_are_attestation_errors_only() -> None:
    # One parent in the tree: the CLI maps PolicyError to exit 2 by name (tests/test_errors.py).
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"nope": 1})
    assert isinstance(caught.value, AttestationError)
    assert not isinstance(caught.value, ConfigError)


# -- minimum SEV-SNP TCB: judged on a real report (GCP Milan, reported TCB 4/0/27/222) ----

GCP = Path(__file__).parent / "vectors" / "public" / "teekit-sev-gcp"


def _gcp_verified() -> VerifiedEvidence:
    from trustedml.attestation import verify_evidence

    report = bytes.fromhex("".join((GCP / "sev-gcp.hex").read_text().split()))
    return verify_evidence(
        report,
        collateral=(GCP / "sev-gcp-vcek.pem").read_bytes(),
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def _snp_policy(**levels: int) -> Policy:
    return Policy(allow=(Identity(evidence_type=EvidenceType.SNP),), min_snp_tcb=levels)


def test_min_snp_tcb_accepts_a_report_at_or_above_every_level() -> None:
    verified = _gcp_verified()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    ok = _snp_policy(bootloader=4, tee=0, snp=27, microcode=222, fmc=9).appraise(verified, at=at)
    assert ok.accepted, ok.reasons  # fmc exists on Turin only: it does not apply to Milan


def test_min_snp_tcb_names_every_component_below_its_level() -> None:
    verified = _gcp_verified()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    refused = _snp_policy(snp=28, microcode=230, bootloader=3).appraise(verified, at=at)
    assert refused.reasons == (
        "SEV-SNP reported TCB is below the policy minimum: snp 27 < 28, microcode 222 < 230",
    )
    # Other evidence types are not judged by it.
    assert (
        Policy(
            allow_simulated=True,
            allow=(Identity(measurement=SIM_MEASUREMENT),),
            min_snp_tcb={"snp": 99},
        )
        .appraise(sim_verified(), at=AT)
        .accepted
    )


def test_min_snp_tcb_file_form_round_trips_and_rejects_bad_values() -> None:
    policy = Policy.from_dict(tomllib.loads("[min_snp_tcb]\nsnp = 22\nmicrocode = 213\n"))
    assert dict(policy.min_snp_tcb or {}) == {"snp": 22, "microcode": 213}
    assert Policy.from_dict(tomllib.loads(tomli_w.dumps(policy.to_dict()))) == policy
    assert hash(policy) == hash(Policy.from_dict(policy.to_dict()))
    with pytest.raises(PolicyError, match=r"min_snp_tcb\.snpp: unknown key; did you mean 'snp'"):
        Policy.from_dict({"min_snp_tcb": {"snpp": 1}})
    with pytest.raises(
        PolicyError, match=r"min_snp_tcb\.tee: expected an integer 0\.\.255, got 256"
    ):
        Policy.from_dict({"min_snp_tcb": {"tee": 256}})
    with pytest.raises(PolicyError, match="min_snp_tcb: expected at least one of"):
        Policy.from_dict({"min_snp_tcb": {}})
    with pytest.raises(PolicyError, match="min_snp_tcb: expected a table"):
        Policy(min_snp_tcb=[1, 2])  # type: ignore[arg-type]


# -- SEV-SNP ID block identity: judged on a real report (Azure Genoa, guest SVN 0x1000b) --

AZURE = Path(__file__).parent / "vectors" / "public" / "trustee-azure-genoa-v3"
AZURE_ID_KEY = bytes.fromhex(
    "942fd93ebde6ea7a96efadeafc60f1c6b3d10e703b1dafd7555b92f7f3d32d0e"
    "006767648cba5b102af3d65756af4177"
)


def _azure_verified() -> VerifiedEvidence:
    from trustedml.attestation import verify_evidence

    return verify_evidence(
        (AZURE / "report.bin").read_bytes(),
        collateral=(AZURE / "vcek-genoa.pem").read_bytes(),
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_snp_id_block_identity_matches_the_id_key_and_guest_svn() -> None:
    verified = _azure_verified()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    ok = Policy(allow=(Identity(id_key_digest=AZURE_ID_KEY, min_guest_svn=0x1000B),))
    assert ok.appraise(verified, at=at).accepted
    newer = Policy(allow=(Identity(id_key_digest=AZURE_ID_KEY, min_guest_svn=0x1000C),))
    assert newer.appraise(verified, at=at).reasons == (
        "no allowed identity matches; closest: allow[0] (guest_svn: expected ≥ 65548, got 65547)",
    )
    author = Policy(allow=(Identity(author_key_digest=bytes([7]) * 48),))
    (reason,) = author.appraise(verified, at=at).reasons
    assert "author_key_digest: expected 0707070707070707…, got 0000000000000000…" in reason


def test_snp_id_block_fields_in_the_file_form() -> None:
    text = (
        '[[allow]]\ntype = "sev-snp"\n'
        f'id_key_digest = "{AZURE_ID_KEY.hex()}"\nmin_guest_svn = 65547\n'
    )
    policy = Policy.from_dict(tomllib.loads(text))
    assert policy.allow[0].id_key_digest == AZURE_ID_KEY
    assert Policy.from_dict(policy.to_dict()) == policy
    with pytest.raises(PolicyError, match=r"allow\[0\]\.min_guest_svn: expected an integer in"):
        Policy.from_dict({"allow": [{"type": "sev-snp", "min_guest_svn": -1}]})
    with pytest.raises(PolicyError, match=r"allow\[0\]\.id_key_digest: expected 48 bytes"):
        Policy.from_dict({"allow": [{"type": "sev-snp", "id_key_digest": "ab" * 32}]})
    with pytest.raises(PolicyError, match="id_key_digest: applies to sev-snp evidence, not sgx"):
        Identity(evidence_type=EvidenceType.SGX, id_key_digest=AZURE_ID_KEY)


# -- one validator: a value built in code and read from a file meets the same check ------

ONE_FAULT_TWO_FORMS: list[tuple[Callable[[], object], dict[str, Any], str]] = [
    (
        lambda: Policy(allowed_advisory_ids=["ok", 3]),  # type: ignore[arg-type]
        {"allowed_advisory_ids": ["ok", 3]},
        "allowed_advisory_ids[1]: expected an advisory ID like 'INTEL-SA-00615', got 3",
    ),
    (
        lambda: Policy(allowed_advisory_ids={"INTEL-SA-00289": 1}),  # type: ignore[arg-type]
        {"allowed_advisory_ids": {"INTEL-SA-00289": 1}},
        "allowed_advisory_ids: expected a list of IDs, got a table",
    ),
    (
        lambda: Policy(allow_debug=1),  # type: ignore[arg-type]
        {"allow_debug": 1},
        "allow_debug: expected true or false, got 1",
    ),
    (
        lambda: Policy(max_collateral_age="30 days"),  # type: ignore[arg-type]
        {"max_collateral_age": "30 days"},
        "max_collateral_age: expected a duration like '30d', '12h', '15m', '3600s' or an "
        "integer of seconds, got '30 days'",
    ),
    (
        lambda: Identity(evidence_type=EvidenceType.SGX, mrsigner=b"\0" * 31),
        {"allow": [{"type": "sgx-dcap", "mrsigner": "00" * 31}]},
        "mrsigner: expected 32 bytes (64 hex characters), got 31 bytes (62 hex characters)",
    ),
    (
        lambda: Identity(evidence_type="tpm"),  # type: ignore[arg-type]
        {"allow": [{"type": "tpm"}]},
        "expected one of sgx-dcap, tdx-dcap, sev-snp, sim, got 'tpm'",
    ),
    (
        Identity,
        {"allow": [{}]},
        "sets no field; an identity that matches anything must say so with its type "
        '(Identity(evidence_type=...), or type = "..." in a policy file)',
    ),
]


@pytest.mark.parametrize(("build", "file", "message"), ONE_FAULT_TWO_FORMS)
def test_code_and_file_forms_share_one_validator(
    build: Callable[[], object], file: dict[str, Any], message: str
) -> None:
    # Same words either way; only the address differs (field name, or the entry's key).
    with pytest.raises(PolicyError) as in_code:
        build()
    with pytest.raises(PolicyError) as from_file:
        Policy.from_dict(file)
    assert str(in_code.value).endswith(message)
    assert str(from_file.value).endswith(message)


def test_a_json_null_is_a_bad_value_not_an_unset_one() -> None:
    with pytest.raises(PolicyError, match="max_collateral_age: expected a duration"):
        Policy.from_dict({"max_collateral_age": None})
    with pytest.raises(PolicyError, match="min_snp_tcb: expected a table"):
        Policy.from_dict({"min_snp_tcb": None})
    assert Policy(max_collateral_age=None, min_snp_tcb=None).max_collateral_age is None
