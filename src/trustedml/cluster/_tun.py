"""A Linux TUN device for the overlay: opened, addressed and brought up, gone with its process."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import struct
import subprocess

from trustedml.errors import ClusterError

__all__ = ["DEFAULT_IFACE", "DEFAULT_MTU", "check_iface", "open_tun"]

DEFAULT_IFACE = "tml0"
# IP packets up to 64 KB: one frame per TCP segment of the inner connections, so the
# tunnel costs a TLS record per ~64 KB, not per 1.5 KB.
DEFAULT_MTU = 65000

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFACE_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]{0,14}")


def check_iface(name: str) -> str:
    """``name`` when it is a usable interface name, else a ClusterError."""
    if not _IFACE_NAME.fullmatch(name):
        raise ClusterError(f"--overlay interface {name!r}: expected 1-15 letters, digits, _ or -")
    return name


def _ip(*args: str) -> None:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ClusterError("the overlay needs the `ip` command (iproute2)") from None
    if done.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def open_tun(name: str, address: ipaddress.IPv4Interface, mtu: int = DEFAULT_MTU) -> int:
    """A non-blocking file descriptor of a new TUN device ``name`` (IP packets without
    a header), with ``address`` and ``mtu``, up. The device vanishes when the
    descriptor closes, taking its address and routes with it."""
    check_iface(name)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ClusterError(f"cannot open /dev/net/tun: {exc.strerror} (root is needed)") from exc
    try:
        request = struct.pack("16sH", name.encode("ascii"), _IFF_TUN | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, request)
        _ip("addr", "add", str(address), "dev", name)
        _ip("link", "set", "dev", name, "mtu", str(mtu), "up")
    except OSError as exc:
        os.close(fd)
        raise ClusterError(f"cannot create the TUN device {name}: {exc.strerror}") from exc
    except ClusterError:
        os.close(fd)
        raise
    return fd
