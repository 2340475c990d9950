"""Finding secret values in bytes: the scanners the no-secret-anywhere tests share."""

from __future__ import annotations

import base64
from collections.abc import Mapping


def encodings(key: bytes) -> dict[str, bytes]:
    """``key`` as raw bytes and as a log line, an exception or a JSON value would show it
    (base64 without its padding, so an unpadded form matches too)."""
    return {
        "raw bytes": key,
        "hex": key.hex().encode(),
        "HEX": key.hex().upper().encode(),
        "base64": base64.b64encode(key).rstrip(b"="),
        "url-safe base64": base64.urlsafe_b64encode(key).rstrip(b"="),
        "Python bytes repr": repr(key)[2:-1].encode(),
        "Java byte[] toString": str([b - 256 if b > 127 else b for b in key]).encode(),
    }


def hits(blobs: Mapping[str, bytes], secrets: Mapping[str, bytes]) -> list[str]:
    """Every (secret, encoding, place) where a secret shows up in ``blobs``."""
    needles = [(f"{name} as {how}", text) for name, key in secrets.items()
               for how, text in encodings(key).items()]  # fmt: skip
    return [f"{what} in {where}" for where, blob in blobs.items()
            for what, text in needles if text in blob]  # fmt: skip
