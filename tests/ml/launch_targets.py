"""Training entry points for tests/ml/test_launch.py, imported by name in the launcher."""

from __future__ import annotations

import os
from typing import Any


def preload(tag: str) -> dict[str, Any]:
    """What the launcher makes once, before it forks the ranks."""
    return {"tag": tag, "pid": os.getpid()}


def report(tag: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Where this rank runs and what it was handed."""
    return {
        "tag": tag,
        "inputs": inputs,
        "pid": os.getpid(),
        "parent": os.getppid(),
        "rank": int(os.environ["RANK"]),
        "world": int(os.environ["WORLD_SIZE"]),
    }


def fail_on_rank(status: int, failing_rank: int) -> None:
    """Rank ``failing_rank`` exits with ``status``; the others wait for it forever."""
    import torch.distributed as dist

    from trustedml.ml._lenet import process_group

    with process_group() as (rank, _world):
        if rank == failing_rank:
            raise SystemExit(status)
        dist.barrier()  # never completes: the launcher must stop this rank
