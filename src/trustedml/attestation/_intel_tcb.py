"""Intel's TCB rules, as Intel's QVL applies them (steps 10-14 of
:mod:`trustedml.attestation._intel`): the QE identity and TDX module identity matched
against the quote, the TCB info against the platform, the TCB level the PCK and the TD
report reach, and the final status: the platform status converged with the TDX
module and QE statuses, advisories and the TD relaunch advice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trustedml.attestation._intel_collateral import (
    TDX_COMPONENTS,
    EnclaveIdentity,
    IdentityTcbLevel,
    TcbInfo,
    TcbLevel,
)
from trustedml.attestation._model import EvidenceType, TcbStatus
from trustedml.errors import CollateralError, EvidenceBindingError, TcbLevelNotFoundError
from trustedml.hazmat.attestation.intel import (
    PckExtension,
    Quote,
    SgxReportBody,
    TdReport10,
    TdReport15,
)

__all__ = [
    "check_platform",
    "identity_status",
    "match_qe",
    "match_tcb",
]

# The QE identity id and versions each quote type needs.
_ENCLAVE_IDS = {EvidenceType.SGX: ("QE", (2,)), EvidenceType.TDX: ("TD_QE", (2, 3))}


def tcb_status(value: str, what: str) -> TcbStatus:
    try:
        return TcbStatus(value)
    except ValueError:
        raise CollateralError(f"{what}: unknown tcbStatus {value!r}") from None


def identity_status(value: str, what: str) -> TcbStatus:
    # QVL reads an enclave/module identity level as UpToDate, Revoked or (anything
    # else) OutOfDate.
    status = tcb_status(value, what)
    if status in (TcbStatus.UP_TO_DATE, TcbStatus.REVOKED):
        return status
    return TcbStatus.OUT_OF_DATE


def converge(platform: TcbStatus, other: TcbStatus) -> TcbStatus:
    # QVL's convergeTcbStatusWithQeTcbStatus; its TDX module rule is identical.
    if other is TcbStatus.OUT_OF_DATE:
        if platform in (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE
        if platform in (
            TcbStatus.CONFIGURATION_NEEDED,
            TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        ):
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    if other is TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    return platform


def match_identity_level(
    levels: Sequence[IdentityTcbLevel], isv_svn: int, what: str
) -> IdentityTcbLevel:
    for level in levels:
        if isv_svn >= level.isv_svn:
            return level
    raise TcbLevelNotFoundError(
        f"{what}: ISVSVN {isv_svn} is below every TCB level "
        f"(lowest {min(level.isv_svn for level in levels)})"
    )


def masked_equal(value: bytes, expected: bytes, mask: bytes) -> bool:
    return all((v & m) == (e & m) for v, e, m in zip(value, expected, mask, strict=True))


def union(*groups: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out.extend(item for item in group if item not in out)
    return tuple(out)


def tdx_components_ok(tee_tcb_svn: bytes, level: TcbLevel) -> bool:
    if level.tdx_components is None:
        raise CollateralError("tcb_info: a TDX TCB level has no tdxtcbcomponents")
    # With a versioned TDX module (TEE_TCB_SVN[1] > 0) bytes 0-1 are the module's
    # SVN and version, judged by the module identity instead (QVL isTdxTcbHigherOrEqual).
    start = 2 if tee_tcb_svn[1] > 0 else 0
    return all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, TDX_COMPONENTS))


def relaunch_advised(
    body: TdReport15,
    info: TcbInfo,
    sgx_status: TcbStatus,
    tdx_status: TcbStatus,
    module_status: TcbStatus,
    qe_status: TcbStatus,
) -> bool:
    # QVL checkForRelaunch: the TD runs on an out-of-date module but the platform
    # already has an up-to-date one loaded (TEE_TCB_SVN2), so relaunching the TD fixes
    # it. Reported as a claim because TcbStatus has no TDRelaunchAdvised value.
    if qe_status is not TcbStatus.UP_TO_DATE or module_status is not TcbStatus.OUT_OF_DATE:
        return False
    if sgx_status not in (
        TcbStatus.UP_TO_DATE,
        TcbStatus.SW_HARDENING_NEEDED,
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    ) or tdx_status not in (TcbStatus.OUT_OF_DATE, TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED):
        return False
    latest = info.tcb_levels[0].tdx_components
    if latest is None:
        return False
    svn2 = body.tee_tcb_svn2
    if svn2[1] == 0:
        needed_module_svn = latest[0]
    else:
        wanted = f"TDX_{svn2[1]:02X}"
        found = [m for m in info.tdx_module_identities or () if m.id.upper() == wanted]
        if not found or not found[0].tcb_levels:
            return False
        needed_module_svn = found[0].tcb_levels[0].isv_svn
    return svn2[0] >= needed_module_svn and svn2[2] >= latest[2]


def _show(value: bytes | int) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def _expect_equal(what: str, got: bytes | int, owner: str, want: bytes | int) -> None:
    if got != want:
        raise EvidenceBindingError(f"{what} {_show(got)} is not the {owner}'s {_show(want)}")


def _expect_masked(
    what: str, got: bytes, owner: str, want: bytes, mask: bytes, *, verb: str, show_mask: bool
) -> None:
    if not masked_equal(got, want, mask):
        raise EvidenceBindingError(
            f"{what} {got.hex()} {verb} match the {owner}'s {want.hex()}"
            + (f" under mask {mask.hex()}" if show_mask else "")
        )


def match_qe(
    evidence_type: EvidenceType, report: SgxReportBody, identity: EnclaveIdentity
) -> IdentityTcbLevel:
    """The QE identity's level for the quote's QE report (step 10)."""
    expected_id, versions = _ENCLAVE_IDS[evidence_type]
    if identity.id != expected_id or identity.version not in versions:
        raise CollateralError(
            f"qe_identity: id {identity.id!r} version {identity.version} is not the "
            f"{expected_id} identity (version {' or '.join(map(str, versions))}) a "
            f"{evidence_type.value} quote needs"
        )
    owner = "QE identity"
    _expect_equal("QE report MRSIGNER", report.mrsigner, owner, identity.mrsigner)
    _expect_equal("QE report ISVPRODID", report.isv_prod_id, owner, identity.isv_prod_id)
    _expect_masked(
        "QE report MISCSELECT",
        report.miscselect_bytes,
        owner,
        identity.miscselect,
        identity.miscselect_mask,
        verb="does not",
        show_mask=True,
    )
    _expect_masked(
        "QE report ATTRIBUTES",
        report.attributes,
        owner,
        identity.attributes,
        identity.attributes_mask,
        verb="do not",
        show_mask=True,
    )
    return match_identity_level(identity.tcb_levels, report.isv_svn, "QE report")


def check_platform(quote: Quote, info: TcbInfo, ext: PckExtension) -> None:
    """The TCB info is for the quote's TEE type and the PCK's platform (step 11)."""
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


def _tdx_module(body: TdReport10, info: TcbInfo) -> tuple[TcbStatus, IdentityTcbLevel | None]:
    # Step 12: the TDX module identity and, for a versioned module, its TCB level.
    version = body.tee_tcb_svn[1]
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
    owner = "TDX module identity"
    _expect_equal("TD report MRSIGNER_SEAM", body.mr_signer_seam, owner, expected.mrsigner)
    _expect_masked(
        "TD report SEAM_ATTRIBUTES",
        body.seam_attributes,
        owner,
        expected.attributes,
        expected.attributes_mask,
        verb="do not",
        show_mask=False,
    )
    if version == 0:
        return TcbStatus.UP_TO_DATE, None
    level = match_identity_level(
        expected.tcb_levels, body.tee_tcb_svn[0], f"TDX module {expected.id}"
    )
    return identity_status(level.status, f"tcb_info TDX module {expected.id}"), level


def match_tcb(
    quote: Quote,
    info: TcbInfo,
    ext: PckExtension,
    qe_status: TcbStatus,
    qe_level: IdentityTcbLevel,
    extra: dict[str, Any],
    checks: list[str],
) -> tuple[TcbStatus, tuple[str, ...], TcbLevel]:
    """Steps 12-14: (final status, advisory IDs, the matched TCB level); adds the TD
    relaunch advice to ``extra`` and what it checked to ``checks``."""
    body = quote.body
    tdx = body if isinstance(body, TdReport10) else None
    module_status, module_level = TcbStatus.UP_TO_DATE, None
    if tdx is not None:
        module_status, module_level = _tdx_module(tdx, info)
        checks.append(f"TDX module identity matched, module status {module_status.value}")
    sgx_level = tdx_level = None
    for level in info.tcb_levels:
        if ext.pce_svn < level.pce_svn or any(
            have < need for have, need in zip(ext.tcb_components, level.sgx_components, strict=True)
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
