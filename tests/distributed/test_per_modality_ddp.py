"""Per-modality SDM and the loss forms under ``gather=True`` across 2 gloo ranks equal the
single-process result on the concatenated batch.

Each rank holds a differently sized slice of a mixed-modality batch (one rank has no CPENCIL row,
the other no anchor row), the same memory and a learnable ``logit_scale``. Documented scaling, as
for ``sdm_loss``: values equal the single-process values on every rank; a rank's embeddings
receive ``world_size`` × the single-process gradient; the ranks' ``logit_scale`` gradients
average to the single-process one; counts are each rank's own and sum to the single-process ones.
"""

from __future__ import annotations

import pytest
import torch

from sdmreid import Modality, sdm_per_modality
from sdmreid.losses import sdm_loss
from tests.distributed.launch import run_on_ranks

WORLD = 2
SPLIT = (7, 5)
D = 6
F64 = torch.float64
SETTINGS = [
    ("per_modality", "kl", "sum"),
    ("per_modality", "ce", "mean"),
    ("pooled", "kl", "sum"),
    ("pooled", "ce", "mean"),
]
COUNTS = ["rows", "rows_without_positive", "query_rows", "query_rows_without_positive",
          "gallery_rows", "gallery_rows_without_positive"]  # fmt: skip


def global_batch():
    gen = torch.Generator().manual_seed(77)
    x = torch.randn(sum(SPLIT), D, generator=gen, dtype=F64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 9, 3])
    # rank 0: RGB, RGB, RGB, NIR, NIR, SKETCH, TEXT; rank 1: NIR, SKETCH, TEXT, TEXT, CPENCIL
    mods = torch.tensor([0, 0, 0, 1, 1, 2, 4, 1, 2, 4, 4, 3])
    mf = torch.randn(3, D, generator=gen, dtype=F64)
    ml = torch.tensor([9, 2, 11])
    return x, labels, mods, mf, ml


def _slice(t, rank):
    start = sum(SPLIT[:rank])
    return t[start : start + SPLIT[rank]]


def _summary(res, x, s):
    res.loss.backward()
    return {
        "loss": res.loss.detach(),
        "weights": res.weights,
        "entries": torch.stack([
            torch.stack([e.loss.detach(), e.loss_query_to_gallery, e.loss_gallery_to_query,
                         e.positive_mass_query_to_gallery, e.positive_mass_gallery_to_query])
            for e in res.per_modality.values()
        ]),
        "entry_counts": torch.stack([
            torch.stack([e.rows, e.rows_without_positive, e.query_rows_without_positive])
            for e in res.per_modality.values()
        ]),
        "counts": torch.stack([getattr(res, n) for n in COUNTS]),
        "finite": res.finite,
        "gx": x.grad,
        "gs": s.grad,
    }  # fmt: skip


def _worker(rank: int) -> dict:
    x, labels, mods, mf, ml = global_batch()
    out = {}
    for mode, objective, directions in SETTINGS:
        xi = _slice(x, rank).clone().requires_grad_()
        s = torch.tensor(15.0, dtype=F64, requires_grad=True)
        res = sdm_per_modality(
            xi, _slice(labels, rank), _slice(mods, rank), (mf, ml), mode=mode,
            logit_scale=s, objective=objective, directions=directions, gather=True,
        )  # fmt: skip
        out[(mode, objective, directions)] = _summary(res, xi, s)
    # sdm_loss's gathered path with the seed pipeline's form
    q, g = _slice(x, rank)[:4].clone().requires_grad_(), _slice(x, rank)[4:].clone()
    r = sdm_loss(q, g.requires_grad_(), _slice(labels, rank)[:4], _slice(labels, rank)[4:],
                 (mf, ml), objective="ce", directions="mean", gather=True)  # fmt: skip
    r.loss.backward()
    out["sdm_loss"] = {"loss": r.loss.detach(), "gq": q.grad, "gg": g.grad}
    return out


@pytest.mark.ddp
def test_gathered_per_modality_matches_single_process() -> None:
    per_rank = run_on_ranks(_worker, WORLD)
    x, labels, mods, mf, ml = global_batch()
    for key in SETTINGS:
        mode, objective, directions = key
        xx = x.clone().requires_grad_()
        s = torch.tensor(15.0, dtype=F64, requires_grad=True)
        ref = _summary(
            sdm_per_modality(xx, labels, mods, (mf, ml), mode=mode, logit_scale=s,
                             objective=objective, directions=directions),
            xx, s,
        )  # fmt: skip
        outs = [r[key] for r in per_rank]
        for rank, o in enumerate(outs):
            for name in ("loss", "weights", "entries"):
                torch.testing.assert_close(o[name], ref[name], rtol=1e-10, atol=1e-12)
            assert bool(o["finite"])
            torch.testing.assert_close(o["gx"] / WORLD, _slice(ref["gx"], rank))
        assert torch.equal(sum(o["counts"] for o in outs), ref["counts"])
        if mode == "pooled":  # entries hold query counts only, which add up over ranks
            assert torch.equal(sum(o["entry_counts"] for o in outs), ref["entry_counts"])
        torch.testing.assert_close(sum(o["gs"] for o in outs) / WORLD, ref["gs"])
    # sanity: the batch exercises absent-on-one-rank modalities and rows without a positive
    single = sdm_per_modality(x, labels, mods, (mf, ml))
    assert int(single.rows_without_positive) > 0
    assert int(single.per_modality[Modality.CPENCIL].query_rows) == 1

    q_all = torch.cat([_slice(x, r)[:4] for r in range(WORLD)]).requires_grad_()
    g_all = torch.cat([_slice(x, r)[4:] for r in range(WORLD)]).requires_grad_()
    ql = torch.cat([_slice(labels, r)[:4] for r in range(WORLD)])
    gl = torch.cat([_slice(labels, r)[4:] for r in range(WORLD)])
    want = sdm_loss(q_all, g_all, ql, gl, (mf, ml), objective="ce", directions="mean")
    want.loss.backward()
    for rank, r in enumerate(per_rank):
        o = r["sdm_loss"]
        torch.testing.assert_close(o["loss"], want.loss.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(o["gq"] / WORLD, q_all.grad[4 * rank : 4 * rank + 4])


# ----------------------------------------------------------------------------------------------
# refusals under gather: the same error on every rank, before any data is exchanged
# ----------------------------------------------------------------------------------------------

REFUSALS = {
    # case: (exception on every rank, words every rank's message holds)
    "unknown_name_on_one_rank": ("ValueError", ["rank 1", "unknown modality 'depth'"]),
    "nan_on_one_rank": ("ValueError", ["rank 0", "embeddings contains NaN"]),
    "bad_code_on_one_rank": ("ValueError", ["rank 1", "modalities holds codes [9]"]),
    "different_feature_dimension": ("ValueError", ["disagree on the feature dimension"]),
}


def _refusal_args(name: str, rank: int) -> dict:
    gen = torch.Generator().manual_seed(rank)
    d = D + 2 * rank if name == "different_feature_dimension" else D
    x = torch.randn(4, d, generator=gen)
    mods: object = torch.tensor([0, 0, 1, 2])
    if name == "unknown_name_on_one_rank" and rank == 1:
        mods = ["rgb", "rgb", "nir", "depth"]
    elif name == "nan_on_one_rank" and rank == 0:
        x[1, 1] = torch.nan
    elif name == "bad_code_on_one_rank" and rank == 1:
        mods = torch.tensor([0, 0, 1, 9])
    return {"embeddings": x, "labels": torch.tensor([0, 1, 0, 1]), "modalities": mods}


def _outcome(kwargs: dict) -> tuple[str, str]:
    try:
        sdm_per_modality(**kwargs, gather=True)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    return "returned", ""


def _refusal_worker(rank: int) -> dict:
    out = {name: _outcome(_refusal_args(name, rank)) for name in REFUSALS}
    out["valid"] = sdm_per_modality(**_refusal_args("valid", rank), gather=True).loss.detach()
    return out


@pytest.mark.ddp
def test_gathered_per_modality_refuses_on_every_rank_and_stays_in_step() -> None:
    outs = run_on_ranks(_refusal_worker, WORLD, timeout=120.0, group_timeout=30.0)
    for name, (kind, words) in REFUSALS.items():
        assert outs[0][name] == outs[1][name], name
        got_kind, message = outs[0][name]
        assert got_kind == kind, message
        assert "sdm_per_modality(gather=True)" in message
        for word in words:
            assert word in message, (name, message)
    both = [_refusal_args("valid", r) for r in range(WORLD)]
    want = sdm_per_modality(
        torch.cat([b["embeddings"] for b in both]),
        torch.cat([b["labels"] for b in both]),
        torch.cat([b["modalities"] for b in both]),
    ).loss
    for o in outs:
        torch.testing.assert_close(o["valid"], want)
