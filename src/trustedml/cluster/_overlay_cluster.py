"""A cluster on the overlay: the tunnel starts first, then the daemons bind and advertise
their overlay address, so everything between hosts crosses the wire inside TLS."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

from trustedml._secret import Secret
from trustedml.cluster._daemons import start_master, start_worker, stop_cluster
from trustedml.cluster._options import ClusterOptions
from trustedml.cluster._overlay_launch import (
    OVERLAY_PORT,
    check_cidr,
    overlay_hub,
    start_overlay,
    stop_overlay,
    tunnel_material,
)
from trustedml.cluster._state import ClusterDir, ClusterState
from trustedml.cluster._tun import DEFAULT_IFACE
from trustedml.errors import ClusterError, ConfigError
from trustedml.keys import KeyDirectory

__all__ = ["start_cluster_on_overlay", "start_master_on_overlay", "start_worker_on_overlay"]


def _as_dir(directory: ClusterDir | str | Path) -> ClusterDir:
    return directory if isinstance(directory, ClusterDir) else ClusterDir(directory)


def _material_of(
    options: ClusterOptions, keys: KeyDirectory | None, passphrase: Secret | None
) -> tuple[KeyDirectory, Secret]:
    if not options.secure or keys is None or passphrase is None:
        raise ConfigError(
            "--overlay: the tunnel authenticates hosts with the key directory's "
            "certificates; it needs a secure cluster with --keys (not --insecure)"
        )
    return keys, passphrase


def _saved(directory: ClusterDir, state: ClusterState, overlay: dict[str, Any]) -> ClusterState:
    state = replace(state, overlay=overlay)
    directory.save(state)
    return state


def start_master_on_overlay(
    directory: ClusterDir | str | Path,
    options: ClusterOptions,
    cidr: str,
    *,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
    iface: str = DEFAULT_IFACE,
    hub_port: int = OVERLAY_PORT,
    **master: Any,
) -> ClusterState:
    """The overlay's hub on ``options.host:hub_port`` (the network ``cidr``, the hub
    taking its first address), then :func:`start_master` on that overlay address.
    The master URL printed and recorded is the overlay one."""
    directory = _as_dir(directory)
    keys, passphrase = _material_of(options, keys, passphrase)
    check_cidr(cidr)
    directory.create()
    overlay = start_overlay(
        directory.path,
        tunnel_material(keys, passphrase),
        hub=overlay_hub(options.host, hub_port),
        cidr=cidr,
        iface=iface,
        python=options.python,
    )
    try:
        on_overlay = replace(options, host=overlay["address"])
        state = start_master(directory, on_overlay, keys=keys, passphrase=passphrase, **master)
        return _saved(directory, state, overlay)
    except BaseException:
        stop_overlay(overlay)
        raise


def _hub_of(master_url: str, network: ipaddress.IPv4Network, hub: str | None) -> tuple[str, int]:
    """The hub endpoint and the master's port, from the master URL the operator gave."""
    rest = master_url.removeprefix("spark://")
    host, sep, port = rest.rpartition(":")
    if not master_url.startswith("spark://") or not sep or not port.isdigit() or "," in rest:
        raise ConfigError(f"--master {master_url}: expected spark://HOST:PORT")
    if hub is None:
        try:
            inside = ipaddress.ip_address(host) in network
        except ValueError:
            inside = False
        if inside:
            raise ConfigError(
                f"--master {master_url} is an overlay address: give the master host's "
                f"own address (spark://HOST:{port}), the hub listens there"
            )
        hub = overlay_hub(host)
    return hub, int(port)


def start_worker_on_overlay(
    directory: ClusterDir | str | Path,
    options: ClusterOptions,
    master_url: str,
    cidr: str,
    *,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
    iface: str = DEFAULT_IFACE,
    hub: str | None = None,
    **worker: Any,
) -> ClusterState:
    """A worker on the overlay. On a host whose directory already runs the overlay (the
    master's, or an earlier worker's) it joins that; otherwise a spoke joins the hub
    on the master host (``master_url``'s host, port 7079, or ``hub``), and the worker
    joins the master at its overlay address."""
    directory = _as_dir(directory)
    keys, passphrase = _material_of(options, keys, passphrase)
    network = check_cidr(cidr)
    existing = directory.load_or_none()
    overlay = existing.overlay if existing is not None else None
    if overlay is not None:
        if overlay.get("cidr") != str(network):
            raise ClusterError(
                f"{directory.path}: its overlay is {overlay.get('cidr')}, not {cidr}"
            )
        assert existing is not None
        on_overlay = replace(options, host=overlay["address"])
        return start_worker(
            directory,
            on_overlay,
            existing.master_url,
            keys=keys,
            passphrase=passphrase,
            **worker,
        )
    endpoint, port = _hub_of(master_url, network, hub)
    directory.create()
    overlay = start_overlay(
        directory.path,
        tunnel_material(keys, passphrase),
        hub=endpoint,
        iface=iface,
        python=options.python,
    )
    try:
        if overlay["cidr"] != str(network):
            raise ClusterError(f"the overlay hub {endpoint} runs {overlay['cidr']}, not {cidr}")
        hub_address = next(network.hosts())
        state = start_worker(
            directory,
            replace(options, host=overlay["address"]),
            f"spark://{hub_address}:{port}",
            keys=keys,
            passphrase=passphrase,
            **worker,
        )
        return _saved(directory, state, overlay)
    except BaseException:
        stop_overlay(overlay)
        raise


def start_cluster_on_overlay(
    directory: ClusterDir | str | Path,
    options: ClusterOptions,
    workers: int,
    cidr: str,
    *,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
    iface: str = DEFAULT_IFACE,
    cores: int = 1,
    memory: str = "1g",
    **common: Any,
) -> ClusterState:
    """The hub and a master on the overlay, and ``workers`` workers on this host at the
    hub's overlay address (for development: nothing crosses a host here); ``common``
    (timeout, on_plan) goes to every daemon, ``port``/``webui_port`` to the master.
    On failure everything already started is stopped again."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers: expected a number of workers (0 or more), got {workers!r}")
    directory = _as_dir(directory)
    state = start_master_on_overlay(
        directory, options, cidr, keys=keys, passphrase=passphrase, iface=iface, **common
    )
    shared = {k: v for k, v in common.items() if k not in ("port", "webui_port")}
    try:
        for _ in range(workers):
            state = start_worker_on_overlay(
                directory,
                options,
                state.master_url,
                cidr,
                keys=keys,
                passphrase=passphrase,
                cores=cores,
                memory=memory,
                **shared,
            )
    except BaseException:
        stop_cluster(directory)
        raise
    return state
