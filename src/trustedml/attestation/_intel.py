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
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from trustedml.attestation._intel_collateral import (
    EnclaveIdentity,
    IdentityTcbLevel,
    IntelCollateral,
    TcbInfo,
    TcbLevel,
    parse_enclave_identity,
    parse_tcb_info,
)
from trustedml.attestation._intel_tcb import (
    converge,
    identity_status,
    masked_equal,
    match_identity_level,
    relaunch_advised,
    tcb_status,
    tdx_components_ok,
    union,
)
from trustedml.attestation._model import (
    Claims,
    EvidenceType,
    TcbStatus,
    VerifiedEvidence,
    require_aware,
)
from trustedml.attestation._x509 import (
    ErrorType,
    check_validity,
    common_name,
    crl_signed_by,
    describe,
    ec_public_key,
    is_ca,
    issued_by,
    load_crl,
    load_der_certificate,
    load_pem_certificates,
    revocation,
    serial_number,
    unrecognized_extension,
)
from trustedml.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ConfigError,
    EvidenceBindingError,
    EvidenceFormatError,
    EvidenceSignatureError,
    TcbLevelNotFoundError,
    UnsupportedEvidenceError,
)
from trustedml.hazmat.attestation.intel import (
    CERT_TYPE_PCK_CERT_CHAIN,
    INTEL_QE_VENDOR_ID,
    SGX_EXTENSION_OID,
    PckExtension,
    Quote,
    SgxReportBody,
    TdReport10,
    TdReport15,
    parse_pck_extension,
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

# Leaf, intermediate and root: Intel's chains are never longer.
_ENCLAVE_IDS = {EvidenceType.SGX: ("QE", (2,)), EvidenceType.TDX: ("TD_QE", (2, 3))}


# --- certificates, CRLs, signatures ----------------------------------------------------


# Leaf, intermediate and root: Intel's chains are never longer.
_MAX_CHAIN = 4


def _load_chain(pem: bytes, what: str, error: ErrorType) -> tuple[x509.Certificate, ...]:
    return load_pem_certificates(pem, what, error, strict=True, max_count=_MAX_CHAIN)


def _load_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    return load_crl(data, f"collateral {what}", CollateralError)


def _raw_signature_ok(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes) -> bool:
    if len(raw_sig) != 64:
        return False
    der = encode_dss_signature(
        int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    )
    try:
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _collateral_signature_ok(signer: x509.Certificate, raw_sig: bytes, text: bytes) -> bool:
    key = ec_public_key(signer, ec.SECP256R1, "Intel SGX TCB Signing certificate")
    return _raw_signature_ok(key, raw_sig, text)


def _cn(cert: x509.Certificate) -> str:
    return common_name(cert.subject)


def _check_window(
    what: str, start: datetime, end: datetime | None, at: datetime, end_name: str
) -> None:
    if end is None:
        raise CollateralError(f"{what}: has no {end_name}")
    if at < start:
        raise CollateralExpiredError(
            f"{what}: not valid yet at {at.isoformat()} (issued {start.isoformat()})"
        )
    if at > end:
        raise CollateralExpiredError(
            f"{what}: expired at {at.isoformat()} ({end_name} {end.isoformat()})"
        )


@functools.cache
def _pinned_root() -> x509.Certificate:
    der = resources.files("trustedml.attestation").joinpath(_ROOT_RESOURCE).read_bytes()
    digest = hashlib.sha256(der).hexdigest()
    if digest != INTEL_SGX_ROOT_CA_SHA256:
        raise CertificateChainError(
            f"packaged Intel SGX Root CA {_ROOT_RESOURCE}: SHA-256 {digest} is not the pinned "
            f"{INTEL_SGX_ROOT_CA_SHA256}"
        )
    return load_der_certificate(
        der, f"packaged Intel SGX Root CA {_ROOT_RESOURCE}", CertificateChainError
    )


@dataclass(frozen=True)
class _Chains:
    pck: tuple[x509.Certificate, ...]
    pck_ext: PckExtension
    tcb_signer: x509.Certificate
    qe_signer: x509.Certificate


def _verify_signed(name: str, text: str, signature: bytes, signer: x509.Certificate) -> None:
    # Intel signs the exact JSON text of the body, so verify before parsing.
    if not _collateral_signature_ok(signer, signature, text.encode("utf-8")):
        raise CollateralError(f"{name}_signature: does not verify over {name}")


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

        chains = self._verify_certificates(quote, col, at)
        checks.append(f"PCK chain, CRLs and collateral signers verified to {describe(self._root)}")
        tcb_info = self._verify_tcb_info(col, chains.tcb_signer, at)
        qe_identity = self._verify_qe_identity(col, chains.qe_signer, at)
        checks.append(
            f"TCB info v{tcb_info.version} ({tcb_info.id}, evaluation data number "
            f"{tcb_info.tcb_evaluation_data_number}) and QE identity {qe_identity.id} "
            "signed by Intel"
        )
        self._verify_quote_signatures(quote, chains.pck[0])
        checks.append("QE report signed by the PCK key, binds the attestation key; quote signed")

        qe_level = self._match_qe(quote.signature_data.qe_report, qe_identity)
        qe_status = identity_status(qe_level.status, "qe_identity")
        checks.append(f"QE identity matched: ISVSVN level {qe_level.isv_svn} {qe_status.value}")
        self._check_platform(quote, tcb_info, chains.pck_ext)

        extra: dict[str, Any] = {}
        status, advisories, level = self._match_tcb(
            quote, tcb_info, chains.pck_ext, qe_status, qe_level, extra, checks
        )
        checks.append(f"TCB level {level.tcb_date} {level.status}; final status {status.value}")
        return VerifiedEvidence(
            claims=self._claims(quote, tcb_info, chains.pck_ext, level, qe_status, extra),
            tcb_status=status,
            advisory_ids=advisories,
            # Earliest issue among the short-lived items (TCB info, QE identity, PCK
            # CRL): the age of Intel's TCB verdict. The root CA CRL is reissued only
            # yearly, so it would make every collateral set look old.
            collateral_issued=min(
                tcb_info.issue_date,
                qe_identity.issue_date,
                _load_crl(col.pck_crl, "pck_crl").last_update_utc,
            ),
            collateral_expires=min(
                tcb_info.next_update,
                qe_identity.next_update,
                *(
                    _crl_next_update(_load_crl(data, what), what)
                    for data, what in ((col.root_ca_crl, "root_ca_crl"), (col.pck_crl, "pck_crl"))
                ),
            ),
            checks=tuple(checks),
        )

    # -- steps ---------------------------------------------------------------------------

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

    def _pck_chain(self, quote: Quote, col: IntelCollateral) -> tuple[x509.Certificate, ...]:
        cert = quote.signature_data.pck_certification_data
        if cert.cert_type == CERT_TYPE_PCK_CERT_CHAIN:
            return _load_chain(
                cert.data, "PCK certificate chain in the certification data", CertificateChainError
            )
        if col.pck_certificate_chain is not None:
            return _load_chain(
                col.pck_certificate_chain.encode("ascii", "replace"),
                "collateral pck_certificate_chain",
                CertificateChainError,
            )
        raise UnsupportedEvidenceError(
            f"certification data type {cert.cert_type}: only type 5 (PCK certificate chain) "
            "is supported, and the collateral has no pck_certificate_chain"
        )

    def _verify_chain(
        self, certs: Sequence[x509.Certificate], at: datetime, what: str
    ) -> tuple[x509.Certificate, ...]:
        # Each certificate issued by the next, the last by the root, all valid at
        # `at`; returns the chain without the root.
        chain = list(certs)
        if chain and chain[-1] == self._root:
            chain.pop()
        if not chain:
            raise CertificateChainError(f"{what}: no certificate below the root")
        for child, parent in zip(chain, [*chain[1:], self._root], strict=True):
            check_validity(child, at, what)
            if parent is not self._root and not is_ca(parent):
                raise CertificateChainError(f"{what}: {describe(parent)} is not a CA certificate")
            if not issued_by(child, parent):
                raise CertificateChainError(
                    f"{what}: {describe(child)} is not issued by {describe(parent)}"
                    + (" (the trusted root)" if parent is self._root else "")
                )
        return tuple(chain)

    def _verify_certificates(self, quote: Quote, col: IntelCollateral, at: datetime) -> _Chains:
        check_validity(self._root, at, "trusted root")
        pck = self._verify_chain(self._pck_chain(quote, col), at, "PCK certificate chain")
        if "SGX PCK Certificate" not in _cn(pck[0]):
            raise CertificateChainError(
                f"PCK certificate chain: leaf {describe(pck[0])} is not an SGX PCK Certificate"
            )
        pck_ext = _pck_extension(pck[0])

        root_crl = _load_crl(col.root_ca_crl, "root_ca_crl")
        if root_crl.issuer != self._root.subject or not crl_signed_by(col.root_ca_crl, self._root):
            raise CollateralError("root_ca_crl: not issued and signed by the trusted root")
        _check_window(
            "root_ca_crl", root_crl.last_update_utc, root_crl.next_update_utc, at, "nextUpdate"
        )
        crl_chain = self._verify_chain(
            _load_chain(
                col.pck_crl_issuer_chain.encode("ascii", "replace"),
                "collateral pck_crl_issuer_chain",
                CertificateChainError,
            ),
            at,
            "pck_crl_issuer_chain",
        )
        pck_crl = _load_crl(col.pck_crl, "pck_crl")
        if pck_crl.issuer != crl_chain[0].subject or not crl_signed_by(col.pck_crl, crl_chain[0]):
            raise CollateralError(
                f"pck_crl: not issued and signed by {describe(crl_chain[0])} (pck_crl_issuer_chain)"
            )
        if pck_crl.issuer != pck[0].issuer:
            raise CollateralError(
                f"pck_crl: issued by {pck_crl.issuer.rfc4514_string()}, but the PCK "
                f"certificate by {pck[0].issuer.rfc4514_string()}"
            )
        _check_window("pck_crl", pck_crl.last_update_utc, pck_crl.next_update_utc, at, "nextUpdate")

        signers = []
        for key, pem in (
            ("tcb_info_issuer_chain", col.tcb_info_issuer_chain),
            ("qe_identity_issuer_chain", col.qe_identity_issuer_chain),
        ):
            chain = self._verify_chain(
                _load_chain(
                    pem.encode("ascii", "replace"), f"collateral {key}", CertificateChainError
                ),
                at,
                key,
            )
            # Only Intel's TCB signing key, directly under the root, may sign TCB data:
            # a PCK key (which lives on a platform) must not be able to.
            if len(chain) != 1 or _cn(chain[0]) != "Intel SGX TCB Signing":
                raise CertificateChainError(
                    f"{key}: signer {describe(chain[0])} is not the Intel SGX TCB Signing "
                    "certificate directly under the root"
                )
            signers.append(chain[0])

        crls = {root_crl.issuer: root_crl, pck_crl.issuer: pck_crl}
        for what, certs in (
            ("trusted root", (self._root,)),
            ("PCK certificate chain", pck),
            ("pck_crl_issuer_chain", crl_chain),
            ("tcb_info_issuer_chain", (signers[0],)),
            ("qe_identity_issuer_chain", (signers[1],)),
        ):
            for cert in certs:
                crl = crls.get(cert.issuer)
                if crl is None:
                    raise CertificateChainError(
                        f"{what}: no CRL in the collateral covers {describe(cert)} "
                        f"(issuer {cert.issuer.rfc4514_string()})"
                    )
                if revocation(crl, cert) is not None:
                    raise CertificateChainError(
                        f"{what}: {describe(cert)} serial {serial_number(cert):#x} is revoked"
                    )
        return _Chains(pck, pck_ext, signers[0], signers[1])

    def _verify_tcb_info(
        self, col: IntelCollateral, signer: x509.Certificate, at: datetime
    ) -> TcbInfo:
        _verify_signed("tcb_info", col.tcb_info, col.tcb_info_signature, signer)
        info = parse_tcb_info(col.tcb_info)
        _check_window("tcb_info", info.issue_date, info.next_update, at, "nextUpdate")
        return info

    def _verify_qe_identity(
        self, col: IntelCollateral, signer: x509.Certificate, at: datetime
    ) -> EnclaveIdentity:
        _verify_signed("qe_identity", col.qe_identity, col.qe_identity_signature, signer)
        identity = parse_enclave_identity(col.qe_identity)
        _check_window("qe_identity", identity.issue_date, identity.next_update, at, "nextUpdate")
        return identity

    def _verify_quote_signatures(self, quote: Quote, pck_leaf: x509.Certificate) -> None:
        sig = quote.signature_data
        if not _raw_signature_ok(
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
        if not _raw_signature_ok(key, sig.signature, quote.signed_bytes):
            raise EvidenceSignatureError(
                "quote signature: does not verify over header and body with the attestation key"
            )

    def _match_qe(self, report: SgxReportBody, identity: EnclaveIdentity) -> IdentityTcbLevel:
        expected_id, versions = _ENCLAVE_IDS[self._type]
        if identity.id != expected_id or identity.version not in versions:
            raise CollateralError(
                f"qe_identity: id {identity.id!r} version {identity.version} is not the "
                f"{expected_id} identity (version {' or '.join(map(str, versions))}) a "
                f"{self._type.value} quote needs"
            )
        if report.mrsigner != identity.mrsigner:
            raise EvidenceBindingError(
                f"QE report MRSIGNER {report.mrsigner.hex()} is not the QE identity's "
                f"{identity.mrsigner.hex()}"
            )
        if report.isv_prod_id != identity.isv_prod_id:
            raise EvidenceBindingError(
                f"QE report ISVPRODID {report.isv_prod_id} is not the QE identity's "
                f"{identity.isv_prod_id}"
            )
        if not masked_equal(report.miscselect_bytes, identity.miscselect, identity.miscselect_mask):
            raise EvidenceBindingError(
                f"QE report MISCSELECT {report.miscselect_bytes.hex()} does not match the QE "
                f"identity's {identity.miscselect.hex()} under mask "
                f"{identity.miscselect_mask.hex()}"
            )
        if not masked_equal(report.attributes, identity.attributes, identity.attributes_mask):
            raise EvidenceBindingError(
                f"QE report ATTRIBUTES {report.attributes.hex()} do not match the QE identity's "
                f"{identity.attributes.hex()} under mask {identity.attributes_mask.hex()}"
            )
        return match_identity_level(identity.tcb_levels, report.isv_svn, "QE report")

    def _check_platform(self, quote: Quote, info: TcbInfo, ext: PckExtension) -> None:
        if quote.is_tdx and (info.version < 3 or info.id != "TDX"):
            raise CollateralError(
                f"tcb_info: a TDX quote needs TDX TCB info v3, got {info.id} v{info.version}"
            )
        if not quote.is_tdx and info.id != "SGX":
            raise CollateralError(f"tcb_info: an SGX quote needs SGX TCB info, got {info.id}")
        if ext.fmspc != info.fmspc:
            raise CollateralError(
                f"tcb_info fmspc {info.fmspc.hex().upper()} is not the PCK certificate's "
                f"{ext.fmspc.hex().upper()}"
            )
        if ext.pce_id != info.pce_id:
            raise CollateralError(
                f"tcb_info pceId {info.pce_id.hex().upper()} is not the PCK certificate's "
                f"{ext.pce_id.hex().upper()}"
            )

    def _tdx_module(
        self, body: TdReport10, info: TcbInfo
    ) -> tuple[TcbStatus, IdentityTcbLevel | None]:
        version = body.tee_tcb_svn[1]
        level: IdentityTcbLevel | None = None
        if info.tdx_module is None:
            raise CollateralError("tcb_info: key 'tdxModule' is missing")
        expected = info.tdx_module
        if version > 0:
            if info.tdx_module_identities is None:
                raise CollateralError(
                    f"tcb_info: key 'tdxModuleIdentities' is missing, but the TDX module "
                    f"version (TEE_TCB_SVN[1]) is {version}"
                )
            wanted = f"TDX_{version:02X}"
            found = [m for m in info.tdx_module_identities if m.id.upper() == wanted]
            if not found:
                raise TcbLevelNotFoundError(
                    f"tcb_info: no TDX module identity {wanted} for TEE_TCB_SVN[1] = {version}"
                )
            expected = found[0]
        if body.mr_signer_seam != expected.mrsigner:
            raise EvidenceBindingError(
                f"TD report MRSIGNER_SEAM {body.mr_signer_seam.hex()} is not the TDX module "
                f"identity's {expected.mrsigner.hex()}"
            )
        if not masked_equal(body.seam_attributes, expected.attributes, expected.attributes_mask):
            raise EvidenceBindingError(
                f"TD report SEAM_ATTRIBUTES {body.seam_attributes.hex()} do not match the TDX "
                f"module identity's {expected.attributes.hex()}"
            )
        if version == 0:
            return TcbStatus.UP_TO_DATE, None
        level = match_identity_level(
            expected.tcb_levels, body.tee_tcb_svn[0], f"TDX module {expected.id}"
        )
        return identity_status(level.status, f"tcb_info TDX module {expected.id}"), level

    def _match_tcb(
        self,
        quote: Quote,
        info: TcbInfo,
        ext: PckExtension,
        qe_status: TcbStatus,
        qe_level: IdentityTcbLevel,
        extra: dict[str, Any],
        checks: list[str],
    ) -> tuple[TcbStatus, tuple[str, ...], TcbLevel]:
        body = quote.body
        tdx = body if isinstance(body, TdReport10) else None
        module_status, module_level = TcbStatus.UP_TO_DATE, None
        if tdx is not None:
            module_status, module_level = self._tdx_module(tdx, info)
            checks.append(f"TDX module identity matched, module status {module_status.value}")
        sgx_level = tdx_level = None
        for level in info.tcb_levels:
            if ext.pce_svn < level.pce_svn or any(
                have < need
                for have, need in zip(ext.tcb_components, level.sgx_components, strict=True)
            ):
                continue
            if tdx is None:
                sgx_level = level
                break
            if sgx_level is None:
                sgx_level = level
            if tdx_components_ok(tdx.tee_tcb_svn, level):
                tdx_level = level
                break
        if sgx_level is None:
            raise TcbLevelNotFoundError(
                f"tcb_info: no TCB level matches the PCK certificate's TCB (SGX components "
                f"{list(ext.tcb_components)}, PCESVN {ext.pce_svn})"
            )
        sgx_status = tcb_status(sgx_level.status, "tcb_info")
        if tdx is None:
            return (
                converge(sgx_status, qe_status),
                union(sgx_level.advisory_ids, qe_level.advisory_ids),
                sgx_level,
            )
        if tdx_level is None:
            raise TcbLevelNotFoundError(
                f"tcb_info: no TCB level matches TEE_TCB_SVN {tdx.tee_tcb_svn.hex()} together "
                f"with the PCK certificate's TCB (SGX components {list(ext.tcb_components)}, "
                f"PCESVN {ext.pce_svn})"
            )
        tdx_status = converge(tcb_status(tdx_level.status, "tcb_info"), module_status)
        if isinstance(tdx, TdReport15) and tdx_status is not TcbStatus.REVOKED:
            extra["td_relaunch_advised"] = relaunch_advised(
                tdx, info, sgx_status, tdx_status, module_status, qe_status
            )
        return (
            converge(tdx_status, qe_status),
            union(
                tdx_level.advisory_ids,
                module_level.advisory_ids if module_level else (),
                qe_level.advisory_ids,
            ),
            tdx_level,
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


@functools.lru_cache(maxsize=64)
def _pck_extension(cert: x509.Certificate) -> PckExtension:
    value = unrecognized_extension(cert, SGX_EXTENSION_OID)
    if value is None:
        raise CertificateChainError(
            f"PCK certificate {describe(cert)}: has no SGX extension ({SGX_EXTENSION_OID})"
        )
    try:
        return parse_pck_extension(value)
    except EvidenceFormatError as exc:
        raise CertificateChainError(f"PCK certificate {describe(cert)}: {exc}") from exc


def _crl_next_update(crl: x509.CertificateRevocationList, what: str) -> datetime:
    if crl.next_update_utc is None:
        raise CollateralError(f"{what}: has no nextUpdate")
    return crl.next_update_utc
