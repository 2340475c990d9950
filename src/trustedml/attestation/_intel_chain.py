"""Intel DCAP certificates and signed collateral (steps 3-6 of
:mod:`trustedml.attestation._intel`): the PCK chain to the trusted root, the root CA
and PCK CRLs, the TCB signing chains, revocation of every certificate used, then the
signatures and validity windows of the TCB info and QE identity."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from trustedml.attestation._intel_collateral import (
    EnclaveIdentity,
    IntelCollateral,
    TcbInfo,
    parse_enclave_identity,
    parse_tcb_info,
)
from trustedml.attestation._x509 import (
    check_current,
    check_validity,
    common_name,
    crl_signed_by,
    describe,
    ec_public_key,
    ecdsa_verifies,
    is_ca,
    issued_by,
    load_crl,
    load_pem_certificates,
    revocation,
    serial_number,
    unrecognized_extension,
)
from trustedml.errors import (
    CertificateChainError,
    CollateralError,
    EvidenceFormatError,
    UnsupportedEvidenceError,
)
from trustedml.hazmat.attestation.intel import (
    CERT_TYPE_PCK_CERT_CHAIN,
    SGX_EXTENSION_OID,
    PckExtension,
    Quote,
    parse_pck_extension,
)

__all__ = ["VerifiedCollateral", "raw_signature_ok", "verify_collateral"]

# Leaf, intermediate and root: Intel's chains are never longer.
_MAX_CHAIN = 4
_TCB_SIGNER = "Intel SGX TCB Signing"


@dataclass(frozen=True)
class VerifiedCollateral:
    """What the certificates and collateral establish for one quote: the PCK chain
    (leaf first, without the root), its SGX extension, the signed and current TCB info
    and QE identity, and the window all of it is valid in."""

    pck: tuple[x509.Certificate, ...]
    pck_ext: PckExtension
    tcb_info: TcbInfo
    qe_identity: EnclaveIdentity
    # Earliest issue among the short-lived items (TCB info, QE identity, PCK CRL): the
    # age of Intel's TCB verdict. The root CA CRL is reissued only yearly, so it would
    # make every collateral set look old.
    issued: datetime
    expires: datetime


def raw_signature_ok(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes) -> bool:
    """True when ``raw_sig`` (Intel's raw big-endian r || s, P-256) signs ``message``."""
    if len(raw_sig) != 64:
        return False
    r, s = int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    return ecdsa_verifies(key, r, s, message, hashes.SHA256())


@functools.lru_cache(maxsize=64)
def _collateral_signature_ok(signer: x509.Certificate, raw_sig: bytes, text: bytes) -> bool:
    key = ec_public_key(signer, ec.SECP256R1, "Intel SGX TCB Signing certificate")
    return raw_signature_ok(key, raw_sig, text)


def _load_chain(pem: bytes | str, what: str) -> tuple[x509.Certificate, ...]:
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    return load_pem_certificates(
        data, what, CertificateChainError, strict=True, max_count=_MAX_CHAIN
    )


def _verify_chain(
    certs: Sequence[x509.Certificate], root: x509.Certificate, at: datetime, what: str
) -> tuple[x509.Certificate, ...]:
    # Each certificate issued by the next, the last by the root, all valid at `at`;
    # returns the chain without the root.
    chain = list(certs)
    if chain and chain[-1] == root:
        chain.pop()
    if not chain:
        raise CertificateChainError(f"{what}: no certificate below the root")
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        check_validity(child, at, what)
        if parent is not root and not is_ca(parent):
            raise CertificateChainError(f"{what}: {describe(parent)} is not a CA certificate")
        if not issued_by(child, parent):
            raise CertificateChainError(
                f"{what}: {describe(child)} is not issued by {describe(parent)}"
                + (" (the trusted root)" if parent is root else "")
            )
    return tuple(chain)


def _pck_chain(quote: Quote, col: IntelCollateral) -> tuple[x509.Certificate, ...]:
    cert = quote.signature_data.pck_certification_data
    if cert.cert_type == CERT_TYPE_PCK_CERT_CHAIN:
        return _load_chain(cert.data, "PCK certificate chain in the certification data")
    if col.pck_certificate_chain is not None:
        return _load_chain(col.pck_certificate_chain, "collateral pck_certificate_chain")
    raise UnsupportedEvidenceError(
        f"certification data type {cert.cert_type}: only type 5 (PCK certificate chain) "
        "is supported, and the collateral has no pck_certificate_chain"
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


def _verify_crls(
    root: x509.Certificate, pck_leaf: x509.Certificate, col: IntelCollateral, at: datetime
) -> tuple[tuple[x509.CertificateRevocationList, ...], tuple[x509.Certificate, ...], datetime]:
    # (the root CA and PCK CRLs, the PCK CRL's issuer chain without the root, the
    # earlier of their next updates)
    root_crl = load_crl(col.root_ca_crl, "collateral root_ca_crl", CollateralError)
    if root_crl.issuer != root.subject or not crl_signed_by(col.root_ca_crl, root):
        raise CollateralError("root_ca_crl: not issued and signed by the trusted root")
    root_end = check_current("root_ca_crl", root_crl.last_update_utc, root_crl.next_update_utc, at)
    crl_chain = _verify_chain(
        _load_chain(col.pck_crl_issuer_chain, "collateral pck_crl_issuer_chain"),
        root,
        at,
        "pck_crl_issuer_chain",
    )
    pck_crl = load_crl(col.pck_crl, "collateral pck_crl", CollateralError)
    if pck_crl.issuer != crl_chain[0].subject or not crl_signed_by(col.pck_crl, crl_chain[0]):
        raise CollateralError(
            f"pck_crl: not issued and signed by {describe(crl_chain[0])} (pck_crl_issuer_chain)"
        )
    if pck_crl.issuer != pck_leaf.issuer:
        raise CollateralError(
            f"pck_crl: issued by {pck_crl.issuer.rfc4514_string()}, but the PCK "
            f"certificate by {pck_leaf.issuer.rfc4514_string()}"
        )
    pck_end = check_current("pck_crl", pck_crl.last_update_utc, pck_crl.next_update_utc, at)
    return (root_crl, pck_crl), crl_chain, min(root_end, pck_end)


def _tcb_signer(root: x509.Certificate, key: str, pem: str, at: datetime) -> x509.Certificate:
    chain = _verify_chain(_load_chain(pem, f"collateral {key}"), root, at, key)
    # Only Intel's TCB signing key, directly under the root, may sign TCB data: a PCK
    # key (which lives on a platform) must not be able to.
    if len(chain) != 1 or common_name(chain[0].subject) != _TCB_SIGNER:
        raise CertificateChainError(
            f"{key}: signer {describe(chain[0])} is not the Intel SGX TCB Signing "
            "certificate directly under the root"
        )
    return chain[0]


def _check_revocation(
    crls: Sequence[x509.CertificateRevocationList],
    chains: Sequence[tuple[str, Sequence[x509.Certificate]]],
) -> None:
    by_issuer = {crl.issuer: crl for crl in crls}
    for what, certs in chains:
        for cert in certs:
            crl = by_issuer.get(cert.issuer)
            if crl is None:
                raise CertificateChainError(
                    f"{what}: no CRL in the collateral covers {describe(cert)} "
                    f"(issuer {cert.issuer.rfc4514_string()})"
                )
            if revocation(crl, cert) is not None:
                raise CertificateChainError(
                    f"{what}: {describe(cert)} serial {serial_number(cert):#x} is revoked"
                )


def _verify_signed(name: str, text: str, signature: bytes, signer: x509.Certificate) -> None:
    # Intel signs the exact JSON text of the body, so verify before parsing.
    if not _collateral_signature_ok(signer, signature, text.encode("utf-8")):
        raise CollateralError(f"{name}_signature: does not verify over {name}")


def verify_collateral(
    root: x509.Certificate, quote: Quote, col: IntelCollateral, at: datetime
) -> VerifiedCollateral:
    """Steps 3-6 of the Intel verification order, as of ``at``."""
    check_validity(root, at, "trusted root")
    pck = _verify_chain(_pck_chain(quote, col), root, at, "PCK certificate chain")
    if "SGX PCK Certificate" not in common_name(pck[0].subject):
        raise CertificateChainError(
            f"PCK certificate chain: leaf {describe(pck[0])} is not an SGX PCK Certificate"
        )
    pck_ext = _pck_extension(pck[0])
    crls, crl_chain, crls_expire = _verify_crls(root, pck[0], col, at)
    tcb_signer = _tcb_signer(root, "tcb_info_issuer_chain", col.tcb_info_issuer_chain, at)
    qe_signer = _tcb_signer(root, "qe_identity_issuer_chain", col.qe_identity_issuer_chain, at)
    _check_revocation(
        crls,
        (
            ("trusted root", (root,)),
            ("PCK certificate chain", pck),
            ("pck_crl_issuer_chain", crl_chain),
            ("tcb_info_issuer_chain", (tcb_signer,)),
            ("qe_identity_issuer_chain", (qe_signer,)),
        ),
    )

    _verify_signed("tcb_info", col.tcb_info, col.tcb_info_signature, tcb_signer)
    tcb_info = parse_tcb_info(col.tcb_info)
    check_current("tcb_info", tcb_info.issue_date, tcb_info.next_update, at)
    _verify_signed("qe_identity", col.qe_identity, col.qe_identity_signature, qe_signer)
    qe_identity = parse_enclave_identity(col.qe_identity)
    check_current("qe_identity", qe_identity.issue_date, qe_identity.next_update, at)
    return VerifiedCollateral(
        pck=pck,
        pck_ext=pck_ext,
        tcb_info=tcb_info,
        qe_identity=qe_identity,
        issued=min(tcb_info.issue_date, qe_identity.issue_date, crls[1].last_update_utc),
        expires=min(tcb_info.next_update, qe_identity.next_update, crls_expire),
    )
