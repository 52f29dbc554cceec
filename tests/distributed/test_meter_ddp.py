"""PairCoverageMeter.compute(gather=True) across 2 CPU processes (gloo).

Each rank feeds its own counts; a gathered reading must be the same on both ranks and equal to a
naive list-based reference over both ranks' windows (one meter with a ``world_size``-times longer
window fed the ranks' updates interleaved step by step). A gathered reading changes nothing: the
local reading after it, and a second gathered reading, are unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdmreid.coverage import PairCoverageMeter
from tests.distributed.launch import run_on_ranks

pytestmark = pytest.mark.ddp

WORLD = 2
WINDOW = 4
STEPS = 11
SHORT = 3  # rank 1 makes only SHORT updates in the second phase
TARGET = 0.6


def rank_counts(seed: int, n: int = STEPS) -> list[tuple[int, int]]:
    """(rows, rows_without_positive) pairs, reproducible in any process."""
    rng = np.random.default_rng(77 + seed)
    out = []
    for _ in range(n):
        rows = int(rng.integers(0, 40))
        out.append((rows, int(rng.integers(0, rows + 1))))
    return out


def naive(updates: list[tuple[int, int]]) -> float:
    rows = sum(r for r, _ in updates)
    return math.nan if rows == 0 else 1.0 - sum(w for _, w in updates) / rows


def _worker(rank: int) -> dict[str, object]:
    meter = PairCoverageMeter(window=WINDOW, target=TARGET)
    before_any = float(meter.compute(gather=True))
    gathered, local, again, below, lines = [], [], [], [], []
    for i, (r, w) in enumerate(rank_counts(rank)):
        if i % 2:  # ints and tensors go through the same window
            meter.update(rows=torch.tensor(r), rows_without_positive=torch.tensor(w))
        else:
            meter.update(rows=r, rows_without_positive=w)
        gathered.append(float(meter.compute(gather=True)))
        local.append(float(meter.compute()))  # the gathered reading left the state alone
        again.append(float(meter.compute(gather=True)))
        below.append(meter.below_target(gather=True))
        lines.append(meter.log_line(gather=True))
    uneven = PairCoverageMeter(window=WINDOW)
    for r, w in rank_counts(rank + 10, STEPS if rank == 0 else SHORT):
        uneven.update(rows=r, rows_without_positive=w)
    return {
        "before_any": before_any,
        "gathered": gathered,
        "local": local,
        "again": again,
        "below": below,
        "lines": lines,
        "uneven": float(uneven.compute(gather=True)),
        "state_rows": meter.state_dict()["rows"],
    }


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=0, abs=1e-15)


def test_gathered_reading_equals_one_meter_over_both_ranks() -> None:
    results = run_on_ranks(_worker, WORLD)

    counts = [rank_counts(r) for r in range(WORLD)]
    interleaved: list[tuple[int, int]] = []
    for step in range(STEPS):
        interleaved += [counts[rank][step] for rank in range(WORLD)]
        expected = naive(interleaved[-WORLD * WINDOW :])
        shown = "nan" if math.isnan(expected) else f"{expected:.3f}"
        for rank, res in enumerate(results):
            where = f"rank {rank} step {step}"
            assert same(res["gathered"][step], expected), where
            assert same(res["again"][step], expected), where
            assert res["below"][step] is (expected < TARGET), where
            assert res["lines"][step] == f"[dbg] pair_coverage_mavg={shown}", where
            assert same(res["local"][step], naive(counts[rank][: step + 1][-WINDOW:])), where

    # uneven update counts: the sum of each rank's own last-WINDOW updates
    c0 = rank_counts(10, STEPS)[-WINDOW:]
    c1 = rank_counts(11, SHORT)[-WINDOW:]
    for rank, res in enumerate(results):
        assert same(res["uneven"], naive(c0 + c1))
        assert math.isnan(res["before_any"])
        assert res["state_rows"] == [r for r, _ in counts[rank][-WINDOW:]]
