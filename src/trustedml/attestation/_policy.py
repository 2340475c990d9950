"""Appraisal policy: which verified evidence a relying party accepts.

Verification says whether evidence is genuine; the policy says whether it is
good enough (identity, TCB level, advisories, debug mode, simulation) and
reports every reason for a refusal at once, so an operator fixes all of them in
one round. A policy is validated once, when it is built (:mod:`._policy_fields`
checks each value, :mod:`._policy_identity` each ``[[allow]]`` entry), whether in
code or from its TOML/JSON form.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from trustedml.attestation._model import (
    Claims,
    EvidenceType,
    TcbStatus,
    VerifiedEvidence,
    require_aware,
)
from trustedml.attestation._policy_fields import (
    advisory_ids,
    check_keys,
    flag,
    format_duration,
    kind,
    pair,
    parse_duration,
    snp_tcb,
    tcb_status,
    vmpl_levels,
    vmpl_text,
)
from trustedml.attestation._policy_identity import Identity, identity_from_dict
from trustedml.attestation._sim import pad_report_data
from trustedml.errors import PolicyError

__all__ = ["Appraisal", "Identity", "Policy", "format_duration", "parse_duration"]

_DEFAULT_VMPL = frozenset({0})


@dataclass(frozen=True)
class Appraisal:
    """The policy's verdict on verified evidence, with every reason for a refusal."""

    accepted: bool
    reasons: tuple[str, ...]
    verified: VerifiedEvidence

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasons", tuple(self.reasons))
        if self.accepted == bool(self.reasons):
            raise ValueError(
                "Appraisal: expected reasons exactly when refused, got "
                f"accepted={self.accepted} with {len(self.reasons)} reasons"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view for logs and the CLI."""
        verified = self.verified
        out: dict[str, Any] = {
            "accepted": self.accepted,
            "reasons": list(self.reasons),
            "evidence_type": verified.evidence_type.value,
            "simulated": verified.claims.simulated,
            "tcb_status": verified.tcb_status.value,
            "advisory_ids": list(verified.advisory_ids),
            "claims": verified.claims.to_dict(),
        }
        if verified.collateral_issued is not None:
            out["collateral_issued"] = verified.collateral_issued.isoformat()
        if verified.collateral_expires is not None:
            out["collateral_expires"] = verified.collateral_expires.isoformat()
        return out


@dataclass(frozen=True)
class Policy:
    """What a relying party accepts. The defaults refuse everything: ``allow`` is
    empty, simulated and debug evidence are refused, and only an up-to-date TCB
    passes."""

    allow: tuple[Identity, ...] = ()
    allow_simulated: bool = False
    allow_debug: bool = False
    min_tcb_status: TcbStatus = TcbStatus.UP_TO_DATE
    allowed_advisory_ids: frozenset[str] = frozenset()
    max_collateral_age: timedelta | None = None
    # SEV-SNP has no TCB-info collateral: a VCEK that verifies only says which firmware
    # the chip ran. Minimum security patch levels per component, of the reported TCB.
    min_snp_tcb: Mapping[str, int] | None = None
    # SEV-SNP: the VM privilege levels a report may come from. A guest at VMPL 1..3
    # shares its VM with more privileged software (e.g. a paravisor at VMPL 0) that can
    # read and change its memory, so only VMPL 0 is trusted unless this says otherwise.
    vmpl: frozenset[int] = _DEFAULT_VMPL

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is not None or name not in _OPTIONAL:
                object.__setattr__(self, name, check(value))
        if isinstance(self.allow, Identity) or not isinstance(self.allow, Iterable):
            raise PolicyError(f"allow: expected a sequence of Identity, got {kind(self.allow)}")
        allow = tuple(self.allow)
        for index, identity in enumerate(allow):
            if not isinstance(identity, Identity):
                raise PolicyError(f"allow[{index}]: expected an Identity, got {kind(identity)}")
        object.__setattr__(self, "allow", allow)

    # -- appraisal ---------------------------------------------------------------------

    def appraise(
        self,
        verified: VerifiedEvidence,
        *,
        at: datetime,
        expected_report_data: bytes | None = None,
    ) -> Appraisal:
        """Judge ``verified`` as of ``at`` (aware). Collects every reason for refusal."""
        require_aware(at)
        expected = (
            None
            if expected_report_data is None
            else pad_report_data(expected_report_data, "expected_report_data")
        )
        claims = verified.claims
        reasons: list[str] = []
        # Sim evidence is flagged either way, in case a claims set forgot the flag.
        if (claims.simulated or claims.evidence_type is EvidenceType.SIM) and not (
            self.allow_simulated
        ):
            reasons.append(
                "simulated evidence is not allowed by this policy (no hardware protection; "
                "set allow_simulated for development only)"
            )
        if claims.debug and not self.allow_debug:
            reasons.append(
                "debug-mode TEE is not allowed by this policy (the host can read its memory)"
            )
        if not verified.tcb_status.at_least(self.min_tcb_status):
            reasons.append(
                f"TCB status {verified.tcb_status.value} is worse than the policy minimum "
                f"{self.min_tcb_status.value}"
            )
        refused_ids = sorted(set(verified.advisory_ids) - self.allowed_advisory_ids)
        if refused_ids:
            reasons.append(
                f"security advisories not allowed by this policy: {', '.join(refused_ids)}"
            )
        if claims.evidence_type is EvidenceType.SNP and claims.vmpl not in self.vmpl:
            reasons.append(
                f"SEV-SNP report from VMPL {claims.vmpl}: expected one of "
                f"{vmpl_text(self.vmpl)} (policy key vmpl)"
            )
        if self.min_snp_tcb and claims.evidence_type is EvidenceType.SNP:
            reasons.extend(_snp_tcb_reasons(self.min_snp_tcb, claims))
        if self.max_collateral_age is not None and verified.collateral_issued is not None:
            issued = verified.collateral_issued
            if issued.tzinfo is None:
                issued = issued.replace(tzinfo=UTC)
            age = at - issued
            if age > self.max_collateral_age:
                reasons.append(
                    f"collateral issued {issued.isoformat()} is {_age(age)} old at "
                    f"{at.isoformat()}, more than max_collateral_age "
                    f"{format_duration(self.max_collateral_age)}"
                )
        if expected is not None and claims.report_data != expected:
            reasons.append(
                "report_data does not bind the expected value "
                f"({pair(expected, claims.report_data)})"
            )
        identity_reason = self._identity_reason(claims)
        if identity_reason:
            reasons.append(identity_reason)
        return Appraisal(accepted=not reasons, reasons=tuple(reasons), verified=verified)

    def _identity_reason(self, claims: Claims) -> str | None:
        if not self.allow:
            return "no identity is allowed: the policy's allow list is empty"
        candidates: list[tuple[int, list[str]]] = []
        for index, identity in enumerate(self.allow):
            if identity.evidence_type not in (None, claims.evidence_type):
                continue
            diffs = identity.mismatches(claims)
            if not diffs:
                return None
            candidates.append((index, diffs))
        if not candidates:
            return f"no allowed identity is for {claims.evidence_type.value} evidence"
        fewest = min(len(diffs) for _, diffs in candidates)
        closest = [
            f"allow[{index}] ({'; '.join(diffs)})"
            for index, diffs in candidates
            if len(diffs) == fewest
        ]
        shown = ", ".join(closest[:3]) + (
            f" and {len(closest) - 3} more" if len(closest) > 3 else ""
        )
        return f"no allowed identity matches; closest: {shown}"

    # -- file form ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build a policy from its TOML/JSON form. Raises :class:`PolicyError` naming
        the key, with expected vs got."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"policy: expected a table, got {kind(data)}")
        check_keys("", data, _POLICY_KEYS)
        kwargs = {name: value for name, value in data.items() if name != "allow"}
        for name in _OPTIONAL:
            # The file form has no "unset" value (TOML has no null): a JSON null is a
            # bad value, refused by the field's own check.
            if name in kwargs and kwargs[name] is None:
                _CHECKS[name](None)
        if "allow" in data:
            entries = data["allow"]
            if not isinstance(entries, list):
                raise PolicyError(
                    f"allow: expected a list of tables ([[allow]] in TOML), got {kind(entries)}"
                )
            kwargs["allow"] = tuple(
                identity_from_dict(entry, f"allow[{index}]") for index, entry in enumerate(entries)
            )
        return cls(**kwargs)

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read a policy file (``.toml`` or ``.json``)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise PolicyError(f"{path}: expected a .toml or .json policy file, got {suffix!r}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from exc
        try:
            text = raw.decode("utf-8")
            data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
        except UnicodeDecodeError:
            raise PolicyError(f"{path}: expected UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path}: not valid TOML: {exc}") from None
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{path}: not valid JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The file form (TOML- and JSON-able); :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {
            "allow_simulated": self.allow_simulated,
            "allow_debug": self.allow_debug,
            "min_tcb_status": self.min_tcb_status.value,
            "allowed_advisory_ids": sorted(self.allowed_advisory_ids),
        }
        # TOML has no null, so an unset age is left out rather than written as None.
        if self.max_collateral_age is not None:
            out["max_collateral_age"] = format_duration(self.max_collateral_age)
        if self.min_snp_tcb is not None:
            out["min_snp_tcb"] = dict(self.min_snp_tcb)
        out["vmpl"] = sorted(self.vmpl)
        out["allow"] = [identity.to_dict() for identity in self.allow]
        return out


# Each field's one check (and normalisation), in the order a file lists them.
_CHECKS: dict[str, Callable[[Any], object]] = {
    "allow_simulated": lambda value: flag("allow_simulated", value),
    "allow_debug": lambda value: flag("allow_debug", value),
    "min_tcb_status": tcb_status,
    "allowed_advisory_ids": advisory_ids,
    "max_collateral_age": lambda value: parse_duration(value, "max_collateral_age"),
    "min_snp_tcb": snp_tcb,
    "vmpl": vmpl_levels,
}
_OPTIONAL = ("max_collateral_age", "min_snp_tcb")
_POLICY_KEYS = ("allow", *_CHECKS)


def _age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    minutes = rest // 60
    return f"{hours}h{minutes}m" if hours else f"{minutes}m{rest % 60}s"


def _snp_tcb_reasons(minimum: Mapping[str, int], claims: Claims) -> list[str]:
    reported = claims.extra.get("reported_tcb")
    if not isinstance(reported, Mapping):
        return ["min_snp_tcb is set but the evidence reports no TCB version"]
    low = []
    for name, level in minimum.items():
        got = reported.get(name)
        if got is None:
            # fmc exists on Turin only; a Milan or Genoa TCB has no such component.
            continue
        if got < level:
            low.append(f"{name} {got} < {level}")
    if not low:
        return []
    return [f"SEV-SNP reported TCB is below the policy minimum: {', '.join(low)}"]
