"""Rotten Tomatoes sentiment: loading, tokenizer, vocabulary and an ``EmbeddingBag``
bag-of-words classifier trained data-parallel by 2 CPU processes.

As for LeNet, the processes get only paths and small parameters; locally the launcher
reads, decrypts, tokenizes and encodes the reviews once (:func:`prepare_text`) and
the forked processes share them (on a cluster each does it itself); rank 0 encrypts
the model itself; only metrics come back.
"""

from __future__ import annotations

import bz2
import csv
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from trustedml.errors import ConfigError
from trustedml.ml._configs import TextTrainConfig, TextTrainResult
from trustedml.ml._io import read_input_bytes, save_model
from trustedml.ml._lenet import (
    load_saved,
    process_group,
    report_worker_errors,
    saved_path,
    seed_everything,
)

__all__ = [
    "LABELS",
    "BagOfWords",
    "PreparedReviews",
    "Reviews",
    "TextTrainConfig",
    "TextTrainResult",
    "build_vocab",
    "evaluate_text_model",
    "load_reviews",
    "parse_reviews",
    "prepare_reviews",
    "prepare_text",
    "tokenize",
    "train_text",
]

MODEL_FORMAT = "trustedml.text-bow/1"
# Label index -> category; ``plot`` rows (film summaries, not reviews) are dropped.
LABELS = ("rotten", "fresh")
_SKIPPED = frozenset({"plot"})
_BZ2_MAGIC = b"BZh"
# Words are runs of letters/digits (any script), keeping inner apostrophes: "isn't".
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Lowercase words of ``text``, in order."""
    return _WORD.findall(text.lower())


def build_vocab(documents: Iterable[Sequence[str]], size: int) -> list[str]:
    """The ``size`` most frequent tokens, most frequent first (ties: alphabetical, so
    that every process builds the same one)."""
    counts = Counter(token for doc in documents for token in doc)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ranked[:size]]


def encode(documents: Iterable[Sequence[str]], vocab: Sequence[str]) -> list[list[int]]:
    """Token ids of each document; tokens outside ``vocab`` are dropped."""
    index = {token: i for i, token in enumerate(vocab)}
    return [[index[t] for t in doc if t in index] for doc in documents]


def parse_reviews(data: bytes, name: str) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Texts and labels (index into LABELS) of a reviews CSV with columns
    ``category`` and ``text``, bzip2-compressed or not; ``name`` is for messages."""
    if data[:3] == _BZ2_MAGIC:
        try:
            data = bz2.decompress(data)
        except (OSError, EOFError, ValueError) as exc:
            raise ConfigError(f"{name}: corrupt bzip2 data ({exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"category", "text"} - set(reader.fieldnames or ())
    if missing:
        raise ConfigError(
            f"{name}: expected a CSV header with columns category and text, "
            f"got {', '.join(reader.fieldnames or ()) or 'no header'}"
        )
    texts: list[str] = []
    labels: list[int] = []
    try:
        for row in reader:
            category = row["category"]
            if category in _SKIPPED:
                continue
            if category not in LABELS:
                raise ConfigError(
                    f"{name}, line {reader.line_num}: category {category!r}: "
                    f"expected one of {', '.join((*LABELS, *sorted(_SKIPPED)))}"
                )
            texts.append(row["text"] or "")
            labels.append(LABELS.index(category))
    except csv.Error as exc:
        raise ConfigError(f"{name}, line {reader.line_num}: malformed CSV ({exc})") from None
    if not texts:
        raise ConfigError(f"{name}: no {' or '.join(LABELS)} reviews")
    return texts, np.array(labels, dtype=np.int64)


def load_reviews(path: str | os.PathLike[str]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Texts and labels of a reviews file: plaintext, bz2, or encrypted ``.tml``."""
    # Its errors name the file already: the decrypting reader adds it.
    data = read_input_bytes(path)
    return parse_reviews(data, str(path))


@dataclass(frozen=True)
class Reviews:
    """Reviews with a held-out split: ``train``/``test`` index ``texts``/``labels``."""

    texts: list[str]
    labels: npt.NDArray[np.int64]
    train: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]


def split_stratified(
    labels: npt.NDArray[np.int64], test_fraction: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Train and test indices with each label's share ``test_fraction`` in test."""
    test: list[npt.NDArray[np.int64]] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[: round(test_fraction * len(members))])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx).astype(np.int64)
    return train_idx, test_idx


def prepare_reviews(
    path: str | os.PathLike[str],
    limit: int | None = None,
    seed: int = 42,
    test_fraction: float = 0.2,
) -> Reviews:
    """Load the reviews, keep a seeded sample of ``limit`` of them if given, and split
    them stratified 80/20 (by default), the same way for the same arguments."""
    if limit is not None and limit < 10:
        raise ConfigError(f"--limit: expected at least 10 reviews, got {limit}")
    texts, labels = load_reviews(path)
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(texts):
        keep = np.sort(rng.permutation(len(texts))[:limit])
        texts = [texts[i] for i in keep]
        labels = labels[keep]
    train, test = split_stratified(labels, test_fraction, rng)
    if not len(test) or not len(train):
        raise ConfigError(f"{path}: too few reviews ({len(texts)}) for a held-out split")
    return Reviews(texts, labels, train, test)


class BagOfWords(nn.Module):
    """Mean of word embeddings (``EmbeddingBag``), then a linear layer to the labels."""

    def __init__(self, vocab_size: int, embed_dim: int, num_labels: int = len(LABELS)) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean")
        self.fc = nn.Linear(embed_dim, num_labels)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.embedding(tokens, offsets))
        return logits


def bags(ids: Sequence[Sequence[int]], rows: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``EmbeddingBag`` input (flat token ids, start offsets) of documents ``rows``."""
    flat: list[int] = []
    offsets: list[int] = []
    for row in rows:
        offsets.append(len(flat))
        flat.extend(ids[row])
    return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def _count_correct(
    model: nn.Module,
    ids: Sequence[Sequence[int]],
    labels: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
) -> tuple[int, int]:
    model.eval()
    correct = 0
    with torch.no_grad():
        for chunk in np.array_split(rows, max(1, len(rows) // 1000)):
            tokens, offsets = bags(ids, chunk)
            predicted = model(tokens, offsets).argmax(dim=1).numpy()
            correct += int((predicted == labels[chunk]).sum())
    return correct, len(rows)


def _serialize(model: BagOfWords, vocab: list[str], config: TextTrainConfig) -> bytes:
    buf = io.BytesIO()
    torch.save(
        {
            "format": MODEL_FORMAT,
            "vocab": vocab,
            "embed_dim": config.embed_dim,
            "state_dict": model.state_dict(),
            # How the held-out reviews were chosen, to evaluate on the same ones.
            "split": {
                "seed": config.seed,
                "limit": config.limit if config.limit is not None else -1,
                "test_fraction": config.test_fraction,
            },
        },
        buf,
    )
    return buf.getvalue()


@dataclass(frozen=True)
class PreparedReviews:
    """The reviews as token ids over the training vocabulary: made once, by the
    launcher of the training processes before it forks them (they share it)."""

    reviews: Reviews
    vocab: list[str]
    ids: list[list[int]]


def prepare_text(config: TextTrainConfig) -> PreparedReviews:
    """Read (decrypt), split, tokenize and encode the reviews ``config`` names."""
    reviews = prepare_reviews(config.file_path, config.limit, config.seed, config.test_fraction)
    tokens = [tokenize(t) for t in reviews.texts]
    # From the training split only, so that nothing is learnt from held-out text.
    vocab = build_vocab((tokens[i] for i in reviews.train), config.vocab_size)
    return PreparedReviews(reviews, vocab, encode(tokens, vocab))


def _fit(
    config: TextTrainConfig, rank: int, world: int, prepared: PreparedReviews
) -> tuple[BagOfWords, list[str], list[float], tuple[int, int]]:
    # DDP lives only in this frame, so that it is gone before the group is destroyed.
    seed_everything(config.seed)
    reviews, vocab, ids = prepared.reviews, prepared.vocab, prepared.ids
    labels = reviews.labels

    model = BagOfWords(len(vocab), config.embed_dim)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(
        ddp.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    train_rows = torch.from_numpy(reviews.train)
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        TensorDataset(train_rows), num_replicas=world, rank=rank, seed=config.seed
    )
    per_process = config.batch_size // world
    # DistributedSampler pads every rank to the same length, hence the same steps.
    steps = config.max_epoch * -(-len(sampler) // per_process)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)

    losses: list[float] = []
    for epoch in range(config.max_epoch):
        sampler.set_epoch(epoch)
        model.train()  # the same module DDP wraps
        total = torch.zeros(2, dtype=torch.float64)  # loss sum, examples
        for batch in torch.split(torch.tensor(list(sampler)), per_process):
            rows = train_rows[batch].numpy()
            loss = F.cross_entropy(ddp(*bags(ids, rows)), torch.from_numpy(labels[rows]))
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            schedule.step()
            total += torch.tensor([loss.item() * len(rows), len(rows)], dtype=torch.float64)
        dist.all_reduce(total)
        losses.append(float(total[0] / total[1]))
        if rank == 0:
            print(f"Epoch {epoch + 1}: loss: {losses[-1]:.4f}", flush=True)

    shard = np.array_split(reviews.test, world)[rank]
    counts = torch.tensor(_count_correct(model, ids, labels, shard), dtype=torch.int64)
    dist.all_reduce(counts)
    return model, vocab, losses, (int(counts[0]), int(counts[1]))


@report_worker_errors
def train_text(config: TextTrainConfig, prepared: PreparedReviews | None = None) -> TextTrainResult:
    """Train the bag-of-words classifier in one process of a torchrun group (DDP +
    DistributedSampler) on ``prepared`` (:func:`prepare_text` of ``config``, made
    here when not given); rank 0 prints the loss per epoch, the held-out accuracy,
    and saves the encrypted model (state and vocabulary)."""
    if prepared is None:
        prepared = prepare_text(config)
    with process_group() as (rank, world):
        model, vocab, losses, (correct, count) = _fit(config, rank, world, prepared)
        if rank == 0:
            print(f"accuracy: {correct / count:.4f}", flush=True)
        model_path = None
        if config.model_out is not None:
            model_path = str(saved_path(config.model_out))
            if rank == 0:
                save_model(_serialize(model, vocab, config), config.model_out, config.model_key_id)
    # Every rank writes its result to the same file: they must be identical.
    return TextTrainResult(tuple(losses), correct, count, model_path)


def load_text_model(
    path: str | os.PathLike[str],
) -> tuple[BagOfWords, list[str], dict[str, float]]:
    """The classifier, its vocabulary and its split parameters from an encrypted
    model file (wrong key: IntegrityError)."""
    saved = load_saved(path, MODEL_FORMAT, "text classification")
    vocab: list[str] = saved["vocab"]
    model = BagOfWords(len(vocab), int(saved["embed_dim"]))
    model.load_state_dict(saved["state_dict"])
    return model, vocab, saved["split"]


def evaluate_text_model(
    model_path: str | os.PathLike[str], file_path: str | os.PathLike[str]
) -> tuple[int, int]:
    """``(correct, count)`` of an encrypted model on the held-out reviews of the split
    it was trained with."""
    model, vocab, split = load_text_model(model_path)
    limit = int(split["limit"])
    reviews = prepare_reviews(
        file_path, limit if limit > 0 else None, int(split["seed"]), float(split["test_fraction"])
    )
    ids = encode((tokenize(reviews.texts[i]) for i in reviews.test), vocab)
    return _count_correct(model, ids, reviews.labels[reviews.test], np.arange(len(ids)))
