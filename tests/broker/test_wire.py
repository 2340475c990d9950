"""Bounded JSON (broker/_wire.py): the depth pre-scan agrees with the parser, valid
documents parse as json.loads parses them, and every limit is refused by name."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustedml.broker._wire import (
    MAX_DEPTH,
    MAX_NUMBER_LENGTH,
    WireFormatError,
    json_depth,
    loads,
    loads_object,
)

# Strings full of what could fool a scanner: quotes, backslashes, brackets.
tricky_text = st.text(alphabet=st.sampled_from('ab"\\[]{}\n\u00e9\U0001f600'), max_size=12)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=25,
)


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=values, ensure_ascii=st.booleans())
def test_depth_scan_matches_the_parsed_depth(value: Any, ensure_ascii: bool) -> None:
    body = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    expected = depth_of(value)
    assert json_depth(body, limit=100) == expected
    if expected <= MAX_DEPTH:
        assert loads(body) == json.loads(body)
    else:
        with pytest.raises(WireFormatError, match="nested at most"):
            loads(body)


@settings(max_examples=200, deadline=None)
@given(depth=st.integers(0, 60), text=tricky_text)
def test_nesting_at_the_limit(depth: int, text: str) -> None:
    body = ("[" * depth + json.dumps(text) + "]" * depth).encode()
    if depth <= MAX_DEPTH:
        assert json_depth(body) == depth
        assert loads(body) is not None
    else:
        assert json_depth(body) == MAX_DEPTH + 1  # counting stops once it is too deep
        with pytest.raises(WireFormatError, match=f"at most {MAX_DEPTH} levels"):
            loads(body)


def test_brackets_in_strings_and_escapes_do_not_count() -> None:
    assert json_depth(b'{"a":"[[[[[[[[[[[[[[[[[[[[[["}') == 1
    assert json_depth(b'["\\"[[[[[[[[[[[[[[[[[[[[["]') == 1
    assert json_depth(b'["\\\\", [[]]]') == 3
    # Outside a string an escape is invalid JSON; the count can only be higher then.
    with pytest.raises(WireFormatError):
        loads(b'\\"' + b"[" * 50 + b'"')


def test_the_scan_is_linear_on_hostile_escapes() -> None:
    for body in (b'"' + b'\\"' * 300_000, b'"' * 600_000, b"\\" * 600_000, b"[" * 600_000):
        start = time.perf_counter()
        with pytest.raises(WireFormatError):
            loads(body)
        assert time.perf_counter() - start < 1.0, body[:10]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"1" * (MAX_NUMBER_LENGTH + 1), f"at most {MAX_NUMBER_LENGTH} characters, got one of 41"),
        (b"-" + b"1" * MAX_NUMBER_LENGTH, "got one of 41"),
        (b"1." + b"0" * 5000, "got one of 5002"),
        (b"1e400", "finite number"),
        (b"-1e400", "finite number"),
        (b"NaN", "got NaN"),
        (b"Infinity", "got Infinity"),
        (b"[-Infinity]", "got -Infinity"),
        (b'{"a":1,"b":2,"a":3}', "'a' twice"),
        (b'["\\udfff"]', "lone surrogate"),
        (b'{"\\ud800":1}', "lone surrogate"),
        (b'"\xc3"', "expected UTF-8, got an invalid byte at offset 1"),
        (b"\xff\xfe{\x00}\x00", "expected UTF-8"),
        (b"", "expected JSON"),
        (b"{", "expected JSON"),
    ],
)
def test_limits_are_refused_by_name(body: bytes, fragment: str) -> None:
    with pytest.raises(WireFormatError) as info:
        loads(body)
    assert fragment in str(info.value)
    assert str(info.value).startswith("request body: expected")


def test_accepted_edges() -> None:
    assert loads(b"1" * MAX_NUMBER_LENGTH) == int("1" * MAX_NUMBER_LENGTH)
    assert loads(b'"\\ud83d\\ude00"') == "\U0001f600"  # a surrogate pair is one character
    assert loads(b' \n{"a": [1.5, -0, true, null]}\t') == {"a": [1.5, 0, True, None]}
    assert loads_object(b'{"k":"v"}') == {"k": "v"}


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[]", "an array"), (b"null", "null"), (b"1", "a number"), (b'"x"', "a string"),
     (b"true", "a boolean")],
)  # fmt: skip
def test_loads_object_names_what_it_got(body: bytes, kind: str) -> None:
    with pytest.raises(WireFormatError, match=f"expected a JSON object, got {kind}"):
        loads_object(body)


def test_messages_never_echo_the_body() -> None:
    secret = "c2VjcmV0LXZhbHVl"
    for body in (
        f'{{"a":"{secret}", "a":1}}',
        f'{{"x":"{secret}" ',
        f'["{secret}", NaN]',
    ):
        with pytest.raises(WireFormatError) as info:
            loads(body.encode())
        assert secret not in str(info.value)
