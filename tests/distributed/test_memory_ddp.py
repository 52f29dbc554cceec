"""CrossBatchMemory.enqueue(..., gather=True) across 2 CPU processes (gloo).

Each rank enqueues batches of its own (different) sizes; after every step both ranks' memories
must be identical and equal to a reference built in the test process: per step, each rank's
selected rows concatenated in rank order, then ``deque(maxlen=N)`` + concatenation (step mode) or
the last N rows (item mode).
"""

from __future__ import annotations

import warnings
from collections import deque

import numpy as np
import pytest
import torch

from sdmreid.memory import CrossBatchMemory
from tests.distributed.launch import run_on_ranks

pytestmark = pytest.mark.ddp

WORLD = 2
DIM = 4
STEPS = 10
MAX_STEPS = 3
MAX_ITEMS = 25


def rank_batches(rank: int) -> list[dict[str, object]]:
    """The batches rank ``rank`` enqueues, reproducible in any process."""
    rng = np.random.default_rng(1000 + rank)
    out = []
    for step in range(STEPS):
        n = int(rng.integers(0, 12 + 5 * rank))
        feats = rng.standard_normal((n, DIM)).astype(np.float32)
        feats[:, 0] = 1000 * rank + 100 * step + np.arange(n)  # where each row came from
        labels = rng.integers(0, 50, size=n)
        mods = rng.integers(0, 3, size=n)
        mask = rng.random(n) < 0.6
        kind = ("rgb", "mask", "none", "nomods")[(step + rank) % 4]
        out.append({"feats": feats, "labels": labels, "mods": mods, "mask": mask, "kind": kind})
    return out


def enqueue_args(batch: dict[str, object]) -> tuple[tuple[object, ...], dict[str, object]]:
    feats = torch.from_numpy(batch["feats"])  # type: ignore[arg-type]
    labels = torch.from_numpy(batch["labels"])  # type: ignore[arg-type]
    mods = torch.from_numpy(batch["mods"])  # type: ignore[arg-type]
    mask = torch.from_numpy(batch["mask"])  # type: ignore[arg-type]
    kind = batch["kind"]
    if kind == "rgb":
        return (feats, labels), {"modalities": mods, "keep": "rgb"}
    if kind == "mask":
        return (feats, labels), {"modalities": mods, "keep": mask}
    if kind == "none":
        return (feats, labels), {"modalities": mods}
    return (feats, labels), {"keep": mask}


def reference_step_rows(step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows stored by one gathered step: each rank's selection, in rank order."""
    fs, ls, ms = [], [], []
    for rank in range(WORLD):
        b = rank_batches(rank)[step]
        mods = b["mods"]
        sel = {
            "rgb": mods == 0,
            "mask": b["mask"],
            "none": np.ones(len(mods), dtype=bool),
            "nomods": b["mask"],
        }[b["kind"]]
        fs.append(b["feats"][sel])
        ls.append(b["labels"][sel])
        ms.append(mods[sel] if b["kind"] != "nomods" else np.full(int(sel.sum()), -1))
    return np.concatenate(fs), np.concatenate(ls), np.concatenate(ms)


def _worker(rank: int) -> dict:
    step_mem = CrossBatchMemory(DIM, max_steps=MAX_STEPS)
    item_mem = CrossBatchMemory(DIM, max_items=MAX_ITEMS)
    history = []
    for batch in rank_batches(rank):
        args, kwargs = enqueue_args(batch)
        step_mem.enqueue(*args, **kwargs, gather=True)
        item_mem.enqueue(*args, **kwargs, gather=True)
        history.append([t for m in (step_mem, item_mem) for t in m.view(copy=True)])
    # A NaN in a kept row on rank 1 only: both ranks must raise (no hang), memory unchanged.
    feats = torch.zeros(2, DIM)
    if rank == 1:
        feats[0, 1] = float("nan")
    raised = False
    try:
        step_mem.enqueue(feats, [1, 2], gather=True)
    except ValueError:
        raised = True
    # A value that is finite as sent but Inf in the float16 storage, on rank 0 only: both ranks
    # test the gathered rows as stored, so both drop the same row.
    half = CrossBatchMemory(DIM, max_items=MAX_ITEMS, dtype=torch.float16, on_nonfinite="drop")
    feats = torch.full((2, DIM), float(rank))
    if rank == 0:
        feats[1, 0] = 1e5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        half.enqueue(feats, [10 * rank, 10 * rank + 1], gather=True)
    return {
        "history": history,
        "raised": raised,
        "steps_seen": step_mem.steps_seen,
        "half_labels": half.view().labels.tolist(),
    }


def test_gathered_memory_identical_on_all_ranks_and_matches_reference():
    results = run_on_ranks(_worker, WORLD)

    ref_steps: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=MAX_STEPS)
    ref_items: list[tuple[np.ndarray, int, int]] = []
    for step in range(STEPS):
        f, lab, m = reference_step_rows(step)
        ref_steps.append((f, lab, m))
        ref_items += list(zip(f, lab.tolist(), m.tolist(), strict=True))
        expect_step = [np.concatenate([e[i] for e in ref_steps]) for i in range(3)]
        last = ref_items[-MAX_ITEMS:]
        expect_item = [
            np.stack([r[0] for r in last]) if last else np.zeros((0, DIM), np.float32),
            np.array([r[1] for r in last], dtype=np.int64),
            np.array([r[2] for r in last], dtype=np.int64),
        ]
        for rank, res in enumerate(results):
            got = [t.numpy() for t in res["history"][step]]
            for k, expect in enumerate(expect_step + expect_item):
                np.testing.assert_array_equal(
                    got[k], expect, err_msg=f"rank {rank} step {step} #{k}"
                )
        for a, b in zip(results[0]["history"][step], results[1]["history"][step], strict=True):
            assert torch.equal(a, b)
    assert all(r["raised"] for r in results)
    assert all(r["half_labels"] == [0, 10, 11] for r in results)
    assert all(r["steps_seen"] == STEPS for r in results)
