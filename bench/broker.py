"""What attested key release costs: latency of challenge+attest+unwrap and of unwrap
alone, and unwraps per second, against a real broker (`trustedml broker serve` in its
own process, TLS 1.3, SQLite WAL with synchronous=FULL, every release audited) on
127.0.0.1. Baselines measured in the same run: a local KeyRing unwrap and a bare TLS
request/response to the same server (GET /v1/health on a kept-alive connection)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench._report import positive_int, print_table, write_results
from trustedml import KeyRing, Secret, TrustedMLError, init_key_directory
from trustedml.attestation import SimKey, SimProvider
from trustedml.broker import BrokerAdminClient, BrokerConfig, KeyBrokerClient, client_ssl_context
from trustedml.hazmat import envelope
from trustedml.keys import ScryptParams

NAME = "broker"
KEY_ID = "bench"
MEASUREMENT = bytes.fromhex("5a" * 32)
PASSPHRASE = "bench passphrase, not a secret"  # noqa: S105 - a throwaway key directory
UNWRAP_P99_GOAL_MS = 10.0
THROUGHPUT_GOAL = 1000.0  # unwraps per second
BROKER_CLI = (
    "from trustedml.cli.broker import broker_group; broker_group(prog_name='trustedml broker')"
)


class BenchError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m bench {NAME}", description=__doc__)
    parser.add_argument(
        "--samples", type=positive_int, default=2000,
        help="sequential unwraps and TLS round trips timed (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--attest-samples", type=positive_int, default=300,
        help="challenge+attest+unwrap rounds timed (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_counts, default=[8, 32],
        help="concurrent clients of the throughput runs, comma-separated; the goals are "
        "judged on the first (default: 8,32)",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, default=10.0,
        help="length of each throughput run (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--db-dir", type=Path, default=None,
        help="where the broker's database goes (default: a temporary directory in /tmp)",
    )  # fmt: skip
    return parser


def _counts(text: str) -> list[int]:
    values = [positive_int(part) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}")
    return values


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Series:
    """Latencies in seconds."""

    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {
            "operation": self.name,
            "n": len(lat),
            "errors": self.errors,
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "mean_ms": _ms(statistics.fmean(lat)) if lat else None,
            "per_second": round(len(lat) / self.wall, 1) if self.wall else None,
        }


# -- the broker under test ---------------------------------------------------------------


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    url: str
    host: str
    port: int
    ca: Path
    config: BrokerConfig
    sim_key: SimKey
    log: Path


def start_broker(root: Path, db_dir: Path) -> Running:
    passphrase = root / "passphrase"
    passphrase.write_text(PASSPHRASE)
    passphrase.chmod(0o600)
    keys = init_key_directory(root / "keys", Secret(PASSPHRASE), kdf=ScryptParams(log2_n=14))
    # Creates the broker's secrets in the vault, so the admin token is known here.
    config = BrokerConfig.from_key_directory(keys, Secret(PASSPHRASE), db=db_dir / "broker.db")
    sim_key = SimKey.generate()
    (root / "sim.pub.pem").write_bytes(sim_key.public_key_pem())
    port_file, log = root / "port", root / "broker.log"
    args = [
        sys.executable, "-c", BROKER_CLI, "serve", "--keys", str(keys.path),
        "--db", str(db_dir / "broker.db"), "--port", "0", "--port-file", str(port_file),
        "--passphrase-file", str(passphrase), "--trust-sim-key", str(root / "sim.pub.pem"),
        "--challenge-rate", "100000", "--challenge-burst", "100000", "--json",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            port = int(port_file.read_text())
            url = f"https://127.0.0.1:{port}"
            return Running(proc, url, "127.0.0.1", port, keys.ca_cert, config, sim_key, log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise BenchError(f"the broker did not start:\n{log.read_text(errors='replace')[-2000:]}")


def stop_broker(running: Running) -> None:
    if running.proc.poll() is None:
        running.proc.send_signal(signal.SIGTERM)
        try:
            running.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            running.proc.kill()


# -- measurements ------------------------------------------------------------------------


def local_unwrap(samples: int) -> Series:
    ring = KeyRing({KEY_ID: os.urandom(32)})
    wrapped = ring.generate_data_key(KEY_ID).wrapped
    series = Series("local KeyRing unwrap (baseline)")
    start = time.perf_counter()
    for _ in range(samples):
        t0 = time.perf_counter()
        ring.unwrap_data_key(KEY_ID, wrapped)
        series.latencies.append(time.perf_counter() - t0)
    series.wall = time.perf_counter() - start
    return series


def timed(name: str, samples: int, call: Callable[[], object], warmup: int = 20) -> Series:
    for _ in range(warmup):
        call()
    series = Series(name)
    start = time.perf_counter()
    for _ in range(samples):
        t0 = time.perf_counter()
        call()
        series.latencies.append(time.perf_counter() - t0)
    series.wall = time.perf_counter() - start
    return series


def client_throughput(
    running: Running, wrapped: bytes, expected: Secret, concurrency: int, seconds: float
) -> Series:
    """KeyBrokerClient (httpx, one thread each): what an application sees."""
    series = Series(f"unwrap, {concurrency} KeyBrokerClient threads")
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker() -> None:
        provider = SimProvider(running.sim_key, measurement=MEASUREMENT)
        with KeyBrokerClient(running.url, provider=provider, ca=running.ca) as client:
            client.attest([KEY_ID])
            barrier.wait()
            mine, errors = [], 0
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                try:
                    ok = client.unwrap_data_key(KEY_ID, wrapped) == expected
                except TrustedMLError:
                    ok = False
                mine.append(time.perf_counter() - t0)
                errors += not ok
        with lock:
            series.latencies.extend(mine)
            series.errors += errors

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    for t in threads:
        t.join()
    series.wall = time.perf_counter() - start
    return series


async def _lean_attest(running: Running, ctx: ssl.SSLContext) -> tuple[str, AESGCM, bytes]:
    """challenge + attest by the protocol document, with httpx."""
    private_key = envelope.generate_private_key()
    public = envelope.public_key_bytes(private_key)
    provider = SimProvider(running.sim_key, measurement=MEASUREMENT)
    async with httpx.AsyncClient(base_url=running.url, verify=ctx) as http:
        nonce = base64.b64decode((await http.post("/v1/challenge", json={})).json()["nonce"])
        evidence = provider.get_evidence(envelope.report_data(nonce, public, None))
        response = await http.post(
            "/v1/attest",
            json={
                "nonce": base64.b64encode(nonce).decode(),
                "evidence": base64.b64encode(evidence).decode(),
                "client_public_key": base64.b64encode(public).decode(),
                "key_ids": [KEY_ID],
            },
        )
    if response.status_code != 200:
        raise BenchError(f"attest failed: {response.text}")
    token = response.json()["token"]
    sealed = base64.b64decode(response.json()["sealed_session_key"])
    info = envelope.session_info(nonce, envelope.token_digest(token))
    session_key = AESGCM(envelope.open_sealed(private_key, sealed, info))
    return token, session_key, public


async def _lean_worker(
    running: Running,
    ctx: ssl.SSLContext,
    wrapped: bytes,
    expected: bytes,
    start: asyncio.Event,
    stop_at: list[float],
    series: Series,
) -> None:
    token, session_key, public = await _lean_attest(running, ctx)
    digest = envelope.token_digest(token)
    reader, writer = await asyncio.open_connection(
        running.host, running.port, ssl=ctx, server_hostname=running.host
    )
    head = (
        f"POST /v1/keys/{KEY_ID}/unwrap HTTP/1.1\r\nHost: {running.host}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    ).encode()
    pk_b64, wrapped_b64 = base64.b64encode(public).decode(), base64.b64encode(wrapped).decode()
    await start.wait()
    try:
        while time.perf_counter() < stop_at[0]:
            request_id = os.urandom(16)
            body = json.dumps(
                {
                    "client_public_key": pk_b64,
                    "request_id": base64.b64encode(request_id).decode(),
                    "wrapped": wrapped_b64,
                }
            ).encode()
            t0 = time.perf_counter()
            writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in headers.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            reply = await reader.readexactly(length)
            ok = headers.startswith(b"HTTP/1.1 200")
            if ok:
                doc = json.loads(reply)
                info = envelope.envelope_info("unwrap", KEY_ID, doc["version"], request_id, digest)
                sealed = base64.b64decode(doc["sealed_key"])
                ok = envelope.open_data_key(session_key, sealed, info) == expected
            series.latencies.append(time.perf_counter() - t0)
            series.errors += not ok
    finally:
        writer.close()


def lean_throughput(
    running: Running, wrapped: bytes, expected: Secret, concurrency: int, seconds: float
) -> Series:
    """A minimal asyncio HTTP/1.1 client (one kept-alive TLS connection per client, every
    sealed key opened and checked): as little client CPU as possible, so the figure is
    the broker's."""
    series = Series(f"unwrap, {concurrency} lean asyncio clients")
    ctx = client_ssl_context(running.ca)

    async def run() -> None:
        start = asyncio.Event()
        stop_at = [float("inf")]
        tasks = [
            asyncio.create_task(
                _lean_worker(running, ctx, wrapped, expected.reveal(), start, stop_at, series)
            )
            for _ in range(concurrency)
        ]
        await asyncio.sleep(0.5)  # every client attested and connected
        begin = time.perf_counter()
        stop_at[0] = begin + seconds
        start.set()
        await asyncio.gather(*tasks)
        series.wall = time.perf_counter() - begin

    asyncio.run(run())
    return series


def _row(series: Series, baseline_p50: float | None) -> dict[str, Any]:
    row = series.summary()
    if baseline_p50:
        row["p50_over_tls_round_trip"] = round(percentile(series.latencies, 50) / baseline_p50, 2)
    return row


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    load_before = os.getloadavg()
    if load_before[0] >= 1.0:
        _log(f"warning: load average {load_before[0]:.1f} before start: timings will be noisy")
    with tempfile.TemporaryDirectory(prefix="trustedml-bench-broker-", dir="/tmp") as tmp:
        root = Path(tmp)
        db_dir = args.db_dir or root
        db_dir.mkdir(parents=True, exist_ok=True)
        try:
            _log("starting the broker")
            running = start_broker(root, db_dir)
        except (BenchError, TrustedMLError) as exc:
            print(f"{NAME}: {exc}", file=sys.stderr)
            return 1
        try:
            result = _measure(running, args)
            stats = BrokerAdminClient(
                running.url, admin_token=running.config.admin_token, ca=running.ca
            ).stats()
        except (BenchError, TrustedMLError) as exc:
            print(f"{NAME}: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_broker(running)
    load_after = os.getloadavg()
    rows, goals = result
    print_table(
        "key broker on 127.0.0.1 (TLS 1.3, audited, SQLite synchronous=FULL)",
        ["operation", "n", "errors", "p50 ms", "p99 ms", "per second", "p50 / TLS RTT"],
        [
            [r["operation"], r["n"], r["errors"], r["p50_ms"], r["p99_ms"],
             r["per_second"] or "", r.get("p50_over_tls_round_trip", "")]
            for r in rows
        ],
    )  # fmt: skip
    for name, (value, goal, met) in goals.items():
        print(f"goal {name}: {value} (goal {goal}) {'met' if met else 'NOT met'}")
    batches = stats.get("write_batches") or 1
    jobs = stats.get("write_jobs") or 0
    print(f"group commit: {jobs} audited decisions in {batches} transactions "
          f"({jobs / batches:.1f} per fsync)")  # fmt: skip
    path = write_results(
        NAME,
        rows,
        {
            "settings": {
                "samples": args.samples,
                "attest_samples": args.attest_samples,
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "db_dir": str(args.db_dir) if args.db_dir else "tmp",
            },
            "goals": {name: {"value": v, "goal": g, "met": m} for name, (v, g, m) in goals.items()},
            "broker_stats": stats,
            "load_average": {"before": load_before, "after": load_after},
        },
    )
    print(f"wrote {path}")
    return 0 if all(m for _, _, m in goals.values()) else 1


def _measure(
    running: Running, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, tuple[float, str, bool]]]:
    admin = BrokerAdminClient(running.url, admin_token=running.config.admin_token, ca=running.ca)
    admin.create_key(
        KEY_ID,
        {"allow_simulated": True, "allow": [{"type": "sim", "measurement": MEASUREMENT.hex()}]},
    )
    admin.close()
    provider = SimProvider(running.sim_key, measurement=MEASUREMENT)
    client = KeyBrokerClient(running.url, provider=provider, ca=running.ca)
    data_key = client.generate_data_key(KEY_ID)

    _log("baselines: local unwrap, TLS round trip")
    local = local_unwrap(args.samples * 10)
    with httpx.Client(base_url=running.url, verify=client_ssl_context(running.ca)) as http:
        rtt = timed("TLS round trip, GET /v1/health (baseline)", args.samples,
                    lambda: http.get("/v1/health"))  # fmt: skip
    rtt_p50 = percentile(rtt.latencies, 50)

    _log("sequential unwraps")
    unwrap = timed("unwrap, one client, sequential", args.samples,
                   lambda: client.unwrap_data_key(KEY_ID, data_key.wrapped))  # fmt: skip

    def full_round() -> None:
        client.attest([KEY_ID])
        client.unwrap_data_key(KEY_ID, data_key.wrapped)

    _log("sequential challenge+attest+unwrap")
    full = timed("challenge+attest+unwrap, one client", args.attest_samples, full_round)
    client.close()

    lean_runs = []
    for concurrency in args.concurrency:
        _log(f"throughput: {concurrency} lean clients for {args.seconds:.0f} s")
        lean_runs.append(
            lean_throughput(
                running, data_key.wrapped, data_key.plaintext, concurrency, args.seconds
            )
        )
    first = args.concurrency[0]
    _log(f"throughput: {first} KeyBrokerClient threads for {args.seconds:.0f} s")
    threads = client_throughput(running, data_key.wrapped, data_key.plaintext, first, args.seconds)

    rows = [
        local.summary(),
        rtt.summary(),
        _row(unwrap, rtt_p50),
        _row(full, rtt_p50),
        *(_row(run, rtt_p50) for run in lean_runs),
        _row(threads, rtt_p50),
    ]
    rows[0]["p50_us"] = round(percentile(local.latencies, 50) * 1e6, 2)
    unwrap_p99 = _ms(percentile(unwrap.latencies, 99))
    loaded_p99 = _ms(percentile(lean_runs[0].latencies, 99))
    rate = round(len(lean_runs[0].latencies) / lean_runs[0].wall, 1)
    errors = sum(run.errors for run in lean_runs) + threads.errors
    goals = {
        "unwrap p99 ms, one client": (unwrap_p99, f"<= {UNWRAP_P99_GOAL_MS}",
                                      unwrap_p99 <= UNWRAP_P99_GOAL_MS),
        f"unwrap p99 ms, {first} concurrent clients": (
            loaded_p99, f"<= {UNWRAP_P99_GOAL_MS}", loaded_p99 <= UNWRAP_P99_GOAL_MS),
        f"unwraps per second, {first} concurrent clients": (
            rate, f">= {THROUGHPUT_GOAL:.0f}", rate >= THROUGHPUT_GOAL),
        "errors": (float(errors), "0", errors == 0),
    }  # fmt: skip
    return rows, goals


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
