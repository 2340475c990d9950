"""One ``[[allow]]`` entry of an appraisal policy: the :class:`Identity` dataclass,
whose construction is the one place an identity is validated, and its file form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from trustedml.attestation._model import Claims, EvidenceType
from trustedml.attestation._policy_fields import (
    HEX,
    MAX_U32,
    check_bytes,
    check_keys,
    check_uint,
    hex_bytes,
    kind,
    pair,
)
from trustedml.errors import PolicyError

__all__ = ["Identity", "identity_from_dict"]

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
_RTMR_SIZE = 48
_RTMR_COUNT = 4
_SNP_MEASUREMENT_SIZE = 48
_MAX_MEASUREMENT = 64
_DONT_CARE = "*"


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
                    f"got {kind(self.evidence_type)}"
                ) from None
        set_fields = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if not set_fields:
            raise PolicyError(
                "identity: sets no field; an identity that matches anything must say so with "
                'its type (Identity(evidence_type=...), or type = "..." in a policy file)'
            )
        for name, size in _FIXED_SIZES.items():
            if (value := getattr(self, name)) is not None:
                check_bytes(name, value, size, size)
        if self.measurement is not None:
            snp = self.evidence_type is EvidenceType.SNP
            low = _SNP_MEASUREMENT_SIZE if snp else 1
            high = _SNP_MEASUREMENT_SIZE if snp else _MAX_MEASUREMENT
            check_bytes("measurement", self.measurement, low, high)
        if self.job_measurement is not None:
            check_bytes("job_measurement", self.job_measurement, 1, _MAX_MEASUREMENT)
        for name in ("isv_prod_id", "min_isv_svn"):
            if (value := getattr(self, name)) is not None:
                check_uint(name, value)
        if self.min_guest_svn is not None:
            check_uint("min_guest_svn", self.min_guest_svn, MAX_U32)
        rtmrs: object = self.rtmrs
        if isinstance(rtmrs, list):
            object.__setattr__(self, "rtmrs", tuple(rtmrs))
        if self.rtmrs is not None:
            self._check_rtmrs()
        self._check_one_type(set_fields)

    def _check_rtmrs(self) -> None:
        rtmrs = self.rtmrs
        if not isinstance(rtmrs, tuple) or not 1 <= len(rtmrs) <= _RTMR_COUNT:
            got = f"{len(rtmrs)} entries" if isinstance(rtmrs, tuple) else kind(rtmrs)
            raise PolicyError(f"rtmrs: expected a tuple of 1..{_RTMR_COUNT} entries, got {got}")
        for index, rtmr in enumerate(rtmrs):
            if rtmr is not None:
                check_bytes(f"rtmrs[{index}]", rtmr, _RTMR_SIZE, _RTMR_SIZE)
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
                out.append(f"{name}: {pair(want, got)}")
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
                out.append(f"{name}: {pair(want, got_digest)}")
        if self.min_guest_svn is not None:
            svn = claims.extra.get("guest_svn")
            if not isinstance(svn, int) or svn < self.min_guest_svn:
                out.append(f"guest_svn: expected ≥ {self.min_guest_svn}, got {svn}")
        if self.rtmrs is not None:
            have = claims.rtmrs or ()
            for index, want_rtmr in enumerate(self.rtmrs):
                got_rtmr = have[index] if index < len(have) else None
                if want_rtmr is not None and got_rtmr != want_rtmr:
                    out.append(f"rtmr{index}: {pair(want_rtmr, got_rtmr)}")
        if self.job_measurement is not None:
            got_job = _extra_bytes(claims, "job_measurement")
            if got_job != self.job_measurement:
                out.append(f"job_measurement: {pair(self.job_measurement, got_job)}")
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
    if not isinstance(value, str) or not HEX.fullmatch(value) or len(value) % 2:
        return None
    return bytes.fromhex(value)


_IDENTITY_KEYS = ("type", *(f.name for f in fields(Identity) if f.name != "evidence_type"))


def identity_from_dict(entry: object, where: str) -> Identity:
    """An Identity from its ``[[allow]]`` table (``type``, hex strings, ``"*"`` for a
    don't-care RTMR). The table is only translated here; :class:`Identity` validates,
    and its messages are re-addressed to the key (``allow[0].mrsigner: ...``)."""
    if not isinstance(entry, Mapping):
        raise PolicyError(f"{where}: expected a table, got {kind(entry)}")
    check_keys(where, entry, _IDENTITY_KEYS)
    kwargs: dict[str, Any] = {}
    for key, value in entry.items():
        if key in ("type", "isv_prod_id", "min_isv_svn", "min_guest_svn"):
            kwargs["evidence_type" if key == "type" else key] = value
        elif key == "rtmrs":
            if not isinstance(value, list):
                raise PolicyError(
                    f"{where}.rtmrs: expected a list of hex strings or '*', got {kind(value)}"
                )
            kwargs[key] = tuple(
                None if item in (None, _DONT_CARE) else hex_bytes(f"{where}.rtmrs[{index}]", item)
                for index, item in enumerate(value)
            )
        else:
            kwargs[key] = hex_bytes(f"{where}.{key}", value)
    try:
        return Identity(**kwargs)
    except PolicyError as exc:
        raise _at_key(where, exc) from None


def _at_key(where: str, exc: PolicyError) -> PolicyError:
    # Identity's messages start with the field's name, which is also its key in the
    # file form, except evidence_type (key "type") and the identity as a whole.
    field, _, rest = str(exc).partition(": ")
    if field == "identity":
        return PolicyError(f"{where}: {rest}")
    key = "type" if field == "evidence_type" else field
    return PolicyError(f"{where}.{key}: {rest}")
