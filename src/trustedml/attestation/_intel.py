"""Verification of Intel DCAP quotes (SGX quote v3, TDX quote v4/v5) against Intel's
collateral, the way Intel's Quote Verification Library (QVL) and Phala's dcap-qvl do.

Collateral is the dcap-qvl ``QuoteCollateralV3`` JSON object (see
:class:`IntelCollateral`). The trust anchor is the Intel SGX Root CA, pinned in the
package (``roots/intel_sgx_root_ca.der``, checked against its SHA-256 here).

Verification order (the first failure raises; later steps never run):

1. Parse the quote (:class:`~trustedml.errors.EvidenceFormatError`,
   :class:`~trustedml.errors.UnsupportedEvidenceError`): version, attestation key
   type, TEE type (must match the verifier's evidence type), Intel QE vendor ID,
   certification data type 5 (PCK chain), directly or inside type 6.
2. Parse the collateral JSON (:class:`~trustedml.errors.CollateralError` naming the key).
3. The pinned root and the PCK chain from the quote: each certificate directly issued
   by the next, the last by the pinned root, all valid at ``at``; the leaf is an
   "SGX PCK Certificate" (:class:`~trustedml.errors.CertificateChainError`).
4. CRLs: the root CA CRL signed by the root, the PCK CRL signed by the first
   certificate of ``pck_crl_issuer_chain`` (itself chained to the root) and issued
   by the PCK leaf's issuer; both current at ``at`` (CollateralError /
   :class:`~trustedml.errors.CollateralExpiredError`). Then revocation of every
   certificate used (CertificateChainError naming the serial).
5. TCB info: issuer chain = "Intel SGX TCB Signing" directly under the root, not
   revoked; raw P-256 signature over the exact ``tcb_info`` text; then parsed and
   its issueDate..nextUpdate must contain ``at``.
6. QE identity: the same, over ``qe_identity``.
7. QE report signature with the PCK leaf key
   (:class:`~trustedml.errors.EvidenceSignatureError`).
8. QE report_data[0:32] == SHA-256(attestation key || QE auth data)
   (:class:`~trustedml.errors.EvidenceBindingError`).
9. Quote signature over header and body with the attestation key (EvidenceSignatureError).
10. QE identity match: id for the TEE type (CollateralError), MRSIGNER, ISVPRODID,
    masked MISCSELECT and ATTRIBUTES (EvidenceBindingError); the QE's ISVSVN picks
    the QE TCB level (:class:`~trustedml.errors.TcbLevelNotFoundError` if none).
11. TCB info against the platform: id/version for the TEE type, PCK FMSPC and
    PCE-ID equal the TCB info's (CollateralError).
12. TDX only: TDX module identity (``tdxModule``, or ``tdxModuleIdentities`` entry
    ``TDX_<TEE_TCB_SVN[1]>`` when TEE_TCB_SVN[1] > 0): MRSIGNER_SEAM and masked
    SEAM_ATTRIBUTES (EvidenceBindingError) and the module TCB level by TEE_TCB_SVN[0].
13. TCB level: the first level (in the signed order) whose 16 SGX components and
    PCESVN are all <= the PCK certificate's; for TDX also the TDX components
    (from index 2 when TEE_TCB_SVN[1] > 0) <= TEE_TCB_SVN. None: TcbLevelNotFoundError.
14. Status: the level's status, converged with the TDX module status and then the QE
    status as QVL does; advisory IDs are the union of the matched platform, TDX module
    and QE levels' (platform first, duplicates dropped).

Steps 3-6 live in :mod:`~trustedml.attestation._intel_chain`, 10-14 in
:mod:`~trustedml.attestation._intel_tcb`; this module parses, checks the quote's own
signatures (7-9) and builds the claims.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from trustedml.attestation._intel_chain import raw_signature_ok, verify_collateral
from trustedml.attestation._intel_collateral import (
    EnclaveIdentity,
    IntelCollateral,
    TcbInfo,
    TcbLevel,
)
from trustedml.attestation._intel_tcb import check_platform, identity_status, match_qe, match_tcb
from trustedml.attestation._model import (
    Claims,
    EvidenceType,
    TcbStatus,
    VerifiedEvidence,
    require_aware,
)
from trustedml.attestation._x509 import (
    describe,
    ec_public_key,
    load_der_certificate,
    pinned_certificate,
)
from trustedml.errors import (
    CertificateChainError,
    CollateralError,
    ConfigError,
    EvidenceBindingError,
    EvidenceSignatureError,
    UnsupportedEvidenceError,
)
from trustedml.hazmat.attestation.intel import (
    INTEL_QE_VENDOR_ID,
    PckExtension,
    Quote,
    TdReport10,
    TdReport15,
    parse_quote,
)

__all__ = [
    "INTEL_SGX_ROOT_CA_SHA256",
    "EnclaveIdentity",
    "IntelCollateral",
    "IntelVerifier",
    "TcbInfo",
    "parse_quote",
]

# SHA-256 of the DER Intel SGX Root CA certificate (CN=Intel SGX Root CA, P-256,
# valid 2018-05-21..2049-12-31); a swapped package file fails this check.
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
_ROOT_RESOURCE = "roots/intel_sgx_root_ca.der"


@functools.cache
def _pinned_root() -> x509.Certificate:
    return pinned_certificate(
        _ROOT_RESOURCE, INTEL_SGX_ROOT_CA_SHA256, "packaged Intel SGX Root CA"
    )


class IntelVerifier:
    """Verifies Intel DCAP quotes of one evidence type (SGX quote v3, or TDX quote
    v4/v5) with dcap-qvl ``QuoteCollateralV3`` JSON collateral.

    ``root_ca_der`` replaces the pinned Intel SGX Root CA (tests, private PKIs).
    """

    def __init__(self, evidence_type: EvidenceType, root_ca_der: bytes | None = None) -> None:
        if evidence_type not in (EvidenceType.SGX, EvidenceType.TDX):
            raise ConfigError(
                f"IntelVerifier: evidence type must be sgx-dcap or tdx-dcap, got {evidence_type}"
            )
        self._type = evidence_type
        if root_ca_der is None:
            self._root = _pinned_root()
        else:
            try:
                self._root = load_der_certificate(
                    bytes(root_ca_der), "root_ca_der", CertificateChainError
                )
            except CertificateChainError as exc:
                raise ConfigError(str(exc)) from exc

    @property
    def evidence_type(self) -> EvidenceType:
        return self._type

    def verify(
        self, evidence: bytes, *, collateral: bytes | None, at: datetime
    ) -> VerifiedEvidence:
        """Verify ``evidence`` against ``collateral`` as of ``at`` (timezone-aware).

        See the module documentation for the order of checks and what each raises.
        """
        require_aware(at)
        quote = parse_quote(evidence)
        self._check_quote(quote)
        if collateral is None:
            raise CollateralError(
                "collateral: Intel DCAP verification needs the QuoteCollateralV3 JSON"
            )
        col = IntelCollateral.from_json(collateral)
        checks: list[str] = [f"parsed {self._type.value} quote v{quote.version}"]

        verified = verify_collateral(self._root, quote, col, at)
        tcb_info, qe_identity = verified.tcb_info, verified.qe_identity
        checks.append(f"PCK chain, CRLs and collateral signers verified to {describe(self._root)}")
        checks.append(
            f"TCB info v{tcb_info.version} ({tcb_info.id}, evaluation data number "
            f"{tcb_info.tcb_evaluation_data_number}) and QE identity {qe_identity.id} "
            "signed by Intel"
        )
        _verify_quote_signatures(quote, verified.pck[0])
        checks.append("QE report signed by the PCK key, binds the attestation key; quote signed")

        qe_level = match_qe(self._type, quote.signature_data.qe_report, qe_identity)
        qe_status = identity_status(qe_level.status, "qe_identity")
        checks.append(f"QE identity matched: ISVSVN level {qe_level.isv_svn} {qe_status.value}")
        check_platform(quote, tcb_info, verified.pck_ext)

        extra: dict[str, Any] = {}
        status, advisories, level = match_tcb(
            quote, tcb_info, verified.pck_ext, qe_status, qe_level, extra, checks
        )
        checks.append(f"TCB level {level.tcb_date} {level.status}; final status {status.value}")
        return VerifiedEvidence(
            claims=self._claims(quote, tcb_info, verified.pck_ext, level, qe_status, extra),
            tcb_status=status,
            advisory_ids=advisories,
            collateral_issued=verified.issued,
            collateral_expires=verified.expires,
            checks=tuple(checks),
        )

    def _check_quote(self, quote: Quote) -> None:
        kind = EvidenceType.TDX if quote.is_tdx else EvidenceType.SGX
        if kind is not self._type:
            raise UnsupportedEvidenceError(
                f"quote TEE type: this verifier checks {self._type.value}, got {kind.value}"
            )
        if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
            raise UnsupportedEvidenceError(
                f"quote header qe_vendor_id: expected Intel's {INTEL_QE_VENDOR_ID.hex()}, "
                f"got {quote.header.qe_vendor_id.hex()}"
            )

    def _claims(
        self,
        quote: Quote,
        info: TcbInfo,
        ext: PckExtension,
        level: TcbLevel,
        qe_status: TcbStatus,
        extra: dict[str, Any],
    ) -> Claims:
        qe = quote.signature_data.qe_report
        extra.update(
            {
                "quote_version": quote.version,
                "fmspc": ext.fmspc.hex(),
                "pce_id": ext.pce_id.hex(),
                "pce_svn": ext.pce_svn,
                "cpusvn": ext.cpusvn.hex(),
                "sgx_type": ext.sgx_type_name,
                "qe_svn": qe.isv_svn,
                "qe_tcb_status": qe_status.value,
                "platform_tcb_status": level.status,
                "tcb_date": level.tcb_date,
                "tcb_evaluation_data_number": info.tcb_evaluation_data_number,
            }
        )
        body = quote.body
        if isinstance(body, TdReport10):
            extra.update(
                {
                    "tee_tcb_svn": body.tee_tcb_svn.hex(),
                    "td_attributes": body.td_attributes.hex(),
                    "xfam": body.xfam.hex(),
                    "mr_signer_seam": body.mr_signer_seam.hex(),
                    "mr_owner_config": body.mr_owner_config.hex(),
                }
            )
            if isinstance(body, TdReport15):
                extra["tee_tcb_svn2"] = body.tee_tcb_svn2.hex()
                extra["mr_servicetd"] = body.mr_servicetd.hex()
            return Claims(
                evidence_type=EvidenceType.TDX,
                report_data=body.report_data,
                debug=body.debug,
                mrtd=body.mr_td,
                rtmrs=body.rtmrs,
                mr_seam=body.mr_seam,
                mr_config_id=body.mr_config_id,
                mr_owner=body.mr_owner,
                extra=extra,
            )
        extra.update(
            {
                "attributes": body.attributes.hex(),
                "miscselect": body.miscselect_bytes.hex(),
                "report_cpusvn": body.cpusvn.hex(),
                "config_svn": body.config_svn,
            }
        )
        return Claims(
            evidence_type=EvidenceType.SGX,
            report_data=body.report_data,
            debug=body.debug,
            mrenclave=body.mrenclave,
            mrsigner=body.mrsigner,
            isv_prod_id=body.isv_prod_id,
            isv_svn=body.isv_svn,
            extra=extra,
        )


def _verify_quote_signatures(quote: Quote, pck_leaf: x509.Certificate) -> None:
    # Steps 7-9: the PCK key signs the QE report, whose report_data binds the
    # attestation key, which signs the quote.
    sig = quote.signature_data
    if not raw_signature_ok(
        ec_public_key(pck_leaf, ec.SECP256R1, "PCK certificate"),
        sig.qe_report_signature,
        sig.qe_report.raw,
    ):
        raise EvidenceSignatureError(
            "QE report signature: does not verify with the PCK certificate's key"
        )
    expected = hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest()
    if sig.qe_report.report_data[:32] != expected:
        raise EvidenceBindingError(
            "QE report_data[0:32]: is not SHA-256(attestation key || QE auth data)"
        )
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + sig.attestation_key
        )
    except ValueError:
        raise EvidenceSignatureError("attestation key: not a P-256 point") from None
    if not raw_signature_ok(key, sig.signature, quote.signed_bytes):
        raise EvidenceSignatureError(
            "quote signature: does not verify over header and body with the attestation key"
        )
