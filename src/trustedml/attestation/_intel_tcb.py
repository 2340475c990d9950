"""Intel's TCB status rules, as Intel's QVL applies them: status names, the
convergence of the platform status with the TDX module and QE statuses, identity TCB
levels by ISVSVN, TDX component comparison and the TD relaunch advice."""

from __future__ import annotations

from collections.abc import Sequence

from trustedml.attestation._intel_collateral import (
    TDX_COMPONENTS,
    IdentityTcbLevel,
    TcbInfo,
    TcbLevel,
)
from trustedml.attestation._model import TcbStatus
from trustedml.errors import CollateralError, TcbLevelNotFoundError
from trustedml.hazmat.attestation.intel import TdReport15

__all__ = [
    "converge",
    "identity_status",
    "masked_equal",
    "match_identity_level",
    "relaunch_advised",
    "tcb_status",
    "tdx_components_ok",
    "union",
]


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
