from pathlib import Path

import trustedml

SRC = Path(trustedml.__file__).resolve().parent

# Changing the public API is a decision: update this list in the same commit.
PUBLIC_API = [
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
    "CvmBackend",
    "DataKey",
    "DecryptingReader",
    "DeployMode",
    "EncryptingWriter",
    "EngineFallbackWarning",
    "EvidenceBindingError",
    "EvidenceFormatError",
    "EvidenceProviderError",
    "EvidenceSignatureError",
    "FileResult",
    "GramineBackend",
    "IntegrityError",
    "JobMeasurement",
    "KeyBrokerError",
    "KeyDirectory",
    "KeyDirectoryError",
    "KeyDirectoryExistsError",
    "KeyManifest",
    "KeyNotFoundError",
    "KeyRing",
    "KeyStore",
    "KeyStoreError",
    "KubernetesError",
    "LaunchError",
    "LaunchPlan",
    "LocalKeyStore",
    "NoTee",
    "NotEncryptedError",
    "PlainSparkConfig",
    "PolicyError",
    "PreflightError",
    "Progress",
    "ScryptParams",
    "SealedSecrets",
    "Secret",
    "SecureSparkConfig",
    "SimBackend",
    "SparkConfigError",
    "SparkSettings",
    "TcbLevelNotFoundError",
    "TeeBackend",
    "TrustedMLError",
    "UnsealError",
    "UnsupportedEvidenceError",
    "__version__",
    "decrypt_file",
    "decrypt_path",
    "encrypt_file",
    "encrypt_path",
    "get_backend",
    "init_key_directory",
    "measure_job",
    "open_encrypted",
    "read_encrypted",
    "read_encrypted_bytes",
    "read_encrypted_pandas",
    "run",
    "start_session",
    "submit",
    "write_encrypted",
    "write_encrypted_bytes",
    "write_encrypted_pandas",
]


def test_public_api_is_locked() -> None:
    assert sorted(trustedml.__all__) == PUBLIC_API
    for name in trustedml.__all__:
        assert hasattr(trustedml, name), name


def test_package_is_typed() -> None:
    assert (SRC / "py.typed").is_file()


ATTESTATION_API = [
    "Appraisal",
    "Claims",
    "ConfigfsTsmProvider",
    "EvidenceProvider",
    "EvidenceType",
    "GramineProvider",
    "Identity",
    "Policy",
    "SimKey",
    "SimProvider",
    "SimVerifier",
    "TSM_REPORT_ROOT",
    "TcbStatus",
    "VerifiedEvidence",
    "Verifier",
    "describe_evidence",
    "detect_evidence_type",
    "get_provider",
    "get_verifier",
    "join_collateral",
    "parse_evidence",
    "verify_evidence",
]


def test_attestation_api_is_locked() -> None:
    import trustedml.attestation as attestation

    assert sorted(attestation.__all__) == ATTESTATION_API


BROKER_API = [
    "ADMIN_TOKEN_SECRET",
    "AttestationResult",
    "AuditEntry",
    "AuditHead",
    "AuditLogError",
    "AuditVerification",
    "BrokerAdminClient",
    "BrokerConfig",
    "BrokerKeyNotFoundError",
    "BrokerRefusedError",
    "BrokerServer",
    "BrokerSession",
    "BrokerStore",
    "BrokerUnavailableError",
    "KeyBrokerClient",
    "KeyBrokerError",
    "MASTER_KEY_SECRET",
    "MasterKey",
    "SQLiteStore",
    "broker_secrets",
    "build_ssl_context",
    "client_ssl_context",
    "configure_logging",
    "create_app",
    "migrate_store",
    "open_store",
    "parse_expected_head",
    "read_trusted_sim_keys",
    "serve",
    "verify_audit_log",
    "verify_store",
]


def test_broker_api_is_locked() -> None:
    import trustedml.broker as broker

    assert sorted(broker.__all__) == sorted(BROKER_API)


def test_version_matches_pyproject() -> None:
    import tomllib

    pyproject = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == trustedml.__version__
