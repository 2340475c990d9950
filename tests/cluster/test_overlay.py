"""The overlay tunnel between test hosts: packets cross inside TLS, a peer from another CA
is refused, the device goes with its process."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.capture import Capture, classify
from tests.cluster.netns import Host, TestNet
from tests.conftest import FAST_KDF, PASSPHRASE
from trustedml import KeyDirectory, Secret, init_key_directory
from trustedml.cluster import ClusterOptions, start_master_on_overlay, start_worker_on_overlay
from trustedml.cluster._overlay_launch import (
    OVERLAY_PORT,
    check_cidr,
    start_overlay,
    stop_overlay,
    tunnel_material,
)
from trustedml.cluster._overlay_wire import TunnelMaterial, assign_address
from trustedml.errors import ClusterError, ConfigError

MARKER = b"overlay-marker-7f3a9c-readable-if-plaintext"

# Echoes one connection: what it reads, it sends back; then it exits.
ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
while data := c.recv(65536):
    c.sendall(data)
"""


@dataclass
class Overlay:
    net: TestNet
    hub: dict[str, object]
    spokes: list[dict[str, object]]
    hub_log: Path
    other_ca: TunnelMaterial
    material: TunnelMaterial
    tmp: Path
    capture: Capture  # from before the tunnels connect, so that flows open with a handshake


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    tmp = tmp_path_factory.mktemp("overlay")
    keys = init_key_directory(tmp / "keys", Secret(PASSPHRASE), kdf=FAST_KDF)
    other = init_key_directory(tmp / "other-keys", Secret(PASSPHRASE), kdf=FAST_KDF)
    material = tunnel_material(keys, Secret(PASSPHRASE))
    with TestNet(3) as net, Capture(net.bridge) as capture:
        started: list[dict[str, object]] = []
        try:
            hub_host, *spoke_hosts = net.hosts
            endpoint = f"{hub_host.address}:{OVERLAY_PORT}"
            cidr = f"198.19.{net.k}.0/24"
            dirs = [tmp / h.name for h in net.hosts]
            for d in dirs:
                d.mkdir()
            hub = start_overlay(dirs[0], material, hub=endpoint, cidr=cidr, netns=hub_host.name)
            started.append(hub)
            for host, d in zip(spoke_hosts, dirs[1:], strict=True):
                started.append(start_overlay(d, material, hub=endpoint, netns=host.name))
            yield Overlay(
                net,
                hub,
                started[1:],
                dirs[0] / "logs" / "overlay.log",
                tunnel_material(other, Secret(PASSPHRASE)),
                material,
                tmp,
                capture,
            )
        finally:
            for one in reversed(started):
                stop_overlay(one)
    assert net.killed == [], "teardown had to kill processes left in the test hosts"


def _echo(server: Host, client: Host, address: str, port: int, payload: bytes) -> bytes:
    proc = subprocess.Popen(
        server.argv([sys.executable, "-c", ECHO, address, str(port)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        done = client.run(
            [
                sys.executable,
                "-c",
                "import socket, sys\n"
                "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)\n"
                "s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR)\n"
                "got = b''\n"
                "while data := s.recv(65536): got += data\n"
                "sys.stdout.buffer.write(got)\n",
                address,
                str(port),
            ],
            input=payload.decode(),
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.encode()
    finally:
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()


def test_every_host_gets_an_overlay_address(overlay: Overlay) -> None:
    k = overlay.net.k
    assert overlay.hub["address"] == f"198.19.{k}.1"
    assert [s["address"] for s in overlay.spokes] == [f"198.19.{k}.2", f"198.19.{k}.3"]
    assert {s["cidr"] for s in [overlay.hub, *overlay.spokes]} == {f"198.19.{k}.0/24"}
    shown = overlay.net.hosts[1].run(["ip", "-o", "-4", "addr", "show", "dev", "tml0"])
    assert f"198.19.{k}.2/24" in shown.stdout
    assert "mtu 65000" in overlay.net.hosts[1].run(["ip", "link", "show", "tml0"]).stdout


def test_traffic_crosses_the_wire_only_inside_tls(overlay: Overlay) -> None:
    hub_host, spoke2, spoke3 = overlay.net.hosts
    payload = MARKER * 20_000  # ~880 KB: many full-size packets through the tunnel
    # spoke -> hub, and spoke -> spoke (relayed by the hub)
    assert _echo(hub_host, spoke2, str(overlay.hub["address"]), 9100, payload) == payload
    assert _echo(spoke3, spoke2, str(overlay.spokes[1]["address"]), 9101, payload) == payload
    tunnelled = overlay.capture
    tunnelled.close()
    flows = [f for f in tunnelled.flows() if classify(f) != "empty"]
    assert flows, "the capture saw no traffic"
    assert tunnelled.dropped == 0
    assert {classify(f) for f in flows} == {"tls"}, [str(f) for f in flows]
    assert {f.server[1] for f in flows} == {OVERLAY_PORT}
    assert tunnelled.count(MARKER) == 0
    # The control: the same echo between the hosts' own addresses is readable.
    with Capture(overlay.net.bridge) as direct:
        assert _echo(hub_host, spoke2, hub_host.address, 9102, payload) == payload
    assert direct.count(MARKER) > 0
    assert "plaintext" in {classify(f) for f in direct.flows()}


def _handshake(address: str, identity: Path | None) -> str:
    """Connect to the hub from the test process without checking the hub, presenting the
    certificate in ``identity`` (None: no certificate); what ends the connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if identity is not None:
        ctx.load_cert_chain(identity)
    with socket.create_connection((address, OVERLAY_PORT), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"\0\0\0\2{}")
                return repr(tls.recv(100))
        except (ssl.SSLError, OSError) as exc:
            return str(exc)


def test_a_peer_of_another_ca_is_refused_and_logged(overlay: Overlay, tmp_path: Path) -> None:
    identity = tmp_path / "other-identity.pem"
    identity.write_bytes(overlay.other_ca.key_pem.reveal() + overlay.other_ca.cert_pem)
    hub_address = overlay.net.hosts[0].address
    # A spoke holding another key directory's certificate refuses the hub (and so
    # never starts) ...
    with pytest.raises(ClusterError, match="certificate verify failed"):
        start_overlay(
            overlay.tmp,
            overlay.other_ca,
            hub=f"{hub_address}:{OVERLAY_PORT}",
            netns=overlay.net.hosts[2].name,
            iface="tmlx",
            timeout=10,
        )
    # ... and the hub refuses a client that skips that check but presents such a
    # certificate, or none.
    before = overlay.hub_log.read_text().count("refused peer")
    # The hub answers neither with a hello (its first frame names the protocol).
    assert "overlay" not in _handshake(hub_address, identity)
    assert "overlay" not in _handshake(hub_address, None)
    time.sleep(0.3)
    refusals = overlay.hub_log.read_text().splitlines()
    refused = [line for line in refusals if "refused peer" in line][before:]
    assert len(refused) == 2, refusals[-5:]
    assert "CERTIFICATE_VERIFY_FAILED" in refused[0]
    assert "CERTIFICATE" in refused[1]
    assert overlay.net.gateway in refused[0]
    assert "tmlx" not in overlay.net.hosts[2].run(["ip", "link"]).stdout


def test_stopping_removes_the_process_and_the_device(overlay: Overlay) -> None:
    spoke_dir = overlay.tmp / "late"
    spoke_dir.mkdir()
    host = overlay.net.hosts[1]
    hub = f"{overlay.net.hosts[0].address}:{OVERLAY_PORT}"
    late = start_overlay(spoke_dir, overlay.material, hub=hub, netns=host.name, iface="tmly")
    assert "tmly" in host.run(["ip", "link"]).stdout
    assert stop_overlay(late) is True
    assert "tmly" not in host.run(["ip", "link"]).stdout
    assert int(str(late["pid"])) not in host.pids()
    assert stop_overlay(late) is False


# -- no root needed ------------------------------------------------------------------------


def test_a_spoke_gets_the_address_it_asks_for_else_the_first_free_one() -> None:
    network = ipaddress.IPv4Network("198.19.7.0/29")
    hub = ipaddress.IPv4Address("198.19.7.1")
    taken = {hub, ipaddress.IPv4Address("198.19.7.2")}
    assert str(assign_address(network, taken, "198.19.7.5")) == "198.19.7.5"
    # A reconnecting spoke may take back its address from its own stale connection.
    assert str(assign_address(network, taken, "198.19.7.2")) == "198.19.7.2"
    for bad in ("198.19.7.1", "198.19.7.0", "198.19.7.7", "10.0.0.5", "nonsense", None):
        assert str(assign_address(network, taken, bad)) == "198.19.7.3"
    full = set(network.hosts())
    with pytest.raises(ClusterError, match="no free address"):
        assign_address(network, full, None)


def test_the_tunnel_material_never_shows_its_key() -> None:
    material = TunnelMaterial(b"CERT", Secret(b"-----BEGIN PRIVATE KEY-----secret"), b"CA")
    assert "secret" not in repr(material)
    assert TunnelMaterial.decode(material.encode()).key_pem.reveal() == material.key_pem.reveal()
    with pytest.raises(ClusterError, match="JSON on stdin"):
        TunnelMaterial.decode(b"not json")


@pytest.mark.parametrize(
    ("cidr", "why"),
    [("198.19.0.1/24", "expected an IPv4 network"), ("fd00::/64", "IPv4"), ("10.0.0.0/30", "/29")],
)
def test_a_bad_overlay_network_is_refused(cidr: str, why: str) -> None:
    with pytest.raises(ClusterError, match=why):
        check_cidr(cidr)


def test_an_overlay_needs_a_secure_cluster_and_the_master_hosts_own_address(
    tmp_path: Path, session_keys: KeyDirectory
) -> None:
    plain = ClusterOptions(secure=False)
    with pytest.raises(ConfigError, match="needs a secure cluster"):
        start_master_on_overlay(tmp_path, plain, "198.19.0.0/24", keys=None, passphrase=None)
    with pytest.raises(ConfigError, match="give the master host's own address"):
        start_worker_on_overlay(
            tmp_path,
            ClusterOptions(),
            "spark://198.19.0.1:7077",
            "198.19.0.0/24",
            keys=session_keys,
            passphrase=Secret(PASSPHRASE),
        )
    assert not (tmp_path / "cluster.json").exists()
