import pickle

import pytest

from trustedml import Secret


def test_repr_str_and_format_hide_the_value() -> None:
    s = Secret("hunter2-hunter2")
    for shown in (repr(s), str(s), f"{s}", f"{s!r}", f"{[s]}"):
        assert "hunter2" not in shown


def test_reveal_returns_the_value() -> None:
    assert Secret("abc").reveal() == b"abc"
    assert Secret(b"abc").reveal_text() == "abc"
    assert len(Secret("abcd")) == 4


def test_equality_compares_values_and_secrets_are_unhashable() -> None:
    assert Secret("a") == Secret(b"a")
    assert Secret("a") != Secret("b")
    with pytest.raises(TypeError):
        hash(Secret("a"))


def test_pickling_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret("a"))


def test_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="bytes or str"):
        Secret(123)  # type: ignore[arg-type]
