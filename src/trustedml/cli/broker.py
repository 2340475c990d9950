"""`trustedml broker ...`: run the key broker, administer its keys, check its audit log."""

from __future__ import annotations

import json
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from trustedml import KeyDirectory, Secret
from trustedml._fs import write_private
from trustedml.attestation import EvidenceProvider, Policy, SimKey, get_provider, join_collateral
from trustedml.broker import (
    ADMIN_TOKEN_SECRET,
    MASTER_KEY_SECRET,
    BrokerAdminClient,
    BrokerConfig,
    BrokerServer,
    KeyBrokerClient,
    MasterKey,
    broker_secrets,
    configure_logging,
    read_trusted_sim_keys,
)
from trustedml.cli._broker_store import (
    F,
    audit_export_head,
    audit_verify,
    keys_dir_option,
    migrate_command,
    print_json,
)
from trustedml.cli._common import (
    Group,
    err_console,
    get_passphrase,
    out_console,
    passphrase_options,
    trusted_sim_keys_option,
)
from trustedml.runtime import ENV_BROKER_CA, ENV_BROKER_URL
from trustedml.tee import ENV_SIM_KEY

ENV_ADMIN_TOKEN_FILE = "TRUSTEDML_ADMIN_TOKEN_FILE"  # noqa: S105 - a variable name
PROVIDERS = ("sim", "gramine", "configfs-tsm")


def connection_options(func: F) -> F:
    """--url and --ca: where the broker is and which CA certifies it."""
    func = click.option(
        "--ca",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        envvar=ENV_BROKER_CA,
        help=f"CA certificate that signed the broker's (the key directory's tls/ca.pem; "
        f"env {ENV_BROKER_CA}; default: the system's trust store).",
    )(func)
    func = click.option(
        "--url",
        required=True,
        envvar=ENV_BROKER_URL,
        help=f"Broker URL, https://HOST:PORT (env {ENV_BROKER_URL}).",
    )(func)
    return func


def admin_options(func: F) -> F:
    func = click.option(
        "--admin-token-file",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=ENV_ADMIN_TOKEN_FILE,
        help=f"File holding the admin token (from `broker admin-token`; env "
        f"{ENV_ADMIN_TOKEN_FILE}).",
    )(func)
    return connection_options(func)


def read_secret_file(path: Path, what: str) -> Secret:
    try:
        info = path.stat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISREG(info.st_mode) and mode & 0o077:
            raise click.UsageError(
                f"permissions too open on {what} file {path}: expected 0600 (or stricter), "
                f"got {mode:04o}"
            )
        data = path.read_bytes().strip()
    except OSError as exc:
        raise click.UsageError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    if not data:
        raise click.UsageError(f"{what} file {path} is empty")
    return Secret(data)


def _admin(url: str, ca: Path | None, token_file: Path) -> BrokerAdminClient:
    return BrokerAdminClient(url, admin_token=read_secret_file(token_file, "admin token"), ca=ca)


def _load_policy(path: Path) -> Policy:
    return Policy.load(path)


# -- evidence providers (also used by `encrypt`/`decrypt --broker`) ----------------------


def evidence_options(func: F) -> F:
    """How this process proves what it is to the broker."""
    func = click.option(
        "--collateral",
        multiple=True,
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Verification collateral sent with the evidence (Intel collateral JSON, or "
        "SEV-SNP certificates and CRL, PEM or DER; repeatable).",
    )(func)
    func = click.option(
        "--job-measurement",
        help="Hex measurement of the job, bound into the evidence and matched by "
        "policies' job_measurement.",
    )(func)
    func = click.option(
        "--sim-measurement",
        help="Hex measurement that sim evidence reports (--evidence-provider sim).",
    )(func)
    func = click.option(
        "--sim-key",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=ENV_SIM_KEY,
        help=f"Sim signing key, PEM, 0600 (--evidence-provider sim; env {ENV_SIM_KEY}).",
    )(func)
    func = click.option(
        "--evidence-provider",
        type=click.Choice(PROVIDERS),
        help="Where evidence comes from: sim (development only, no hardware protection), "
        "gramine (SGX), configfs-tsm (TDX, SEV-SNP).",
    )(func)
    return func


def _hex(value: str, option: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise click.UsageError(f"{option}: expected hex, got {value!r}") from None
    if not 1 <= len(raw) <= 64:
        raise click.UsageError(f"{option}: expected 1-64 bytes, got {len(raw)}")
    return raw


def make_provider(
    name: str | None, sim_key: Path | None, sim_measurement: str | None
) -> EvidenceProvider:
    if name is None:
        raise click.UsageError("--broker needs --evidence-provider (sim, gramine or configfs-tsm)")
    if name == "sim":
        if sim_key is None or sim_measurement is None:
            raise click.UsageError(
                "--evidence-provider sim needs --sim-key FILE and --sim-measurement HEX"
            )
        return get_provider(
            "sim", key=SimKey.load(sim_key), measurement=_hex(sim_measurement, "--sim-measurement")
        )
    return get_provider(name)


def make_broker_client(
    url: str,
    ca: Path | None,
    *,
    evidence_provider: str | None,
    sim_key: Path | None,
    sim_measurement: str | None,
    job_measurement: str | None,
    collateral: Sequence[Path] = (),
) -> KeyBrokerClient:
    provider = make_provider(evidence_provider, sim_key, sim_measurement)
    return KeyBrokerClient(
        url,
        provider=provider,
        ca=ca,
        job_measurement=_hex(job_measurement, "--job-measurement") if job_measurement else None,
        collateral=join_collateral([p.read_bytes() for p in collateral]),
    )


# -- commands --------------------------------------------------------------------------


@click.group(
    "broker", cls=Group, short_help="The key broker: attestation-gated release of data keys."
)
def broker_group() -> None:
    """The key broker: attestation-gated release of data keys, with an audit log."""


@broker_group.command("serve", short_help="Run the key broker over HTTPS (TLS 1.3).")
@keys_dir_option
@click.option(
    "--db",
    required=True,
    help="Database: a file path (SQLite, created if missing) or sqlite:///PATH.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8443, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: any free port; see --port-file).")  # fmt: skip
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the listening port here once the broker accepts connections.",
)
@trusted_sim_keys_option(
    "--trust-sim-key",
    "PEM public key whose sim evidence verifies (repeatable; none: sim evidence fails).",
)
@click.option("--challenge-ttl", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a challenge nonce stays valid.")  # fmt: skip
@click.option("--token-ttl", default=300.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds a session token stays valid.")  # fmt: skip
@click.option("--challenge-rate", default=20.0, show_default=True,
              type=click.FloatRange(min=0.01),
              help="Challenges per second per client address.")  # fmt: skip
@click.option("--challenge-burst", default=100, show_default=True, type=click.IntRange(min=1),
              help="Burst of challenges per client address.")  # fmt: skip
@click.option("--json", "json_logs", is_flag=True, help="Structured logs: one JSON object a line.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@passphrase_options
def serve_command(
    keys_dir: Path,
    db: str,
    host: str,
    port: int,
    port_file: Path | None,
    sim_keys: tuple[Path, ...],
    challenge_ttl: float,
    token_ttl: float,
    challenge_rate: float,
    challenge_burst: int,
    json_logs: bool,
    access_log: bool,
    passphrase_file: Path | None,
    prompt: bool,
) -> None:
    """Run the key broker over HTTPS (TLS 1.3, the key directory's certificate).

    The broker's master key and admin token are sealed in the key directory's vault
    (created on first start). Stops gracefully on SIGINT or SIGTERM.
    """
    configure_logging(json_logs=json_logs)
    keys = KeyDirectory(keys_dir)
    passphrase = get_passphrase(passphrase_file, prompt)
    opened = keys.unseal(passphrase)
    # First start: the master key and admin token go into the vault only once the
    # broker listens, so a start that fails leaves the vault (and the disk) as it was.
    pending = {
        name: make()
        for name, make in (
            (MASTER_KEY_SECRET, MasterKey.generate),
            (ADMIN_TOKEN_SECRET, lambda: Secret(secrets.token_urlsafe(32))),
        )
        if name not in opened
    }
    config = BrokerConfig(
        db=db,
        master_key=pending.get(MASTER_KEY_SECRET) or opened[MASTER_KEY_SECRET],
        admin_token=pending.get(ADMIN_TOKEN_SECRET) or opened[ADMIN_TOKEN_SECRET],
        tls_cert_chain=keys.server_cert.read_bytes(),
        tls_key=opened["tls_server_key"],
        ca_cert=keys.ca_cert.read_bytes(),
        host=host,
        port=port,
        trusted_sim_keys=read_trusted_sim_keys(list(sim_keys)),
        challenge_ttl=challenge_ttl,
        token_ttl=token_ttl,
        challenge_rate=challenge_rate,
        challenge_burst=challenge_burst,
        json_logs=json_logs,
        access_log=access_log,
    )
    db_files = _db_files(db)
    fresh = [p for p in db_files if not p.exists()]
    stored = False

    def ready(server: BrokerServer) -> None:
        nonlocal stored
        for name, value in pending.items():
            keys.add_secret(passphrase, name, value)
        stored = True
        if port_file is not None:
            write_private(port_file, f"{server.port}\n".encode())

    try:
        BrokerServer(config).run(on_ready=ready)
    except BaseException:
        if pending and not stored:
            # The database was made for a master key that is now forgotten.
            for path in fresh:
                path.unlink(missing_ok=True)
        raise


def _db_files(db: str) -> list[Path]:
    """The database file and the files SQLite and the broker keep beside it."""
    rest = db.partition("://")[2] if db.startswith("sqlite://") else db
    path = Path(rest[1:] if rest.startswith("//") else rest)  # as open_store reads it
    return [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm", ".head")]


@broker_group.command(
    "admin-token", short_help="Export the broker's admin token (made if it never ran)."
)
@keys_dir_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the admin token to this file (mode 0600).",
)
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the admin token on stdout.")
@passphrase_options
def admin_token_command(
    keys_dir: Path,
    out: Path | None,
    to_stdout: bool,
    passphrase_file: Path | None,
    prompt: bool,
) -> None:
    """Export the broker's admin token (created if the broker never ran)."""
    if (out is None) == (not to_stdout):
        raise click.UsageError("give exactly one of --out FILE or --stdout")
    opened = broker_secrets(KeyDirectory(keys_dir), get_passphrase(passphrase_file, prompt))
    token = opened[ADMIN_TOKEN_SECRET]
    if out is not None:
        write_private(out, token.reveal() + b"\n")
        err_console.print(f"wrote the admin token to {out} (mode 0600)")
    else:
        click.echo(token.reveal_text())


# -- keys ------------------------------------------------------------------------------


@broker_group.group("key", short_help="Create, list, rotate, disable, delete keys; set policies.")
def key_group() -> None:
    """Create, list, rotate, disable and delete keys; set their policies."""


def _key_table(keys: list[dict[str, Any]]) -> Table:
    table = Table(title="broker keys")
    for column in ("key id", "state", "version", "versions", "policy", "updated"):
        table.add_column(column)
    for key in keys:
        policy = key.get("policy")
        table.add_row(
            str(key["key_id"]),
            str(key["state"]),
            str(key["current_version"]),
            ",".join(str(v) for v in key.get("versions", [])),
            f"rev {key['policy_revision']}" if policy else "none (refuses release)",
            str(key["updated_at"]),
        )
    return table


def _report_key(key: dict[str, Any], as_json: bool, action: str) -> None:
    if as_json:
        print_json(key)
    else:
        err_console.print(
            f"{action} key {key['key_id']}: {key['state']}, version {key['current_version']}"
        )


@key_group.command("create")
@click.argument("key_id")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Release policy (.toml or .json); without one the key refuses every release.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@admin_options
def key_create(
    key_id: str,
    policy_file: Path | None,
    as_json: bool,
    url: str,
    ca: Path | None,
    admin_token_file: Path,
) -> None:
    """Create key KEY_ID (a fresh KEK, version 1)."""
    policy = _load_policy(policy_file) if policy_file else None
    with _admin(url, ca, admin_token_file) as admin:
        _report_key(admin.create_key(key_id, policy), as_json, "created")


@key_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@admin_options
def key_list(as_json: bool, url: str, ca: Path | None, admin_token_file: Path) -> None:
    """List the broker's keys."""
    with _admin(url, ca, admin_token_file) as admin:
        keys = admin.list_keys()
    if as_json:
        print_json(keys)
    else:
        out_console.print(_key_table(keys))


@key_group.command("show")
@click.argument("key_id")
@admin_options
def key_show(key_id: str, url: str, ca: Path | None, admin_token_file: Path) -> None:
    """Show key KEY_ID as JSON."""
    with _admin(url, ca, admin_token_file) as admin:
        print_json(admin.get_key(key_id))


def _simple(name: str, action: str, help_text: str) -> None:
    @key_group.command(name, help=help_text)
    @click.argument("key_id")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @admin_options
    def command(
        key_id: str, as_json: bool, url: str, ca: Path | None, admin_token_file: Path
    ) -> None:
        with _admin(url, ca, admin_token_file) as admin:
            call = {
                "rotate": admin.rotate_key,
                "disable": admin.disable_key,
                "enable": admin.enable_key,
            }[name]
            _report_key(call(key_id), as_json, action)


_simple("rotate", "rotated", "Give KEY_ID a new KEK version; old versions still unwrap.")
_simple("disable", "disabled", "Refuse every release of KEY_ID until it is enabled again.")
_simple("enable", "enabled", "Allow releases of KEY_ID again (subject to its policy).")


@key_group.command(
    "delete", short_help="Delete KEY_ID and every version: its data becomes unreadable."
)
@click.argument("key_id")
@click.option("--yes", is_flag=True, help="Confirm: data wrapped under KEY_ID becomes unreadable.")
@admin_options
def key_delete(key_id: str, yes: bool, url: str, ca: Path | None, admin_token_file: Path) -> None:
    """Delete KEY_ID and every version of it: its data keys can never be unwrapped again."""
    if not yes:
        raise click.UsageError(
            f"deleting {key_id!r} makes every file encrypted under it unreadable; "
            "add --yes to confirm"
        )
    with _admin(url, ca, admin_token_file) as admin:
        result = admin.delete_key(key_id)
    err_console.print(f"deleted key {key_id} (versions {result.get('versions')})")


@key_group.group("policy")
def policy_group() -> None:
    """A key's release policy (the attestation appraisal policy)."""


@policy_group.command("set")
@click.argument("key_id")
@click.argument("policy_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@admin_options
def policy_set(
    key_id: str, policy_file: Path, url: str, ca: Path | None, admin_token_file: Path
) -> None:
    """Set KEY_ID's release policy from POLICY_FILE (.toml or .json)."""
    policy = _load_policy(policy_file)
    with _admin(url, ca, admin_token_file) as admin:
        key = admin.set_policy(key_id, policy)
    err_console.print(f"set the policy of {key_id} (revision {key['policy_revision']})")


@policy_group.command("clear")
@click.argument("key_id")
@admin_options
def policy_clear(key_id: str, url: str, ca: Path | None, admin_token_file: Path) -> None:
    """Remove KEY_ID's policy: it refuses every release."""
    with _admin(url, ca, admin_token_file) as admin:
        admin.set_policy(key_id, None)
    err_console.print(f"cleared the policy of {key_id}: it refuses every release")


@policy_group.command("show")
@click.argument("key_id")
@admin_options
def policy_show(key_id: str, url: str, ca: Path | None, admin_token_file: Path) -> None:
    """Print KEY_ID's policy as JSON (null: none)."""
    with _admin(url, ca, admin_token_file) as admin:
        print_json(admin.get_policy(key_id))


# -- audit -----------------------------------------------------------------------------


@broker_group.group("audit")
def audit_group() -> None:
    """Read and verify the broker's audit log."""


@audit_group.command("show")
@click.option("--after", default=0, show_default=True, type=click.IntRange(min=0),
              help="Only entries after this sequence number.")  # fmt: skip
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON lines).")
@admin_options
def audit_show(
    after: int, limit: int, as_json: bool, url: str, ca: Path | None, admin_token_file: Path
) -> None:
    """Print audit log entries (through the admin API)."""
    with _admin(url, ca, admin_token_file) as admin:
        doc = admin.audit(after=after, limit=limit)
    entries = doc.get("entries", [])
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry, sort_keys=True))
        return
    table = Table(title="audit log")
    for column in ("seq", "time", "event", "outcome", "key", "client", "measurement", "reasons"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            str(e["seq"]),
            str(e["time"]),
            str(e["event"]),
            str(e["outcome"]),
            str(e.get("key_id") or ""),
            str(e.get("client") or ""),
            (e.get("measurement") or "")[:16],
            "; ".join(e.get("reasons", [])),
        )
    out_console.print(table)


audit_group.add_command(audit_verify)
audit_group.add_command(audit_export_head)
broker_group.add_command(migrate_command)
