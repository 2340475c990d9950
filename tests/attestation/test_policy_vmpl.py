"""The SEV-SNP ``vmpl`` policy key, judged on test-signed reports that verify through
the real SNP verifier (a fake AMD chain built as in test_amd)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from tests.attestation.test_amd import (
    AT,
    GENOA_CHIP,
    endorsement_cert,
    fake_chain,
    sign_report,
)
from tests.hazmat.attestation.test_snp_layout import build_report
from trustedml.attestation import EvidenceType, Identity, Policy, VerifiedEvidence
from trustedml.errors import PolicyError


@functools.cache
def verified_at(vmpl: int) -> VerifiedEvidence:
    report = sign_report(
        build_report(version=3, cpuid=(0x19, 0x11, 0x01), chip_id=GENOA_CHIP, vmpl=vmpl)
    )
    vcek = endorsement_cert("Genoa", hwid=b"\x04\x40" + GENOA_CHIP)
    return fake_chain("Genoa").verifier.verify(report, collateral=vcek, at=AT)


def policy(vmpl: list[int] | None = None) -> Policy:
    # The test reports' guest policy has DEBUG set: allow it so only VMPL is judged.
    allow = (Identity(evidence_type=EvidenceType.SNP),)
    if vmpl is None:
        return Policy(allow=allow, allow_debug=True)
    return Policy(allow=allow, allow_debug=True, vmpl=frozenset(vmpl))


def test_the_reports_verify_and_carry_their_vmpl() -> None:
    assert verified_at(0).claims.vmpl == 0
    assert verified_at(1).claims.vmpl == 1


def test_default_policy_accepts_vmpl_0_only() -> None:
    assert Policy().vmpl == frozenset({0})
    assert policy().appraise(verified_at(0), at=AT).accepted
    refused = policy().appraise(verified_at(1), at=AT)
    assert not refused.accepted
    assert refused.reasons == ("SEV-SNP report from VMPL 1: expected one of [0] (policy key vmpl)",)


def test_a_policy_that_allows_vmpl_1_accepts_it() -> None:
    assert policy(vmpl=[0, 1]).appraise(verified_at(1), at=AT).accepted
    only_one = policy(vmpl=[1])
    assert only_one.appraise(verified_at(1), at=AT).accepted
    assert only_one.appraise(verified_at(0), at=AT).reasons == (
        "SEV-SNP report from VMPL 0: expected one of [1] (policy key vmpl)",
    )


def test_vmpl_from_toml_and_back(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('vmpl = [0, 1]\nallow_debug = true\n[[allow]]\ntype = "sev-snp"\n')
    loaded = Policy.load(path)
    assert loaded.vmpl == frozenset({0, 1})
    assert loaded.appraise(verified_at(1), at=AT).accepted
    assert loaded.to_dict()["vmpl"] == [0, 1]
    assert Policy.from_dict(json.loads(json.dumps(loaded.to_dict()))) == loaded
    assert Policy.from_dict({}).to_dict()["vmpl"] == [0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "vmpl: expected at least one VMPL level 0..3, got an empty list"),
        ([4], "vmpl[0]: expected an integer 0..3, got 4"),
        ([0, -1], "vmpl[1]: expected an integer 0..3, got -1"),
        ([True], "vmpl[0]: expected an integer 0..3, got true"),
        (["0"], "vmpl[0]: expected an integer 0..3, got '0'"),
        (0, "vmpl: expected a list of VMPL levels 0..3 like [0], got 0"),
        ("0", "vmpl: expected a list of VMPL levels 0..3 like [0], got '0'"),
    ],
)
def test_bad_vmpl_is_refused_at_construction(value: object, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy(vmpl=value)  # type: ignore[arg-type]
    assert str(info.value) == message
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"vmpl": value})
    assert str(info.value) == message


def test_vmpl_does_not_apply_to_other_evidence() -> None:
    from tests.attestation.test_policy import AT as POLICY_AT
    from tests.attestation.test_policy import SGX_POLICY, sgx_verified

    assert SGX_POLICY.appraise(sgx_verified(), at=POLICY_AT).accepted
