"""Independent brute-force references for the sampler tests (plain Python, no sdmreid code)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np


def brute_coverage(
    batches: Sequence[Sequence[int]], labels: Sequence[int], mods: Sequence[int]
) -> tuple[int, int]:
    """(rows, rows_without_positive) by the definition, one row at a time."""
    rows = missing = 0
    for batch in batches:
        for i in batch:
            rows += 1
            want_rgb = mods[i] != 0
            ok = any(
                labels[j] == labels[i] and ((mods[j] == 0) if want_rgb else (mods[j] != 0))
                for j in batch
            )
            missing += not ok
    return rows, missing


def layout_stats(labels: np.ndarray, mods: np.ndarray, k: int) -> dict[int, dict[str, int]]:
    """Per label: n, n_rgb, n_non, chunks = max(1, n // k), pairable."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: {"n": 0, "rgb": 0, "non": 0})
    for lab, m in zip(labels.tolist(), mods.tolist(), strict=True):
        out[lab]["n"] += 1
        out[lab]["rgb" if m == 0 else "non"] += 1
    for st in out.values():
        st["chunks"] = max(1, st["n"] // k)
        st["pairable"] = int(st["rgb"] > 0 and st["non"] > 0)
    return dict(out)


def split_chunks(batch: Sequence[int], labels: np.ndarray) -> dict[int, list[int]]:
    """The indices of each label inside one batch."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i in batch:
        groups[int(labels[i])].append(i)
    return dict(groups)


def index_counts(streams: Sequence[Sequence[Sequence[int]]]) -> Counter[int]:
    return Counter(i for stream in streams for batch in stream for i in batch)


def oversampling_draws(labels: Sequence[int], k: int) -> int:
    """Draws with replacement one epoch needs: every identity with fewer than k samples to k."""
    return sum(max(0, k - n) for n in Counter(labels).values())
