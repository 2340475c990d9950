"""Packet capture for the wire tests: tcpdump on the test bridge, a pcap reader, TCP
reassembly per direction, and a classifier that tells TLS and Spark's encrypted RPC from
readable traffic.

Capture(iface) runs `tcpdump -i IFACE -w FILE -U --immediate-mode -s 0` (installed from
Debian with apt-get when missing; the test is skipped with the reason when that fails),
confirmed listening before the block runs, stopped with SIGINT so the file is complete.
Afterwards: flows(), count(marker), dropped (packets the kernel dropped: a count of 0 is
only evidence when nothing was dropped), and classify(flow).

Spark's wire, as read from its network-common sources and checked on captures of a
secure cluster:
  plain frame    u64 BE frame length (itself included) | u8 message type (0..12) | ...
  auth (v1/v2)   one RpcRequest (type 3) from the client and one RpcResponse (type 4)
                 back, each body an AuthMessage starting with the tag byte 0xFB; the
                 payload inside is the protocol's own ciphertext
  AES/GCM        after auth, every message is u64 BE length (itself included) | Tink
                 streaming header (u8 header length 24 or 40 | salt | nonce prefix) |
                 segments of ciphertext with 16-byte tags
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tests.cluster.netns import LOCK_DIR, Scoped

Kind = Literal["tls", "spark-rpc-encrypted", "plaintext", "unknown", "empty"]
Endpoint = tuple[str, int]

# -- tcpdump ------------------------------------------------------------------------------


def ensure_tcpdump() -> str:
    """Path of tcpdump, installed from Debian's packages when missing; skips when impossible."""
    found = shutil.which("tcpdump")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the wire tests need tcpdump (missing, and apt-get cannot install it here)")
    LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Both xdist workers may find it missing at once; dpkg takes one installer at a time.
    with open(LOCK_DIR / "apt.lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        why = _apt_install("tcpdump") if shutil.which("tcpdump") is None else ""
    found = shutil.which("tcpdump")
    if not found:
        pytest.skip(f"the wire tests need tcpdump; apt-get could not install it: {why}")
    return found


def _apt_install(package: str) -> str:
    """Install `package` (updating the package lists if the first try fails); the
    error's last lines, or "" on success."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]
    install = [*apt, "install", "-y", "--no-install-recommends", package]
    why = ""
    for step in (install, [*apt, "update"], install):
        proc = subprocess.run(step, capture_output=True, text=True, env=env, timeout=900)
        why = proc.stderr.strip()[-300:]
        if step is install and proc.returncode == 0:
            return ""
    return why


class Capture(Scoped):
    """tcpdump on one interface for the life of a `with` block; the pcap is read afterwards."""

    def __init__(self, iface: str, path: Path | None = None, *, bpf: str = "ip") -> None:
        self.iface = iface
        self.path = path or Path(tempfile.mkdtemp(prefix="tml-capture-")) / f"{iface}.pcap"
        self.bpf = bpf
        self.dropped = -1
        self.captured = -1
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []
        self._reader: threading.Thread | None = None
        self._packets: list[Packet] | None = None

    def start(self) -> None:
        """Start tcpdump and return once it says it is listening."""
        tcpdump = ensure_tcpdump()
        # -Z root: Debian's tcpdump drops to its own user before opening the file.
        # --immediate-mode: without it packets wait in libpcap's ring and a SIGINT loses them.
        argv = [tcpdump, "-i", self.iface, "-w", str(self.path), "-U", "--immediate-mode"]
        argv += ["-s", "0", "-n", "-Z", "root", "-B", "16384", self.bpf]
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        listening = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, args=(listening,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 15
        while not listening.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"tcpdump did not start: {''.join(self._stderr).strip()}")

    def _read_stderr(self, listening: threading.Event) -> None:
        stderr = self._proc.stderr if self._proc is not None else None
        for line in stderr or ():
            self._stderr.append(line)
            if "listening on" in line:
                listening.set()

    def close(self) -> None:
        """Stop tcpdump (SIGINT: it flushes and prints its counters); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        time.sleep(0.2)  # the last packets of the job are still in flight
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:  # it reads the counters tcpdump prints last
            self._reader.join(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        text = "".join(self._stderr)
        self.captured = _counter(text, "packets captured")
        self.dropped = _counter(text, "packets dropped by kernel")

    def packets(self) -> list[Packet]:
        """Every IPv4 packet in the file."""
        if self._packets is None:
            self._packets = list(read_pcap(self.path.read_bytes()))
        return self._packets

    def flows(self) -> list[Flow]:
        """The TCP connections in the capture, payload reassembled per direction."""
        return tcp_flows(self.packets())

    def count(self, marker: bytes) -> int:
        """Occurrences of `marker` in the reassembled TCP streams and in non-TCP payloads."""
        return count_marker(self.packets(), marker)


def _counter(text: str, label: str) -> int:
    for line in text.splitlines():
        if line.endswith(label):
            return int(line.split()[0])
    return -1


# -- pcap ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """One IPv4 packet: addresses, protocol, and for TCP the ports, sequence and flags."""

    src: str
    dst: str
    proto: int
    payload: bytes  # the transport payload (TCP/UDP data), or the IP payload otherwise
    sport: int = 0
    dport: int = 0
    seq: int = 0
    flags: int = 0

    @property
    def syn(self) -> bool:
        return bool(self.flags & 0x02)

    @property
    def ack(self) -> bool:
        return bool(self.flags & 0x10)


LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
_MAGIC = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\xa1\xb2\x3c\x4d": ">",
}


def read_pcap(data: bytes) -> Iterator[Packet]:
    """The IPv4 packets of a classic pcap file (Ethernet or Linux cooked capture)."""
    order = _MAGIC.get(data[:4])
    if order is None:
        raise ValueError("not a classic pcap file (pcapng is not read here)")
    (linktype,) = struct.unpack_from(order + "I", data, 20)
    if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
        raise ValueError(f"pcap link type {linktype} is not read here")
    pos = 24
    while pos + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from(order + "IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        packet = _parse_frame(frame, linktype)
        if packet is not None:
            yield packet


def _parse_frame(frame: bytes, linktype: int) -> Packet | None:
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype = 14, int.from_bytes(frame[12:14], "big")
        while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:  # VLAN tags
            ethertype = int.from_bytes(frame[offset + 2 : offset + 4], "big")
            offset += 4
    else:
        offset, ethertype = 16, int.from_bytes(frame[14:16], "big")
    if ethertype != 0x0800 or len(frame) < offset + 20:
        return None
    return _parse_ipv4(frame[offset:])


def _parse_ipv4(ip: bytes) -> Packet | None:
    if ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = int.from_bytes(ip[2:4], "big")
    body = ip[ihl:total]  # the total length drops Ethernet padding
    proto = ip[9]
    src = ".".join(str(b) for b in ip[12:16])
    dst = ".".join(str(b) for b in ip[16:20])
    if proto == 6 and len(body) >= 20:
        sport, dport, seq = struct.unpack_from(">HHI", body)
        data_offset = (body[12] >> 4) * 4
        return Packet(src, dst, 6, body[data_offset:], sport, dport, seq, body[13])
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack_from(">HH", body)
        return Packet(src, dst, 17, body[8:], sport, dport)
    return Packet(src, dst, proto, body)


# -- TCP reassembly -------------------------------------------------------------------------


@dataclass
class Flow:
    """One TCP connection; `client` sent the SYN (or, mid-flow, the first packet seen)."""

    client: Endpoint
    server: Endpoint
    to_server: bytes = b""
    to_client: bytes = b""
    packets: int = 0
    gaps: int = 0  # holes in the sequence space (lost packets): the bytes beyond are shifted
    handshake: bool = False

    def __str__(self) -> str:
        (ca, cp), (sa, sp) = self.client, self.server
        return f"{ca}:{cp} -> {sa}:{sp} ({len(self.to_server)}/{len(self.to_client)} bytes)"


@dataclass
class _Direction:
    segments: list[tuple[int, bytes]] = field(default_factory=list)
    isn: int | None = None

    def assemble(self) -> tuple[bytes, int]:
        if not self.segments:
            return b"", 0
        if self.isn is not None:
            base = (self.isn + 1) & 0xFFFFFFFF
        else:  # the capture began mid-flow: the earliest sequence number seen
            first = self.segments[0][0]
            base = min(self.segments, key=lambda s: _signed(s[0] - first))[0]
        out, pos, gaps = bytearray(), 0, 0
        for offset, data in sorted((_signed(seq - base), data) for seq, data in self.segments):
            if offset + len(data) <= pos:
                continue  # a retransmission of bytes already placed
            if offset > pos:
                gaps += 1
                pos = offset
            out += data[pos - offset :]
            pos = offset + len(data)
        return bytes(out), gaps


def _signed(delta: int) -> int:
    delta &= 0xFFFFFFFF
    return delta - (1 << 32) if delta >= 1 << 31 else delta


def tcp_flows(packets: Iterable[Packet]) -> list[Flow]:
    """TCP connections, in order of first packet, each direction's payload in sequence order
    with retransmissions and overlaps kept once."""
    order: list[frozenset[Endpoint]] = []
    client: dict[frozenset[Endpoint], Endpoint] = {}
    handshake: dict[frozenset[Endpoint], bool] = defaultdict(bool)
    count: dict[frozenset[Endpoint], int] = defaultdict(int)
    directions: dict[tuple[Endpoint, Endpoint], _Direction] = defaultdict(_Direction)
    for p in packets:
        if p.proto != 6:
            continue
        src, dst = (p.src, p.sport), (p.dst, p.dport)
        key = frozenset((src, dst))
        if key not in client:
            order.append(key)
            client[key] = dst if (p.syn and p.ack) else src
        count[key] += 1
        direction = directions[(src, dst)]
        if p.syn:
            direction.isn = p.seq
            if not p.ack:
                client[key], handshake[key] = src, True
            seq = (p.seq + 1) & 0xFFFFFFFF
        else:
            seq = p.seq
        if p.payload:
            direction.segments.append((seq, p.payload))
    flows = []
    for key in order:
        c = client[key]
        (s,) = key - {c} if len(key) == 2 else (c,)
        up, up_gaps = directions[(c, s)].assemble()
        down, down_gaps = directions[(s, c)].assemble()
        flows.append(Flow(c, s, up, down, count[key], up_gaps + down_gaps, handshake[key]))
    return flows


def count_marker(packets: Iterable[Packet], marker: bytes) -> int:
    """Occurrences of `marker` in reassembled TCP streams plus every non-TCP payload."""
    packets = list(packets)
    total = sum(p.payload.count(marker) for p in packets if p.proto != 6)
    for flow in tcp_flows(packets):
        total += flow.to_server.count(marker) + flow.to_client.count(marker)
    return total


# -- classification -------------------------------------------------------------------------

TLS_CONTENT_TYPES = {0x14, 0x15, 0x16, 0x17}
TLS_MAX_RECORD = 2**14 + 2048
SPARK_MESSAGE_TYPES = set(range(13)) | {0xFF}  # Message.Type ids; 0xFF is User (-1)
SPARK_RPC_REQUEST, SPARK_RPC_RESPONSE = 3, 4
AUTH_TAG = 0xFB
GCM_HEADER_LENGTHS = {24, 40}  # Tink: 1 + key size (16 or 32) + 7-byte nonce prefix
GCM_TAG = 16
PRINTABLE_RUN = 16  # printable bytes in a row: about 2e-7 per offset by chance (0.38**16)


def classify(flow: Flow) -> Kind:
    """ "tls", "spark-rpc-encrypted", "plaintext" (readable payload), "unknown" (no framing
    recognised, nothing readable) or "empty" (no payload either way)."""
    kinds = {direction_kind(d) for d in (flow.to_server, flow.to_client) if d}
    if not kinds:
        return "empty"
    if "plaintext" in kinds:
        return "plaintext"
    # One kind both ways; TLS one way and Spark the other is no protocol at all.
    return kinds.pop() if len(kinds) == 1 else "unknown"


def direction_kind(stream: bytes) -> Kind:
    """The kind of one direction's reassembled payload."""
    if not stream:
        return "empty"
    if _is_tls(stream):
        return "tls"
    if _is_spark_encrypted(stream):
        return "spark-rpc-encrypted"
    if _spark_frames(stream) is not None or printable_runs(stream):
        return "plaintext"
    return "unknown"


def _is_tls(stream: bytes) -> bool:
    pos = 0
    while pos + 5 <= len(stream):
        kind, major, minor = stream[pos], stream[pos + 1], stream[pos + 2]
        if kind not in TLS_CONTENT_TYPES or major != 3 or not 1 <= minor <= 4:
            return False
        size = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if size == 0 or size > TLS_MAX_RECORD:
            return False
        pos += 5 + size
    # Whatever is left is a record cut short by the end of the capture; a handshake (or an
    # alert refusing one) opens every TLS connection.
    return stream[0] in (0x15, 0x16)


def _spark_frames(stream: bytes) -> list[tuple[int, bytes]] | None:
    """(type, frame) for every frame if the stream is plain Spark frames, else None; the
    last frame may be cut short by the end of the capture."""
    frames, pos = [], 0
    while pos < len(stream):
        if pos + 9 > len(stream):
            return None
        length = int.from_bytes(stream[pos : pos + 8], "big")
        if length < 9 or length > 2**40 or stream[pos + 8] not in SPARK_MESSAGE_TYPES:
            return None
        frames.append((stream[pos + 8], stream[pos : pos + length]))
        pos += length
    return frames


def _is_auth_frame(kind: int, frame: bytes) -> bool:
    # RpcRequest: type | request id (8) | body length (4) | body; RpcResponse the same.
    rpc = kind in (SPARK_RPC_REQUEST, SPARK_RPC_RESPONSE)
    return rpc and len(frame) > 21 and frame[21] == AUTH_TAG


def _is_spark_encrypted(stream: bytes) -> bool:
    pos, auth, messages = 0, 0, 0
    while pos + 9 <= len(stream):
        length = int.from_bytes(stream[pos : pos + 8], "big")
        marker = stream[pos + 8]
        if marker in GCM_HEADER_LENGTHS and 8 + marker <= length <= 2**40:
            messages += 1
        elif messages == 0 and auth < 2 and length >= 22:
            kind = marker
            if not _is_auth_frame(kind, stream[pos : pos + length]):
                return False
            auth += 1
        else:
            return False
        pos += length
    return (auth or messages) > 0 and pos >= len(stream) - 8


def printable_runs(stream: bytes, least: int = PRINTABLE_RUN) -> list[bytes]:
    """The runs of at least `least` printable ASCII bytes (what a person could read)."""
    return re.findall(rb"[\x20-\x7e\t\r\n]{%d,}" % least, stream)
