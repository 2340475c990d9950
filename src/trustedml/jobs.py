"""A job's configuration: its options checked once, then its Spark settings and TEE backend."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trustedml._secret import Secret
from trustedml.data import LocalKeyStore
from trustedml.errors import ConfigError, KeyNotFoundError
from trustedml.keys import KeyDirectory, SecretName
from trustedml.spark import (
    DeployMode,
    PlainSparkConfig,
    SecureSparkConfig,
    SparkSettings,
    auth_secret_for,
    check_driver_host,
    check_secure_conf,
    conf_refusal,
    driver_address,
    mode_for_master,
)
from trustedml.tee import (
    BACKEND_NAMES,
    DEFAULT_ENCLAVE_SIZE,
    DEFAULT_MAX_THREADS,
    TeeBackend,
    get_backend,
)

__all__ = [
    "ENV_KEYS",
    "GRAMINE_UI_NOTE",
    "JobOptions",
    "JobSetup",
    "insecure_conf_warnings",
    "parse_conf",
    "prepare_job",
    "web_ui",
]

# The key directory a command line names when it gives no --keys (read by the CLI).
ENV_KEYS = "TRUSTEDML_KEYS"

# Which backends each TEE option applies to (the option, as the CLI spells it).
_TEE_ONLY = {
    "sim_key": ("sim",),
    "enclave_size": ("gramine",),
    "max_threads": ("gramine",),
    "isv_prod_id": ("gramine",),
    "isv_svn": ("gramine",),
    "manifest_dir": ("gramine",),
    "dry_run": ("gramine",),
    "evidence_out": ("sim", "cvm"),
}
_FLAGS = {"max_threads": "--threads"}

GRAMINE_UI_NOTE = (
    "--tee gramine: the Spark web UI is off (its TLS password stays outside the enclave)"
)


def parse_conf(items: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (``--conf``) as a mapping; a later key wins."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--conf: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


@dataclass(frozen=True)
class JobOptions:
    """What a job asks for (the options of ``trustedml submit``/``run``/``example``),
    checked when made: every fault a user must fix in the command raises
    :class:`~trustedml.errors.ConfigError` here, before any passphrase is asked for.

    ``conf`` are extra Spark properties (a secure job takes only the allow-listed
    ones, plus the keys in ``allow_insecure``); ``keks`` the key-encryption keys of
    ``keys_dir`` the job gets; ``broker_url``/``broker_ca`` the key broker it attests
    to (needs a ``tee`` other than none); ``driver_host`` the address the driver
    binds, which a ``spark://`` master's workers must reach (None: the address this
    machine reaches the master from; local mode binds 127.0.0.1); the rest choose the
    TEE backend and its options (None: the backend's default).
    """

    master: str = "local[2]"
    keys_dir: Path | None = None
    conf: Mapping[str, str] = field(default_factory=dict)
    allow_insecure: frozenset[str] = frozenset()
    insecure: bool = False
    log_level: str = "WARN"
    rpc_tls: bool = False
    ui: bool = True
    local_dir: Path | None = None
    driver_host: str | None = None
    keks: tuple[str, ...] = ()
    broker_url: str | None = None
    broker_ca: Path | None = None
    tee: str = "none"
    sim_key: Path | None = None
    enclave_size: str | None = None
    max_threads: int | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    manifest_dir: Path | None = None
    dry_run: bool = False
    evidence_out: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "conf", MappingProxyType(dict(self.conf)))
        object.__setattr__(self, "allow_insecure", frozenset(self.allow_insecure))
        object.__setattr__(self, "keks", tuple(self.keks))
        self._check_tee()
        if self.insecure and self.allow_insecure:
            raise ConfigError(
                "--allow-insecure-conf is for secure jobs: --insecure lets every --conf through"
            )
        if not self.insecure:
            check_secure_conf(self.conf, self.allow_insecure)
        if self.signs_enclave and self.keys_dir is None:
            raise ConfigError(
                "--tee gramine signs the enclave with the key directory's enclave key: "
                f"--keys DIR or {ENV_KEYS} (or --dry-run to only write the manifest)"
            )
        if self.needs_keys and self.keys_dir is None:
            what = "--kek" if self.insecure else "secure mode"
            raise ConfigError(
                f"{what} needs a key directory: --keys DIR or {ENV_KEYS} "
                "(create one with `trustedml keys init DIR`), or --insecure for plain Spark"
            )
        if self.insecure and self.rpc_tls:
            raise ConfigError("--rpc-tls and --insecure contradict each other")
        if self.driver_host is not None:
            object.__setattr__(self, "driver_host", check_driver_host(self.driver_host))
            if mode_for_master(self.master) is not DeployMode.STANDALONE:
                raise ConfigError(
                    "--driver-host applies to a spark:// master; local mode binds 127.0.0.1"
                )

    def _check_tee(self) -> None:
        if self.tee not in BACKEND_NAMES:
            raise ConfigError(
                f"--tee: expected one of {', '.join(BACKEND_NAMES)}, got {self.tee!r}"
            )
        for name, backends in _TEE_ONLY.items():
            if getattr(self, name) not in (None, False) and self.tee not in backends:
                flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
                raise ConfigError(
                    f"{flag} applies to --tee {' or '.join(backends)}, not --tee {self.tee}"
                )
        if self.broker_url is not None and self.tee == "none":
            raise ConfigError(
                "--broker needs attestation evidence: choose --tee sim for development, "
                "or gramine/cvm"
            )

    @property
    def signs_enclave(self) -> bool:
        """Whether the launch signs a Gramine enclave (with the key directory's key)."""
        return self.tee == "gramine" and not self.dry_run

    @property
    def needs_keys(self) -> bool:
        """Whether the job needs the key directory unsealed (a passphrase)."""
        return bool(self.keks) or not self.insecure or self.signs_enclave

    @property
    def web_ui(self) -> bool:
        """Whether the job gets the Spark web UI (:func:`web_ui`)."""
        return web_ui(self.tee, asked=self.ui)


def web_ui(tee: str, *, asked: bool) -> bool:
    """Whether a job under ``tee`` gets the Spark web UI: as asked, never under Gramine,
    where with TLS it needs a host secret the enclave never receives and without TLS
    it would serve the job's data in the clear to the host."""
    return asked and tee != "gramine"


@dataclass(frozen=True)
class JobSetup:
    """A job ready to launch: its Spark settings, its TEE backend, and what to tell
    the user about them (one line each)."""

    settings: SparkSettings
    tee: TeeBackend
    notes: tuple[str, ...] = ()


def insecure_conf_warnings(settings: SparkSettings) -> list[str]:
    """One warning per ``--conf`` key let through with ``--allow-insecure-conf``."""
    warnings = []
    for key, value in settings.insecure_conf().items():
        why = conf_refusal(key)
        category = f"{why.category}: {why.reason}" if why else "allowed"
        warnings.append(
            f"warning: --allow-insecure-conf: {key}={value} can weaken this job "
            f"({category}); it is recorded in the job measurement"
        )
    return warnings


def prepare_job(
    options: JobOptions,
    passphrase: Secret | Callable[[], Secret] | None = None,
    *,
    state_dir: Path,
) -> JobSetup:
    """The Spark settings and TEE backend ``options`` ask for.

    ``passphrase`` opens the key directory when the job needs it
    (:attr:`JobOptions.needs_keys`); a callable is asked only then, after the key
    directory is found. ``state_dir`` holds this installation's state: the default
    sim key (``sim-key.pem``) and Gramine manifests (``gramine/``).
    """
    keys = KeyDirectory(options.keys_dir) if options.keys_dir is not None else None
    unlocked: tuple[KeyDirectory, Secret] | None = None
    if options.needs_keys:
        assert keys is not None  # JobOptions checked it
        secret = passphrase() if callable(passphrase) else passphrase
        if secret is None:
            raise ConfigError(f"{keys.path}: a passphrase is needed to open the key directory")
        unlocked = (keys, secret)
    settings, enclave_key = _spark_settings(options, keys, unlocked)
    backend: dict[str, Any] = {}
    if options.tee == "sim":
        backend["key_path"] = options.sim_key or state_dir / "sim-key.pem"
    elif options.tee == "gramine":
        backend["manifest_dir"] = options.manifest_dir or state_dir / "gramine"
        backend["signing_key"] = enclave_key
        backend["enclave_size"] = options.enclave_size or DEFAULT_ENCLAVE_SIZE
        backend["max_threads"] = (
            DEFAULT_MAX_THREADS if options.max_threads is None else options.max_threads
        )
        backend["dry_run"] = options.dry_run
        backend["isv_prod_id"] = options.isv_prod_id or 0
        backend["isv_svn"] = options.isv_svn or 0
    notes = [GRAMINE_UI_NOTE] if options.ui and not options.web_ui else []
    notes += insecure_conf_warnings(settings)
    return JobSetup(settings, get_backend(options.tee, **backend), tuple(notes))


def _spark_settings(
    options: JobOptions, keys: KeyDirectory | None, unlocked: tuple[KeyDirectory, Secret] | None
) -> tuple[SparkSettings, Secret | None]:
    common: dict[str, Any] = {
        "master": options.master,
        "python": sys.executable,
        "log_level": options.log_level,
        "ui": options.web_ui,
        "local_dir": options.local_dir.resolve() if options.local_dir else None,
        "extra": dict(options.conf),
    }
    if mode_for_master(options.master) is DeployMode.STANDALONE:
        # The workers connect back to the driver: it must bind an address they reach.
        common["local_ip"] = options.driver_host or driver_address(options.master)
    if options.broker_url is not None:
        ca = options.broker_ca
        if ca is None and keys is not None:
            ca = keys.ca_cert
        common["broker_url"] = options.broker_url
        common["broker_ca"] = ca.resolve() if ca is not None else None
    if unlocked is None:  # insecure, no --kek, no enclave to sign
        return PlainSparkConfig(**common), None
    keys, passphrase = unlocked
    if options.keks:
        try:
            common["keyring"] = LocalKeyStore(keys, passphrase).keyring(options.keks)
        except KeyNotFoundError as exc:
            # An id the command names that the key directory does not hold.
            raise ConfigError(f"--kek: {exc}") from exc
    if options.insecure and not options.signs_enclave:
        return PlainSparkConfig(**common), None
    opened = keys.unseal(passphrase)
    enclave_key = opened[SecretName.ENCLAVE_SIGNING_KEY] if options.signs_enclave else None
    if options.insecure:
        return PlainSparkConfig(**common), enclave_key
    settings = SecureSparkConfig(
        **common,
        mode=mode_for_master(options.master),
        keystore=keys.keystore,
        truststore=keys.truststore,
        # A spark:// master: that cluster's own secret (what its daemons derive).
        auth_secret=auth_secret_for(opened.spark_auth_secret, options.master),
        keystore_password=opened.keystore_password,
        truststore_password=opened.truststore_password,
        rpc_tls=options.rpc_tls,
        allow_insecure=options.allow_insecure,
    )
    return settings, enclave_key
