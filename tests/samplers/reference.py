"""Independent brute-force references for the sampler tests (plain Python, no sdmreid code).

Modalities are given as one code per item (``0`` is RGB) or as a ``[n, 5]`` bool array of
modality sets (column ``m`` is modality ``m``); :func:`item_sets` turns either into Python sets.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np


def item_sets(mods: np.ndarray | Sequence[int]) -> list[frozenset[int]]:
    """The modality codes each item carries."""
    arr = np.asarray(mods)
    if arr.ndim == 2:
        return [frozenset(int(m) for m in range(arr.shape[1]) if row[m]) for row in arr.tolist()]
    return [frozenset({int(m)}) for m in arr.tolist()]


def brute_coverage(
    batches: Sequence[Sequence[int]],
    labels: Sequence[int],
    mods: np.ndarray | Sequence[int],
) -> tuple[int, int]:
    """(rows, rows_without_positive) by the definition, one row at a time.

    Every modality an item carries is one SDM row: an RGB row needs a same-identity item of the
    batch carrying a non-RGB modality, a non-RGB row one carrying RGB (the item itself counts).
    """
    sets = item_sets(mods)
    rows = missing = 0
    for batch in batches:
        for i in batch:
            for m in sets[i]:
                rows += 1
                if m == 0:
                    ok = any(labels[j] == labels[i] and sets[j] - {0} for j in batch)
                else:
                    ok = any(labels[j] == labels[i] and 0 in sets[j] for j in batch)
                missing += not ok
    return rows, missing


def layout_stats(labels: np.ndarray, mods: np.ndarray, k: int) -> dict[int, dict[str, int]]:
    """Per label: n, rgb / non (items carrying RGB / a non-RGB modality), both, chunks =
    max(1, n // k), pairable (an item carrying RGB and one carrying non-RGB, maybe the same),
    all_both (every item carries both)."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: {"n": 0, "rgb": 0, "non": 0, "both": 0})
    for lab, s in zip(labels.tolist(), item_sets(mods), strict=True):
        rgb, non = 0 in s, bool(s - {0})
        out[lab]["n"] += 1
        out[lab]["rgb"] += rgb
        out[lab]["non"] += non
        out[lab]["both"] += rgb and non
    for st in out.values():
        st["chunks"] = max(1, st["n"] // k)
        st["pairable"] = int(st["rgb"] > 0 and st["non"] > 0)
        st["all_both"] = int(st["both"] == st["n"])
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
