"""trustedml.jobs: a job's options checked once, then its Spark settings and TEE backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import FAST_KDF, PASSPHRASE
from trustedml import (
    ConfigError,
    KeyDirectory,
    KeyDirectoryError,
    LocalKeyStore,
    PlainSparkConfig,
    Secret,
    SecureSparkConfig,
    UnsealError,
    init_key_directory,
)
from trustedml.jobs import (
    GRAMINE_UI_NOTE,
    JobOptions,
    insecure_conf_warnings,
    parse_conf,
    prepare_job,
    web_ui,
)
from trustedml.tee import GramineBackend, NoTee, SimBackend


def _never() -> Secret:
    raise AssertionError("the passphrase was asked for")


@pytest.fixture
def keys(session_keys: KeyDirectory) -> JobOptions:
    """Secure options with the shared key directory."""
    return JobOptions(keys_dir=session_keys.path)


def test_parse_conf() -> None:
    assert parse_conf(["a=1", " b =x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    assert parse_conf(["a=1", "a=2"]) == {"a": "2"}
    for bad in ("novalue", "=1", " =1"):
        with pytest.raises(ConfigError, match=f"--conf: expected KEY=VALUE, got {bad!r}"):
            parse_conf([bad])


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "secure mode needs a key directory: --keys DIR or TRUSTEDML_KEYS"),
        ({"insecure": True, "keks": ("k",)}, "--kek needs a key directory"),
        ({"insecure": True, "rpc_tls": True}, "--rpc-tls and --insecure contradict each other"),
        (
            {"insecure": True, "allow_insecure": {"spark.x"}},
            "--allow-insecure-conf is for secure jobs",
        ),
        ({"sim_key": Path("k.pem")}, "--sim-key applies to --tee sim, not --tee none"),
        ({"max_threads": 4, "tee": "sim"}, "--threads applies to --tee gramine, not --tee sim"),
        ({"isv_svn": 1, "tee": "cvm"}, "--isv-svn applies to --tee gramine, not --tee cvm"),
        ({"dry_run": True}, "--dry-run applies to --tee gramine, not --tee none"),
        (
            {"evidence_out": Path("e"), "tee": "gramine"},
            "--evidence-out applies to --tee sim or cvm, not --tee gramine",
        ),
        ({"tee": "tpm"}, "--tee: expected one of cvm, gramine, none, sim, got 'tpm'"),
        ({"broker_url": "https://b:8443"}, "--broker needs attestation evidence"),
        (
            {"tee": "gramine", "insecure": True},
            "--tee gramine signs the enclave with the key directory's enclave key",
        ),
        ({"conf": {"spark.ssl.ui.enabled": "false"}}, r"spark.ssl.ui.enabled: refused \(TLS/UI\)"),
    ],
)
def test_faults_in_the_command_are_config_errors(given: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobOptions(**given)  # type: ignore[arg-type]


def test_a_refused_conf_comes_before_the_missing_key_directory() -> None:
    # What the user must change in --conf is said first, with no passphrase asked.
    with pytest.raises(ConfigError, match=r"spark\.eventLog\.enabled: refused"):
        JobOptions(conf={"spark.eventLog.enabled": "true"})


def test_options_are_frozen_and_what_they_need(tmp_path: Path) -> None:
    options = JobOptions(keys_dir=tmp_path, conf={"spark.sql.shuffle.partitions": "4"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.insecure = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.conf["spark.sql.shuffle.partitions"] = "8"  # type: ignore[index]
    assert options.needs_keys
    assert not JobOptions(insecure=True).needs_keys
    assert JobOptions(insecure=True, keks=("k",), keys_dir=tmp_path).needs_keys
    dry = JobOptions(insecure=True, tee="gramine", dry_run=True)
    assert not dry.needs_keys
    assert not dry.web_ui
    assert web_ui("sim", asked=True)
    assert not web_ui("sim", asked=False)
    assert not web_ui("gramine", asked=True)


def test_secure_job(keys: JobOptions, tmp_path: Path) -> None:
    setup = prepare_job(keys, Secret(PASSPHRASE), state_dir=tmp_path)
    assert isinstance(setup.settings, SecureSparkConfig)
    assert setup.settings.ui
    assert setup.settings.keyring is None
    assert setup.settings.keystore == KeyDirectory(keys.keys_dir or "").keystore
    assert isinstance(setup.tee, NoTee)
    assert setup.notes == ()
    # The passphrase may come from a callable, asked only when the job needs it.
    asked = []
    prepare_job(keys, lambda: asked.append(1) or Secret(PASSPHRASE), state_dir=tmp_path)
    assert asked == [1]


def test_insecure_job_needs_no_passphrase(tmp_path: Path) -> None:
    setup = prepare_job(
        JobOptions(insecure=True, ui=False, local_dir=tmp_path / "scratch"),
        _never,
        state_dir=tmp_path,
    )
    assert isinstance(setup.settings, PlainSparkConfig)
    assert not setup.settings.ui
    assert setup.settings.local_dir == (tmp_path / "scratch").resolve()


def test_wrong_or_missing_passphrase(keys: JobOptions, tmp_path: Path) -> None:
    with pytest.raises(UnsealError, match="wrong passphrase"):
        prepare_job(keys, Secret("not the passphrase"), state_dir=tmp_path)
    with pytest.raises(ConfigError, match="a passphrase is needed"):
        prepare_job(keys, None, state_dir=tmp_path)


def test_a_key_directory_that_is_not_one_is_found_before_the_passphrase(tmp_path: Path) -> None:
    with pytest.raises(KeyDirectoryError, match="is not a key directory"):
        prepare_job(JobOptions(keys_dir=tmp_path), _never, state_dir=tmp_path)


def test_keks_become_the_jobs_keyring(tmp_path: Path, passphrase: Secret) -> None:
    keys = init_key_directory(tmp_path / "keys", passphrase, kdf=FAST_KDF)
    LocalKeyStore(keys, passphrase).create_kek("models")
    for insecure in (False, True):
        options = JobOptions(keys_dir=keys.path, keks=("models",), insecure=insecure)
        settings = prepare_job(options, passphrase, state_dir=tmp_path).settings
        assert settings.secure is not insecure
        assert settings.keyring is not None
        assert settings.keyring.key_ids() == ["models"]
    unknown = JobOptions(keys_dir=keys.path, keks=("models", "nope"))
    with pytest.raises(ConfigError, match="--kek: no key-encryption key 'nope'"):
        prepare_job(unknown, passphrase, state_dir=tmp_path)


def test_allowed_insecure_conf_is_warned_about(keys: JobOptions, tmp_path: Path) -> None:
    options = dataclasses.replace(
        keys,
        conf={"spark.eventLog.compress": "false"},
        allow_insecure=frozenset({"spark.eventLog.compress"}),
    )
    setup = prepare_job(options, Secret(PASSPHRASE), state_dir=tmp_path)
    assert setup.settings.insecure_conf() == {"spark.eventLog.compress": "false"}
    assert setup.notes == tuple(insecure_conf_warnings(setup.settings))
    (warning,) = setup.notes
    assert warning.startswith("warning: --allow-insecure-conf: spark.eventLog.compress=false")
    assert "recorded in the job measurement" in warning


def test_sim_with_a_broker(keys: JobOptions, tmp_path: Path) -> None:
    options = dataclasses.replace(keys, tee="sim", broker_url="https://127.0.0.1:8443")
    setup = prepare_job(options, Secret(PASSPHRASE), state_dir=tmp_path)
    assert isinstance(setup.tee, SimBackend)
    assert setup.tee.key_path == tmp_path / "sim-key.pem"
    assert setup.settings.broker_url == "https://127.0.0.1:8443"
    # The job verifies the broker with the key directory's CA unless told otherwise.
    assert setup.settings.broker_ca == KeyDirectory(keys.keys_dir or "").ca_cert.resolve()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"")
    given = dataclasses.replace(options, broker_ca=ca, sim_key=tmp_path / "mine.pem")
    setup = prepare_job(given, Secret(PASSPHRASE), state_dir=tmp_path)
    assert setup.settings.broker_ca == ca.resolve()
    assert isinstance(setup.tee, SimBackend)
    assert setup.tee.key_path == tmp_path / "mine.pem"


def test_gramine_dry_run_turns_the_ui_off(tmp_path: Path) -> None:
    options = JobOptions(insecure=True, tee="gramine", dry_run=True, enclave_size="2G")
    setup = prepare_job(options, _never, state_dir=tmp_path)
    assert isinstance(setup.tee, GramineBackend)
    assert setup.tee.manifest_dir == (tmp_path / "gramine").resolve()
    assert not setup.settings.ui
    assert setup.notes == (GRAMINE_UI_NOTE,)
    quiet = prepare_job(dataclasses.replace(options, ui=False), _never, state_dir=tmp_path)
    assert quiet.notes == ()


def test_gramine_signs_with_the_enclave_key(keys: JobOptions, tmp_path: Path) -> None:
    options = dataclasses.replace(keys, tee="gramine", manifest_dir=tmp_path / "m")
    setup = prepare_job(options, Secret(PASSPHRASE), state_dir=tmp_path)
    assert isinstance(setup.tee, GramineBackend)
    assert setup.tee.manifest_dir == (tmp_path / "m").resolve()
    assert isinstance(setup.settings, SecureSparkConfig)
    assert not setup.settings.ui
