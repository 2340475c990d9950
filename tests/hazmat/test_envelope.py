"""Key broker envelopes: HPKE sealing, the attestation binding, versioned wrapped keys.

The HPKE part is checked against an independent from-scratch implementation of RFC
9180 (base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM), so the
byte-exact description in docs/broker-protocol.md is what the code does.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from trustedml.errors import IntegrityError
from trustedml.hazmat import envelope, keywrap

# -- an independent RFC 9180 implementation (decrypt side) --------------------------------

KEM_SUITE_ID = b"KEM" + struct.pack(">H", 0x0020)
HPKE_SUITE_ID = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0002)


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt or bytes(32), ikm, hashlib.sha256)


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hashlib.sha256)
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def reference_open(sk: x25519.X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    enc, ct = sealed[:32], sealed[32:]
    pk_rm = sk.public_key().public_bytes_raw()
    dh = sk.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    kem_context = enc + pk_rm
    eae_prk = _labeled_extract(KEM_SUITE_ID, b"", b"eae_prk", dh)
    shared = _labeled_expand(KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, 32)
    psk_id_hash = _labeled_extract(HPKE_SUITE_ID, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(HPKE_SUITE_ID, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash  # mode_base
    secret = _labeled_extract(HPKE_SUITE_ID, shared, b"secret", b"")
    key = _labeled_expand(HPKE_SUITE_ID, secret, b"key", context, 32)
    base_nonce = _labeled_expand(HPKE_SUITE_ID, secret, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(base_nonce, ct, b"")  # sequence 0: nonce = base_nonce


# -- tests -------------------------------------------------------------------------------


def _info(**changes: object) -> bytes:
    args: dict[str, object] = {
        "operation": "unwrap",
        "key_id": "kek-1",
        "version": 3,
        "request_id": bytes(range(16)),
        "token_sha256": hashlib.sha256(b"token").digest(),
    }
    args.update(changes)
    return envelope.envelope_info(**args)  # type: ignore[arg-type]


def test_info_layout_is_byte_exact() -> None:
    info = _info()
    assert info == (
        b"trustedml/broker/v1\x00unwrap\x00kek-1\x00"
        + b"\x00\x00\x00\x03"
        + bytes(range(16))
        + hashlib.sha256(b"token").digest()
    )


def test_session_info_layout_is_byte_exact() -> None:
    nonce, digest = bytes(range(32)), hashlib.sha256(b"token").digest()
    info = envelope.session_info(nonce, digest)
    assert info == b"trustedml/broker/v1\x00session\x00" + nonce + digest
    with pytest.raises(IntegrityError, match="nonce"):
        envelope.session_info(nonce[:-1], digest)


def test_session_key_seal_matches_independent_rfc9180_implementation() -> None:
    sk = envelope.generate_private_key()
    pk = envelope.public_key_bytes(sk)
    session_key = os.urandom(32)
    info = envelope.session_info(os.urandom(32), os.urandom(32))
    sealed = envelope.seal(pk, session_key, info)
    assert len(sealed) == 32 + 32 + 16
    assert reference_open(sk, sealed, info) == session_key
    assert envelope.open_sealed(sk, sealed, info) == session_key


def test_session_key_does_not_open_with_another_key_pair_info_or_bytes() -> None:
    sk = envelope.generate_private_key()
    info = envelope.session_info(bytes(32), bytes(32))
    sealed = envelope.seal(envelope.public_key_bytes(sk), b"k" * 32, info)
    with pytest.raises(IntegrityError, match="cannot open the key sealed by the broker"):
        envelope.open_sealed(envelope.generate_private_key(), sealed, info)
    with pytest.raises(IntegrityError):
        envelope.open_sealed(sk, sealed, envelope.session_info(bytes(32), b"\x01" * 32))
    for index in (0, 40, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 1
        with pytest.raises(IntegrityError):
            envelope.open_sealed(sk, bytes(tampered), info)
    with pytest.raises(IntegrityError, match="at least 48 bytes"):
        envelope.open_sealed(sk, sealed[:47], info)


def test_data_key_layout() -> None:
    key = os.urandom(32)
    dek = os.urandom(32)
    sealed = envelope.seal_data_key(AESGCM(key), dek, _info())
    assert len(sealed) == 12 + 32 + 16
    # iv || AES-256-GCM(session key, iv, DEK, aad = envelope info)
    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], _info()) == dek
    assert envelope.open_data_key(AESGCM(key), sealed, _info()) == dek
    assert envelope.seal_data_key(AESGCM(key), dek, _info()) != sealed  # fresh iv


@pytest.mark.parametrize(
    "changes",
    [
        {"operation": "datakey"},
        {"key_id": "kek-2"},
        {"version": 4},
        {"request_id": bytes(16)},
        {"token_sha256": hashlib.sha256(b"other token").digest()},
    ],
)
def test_data_key_does_not_open_when_any_bound_field_differs(changes: dict[str, object]) -> None:
    key = AESGCM(os.urandom(32))
    sealed = envelope.seal_data_key(key, b"k" * 32, _info())
    with pytest.raises(IntegrityError, match="cannot open the data key"):
        envelope.open_data_key(key, sealed, _info(**changes))


def test_data_key_does_not_open_under_another_session_or_modified() -> None:
    key = AESGCM(os.urandom(32))
    sealed = envelope.seal_data_key(key, b"k" * 32, _info())
    with pytest.raises(IntegrityError):
        envelope.open_data_key(AESGCM(os.urandom(32)), sealed, _info())
    for index in (0, 20, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 1
        with pytest.raises(IntegrityError):
            envelope.open_data_key(key, bytes(tampered), _info())
    with pytest.raises(IntegrityError, match="at least 28 bytes"):
        envelope.open_data_key(key, sealed[:27], _info())


def test_envelope_info_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="operation"):
        _info(operation="steal")
    with pytest.raises(IntegrityError, match="request id"):
        _info(request_id=b"short")
    with pytest.raises(IntegrityError, match="token digest"):
        _info(token_sha256=b"short")
    with pytest.raises(IntegrityError, match="NUL"):
        _info(key_id="a\x00b")
    with pytest.raises(IntegrityError, match="raw X25519"):
        envelope.seal(b"\x01" * 31, b"k", _info())


def test_report_data_binding() -> None:
    nonce, pk, job = os.urandom(32), os.urandom(32), os.urandom(32)
    expected = hashlib.sha512(b"trustedml/broker/attest/v1\x00" + nonce + pk + job).digest()
    assert envelope.report_data(nonce, pk, job) == expected
    assert len(expected) == 64
    assert (
        envelope.report_data(nonce, pk, None)
        == hashlib.sha512(b"trustedml/broker/attest/v1\x00" + nonce + pk).digest()
    )
    assert envelope.report_data(nonce, pk, None) != envelope.report_data(
        nonce, os.urandom(32), None
    )
    with pytest.raises(IntegrityError, match="nonce"):
        envelope.report_data(nonce[:31], pk, None)
    with pytest.raises(IntegrityError, match="client public key"):
        envelope.report_data(nonce, pk + b"x", None)
    with pytest.raises(IntegrityError, match="job measurement"):
        envelope.report_data(nonce, pk, b"x" * 65)


def test_versioned_wrap_layout_and_round_trip() -> None:
    kek, dek = os.urandom(32), os.urandom(32)
    wrapped = envelope.wrap_versioned(kek, "kek-1", 7, dek)
    assert len(wrapped) == 66
    assert wrapped[:5] == b"\x02\x00\x00\x00\x07"
    # The inner part is the key-wrap format of docs/format.md under the name "kek-1@v7".
    assert keywrap.unwrap(kek, "kek-1@v7", wrapped[5:]) == dek
    assert envelope.wrapped_version(wrapped) == 7
    assert envelope.unwrap_versioned(kek, "kek-1", wrapped) == dek


def test_versioned_wrap_detects_changes() -> None:
    kek, dek = os.urandom(32), os.urandom(32)
    wrapped = envelope.wrap_versioned(kek, "kek-1", 2, dek)
    # Another version number in the prefix changes the bound name: unwrap fails.
    relabelled = wrapped[:1] + struct.pack(">I", 3) + wrapped[5:]
    with pytest.raises(IntegrityError):
        envelope.unwrap_versioned(kek, "kek-1", relabelled)
    with pytest.raises(IntegrityError):
        envelope.unwrap_versioned(kek, "kek-2", wrapped)
    with pytest.raises(IntegrityError, match="not a key broker wrapped key"):
        envelope.wrapped_version(keywrap.wrap(kek, "kek-1", dek))  # a local (v1) wrap
    with pytest.raises(IntegrityError, match="version 0"):
        envelope.wrapped_version(wrapped[:1] + bytes(4) + wrapped[5:])
    with pytest.raises(ValueError, match="key version"):
        envelope.wrap_versioned(kek, "kek-1", 0, dek)


@given(st.binary(max_size=120))
def test_wrapped_version_never_crashes_on_junk(data: bytes) -> None:
    with contextlib.suppress(IntegrityError):
        assert envelope.wrapped_version(data) >= 1
