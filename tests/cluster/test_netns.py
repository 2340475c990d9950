"""The test hosts and the capture tools: the pcap reader, TCP reassembly and the flow
classifier on packets built here, then one live run on real namespaces with tcpdump."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.capture import (
    Capture,
    Flow,
    Packet,
    classify,
    count_marker,
    direction_kind,
    read_pcap,
    tcp_flows,
)
from tests.cluster.netns import Host, TestNet

SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
A, B = ("198.18.7.11", 40001), ("198.18.7.12", 7077)


# -- builders -------------------------------------------------------------------------------


def _ipv4(src: str, dst: str, proto: int, body: bytes) -> bytes:
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        1,
        0x4000,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + body


def tcp(
    src: tuple[str, int], dst: tuple[str, int], seq: int, data: bytes = b"", flags: int = ACK
) -> bytes:
    """An Ethernet frame holding one IPv4 TCP segment (padded like a short Ethernet frame)."""
    segment = struct.pack(
        ">HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, 0, 5 << 4, flags, 512, 0, 0
    )
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + _ipv4(src[0], dst[0], 6, segment + data)
    return frame + b"\x00" * max(0, 60 - len(frame))


def udp(src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bytes:
    body = struct.pack(">HHHH", src[1], dst[1], 8 + len(data), 0) + data
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + _ipv4(src[0], dst[0], 17, body)


def pcap(
    frames: list[bytes], *, order: str = "<", magic: int = 0xA1B2C3D4, linktype: int = 1
) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)
    for i, frame in enumerate(frames):
        out += struct.pack(order + "IIII", 1_700_000_000, i, len(frame), len(frame)) + frame
    return out


def connection(
    up: list[bytes], down: list[bytes], isn_a: int = 1000, isn_b: int = 50_000
) -> list[bytes]:
    """A handshake, then each chunk of `up` from A and of `down` from B, in order."""
    frames = [tcp(A, B, isn_a, flags=SYN), tcp(B, A, isn_b, flags=SYN | ACK), tcp(A, B, isn_a + 1)]
    seq_a, seq_b = isn_a + 1, isn_b + 1
    for chunk in up:
        frames.append(tcp(A, B, seq_a, chunk, ACK | PSH))
        seq_a += len(chunk)
    for chunk in down:
        frames.append(tcp(B, A, seq_b, chunk, ACK | PSH))
        seq_b += len(chunk)
    return frames


def flows_of(frames: list[bytes]) -> list[Flow]:
    return tcp_flows(read_pcap(pcap(frames)))


# -- pcap reader -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "magic"),
    [("<", 0xA1B2C3D4), (">", 0xA1B2C3D4), ("<", 0xA1B23C4D)],
    ids=["little-us", "big-us", "little-ns"],
)
def test_reader_parses_ipv4_tcp_and_drops_ethernet_padding(order: str, magic: int) -> None:
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + b"\x00" * 28
    frames = [arp, tcp(A, B, 7, b"hi", ACK | PSH), udp(A, B, b"dgram")]
    packets = list(read_pcap(pcap(frames, order=order, magic=magic)))
    assert packets == [
        Packet("198.18.7.11", "198.18.7.12", 6, b"hi", 40001, 7077, 7, ACK | PSH),
        Packet("198.18.7.11", "198.18.7.12", 17, b"dgram", 40001, 7077),
    ]


def test_reader_reads_linux_cooked_captures_and_refuses_other_formats() -> None:
    ip = tcp(A, B, 1, b"x" * 30)[14:]
    cooked = b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 6 + b"\x00\x00" + b"\x08\x00" + ip
    (packet,) = read_pcap(pcap([cooked], linktype=113))
    assert packet.payload == b"x" * 30
    with pytest.raises(ValueError, match="link type 101"):
        list(read_pcap(pcap([], linktype=101)))
    with pytest.raises(ValueError, match="pcapng"):
        list(read_pcap(b"\x0a\x0d\x0d\x0a" + b"\x00" * 40))


# -- reassembly ----------------------------------------------------------------------------


def test_reassembly_orders_segments_and_keeps_retransmitted_bytes_once() -> None:
    frames = connection([], [])
    frames += [
        tcp(A, B, 1001 + 6, b"world", ACK),  # arrives before the first part
        tcp(A, B, 1001, b"hello ", ACK),
        tcp(A, B, 1001, b"hello ", ACK),  # a retransmission
        tcp(A, B, 1001 + 3, b"lo wo", ACK),  # overlapping both
        tcp(B, A, 50_001, b"ok", ACK | FIN),
    ]
    (flow,) = flows_of(frames)
    assert (flow.client, flow.server, flow.handshake) == (A, B, True)
    assert (flow.to_server, flow.to_client, flow.gaps) == (b"hello world", b"ok", 0)
    assert flow.packets == len(frames)


def test_reassembly_across_sequence_wraparound_and_a_marker_split_between_segments() -> None:
    frames = connection([b"..MARK", b"ER..", b"MARKER"], [], isn_a=0xFFFFFFFC)
    frames.append(tcp(A, B, 0xFFFFFFFD, b"..MARK", ACK))  # retransmitted across the wrap
    (flow,) = flows_of(frames)
    assert flow.to_server == b"..MARKER..MARKER"
    assert count_marker(read_pcap(pcap(frames)), b"MARKER") == 2


def test_a_lost_segment_is_a_gap_and_a_flow_seen_mid_way_has_its_first_sender_as_client() -> None:
    frames = [tcp(B, A, 90, b"late", ACK), tcp(B, A, 80, b"0123456789", ACK), tcp(B, A, 120, b"z")]
    (flow,) = flows_of(frames)
    assert (flow.client, flow.handshake, flow.gaps) == (B, False, 1)
    assert flow.to_server == b"0123456789latez"


def test_count_covers_udp_and_separate_connections() -> None:
    other = ("198.18.7.12", 40002)
    frames = connection([b"xxMARKERxx"], [b"MARKER"])
    frames += [udp(A, B, b"MARKER!"), tcp(other, B, 5, b"MARKER", ACK)]
    packets = list(read_pcap(pcap(frames)))
    assert count_marker(packets, b"MARKER") == 4
    assert len(tcp_flows(packets)) == 2


# -- classification --------------------------------------------------------------------------


def tls_records(*records: tuple[int, bytes]) -> bytes:
    return b"".join(
        bytes([kind, 3, 3]) + len(body).to_bytes(2, "big") + body for kind, body in records
    )


def spark_frame(kind: int, body: bytes, request_id: int = 7) -> bytes:
    """A plain Spark RPC frame: u64 length | type | request id | body length | body."""
    header = bytes([kind]) + request_id.to_bytes(8, "big") + len(body).to_bytes(4, "big")
    return (8 + len(header) + len(body)).to_bytes(8, "big") + header + body


def auth_message(app: bytes = b"sparkSaslUser") -> bytes:
    salt, sealed = os.urandom(16), os.urandom(48)
    parts = [len(app).to_bytes(4, "big") + app, len(salt).to_bytes(4, "big") + salt]
    return b"\xfb" + b"".join(parts) + len(sealed).to_bytes(4, "big") + sealed


def gcm_message(plaintext_length: int, key_bytes: int = 16) -> bytes:
    """An AES/GCM transport message: u64 length | Tink header | ciphertext + tag."""
    header = bytes([1 + key_bytes + 7]) + os.urandom(key_bytes + 7)
    body = os.urandom(plaintext_length + 16)
    return (8 + len(header) + len(body)).to_bytes(8, "big") + header + body


def secure_flow() -> Flow:
    up = spark_frame(3, auth_message()) + gcm_message(200) + gcm_message(70_000, 32)
    down = spark_frame(4, auth_message()) + gcm_message(5)
    return Flow(A, B, up, down)


def test_tls_both_ways_is_tls_even_cut_short() -> None:
    hello = tls_records((0x16, os.urandom(300)))
    data = tls_records((0x16, os.urandom(90)), (0x14, b"\x01"), (0x17, os.urandom(4000)))
    assert classify(Flow(A, B, hello + tls_records((0x17, os.urandom(77))), data)) == "tls"
    assert classify(Flow(A, B, hello, data[:-100])) == "tls"  # the capture ended mid-record


def test_spark_auth_then_gcm_messages_is_spark_rpc_encrypted() -> None:
    flow = secure_flow()
    assert classify(flow) == "spark-rpc-encrypted"
    # The end of a capture may cut the last message short.
    assert classify(Flow(A, B, flow.to_server[:-1000], b"")) == "spark-rpc-encrypted"


def test_spark_frames_in_the_clear_are_plaintext_even_after_an_encrypted_start() -> None:
    plain = spark_frame(3, b"\xac\xed\x00\x05sr\x00\x11java.lang.Boolean")
    assert classify(Flow(A, B, plain, spark_frame(4, b"\x01"))) == "plaintext"
    flow = secure_flow()
    tampered = flow.to_server + spark_frame(9, b"one-way message in the clear")
    assert classify(Flow(A, B, tampered, flow.to_client)) == "plaintext"
    # Only the handshake, never two RPCs before encryption starts.
    doubled = spark_frame(3, auth_message()) * 3 + gcm_message(10)
    assert direction_kind(doubled) != "spark-rpc-encrypted"


def test_readable_text_is_plaintext_and_random_bytes_are_unknown() -> None:
    assert (
        classify(Flow(A, B, b"GET /json/ HTTP/1.1\r\nHost: 198.18.7.12\r\n\r\n", b""))
        == "plaintext"
    )
    assert classify(Flow(A, B, os.urandom(4096), os.urandom(4096))) == "unknown"
    assert classify(Flow(A, B, b"", b"")) == "empty"


def test_one_readable_direction_makes_the_flow_plaintext() -> None:
    flow = secure_flow()
    assert classify(Flow(A, B, flow.to_server, b"row,MARKER-123,readable text here")) == "plaintext"
    tls = tls_records((0x16, os.urandom(64)))
    assert classify(Flow(A, B, tls, flow.to_client)) == "unknown"  # no protocol mixes the two


# -- live: namespaces, bridge, tcpdump ------------------------------------------------------


def _listen_once(host: Host, port: int) -> subprocess.Popen[str]:
    """A server in `host` that prints the first message it receives; started listening."""
    code = (
        "import socket,sys;"
        f"s=socket.create_server((sys.argv[1],{port}));print('up',flush=True);"
        "c,_=s.accept();print(c.recv(1000).decode(),flush=True)"
    )
    server = subprocess.Popen(
        host.argv([sys.executable, "-c", code, host.address]), stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    assert server.stdout.readline() == "up\n"
    return server


def _send(address: str, port: int, data: str) -> list[str]:
    connect = f"socket.create_connection(({address!r},{port}),timeout=5)"
    code = f"import socket;{connect}.sendall({data!r}.encode())"
    return [sys.executable, "-c", code]


def test_hosts_talk_through_the_bridge_and_the_capture_sees_it(tmp_path: Path) -> None:
    marker = "tml-" + os.urandom(8).hex()
    with TestNet(2) as net:
        one, two = net.hosts
        assert net.gateway == f"198.18.{net.k}.1"
        assert [h.address for h in net.hosts] == [f"198.18.{net.k}.11", f"198.18.{net.k}.12"]
        assert "default" not in one.run(["ip", "route"]).stdout
        unreachable = one.run(
            [sys.executable, "-c", "import socket;socket.create_connection(('192.0.2.1',80),1)"]
        )
        assert "unreachable" in unreachable.stderr
        with Capture(net.bridge, tmp_path / "smoke.pcap") as cap:
            server = _listen_once(two, 9000)
            sent = one.run(_send(two.address, 9000, f"hello {marker}"))
            assert sent.returncode == 0, sent.stderr
            assert server.communicate(timeout=10)[0] == f"hello {marker}\n"
            # And from the root namespace (where the master and the driver live) to a host.
            back = _listen_once(two, 9001)
            greeting = _send(two.address, 9001, f"from the gateway: {marker}")
            subprocess.run(greeting, check=True, timeout=30)
            back.communicate(timeout=10)
        names = [net.bridge, *(h.name for h in net.hosts)]
    assert cap.dropped == 0
    assert cap.count(marker.encode()) == 2
    flows = cap.flows()
    assert {(f.client[0], f.server) for f in flows} == {
        (one.address, (two.address, 9000)),
        (net.gateway, (two.address, 9001)),
    }
    assert {classify(f) for f in flows} == {"plaintext"}
    assert all(f.handshake and f.gaps == 0 for f in flows)
    assert net.killed == []
    listing = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    listing += subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert not [name for name in names if name in listing]


def _netns_pids(name: str) -> list[str]:
    shown = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return shown.stdout.split()


def test_subnets_are_unique_and_a_crashed_runs_leftovers_are_removed() -> None:
    with TestNet(1) as first, TestNet(1) as second:
        assert first.k != second.k
        k = first.k
    # A run that died left its namespace and bridge behind; nobody holds the number now.
    subprocess.run(["ip", "netns", "add", f"tml{k}-w5"], check=True)
    subprocess.run(["ip", "link", "add", f"tml{k}-br", "type", "bridge"], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", f"tml{k}-w5", "sleep", "300"])
    try:
        # Once it lives there: `ip netns exec` enters the namespace after it starts (on a
        # busy machine, after the sweep below had listed the namespace's processes).
        deadline = time.monotonic() + 30
        while str(sleeper.pid) not in _netns_pids(f"tml{k}-w5"):
            assert sleeper.poll() is None, "the leftover's process ended at once"
            assert time.monotonic() < deadline, "the leftover's process never entered"
            time.sleep(0.05)
        with TestNet(1, subnet=k) as again:
            assert again.hosts[0].name == f"tml{k}-w1"
            listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert f"tml{k}-w5" not in listing
        assert sleeper.wait(timeout=10) == -9  # the leftover's process went with it
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
