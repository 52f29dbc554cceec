"""Refused inputs under ``gather=True``, across 2 CPU processes (gloo): every rank raises.

When one rank's inputs are invalid (NaN features, a wrong label count, a non-tensor) or the ranks
disagree on the feature dimension or dtype, ``sdm_loss(gather=True)`` and
``CrossBatchMemory.enqueue(gather=True)`` must raise the *same* error, with the same message, on
every rank, before any data is exchanged: no rank may be left waiting in a collective, and no
mismatched buffers may reach the backend (which aborts the process). The group runs with a 30 s
collective timeout, so a rank left waiting fails these tests quickly instead of hanging.

Every case runs in one pair of processes, in order; a last, valid call on each component then
checks that the ranks are still in step (its result equals the single-process reference).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch

from sdmreid.losses import sdm_loss
from sdmreid.memory import CrossBatchMemory
from tests.distributed.launch import run_on_ranks

pytestmark = pytest.mark.ddp

WORLD = 2
D = 6


def _batch(rank: int, n: int = 4, d: int = D, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(100 + rank)
    q = torch.randn(n, d, generator=gen, dtype=dtype)
    g = torch.randn(n, d, generator=gen, dtype=dtype)
    return q, g, torch.arange(n) % 2, torch.arange(n) % 2


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[1, 2] = torch.nan
    return x


def sdm_case(name: str, rank: int) -> dict[str, Any]:
    """Keyword arguments of rank ``rank``'s ``sdm_loss`` call in case ``name``."""
    q, g, ql, gl = _batch(rank)
    args: dict[str, Any] = {"query": q, "gallery": g, "query_labels": ql, "gallery_labels": gl}
    if name == "nan_on_one_rank" and rank == 1:
        args["query"] = _with_nan(q)
    elif name == "nan_memory_on_one_rank" and rank == 0:
        args["memory"] = (_with_nan(torch.ones(3, D)), torch.arange(3))
    elif name == "different_feature_dimension":
        q, g, ql, gl = _batch(rank, d=D + 2 * rank)
        args.update(query=q, gallery=g)
    elif name == "different_dtype":
        q, g, ql, gl = _batch(rank, dtype=(torch.float32, torch.float64)[rank])
        args.update(query=q, gallery=g)
    elif name == "wrong_label_count_on_one_rank" and rank == 0:
        args["query_labels"] = ql[:3]
    elif name == "not_a_tensor_on_one_rank" and rank == 1:
        args["query"] = q.tolist()
    elif name == "bad_scale_on_one_rank" and rank == 1:
        args["logit_scale"] = -1.0
    return args


SDM_CASES = {
    # case: (exception raised on every rank, words every rank's message holds)
    "nan_on_one_rank": ("ValueError", ["rank 1", "query contains NaN"]),
    "nan_memory_on_one_rank": ("ValueError", ["rank 0", "memory features contains NaN"]),
    "different_feature_dimension": (
        "ValueError",
        ["disagree on the feature dimension", "rank 0: 6", "rank 1: 8"],
    ),
    "different_dtype": (
        "ValueError",
        ["disagree on the compute dtype", "torch.float32", "torch.float64"],
    ),
    "wrong_label_count_on_one_rank": ("ValueError", ["rank 0", "query_labels has 3 labels"]),
    "not_a_tensor_on_one_rank": ("TypeError", ["rank 1", "query must be a torch.Tensor"]),
    "bad_scale_on_one_rank": ("ValueError", ["rank 1", "logit_scale"]),
}


def memory_case(name: str, rank: int) -> tuple[CrossBatchMemory, dict[str, Any]]:
    """Rank ``rank``'s memory and ``enqueue`` keyword arguments in case ``name``."""
    dim, dtype = D, torch.float32
    feats = torch.randn(3 + rank, D, generator=torch.Generator().manual_seed(rank))
    labels = torch.arange(3 + rank)
    if name == "different_dimension":
        dim = D + 2 * rank
        feats = torch.randn(3, dim)
        labels = torch.arange(3)
    elif name == "different_storage_dtype":
        dtype = (torch.float16, torch.float32)[rank]
    elif name == "wrong_label_count_on_one_rank" and rank == 1:
        labels = labels[:2]
    elif name == "nan_on_one_rank" and rank == 1:
        feats = _with_nan(feats)
    mem = CrossBatchMemory(dim, max_steps=2, dtype=dtype)
    return mem, {"feats": feats, "labels": labels, "gather": True}


MEMORY_CASES = {
    "different_dimension": ("ValueError", ["disagree on the feature dimension"]),
    "different_storage_dtype": ("ValueError", ["disagree on the storage dtype"]),
    "wrong_label_count_on_one_rank": ("ValueError", ["rank 1", "labels must have shape [4]"]),
    # checked on the gathered rows (row 4 = rank 1's row 1), so every rank sees the same rows
    "nan_on_one_rank": ("ValueError", ["NaN or Inf", "first: row 4"]),
}


def _outcome(call: Callable[[], object]) -> tuple[str, str]:
    try:
        call()
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    return "returned", ""


def _worker(rank: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SDM_CASES:
        out[f"sdm/{name}"] = _outcome(partial(sdm_loss, **sdm_case(name, rank), gather=True))
    for name in MEMORY_CASES:
        mem, kwargs = memory_case(name, rank)
        out[f"memory/{name}"] = _outcome(partial(mem.enqueue, **kwargs))
        out[f"memory/{name}/rows_after"] = len(mem)

    # on_nonfinite="ignore": nothing raises, every rank's flag says a rank had NaN, and the
    # backward pass (another collective) completes on both ranks
    q, g, ql, gl = _batch(rank)
    q = (_with_nan(q) if rank == 1 else q).requires_grad_()
    res = sdm_loss(q, g, ql, gl, gather=True, on_nonfinite="ignore")
    res.loss.backward()
    out["ignore/finite"] = bool(res.finite)

    # the ranks are still in step: a valid call gives the single-process value
    q, g, ql, gl = _batch(rank)
    out["valid/loss"] = sdm_loss(q, g, ql, gl, gather=True).loss.detach()
    mem = CrossBatchMemory(D, max_steps=2)
    mem.enqueue(q, ql, gather=True)
    out["valid/memory_labels"] = mem.view().labels.clone()
    return out


@pytest.fixture(scope="module")
def outcomes() -> list[dict[str, Any]]:
    return run_on_ranks(_worker, WORLD, timeout=120.0, group_timeout=30.0)


def _check_same_error(per_rank: list[tuple[str, str]], kind: str, words: list[str]) -> None:
    assert per_rank[0] == per_rank[1], "the ranks raised different errors"
    got_kind, message = per_rank[0]
    assert got_kind == kind, message
    for word in words:
        assert word in message


@pytest.mark.parametrize("case", list(SDM_CASES))
def test_sdm_gather_raises_the_same_error_on_every_rank(outcomes, case: str) -> None:
    kind, words = SDM_CASES[case]
    _check_same_error([o[f"sdm/{case}"] for o in outcomes], kind, words)
    assert "sdm_loss(gather=True)" in outcomes[0][f"sdm/{case}"][1]


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_memory_gather_raises_the_same_error_on_every_rank_and_stores_nothing(
    outcomes, case: str
) -> None:
    kind, words = MEMORY_CASES[case]
    _check_same_error([o[f"memory/{case}"] for o in outcomes], kind, words)
    assert [o[f"memory/{case}/rows_after"] for o in outcomes] == [0, 0]


def test_sdm_gather_under_ignore_flags_a_nan_of_any_rank_on_every_rank(outcomes) -> None:
    assert [o["ignore/finite"] for o in outcomes] == [False, False]


def test_ranks_stay_in_step_after_refused_calls(outcomes) -> None:
    batches = [_batch(r) for r in range(WORLD)]
    q, g, ql, gl = (torch.cat([b[i] for b in batches]) for i in range(4))
    ref = sdm_loss(q, g, ql, gl).loss
    for o in outcomes:
        torch.testing.assert_close(o["valid/loss"], ref)
        assert o["valid/memory_labels"].tolist() == ql.tolist()
