from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from trustedml.spark._records import split_csv_records, split_lines


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"x")), max_size=12),
    trailing=st.booleans(),
    chunk=st.integers(min_value=1, max_value=9),
    cuts=st.sets(st.integers(min_value=1, max_value=60), max_size=6),
)
def test_every_line_read_exactly_once_whatever_the_splits(
    lines: list[bytes], trailing: bool, chunk: int, cuts: set[int]
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    n = len(chunks)
    bounds = [0, *sorted(c for c in cuts if c < n), n]
    got: list[bytes] = []
    for first, stop in itertools.pairwise(bounds):
        got += split_lines(chunks.__getitem__, n, chunk, first, stop)
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert got == [e.removesuffix(b"\r") for e in expected]


def test_crlf_is_stripped() -> None:
    chunks = [b"a\r\nb\r", b"\nc"]
    assert list(split_lines(chunks.__getitem__, 2, 5, 0, 2)) == [b"a", b"b", b"c"]


def test_csv_records_keep_quoted_newlines() -> None:
    data = b'id,note\n1,"two\nlines"\n2,"esc \\" q\nx"\n3,plain\r\n'
    assert list(split_csv_records(data)) == [
        b"id,note",
        b'1,"two\nlines"',
        b'2,"esc \\" q\nx"',
        b"3,plain",
    ]
