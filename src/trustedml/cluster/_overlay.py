"""The overlay tunnel process: IP packets between a TUN device and mutually authenticated
TLS 1.3 connections, a hub on the master host and a spoke on every other host.

Run as ``python -m trustedml.cluster._overlay hub|spoke ...`` with the TLS material
(:class:`TunnelMaterial`) as one JSON line on stdin. When the device is up it prints
one JSON line on stdout (``{"address", "cidr", "hub", "iface"}``) and then only logs,
to stderr, until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from trustedml.cluster._overlay_wire import (
    TunnelMaterial,
    assign_address,
    frame,
    hello,
    parse_hello,
    read_frame,
    tls_context,
)
from trustedml.cluster._tun import DEFAULT_IFACE, DEFAULT_MTU, open_tun
from trustedml.errors import ClusterError, TrustedMLError

__all__ = ["Router", "main"]

log = logging.getLogger("trustedml.overlay")

# Beyond this many bytes queued for one peer, packets are dropped as a congested link
# drops them: the inner TCP connections slow down instead of the queue growing.
QUEUE_LIMIT = 8 * 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
STREAM_LIMIT = 4 * 1024 * 1024
_READS_PER_WAKEUP = 64


def _ipv4_dst(packet: bytes) -> bytes | None:
    # Only IPv4 crosses the overlay (the kernel's IPv6 chatter on the device is dropped).
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return packet[16:20]


@dataclass
class Router:
    """Moves packets between the TUN device and the peers, by destination address."""

    tun: int
    peers: dict[bytes, asyncio.StreamWriter] = field(default_factory=dict)
    default: asyncio.StreamWriter | None = None  # a spoke's hub
    dropped: int = 0

    def send(self, peer: asyncio.StreamWriter, packet: bytes) -> None:
        if peer.transport.get_write_buffer_size() > QUEUE_LIMIT or peer.is_closing():
            self.dropped += 1
            return
        peer.write(frame(packet))

    def from_tun(self) -> None:
        """Read what the kernel routed into the device and send each packet on."""
        for _ in range(_READS_PER_WAKEUP):
            try:
                packet = os.read(self.tun, 65536)
            except BlockingIOError:
                return
            dst = _ipv4_dst(packet)
            if dst is None:
                continue
            peer = self.peers.get(dst, self.default)
            if peer is not None:
                self.send(peer, packet)

    def to_tun(self, packet: bytes) -> None:
        try:
            os.write(self.tun, packet)
        except (BlockingIOError, OSError):
            self.dropped += 1

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: bytes | None
    ) -> None:
        """Deliver the packets ``writer``'s peer sends until it goes; a hub passes the
        peer's address as ``source`` and drops packets claiming another."""
        while True:
            packet = await read_frame(reader)
            dst = _ipv4_dst(packet)
            if dst is None or (source is not None and packet[12:16] != source):
                self.dropped += 1
                continue
            peer = self.peers.get(dst)
            if peer is not None and peer is not writer:
                self.send(peer, packet)
            else:
                self.to_tun(packet)


def _tune(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


class Hub:
    """The master host's end: it owns the network's first address, accepts spokes,
    assigns them addresses and forwards between them."""

    def __init__(self, network: ipaddress.IPv4Network, ctx: ssl.SSLContext, router: Router):
        self.network = network
        self.address = next(network.hosts())
        self.ctx = ctx
        self.router = router
        self.tasks: set[asyncio.Future[None]] = set()

    async def serve(self, listener: socket.socket) -> None:
        """Accept spokes on ``listener`` until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            sock, peer = await loop.sock_accept(listener)
            task = asyncio.ensure_future(self.accept(sock, f"{peer[0]}:{peer[1]}"))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def accept(self, sock: socket.socket, name: str) -> None:
        # The handshake completes before a stream exists, so that a refused peer
        # surfaces here as an exception to log, never as a silent close.
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            log.warning("refused peer %s: TLS handshake failed: %s", name, reason)
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        _tune(writer)
        address = None
        try:
            request = parse_hello(await asyncio.wait_for(read_frame(reader), HANDSHAKE_TIMEOUT))
            taken = {ipaddress.IPv4Address(a) for a in self.router.peers} | {self.address}
            address = assign_address(self.network, taken, request.get("want"))
            key = address.packed
            stale = self.router.peers.get(key)
            if stale is not None:
                _close(stale)
            self.router.peers[key] = writer
            writer.write(
                hello(
                    {"address": str(address), "hub": str(self.address), "cidr": str(self.network)}
                )
            )
            log.info("peer %s joined as %s", name, address)
            await self.router.pump(reader, writer, key)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            log.info("peer %s (%s) left: %s", name, address, type(exc).__name__)
        except (TrustedMLError, ssl.SSLError, OSError) as exc:
            log.warning("peer %s (%s) dropped: %s", name, address, exc)
        finally:
            if address is not None and self.router.peers.get(address.packed) is writer:
                del self.router.peers[address.packed]
            _close(writer)


async def _connect(
    host: str, port: int, ctx: ssl.SSLContext, want: str | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, object]]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, limit=STREAM_LIMIT), HANDSHAKE_TIMEOUT
    )
    _tune(writer)
    writer.write(hello({"want": want}))
    answer = parse_hello(await asyncio.wait_for(read_frame(reader), HANDSHAKE_TIMEOUT))
    if not isinstance(answer.get("address"), str):
        _close(writer)
        raise ClusterError(f"overlay hub {host}:{port}: {answer.get('error', 'no address')}")
    return reader, writer, answer


def _split_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"overlay endpoint {text!r}: expected HOST:PORT")
    return host, int(port)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ClusterError(f"overlay hub: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def _announce(ready: dict[str, str]) -> None:
    # The launcher reads this one line; afterwards stdout goes where the logs go, so a
    # stray print can never hit a closed pipe.
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


async def run_hub(args: argparse.Namespace, material: TunnelMaterial) -> None:
    network = ipaddress.IPv4Network(args.cidr)
    if network.num_addresses < 4:
        raise ClusterError(f"--overlay {network}: expected a network with room for hosts")
    ctx = tls_context(material, server=True)
    hub_address = next(network.hosts())
    tun = open_tun(
        args.iface, ipaddress.IPv4Interface(f"{hub_address}/{network.prefixlen}"), args.mtu
    )
    router = Router(tun)
    hub = Hub(network, ctx, router)
    listener = _listen(*_split_endpoint(args.listen))
    serving = asyncio.ensure_future(hub.serve(listener))
    asyncio.get_running_loop().add_reader(tun, router.from_tun)
    _announce({"address": str(hub_address), "cidr": str(network), "hub": args.listen})
    log.info("hub %s on %s, listening on %s", hub_address, args.iface, args.listen)
    try:
        await _until_stopped()
    finally:
        serving.cancel()
        listener.close()


async def run_spoke(args: argparse.Namespace, material: TunnelMaterial) -> None:
    ctx = tls_context(material, server=False)
    host, port = _split_endpoint(args.hub)
    reader, writer, answer = await _connect(host, port, ctx, args.want)
    try:
        network = ipaddress.IPv4Network(str(answer["cidr"]))
        address = ipaddress.IPv4Address(str(answer["address"]))
    except (KeyError, ValueError):
        raise ClusterError(f"overlay hub {args.hub}: an answer without a usable address") from None
    tun = open_tun(args.iface, ipaddress.IPv4Interface(f"{address}/{network.prefixlen}"), args.mtu)
    router = Router(tun, default=writer)
    asyncio.get_running_loop().add_reader(tun, router.from_tun)
    _announce({"address": str(address), "cidr": str(network), "hub": args.hub})
    log.info("spoke %s on %s, hub %s (%s)", address, args.iface, args.hub, answer.get("hub"))
    stop = asyncio.ensure_future(_until_stopped())
    while not stop.done():
        pump = asyncio.ensure_future(router.pump(reader, writer, None))
        await asyncio.wait({pump, stop}, return_when=asyncio.FIRST_COMPLETED)
        _close(writer)
        if stop.done():
            pump.cancel()
            return
        log.warning("lost the hub %s: %s; reconnecting", args.hub, _outcome(pump))
        reader, writer = await _reconnect(host, port, ctx, str(address), stop)
        router.default = writer


def _outcome(task: asyncio.Future[None]) -> str:
    exc = task.exception()
    return type(exc).__name__ if exc is not None else "closed"


async def _reconnect(
    host: str, port: int, ctx: ssl.SSLContext, want: str, stop: asyncio.Future[None]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    delay = 0.5
    while not stop.done():
        try:
            reader, writer, answer = await _connect(host, port, ctx, want)
        except (TrustedMLError, ssl.SSLError, OSError, TimeoutError) as exc:
            log.warning("hub %s:%s: %s", host, port, exc)
        else:
            if answer["address"] == want:
                log.info("rejoined the hub as %s", want)
                return reader, writer
            _close(writer)
            log.warning("the hub offered %s instead of %s", answer["address"], want)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    raise asyncio.CancelledError


async def _until_stopped() -> None:
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _resolve(stopped))
    await stopped


def _resolve(future: asyncio.Future[None]) -> Callable[[], None]:
    def done() -> None:
        if not future.done():
            future.set_result(None)

    return done


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trustedml.cluster._overlay")
    roles = parser.add_subparsers(dest="role", required=True)
    hub = roles.add_parser("hub", help="the master host's end")
    hub.add_argument("--listen", required=True, metavar="HOST:PORT")
    hub.add_argument("--cidr", required=True)
    spoke = roles.add_parser("spoke", help="a worker host's end")
    spoke.add_argument("--hub", required=True, metavar="HOST:PORT")
    spoke.add_argument("--want", default=None, help="the overlay address to ask for")
    for sub in (hub, spoke):
        sub.add_argument("--iface", default=DEFAULT_IFACE)
        sub.add_argument("--mtu", type=int, default=DEFAULT_MTU)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a hub or a spoke until SIGTERM; 1 with one line on stderr when it cannot start."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s overlay %(levelname)s %(message)s",
    )
    try:
        material = TunnelMaterial.decode(sys.stdin.buffer.readline())
        asyncio.run(run_hub(args, material) if args.role == "hub" else run_spoke(args, material))
    except (TrustedMLError, OSError, ssl.SSLError, TimeoutError) as exc:
        print(f"overlay {args.role}: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
