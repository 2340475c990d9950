"""Appraisal policy: which verified evidence a relying party accepts.

Verification says whether evidence is genuine; the policy says whether it is
good enough (identity, TCB level, advisories, debug mode, simulation) and
reports every reason for a refusal at once, so an operator fixes all of them in
one round.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
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
from trustedml.attestation._sim import pad_report_data
from trustedml.errors import PolicyError

__all__ = ["Appraisal", "Identity", "Policy", "format_duration", "parse_duration"]

_SGX = frozenset({EvidenceType.SGX})
_TDX = frozenset({EvidenceType.TDX})
_SNP = frozenset({EvidenceType.SNP})
_ANY = frozenset(EvidenceType)
# Which evidence types carry each identity field: an identity that mixes
# fields of different types could never match, so it is refused when built.
_FIELD_TYPES: dict[str, frozenset[EvidenceType]] = {
    "mrenclave": _SGX,
    "mrsigner": _SGX,
    "isv_prod_id": _SGX,
    "min_isv_svn": _SGX,
    "mrtd": _TDX,
    "rtmrs": _TDX,
    "measurement": frozenset({EvidenceType.SNP, EvidenceType.SIM}),
    "host_data": _SNP,
    "id_key_digest": _SNP,
    "author_key_digest": _SNP,
    "min_guest_svn": _SNP,
    "job_measurement": _ANY,
}
_FIXED_SIZES = {
    "mrenclave": 32,
    "mrsigner": 32,
    "mrtd": 48,
    "host_data": 32,
    "id_key_digest": 48,
    "author_key_digest": 48,
}
_MAX_U32 = 0xFFFFFFFF
_RTMR_SIZE = 48
_RTMR_COUNT = 4
_SNP_MEASUREMENT_SIZE = 48
_MAX_MEASUREMENT = 64
_MAX_U16 = 0xFFFF
_DONT_CARE = "*"
_VMPL_LEVELS = range(4)
_DEFAULT_VMPL = frozenset({0})
_HEX = re.compile(r"[0-9a-fA-F]*")
_DURATION = re.compile(r"([0-9]+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40] + "…")
    if isinstance(value, int | float):
        return repr(value)
    return type(value).__name__


def _short(value: bytes, other: bytes | None = None) -> str:
    """Hex abbreviated to 8 bytes unless that would hide the difference from ``other``."""
    text = value.hex()
    if len(text) <= 16:
        return text
    if other is not None and other.hex()[:16] == text[:16]:
        return text
    return text[:16] + "…"


def _pair(expected: bytes, got: bytes | None) -> str:
    got_text = "none" if got is None else _short(got, expected)
    return f"expected {_short(expected, got)}, got {got_text}"


def parse_duration(value: object, name: str = "duration") -> timedelta:
    """Parse ``"30d"``, ``"12h"``, ``"15m"``, ``"3600s"`` or an integer of seconds."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise PolicyError(
            f"{name}: expected a duration like '30d', '12h', '15m', '3600s' or an integer "
            f"of seconds, got {_kind(value)}"
        )
    if seconds <= 0 or seconds != int(seconds):
        raise PolicyError(f"{name}: expected a positive whole number of seconds, got {seconds}")
    return timedelta(seconds=int(seconds))


def format_duration(value: timedelta) -> str:
    """The shortest of ``"30d"``/``"12h"``/``"15m"``/``"3600s"`` that is exact."""
    seconds = int(value.total_seconds())
    for unit, size in _UNITS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable: every whole second count divides by 1")


def _check_bytes(name: str, value: object, low: int, high: int) -> None:
    expected = f"{low}" if low == high else f"{low}..{high}"
    hex_expected = f"{2 * low}" if low == high else f"{2 * low}..{2 * high}"
    if not isinstance(value, bytes):
        raise PolicyError(f"{name}: expected {expected} bytes, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise PolicyError(
            f"{name}: expected {expected} bytes ({hex_expected} hex characters), "
            f"got {len(value)} bytes ({2 * len(value)} hex characters)"
        )


def _check_u16(name: str, value: object, high: int = _MAX_U16) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise PolicyError(f"{name}: expected an integer in 0..{high}, got {_kind(value)}")


@dataclass(frozen=True)
class Identity:
    """One ``[[allow]]`` entry: every field that is set must match the claims.

    ``rtmrs`` lists RTMR0..3 (``None`` = don't care); ``measurement`` is the
    SEV-SNP launch digest or the sim measurement; ``id_key_digest``,
    ``author_key_digest`` and ``min_guest_svn`` match the SEV-SNP ID block the guest
    was launched with; ``job_measurement`` is matched against
    ``Claims.extra["job_measurement"]`` (hex).
    """

    evidence_type: EvidenceType | None = None
    mrenclave: bytes | None = None
    mrsigner: bytes | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    mrtd: bytes | None = None
    rtmrs: tuple[bytes | None, ...] | None = None
    measurement: bytes | None = None
    host_data: bytes | None = None
    id_key_digest: bytes | None = None
    author_key_digest: bytes | None = None
    min_guest_svn: int | None = None
    job_measurement: bytes | None = None

    def __post_init__(self) -> None:
        evidence_type: object = self.evidence_type
        if evidence_type is not None and not isinstance(evidence_type, EvidenceType):
            try:
                object.__setattr__(self, "evidence_type", EvidenceType(str(evidence_type)))
            except ValueError:
                raise PolicyError(
                    f"evidence_type: expected one of {', '.join(t.value for t in EvidenceType)}, "
                    f"got {_kind(self.evidence_type)}"
                ) from None
        set_fields = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if not set_fields:
            raise PolicyError(
                "identity: sets no field; an identity that matches anything must be explicit, "
                "e.g. Identity(evidence_type=...)"
            )
        for name, size in _FIXED_SIZES.items():
            if (value := getattr(self, name)) is not None:
                _check_bytes(name, value, size, size)
        if self.measurement is not None:
            low = _SNP_MEASUREMENT_SIZE if self.evidence_type is EvidenceType.SNP else 1
            high = (
                _SNP_MEASUREMENT_SIZE
                if self.evidence_type is EvidenceType.SNP
                else _MAX_MEASUREMENT
            )
            _check_bytes("measurement", self.measurement, low, high)
        if self.job_measurement is not None:
            _check_bytes("job_measurement", self.job_measurement, 1, _MAX_MEASUREMENT)
        for name in ("isv_prod_id", "min_isv_svn"):
            if (value := getattr(self, name)) is not None:
                _check_u16(name, value)
        if self.min_guest_svn is not None:
            _check_u16("min_guest_svn", self.min_guest_svn, _MAX_U32)
        rtmrs: object = self.rtmrs
        if isinstance(rtmrs, list):
            object.__setattr__(self, "rtmrs", tuple(rtmrs))
        if self.rtmrs is not None:
            self._check_rtmrs()
        self._check_one_type(set_fields)

    def _check_rtmrs(self) -> None:
        rtmrs = self.rtmrs
        if not isinstance(rtmrs, tuple) or not 1 <= len(rtmrs) <= _RTMR_COUNT:
            got = f"{len(rtmrs)} entries" if isinstance(rtmrs, tuple) else _kind(rtmrs)
            raise PolicyError(f"rtmrs: expected a tuple of 1..{_RTMR_COUNT} entries, got {got}")
        for index, rtmr in enumerate(rtmrs):
            if rtmr is not None:
                _check_bytes(f"rtmrs[{index}]", rtmr, _RTMR_SIZE, _RTMR_SIZE)
        # All-don't-care would quietly turn the field into "allow any TD".
        if all(rtmr is None for rtmr in rtmrs):
            raise PolicyError("rtmrs: expected at least one RTMR value, got only don't-cares")

    def _check_one_type(self, set_fields: list[str]) -> None:
        possible = _ANY
        first: str | None = None
        for name in set_fields:
            types = _FIELD_TYPES.get(name)
            if types is None:
                continue
            if self.evidence_type is not None and self.evidence_type not in types:
                raise PolicyError(
                    f"{name}: applies to {'/'.join(sorted(types))} evidence, "
                    f"not {self.evidence_type.value}"
                )
            if not possible & types:
                raise PolicyError(
                    f"{name}: applies to {'/'.join(sorted(types))} evidence, but {first} "
                    f"applies to {'/'.join(sorted(possible))}; one identity describes one "
                    "evidence type"
                )
            possible = possible & types
            if types != _ANY:
                first = first or name

    def mismatches(self, claims: Claims) -> list[str]:
        """What differs between this identity and ``claims`` (empty: it matches)."""
        out: list[str] = []
        if self.evidence_type is not None and claims.evidence_type != self.evidence_type:
            out.append(
                f"type: expected {self.evidence_type.value}, got {claims.evidence_type.value}"
            )
            # Nothing else of another evidence type is worth comparing.
            return out
        for name in ("mrenclave", "mrsigner", "mrtd", "measurement", "host_data"):
            want = getattr(self, name)
            got = getattr(claims, name)
            if want is not None and got != want:
                out.append(f"{name}: {_pair(want, got)}")
        if self.isv_prod_id is not None and claims.isv_prod_id != self.isv_prod_id:
            out.append(f"isv_prod_id: expected {self.isv_prod_id}, got {claims.isv_prod_id}")
        if self.min_isv_svn is not None and (
            claims.isv_svn is None or claims.isv_svn < self.min_isv_svn
        ):
            out.append(f"isv_svn: expected ≥ {self.min_isv_svn}, got {claims.isv_svn}")
        for name in ("id_key_digest", "author_key_digest"):
            want = getattr(self, name)
            got_digest = _extra_bytes(claims, name)
            if want is not None and got_digest != want:
                out.append(f"{name}: {_pair(want, got_digest)}")
        if self.min_guest_svn is not None:
            svn = claims.extra.get("guest_svn")
            if not isinstance(svn, int) or svn < self.min_guest_svn:
                out.append(f"guest_svn: expected ≥ {self.min_guest_svn}, got {svn}")
        if self.rtmrs is not None:
            have = claims.rtmrs or ()
            for index, want_rtmr in enumerate(self.rtmrs):
                got_rtmr = have[index] if index < len(have) else None
                if want_rtmr is not None and got_rtmr != want_rtmr:
                    out.append(f"rtmr{index}: {_pair(want_rtmr, got_rtmr)}")
        if self.job_measurement is not None:
            got_job = _extra_bytes(claims, "job_measurement")
            if got_job != self.job_measurement:
                out.append(f"job_measurement: {_pair(self.job_measurement, got_job)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``[[allow]]`` table form: ``type`` and hex strings, unset fields left out."""
        out: dict[str, Any] = {}
        if self.evidence_type is not None:
            out["type"] = self.evidence_type.value
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "evidence_type" or value is None:
                continue
            if isinstance(value, bytes):
                value = value.hex()
            elif f.name == "rtmrs":
                value = [_DONT_CARE if r is None else r.hex() for r in value]
            out[f.name] = value
        return out


def _extra_bytes(claims: Claims, name: str) -> bytes | None:
    value = claims.extra.get(name)
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) % 2:
        return None
    return bytes.fromhex(value)


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
        if isinstance(self.allow, Identity) or not isinstance(self.allow, Iterable):
            raise PolicyError(f"allow: expected a sequence of Identity, got {_kind(self.allow)}")
        allow = tuple(self.allow)
        for index, identity in enumerate(allow):
            if not isinstance(identity, Identity):
                raise PolicyError(f"allow[{index}]: expected an Identity, got {_kind(identity)}")
        object.__setattr__(self, "allow", allow)
        for name in ("allow_simulated", "allow_debug"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(
                    f"{name}: expected true or false, got {_kind(getattr(self, name))}"
                )
        object.__setattr__(self, "min_tcb_status", _tcb_status(self.min_tcb_status))
        given: object = self.allowed_advisory_ids
        if isinstance(given, str) or not isinstance(given, Iterable):
            raise PolicyError(f"allowed_advisory_ids: expected a list of IDs, got {_kind(given)}")
        ids = frozenset(given)
        for advisory in ids:
            if not isinstance(advisory, str) or not advisory.strip():
                raise PolicyError(
                    f"allowed_advisory_ids: expected non-empty strings, got {_kind(advisory)}"
                )
        object.__setattr__(self, "allowed_advisory_ids", ids)
        if self.max_collateral_age is not None:
            object.__setattr__(
                self,
                "max_collateral_age",
                parse_duration(self.max_collateral_age, "max_collateral_age"),
            )
        if self.min_snp_tcb is not None:
            object.__setattr__(self, "min_snp_tcb", _snp_tcb(self.min_snp_tcb))
        object.__setattr__(self, "vmpl", _vmpl(self.vmpl))

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
                f"{_vmpl_text(self.vmpl)} (policy key vmpl)"
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
                f"({_pair(expected, claims.report_data)})"
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
            raise PolicyError(f"policy: expected a table, got {_kind(data)}")
        _check_keys("", data, _POLICY_KEYS)
        kwargs: dict[str, Any] = {}
        for name in ("allow_simulated", "allow_debug"):
            if name in data:
                if not isinstance(data[name], bool):
                    raise PolicyError(f"{name}: expected true or false, got {_kind(data[name])}")
                kwargs[name] = data[name]
        if "min_tcb_status" in data:
            kwargs["min_tcb_status"] = _tcb_status(data["min_tcb_status"])
        if "allowed_advisory_ids" in data:
            ids = data["allowed_advisory_ids"]
            if not isinstance(ids, list):
                raise PolicyError(f"allowed_advisory_ids: expected a list of IDs, got {_kind(ids)}")
            for index, advisory in enumerate(ids):
                if not isinstance(advisory, str) or not advisory.strip():
                    raise PolicyError(
                        f"allowed_advisory_ids[{index}]: expected an advisory ID like "
                        f"'INTEL-SA-00615', got {_kind(advisory)}"
                    )
            kwargs["allowed_advisory_ids"] = frozenset(ids)
        if "max_collateral_age" in data:
            kwargs["max_collateral_age"] = parse_duration(
                data["max_collateral_age"], "max_collateral_age"
            )
        if "min_snp_tcb" in data:
            kwargs["min_snp_tcb"] = _snp_tcb(data["min_snp_tcb"])
        if "vmpl" in data:
            kwargs["vmpl"] = _vmpl(data["vmpl"])
        if "allow" in data:
            entries = data["allow"]
            if not isinstance(entries, list):
                raise PolicyError(
                    f"allow: expected a list of tables ([[allow]] in TOML), got {_kind(entries)}"
                )
            kwargs["allow"] = tuple(
                _identity_from_dict(entry, f"allow[{index}]") for index, entry in enumerate(entries)
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


_POLICY_KEYS = (
    "allow",
    "allow_simulated",
    "allow_debug",
    "min_tcb_status",
    "allowed_advisory_ids",
    "max_collateral_age",
    "min_snp_tcb",
    "vmpl",
)
_SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
_IDENTITY_KEYS = ("type", *(f.name for f in fields(Identity) if f.name != "evidence_type"))


def _age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    minutes = rest // 60
    return f"{hours}h{minutes}m" if hours else f"{minutes}m{rest % 60}s"


def _tcb_status(value: object) -> TcbStatus:
    if isinstance(value, TcbStatus):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return TcbStatus(value)
    except ValueError:
        raise PolicyError(
            f"min_tcb_status: expected one of {', '.join(s.value for s in TcbStatus)}, "
            f"got {_kind(value)}"
        ) from None


def _check_keys(where: str, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
    for key in data:
        if key in known:
            continue
        path = f"{where}.{key}" if where else str(key)
        hint = difflib.get_close_matches(str(key), known, n=1)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        raise PolicyError(
            f"{path}: unknown key{did_you_mean} (expected one of: {', '.join(known)})"
        )


def _hex(where: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: expected a hex string, got {_kind(value)}")
    if not _HEX.fullmatch(value) or len(value) % 2:
        raise PolicyError(f"{where}: expected an even number of hex digits, got {_kind(value)}")
    return bytes.fromhex(value)


def _identity_from_dict(entry: object, where: str) -> Identity:
    if not isinstance(entry, Mapping):
        raise PolicyError(f"{where}: expected a table, got {_kind(entry)}")
    if not entry:
        raise PolicyError(
            f'{where}: sets no field; to allow any evidence of a type, say so with type = "..."'
        )
    _check_keys(where, entry, _IDENTITY_KEYS)
    kwargs: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "type":
            try:
                if not isinstance(value, str):
                    raise ValueError(value)
                kwargs["evidence_type"] = EvidenceType(value)
            except ValueError:
                raise PolicyError(
                    f"{where}.type: expected one of {', '.join(t.value for t in EvidenceType)}, "
                    f"got {_kind(value)}"
                ) from None
        elif key in ("isv_prod_id", "min_isv_svn"):
            _check_u16(f"{where}.{key}", value)
            kwargs[key] = value
        elif key == "min_guest_svn":
            _check_u16(f"{where}.{key}", value, _MAX_U32)
            kwargs[key] = value
        elif key == "rtmrs":
            if not isinstance(value, list):
                raise PolicyError(
                    f"{where}.rtmrs: expected a list of hex strings or '*', got {_kind(value)}"
                )
            kwargs[key] = tuple(
                None if item in (None, _DONT_CARE) else _hex(f"{where}.rtmrs[{index}]", item)
                for index, item in enumerate(value)
            )
        else:
            kwargs[key] = _hex(f"{where}.{key}", value)
    try:
        return Identity(**kwargs)
    except PolicyError as exc:
        # Identity's messages start with the field's name, which is also its key here.
        raise PolicyError(f"{where}.{exc}") from None


class _Levels(Mapping[str, int]):
    """Component levels: read-only and hashable, as a frozen policy must be."""

    def __init__(self, levels: Mapping[str, int]) -> None:
        self._levels = dict(levels)

    def __getitem__(self, name: str) -> int:
        return self._levels[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._levels)

    def __len__(self) -> int:
        return len(self._levels)

    def __hash__(self) -> int:
        return hash(frozenset(self._levels.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(other) == self._levels

    def __repr__(self) -> str:
        return repr(self._levels)


def _snp_tcb(value: object) -> Mapping[str, int]:
    if not isinstance(value, Mapping):
        raise PolicyError(
            f"min_snp_tcb: expected a table of component levels like "
            f"{{snp = 22, microcode = 213}}, got {_kind(value)}"
        )
    _check_keys("min_snp_tcb", value, _SNP_TCB_COMPONENTS)
    out: dict[str, int] = {}
    for name in _SNP_TCB_COMPONENTS:
        if name not in value:
            continue
        level = value[name]
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 0xFF:
            raise PolicyError(f"min_snp_tcb.{name}: expected an integer 0..255, got {_kind(level)}")
        out[name] = level
    if not out:
        raise PolicyError(
            f"min_snp_tcb: expected at least one of {', '.join(_SNP_TCB_COMPONENTS)}, got none"
        )
    return _Levels(out)


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


def _vmpl(value: object) -> frozenset[int]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise PolicyError(f"vmpl: expected a list of VMPL levels 0..3 like [0], got {_kind(value)}")
    levels = list(value)
    if not levels:
        raise PolicyError("vmpl: expected at least one VMPL level 0..3, got an empty list")
    for index, level in enumerate(levels):
        if not isinstance(level, int) or isinstance(level, bool) or level not in _VMPL_LEVELS:
            raise PolicyError(f"vmpl[{index}]: expected an integer 0..3, got {_kind(level)}")
    return frozenset(levels)


def _vmpl_text(levels: frozenset[int]) -> str:
    return "[" + ", ".join(str(level) for level in sorted(levels)) + "]"
