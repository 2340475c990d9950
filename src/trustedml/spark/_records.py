"""Record boundaries in decrypted text, so splits read each record exactly once.

Pure functions over byte chunks; no Spark here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


def split_lines(
    chunk_at: Callable[[int], bytes],
    chunk_count: int,
    chunk_size: int,
    first: int,
    stop: int,
) -> Iterator[bytes]:
    """Lines of the split made of chunks ``first`` .. ``stop - 1``.

    Hadoop's rule: a line belongs to the split holding its first byte, except that
    a line starting exactly on a split boundary belongs to the split before it. A
    split other than the first therefore skips through the first newline at or
    after its start, and every split reads on past its end to finish its last line.
    """
    start = first * chunk_size
    end = stop * chunk_size  # may exceed the plaintext size: then it is the file end
    buf = bytearray()
    base = start  # plaintext offset of buf[0]
    index = first

    def more() -> bool:
        nonlocal index
        if index >= chunk_count:
            return False
        buf.extend(chunk_at(index))
        index += 1
        return True

    cursor = 0
    if start > 0:
        while True:
            nl = buf.find(b"\n", cursor)
            if nl >= 0:
                cursor = nl + 1
                break
            cursor = len(buf)
            if not more():
                return
    while base + cursor <= end:
        nl = buf.find(b"\n", cursor)
        if nl < 0:
            if more():
                continue
            if cursor < len(buf):
                yield _strip_cr(bytes(buf[cursor:]))
            return
        yield _strip_cr(bytes(buf[cursor:nl]))
        cursor = nl + 1
        if cursor > (1 << 22):
            # Keep memory bounded: drop consumed bytes.
            del buf[:cursor]
            base += cursor
            cursor = 0


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def split_csv_records(data: bytes, quote: bytes = b'"', escape: bytes = b"\\") -> Iterator[bytes]:
    """Records of a whole CSV text whose quoted values may contain newlines."""
    q, e = quote[0] if quote else -1, escape[0] if escape else -1
    in_quotes = False
    start = 0
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if in_quotes and c == e and e != q and i + 1 < n:
            i += 2
            continue
        if c == q:
            in_quotes = not in_quotes
        elif c == 0x0A and not in_quotes:
            yield _strip_cr(data[start:i])
            start = i + 1
        i += 1
    if start < n:
        yield _strip_cr(data[start:])


def split_region(
    chunk_at: Callable[[int], bytes],
    chunk_count: int,
    chunk_size: int,
    first: int,
    stop: int,
) -> bytes:
    """The bytes holding exactly the lines of a split (same rule as :func:`split_lines`),
    newline-terminated except possibly at the end of the file.

    One contiguous region lets the caller cut it into lines in bulk (Arrow) instead
    of line by line in Python.
    """
    start = first * chunk_size
    end = stop * chunk_size
    parts = [chunk_at(i) for i in range(first, min(stop, chunk_count))]
    data = b"".join(parts)
    index = min(stop, chunk_count)
    begin = 0
    if start > 0:
        nl = data.find(b"\n")
        if nl < 0 or start + nl >= end:
            # No line starts inside this split.
            return b""
        begin = nl + 1
    # The last line of the split is the one holding position `end`: finish it.
    cut = data.find(b"\n", max(begin, end - start))
    while cut < 0 and index < chunk_count:
        more = chunk_at(index)
        index += 1
        pos = more.find(b"\n")
        if pos >= 0:
            cut = len(data) + pos
        data += more
    return data[begin : cut + 1] if cut >= 0 else data[begin:]
