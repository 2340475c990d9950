"""AMD SEV-SNP verification: attestation report + VCEK/VLEK certificate chain to a
pinned AMD root key, the way go-sev-guest and virtee/sev verify.

Checks, in order (each failure raises the named error):

1. parse the report (:class:`EvidenceFormatError` / :class:`UnsupportedEvidenceError`);
   evidence longer than 0x4A0 bytes is an extended report whose tail must be a GHCB
   certificate table; then parse the collateral (:class:`CollateralError`);
2. pick the endorsement key from SIGNING_KEY (read in every version; older firmware
   leaves it 0): VCEK (0) or VLEK (1); an unsigned report (7) is an
   :class:`EvidenceSignatureError`;
3. find exactly one such certificate (CN ``SEV-VCEK`` / ``SEV-VLEK``) among the
   collateral and the extended report's certificates (:class:`CollateralError`);
4. chain: VCEK <- ASK (or VLEK <- ASVK) <- pinned ARK of the product named by the
   certificate's issuer (``SEV-Milan``, ``SEV-VLEK-Genoa``...), RSASSA-PSS signatures,
   every certificate valid at ``at``; an ARK in the collateral must be a pinned one;
   the endorsement key must be ECDSA P-384 (:class:`CertificateChainError`);
5. the report signature, ECDSA P-384/SHA-384 over bytes 0x000..0x29F, R and S
   little-endian (:class:`EvidenceSignatureError`);
6. the chain's product equals the product the report's CPUID fields name (version
   3+, when they name a known product) (:class:`CollateralError`);
7. VCEK only: the hwID extension equals CHIP_ID (64 bytes; 8 on Turin), unless the
   host masked the chip id (MASK_CHIP_KEY or an all-zero CHIP_ID)
   (:class:`CollateralError`);
8. the SPL extensions (blSPL, teeSPL, snpSPL, ucodeSPL, and fmcSPL on Turin) equal
   REPORTED_TCB decoded in the product's layout (:class:`CollateralError`);
9. when the collateral holds AMD's CRL (KDS ``/vcek/v1/{product}/crl``, or the
   ``vlek`` one; PEM or DER): it is issued and signed by the pinned ARK
   (:class:`CollateralError`), current at ``at`` (:class:`CollateralExpiredError`), and
   does not list the ASK/ASVK (:class:`CertificateChainError`). Its dates become the
   evidence's ``collateral_issued``/``collateral_expires``.

SEV-SNP has no TCB-info collateral: verified evidence is ``UP_TO_DATE``; judging the
TCB levels is for the appraisal policy (``min_snp_tcb`` on
``Claims.extra["reported_tcb"]``).

Reading the collateral and the KDS extensions (steps 1, 7 and 8) lives in
:mod:`~trustedml.attestation._amd_collateral`; certificates, CRLs and signatures in
:mod:`~trustedml.attestation._x509`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from trustedml.attestation._amd_collateral import (
    certs_from_table,
    check_hwid,
    check_spls,
    endorsement_extensions,
    product_name,
    read_collateral,
)
from trustedml.attestation._model import (
    Claims,
    EvidenceType,
    TcbStatus,
    VerifiedEvidence,
    require_aware,
)
from trustedml.attestation._x509 import (
    check_validity,
    common_name,
    crl_signed_by,
    ec_public_key,
    ecdsa_verifies,
    issued_by,
    load_crl,
    load_pem_certificates,
    packaged,
    revocation,
    serial_number,
)
from trustedml.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ConfigError,
    EvidenceSignatureError,
)
from trustedml.hazmat.attestation.snp import (
    SigningKey,
    SnpProduct,
    SnpReport,
    parse_extended_report,
    parse_snp_report,
)

__all__ = ["PINNED_ARK_SHA256", "SnpVerifier"]

# SHA-256 of the DER of AMD's root keys, checked against the packaged PEMs so that a
# modified package file cannot swap the root.
PINNED_ARK_SHA256: Mapping[SnpProduct, str] = {
    SnpProduct.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    SnpProduct.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    SnpProduct.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

_P384_BITS = 384


@dataclass(frozen=True)
class _Roots:
    """The trusted certificates of one product: its ARK and the ASK/ASVK it signed."""

    product: SnpProduct
    ark: x509.Certificate
    ark_der: bytes
    intermediates: tuple[x509.Certificate, ...]
    intermediate_ders: frozenset[bytes]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _product_named(text: str) -> SnpProduct | None:
    for product in SnpProduct:
        if text.lower() == product.value.lower():
            return product
    return None


def _build_roots(product: SnpProduct, pem: bytes, pin: str | None) -> _Roots:
    what = f"AMD {product.value} root certificates"
    certs = list(load_pem_certificates(pem, what, CertificateChainError))
    arks = [c for c in certs if c.subject == c.issuer]
    if len(arks) != 1:
        raise CertificateChainError(
            f"{what}: expected exactly one self-signed ARK, got {len(arks)}"
        )
    ark = arks[0]
    ark_der = _der(ark)
    if pin is not None and hashlib.sha256(ark_der).hexdigest() != pin:
        raise CertificateChainError(f"{what}: the ARK does not match its pinned SHA-256")
    if common_name(ark.subject) != f"ARK-{product.value}" or not issued_by(ark, ark):
        raise CertificateChainError(f"{what}: ARK-{product.value} is not a valid self-signed root")
    intermediates: list[x509.Certificate] = []
    for cert in certs:
        if cert is ark:
            continue
        name = common_name(cert.subject)
        if name not in (f"SEV-{product.value}", f"SEV-VLEK-{product.value}"):
            raise CertificateChainError(f"{what}: unexpected certificate {name!r}")
        if not issued_by(cert, ark):
            raise CertificateChainError(f"{what}: {name} is not signed by ARK-{product.value}")
        intermediates.append(cert)
    return _Roots(
        product, ark, ark_der, tuple(intermediates), frozenset(_der(c) for c in intermediates)
    )


@functools.cache
def _packaged_roots() -> Mapping[SnpProduct, _Roots]:
    return {
        product: _build_roots(
            product,
            packaged(f"roots/amd_{product.value.lower()}.pem"),
            PINNED_ARK_SHA256[product],
        )
        for product in SnpProduct
    }


def _check_crl(
    data: bytes,
    ark: x509.Certificate,
    issuer: x509.Certificate,
    role: str,
    at: datetime,
) -> tuple[datetime, datetime]:
    """AMD's CRL: issued and signed by the ARK, current at ``at``, not listing the
    ASK/ASVK that issued the endorsement key. Returns its (issued, next update)."""
    crl = load_crl(data, "AMD CRL", CollateralError)
    ark_name = common_name(ark.subject)
    if crl.issuer != ark.subject:
        raise CollateralError(f"AMD CRL is issued by {common_name(crl.issuer)!r}, not {ark_name}")
    if not crl_signed_by(data, ark):
        raise CollateralError(f"AMD CRL signature does not verify with {ark_name}")
    issued, expires = crl.last_update_utc, crl.next_update_utc
    if expires is None:
        raise CollateralError("AMD CRL has no nextUpdate")
    if not issued <= at <= expires:
        raise CollateralExpiredError(
            f"AMD CRL is not current at {at.isoformat()}: valid {issued.isoformat()} .. "
            f"{expires.isoformat()}"
        )
    revoked = revocation(crl, issuer)
    if revoked is not None:
        raise CertificateChainError(
            f"{role} {common_name(issuer.subject)} (serial {serial_number(issuer):x}) is "
            f"revoked by AMD's CRL since {revoked.revocation_date_utc.isoformat()}"
        )
    return issued, expires


class SnpVerifier:
    """Verifies AMD SEV-SNP attestation reports against AMD's root keys.

    ``ark_pems`` maps a product name (``"Milan"``, ``"Genoa"``, ``"Turin"``) to PEM
    bytes with that product's self-signed ARK and, optionally, the ASK/ASVK it signed;
    it replaces the packaged roots (whose ARKs are pinned by SHA-256). ``collateral``
    for :meth:`verify` holds the VCEK or VLEK certificate, optionally with the ASK/ASVK
    and ARK: PEM, DER (one or concatenated) or a GHCB certificate table (as
    configfs-tsm's ``auxblob``); it may be None when the evidence is an extended report
    carrying its certificates.
    """

    def __init__(self, ark_pems: Mapping[str, bytes] | None = None) -> None:
        if ark_pems is None:
            self._roots = _packaged_roots()
            return
        roots: dict[SnpProduct, _Roots] = {}
        for name, pem in ark_pems.items():
            product = _product_named(name)
            if product is None:
                expected = ", ".join(p.value for p in SnpProduct)
                raise ConfigError(f"ark_pems: unknown AMD product {name!r} (expected {expected})")
            roots[product] = _build_roots(product, bytes(pem), pin=None)
        self._roots = roots

    @property
    def evidence_type(self) -> EvidenceType:
        return EvidenceType.SNP

    def verify(
        self, evidence: bytes, *, collateral: bytes | None, at: datetime
    ) -> VerifiedEvidence:
        """Verify an SEV-SNP report as of ``at`` (timezone-aware); see the module docs
        for the checks and their order."""
        require_aware(at)
        evidence = bytes(evidence)
        report, table = parse_extended_report(evidence)
        certs = certs_from_table(table.entries, "extended report certificate table")
        crls: list[bytes] = []
        if collateral is not None:
            more, crls = read_collateral(bytes(collateral), "SEV-SNP collateral")
            certs += more
        return self._verify(report, certs, crls, at)

    def _verify(
        self,
        report: SnpReport,
        certs: list[x509.Certificate],
        crls: list[bytes],
        at: datetime,
    ) -> VerifiedEvidence:
        checks = [f"SEV-SNP report version {report.version} parsed"]
        if report.signing_key is SigningKey.NONE:
            raise EvidenceSignatureError("SEV-SNP report is unsigned (SIGNING_KEY = 7, none)")
        kind = "VCEK" if report.signing_key is SigningKey.VCEK else "VLEK"
        unique = {_der(c): c for c in certs}
        endorsers = [c for c in unique.values() if common_name(c.subject) in (f"SEV-{kind}", kind)]
        if not endorsers:
            raise CollateralError(
                f"SEV-SNP report is signed by the {kind} but the collateral holds no "
                f"{kind} certificate"
            )
        if len(endorsers) > 1:
            raise CollateralError(f"SEV-SNP collateral holds {len(endorsers)} {kind} certificates")
        endorser = endorsers[0]

        product, issuer, ark = self._chain(endorser, kind, unique, at)
        checks.append(
            f"{kind} <- {common_name(issuer.subject)} <- {common_name(ark.subject)} (pinned) "
            f"verified at {at.isoformat()}"
        )
        public_key = ec_public_key(endorser, ec.SECP384R1, f"{kind} certificate (P-384)")

        r, s = report.signature_rs
        if not (0 < r < 1 << _P384_BITS and 0 < s < 1 << _P384_BITS):
            raise EvidenceSignatureError("SEV-SNP report signature: R or S is out of range")
        if not ecdsa_verifies(public_key, r, s, report.signed_bytes, hashes.SHA384()):
            raise EvidenceSignatureError(
                f"SEV-SNP report signature does not verify with the {kind} key"
            )
        checks.append(f"report signature verified (ECDSA P-384/SHA-384, {kind})")

        cpuid_product = report.cpuid_product
        if cpuid_product is not None and cpuid_product is not product:
            raise CollateralError(
                f"{kind} is certified for {product.value} but the report's CPUID names "
                f"{cpuid_product.value}"
            )
        if report.product is not product:
            report = parse_snp_report(report.raw, product=product)

        extensions = endorsement_extensions(endorser)
        chip_id_masked = report.mask_chip_key or not any(report.chip_id)
        if kind == "VCEK" and not chip_id_masked:
            check_hwid(extensions, report.chip_id)
            checks.append("VCEK hwID == CHIP_ID")

        check_spls(extensions, kind, report.reported_tcb)
        checks.append(f"{kind} SPL extensions == REPORTED_TCB")
        issued = expires = None
        for crl in crls:
            issued, expires = _check_crl(crl, ark, issuer, "ASVK" if kind == "VLEK" else "ASK", at)
            checks.append(
                f"{common_name(issuer.subject)} not revoked (AMD CRL of {issued.isoformat()}, "
                f"next update {expires.isoformat()})"
            )

        policy = report.policy
        extra: dict[str, Any] = {
            "product": product.value,
            "product_name": product_name(extensions),
            "version": report.version,
            "signing_key": kind.lower(),
            "guest_svn": report.guest_svn,
            "family_id": report.family_id.hex(),
            "image_id": report.image_id.hex(),
            "chip_id": report.chip_id.hex(),
            "chip_id_masked": chip_id_masked,
            "id_key_digest": report.id_key_digest.hex(),
            "author_key_digest": report.author_key_digest.hex(),
            "author_key_en": report.author_key_en,
            "report_id": report.report_id.hex(),
            "report_id_ma": report.report_id_ma.hex(),
            "platform_info": report.platform_info.raw,
            "policy_smt": policy.smt,
            "policy_migrate_ma": policy.migrate_ma,
            "policy_single_socket": policy.single_socket,
            "reported_tcb": report.reported_tcb.to_dict(),
            "current_tcb": report.current_tcb.to_dict(),
            "committed_tcb": report.committed_tcb.to_dict(),
            "launch_tcb": report.launch_tcb.to_dict(),
            "current_firmware": str(report.current_version),
            "committed_firmware": str(report.committed_version),
            "endorsement_not_after": endorser.not_valid_after_utc.isoformat(),
        }
        if report.cpuid_fam_id is not None:
            extra["cpuid"] = {
                "family": report.cpuid_fam_id,
                "model": report.cpuid_mod_id,
                "stepping": report.cpuid_step,
            }
        if report.launch_mit_vector is not None:
            extra["launch_mit_vector"] = report.launch_mit_vector
            extra["current_mit_vector"] = report.current_mit_vector
        claims = Claims(
            evidence_type=EvidenceType.SNP,
            report_data=report.report_data,
            debug=policy.debug,
            measurement=report.measurement,
            host_data=report.host_data,
            vmpl=report.vmpl,
            guest_policy=policy.raw,
            extra=extra,
        )
        return VerifiedEvidence(
            claims=claims,
            tcb_status=TcbStatus.UP_TO_DATE,
            collateral_issued=issued,
            collateral_expires=expires,
            checks=tuple(checks),
        )

    def _chain(
        self,
        endorser: x509.Certificate,
        kind: str,
        certs: Mapping[bytes, x509.Certificate],
        at: datetime,
    ) -> tuple[SnpProduct, x509.Certificate, x509.Certificate]:
        """Verify endorser <- ASK/ASVK <- pinned ARK; return (product, issuer, ARK)."""
        issuer_cn = common_name(endorser.issuer)
        prefix = "SEV-VLEK-" if kind == "VLEK" else "SEV-"
        product = _product_named(issuer_cn[len(prefix) :]) if issuer_cn.startswith(prefix) else None
        if product is None:
            raise CertificateChainError(
                f"{kind} issuer {issuer_cn!r} is not an AMD {'ASVK' if kind == 'VLEK' else 'ASK'}"
            )
        roots = self._roots.get(product)
        if roots is None:
            raise CertificateChainError(f"no trusted AMD root key for {product.value}")
        trusted_arks = {r.ark_der for r in self._roots.values()}
        for der, cert in certs.items():
            if cert.subject == cert.issuer and der not in trusted_arks:
                raise CertificateChainError(
                    f"collateral root {common_name(cert.subject)!r} is not a pinned AMD root key"
                )
        candidates = [
            c for c in (*certs.values(), *roots.intermediates) if c.subject == endorser.issuer
        ]
        issuer = next((c for c in candidates if issued_by(endorser, c)), None)
        if issuer is None:
            raise CertificateChainError(
                f"{kind} is not signed by a known {issuer_cn} certificate"
                + ("" if candidates else " (none in the collateral or the trusted roots)")
            )
        if _der(issuer) not in roots.intermediate_ders and not issued_by(issuer, roots.ark):
            raise CertificateChainError(f"{issuer_cn} is not signed by ARK-{product.value}")
        check_validity(endorser, at, f"{kind} certificate in the AMD chain")
        check_validity(
            issuer, at, f"{'ASVK' if kind == 'VLEK' else 'ASK'} certificate in the AMD chain"
        )
        check_validity(roots.ark, at, "ARK certificate in the AMD chain")
        return product, issuer, roots.ark
