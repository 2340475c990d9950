"""MNIST in its original IDX format: plaintext or gzip (told apart by magic bytes, not
by name), under either spelling archive tools produce, or encrypted (``*.tml``)."""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from trustedml.data import SUFFIX, open_encrypted
from trustedml.errors import ConfigError, IntegrityError
from trustedml.ml._configs import TrainConfig
from trustedml.ml._io import is_encrypted
from trustedml.ml._profile import mark
from trustedml.runtime import job_keystore

__all__ = [
    "MnistInputs",
    "idx_path",
    "load_inputs",
    "load_mnist",
    "parse_idx",
    "read_idx",
    "read_input_array",
]

Split = Literal["train", "test"]

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one MNIST uses
_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}
_NDIM = {"images": 3, "labels": 1}
IMAGE_SHAPE = (28, 28)


def idx_path(data_dir: str | os.PathLike[str], split: Split, kind: str) -> Path:
    """The file of ``split`` ("train"/"test") and ``kind`` ("images"/"labels") in
    ``data_dir``: ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``, each
    possibly with ``.gz`` and/or ``.tml``."""
    if split not in _PREFIX:
        raise ConfigError(f"MNIST split: expected 'train' or 'test', got {split!r}")
    if kind not in _NDIM:
        raise ConfigError(f"MNIST file kind: expected 'images' or 'labels', got {kind!r}")
    directory = Path(data_dir)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: expected a directory holding the MNIST IDX files")
    prefix, ndim = _PREFIX[split], _NDIM[kind]
    stems = (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte")
    for stem in stems:
        for suffix in ("", ".gz", SUFFIX, ".gz" + SUFFIX):
            candidate = directory / (stem + suffix)
            if candidate.is_file():
                return candidate
    raise ConfigError(
        f"{directory}: no MNIST {split} {kind}: expected {stems[0]} (or {stems[1]}), "
        f"optionally ending .gz and/or {SUFFIX}"
    )


def parse_idx(
    data: bytes | npt.NDArray[np.uint8], name: str, ndim: int | None = None
) -> npt.NDArray[np.uint8]:
    """The array of an IDX file's bytes (gzip-compressed or not); ``name`` is only
    used in error messages. From a writable array of plaintext IDX bytes (what
    :func:`read_input_array` gives), the result is a view of it: no copy."""
    view = (memoryview(data) if isinstance(data, bytes) else data.data).cast("B")
    if bytes(view[:2]) == _GZIP_MAGIC:
        try:
            data = gzip.decompress(view)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{name}: corrupt gzip data ({exc})") from None
        view = memoryview(data)
    head = bytes(view[:4])
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise ConfigError(
            f"{name}: not an IDX file (expected magic 0x0000 then type and rank, "
            f"got {head.hex() or 'an empty file'})"
        )
    if head[2] != _UBYTE:
        raise ConfigError(f"{name}: IDX type 0x{head[2]:02x}: expected 0x08 (unsigned bytes)")
    rank = head[3]
    if ndim is not None and rank != ndim:
        raise ConfigError(f"{name}: IDX rank {rank}: expected {ndim} dimensions")
    if rank == 0:
        raise ConfigError(f"{name}: IDX rank 0: expected at least one dimension")
    header = 4 + 4 * rank
    if len(view) < header:
        raise ConfigError(f"{name}: truncated IDX header ({len(view)} of {header} bytes)")
    dims = tuple(int.from_bytes(view[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    size = int(np.prod(dims, dtype=np.int64))
    if len(view) - header != size:
        what = "truncated" if len(view) - header < size else "trailing bytes in"
        raise ConfigError(
            f"{name}: {what} IDX data: dimensions {'x'.join(map(str, dims))} need "
            f"{size} bytes after the header, got {len(view) - header}"
        )
    array = np.frombuffer(view, dtype=np.uint8, offset=header).reshape(dims)
    # torch.from_numpy wants a writable array: bytes (gzip's output) are copied once.
    return array if array.flags.writeable else array.copy()


def read_input_array(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    """The bytes of an input file in a new (writable) array: an encrypted ``.tml``
    file is decrypted chunk by chunk straight into it with the job's keys, each chunk
    authenticated before its bytes are used."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: expected an existing input file")
    if is_encrypted(p):
        # Its errors name the file already: the decrypting reader adds it.
        with open_encrypted(p, job_keystore()) as reader:
            out = np.empty(reader.size, dtype=np.uint8)
            got = reader.readinto(out.data)
    else:
        with p.open("rb", buffering=0) as f:
            out = np.empty(os.fstat(f.fileno()).st_size, dtype=np.uint8)
            got = 0
            while got < len(out) and (n := f.readinto(out.data[got:])):
                got += n
    if got != len(out):
        raise IntegrityError(f"{p}: {got} of {len(out)} bytes read (file changed while read)")
    mark(f"input-read:{p.name}")
    return out


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> npt.NDArray[np.uint8]:
    """The array in an IDX file (plaintext, gzip, or encrypted ``.tml`` read with the
    job's keys)."""
    return parse_idx(read_input_array(path), str(path), ndim)


def load_mnist(
    data_dir: str | os.PathLike[str], split: Split = "train", limit: int | None = None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Images (N x 28 x 28) and labels (N) of an MNIST split, uint8; ``limit`` keeps
    the first ``limit`` examples."""
    if limit is not None and limit <= 0:
        raise ConfigError(f"MNIST limit: expected a positive number of examples, got {limit}")
    images_file = idx_path(data_dir, split, "images")
    labels_file = idx_path(data_dir, split, "labels")
    images = read_idx(images_file, 3)
    labels = read_idx(labels_file, 1)
    if images.shape[1:] != IMAGE_SHAPE:
        raise ConfigError(
            f"{images_file}: images of {images.shape[1]}x{images.shape[2]} pixels: "
            f"expected {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}"
        )
    if len(images) != len(labels):
        raise ConfigError(
            f"{images_file} holds {len(images)} images but {labels_file} "
            f"holds {len(labels)} labels: expected as many of each"
        )
    if len(labels) and int(labels.max()) > 9:
        raise ConfigError(f"{labels_file}: label {int(labels.max())}: expected digits 0-9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


@dataclass(frozen=True)
class MnistInputs:
    """The MNIST arrays of a training run: loaded (decrypted) once, by the launcher of
    the training processes before it forks them (they share them). Here, without
    torch, so that the launcher loads them while it imports torch."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]
    test_images: npt.NDArray[np.uint8]
    test_labels: npt.NDArray[np.uint8]


def load_inputs(config: TrainConfig) -> MnistInputs:
    """The training (first ``config.train_limit``) and test images and labels."""
    images, labels = load_mnist(config.data_dir, "train", config.train_limit)
    test_images, test_labels = load_mnist(config.data_dir, "test")
    return MnistInputs(images, labels, test_images, test_labels)
