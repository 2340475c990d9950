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
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

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
    issued_by,
    kds_extensions,
    load_crl,
    load_der_certificate,
    load_pem_certificates,
    revocation,
    serial_number,
)
from trustedml.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ConfigError,
    EvidenceFormatError,
    EvidenceSignatureError,
)
from trustedml.hazmat.attestation._der import read_tlv
from trustedml.hazmat.attestation.snp import (
    CertTableEntry,
    SigningKey,
    SnpProduct,
    SnpReport,
    TcbVersion,
    parse_cert_table,
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

_KDS_OID = "1.3.6.1.4.1.3704.1."
_OID_PRODUCT_NAME = _KDS_OID + "2"
_OID_HWID = _KDS_OID + "4"
_SPL_OIDS = {  # TcbVersion attribute -> (KDS name, OID)
    "bootloader": ("blSPL", _KDS_OID + "3.1"),
    "tee": ("teeSPL", _KDS_OID + "3.2"),
    "snp": ("snpSPL", _KDS_OID + "3.3"),
    "microcode": ("ucodeSPL", _KDS_OID + "3.8"),
    "fmc": ("fmcSPL", _KDS_OID + "3.9"),
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


def _cn(name: x509.Name) -> str:
    return common_name(name)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _product_named(text: str) -> SnpProduct | None:
    for product in SnpProduct:
        if text.lower() == product.value.lower():
            return product
    return None


def _load_pem(data: bytes, what: str) -> list[x509.Certificate]:
    return list(load_pem_certificates(data, what, CollateralError))


def _load_der(data: bytes, what: str) -> x509.Certificate:
    return load_der_certificate(data, what, CollateralError)


def _der_element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at ``pos``; ValueError if malformed."""
    try:
        tlv, end = read_tlv(data, pos, "DER element")
    except EvidenceFormatError as exc:
        raise ValueError(str(exc)) from None
    return tlv.tag, end - len(tlv.value), end


def _split_der(data: bytes) -> list[bytes] | None:
    """Concatenated DER SEQUENCEs, or None if ``data`` is not exactly that."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(data):
        try:
            tag, _, end = _der_element(data, pos)
        except ValueError:
            return None
        if tag != 0x30:
            return None
        parts.append(data[pos:end])
        pos = end
    return parts or None


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----\s*", re.DOTALL)


def _collateral(data: bytes, what: str) -> tuple[list[x509.Certificate], list[bytes]]:
    """Certificates and CRLs (their bytes, each loaded once here) from PEM, DER (one
    or concatenated) or a GHCB certificate table (certificates only)."""
    if b"-----BEGIN" in data:
        crls = [m.group(0) for m in _PEM_CRL.finditer(data)]
        for crl in crls:
            load_crl(crl, what, CollateralError)
        rest = _PEM_CRL.sub(b"", data)
        return (_load_pem(rest, what) if b"-----BEGIN" in rest else []), crls
    parts = _split_der(data)
    if parts is None:
        try:
            table = parse_cert_table(data)
        except EvidenceFormatError as exc:
            raise CollateralError(
                f"{what}: neither PEM, DER nor a GHCB certificate table ({exc})"
            ) from None
        return _certs_from_table(table.entries, what), []
    certs: list[x509.Certificate] = []
    crls = []
    for part in parts:
        try:
            certs.append(_load_der(part, what))
        except CollateralError as not_a_cert:
            try:
                load_crl(part, what, CollateralError)
            except CollateralError:
                raise not_a_cert from None
            crls.append(part)
    return certs, crls


def _certs_from_table(entries: Iterable[CertTableEntry], what: str) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for entry in entries:
        if entry.role is None:
            continue  # e.g. go-sev-guest's extra platform info blob
        label = f"{what} ({entry.role.upper()} entry)"
        if b"-----BEGIN" in entry.data:
            certs.extend(_load_pem(entry.data, label))
        else:
            certs.append(_load_der(entry.data, label))
    return certs


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
    if _cn(ark.subject) != f"ARK-{product.value}" or not issued_by(ark, ark):
        raise CertificateChainError(f"{what}: ARK-{product.value} is not a valid self-signed root")
    intermediates: list[x509.Certificate] = []
    for cert in certs:
        if cert is ark:
            continue
        name = _cn(cert.subject)
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
    folder = importlib.resources.files("trustedml.attestation") / "roots"
    return {
        product: _build_roots(
            product,
            (folder / f"amd_{product.value.lower()}.pem").read_bytes(),
            PINNED_ARK_SHA256[product],
        )
        for product in SnpProduct
    }


def _der_integer(value: bytes, what: str) -> int:
    try:
        tag, start, end = _der_element(value, 0)
    except ValueError:
        tag, start, end = -1, 0, 0
    if tag != 0x02 or end != len(value) or start == end or value[start] & 0x80:
        raise CollateralError(f"{what} is not a non-negative DER INTEGER")
    return int.from_bytes(value[start:end], "big")


def _hwid(value: bytes) -> bytes:
    # KDS used to store the hwID raw; newer certificates wrap it in an OCTET STRING.
    try:
        tag, start, end = _der_element(value, 0)
        if tag == 0x04 and end == len(value) and end - start in (8, 64):
            return value[start:end]
    except ValueError:
        pass
    return value


def _product_name(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        tag, start, end = _der_element(value, 0)
        if tag in (0x0C, 0x13, 0x16) and end == len(value):
            value = value[start:end]
    except ValueError:
        pass
    return value.decode("ascii", "replace")


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
    ark_name = _cn(ark.subject)
    if crl.issuer != ark.subject:
        raise CollateralError(f"AMD CRL is issued by {_cn(crl.issuer)!r}, not {ark_name}")
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
            f"{role} {_cn(issuer.subject)} (serial {serial_number(issuer):x}) is revoked by "
            f"AMD's CRL since {revoked.revocation_date_utc.isoformat()}"
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
        certs = _certs_from_table(table.entries, "extended report certificate table")
        crls: list[bytes] = []
        if collateral is not None:
            more, crls = _collateral(bytes(collateral), "SEV-SNP collateral")
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
        endorsers = [c for c in unique.values() if _cn(c.subject) in (f"SEV-{kind}", kind)]
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
            f"{kind} <- {_cn(issuer.subject)} <- {_cn(ark.subject)} (pinned) verified "
            f"at {at.isoformat()}"
        )
        public_key = ec_public_key(endorser, ec.SECP384R1, f"{kind} certificate (P-384)")

        r, s = report.signature_rs
        if not (0 < r < 1 << _P384_BITS and 0 < s < 1 << _P384_BITS):
            raise EvidenceSignatureError("SEV-SNP report signature: R or S is out of range")
        try:
            public_key.verify(
                encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384())
            )
        except InvalidSignature:
            raise EvidenceSignatureError(
                f"SEV-SNP report signature does not verify with the {kind} key"
            ) from None
        checks.append(f"report signature verified (ECDSA P-384/SHA-384, {kind})")

        cpuid_product = report.cpuid_product
        if cpuid_product is not None and cpuid_product is not product:
            raise CollateralError(
                f"{kind} is certified for {product.value} but the report's CPUID names "
                f"{cpuid_product.value}"
            )
        if report.product is not product:
            report = parse_snp_report(report.raw, product=product)

        extensions = kds_extensions(endorser, _KDS_OID)
        chip_id_masked = report.mask_chip_key or not any(report.chip_id)
        if kind == "VCEK" and not chip_id_masked:
            hwid_value = extensions.get(_OID_HWID)
            if hwid_value is None:
                raise CollateralError("VCEK lacks the hwID extension (1.3.6.1.4.1.3704.1.4)")
            hwid = _hwid(hwid_value)
            n = len(hwid)
            if n not in (8, 64) or hwid != report.chip_id[:n] or any(report.chip_id[n:]):
                raise CollateralError("VCEK hwID does not match the report's CHIP_ID")
            checks.append("VCEK hwID == CHIP_ID")

        self._check_spls(extensions, kind, report.reported_tcb)
        checks.append(f"{kind} SPL extensions == REPORTED_TCB")
        issued = expires = None
        for crl in crls:
            issued, expires = _check_crl(crl, ark, issuer, "ASVK" if kind == "VLEK" else "ASK", at)
            checks.append(
                f"{_cn(issuer.subject)} not revoked (AMD CRL of {issued.isoformat()}, "
                f"next update {expires.isoformat()})"
            )

        policy = report.policy
        extra: dict[str, Any] = {
            "product": product.value,
            "product_name": _product_name(extensions.get(_OID_PRODUCT_NAME)),
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
        issuer_cn = _cn(endorser.issuer)
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
                    f"collateral root {_cn(cert.subject)!r} is not a pinned AMD root key"
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

    @staticmethod
    def _check_spls(extensions: Mapping[str, bytes], kind: str, tcb: TcbVersion) -> None:
        for attr, (name, oid) in _SPL_OIDS.items():
            reported = getattr(tcb, attr)
            if reported is None:
                continue  # fmc outside Turin
            value = extensions.get(oid)
            if value is None:
                raise CollateralError(f"{kind} lacks the {name} extension ({oid})")
            certified = _der_integer(value, f"{kind} {name} extension")
            if certified != reported:
                raise CollateralError(
                    f"{kind} {name} is {certified} but the report's REPORTED_TCB "
                    f"{attr} SPL is {reported}"
                )
