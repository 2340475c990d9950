"""Timed phases (TRUSTEDML_PROFILE=1) and how `python -m bench ml` reads them."""

from __future__ import annotations

import os
import time

import pytest
from bench.ml import phases

from trustedml.ml._profile import ENV_PROFILE, MARK_LINE, mark, mark_process_start


def test_marks_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ENV_PROFILE, raising=False)
    mark("quiet")
    mark_process_start("quiet-start")
    assert capfd.readouterr().err == ""
    monkeypatch.setenv(ENV_PROFILE, "1")
    before = time.time()
    mark_process_start("started")
    mark("now")
    err = capfd.readouterr().err
    found = MARK_LINE.findall(err)
    assert [(name, int(pid)) for name, _, pid in found] == [
        ("started", os.getpid()), ("now", os.getpid()),
    ]  # fmt: skip
    started, now = (float(at) for _, at, _ in found)
    # This interpreter started before the test did; clock ticks are 10 ms.
    assert started <= before + 0.02
    # Marks are printed to the millisecond (rounded).
    assert before - 0.001 <= now <= time.time() + 0.001


def test_bench_takes_the_last_process_to_reach_each_phase() -> None:
    output = "\n".join(
        [
            "trustedml-profile: driver-main 100.500 1",
            "Epoch 1: Top1Accuracy is ...",
            "trustedml-profile: rank-done 104.000 3",
            "trustedml-profile: rank-done 103.000 2",
            "not a mark trustedml-profile: x 1.0 1",
        ]
    )
    assert phases(output, 100.0, 105.25) == {"driver-main": 0.5, "rank-done": 4.0, "exit": 5.25}
