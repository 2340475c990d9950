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

from bench._report import percentile, positive_int, print_table, write_results
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
        help="concurrent clients of the closed-loop throughput runs, comma-separated "
        "(default: 8,32)",
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


class _LeanClient:
    """One attested client on one kept-alive TLS connection, speaking HTTP/1.1 by hand;
    every sealed key is opened and checked."""

    def __init__(self, running: Running, wrapped: bytes, expected: bytes) -> None:
        self._running, self._wrapped, self._expected = running, wrapped, expected

    async def connect(self, ctx: ssl.SSLContext) -> None:
        running = self._running
        token, self._session_key, public = await _lean_attest(running, ctx)
        self._digest = envelope.token_digest(token)
        self._reader, self._writer = await asyncio.open_connection(
            running.host, running.port, ssl=ctx, server_hostname=running.host
        )
        self._head = (
            f"POST /v1/keys/{KEY_ID}/unwrap HTTP/1.1\r\nHost: {running.host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self._pk = base64.b64encode(public).decode()
        self._wrapped_b64 = base64.b64encode(self._wrapped).decode()

    async def unwrap(self) -> bool:
        request_id = os.urandom(16)
        body = json.dumps(
            {
                "client_public_key": self._pk,
                "request_id": base64.b64encode(request_id).decode(),
                "wrapped": self._wrapped_b64,
            }
        ).encode()
        self._writer.write(self._head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        headers = await self._reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        reply = await self._reader.readexactly(length)
        if not headers.startswith(b"HTTP/1.1 200"):
            return False
        doc = json.loads(reply)
        info = envelope.envelope_info("unwrap", KEY_ID, doc["version"], request_id, self._digest)
        sealed = base64.b64decode(doc["sealed_key"])
        return envelope.open_data_key(self._session_key, sealed, info) == self._expected

    def close(self) -> None:
        self._writer.close()


async def _lean_clients(
    running: Running, wrapped: bytes, expected: Secret, count: int
) -> list[_LeanClient]:
    ctx = client_ssl_context(running.ca)
    clients = [_LeanClient(running, wrapped, expected.reveal()) for _ in range(count)]
    await asyncio.gather(*(c.connect(ctx) for c in clients))
    return clients


def lean_throughput(
    running: Running, wrapped: bytes, expected: Secret, concurrency: int, seconds: float
) -> Series:
    """Closed loop: ``concurrency`` lean clients each send the next request as soon as
    the last is answered. As little client CPU as possible, so the rate is the broker's."""
    series = Series(f"unwrap, {concurrency} lean clients, closed loop")

    async def worker(client: _LeanClient, stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            ok = await client.unwrap()
            series.latencies.append(time.perf_counter() - t0)
            series.errors += not ok

    async def run() -> None:
        clients = await _lean_clients(running, wrapped, expected, concurrency)
        begin = time.perf_counter()
        await asyncio.gather(*(worker(c, begin + seconds) for c in clients))
        series.wall = time.perf_counter() - begin
        for c in clients:
            c.close()

    asyncio.run(run())
    return series


def lean_open_loop(
    running: Running, wrapped: bytes, expected: Secret, rate: float, seconds: float
) -> Series:
    """Open loop: requests start on a fixed schedule of ``rate`` per second, whatever the
    broker's pace, on a pool of 64 lean clients. Latency counts from the scheduled start
    (no coordinated omission): this is the latency at that load."""
    series = Series(f"unwrap at {rate:.0f}/s offered, open loop")

    async def one(pool: asyncio.Queue[_LeanClient], scheduled: float) -> None:
        client = await pool.get()
        try:
            ok = await client.unwrap()
        finally:
            pool.put_nowait(client)
        series.latencies.append(time.perf_counter() - scheduled)
        series.errors += not ok

    async def run() -> None:
        clients = await _lean_clients(running, wrapped, expected, 64)
        pool: asyncio.Queue[_LeanClient] = asyncio.Queue()
        for c in clients:
            pool.put_nowait(c)
        total = int(rate * seconds)
        begin = time.perf_counter()
        tasks = []
        for i in range(total):
            scheduled = begin + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(pool, scheduled)))
        await asyncio.gather(*tasks)
        series.wall = time.perf_counter() - begin
        for c in clients:
            c.close()

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
    # Goals are reported, not enforced (timings depend on the machine); wrong answers fail.
    return 0 if goals["errors"][2] else 1


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

    _log(f"latency at {THROUGHPUT_GOAL:.0f} unwraps/s offered, {args.seconds:.0f} s")
    paced = lean_open_loop(
        running, data_key.wrapped, data_key.plaintext, THROUGHPUT_GOAL, args.seconds
    )
    closed = []
    for concurrency in args.concurrency:
        _log(f"throughput: {concurrency} lean clients for {args.seconds:.0f} s")
        closed.append(
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
        _row(paced, rtt_p50),
        *(_row(run, rtt_p50) for run in closed),
        _row(threads, rtt_p50),
    ]
    rows[0]["p50_us"] = round(percentile(local.latencies, 50) * 1e6, 2)
    unwrap_p99 = _ms(percentile(unwrap.latencies, 99))
    paced_p99 = _ms(percentile(paced.latencies, 99))
    best = max(closed, key=lambda run: len(run.latencies) / run.wall)
    rate = round(len(best.latencies) / best.wall, 1)
    errors = paced.errors + sum(run.errors for run in closed) + threads.errors
    goals = {
        "unwrap p99 ms, one client": (unwrap_p99, f"<= {UNWRAP_P99_GOAL_MS}",
                                      unwrap_p99 <= UNWRAP_P99_GOAL_MS),
        f"unwrap p99 ms at {THROUGHPUT_GOAL:.0f}/s offered": (
            paced_p99, f"<= {UNWRAP_P99_GOAL_MS}", paced_p99 <= UNWRAP_P99_GOAL_MS),
        "unwraps per second, best closed loop": (
            rate, f">= {THROUGHPUT_GOAL:.0f}", rate >= THROUGHPUT_GOAL),
        "errors": (float(errors), "0", errors == 0),
    }  # fmt: skip
    return rows, goals


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
