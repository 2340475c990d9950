"""Check a standalone master before a job starts: it answers, takes the secret, speaks the cipher.

Without the check a SparkContext learns of a wrong secret only after about 65 s,
and then reports a misleading "stopped SparkContext"; an application on AES/GCM
against a master on AES/CTR fails after as long. :func:`preflight` finds out in
about a second: a TCP connection to the master, then (for a secure job)
``org.trustedml.spark.TrustedPreflight`` (``java/TrustedPreflight.java``, compiled
once against the installed pyspark like the Parquet KMS client) runs Spark's own
client handshake, auth engine v2 with the job's secret from the environment, and
sends one RPC through the negotiated channel: a master on the same cipher answers
it (with an error, the bytes are no message), one on another cipher cannot read it.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from trustedml.errors import ConfigError, LaunchError, PreflightError
from trustedml.spark._config import DeployMode, mode_for_master
from trustedml.spark._javac import compiled_jar
from trustedml.spark._submit import spark_home
from trustedml.tee import java_binary

__all__ = [
    "PREFLIGHT_CLASS",
    "check_driver_host",
    "driver_address",
    "master_addresses",
    "preflight",
    "preflight_archive",
    "preflight_jar",
]

PREFLIGHT_CLASS = "org.trustedml.spark.TrustedPreflight"
JAVA_SOURCE = Path(__file__).resolve().parent / "java" / "TrustedPreflight.java"
# The whole check stays under 10 s: connecting gets 3 s, the JVM's handshake and probe
# the rest (they wait 3 s each at most).
CONNECT_TIMEOUT = 3.0
DEADLINE = 9.0
# A short-lived JVM: the optimising compiler and the parallel collector cost more
# start-up than they save (as for the tests' FAST_JVM); no log4j output, the verdict
# is the exit code and one line on stderr.
_JVM_FLAGS = (
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-Xmx96m",
    "-Dlog4j2.level=OFF",
)
# The exit codes of TrustedPreflight.java.
_OK, _UNREACHABLE, _AUTH_FAILED, _NO_ANSWER, _NOT_AUTHENTICATING = 0, 3, 4, 5, 6


def preflight_jar(cache_dir: Path | None = None) -> Path:
    """The jar holding the preflight client, compiled against the installed pyspark
    (cached like :func:`trustedml.spark._pme.kms_client_jar`)."""
    return compiled_jar(
        JAVA_SOURCE,
        PREFLIGHT_CLASS,
        stem="trustedml-preflight",
        what="the Spark preflight check",
        cache_dir=cache_dir,
    )


def _classpath() -> str:
    return os.pathsep.join([str(preflight_jar()), str(spark_home() / "jars" / "*")])


def _archive_file(java: str) -> Path:
    """Where the class-data archive of the preflight JVM for ``java`` lives: beside the
    jar, named after it and the java binary (an archive is valid for one JVM only)."""
    jar = preflight_jar()
    tag = hashlib.sha256(os.path.realpath(java).encode()).hexdigest()[:12]
    return jar.with_name(f"{jar.stem}-{tag}.jsa")


def preflight_archive(java: str | None = None) -> Path:
    """Make (once) the class-data archive that halves the preflight JVM's start-up CPU
    (measured: 0.42 s instead of 0.85 s): the classes loaded by a ``--self-test`` run,
    which checks the three verdicts against Spark's own server code in one JVM.

    Raises :class:`LaunchError` when the self-test fails (the check would misjudge
    masters with this pyspark). Run at install (``make venv``); a job never waits for it.
    """
    java = java or str(java_binary() or "java")
    archive = _archive_file(java)
    if archive.is_file():
        return archive
    partial = archive.with_name(f".partial-{os.getpid()}-{archive.name}")
    argv = [java, *_JVM_FLAGS, f"-XX:ArchiveClassesAtExit={partial}", "-cp", _classpath()]
    try:
        done = subprocess.run(
            [*argv, PREFLIGHT_CLASS, "--self-test"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.startswith("preflight: ")]
            raise LaunchError(
                f"the Spark preflight's self-test failed (exit {done.returncode}): "
                + (lines[-1] if lines else done.stderr.strip()[-500:])
            )
        if partial.is_file():
            partial.replace(archive)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"the Spark preflight's self-test could not run: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return archive


def master_addresses(master: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a ``spark://H:P[,H2:P2...]`` master URL."""
    if mode_for_master(master) is not DeployMode.STANDALONE:
        raise ConfigError(f"master: expected spark://HOST:PORT, got {master!r}")
    pairs = []
    for part in master.removeprefix("spark://").split(","):
        host, _, port = part.rpartition(":")
        pairs.append((host, int(port)))
    return pairs


def check_driver_host(value: str) -> str:
    """``value`` as an IP address string, or :class:`ConfigError` (``--driver-host``)."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ConfigError(f"--driver-host: expected an IP address, got {value!r}") from None
    if address.is_unspecified or address.is_multicast:
        raise ConfigError(
            f"--driver-host: expected the address of one interface the workers reach, got {value!r}"
        )
    return str(address)


def driver_address(master: str) -> str:
    """The local address this machine uses to reach ``master``'s first host: the
    address the workers can reach the driver at (the default of ``--driver-host``).

    A UDP socket is "connected" to the master: the kernel picks the route and the
    source address, and no packet is sent."""
    host, port = master_addresses(master)[0]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--master {master}: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        try:
            sock.connect(address)
        except OSError as exc:
            raise ConfigError(
                f"--master {master}: no route to {host} ({exc.strerror}); "
                "give the driver's address with --driver-host"
            ) from None
        return str(sock.getsockname()[0])


def _connect(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return exc.strerror or str(exc)


def _handshake(
    props: Path, host: str, port: int, env: Mapping[str, str], timeout: float
) -> tuple[int, str]:
    """Run the Java client: (its exit code, the last line it wrote on stderr)."""
    # The launcher checked Java is there (the java Spark would run).
    java = str(java_binary(env) or "java")
    argv = [java, *_JVM_FLAGS]
    archive = _archive_file(java)
    if archive.is_file():
        # Made at install; a JVM that cannot use it ignores it.
        argv.append(f"-XX:SharedArchiveFile={archive}")
    argv += ["-cp", _classpath(), PREFLIGHT_CLASS, str(props), host, str(port)]
    try:
        done = subprocess.run(
            argv, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return -1, f"no verdict within {timeout:.1f} s"
    except OSError as exc:
        raise LaunchError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    lines = [line for line in done.stderr.splitlines() if line.startswith("preflight: ")]
    return done.returncode, (lines[-1].removeprefix("preflight: ") if lines else "")


def preflight(conf: Mapping[str, str], props: Path, env: Mapping[str, str]) -> float:
    """Check the standalone master of a job before it starts; the seconds it took.
    ``conf`` are the job's Spark properties, ``props`` the file holding them and
    ``env`` its environment (the secret is read from there, never passed as an
    argument).

    Raises :class:`PreflightError` naming the cause: the master does not answer; it
    refuses the secret; it cannot read this job's RPC (another cipher or auth engine
    version); it does not authenticate at all. A plain (insecure) job, and one with
    RPC over TLS, get only the first check.
    """
    started = time.monotonic()
    master = conf["spark.master"]
    failures = []
    reachable = None
    addresses = master_addresses(master)
    # Several masters (standby ones) share the connection budget.
    timeout = max(1.0, CONNECT_TIMEOUT / len(addresses))
    for host, port in addresses:
        why = _connect(host, port, timeout)
        if why is None:
            reachable = (host, port)
            break
        failures.append(f"{host}:{port}: {why}")
    if reachable is None:
        raise PreflightError(
            f"preflight: the master {master} is not answering ({'; '.join(failures)}); "
            "is it running (`trustedml cluster status`), and reachable from this host?"
        )
    # Auth engine v2 runs only with RPC encryption (else Spark falls back to SASL), and
    # RPC over TLS needs the TLS client this check does not build.
    handshake = (
        conf.get("spark.authenticate") == "true"
        and conf.get("spark.network.crypto.enabled") == "true"
        and conf.get("spark.ssl.rpc.enabled") != "true"
    )
    if not handshake:
        return time.monotonic() - started
    host, port = reachable
    left = DEADLINE - (time.monotonic() - started)
    code, detail = _handshake(props, host, port, env, max(left, 1.0))
    where = f"the master {host}:{port}"
    if code == _OK:
        return time.monotonic() - started
    if code == _UNREACHABLE:
        message = f"{where} is not answering ({detail})"
    elif code == _AUTH_FAILED:
        message = (
            f"authentication failed at {where}: the secret differs (the master was started "
            "from another key directory, or for another master URL: each cluster's secret "
            "comes from the key directory and the master URL)"
        )
    elif code == _NO_ANSWER:
        cipher = conf.get("spark.network.crypto.cipher", "AES/CTR/NoPadding")
        engine = conf.get("spark.network.crypto.authEngineVersion", "1")
        message = (
            f"{where} accepted the connection but cannot read this job's RPC: the RPC cipher "
            f"or auth protocol differs (this job: {cipher}, auth engine v{engine}; start the "
            "master with trusted-ml's settings, `trustedml cluster start-master`)"
        )
    elif code == _NOT_AUTHENTICATING:
        message = (
            f"{where} does not authenticate: it runs without spark.authenticate (a plain "
            f"cluster: submit with --insecure) or is not a Spark master ({detail})"
        )
    else:
        message = f"could not check {where} (exit {code}): {detail or 'no output'}"
    raise PreflightError(f"preflight: {message}")
