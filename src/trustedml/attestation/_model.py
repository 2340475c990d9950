"""The vendor-neutral result of verifying evidence: what every verifier returns and
what the appraisal policy reads."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from trustedml.errors import ConfigError


def require_aware(at: object) -> None:
    """Refuse a verification time that is not a timezone-aware datetime: collateral
    windows are instants, and a naive time would be read in the host's zone."""
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ConfigError("at: expected a timezone-aware datetime, got a naive one")


class EvidenceType(enum.StrEnum):
    SGX = "sgx-dcap"
    TDX = "tdx-dcap"
    SNP = "sev-snp"
    SIM = "sim"


class TcbStatus(enum.StrEnum):
    """Platform TCB status, ordered from best to worst (Intel's names; AMD and sim
    evidence that verifies is ``UP_TO_DATE``)."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"

    @property
    def rank(self) -> int:
        return list(TcbStatus).index(self)

    def at_least(self, minimum: TcbStatus) -> bool:
        """True when this status is as good as ``minimum`` or better."""
        return self.rank <= minimum.rank


@dataclass(frozen=True)
class Claims:
    """What verified evidence says about the workload and its platform.

    Measurements are bytes; fields that do not apply to an evidence type are None.
    """

    evidence_type: EvidenceType
    report_data: bytes
    debug: bool
    simulated: bool = False
    # SGX enclave identity
    mrenclave: bytes | None = None
    mrsigner: bytes | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    # TDX trust domain identity
    mrtd: bytes | None = None
    rtmrs: tuple[bytes, ...] | None = None
    mr_seam: bytes | None = None
    mr_config_id: bytes | None = None
    mr_owner: bytes | None = None
    # SEV-SNP guest identity
    measurement: bytes | None = None
    host_data: bytes | None = None
    vmpl: int | None = None
    guest_policy: int | None = None
    # Extra evidence-specific facts (all JSON-able), e.g. fmspc, chip id, TCB values.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view: bytes as lowercase hex, None fields left out."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bytes):
                value = value.hex()
            elif isinstance(value, tuple):
                value = [v.hex() if isinstance(v, bytes) else v for v in value]
            elif isinstance(value, enum.Enum):
                value = value.value
            elif name == "extra":
                value = dict(value)
            out[name] = value
        return out


@dataclass(frozen=True)
class VerifiedEvidence:
    """Evidence whose signatures, certificate chain and collateral all verified.

    ``tcb_status`` and ``advisory_ids`` are facts for the policy to judge; verification
    itself only fails when something is forged, expired, revoked or malformed.
    """

    claims: Claims
    tcb_status: TcbStatus
    advisory_ids: tuple[str, ...] = ()
    # Earliest issue date and earliest expiry of the collateral used (None: no
    # collateral, e.g. SNP with a VCEK only, or sim).
    collateral_issued: datetime | None = None
    collateral_expires: datetime | None = None
    # Human-readable notes from the verifier (e.g. "PCK chain ok").
    checks: tuple[str, ...] = ()

    @property
    def evidence_type(self) -> EvidenceType:
        return self.claims.evidence_type


@runtime_checkable
class Verifier(Protocol):
    """Verifies one type of evidence at a caller-given time."""

    @property
    def evidence_type(self) -> EvidenceType: ...

    def verify(
        self, evidence: bytes, *, collateral: bytes | None, at: datetime
    ) -> VerifiedEvidence:
        """Verify ``evidence`` (with optional vendor collateral) as of ``at`` (aware UTC).

        Raises an :class:`~trustedml.errors.AttestationError` subclass naming what failed.
        """
        ...


@runtime_checkable
class EvidenceProvider(Protocol):
    """Produces evidence from the TEE this process runs in."""

    @property
    def evidence_type(self) -> EvidenceType: ...

    def get_evidence(self, report_data: bytes) -> bytes:
        """Return evidence whose report_data field is ``report_data`` (≤ 64 bytes,
        zero-padded to 64)."""
        ...
