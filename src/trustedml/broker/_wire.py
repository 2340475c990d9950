"""Bounded JSON for the broker's request bodies: depth, number length, strict UTF-8."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from trustedml.errors import KeyBrokerError

MAX_DEPTH = 16
MAX_NUMBER_LENGTH = 40

# Escapes first, left to right (as a JSON scanner reads them), then strings: both
# linear, and a string can then hide no quote and no bracket from the count.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class WireFormatError(KeyBrokerError):
    """A request body the broker will not parse; the message says why (expected vs got)."""


def json_depth(body: bytes, limit: int = MAX_DEPTH) -> int:
    """How deeply ``body`` nests arrays and objects, counting up to ``limit + 1``
    (enough to refuse it) without parsing it. Brackets inside strings do not count."""
    brackets = _STRING.sub(b"", _ESCAPE.sub(b"", body)).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:  # cannot nest deeper than it has brackets
        return _depth(brackets, len(brackets))
    return _depth(brackets, limit)


def _depth(brackets: bytes, limit: int) -> int:
    depth = deepest = 0
    for byte in brackets:
        depth += _STEP[byte]
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


def _number(text: str) -> None:
    if len(text) > MAX_NUMBER_LENGTH:
        raise WireFormatError(
            f"request body: expected numbers of at most {MAX_NUMBER_LENGTH} characters, "
            f"got one of {len(text)}"
        )


def _int(text: str) -> int:
    _number(text)
    return int(text)


def _float(text: str) -> float:
    _number(text)
    value = float(text)
    if not math.isfinite(value):
        raise WireFormatError(f"request body: expected a finite number, got {text[:20]}")
    return value


def _constant(name: str) -> Any:
    raise WireFormatError(f"request body: expected standard JSON, got {name}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise WireFormatError(
                    f"request body: expected unique member names, got {name[:40]!r} twice"
                )
            seen.add(name)
    return doc


def _check_text(value: Any) -> None:
    # A lone surrogate (\ud800) parses but cannot be encoded: refuse it here rather
    # than fail later in a log, a database row or an error message.
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise WireFormatError(
                    "request body: expected Unicode text, got a lone surrogate escape"
                ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


def loads(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a request body as UTF-8 JSON, refusing (:class:`WireFormatError`) what is
    nested deeper than ``max_depth``, numbers longer than :data:`MAX_NUMBER_LENGTH`
    characters, NaN and Infinity, duplicate member names and lone surrogates. The
    depth is checked before parsing, so a hostile body never reaches the recursion
    limit."""
    depth = json_depth(body, max_depth)
    if depth > max_depth:
        raise WireFormatError(
            f"request body: expected JSON nested at most {max_depth} levels deep, "
            f"got more than {max_depth}"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireFormatError(
            f"request body: expected UTF-8, got an invalid byte at offset {exc.start}"
        ) from None
    try:
        doc = json.loads(
            text,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
    except json.JSONDecodeError as exc:
        raise WireFormatError(f"request body: expected JSON, got invalid JSON ({exc})") from None
    except RecursionError:  # not reachable after the depth check; kept as a backstop
        raise WireFormatError("request body: nested too deeply") from None
    _check_text(doc)
    return doc


def loads_object(body: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """:func:`loads`, and the document must be a JSON object."""
    doc = loads(body, max_depth=max_depth)
    if not isinstance(doc, dict):
        raise WireFormatError(f"request body: expected a JSON object, got {_json_type(doc)}")
    return doc


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


__all__ = [
    "MAX_DEPTH",
    "MAX_NUMBER_LENGTH",
    "WireFormatError",
    "json_depth",
    "loads",
    "loads_object",
]
