"""The key agent's protocol for the tml:// file system: the replies the JVM understands and
the loop serving its length-prefixed frames on stdin/stdout (docs/jvm-fs.md). The agent
process itself is ``python -m trustedml._keyagent`` (it builds the attested key store,
which this package may not import)."""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable
from typing import IO, Any

from trustedml.data import KeyStore
from trustedml.errors import TrustedMLError

__all__ = ["generate_reply", "run_key_agent", "unwrap_reply"]

_LENGTH = struct.Struct(">I")
_MAX_FRAME = 1 << 20
OK = b"\x01"
FAILED = b"\x00"


def _failed(exc: Exception) -> bytes:
    # Our errors never carry key material; anything else is named by its type only.
    text = str(exc) if isinstance(exc, TrustedMLError) else type(exc).__name__
    return FAILED + text.encode("utf-8", "replace")


def unwrap_reply(store: KeyStore, key_id: str, wrapped: bytes) -> bytes:
    """The reply to an unwrap request: 1 || the data key, or 0 || why not."""
    try:
        return OK + store.unwrap_data_key(key_id, bytes(wrapped)).reveal()
    except Exception as exc:  # every failure becomes a reply the JVM raises
        return _failed(exc)


def generate_reply(store: KeyStore, key_id: str) -> bytes:
    """The reply to a generate request: 1 || uint16 len || wrapped || data key, or 0 || why."""
    try:
        made = store.generate_data_key(key_id)
        return OK + len(made.wrapped).to_bytes(2, "big") + made.wrapped + made.plaintext.reveal()
    except Exception as exc:  # every failure becomes a reply the JVM raises
        return _failed(exc)


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None  # the JVM closed our stdin: done
    (length,) = _LENGTH.unpack(head)
    if length > _MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    body = stream.read(length)
    if len(body) != length:
        return None
    return body


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)) + payload)
    stream.flush()


def serve(store: KeyStore, requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answer requests until ``requests`` ends."""
    while (frame := _read_frame(requests)) is not None:
        op = frame[:1]
        klen = int.from_bytes(frame[1:3], "big")
        key_id = frame[3 : 3 + klen].decode("utf-8", "replace")
        if op == b"U":
            reply = unwrap_reply(store, key_id, frame[3 + klen :])
        elif op == b"G":
            reply = generate_reply(store, key_id)
        else:
            reply = FAILED + b"unknown key agent request"
        _write_frame(replies, reply)


def run_key_agent(make_store: Callable[[dict[str, Any]], KeyStore]) -> int:
    """The agent's main loop: read the descriptor frame (JSON), make the store with
    ``make_store``, then serve the JVM's requests until stdin closes."""
    # Frames own the real stdout; anything else printed goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    first = _read_frame(requests)
    if first is None:
        return 0
    try:
        store = make_store(json.loads(first))
    except (ValueError, KeyError, TypeError, TrustedMLError) as exc:
        # Every request is answered with why there are no keys.
        why = f"the trusted-ml key agent cannot start: {exc}"
        print(why, file=sys.stderr)
        while _read_frame(requests) is not None:
            _write_frame(replies, FAILED + why.encode())
        return 1
    serve(store, requests, replies)
    return 0
