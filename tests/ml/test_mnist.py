"""The MNIST IDX reader, on small synthetic IDX files (and the real test split)."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATASETS
from trustedml import ConfigError, IntegrityError, KeyRing, encrypt_file
from trustedml.ml._mnist import Split, idx_path, load_mnist, parse_idx, read_idx
from trustedml.runtime import ENV_KEYRING

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
LABELS = np.array([3, 1, 4, 1, 5], dtype=np.uint8)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim])
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, *, dotted: bool = False, gz: bool = False) -> Path:
    """The four MNIST files of IMAGES/LABELS (train and test) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        for kind, ndim, array in (("images", 3, IMAGES), ("labels", 1, LABELS)):
            sep = "." if dotted else "-"
            name = f"{prefix}-{kind}{sep}idx{ndim}-ubyte"
            data = idx_bytes(array)
            if gz:
                name, data = name + ".gz", gzip.compress(data)
            (directory / name).write_bytes(data)
    return directory


@pytest.mark.parametrize("dotted", [False, True], ids=["dashed", "dotted"])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_spellings_and_compression(
    tmp_path: Path, dotted: bool, gz: bool, split: Split
) -> None:
    images, labels = load_mnist(write_mnist(tmp_path, dotted=dotted, gz=gz), split)
    assert images.dtype == np.uint8
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)
    assert images.flags.writeable


def test_compression_is_detected_by_magic_not_name(tmp_path: Path) -> None:
    gzipped_without_suffix = tmp_path / "a-idx1-ubyte"
    gzipped_without_suffix.write_bytes(gzip.compress(idx_bytes(LABELS)))
    plain_with_suffix = tmp_path / "b-idx1-ubyte.gz"
    plain_with_suffix.write_bytes(idx_bytes(LABELS))
    np.testing.assert_array_equal(read_idx(gzipped_without_suffix, 1), LABELS)
    np.testing.assert_array_equal(read_idx(plain_with_suffix, 1), LABELS)


def test_limit_keeps_the_first_examples(tmp_path: Path) -> None:
    images, labels = load_mnist(write_mnist(tmp_path), "train", limit=2)
    np.testing.assert_array_equal(images, IMAGES[:2])
    np.testing.assert_array_equal(labels, LABELS[:2])
    with pytest.raises(ConfigError, match="limit"):
        load_mnist(tmp_path, "train", limit=0)


@pytest.fixture
def job_keys(monkeypatch: pytest.MonkeyPatch) -> KeyRing:
    """Keys as `trustedml submit --kek data` hands them to a job."""
    ring = KeyRing({"data": os.urandom(32)})
    monkeypatch.setenv(ENV_KEYRING, ring.export().reveal_text())
    return ring


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_encrypted_copies(tmp_path: Path, job_keys: KeyRing, gz: bool) -> None:
    plain = write_mnist(tmp_path / "plain", dotted=True, gz=gz)
    encrypted = tmp_path / "encrypted"
    encrypted.mkdir()
    for src in plain.iterdir():
        encrypt_file(src, encrypted / (src.name + ".tml"), key_id="data", keystore=job_keys)
    assert idx_path(encrypted, "train", "images").name.endswith(".tml")
    images, labels = load_mnist(encrypted, "test")
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)


def test_encrypted_copy_with_another_key_fails(
    tmp_path: Path, job_keys: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "t10k-labels-idx1-ubyte"
    src.write_bytes(idx_bytes(LABELS))
    encrypt_file(src, tmp_path / "labels.tml", key_id="data", keystore=job_keys)
    other = KeyRing({"data": os.urandom(32)})
    monkeypatch.setenv(ENV_KEYRING, other.export().reveal_text())
    with pytest.raises(IntegrityError, match=f"^{re.escape(str(tmp_path / 'labels.tml'))}: "):
        read_idx(tmp_path / "labels.tml", 1)


def test_missing_file_names_what_was_expected(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match=r"no MNIST test labels: expected t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path, "test")
    with pytest.raises(ConfigError, match="expected a directory"):
        load_mnist(tmp_path / "nowhere", "train")
    with pytest.raises(ConfigError, match="split"):
        idx_path(tmp_path, "validation", "images")  # type: ignore[arg-type]


GOOD = idx_bytes(LABELS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an IDX file"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        (b"PK\x03\x04" + GOOD[4:], "not an IDX file"),
        (b"\x00\x00\x0d\x01" + GOOD[4:], "IDX type 0x0d"),
        (idx_bytes(IMAGES), "IDX rank 3: expected 1"),
        (GOOD[:6], "truncated IDX header"),
        (GOOD[:-1], "truncated IDX data"),
        (GOOD + b"\x00", "trailing bytes"),
        (gzip.compress(GOOD)[:-12], "corrupt gzip"),
    ],
    ids=["empty", "bad-gzip", "bad-magic", "type", "rank", "header", "truncated", "trailing",
         "cut-gzip"],
)  # fmt: skip
def test_bad_idx_files_name_the_file(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message) as info:
        read_idx(path, 1)
    assert str(info.value).startswith(f"{path}: ")


def test_parse_idx_without_expected_rank() -> None:
    assert parse_idx(idx_bytes(IMAGES), "x").shape == (5, 28, 28)


def test_inconsistent_files(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(LABELS[:4]))
    with pytest.raises(ConfigError, match=r"holds 5 images but .* holds 4 labels"):
        load_mnist(tmp_path, "train")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(IMAGES[:, :14, :14]))
    with pytest.raises(ConfigError, match="14x14 pixels: expected 28x28"):
        load_mnist(tmp_path, "test")
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(LABELS + 10))
    with pytest.raises(ConfigError, match="label 15: expected digits 0-9"):
        load_mnist(tmp_path, "test")


def test_real_mnist_test_split() -> None:
    images, labels = load_mnist(DATASETS / "mnist", "test")
    assert images.shape == (10_000, 28, 28)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
