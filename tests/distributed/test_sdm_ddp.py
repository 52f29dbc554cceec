"""Global SDM across 2 gloo ranks equals single-process SDM on the concatenated batch.

Each rank holds a different (and differently sized) slice of the queries and of the gallery, the
same memory, and a learnable ``logit_scale``. Documented scaling: the loss value equals the
single-process value on every rank; a rank's local features receive ``world_size`` × the
single-process gradient, and the average over ranks of the ``logit_scale`` gradient (what DDP
applies to a replicated parameter) equals the single-process one.
"""

from __future__ import annotations

import pytest
import torch

from sdmreid.losses import sdm_loss
from tests.distributed.launch import run_on_ranks

WORLD = 2
Q_SPLIT = (5, 3)  # query rows per rank
G_SPLIT = (4, 6)  # gallery rows per rank
D = 6


def global_batch():
    gen = torch.Generator().manual_seed(1234)
    b, n = sum(Q_SPLIT), sum(G_SPLIT)
    q = torch.randn(b, D, generator=gen, dtype=torch.float64)
    g = torch.randn(n, D, generator=gen, dtype=torch.float64)
    ql = torch.tensor([0, 1, 2, 3, 4, 5, 9, 1])  # 9: only in memory; 5: nowhere else
    gl = torch.tensor([0, 0, 1, 2, 3, 3, 4, 7, 8, 1])  # 7, 8: no query
    mf = torch.randn(3, D, generator=gen, dtype=torch.float64)
    ml = torch.tensor([9, 2, 11])
    return q, g, ql, gl, mf, ml


def _slice(x, split, rank):
    start = sum(split[:rank])
    return x[start : start + split[rank]]


def _worker(rank: int) -> dict:
    q, g, ql, gl, mf, ml = global_batch()
    out = {}
    for chunk in (None, 2):
        qi = _slice(q, Q_SPLIT, rank).clone().requires_grad_()
        gi = _slice(g, G_SPLIT, rank).clone().requires_grad_()
        s = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
        res = sdm_loss(
            qi,
            gi,
            _slice(ql, Q_SPLIT, rank),
            _slice(gl, G_SPLIT, rank),
            (mf, ml),
            logit_scale=s,
            chunk_size=chunk,
            gather=True,
        )
        res.loss.backward()
        out[chunk] = {
            "loss": res.loss.detach(),
            "l1": res.loss_query_to_gallery,
            "l2": res.loss_gallery_to_query,
            "rows": res.rows,
            "miss": res.rows_without_positive,
            "mass": torch.stack(
                [res.positive_mass_query_to_gallery, res.positive_mass_gallery_to_query]
            ),
            "gq": qi.grad,
            "gg": gi.grad,
            "gs": s.grad,
        }
    return out


@pytest.mark.ddp
def test_global_sdm_matches_single_process() -> None:
    per_rank = run_on_ranks(_worker, WORLD)

    q, g, ql, gl, mf, ml = global_batch()
    q.requires_grad_()
    g.requires_grad_()
    s = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    ref = sdm_loss(q, g, ql, gl, (mf, ml), logit_scale=s)
    ref.loss.backward()
    assert int(ref.rows_without_positive) == 3  # query 5; gallery 7 and 8

    for chunk in (None, 2):
        outs = [r[chunk] for r in per_rank]
        for rank, o in enumerate(outs):
            torch.testing.assert_close(o["loss"], ref.loss.detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(o["l1"], ref.loss_query_to_gallery)
            torch.testing.assert_close(o["l2"], ref.loss_gallery_to_query)
            assert int(o["rows"]) == Q_SPLIT[rank] + G_SPLIT[rank]
            torch.testing.assert_close(
                o["mass"],
                torch.stack(
                    [ref.positive_mass_query_to_gallery, ref.positive_mass_gallery_to_query]
                ),
            )
            torch.testing.assert_close(o["gq"] / WORLD, _slice(q.grad, Q_SPLIT, rank))
            torch.testing.assert_close(o["gg"] / WORLD, _slice(g.grad, G_SPLIT, rank))
        assert sum(int(o["miss"]) for o in outs) == int(ref.rows_without_positive)
        torch.testing.assert_close(sum(o["gs"] for o in outs) / WORLD, s.grad)


def test_gather_without_process_group_is_a_noop() -> None:
    q, g, ql, gl, mf, ml = global_batch()
    a = sdm_loss(q, g, ql, gl, (mf, ml), gather=True)
    b = sdm_loss(q, g, ql, gl, (mf, ml))
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
