"""The worker's bind shim (trustedml/cluster/native/bindaddr.c), built with the machine's
compiler and preloaded into a real Python child: wildcard binds land on the given
address, a loopback connect to such a moved listener follows it, everything else binds
and connects as asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustedml.cluster._bindaddr import ENV_BIND_ADDRESS, bind_shim, with_bind_shim
from trustedml.errors import ClusterError

# Binds each kind of socket and prints where each one ended up.
CHILD = """
import json, socket

def bound(family, address, v6only=None):
    s = socket.socket(family, socket.SOCK_STREAM)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    try:
        s.bind((address, 0))
    except OSError as exc:
        return "error: " + exc.strerror
    s.listen()
    host, port = s.getsockname()[:2]
    s.close()
    return host if port else "no port"

def reached(listen_on):
    # A listener, then a connect to it at loopback (as libxgboost wakes its own).
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((listen_on, 0))
        s.listen()
        c.connect(("127.0.0.1", s.getsockname()[1]))
        return "connected to " + c.getpeername()[0]
    except OSError as exc:
        return "error: " + exc.strerror
    finally:
        c.close()
        s.close()

print(json.dumps({
    "loopback to a wildcard listener": reached("0.0.0.0"),
    "loopback to a loopback listener": reached("127.0.0.1"),
    "v4 wildcard": bound(socket.AF_INET, "0.0.0.0"),
    "v4 loopback": bound(socket.AF_INET, "127.0.0.1"),
    "v6 wildcard": bound(socket.AF_INET6, "::", v6only=False),
    "v6 wildcard, v6 only": bound(socket.AF_INET6, "::", v6only=True),
    "v6 loopback": bound(socket.AF_INET6, "::1"),
}))
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bind_shim(tmp_path_factory.mktemp("shim"))


def _binds(env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


def _base() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV_BIND_ADDRESS)}


def test_wildcard_binds_land_on_the_address(shim: Path) -> None:
    binds = _binds({**_base(), "LD_PRELOAD": str(shim), ENV_BIND_ADDRESS: "127.0.0.2"})
    assert binds["v4 wildcard"] == "127.0.0.2"
    # Dual-stack (as every JVM socket is): the v4-mapped form of the address.
    assert binds["v6 wildcard"] == "::ffff:127.0.0.2"
    # A v6-only socket cannot take it and is not reachable at it: left as it is.
    assert binds["v6 wildcard, v6 only"] in ("::", "error: Cannot assign requested address")
    # The process still reaches its own moved listener at loopback (at the address it
    # moved to); a loopback listener is reached as asked.
    assert binds["loopback to a wildcard listener"] == "connected to 127.0.0.2"
    assert binds["loopback to a loopback listener"] == "connected to 127.0.0.1"
    # Concrete addresses pass through untouched.
    assert binds["v4 loopback"] == "127.0.0.1"
    assert binds["v6 loopback"] in ("::1", "error: Cannot assign requested address")


def test_without_the_variable_the_wildcard_stays(shim: Path) -> None:
    binds = _binds({**_base(), "LD_PRELOAD": str(shim)})
    assert binds["v4 wildcard"] == "0.0.0.0"  # noqa: S104 - what is checked
    assert binds["v6 wildcard"] == "::"
    assert binds["loopback to a wildcard listener"] == "connected to 127.0.0.1"


def test_an_unreadable_address_refuses_the_wildcard(shim: Path) -> None:
    binds = _binds({**_base(), "LD_PRELOAD": str(shim), ENV_BIND_ADDRESS: "not-an-address"})
    assert binds["v4 wildcard"] == "error: Cannot assign requested address"
    assert binds["v6 wildcard"] == "error: Cannot assign requested address"
    assert binds["v4 loopback"] == "127.0.0.1"


def test_the_worker_environment_keeps_an_operators_preload(shim: Path) -> None:
    env = with_bind_shim({"LD_PRELOAD": "/opt/their.so", "PATH": "/bin"}, "127.0.0.3")
    first, ours = env["LD_PRELOAD"].split(":")
    assert first == "/opt/their.so"
    assert ours.endswith(".so")
    assert Path(ours).is_file()
    assert env[ENV_BIND_ADDRESS] == "127.0.0.3"
    # Preloading twice does not add it twice; a name is resolved to its address.
    again = with_bind_shim(env, "localhost")
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"]
    assert again[ENV_BIND_ADDRESS] in ("127.0.0.1", "::1")


def test_a_machine_without_a_compiler_is_told_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match=r"no C compiler .*install gcc"):
        bind_shim(tmp_path / "cache")
