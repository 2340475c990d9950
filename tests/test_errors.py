import pytest

from trustedml import errors


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_descends_from_the_root(name: str) -> None:
    assert issubclass(getattr(errors, name), errors.TrustedMLError)


def test_config_errors_are_value_errors() -> None:
    assert issubclass(errors.SparkConfigError, ValueError)


def test_unseal_is_both_a_key_and_an_integrity_failure() -> None:
    assert issubclass(errors.UnsealError, errors.KeyDirectoryError)
    assert issubclass(errors.UnsealError, errors.IntegrityError)


def test_reworded_keeps_the_type_and_attributes() -> None:
    refused = errors.BrokerKeyNotFoundError("no key 'k'", status=404, code="unknown_key")
    copy = errors.reworded(refused, f"data.tml: {refused}")
    assert type(copy) is errors.BrokerKeyNotFoundError
    assert (copy.status, copy.code, copy.reasons) == (404, "unknown_key", ())
    assert str(copy) == "data.tml: no key 'k'"
    assert str(refused) == "no key 'k'"
