"""Remote attestation: parse and verify Intel SGX/TDX and AMD SEV-SNP evidence,
appraise it against a policy, and produce evidence from the TEE a job runs in.

This layer depends on no other layer of trusted-ml and can be used alone.
"""

from trustedml.attestation._model import (
    Claims,
    EvidenceProvider,
    EvidenceType,
    TcbStatus,
    VerifiedEvidence,
    Verifier,
)
from trustedml.attestation._policy import Appraisal, Identity, Policy
from trustedml.attestation._providers import (
    TSM_REPORT_ROOT,
    ConfigfsTsmProvider,
    GramineProvider,
    get_provider,
)
from trustedml.attestation._sim import SimKey, SimProvider, SimVerifier
from trustedml.attestation._verify import (
    describe_evidence,
    detect_evidence_type,
    get_verifier,
    join_collateral,
    parse_evidence,
    verify_evidence,
)

__all__ = [
    "TSM_REPORT_ROOT",
    "Appraisal",
    "Claims",
    "ConfigfsTsmProvider",
    "EvidenceProvider",
    "EvidenceType",
    "GramineProvider",
    "Identity",
    "Policy",
    "SimKey",
    "SimProvider",
    "SimVerifier",
    "TcbStatus",
    "VerifiedEvidence",
    "Verifier",
    "describe_evidence",
    "detect_evidence_type",
    "get_provider",
    "get_verifier",
    "join_collateral",
    "parse_evidence",
    "verify_evidence",
]
