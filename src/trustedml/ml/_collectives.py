"""Whether training may run its collectives (torch's gloo process group, xgboost's
collective) across the hosts of a standalone cluster: only inside the overlay tunnel,
or when an expert let plaintext through; and which interface they use there."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trustedml.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "ALLOW_PLAINTEXT",
    "PLAINTEXT_WARNING",
    "Placement",
    "checked_placement",
    "interface_of",
    "local_address_towards",
    "training_placement",
]

ALLOW_PLAINTEXT = "spark.trustedml.allowPlaintextCollectives"
PLAINTEXT_WARNING = (
    f"warning: {ALLOW_PLAINTEXT}: the training processes' traffic crosses hosts in plaintext"
)
_SIOCGIFADDR = 0x8915

# "local": every process on this host (not a standalone master); "cluster": across
# the cluster's executors, the wire protected (loopback or the overlay);
# "cluster-plaintext": across hosts in plaintext, as an expert allowed.
Placement = Literal["local", "cluster", "cluster-plaintext"]


def interface_of(address: str) -> str | None:
    """The name of the local interface holding IPv4 ``address`` (its primary address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
                if socket.inet_ntoa(answer[20:24]) == address:
                    return name
    return None


def local_address_towards(address: str) -> str:
    """This host's address the kernel would use to reach ``address``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # A UDP connect sends nothing: it only picks the route and source address.
        sock.connect((address, 9))
        local: str = sock.getsockname()[0]
        return local


def _on_tunnel(address: str) -> bool:
    """Whether ``address`` sits on a TUN device: the overlay's (or another VPN's) tunnel."""
    name = interface_of(address)
    return name is not None and Path(f"/sys/class/net/{name}/tun_flags").exists()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def training_placement(spark: SparkSession, what: str) -> Placement:
    """Where ``what`` (e.g. "TorchDistributor") runs its processes on ``spark``'s master,
    or a ConfigError naming ``--overlay`` when it would cross hosts in plaintext."""
    context = spark.sparkContext
    master = context.master or ""
    if not master.startswith("spark://"):
        return "local"
    conf = context.getConf()
    driver = conf.get("spark.driver.host", "") or ""
    # A loopback driver has every executor on this host; on the overlay, every byte
    # between hosts is inside its TLS tunnel.
    if _is_loopback(driver) or _on_tunnel(driver):
        return "cluster"
    if (conf.get(ALLOW_PLAINTEXT, "false") or "").strip().lower() == "true":
        return "cluster-plaintext"
    raise ConfigError(
        f"{what} on the standalone master {master} would send the training traffic "
        "(gradients, histograms) between hosts in plaintext: the installed torch and "
        "xgboost have no encrypted transport for it. Start the cluster with an overlay "
        "(`trustedml cluster start-master --overlay CIDR`, `start-worker --overlay CIDR` "
        "on each worker host) and submit from the master host, or, for experts, let it "
        f"through with --conf {ALLOW_PLAINTEXT}=true --allow-insecure-conf {ALLOW_PLAINTEXT} "
        "(recorded in the job measurement)"
    )


def checked_placement(spark: SparkSession, what: str) -> Placement:
    """:func:`training_placement`, with a warning on stderr when plaintext was let through."""
    placement = training_placement(spark, what)
    if placement == "cluster-plaintext":
        print(PLAINTEXT_WARNING, file=sys.stderr, flush=True)
    return placement
