"""Keep a worker's listeners off the wildcard: an LD_PRELOAD shim (native/bindaddr.c)
rebinds a bind(2) to 0.0.0.0 or :: to the worker's own address."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from trustedml.errors import ClusterError

__all__ = ["ENV_BIND_ADDRESS", "SHIM_SOURCE", "bind_address", "bind_shim", "with_bind_shim"]

# Read by native/bindaddr.c, which spells it out.
ENV_BIND_ADDRESS = "TRUSTEDML_BIND_ADDRESS"
SHIM_SOURCE = Path(__file__).resolve().parent / "native" / "bindaddr.c"
_TAIL_CHARS = 2000


def _default_cache_dir() -> Path:
    # Beside the compiled Java helpers (trustedml.spark's jar cache).
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trustedml" / "jars"


def _compiler() -> str:
    for name in (os.environ.get("CC") or "", "gcc", "cc"):
        found = shutil.which(name) if name else None
        if found is not None:
            return found
    raise ClusterError(
        "no C compiler (gcc or cc, or $CC) found: a cluster worker keeps libraries that "
        "listen on 0.0.0.0 on its own address with a small shim (trustedml/cluster/"
        "native/bindaddr.c) built once with the machine's compiler; install gcc"
    )


def bind_shim(cache_dir: Path | None = None) -> Path:
    """The shared object of native/bindaddr.c, built with the machine's C compiler.

    Cached in ``cache_dir`` (default ``~/.cache/trustedml/jars``, beside the Java
    helpers) as ``trustedml-bindaddr-HASH.so``, the hash covering the source and the
    machine's architecture; a cached one is returned as is. Raises
    :class:`ClusterError` when it has to be built and no compiler is found."""
    text = SHIM_SOURCE.read_bytes()
    digest = hashlib.sha256(text + b"\x00" + platform.machine().encode()).hexdigest()
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    shim = cache / f"trustedml-bindaddr-{digest[:16]}.so"
    if shim.is_file():
        return shim
    compiler = _compiler()
    cache.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed: concurrent builders never load half a file.
    fd, name = tempfile.mkstemp(prefix=".partial-", suffix=".so", dir=cache)
    os.close(fd)
    partial = Path(name)
    try:
        argv = [compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(SHIM_SOURCE)]
        try:
            done = subprocess.run([*argv, "-ldl"], capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ClusterError(f"cannot run {compiler}: {exc.strerror}") from exc
        if done.returncode != 0:
            tail = (done.stderr + done.stdout).strip()[-_TAIL_CHARS:]
            raise ClusterError(
                f"building {SHIM_SOURCE.name} failed ({compiler} exit {done.returncode}):\n{tail}"
            )
        partial.chmod(0o755)
        partial.replace(shim)
    finally:
        partial.unlink(missing_ok=True)
    return shim


def bind_address(host: str) -> str:
    """The IP address ``host`` (an address or a name, as a daemon's ``--host``) binds."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ClusterError(f"--host {host}: cannot resolve it: {exc}") from exc
    # IPv4 first, as the JVM resolves it.
    found.sort(key=lambda entry: entry[0] != socket.AF_INET)
    return str(found[0][4][0])


def with_bind_shim(env: Mapping[str, str], host: str) -> dict[str, str]:
    """``env`` with the shim preloaded (after any LD_PRELOAD already there) and
    binding ``host``'s address in place of the wildcard."""
    shim = str(bind_shim())
    if any(c in shim for c in ": \t\n"):
        # LD_PRELOAD separates entries with colons and spaces.
        raise ClusterError(
            f"{shim}: the shim's path cannot go in LD_PRELOAD (it holds ':' or a space); "
            "set XDG_CACHE_HOME to a plainer directory"
        )
    preload = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    if shim not in preload:
        preload.append(shim)
    return {**env, "LD_PRELOAD": ":".join(preload), ENV_BIND_ADDRESS: bind_address(host)}
