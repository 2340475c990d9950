import pytest

from trustedml import errors

# Warnings live beside the tree, not in it: nothing catches them as errors.
WARNINGS = [name for name in errors.__all__ if issubclass(getattr(errors, name), Warning)]
NAMES = [name for name in errors.__all__ if name not in WARNINGS]
ERRORS = [getattr(errors, name) for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_every_error_descends_from_the_root(name: str) -> None:
    assert issubclass(getattr(errors, name), errors.TrustedMLError)


def test_the_warnings_are_user_warnings_outside_the_tree() -> None:
    assert WARNINGS == ["EngineFallbackWarning"]
    for name in WARNINGS:
        warning = getattr(errors, name)
        assert issubclass(warning, UserWarning)
        assert not issubclass(warning, errors.TrustedMLError)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_has_one_parent_in_the_tree(error: type[BaseException]) -> None:
    # One parent: an `except` clause or an exit code follows one path up the tree.
    parents = [base for base in error.__bases__ if issubclass(base, errors.TrustedMLError)]
    assert len(parents) == (0 if error is errors.TrustedMLError else 1), error.__bases__


def test_the_tree() -> None:
    parent = {
        error.__name__: next(
            base.__name__ for base in error.__bases__ if issubclass(base, errors.TrustedMLError)
        )
        for error in ERRORS
        if error is not errors.TrustedMLError
    }
    assert parent == {
        "ConfigError": "TrustedMLError",
        "SparkConfigError": "ConfigError",
        "IntegrityError": "TrustedMLError",
        "NotEncryptedError": "IntegrityError",
        "UnsealError": "IntegrityError",
        "AuditLogError": "IntegrityError",
        "KeyStoreError": "TrustedMLError",
        "KubernetesError": "TrustedMLError",
        "KeyNotFoundError": "IntegrityError",
        "KeyBrokerError": "KeyStoreError",
        "BrokerRefusedError": "KeyBrokerError",
        "BrokerKeyNotFoundError": "KeyNotFoundError",
        "BrokerUnavailableError": "KeyBrokerError",
        "KeyDirectoryError": "TrustedMLError",
        "KeyDirectoryExistsError": "KeyDirectoryError",
        "LaunchError": "TrustedMLError",
        "PreflightError": "LaunchError",
        "ClusterError": "TrustedMLError",
        "ClusterStateError": "ClusterError",
        "AttestationError": "TrustedMLError",
        "EvidenceFormatError": "AttestationError",
        "UnsupportedEvidenceError": "EvidenceFormatError",
        "EvidenceSignatureError": "AttestationError",
        "EvidenceBindingError": "AttestationError",
        "CertificateChainError": "AttestationError",
        "CollateralError": "AttestationError",
        "CollateralExpiredError": "CollateralError",
        "TcbLevelNotFoundError": "AttestationError",
        "PolicyError": "AttestationError",
        "EvidenceProviderError": "AttestationError",
    }


def test_config_and_format_errors_are_value_errors() -> None:
    assert issubclass(errors.SparkConfigError, ValueError)
    assert issubclass(errors.EvidenceFormatError, ValueError)


def test_a_broker_refusal_carries_its_status_code_and_reasons() -> None:
    refused = errors.BrokerRefusedError("no", status=403, code="policy_refused", reasons=["a"])
    missing = errors.BrokerKeyNotFoundError("no key 'k'", status=404, code="unknown_key")
    assert (refused.status, refused.code, refused.reasons) == (403, "policy_refused", ("a",))
    assert (missing.status, missing.code, missing.reasons) == (404, "unknown_key", ())
    assert str(missing) == "no key 'k'"
    # A broker without the key is a key store without it, as a local one is: the
    # data cannot be opened.
    assert isinstance(missing, errors.KeyNotFoundError)
    assert isinstance(missing, errors.IntegrityError)
    assert not isinstance(missing, errors.BrokerRefusedError)


def test_reworded_keeps_the_type_and_attributes() -> None:
    refused = errors.BrokerKeyNotFoundError("no key 'k'", status=404, code="unknown_key")
    copy = errors.reworded(refused, f"data.tml: {refused}")
    assert type(copy) is errors.BrokerKeyNotFoundError
    assert (copy.status, copy.code, copy.reasons) == (404, "unknown_key", ())
    assert str(copy) == "data.tml: no key 'k'"
    assert str(refused) == "no key 'k'"
