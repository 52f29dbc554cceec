"""PairCoverageMeter.sync() across 2 CPU processes (gloo).

Each rank feeds its own counts; after ``sync()`` both ranks must report the same value, equal to a
single meter with a ``world_size``-times longer window fed the ranks' updates interleaved step by
step (and to a naive list-based reference). Syncing again must not double-count; the next update
returns the meter to its local view.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdmreid.monitoring import PairCoverageMeter
from tests.distributed.launch import run_on_ranks

pytestmark = pytest.mark.ddp

WORLD = 2
WINDOW = 4
STEPS = 11
SHORT = 3  # rank 1 stops updating after SHORT steps in the second phase


def rank_counts(rank: int, n: int = STEPS) -> list[tuple[int, int]]:
    """The (rows, rows_without_positive) rank ``rank`` feeds, reproducible in any process."""
    rng = np.random.default_rng(77 + rank)
    out = []
    for _ in range(n):
        rows = int(rng.integers(0, 40))
        out.append((rows, int(rng.integers(0, rows + 1))))
    return out


def naive(updates: list[tuple[int, int]]) -> float:
    rows = sum(r for r, _ in updates)
    return math.nan if rows == 0 else 1.0 - sum(w for _, w in updates) / rows


def _worker(rank: int) -> dict:
    meter = PairCoverageMeter(window=WINDOW)
    before_any = meter.sync().value
    synced, local, again = [], [], []
    for i, (r, w) in enumerate(rank_counts(rank)):
        # alternate ints and tensors: both kinds go through the same buffer
        if i % 2:
            meter.update(torch.tensor(r), torch.tensor(w))
        else:
            meter.update(r, w)
        local.append(meter.value)
        synced.append(meter.sync().value)
        again.append(meter.sync().value)  # a second sync must not double-count
    after_update_flag = []
    # unequal update counts: rank 1 does fewer updates
    meter2 = PairCoverageMeter(window=WINDOW)
    n2 = STEPS if rank == 0 else SHORT
    for r, w in rank_counts(rank + 10, n2):
        meter2.update(r, w)
    unequal = meter2.sync().value
    meter2.update(5, 5 if rank == 0 else 0)
    after_update_flag.append(meter2.synced)
    return {
        "before_any": before_any,
        "synced": synced,
        "local": local,
        "again": again,
        "unequal": unequal,
        "after_update_synced": after_update_flag,
    }


def test_sync_equals_single_meter_over_both_ranks() -> None:
    results = run_on_ranks(_worker, WORLD)

    counts = [rank_counts(r) for r in range(WORLD)]
    single = PairCoverageMeter(window=WORLD * WINDOW)
    interleaved: list[tuple[int, int]] = []
    for step in range(STEPS):
        for rank in range(WORLD):
            single.update(*counts[rank][step])
            interleaved.append(counts[rank][step])
        expected = naive(interleaved[-WORLD * WINDOW :])
        assert single.value == pytest.approx(expected, rel=0, abs=0, nan_ok=True)
        for rank, res in enumerate(results):
            assert res["synced"][step] == pytest.approx(expected, abs=1e-15, nan_ok=True), (
                f"rank {rank} step {step}"
            )
            assert res["again"][step] == res["synced"][step] or (
                math.isnan(res["again"][step]) and math.isnan(res["synced"][step])
            )
            local = naive(counts[rank][: step + 1][-WINDOW:])
            assert res["local"][step] == pytest.approx(local, abs=1e-15, nan_ok=True)

    # unequal counts: the sum of each rank's own last-WINDOW updates
    c0 = rank_counts(10, STEPS)[-WINDOW:]
    c1 = rank_counts(11, SHORT)[-WINDOW:]
    for res in results:
        assert res["unequal"] == pytest.approx(naive(c0 + c1), abs=1e-15)
        assert math.isnan(res["before_any"])
        assert res["after_update_synced"] == [False]
