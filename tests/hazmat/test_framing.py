from __future__ import annotations

import contextlib
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustedml import IntegrityError, NotEncryptedError
from trustedml.data import DecryptingReader, EncryptingWriter, KeyRing
from trustedml.hazmat import framing
from trustedml.hazmat.framing import Header, Layout

RING = KeyRing({"k1": b"\x01" * 32, "k2": b"\x02" * 32})
LOG2 = 12
CHUNK = 1 << LOG2


def encrypt(data: bytes, key_id: str = "k1", log2: int = LOG2) -> bytes:
    buf = io.BytesIO()
    writer = EncryptingWriter(buf, RING.generate_data_key(key_id), log2_chunk=log2)
    writer.write(data)
    writer.close()
    return buf.getvalue()


def decrypt(blob: bytes, ring: KeyRing = RING) -> bytes:
    return DecryptingReader(io.BytesIO(blob), ring, name="f.tml").read()


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 3 * 1024 * 1024 + 7]
)
def test_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    blob = encrypt(data)
    assert decrypt(blob) == data
    header = Header.parse(blob)
    layout = Layout.of(header, len(blob))
    assert layout.plaintext_size == size
    assert layout.count == max(1, -(-size // CHUNK))
    assert len(blob) == header.size + size + layout.count * framing.TAG_SIZE


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3 * CHUNK + 10),
    pieces=st.lists(st.integers(min_value=0, max_value=2 * CHUNK), max_size=8),
)
def test_round_trip_any_write_pattern(data: bytes, pieces: list[int]) -> None:
    buf = io.BytesIO()
    writer = EncryptingWriter(buf, RING.generate_data_key("k1"), log2_chunk=LOG2)
    pos = 0
    for n in pieces:
        writer.write(data[pos : pos + n])
        pos += n
    writer.write(data[pos:])
    writer.close()
    assert decrypt(buf.getvalue()) == data


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=4 * CHUNK),
    start=st.integers(min_value=0),
    n=st.integers(0, 3 * CHUNK),
)
def test_random_access(data: bytes, start: int, n: int) -> None:
    reader = DecryptingReader(io.BytesIO(encrypt(data)), RING)
    start %= len(data)
    reader.seek(start)
    assert reader.read(n) == data[start : start + n]


def test_large_round_trip_default_chunk() -> None:
    data = os.urandom(5 * 1024 * 1024 + 3)
    assert decrypt(encrypt(data, log2=framing.DEFAULT_LOG2_CHUNK)) == data


@pytest.fixture(scope="module")
def multi() -> tuple[bytes, bytes]:
    data = os.urandom(4 * CHUNK + 100)  # five chunks, the last one short
    return data, encrypt(data)


def _chunks(blob: bytes) -> tuple[bytes, list[bytes], Layout]:
    header = Header.parse(blob)
    layout = Layout.of(header, len(blob))
    parts = [
        blob[layout.offset(i) : layout.offset(i) + layout.stored_size(i)]
        for i in range(layout.count)
    ]
    return blob[: header.size], parts, layout


def test_every_single_byte_flip_is_detected(multi: tuple[bytes, bytes]) -> None:
    _, blob = multi
    header, _, layout = _chunks(blob)
    # Every header byte, and bytes at the start, middle and tag of every chunk.
    positions = list(range(len(header)))
    for i in range(layout.count):
        off, size = layout.offset(i), layout.stored_size(i)
        positions += [off, off + size // 2, off + size - framing.TAG_SIZE, off + size - 1]
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises(IntegrityError):
            decrypt(bytes(bad))


def _expect_chunk_failure(blob: bytes, chunk: int) -> None:
    with pytest.raises(IntegrityError, match=f"f.tml: chunk {chunk} of "):
        decrypt(blob)


def test_dropping_the_last_chunk(multi: tuple[bytes, bytes]) -> None:
    header, parts, _ = _chunks(multi[1])
    _expect_chunk_failure(header + b"".join(parts[:-1]), 3)


def test_dropping_a_middle_chunk(multi: tuple[bytes, bytes]) -> None:
    header, parts, _ = _chunks(multi[1])
    _expect_chunk_failure(header + b"".join(parts[:2] + parts[3:]), 2)


def test_swapping_two_chunks(multi: tuple[bytes, bytes]) -> None:
    header, parts, _ = _chunks(multi[1])
    swapped = [parts[0], parts[2], parts[1], *parts[3:]]
    _expect_chunk_failure(header + b"".join(swapped), 1)


def test_appending_a_chunk_from_another_file(multi: tuple[bytes, bytes]) -> None:
    header, parts, _ = _chunks(multi[1])
    _, other, _ = _chunks(encrypt(os.urandom(2 * CHUNK + 5)))
    # Appended whole: the geometry shifts and some chunk fails.
    with pytest.raises(IntegrityError, match="failed authentication"):
        decrypt(multi[1] + other[-1])
    # Replacing the short final chunk by full chunks keeps the geometry valid: the
    # first foreign chunk is caught.
    _expect_chunk_failure(header + b"".join([*parts[:-1], other[0], other[1]]), 4)


def test_chunk_from_another_file_at_same_index(multi: tuple[bytes, bytes]) -> None:
    header, parts, _ = _chunks(multi[1])
    _, other, _ = _chunks(encrypt(os.urandom(4 * CHUNK + 100)))
    _expect_chunk_failure(header + b"".join([parts[0], other[1], *parts[2:]]), 1)


def test_truncated_inside_a_chunk(multi: tuple[bytes, bytes]) -> None:
    with pytest.raises(IntegrityError):
        decrypt(multi[1][:-1])


def test_only_header_left(multi: tuple[bytes, bytes]) -> None:
    header, _, _ = _chunks(multi[1])
    with pytest.raises(IntegrityError, match="truncated: no complete chunk"):
        decrypt(header)


def test_wrong_kek() -> None:
    blob = encrypt(b"secret rows")
    other = KeyRing({"k1": b"\x09" * 32})
    with pytest.raises(
        IntegrityError, match="cannot unwrap the data key with key-encryption key 'k1'"
    ):
        decrypt(blob, other)


def test_unknown_key_id() -> None:
    blob = encrypt(b"secret rows", key_id="k2")
    with pytest.raises(IntegrityError, match="no key-encryption key 'k2'"):
        decrypt(blob, KeyRing({"k1": b"\x01" * 32}))


@pytest.mark.parametrize("blob", [b"", b"a,b\n1,2\n", b"PAR1" + b"\x00" * 100, b"TMLDATA"])
def test_not_a_trusted_ml_file(blob: bytes) -> None:
    with pytest.raises(NotEncryptedError, match="not a trusted-ml file"):
        decrypt(blob)


def test_header_fields_round_trip() -> None:
    header = Header.build("dataset.key-1", b"w" * 61, 20, file_id=b"f" * 16)
    parsed = Header.parse(header.raw + b"trailing chunk bytes")
    assert parsed == header
    assert parsed.chunk_size == 1 << 20
    assert parsed.size == 29 + 13 + 2 + 61


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_id": ""}, "key id must be 1..128"),
        ({"key_id": "k" * 129}, "key id must be 1..128"),
        ({"wrapped_key": b""}, "wrapped key must be 1..1024"),
        ({"log2_chunk": 30}, "log2 chunk size must be in 12..24, got 30"),
    ],
)
def test_header_build_validates(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"key_id": "k", "wrapped_key": b"w", "log2_chunk": 20}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Header.build(**args)  # type: ignore[arg-type]


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_header_parser_fuzz(data: bytes) -> None:
    # Only IntegrityError (NotEncryptedError is one) may escape the parser.
    with contextlib.suppress(IntegrityError):
        Header.parse(framing.MAGIC + data)


def test_writer_copies_mutable_input_it_keeps() -> None:
    data = bytearray(os.urandom(CHUNK))
    original = bytes(data)
    buf = io.BytesIO()
    writer = EncryptingWriter(buf, RING.generate_data_key("k1"), log2_chunk=LOG2)
    writer.write(data)
    data[:] = b"\x00" * CHUNK  # the caller reuses its buffer before close()
    writer.close()
    assert decrypt(buf.getvalue()) == original


def test_reader_over_bytes_in_memory() -> None:
    data = os.urandom(3 * CHUNK + 9)
    reader = DecryptingReader.from_bytes(encrypt(data), RING)
    assert reader.read() == data
    reader.seek(CHUNK - 2)
    assert reader.read(4) == data[CHUNK - 2 : CHUNK + 2]
    reader.close()
