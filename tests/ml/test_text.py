"""Rotten Tomatoes text classification: loading, tokenizer, vocabulary, split and model
in-process, then the `text-classification` workload end to end through the real CLI
in secure mode with `--kek` keys: encrypted input and model. (Keys from a key broker:
test_lenet.py; every workload reads and writes through the same job key store.)"""

from __future__ import annotations

import bz2
import io
import os
import pickle
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import DATASETS, FAST_KDF, PASSPHRASE
from tests.ml.conftest import MLKeys, error_lines, launch, output, run_driver, side_by_side
from trustedml import (
    ConfigError,
    IntegrityError,
    KeyRing,
    LocalKeyStore,
    Secret,
    encrypt_file,
    init_key_directory,
    read_encrypted_bytes,
)
from trustedml.hazmat.framing import MAGIC
from trustedml.ml._io import save_model
from trustedml.ml._lenet import saved_path
from trustedml.ml._text import (
    BagOfWords,
    TextTrainConfig,
    _serialize,
    bags,
    build_vocab,
    encode,
    evaluate_text_model,
    load_reviews,
    load_text_model,
    parse_reviews,
    prepare_reviews,
    split_stratified,
    tokenize,
)
from trustedml.ml.workloads import text_classification
from trustedml.runtime import ENV_KEYRING

REVIEWS = DATASETS / "rotten_tomatoes.csv.bz2"

CSV = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A long summary,\nover two lines.",m1,True\n'
    "fresh,A delight from start to finish.,m1,True\n"
    'rotten,"Dull, and it isn\'t funny.",m2,False\n'
    "fresh,Funny and smart,m2,False\n"
)


def test_tokenize() -> None:
    assert tokenize("It's NOT bad -- really!  Café_2000s, isn't it?") == [
        "it's", "not", "bad", "really", "café", "2000s", "isn't", "it",
    ]  # fmt: skip
    assert tokenize("") == []


def test_build_vocab_top_n_by_frequency_ties_alphabetical() -> None:
    docs = [["b", "a", "c"], ["c", "b"], ["c", "d"]]
    assert build_vocab(docs, 10) == ["c", "b", "a", "d"]
    assert build_vocab(docs, 2) == ["c", "b"]
    assert encode([["a", "zzz", "c"], []], ["c", "a"]) == [[1, 0], []]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "bz2"])
def test_parse_reviews_drops_plot_rows(compress: bool) -> None:
    data = CSV.encode()
    texts, labels = parse_reviews(bz2.compress(data) if compress else data, "r.csv")
    assert texts == ["A delight from start to finish.", "Dull, and it isn't funny.",
                     "Funny and smart"]  # fmt: skip
    assert labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"category,body\nfresh,x\n", "expected a CSV header with columns category and text"),
        (b"", "got no header"),
        (b"category,text\nplot,x\n", "no rotten or fresh reviews"),
        (b"category,text\nfresh,a\nspoiled,b\n", "line 3: category 'spoiled'"),
        (b"category,text\nfresh,\xff\n", "not UTF-8"),
        (b"BZh9garbage", "corrupt bzip2"),
    ],
)
def test_parse_reviews_errors(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_reviews(data, "reviews.csv")
    assert str(info.value).startswith("reviews.csv")


def test_split_is_stratified_and_seeded() -> None:
    labels = np.array([1] * 70 + [0] * 30, dtype=np.int64)
    train, test = split_stratified(labels, 0.2, np.random.default_rng(42))
    assert len(test) == 20
    assert (labels[test] == 1).sum() == 14
    assert sorted([*train, *test]) == list(range(100))
    again, _ = split_stratified(labels, 0.2, np.random.default_rng(42))
    other, _ = split_stratified(labels, 0.2, np.random.default_rng(7))
    assert again.tolist() == train.tolist() != other.tolist()


def test_bag_of_words_handles_empty_bags() -> None:
    model = BagOfWords(vocab_size=5, embed_dim=3)
    tokens, offsets = bags([[1, 2], [], [4]], [0, 1, 2])
    assert offsets.tolist() == [0, 2, 2]
    assert model(tokens, offsets).shape == (3, 2)


@pytest.fixture
def job_keys(monkeypatch: pytest.MonkeyPatch) -> KeyRing:
    ring = KeyRing({"data": os.urandom(32), "models": os.urandom(32)})
    monkeypatch.setenv(ENV_KEYRING, ring.export().reveal_text())
    return ring


def synthetic_reviews(path: Path, count: int = 60) -> Path:
    rows = ["category,text"] + [
        f"fresh,great fun film {i}" if i % 3 else f"rotten,dull boring film {i}"
        for i in range(count)
    ]
    path.write_bytes(bz2.compress("\n".join(rows).encode()))
    return path


def test_encrypted_reviews_and_model_round_trip(
    tmp_path: Path, job_keys: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = synthetic_reviews(tmp_path / "reviews.csv.bz2")
    encrypted = tmp_path / "reviews.csv.bz2.tml"
    encrypt_file(plain, encrypted, key_id="data", keystore=job_keys)
    texts, labels = load_reviews(encrypted)
    assert (texts, labels.tolist()) == (load_reviews(plain)[0], load_reviews(plain)[1].tolist())

    config = TextTrainConfig(file_path=str(encrypted), limit=50, embed_dim=4)
    reviews = prepare_reviews(encrypted, config.limit, config.seed)
    assert len(reviews.texts) == 50
    assert len(reviews.test) == 10
    vocab = build_vocab((tokenize(reviews.texts[i]) for i in reviews.train), 100)
    torch.manual_seed(0)
    model = BagOfWords(len(vocab), config.embed_dim)
    path = save_model(_serialize(model, vocab, config), tmp_path / "text.pt", "models")
    assert path.read_bytes().startswith(MAGIC)

    loaded, loaded_vocab, split = load_text_model(path)
    assert loaded_vocab == vocab
    assert split == {"seed": 42, "limit": 50, "test_fraction": 0.2}
    ids = encode([tokenize(reviews.texts[i]) for i in reviews.test], vocab)
    with torch.no_grad():
        logits = model(*bags(ids, range(len(ids))))
        torch.testing.assert_close(loaded(*bags(ids, range(len(ids)))), logits)
        predicted = logits.argmax(1).numpy()
    expected = int((predicted == reviews.labels[reviews.test]).sum())
    # The plaintext copy has the same reviews, hence the same held-out split.
    assert evaluate_text_model(path, plain) == (expected, 10)

    with pytest.raises(ConfigError, match="at least 10"):
        prepare_reviews(plain, limit=5)
    monkeypatch.setenv(ENV_KEYRING, KeyRing({"models": os.urandom(32)}).export().reveal_text())
    with pytest.raises(IntegrityError, match="cannot open model"):
        load_text_model(path)


def test_real_reviews() -> None:
    reviews = prepare_reviews(REVIEWS)
    assert np.bincount(reviews.labels).tolist() == [5405, 7403]  # rotten, fresh
    assert len(reviews.test) == 1081 + 1481
    assert np.bincount(reviews.labels[reviews.test]).tolist() == [1081, 1481]


@pytest.fixture(scope="module")
def other_keys(
    tmp_path_factory: pytest.TempPathFactory, session_passphrase_file: Path
) -> list[str]:
    """CLI options of a second key directory with its own KEK ``models``."""
    path = tmp_path_factory.mktemp("other-keys") / "keys"
    keys = init_key_directory(path, Secret(PASSPHRASE), kdf=FAST_KDF)
    LocalKeyStore(keys, Secret(PASSPHRASE)).create_kek("models")
    return ["--keys", str(path), "--passphrase-file", str(session_passphrase_file),
            "--kek", "models", "--no-ui"]  # fmt: skip


ACCURACY = re.compile(r"^accuracy: (0\.[0-9]{4})$", re.MULTILINE)


@pytest.mark.spark
@pytest.mark.slow
def test_text_classification_end_to_end(
    ml_keys: MLKeys, other_keys: list[str], tmp_path: Path
) -> None:
    encrypted = tmp_path / "reviews.csv.bz2.tml"
    encrypt_file(REVIEWS, encrypted, key_id="data", keystore=ml_keys.store)
    model = tmp_path / "text.pt"
    result = launch(["example", *ml_keys.submit_args(), "text-classification",
                      "--file-path", str(encrypted), "--limit", "6000", "--max-epoch", "5",
                      "--model-out", str(model)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    losses = [float(x) for x in re.findall(r"^Epoch \d: loss: ([0-9.]+)$", result.stdout, re.M)]
    assert len(losses) == 5, result.stdout
    assert losses[-1] < losses[0]
    accuracy = ACCURACY.findall(result.stdout)
    assert len(accuracy) == 1, result.stdout
    # 6,000 reviews (1,200 held out), 5 epochs: ~0.75; the majority label is 0.58.
    assert float(accuracy[0]) >= 0.70

    # The model: encrypted only; with the key, the classifier and its vocabulary.
    saved = saved_path(model)
    raw = saved.read_bytes()
    assert raw.startswith(MAGIC)
    assert b"PK\x03\x04" not in raw
    assert b"embedding" not in raw
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(raw), weights_only=True)
    plain = read_encrypted_bytes(saved, keystore=ml_keys.store)
    state = torch.load(io.BytesIO(plain), weights_only=True)
    assert state["format"].startswith("trustedml.")
    assert np.asarray(state["vocab"]).size > 100

    # --evaluate-only with the job's keys (as its driver runs it), and through the
    # real CLI with another key directory's KEK `models`.
    evaluate = ["--evaluate-only", str(saved), "--file-path", str(REVIEWS)]
    right, wrong = side_by_side(
        partial(run_driver, text_classification, evaluate, ml_keys.job_env(), tmp_path),
        partial(launch, ["example", *other_keys, "text-classification", *evaluate]),
    )
    assert right.returncode == 0, output(right)[-3000:]
    assert re.search(
        rf"^accuracy: {re.escape(accuracy[0])} \([0-9]+ of 1200\)$", right.stdout, re.M
    )
    assert wrong.returncode == 1, wrong.stdout[-3000:]
    assert "accuracy" not in wrong.stdout
    assert error_lines(wrong) == [
        f"error: cannot open model {saved}: cannot unwrap the data key with key-encryption "
        "key 'models' (wrong key, or the wrapped key was modified)"
    ]
    assert "Traceback" not in output(wrong)
