"""Validators of appraisal policy values, one per kind (durations, TCB statuses,
advisory IDs, SEV-SNP TCB minimums, VMPL levels, byte strings, small integers): the
same functions check a Policy or Identity built in code and one read from a file, so
each fault has one message, naming the field or key."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeGuard

from trustedml.attestation._model import TcbStatus
from trustedml.errors import PolicyError

__all__ = [
    "HEX",
    "MAX_U32",
    "SNP_TCB_COMPONENTS",
    "advisory_ids",
    "check_bytes",
    "check_keys",
    "check_uint",
    "flag",
    "format_duration",
    "hex_bytes",
    "kind",
    "pair",
    "parse_duration",
    "snp_tcb",
    "tcb_status",
    "vmpl_levels",
    "vmpl_text",
]

MAX_U32 = 0xFFFFFFFF
_MAX_U16 = 0xFFFF
_VMPL_LEVELS = range(4)
SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
HEX = re.compile(r"[0-9a-fA-F]*")
_DURATION = re.compile(r"([0-9]+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def kind(value: object) -> str:
    """How ``value`` reads in a message: TOML words for tables, lists and booleans."""
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


def pair(expected: bytes, got: bytes | None) -> str:
    """ "expected X, got Y" for a mismatch, in hex short enough to read."""
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
            f"of seconds, got {kind(value)}"
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


def check_bytes(name: str, value: object, low: int, high: int) -> None:
    """``value`` is bytes of ``low``..``high`` bytes (sizes also said in hex digits)."""
    expected = f"{low}" if low == high else f"{low}..{high}"
    hex_expected = f"{2 * low}" if low == high else f"{2 * low}..{2 * high}"
    if not isinstance(value, bytes):
        raise PolicyError(f"{name}: expected {expected} bytes, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise PolicyError(
            f"{name}: expected {expected} bytes ({hex_expected} hex characters), "
            f"got {len(value)} bytes ({2 * len(value)} hex characters)"
        )


def check_uint(name: str, value: object, high: int = _MAX_U16) -> None:
    """``value`` is an integer (not a bool) in 0..``high``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise PolicyError(f"{name}: expected an integer in 0..{high}, got {kind(value)}")


def hex_bytes(where: str, value: object) -> bytes:
    """The bytes of a hex string in the file form."""
    if not isinstance(value, str):
        raise PolicyError(f"{where}: expected a hex string, got {kind(value)}")
    if not HEX.fullmatch(value) or len(value) % 2:
        raise PolicyError(f"{where}: expected an even number of hex digits, got {kind(value)}")
    return bytes.fromhex(value)


def check_keys(where: str, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """Every key of a file-form table is known; a typo gets a did-you-mean."""
    for key in data:
        if key in known:
            continue
        path = f"{where}.{key}" if where else str(key)
        hint = difflib.get_close_matches(str(key), known, n=1)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        raise PolicyError(
            f"{path}: unknown key{did_you_mean} (expected one of: {', '.join(known)})"
        )


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{name}: expected true or false, got {kind(value)}")
    return value


def tcb_status(value: object) -> TcbStatus:
    if isinstance(value, TcbStatus):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return TcbStatus(value)
    except ValueError:
        raise PolicyError(
            f"min_tcb_status: expected one of {', '.join(s.value for s in TcbStatus)}, "
            f"got {kind(value)}"
        ) from None


def _listing(value: object) -> TypeGuard[Iterable[object]]:
    # A list of values, in code or in a file: not a string, bytes or a table.
    return isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping)


def advisory_ids(value: object) -> frozenset[str]:
    if not _listing(value):
        raise PolicyError(f"allowed_advisory_ids: expected a list of IDs, got {kind(value)}")
    ids: list[str] = []
    for index, advisory in enumerate(value):
        if not isinstance(advisory, str) or not advisory.strip():
            raise PolicyError(
                f"allowed_advisory_ids[{index}]: expected an advisory ID like "
                f"'INTEL-SA-00615', got {kind(advisory)}"
            )
        ids.append(advisory)
    return frozenset(ids)


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


def snp_tcb(value: object) -> Mapping[str, int]:
    if not isinstance(value, Mapping):
        raise PolicyError(
            f"min_snp_tcb: expected a table of component levels like "
            f"{{snp = 22, microcode = 213}}, got {kind(value)}"
        )
    check_keys("min_snp_tcb", value, SNP_TCB_COMPONENTS)
    out: dict[str, int] = {}
    for name in SNP_TCB_COMPONENTS:
        if name not in value:
            continue
        level = value[name]
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 0xFF:
            raise PolicyError(f"min_snp_tcb.{name}: expected an integer 0..255, got {kind(level)}")
        out[name] = level
    if not out:
        raise PolicyError(
            f"min_snp_tcb: expected at least one of {', '.join(SNP_TCB_COMPONENTS)}, got none"
        )
    return _Levels(out)


def vmpl_levels(value: object) -> frozenset[int]:
    if not _listing(value):
        raise PolicyError(f"vmpl: expected a list of VMPL levels 0..3 like [0], got {kind(value)}")
    levels: list[int] = []
    for index, level in enumerate(value):
        if not isinstance(level, int) or isinstance(level, bool) or level not in _VMPL_LEVELS:
            raise PolicyError(f"vmpl[{index}]: expected an integer 0..3, got {kind(level)}")
        levels.append(level)
    if not levels:
        raise PolicyError("vmpl: expected at least one VMPL level 0..3, got an empty list")
    return frozenset(levels)


def vmpl_text(levels: frozenset[int]) -> str:
    return "[" + ", ".join(str(level) for level in sorted(levels)) + "]"
