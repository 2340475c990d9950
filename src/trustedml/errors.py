"""The exception tree of trusted-ml: one root, one subtree per layer, one parent each.

Every error has exactly one parent inside the tree (ValueError beside ConfigError and
EvidenceFormatError is not a branch of it), so ``except`` clauses and exit codes follow
one path: data that cannot be opened (IntegrityError: tampered, a wrong or missing key,
a wrong passphrase, an audit log that does not verify), what a key store cannot do
(KeyStoreError: the broker's refusals), what the user must change (ConfigError,
KeyDirectoryError, PolicyError: exit 2 in the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = [
    "AttestationError",
    "AuditLogError",
    "BrokerKeyNotFoundError",
    "BrokerRefusedError",
    "BrokerUnavailableError",
    "CertificateChainError",
    "ClusterError",
    "ClusterStateError",
    "CollateralError",
    "CollateralExpiredError",
    "ConfigError",
    "EngineFallbackWarning",
    "EvidenceBindingError",
    "EvidenceFormatError",
    "EvidenceProviderError",
    "EvidenceSignatureError",
    "IntegrityError",
    "KeyBrokerError",
    "KeyDirectoryError",
    "KeyDirectoryExistsError",
    "KeyNotFoundError",
    "KeyStoreError",
    "KubernetesError",
    "LaunchError",
    "NotEncryptedError",
    "PolicyError",
    "PreflightError",
    "SparkConfigError",
    "TcbLevelNotFoundError",
    "TrustedMLError",
    "UnsealError",
    "UnsupportedEvidenceError",
]

E = TypeVar("E", bound=BaseException)


class TrustedMLError(Exception):
    """Root of every error trusted-ml raises on purpose.

    Messages name what failed and never contain secret values.
    """


class ConfigError(TrustedMLError, ValueError):
    """A setting or an argument is invalid (says expected vs got)."""


class IntegrityError(TrustedMLError):
    """Authenticated data failed to verify: tampered, truncated or wrong key."""


class NotEncryptedError(IntegrityError):
    """The input is not a trusted-ml encrypted file."""


class KeyStoreError(TrustedMLError):
    """A key store could not create or release a key (a missing one is a
    :class:`KeyNotFoundError`)."""


class KeyNotFoundError(IntegrityError):
    """No key-encryption key with the requested id: this store cannot open the data
    (as for a wrong key, or a file whose key id was altered)."""


class KeyDirectoryError(TrustedMLError):
    """The key directory is missing, incomplete or unreadable."""


class KeyDirectoryExistsError(KeyDirectoryError):
    """`keys init` would overwrite an existing key directory."""


class UnsealError(IntegrityError):
    """Sealed secrets could not be opened: wrong passphrase or a modified file."""


class SparkConfigError(ConfigError):
    """A Spark setting conflicts with the secure configuration."""


class LaunchError(TrustedMLError):
    """A job could not be started (missing Spark, Java, TEE backend...)."""


class PreflightError(LaunchError):
    """A standalone master failed the check made before a job starts: it does not
    answer, refuses the job's secret, or speaks another RPC cipher; the message names
    which."""


class ClusterError(TrustedMLError):
    """A Spark standalone cluster could not be started, reached, read or stopped."""


class ClusterStateError(ClusterError):
    """A cluster directory's state file is missing, corrupt, unsafe or not trusted-ml's."""


class KubernetesError(TrustedMLError):
    """Spark-on-Kubernetes manifests could not be rendered, checked or applied (an API
    server's refusal names the object and the status, never Secret data)."""


class AttestationError(TrustedMLError):
    """Evidence could not be parsed, verified or produced."""


class EvidenceFormatError(AttestationError, ValueError):
    """Evidence bytes are malformed; the message names the field."""


class UnsupportedEvidenceError(EvidenceFormatError):
    """Evidence of a version, type or algorithm this verifier does not handle."""


class EvidenceSignatureError(AttestationError):
    """A signature over evidence (quote, QE report, SNP report, sim evidence) is invalid."""


class EvidenceBindingError(AttestationError):
    """Two pieces of evidence that must be bound together are not (e.g. QE report_data)."""


class CertificateChainError(AttestationError):
    """A certificate does not chain to the pinned vendor root, is expired or revoked."""


class CollateralError(AttestationError):
    """Verification collateral (TCB info, QE identity, CRLs, VCEK) is missing or invalid."""


class CollateralExpiredError(CollateralError):
    """Collateral is not valid at the verification time (expired or not yet valid)."""


class TcbLevelNotFoundError(AttestationError):
    """No TCB level of the platform's TCB info matches the evidence."""


class PolicyError(AttestationError):
    """An appraisal policy is invalid (says expected vs got). The CLI treats it as a
    usage error (exit 2), like a :class:`ConfigError`: the operator must fix the file."""


class EvidenceProviderError(AttestationError):
    """A TEE could not produce evidence (device missing, race, wrong provider)."""


class KeyBrokerError(KeyStoreError):
    """The key broker, its store or its client failed."""


class _Refusal:
    """What a broker's refusal carries besides its message: ``status`` is the HTTP status,
    ``code`` the error code of docs/broker-protocol.md and ``reasons`` every reason it
    gave. A mixin, not a branch of the tree: the error class after it is the parent."""

    status: int
    code: str
    reasons: tuple[str, ...]

    def __init__(
        self, message: str, *, status: int, code: str, reasons: Sequence[str] = ()
    ) -> None:
        super().__init__(message)  # type: ignore[call-arg]  # the error class's __init__
        self.status = status
        self.code = code
        self.reasons = tuple(reasons)


class BrokerRefusedError(_Refusal, KeyBrokerError):
    """The broker refused a request; ``status`` is the HTTP status, ``code`` the error
    code of docs/broker-protocol.md and ``reasons`` every reason it gave."""


class BrokerKeyNotFoundError(_Refusal, KeyNotFoundError):
    """The broker has no key (or key version) with the requested id (HTTP 404): a
    :class:`KeyNotFoundError` like any key store's, with the refusal's ``status``,
    ``code`` and ``reasons``."""


class BrokerUnavailableError(KeyBrokerError):
    """The broker could not be reached, or failed in a way that is not a refusal."""


class AuditLogError(IntegrityError):
    """The audit log does not verify: an entry was edited, deleted or reordered.

    ``seq`` names the first row that fails (None when the log as a whole is wrong)."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class EngineFallbackWarning(UserWarning):
    """A warning, not an error: work that prefers one engine ran on its slower fallback
    (e.g. ``read_encrypted`` through the Python data source because the JVM file system
    is not available); the message says why. Outside the error tree."""


def reworded(exc: E, message: str) -> E:
    """A copy of ``exc`` with ``message``: same type and attributes (a broker refusal
    keeps its status and code), for adding context such as a file name at a layer
    boundary. Raise it ``from exc``."""
    # Not type(exc)(message): some subclasses take keyword-only arguments.
    copy = type(exc).__new__(type(exc))
    copy.__dict__.update(exc.__dict__)
    copy.args = (message,)
    return copy
