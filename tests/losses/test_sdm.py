"""Tests for sdmreid.losses.sdm against independent references written here.

* ``irra_compute_sdm``: a literal transcription of IRRA's ``compute_sdm`` (model/objectives.py),
  valid on square batches where every row has a positive.
* ``naive_sdm``: a per-row float64 loop over the documented formula, handling rectangular
  batches, memory columns and rows without a positive.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from sdmreid.losses import SDMLoss, SDMResult, sdm_loss

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------


def irra_compute_sdm(image_fetures, text_fetures, pid, logit_scale, epsilon=1e-8):
    """IRRA's compute_sdm, transcribed literally (without the optional image_id branch).

    Only deviation: ``labels`` keeps the feature dtype instead of ``.float()``, so the float64
    comparison stays float64.
    """
    batch_size = image_fetures.shape[0]
    pid = pid.reshape((batch_size, 1))
    pid_dist = pid - pid.t()
    labels = (pid_dist == 0).to(image_fetures.dtype)

    image_norm = image_fetures / image_fetures.norm(dim=1, keepdim=True)
    text_norm = text_fetures / text_fetures.norm(dim=1, keepdim=True)

    t2i_cosine_theta = text_norm @ image_norm.t()
    i2t_cosine_theta = t2i_cosine_theta.t()

    text_proj_image = logit_scale * t2i_cosine_theta
    image_proj_text = logit_scale * i2t_cosine_theta

    labels_distribute = labels / labels.sum(dim=1)

    i2t_pred = F.softmax(image_proj_text, dim=1)
    i2t_loss = i2t_pred * (
        F.log_softmax(image_proj_text, dim=1) - torch.log(labels_distribute + epsilon)
    )
    t2i_pred = F.softmax(text_proj_image, dim=1)
    t2i_loss = t2i_pred * (
        F.log_softmax(text_proj_image, dim=1) - torch.log(labels_distribute + epsilon)
    )

    loss = torch.mean(torch.sum(i2t_loss, dim=1)) + torch.mean(torch.sum(t2i_loss, dim=1))
    return loss


class Naive(NamedTuple):
    loss: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    miss1: int
    miss2: int
    mass1: float
    mass2: float


def _naive_direction(rows, row_labels, cols, col_labels, scale, eps):
    terms, masses, missing = [], [], 0
    for i in range(rows.shape[0]):
        pos = [j for j in range(cols.shape[0]) if col_labels[j] == row_labels[i]]
        if not pos:
            missing += 1
            continue
        z = scale * (cols @ rows[i])
        logp = z - torch.logsumexp(z, 0)
        p = torch.exp(logp)
        target = torch.zeros(cols.shape[0], dtype=rows.dtype)
        target[pos] = 1.0 / len(pos)
        terms.append(torch.sum(p * (logp - torch.log(target + eps))))
        masses.append(float(p[pos].sum().detach()))
    if not terms:
        return (rows.sum() + cols.sum()) * 0.0 + scale * 0.0, 0.0, missing
    return torch.stack(terms).mean(), sum(masses) / len(masses), missing


def naive_sdm(q, g, ql, gl, mem_f=None, mem_l=None, scale=50.0, eps=1e-8):
    """Per-row float64 loop: q→g over [gallery; memory], g→q over queries."""
    ql, gl = [int(x) for x in ql], [int(x) for x in gl]
    qn = q / q.norm(dim=1, keepdim=True)
    gn = g / g.norm(dim=1, keepdim=True)
    cols, cl = gn, list(gl)
    if mem_f is not None and mem_f.shape[0] > 0:
        mn = mem_f.detach() / mem_f.detach().norm(dim=1, keepdim=True)
        cols = torch.cat([gn, mn])
        cl = cl + [int(x) for x in mem_l]
    l1, m1, miss1 = _naive_direction(qn, ql, cols, cl, scale, eps)
    l2, m2, miss2 = _naive_direction(gn, gl, qn, ql, scale, eps)
    return Naive(l1 + l2, l1, l2, miss1, miss2, m1, m2)


# ----------------------------------------------------------------------------------------------
# strategies / helpers
# ----------------------------------------------------------------------------------------------


def feats(n, d, seed, dtype=F64, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype).requires_grad_(requires_grad)


@st.composite
def rect_cases(draw, max_rows=10, allow_memory=True, min_size=1, memory_sizes=None):
    """``(b, n, m, d, labels..., scale, seed)``; ``min_size`` bounds b, n and d from below and
    ``memory_sizes`` (a strategy) replaces the default 0..6 memory rows."""
    b = draw(st.integers(min_size, max_rows))
    n = draw(st.integers(min_size, max_rows))
    memory_sizes = st.integers(0, 6) if memory_sizes is None else memory_sizes
    m = draw(memory_sizes) if allow_memory else 0
    k = draw(st.integers(1, 6))
    ql = draw(st.lists(st.integers(0, k), min_size=b, max_size=b))
    gl = draw(st.lists(st.integers(0, k), min_size=n, max_size=n))
    ml = draw(st.lists(st.integers(0, k + 2), min_size=m, max_size=m))
    d = draw(st.integers(min_size, 12))
    scale = draw(st.floats(0.5, 100.0))
    seed = draw(st.integers(0, 2**16))
    return b, n, m, d, ql, gl, ml, scale, seed


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=False)


def close(a, b, rtol=1e-8, atol=1e-9):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------
# parity with IRRA
# ----------------------------------------------------------------------------------------------


@given(
    b=st.integers(1, 12),
    d=st.integers(1, 16),
    n_ids=st.integers(1, 6),
    scale=st.floats(0.5, 100.0),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_square_matches_irra_values_and_grads(b, d, n_ids, scale, seed, data):
    pids = torch.tensor(data.draw(st.lists(st.integers(0, n_ids), min_size=b, max_size=b)))
    q, g = feats(b, d, seed), feats(b, d, seed + 1)
    s = torch.tensor(scale, dtype=F64, requires_grad=True)
    ref = irra_compute_sdm(q, g, pids, s)
    res = sdm_loss(q, g, pids, logit_scale=s)
    close(res.loss, ref)
    for got, want in zip(grads(res.loss, [q, g, s]), grads(ref, [q, g, s]), strict=True):
        close(got, want)
    assert int(res.rows) == 2 * b
    assert int(res.rows_without_positive) == 0


def test_irra_default_scale_float32_close():
    q, g = feats(32, 64, 0, torch.float32), feats(32, 64, 1, torch.float32)
    pids = torch.arange(32) // 4
    ref = irra_compute_sdm(q.double(), g.double(), pids, 50.0)
    res = sdm_loss(q, g, pids)
    assert res.loss.dtype == torch.float32
    close(res.loss.double(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# rectangular + memory + masking against the naive loop
# ----------------------------------------------------------------------------------------------


def assert_matches_naive(case, **kwargs):
    """``sdm_loss(**kwargs)`` on a drawn case equals the naive loop: values, counts, masses and
    gradients (the memory features get none)."""
    b, n, m, d, ql, gl, ml, scale, seed = case
    q, g = feats(b, d, seed), feats(n, d, seed + 1)
    mf = feats(m, d, seed + 2)
    s = torch.tensor(scale, dtype=F64, requires_grad=True)
    ref = naive_sdm(q, g, ql, gl, mf, ml, s)
    res = sdm_loss(
        q,
        g,
        torch.tensor(ql),
        torch.tensor(gl),
        (mf, torch.tensor(ml)),
        logit_scale=s,
        **kwargs,
    )
    close(res.loss, ref.loss)
    close(res.loss_query_to_gallery, ref.l1.detach())
    close(res.loss_gallery_to_query, ref.l2.detach())
    counts = {
        "rows": b + n,
        "query_rows": b,
        "gallery_rows": n,
        "query_rows_without_positive": ref.miss1,
        "gallery_rows_without_positive": ref.miss2,
        "rows_without_positive": ref.miss1 + ref.miss2,
    }
    for name, want in counts.items():
        got = getattr(res, name)
        assert got.dtype == torch.int64 and got.dim() == 0, name
        assert int(got) == want, name
    assert res.finite.dtype == torch.bool and bool(res.finite)
    assert float(res.positive_mass_query_to_gallery) == pytest.approx(ref.mass1, abs=1e-9)
    assert float(res.positive_mass_gallery_to_query) == pytest.approx(ref.mass2, abs=1e-9)
    got = torch.autograd.grad(res.loss, [q, g, s])
    want = torch.autograd.grad(ref.loss, [q, g, s], allow_unused=True)
    for a, w, x in zip(got, want, [q, g, s], strict=True):
        close(a, torch.zeros_like(x) if w is None else w)
    assert mf.grad is None  # memory columns are constants


@given(rect_cases())
def test_rectangular_memory_matches_naive_loop(case):
    assert_matches_naive(case)


@given(rect_cases(max_rows=9), st.integers(1, 10))
@settings(max_examples=40)
def test_chunked_matches_naive_loop(case, chunk):
    assert_matches_naive(case, chunk_size=chunk)


@given(rect_cases(max_rows=12), st.integers(1, 13))
@settings(max_examples=40)
def test_chunked_equals_unchunked(case, chunk):
    """Every field and every gradient; chunks larger than a side, uneven last chunks."""
    b, n, m, d, ql, gl, ml, scale, seed = case
    q, g, mf = feats(b, d, seed), feats(n, d, seed + 1), feats(m, d, seed + 2, requires_grad=False)
    s = torch.tensor(scale, dtype=F64, requires_grad=True)
    args = (q, g, torch.tensor(ql), torch.tensor(gl), (mf, torch.tensor(ml)))
    full = sdm_loss(*args, logit_scale=s)
    part = sdm_loss(*args, logit_scale=s, chunk_size=chunk)
    for name in SDMResult.__dataclass_fields__:
        close(getattr(part, name), getattr(full, name), rtol=1e-10, atol=1e-10)
    for a, w in zip(grads(part.loss, [q, g, s]), grads(full.loss, [q, g, s]), strict=True):
        close(a, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 7, 24])
def test_chunked_float32_equals_unchunked(chunk):
    b, n, m, d = 24, 17, 11, 32
    q, g = feats(b, d, 0, torch.float32), feats(n, d, 1, torch.float32)
    mem = (feats(m, d, 2, torch.float32, False), torch.arange(m) % 5)
    ql, gl = torch.arange(b) % 7, torch.arange(n) % 6
    full = sdm_loss(q, g, ql, gl, mem)
    part = sdm_loss(q, g, ql, gl, mem, chunk_size=chunk)
    torch.testing.assert_close(part.loss, full.loss, rtol=1e-5, atol=1e-6)
    # float32 summation order differs between chunkings; compare at float32's scale
    for a, w in zip(grads(part.loss, [q, g]), grads(full.loss, [q, g]), strict=True):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=2e-5)


def test_rows_without_positive_some_masked():
    ql = torch.tensor([0, 0, 1, 9])
    gl = torch.tensor([0, 1, 1, 5])
    q, g = feats(4, 8, 3), feats(4, 8, 4)
    res = sdm_loss(q, g, ql, gl)
    assert int(res.rows) == 8
    assert int(res.query_rows_without_positive) == 1  # label 9
    assert int(res.gallery_rows_without_positive) == 1  # label 5
    assert res.rows_without_positive.dtype == torch.int64
    assert res.rows_without_positive.dim() == 0
    assert torch.isfinite(res.loss)
    ref = naive_sdm(q, g, ql, gl, scale=50.0)
    close(res.loss, ref.loss)


def test_masked_rows_exclusive_term_has_no_effect():
    """A row without a positive contributes nothing: relabelling it to another absent label
    changes neither the loss nor any gradient."""
    q, g = feats(5, 6, 7), feats(4, 6, 8)
    gl = torch.tensor([0, 1, 1, 2])
    a = sdm_loss(q, g, torch.tensor([0, 1, 2, 9, 0]), gl, logit_scale=30.0)
    b = sdm_loss(q, g, torch.tensor([0, 1, 2, 11, 0]), gl, logit_scale=30.0)
    close(a.loss, b.loss, rtol=0, atol=0)
    for x, y in zip(grads(a.loss, [q, g]), grads(b.loss, [q, g]), strict=True):
        close(x, y, rtol=0, atol=0)


def test_masked_only_direction_excluded_from_mean():
    # query row 2 has no positive; the q→g mean runs over the two valid rows only
    q, g = feats(3, 4, 1), feats(2, 4, 2)
    res = sdm_loss(q, g, torch.tensor([0, 1, 7]), torch.tensor([0, 1]), logit_scale=10.0)
    ref = naive_sdm(q[:2], g, [0, 1], [0, 1], scale=10.0)
    close(res.loss_query_to_gallery, ref.l1.detach())


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("memory", [None, "empty", "other"])
def test_no_valid_row_gives_zero_attached_loss(memory, chunk):
    q, g = feats(3, 5, 0), feats(4, 5, 1)
    s = torch.tensor(20.0, dtype=F64, requires_grad=True)
    mem = None
    if memory == "empty":
        mem = (torch.empty(0, 5), torch.empty(0, dtype=torch.int64))
    elif memory == "other":
        mem = (feats(2, 5, 2, requires_grad=False), torch.tensor([50, 51]))
    res = sdm_loss(
        q, g, torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5, 6]), mem,
        logit_scale=s, chunk_size=chunk,
    )  # fmt: skip
    assert res.loss.requires_grad
    assert float(res.loss.detach()) == 0.0
    assert int(res.rows_without_positive) == 7
    res.loss.backward()
    for x in (q, g, s):
        assert x.grad is not None
        assert torch.count_nonzero(x.grad) == 0
    assert float(res.positive_mass_query_to_gallery) == 0.0


def test_one_direction_without_valid_rows_contributes_zero():
    # every query finds a positive in memory, no gallery row finds a positive query
    q, g = feats(2, 4, 0), feats(2, 4, 1)
    mem = (feats(2, 4, 2, requires_grad=False), torch.tensor([0, 1]))
    res = sdm_loss(q, g, torch.tensor([0, 1]), torch.tensor([5, 6]), mem)
    assert float(res.loss_gallery_to_query) == 0.0
    assert int(res.gallery_rows_without_positive) == 2
    ref = naive_sdm(q, g, [0, 1], [5, 6], mem[0], mem[1])
    close(res.loss, ref.loss)
    close(grads(res.loss, [q])[0], grads(ref.loss, [q])[0])


# ----------------------------------------------------------------------------------------------
# numerics, dtypes, autograd
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_float32_result(dtype):
    q32, g32 = feats(16, 32, 0, torch.float32, False), feats(12, 32, 1, torch.float32, False)
    ql, gl = torch.arange(16) % 5, torch.arange(12) % 4
    q = q32.to(dtype).requires_grad_()
    g = g32.to(dtype).requires_grad_()
    res = sdm_loss(q, g, ql, gl)
    assert res.loss.dtype == torch.float32
    # same as float32 on the rounded inputs ...
    ref_q = q.detach().float().requires_grad_()
    ref_g = g.detach().float().requires_grad_()
    ref = sdm_loss(ref_q, ref_g, ql, gl)
    torch.testing.assert_close(res.loss, ref.loss, rtol=1e-6, atol=1e-6)
    # ... and close to the float64 reference on the original values
    want = naive_sdm(q32.double(), g32.double(), ql, gl).loss
    torch.testing.assert_close(res.loss.double(), want, rtol=2e-2, atol=2e-2)
    gq, gg = grads(res.loss, [q, g])
    assert gq.dtype == dtype
    assert gg.dtype == dtype
    assert torch.isfinite(gq.float()).all()
    wq, wg = grads(ref.loss, [ref_q, ref_g])
    torch.testing.assert_close(gq.float(), wq.to(dtype).float(), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(gg.float(), wg.to(dtype).float(), rtol=1e-2, atol=1e-3)


def test_autocast_cpu_computes_in_float32():
    q, g = feats(8, 16, 0, torch.float32), feats(8, 16, 1, torch.float32)
    pids = torch.arange(8) // 2
    plain = sdm_loss(q, g, pids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sdm_loss(q, g, pids)
        chunked = sdm_loss(q, g, pids, chunk_size=3)
    assert auto.loss.dtype == torch.float32
    torch.testing.assert_close(auto.loss, plain.loss)
    torch.testing.assert_close(chunked.loss, plain.loss)


@pytest.mark.parametrize("scale", [100.0, 200.0])
def test_stable_for_large_scale_and_identical_embeddings(scale):
    # identical embeddings: every softmax is uniform
    x = torch.ones(6, 8, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 3])
    res = sdm_loss(x, x, pids, logit_scale=scale)
    ref = naive_sdm(x.detach().double(), x.detach().double(), pids, pids, scale=scale)
    torch.testing.assert_close(res.loss.double(), ref.loss, rtol=1e-5, atol=1e-5)
    res.loss.backward()
    assert torch.isfinite(x.grad).all()
    # near-identical, nearly orthogonal and opposite embeddings at float32
    q = feats(8, 4, 0, torch.float32, False)
    q = torch.cat([q, q + 1e-4, -q]).requires_grad_()
    lab = torch.arange(24) % 8
    res = sdm_loss(q, q.flip(0), lab, lab.flip(0), logit_scale=scale)
    ref = naive_sdm(q.detach().double(), q.detach().flip(0).double(), lab, lab.flip(0), scale=scale)
    torch.testing.assert_close(res.loss.double(), ref.loss, rtol=1e-4, atol=1e-4)
    (gq,) = grads(res.loss, [q])
    assert torch.isfinite(gq).all()


def test_zero_feature_row_is_handled_like_normalize():
    """An all-zero row has cosine 0 with everything (F.normalize's clamp), not NaN."""
    q = torch.cat([torch.zeros(1, 4, dtype=F64), feats(3, 4, 0, requires_grad=False)])
    q.requires_grad_()
    g = feats(4, 4, 1)
    pids = torch.tensor([0, 0, 1, 1])
    res = sdm_loss(q, g, pids)
    assert torch.isfinite(res.loss)
    qn, gn = F.normalize(q, dim=1), F.normalize(g, dim=1)  # the per-row loop on these rows
    ids = pids.tolist()
    ref = _naive_direction(qn, ids, gn, ids, 50.0, 1e-8)[0]
    ref = ref + _naive_direction(gn, ids, qn, ids, 50.0, 1e-8)[0]
    close(res.loss, ref)
    assert torch.isfinite(grads(res.loss, [q])[0]).all()


@pytest.mark.parametrize("chunk", [None, 2])
def test_gradcheck_and_gradgradcheck_float64(chunk):
    """First and second derivatives (autograd all the way down), with a tensor scale,
    memory, rows without a positive and, chunked, recomputation in backward."""
    q, g = feats(5, 4, 0), feats(4, 4, 1)
    mem = (feats(3, 4, 2, requires_grad=False), torch.tensor([1, 2, 8]))
    ql, gl = torch.tensor([0, 1, 1, 2, 7]), torch.tensor([0, 1, 3, 2])
    s = torch.tensor(7.0, dtype=F64, requires_grad=True)

    def fn(a, b, sc):
        return sdm_loss(a, b, ql, gl, mem, logit_scale=sc, chunk_size=chunk).loss

    assert torch.autograd.gradcheck(fn, (q, g, s))
    assert torch.autograd.gradgradcheck(fn, (q, g, s))


def test_no_grad_and_partial_requires_grad():
    q, g = feats(4, 3, 0), feats(4, 3, 1, requires_grad=False)
    pids = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        a = sdm_loss(q, g, pids).loss
        a_chunked = sdm_loss(q, g, pids, chunk_size=3).loss
    assert not a.requires_grad
    assert not a_chunked.requires_grad
    b = sdm_loss(q, g, pids).loss
    close(a, b.detach())
    close(a_chunked, b.detach())
    b.backward()
    assert q.grad is not None
    assert g.grad is None


def test_loss_weighting_scales_gradient():
    q, g = feats(4, 3, 0), feats(4, 3, 1)
    pids = torch.tensor([0, 0, 1, 2])
    (g1,) = grads(sdm_loss(q, g, pids).loss, [q])
    (g2,) = grads(0.25 * sdm_loss(q, g, pids).loss + 1.0, [q])
    close(g2, 0.25 * g1)


@pytest.mark.parametrize("chunk", [None, 3])
def test_backward_twice_through_a_retained_graph(chunk):
    """Each backward through a retained graph (chunks are recomputed each time) accumulates
    exactly the reference gradient times its upstream weight."""
    b, n, m, d = 7, 6, 5, 4
    q, g, mf = feats(b, d, 1), feats(n, d, 2), feats(m, d, 3, requires_grad=False)
    ql, gl, ml = [0, 0, 1, 2, 3, 3, 1], [0, 1, 1, 2, 4, 3], [0, 2, 5, 5, 1]
    s = torch.tensor(20.0, dtype=F64, requires_grad=True)
    ref = naive_sdm(q, g, ql, gl, mf, ml, s).loss
    want = torch.autograd.grad(0.3 * ref, [q, g, s])
    args = (q, g, torch.tensor(ql), torch.tensor(gl), (mf, torch.tensor(ml)))
    res = sdm_loss(*args, logit_scale=s, chunk_size=chunk)
    (0.3 * res.loss).backward(retain_graph=True)
    for x, w in zip((q, g, s), want, strict=True):
        close(x.grad, w)
    (0.3 * res.loss).backward(retain_graph=True)
    (0.5 * res.loss).backward()
    for x, w in zip((q, g, s), want, strict=True):
        close(x.grad, (2 + 0.5 / 0.3) * w)
    with pytest.raises(RuntimeError, match=r"second time|freed"):
        res.loss.backward()  # graph freed: PyTorch's own error


# ----------------------------------------------------------------------------------------------
# finiteness policy and host reads
# ----------------------------------------------------------------------------------------------


class HostReads(TorchDispatchMode):
    """Counts operations that copy a device value to the host (``.item()``, ``bool(t)``, ...)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("where", ["query", "gallery", "memory", "none"])
def test_ignore_reads_nothing_and_reports_finite(where, chunk):
    q, g = feats(4, 6, 0), feats(3, 6, 1)
    mf = feats(5, 6, 2, requires_grad=False)
    with torch.no_grad():
        {"query": q, "gallery": g, "memory": mf, "none": torch.zeros(3, 3)}[where][1, 2] = math.nan
    ql, gl, ml = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 3]), torch.tensor([0, 4, 4, 1, 2])
    with HostReads() as mode:
        res = sdm_loss(q, g, ql, gl, (mf, ml), chunk_size=chunk, on_nonfinite="ignore")
        res.loss.backward()
    assert mode.reads == 0
    assert res.finite.dtype == torch.bool and res.finite.dim() == 0
    assert bool(res.finite) is (where == "none")
    if where == "none":
        close(res.loss, naive_sdm(q, g, ql, gl, mf, ml).loss)


def test_raise_reads_the_device_once():
    q, g = feats(4, 6, 0), feats(3, 6, 1)
    with HostReads() as mode:
        sdm_loss(q, g, torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 3]))
    assert mode.reads == 1


def test_cpu_tensor_scale_is_checked_under_ignore_too():
    """Reading a CPU tensor costs no synchronisation, so its value is always checked."""
    q, g = feats(4, 6, 0), feats(4, 6, 1)
    s = torch.tensor(math.inf, dtype=F64)
    with pytest.raises(ValueError, match="logit_scale must be finite and > 0"):
        sdm_loss(q, g, torch.tensor([0, 0, 1, 1]), logit_scale=s, on_nonfinite="ignore")


def test_scalars_for_logging():
    q, g = feats(4, 3, 0), feats(4, 3, 1)
    res = sdm_loss(q, g, torch.tensor([0, 0, 1, 9]), torch.tensor([0, 1, 1, 2]))
    sc = res.scalars()
    assert sc["rows"] == 8.0
    assert sc["rows_without_positive"] == 2.0
    assert sc["finite"] == 1.0
    assert set(sc) == set(SDMResult.__dataclass_fields__)
    assert math.isclose(sc["loss"], sc["loss_query_to_gallery"] + sc["loss_gallery_to_query"])
    with pytest.raises(AttributeError):
        res.rows = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------
# memory forms
# ----------------------------------------------------------------------------------------------


class MemoryView(NamedTuple):
    features: torch.Tensor
    labels: torch.Tensor
    modalities: torch.Tensor


def test_memory_forms_agree():
    q, g = feats(4, 6, 0), feats(3, 6, 1)
    mf, ml = feats(5, 6, 2, requires_grad=False), torch.tensor([0, 4, 4, 1, 2])
    ql, gl = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 3])
    base = sdm_loss(q, g, ql, gl, (mf, ml)).loss
    for mem in ([mf, ml], MemoryView(mf, ml, torch.zeros(5)), (mf, ml.tolist())):
        close(sdm_loss(q, g, ql, gl, mem).loss, base, rtol=0, atol=0)
    ref = naive_sdm(q, g, ql, gl, mf, ml)
    close(base, ref.loss)


def test_memory_is_detached():
    q, g = feats(4, 6, 0), feats(3, 6, 1)
    mf = feats(5, 6, 2)  # requires grad: must still be treated as constant
    res = sdm_loss(q, g, torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 3]), (mf, torch.arange(5)))
    res.loss.backward()
    assert mf.grad is None


@pytest.mark.parametrize(
    "mem",
    [
        (torch.empty(0, 6, device="meta"), torch.empty(0, dtype=torch.int64, device="meta")),
        (torch.empty(0, 6, dtype=torch.float16), torch.empty(0, dtype=torch.int32)),
        (torch.empty(0), torch.empty(0)),
        MemoryView(torch.empty(0, 6), torch.empty(0, dtype=torch.int64), torch.empty(0)),
    ],
)
def test_empty_memory_anywhere_is_ignored(mem):
    q, g = feats(4, 6, 0), feats(3, 6, 1)
    ql, gl = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 3])
    close(sdm_loss(q, g, ql, gl, mem).loss, sdm_loss(q, g, ql, gl).loss, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# module
# ----------------------------------------------------------------------------------------------


def test_module_forward_detailed_and_scale_forms():
    q, g = feats(6, 5, 0), feats(6, 5, 1)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    crit = SDMLoss(logit_scale=20.0)
    loss = crit(q, g, pids)
    close(loss, sdm_loss(q, g, pids, logit_scale=20.0).loss)
    res = crit.detailed(q, g, pids)
    assert isinstance(res, SDMResult)
    close(res.loss, loss)
    close(crit(q, g, pids, logit_scale=5.0), sdm_loss(q, g, pids, logit_scale=5.0).loss)
    assert "logit_scale=20" in repr(crit)
    assert "on_nonfinite='raise'" in repr(crit)

    learn = SDMLoss(logit_scale=torch.nn.Parameter(torch.tensor(20.0, dtype=F64)))
    assert [n for n, _ in learn.named_parameters()] == ["logit_scale"]
    learn(q, g, pids).backward()
    assert learn.logit_scale.grad is not None
    assert float(learn.logit_scale.grad) != 0.0

    buf = SDMLoss(logit_scale=torch.tensor(20.0))
    assert "logit_scale" in buf.state_dict()
    close(buf(q, g, pids), loss)

    nan = torch.full((6, 5), math.nan, dtype=F64)
    assert not bool(SDMLoss(on_nonfinite="ignore").detailed(nan, g, pids).finite)
    with pytest.raises(ValueError, match="query contains NaN"):
        SDMLoss()(nan, g, pids)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

Q = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
G = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
L = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"query": torch.randn(4)}, ValueError, "query must be 2-D"),
        ({"gallery": torch.randn(4, 3, 1)}, ValueError, "gallery must be 2-D"),
        ({"gallery": torch.randn(4, 5)}, ValueError, "gallery has feature dimension 5"),
        ({"query": torch.randn(0, 3), "query_labels": L[:0]}, ValueError, "query must have at"),
        ({"gallery": torch.randn(0, 3), "gallery_labels": L[:0]}, ValueError, "gallery must"),
        ({"gallery": torch.randn(4, 3, device="meta")}, ValueError, "gallery is on meta"),
        ({"query_labels": L[:3]}, ValueError, "query_labels has 3 labels"),
        ({"gallery_labels": L[:2]}, ValueError, "gallery_labels has 2 labels"),
        ({"query_labels": L.float()}, ValueError, "query_labels must hold integer"),
        ({"gallery_labels": L.bool()}, ValueError, "gallery_labels must hold integer"),
        ({"query_labels": L[None]}, ValueError, "query_labels must be 1-D"),
        ({"query_labels": "abcd"}, TypeError, "query_labels must be a 1-D integer"),
        ({"gallery": torch.randn(5, 3)}, ValueError, "gallery_labels=None"),
        ({"query": torch.full((4, 3), float("nan"))}, ValueError, "query contains NaN"),
        ({"gallery": torch.full((4, 3), float("inf"))}, ValueError, "gallery contains NaN"),
        ({"query": L[:, None].expand(4, 3)}, ValueError, "query must be a floating"),
        ({"query": [[1.0]]}, TypeError, "query must be a torch.Tensor"),
        ({"memory": (torch.randn(2, 4), L[:2])}, ValueError, "memory features has feature"),
        ({"memory": (torch.randn(2, 3), L[:1])}, ValueError, "memory labels has 1 labels"),
        ({"memory": (torch.full((2, 3), float("nan")), L[:2])}, ValueError, "memory features"),
        ({"memory": torch.randn(2, 3)}, TypeError, "memory must be None"),
        ({"memory": (torch.randn(2, 3),)}, TypeError, "memory must be None"),
        ({"memory": {"features": Q, "labels": L}}, TypeError, "memory must be None"),
        ({"memory": ([1.0], L[:1])}, TypeError, "memory features must be"),
        ({"logit_scale": -1.0}, ValueError, "logit_scale must be finite and > 0"),
        ({"logit_scale": float("inf")}, ValueError, "logit_scale"),
        ({"logit_scale": torch.tensor(0.0)}, ValueError, "logit_scale must be finite and > 0"),
        ({"logit_scale": torch.tensor(math.nan)}, ValueError, "logit_scale must be finite"),
        ({"logit_scale": torch.ones(2)}, ValueError, "logit_scale must be a float or a 0-dim"),
        ({"logit_scale": torch.tensor(50)}, ValueError, "logit_scale tensor must be floating"),
        ({"logit_scale": "50"}, TypeError, "logit_scale"),
        ({"epsilon": 0.0}, ValueError, r"epsilon must be in \(0, 1\)"),
        ({"epsilon": "1e-8"}, TypeError, "epsilon must be a float"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be None or an int >= 1"),
        ({"chunk_size": 2.0}, ValueError, "chunk_size"),
        ({"on_nonfinite": "drop"}, ValueError, "on_nonfinite must be 'raise' or 'ignore'"),
        ({"compiled": "max-autotune"}, ValueError, "compiled must be a bool or one of"),
        ({"compiled": 1.0}, TypeError, "compiled must be a bool or a compile mode"),
    ],
)
def test_bad_input_raises_naming_argument(kwargs, exc, match):
    args = {"query": Q, "gallery": G, "query_labels": L, "gallery_labels": None, "memory": None}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sdm_loss(**args)


def test_module_rejects_bad_config():
    with pytest.raises(ValueError, match="logit_scale"):
        SDMLoss(logit_scale=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        SDMLoss(epsilon=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        SDMLoss(chunk_size=0)
    with pytest.raises(ValueError, match="on_nonfinite"):
        SDMLoss(on_nonfinite="warn")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [None, 5])
def test_cuda_matches_float64_reference(dtype: torch.dtype, chunk: int | None) -> None:
    """On CUDA (any input dtype, chunked or not) value and grads match the float64 CPU loop."""
    gen = torch.Generator().manual_seed(7)
    q64 = torch.randn(12, 16, generator=gen, dtype=torch.float64)
    g64 = torch.randn(10, 16, generator=gen, dtype=torch.float64)
    m64 = torch.randn(6, 16, generator=gen, dtype=torch.float64)
    ql = torch.randint(0, 5, (12,), generator=gen)
    gl = torch.randint(0, 5, (10,), generator=gen)
    ml = torch.randint(0, 7, (6,), generator=gen)
    q_ref, g_ref = q64.clone().requires_grad_(), g64.clone().requires_grad_()
    ref = naive_sdm(q_ref, g_ref, ql, gl, m64, ml, scale=30.0).loss
    ref.backward()

    dev = torch.device("cuda")
    q = q64.to(dev, dtype).requires_grad_()
    g = g64.to(dev, dtype).requires_grad_()
    res = sdm_loss(
        q, g, ql.to(dev), gl.to(dev), (m64.to(dev, dtype), ml.to(dev)),
        logit_scale=30.0, chunk_size=chunk,
    )  # fmt: skip
    res.loss.backward()
    assert res.loss.dtype == torch.float32
    assert res.loss.device.type == "cuda"
    assert res.rows.device.type == "cuda"
    tol = 1e-4 if dtype == torch.float32 else 0.1  # the inputs themselves are rounded
    torch.testing.assert_close(res.loss.double().cpu(), ref.detach(), rtol=tol, atol=tol)
    assert q.grad is not None
    assert g.grad is not None
    torch.testing.assert_close(q.grad.double().cpu(), q_ref.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(g.grad.double().cpu(), g_ref.grad, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [None, 5])
def test_cuda_ignore_does_not_synchronise(chunk: int | None) -> None:
    """``on_nonfinite="ignore"`` with a CUDA tensor scale: no synchronising call, forward or
    backward; a NaN shows up in ``finite``."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(12, 16, device=dev, generator=gen, requires_grad=True)
    g = torch.randn(10, 16, device=dev, generator=gen, requires_grad=True)
    mem = (torch.randn(6, 16, device=dev, generator=gen), torch.arange(6, device=dev) % 5)
    ql, gl = torch.arange(12, device=dev) % 5, torch.arange(10, device=dev) % 5
    s = torch.tensor(30.0, device=dev, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = sdm_loss(q, g, ql, gl, mem, logit_scale=s, chunk_size=chunk, on_nonfinite="ignore")
        res.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(res.finite)
    inf_scale, negative_scale = torch.tensor(math.inf, device=dev), torch.tensor(-1.0, device=dev)
    res = sdm_loss(q, g, ql, gl, mem, logit_scale=inf_scale, on_nonfinite="ignore")
    assert not bool(res.finite)
    with pytest.raises(ValueError, match="logit_scale must be finite and > 0"):
        sdm_loss(q, g, ql, gl, mem, logit_scale=negative_scale)  # checked by the one read
    with torch.no_grad():
        q[0, 0] = math.nan
    assert not bool(sdm_loss(q, g, ql, gl, mem, on_nonfinite="ignore").finite)


# ----------------------------------------------------------------------------------------------
# reliability: refused input changes nothing and says what was expected
# ----------------------------------------------------------------------------------------------

#: Scales a loaded ``logit_scale`` must refuse (as float64 tensors; 1e39 does not fit float32).
BAD_SCALES = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, -50.0, 1e39]


@pytest.mark.parametrize("form", ["buffer", "parameter"])
@given(bad=st.sampled_from(BAD_SCALES) | st.floats(max_value=0.0, allow_nan=False))
@settings(max_examples=25)
def test_refused_load_state_dict_of_a_bad_tensor_scale_leaves_the_module_unchanged(form, bad):
    scale = torch.tensor(5.0)
    crit = SDMLoss(logit_scale=torch.nn.Parameter(scale) if form == "parameter" else scale)
    before = crit.state_dict()["logit_scale"].clone()
    with pytest.raises(RuntimeError, match="logit_scale"):
        crit.load_state_dict({"logit_scale": torch.tensor(bad, dtype=F64)})
    assert torch.equal(crit.state_dict()["logit_scale"], before)
    crit.load_state_dict({"logit_scale": torch.tensor(7.0)})  # a good one still loads
    assert float(crit.logit_scale.detach()) == 7.0


def test_load_state_dict_refuses_a_scale_of_another_shape_or_an_integer_dtype():
    crit = SDMLoss(logit_scale=torch.tensor(5.0))
    for bad in (torch.tensor(7), torch.ones(2)):
        with pytest.raises(RuntimeError, match="logit_scale"):
            crit.load_state_dict({"logit_scale": bad})
        assert float(crit.logit_scale) == 5.0


@pytest.mark.parametrize("scale", [1e39, torch.tensor(1e39, dtype=F64)], ids=["float", "tensor"])
def test_a_scale_beyond_the_compute_dtype_is_a_value_error(scale):
    with pytest.raises(ValueError, match=r"logit_scale .*float32"):
        sdm_loss(Q, G, L, logit_scale=scale)
    with pytest.raises(ValueError, match=r"logit_scale .*float32"):
        sdm_loss(Q, G, L, logit_scale=scale, on_nonfinite="ignore")
    # the same scale fits float64, the compute dtype of float64 features
    assert sdm_loss(Q.double(), G.double(), L, logit_scale=scale).loss.dtype == F64


@pytest.mark.parametrize("bad", ["no", "yes", 0, 1, None, 1.0])
def test_gather_refuses_non_bool_values(bad):
    with pytest.raises(TypeError, match="gather must be a bool"):
        SDMLoss(gather=bad)
    with pytest.raises(TypeError, match="gather must be a bool"):
        sdm_loss(Q, G, L, gather=bad)


@pytest.mark.parametrize("bad", [1, None, True, b"raise"])
def test_on_nonfinite_refuses_non_str_values(bad):
    with pytest.raises(TypeError, match="on_nonfinite must be"):
        SDMLoss(on_nonfinite=bad)
    with pytest.raises(TypeError, match="on_nonfinite must be"):
        sdm_loss(Q, G, L, on_nonfinite=bad)


@given(eps=st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True))
@settings(max_examples=30)
def test_every_epsilon_in_the_open_unit_interval_gives_the_reference_loss(eps):
    q, g = Q.double(), G.double()
    got = sdm_loss(q, g, L, epsilon=eps, logit_scale=10.0).loss
    close(got, naive_sdm(q, g, L, L, scale=10.0, eps=eps).loss)
    assert math.isfinite(float(sdm_loss(Q, G, L, epsilon=eps).loss))  # float32 too


@given(
    eps=st.floats(min_value=1.0)
    | st.floats(max_value=0.0)
    | st.sampled_from([1e300, math.inf, math.nan])
)
@settings(max_examples=30)
def test_epsilon_outside_the_open_unit_interval_is_refused(eps):
    with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\)"):
        sdm_loss(Q, G, L, epsilon=eps)
    with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\)"):
        SDMLoss(epsilon=eps)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query": Q.to("meta"), "gallery": G.to("meta")}, "query is on meta"),
        ({"query_labels": L.to("meta")}, "query_labels is on meta"),
        ({"gallery_labels": L.to("meta")}, "gallery_labels is on meta"),
        ({"logit_scale": torch.tensor(5.0, device="meta")}, "logit_scale is on meta"),
        ({"memory": (torch.randn(2, 3, device="meta"), L[:2])}, "memory features is on meta"),
        ({"memory": (torch.randn(2, 3), L[:2].to("meta"))}, "memory labels is on meta"),
    ],
)
def test_meta_tensors_are_refused_up_front(kwargs, match):
    args = {"query": Q, "gallery": G, "query_labels": L, **kwargs}
    with pytest.raises(ValueError, match=match):
        sdm_loss(**args)


@pytest.mark.parametrize("big", [2**70, -(2**70), 2**63, 2**64])
@pytest.mark.parametrize("where", ["query_labels", "gallery_labels", "memory labels"])
def test_python_labels_beyond_int64_are_a_value_error_naming_the_argument(big, where):
    labels = [big, 0, 1, 1]
    args = {"query": Q, "gallery": G, "query_labels": L, "gallery_labels": L}
    if where == "memory labels":
        args["memory"] = (torch.randn(4, 3), labels)
    else:
        args[where] = labels
    with pytest.raises(ValueError, match=f"{where} must fit in int64"):
        sdm_loss(**args)
