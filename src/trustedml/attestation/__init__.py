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
from trustedml.attestation._verify import detect_evidence_type, get_verifier, verify_evidence

__all__ = [
    "Claims",
    "EvidenceProvider",
    "EvidenceType",
    "TcbStatus",
    "VerifiedEvidence",
    "Verifier",
    "detect_evidence_type",
    "get_verifier",
    "verify_evidence",
]
