"""What both ends of the overlay tunnel agree on: TLS contexts from the key directory's
material, length-prefixed frames, and the hello that assigns a spoke its address."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import struct
from dataclasses import dataclass, field
from typing import Any

from trustedml._secret import Secret
from trustedml.errors import ClusterError, ConfigError
from trustedml.keys import load_tls_identity

__all__ = [
    "MAX_FRAME",
    "PROTOCOL",
    "TunnelMaterial",
    "assign_address",
    "read_frame",
    "tls_context",
]

PROTOCOL = 1
HEADER = struct.Struct(">I")
# An IP packet is at most 65535 bytes; a hello is far smaller.
MAX_FRAME = 65535


@dataclass(frozen=True)
class TunnelMaterial:
    """The certificate chain, private key and CA a tunnel end presents and trusts;
    handed to the tunnel process on its stdin, never in argv."""

    cert_pem: bytes = field(repr=False)
    key_pem: Secret = field(repr=False)
    ca_pem: bytes = field(repr=False)

    def encode(self) -> bytes:
        """The JSON line the tunnel process reads from its stdin."""
        return json.dumps(
            {
                "cert": self.cert_pem.decode("ascii"),
                "key": self.key_pem.reveal().decode("ascii"),
                "ca": self.ca_pem.decode("ascii"),
            }
        ).encode("ascii")

    @classmethod
    def decode(cls, data: bytes) -> TunnelMaterial:
        try:
            raw = json.loads(data)
            return cls(
                raw["cert"].encode("ascii"), Secret(raw["key"].encode("ascii")), raw["ca"].encode()
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ClusterError("overlay: expected the TLS material as JSON on stdin") from None


def _load_identity(ctx: ssl.SSLContext, material: TunnelMaterial) -> None:
    try:
        load_tls_identity(ctx, material.cert_pem, material.key_pem)
    except ConfigError as exc:
        raise ClusterError(f"overlay: {exc}") from exc


def tls_context(material: TunnelMaterial, *, server: bool) -> ssl.SSLContext:
    """TLS 1.3 only, both ends presenting ``material``'s certificate and requiring a
    peer certificate issued by its CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        # Every host of a cluster presents the key directory's one server certificate,
        # whose names need not include the hub's address: the CA is the identity.
        ctx.check_hostname = False
    try:
        ctx.load_verify_locations(cadata=material.ca_pem.decode("ascii"))
    except (ssl.SSLError, ValueError) as exc:
        raise ClusterError(f"overlay: the CA certificate does not load: {exc}") from exc
    _load_identity(ctx, material)
    return ctx


def frame(payload: bytes) -> bytes:
    """``payload`` with its length in front."""
    return HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next frame's payload (IncompleteReadError at the end of the stream)."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise ClusterError(f"overlay: frame of {size} bytes from the peer (at most {MAX_FRAME})")
    return await reader.readexactly(size)


def hello(payload: dict[str, Any]) -> bytes:
    """A hello frame: a JSON object with the protocol version."""
    return frame(json.dumps({"overlay": PROTOCOL, **payload}).encode("ascii"))


def parse_hello(data: bytes) -> dict[str, Any]:
    """The JSON object of a hello frame, checked for the protocol version."""
    try:
        raw = json.loads(data)
    except ValueError:
        raw = None
    if not isinstance(raw, dict) or raw.get("overlay") != PROTOCOL:
        raise ClusterError("overlay: the peer does not speak the trusted-ml overlay protocol")
    return raw


def assign_address(
    network: ipaddress.IPv4Network,
    taken: set[ipaddress.IPv4Address],
    want: str | None,
) -> ipaddress.IPv4Address:
    """``want`` when it is a host address of ``network`` (it may replace a stale peer),
    else the first host address not ``taken``."""
    if want is not None:
        try:
            wanted = ipaddress.IPv4Address(want)
        except ValueError:
            wanted = None
        hub = next(network.hosts())
        if (
            wanted is not None
            and wanted in network
            and wanted
            not in (
                hub,
                network.network_address,
                network.broadcast_address,
            )
        ):
            return wanted
    for host in network.hosts():
        if host not in taken:
            return host
    raise ClusterError(f"overlay {network}: no free address left")
