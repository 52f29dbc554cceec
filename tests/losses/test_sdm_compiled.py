"""``sdm_loss(compiled=...)``: the same two-direction body under ``torch.compile``.

Checked against the same independent per-row float64 loop as the eager path
(``tests/losses/test_sdm.py::naive_sdm``). Sizes avoid 0/1 except in the named edge cases, so
that the dynamic-shape compilation is reused across examples (each new specialisation compiles
for a few seconds on CPU).
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
import torch._functorch.config as functorch_config
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmreid.losses import SDMLoss, sdm_loss
from tests.losses.test_sdm import F64, assert_matches_naive, close, feats, naive_sdm, rect_cases

sdm_module = importlib.import_module("sdmreid.losses.sdm")


@pytest.fixture
def fresh_compile_state(monkeypatch):
    monkeypatch.setattr(sdm_module, "_compiled", {})
    monkeypatch.setattr(sdm_module, "_compile_failed", set())


# sizes >= 2 and memory sizes 0 or >= 2: one dynamic-shape graph serves the examples
@given(rect_cases(max_rows=9, min_size=2, memory_sizes=st.sampled_from([0, 2, 3, 5])))
@settings(max_examples=25)
def test_compiled_matches_naive_loop(case):
    assert_matches_naive(case, compiled=True)


@pytest.mark.parametrize(
    "case",
    [
        (1, 4, 0, 3, [2], [0, 2, 2, 1], [], 10.0, 1),  # one query
        (4, 1, 1, 3, [0, 1, 0, 3], [0], [3], 20.0, 2),  # one gallery row, one memory row
        (3, 3, 2, 1, [0, 1, 1], [1, 2, 0], [5, 1], 5.0, 3),  # d = 1
    ],
)
def test_compiled_edge_sizes_match_naive_loop(case):
    assert_matches_naive(case, compiled=True)


def test_reduce_overhead_mode_matches_naive_loop():
    """On CPU there are no CUDA graphs to record; the mode still compiles and agrees."""
    assert_matches_naive((5, 4, 3, 6, [0, 1, 1, 2, 7], [0, 1, 3, 2], [1, 2, 8], 7.0, 4),
                         compiled="reduce-overhead")  # fmt: skip


def test_compiled_no_valid_row_gives_zero_attached_loss():
    q, g = feats(4, 5, 1), feats(3, 5, 2)
    res = sdm_loss(q, g, torch.tensor([0, 0, 1, 1]), torch.tensor([5, 6, 7]), compiled=True)
    assert float(res.loss.detach()) == 0.0
    assert int(res.rows_without_positive) == 7
    res.loss.backward()
    assert q.grad is not None and g.grad is not None
    assert not q.grad.any() and not g.grad.any()


def grads_of(loss, *xs):
    return torch.autograd.grad(loss, list(xs), retain_graph=True)


def test_compiled_float32_agrees_with_eager_and_no_grad_path():
    q, g = feats(16, 8, 4, dtype=torch.float32), feats(12, 8, 5, dtype=torch.float32)
    mf = feats(20, 8, 6, dtype=torch.float32, requires_grad=False)
    gen = torch.Generator().manual_seed(0)
    ql, gl = torch.randint(0, 6, (16,), generator=gen), torch.randint(0, 6, (12,), generator=gen)
    ml = torch.randint(0, 9, (20,), generator=gen)
    eager = sdm_loss(q, g, ql, gl, (mf, ml), logit_scale=30.0)
    comp = sdm_loss(q, g, ql, gl, (mf, ml), logit_scale=30.0, compiled=True)
    assert comp.loss.dtype == torch.float32
    torch.testing.assert_close(comp.loss, eager.loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_of(comp.loss, q, g), grads_of(eager.loss, q, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        plain = sdm_loss(q, g, ql, gl, (mf, ml), logit_scale=30.0, compiled=True)
    assert not plain.loss.requires_grad
    torch.testing.assert_close(plain.loss, eager.loss.detach(), rtol=1e-5, atol=1e-5)


def test_compiled_nonfinite_policy():
    q, g = feats(4, 5, 1, dtype=torch.float32), feats(4, 5, 2, dtype=torch.float32)
    pids = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        q[1, 1] = float("nan")
    assert not bool(sdm_loss(q, g, pids, compiled=True, on_nonfinite="ignore").finite)
    with pytest.raises(ValueError, match="query contains NaN"):
        sdm_loss(q, g, pids, compiled=True)


def test_compiled_gradcheck_float64_with_tensor_scale_and_memory(fresh_compile_state):
    """gradcheck differentiates each output several times through one graph, which a compiled
    backward with donated buffers refuses; compiled here without them."""
    q, g = feats(5, 4, 0), feats(4, 4, 1)
    mem = (feats(3, 4, 2, requires_grad=False), torch.tensor([1, 2, 8]))
    ql, gl = torch.tensor([0, 1, 1, 2, 7]), torch.tensor([0, 1, 3, 2])
    s = torch.tensor(7.0, dtype=F64, requires_grad=True)

    def fn(a, b, sc):
        return sdm_loss(a, b, ql, gl, mem, logit_scale=sc, compiled=True).loss

    with functorch_config.patch(donated_buffer=False):
        assert torch.autograd.gradcheck(fn, (q, g, s))


def test_compiled_option_validation():
    q = torch.randn(4, 3)
    lab = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="chunk_size and compiled"):
        sdm_loss(q, q, lab, compiled=True, chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size and compiled"):
        sdm_loss(q, q, lab, compiled="reduce-overhead", chunk_size=2)
    with pytest.raises(TypeError, match="compiled must be a bool"):
        sdm_loss(q, q, lab, compiled=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size and compiled"):
        SDMLoss(chunk_size=2, compiled=True)
    assert "compiled=True" in repr(SDMLoss(compiled=True))
    assert "compiled='reduce-overhead'" in repr(SDMLoss(compiled="reduce-overhead"))
    assert "compiled" not in repr(SDMLoss())


def test_compile_failure_warns_once_and_runs_uncompiled(monkeypatch, fresh_compile_state):
    def broken(*_args):
        raise RuntimeError("backend exploded\nmore detail")

    sdm_module._compiled[("_two_directions", "default")] = broken
    q, g = feats(5, 4, 1), feats(5, 4, 2)
    lab = torch.tensor([0, 1, 1, 2, 0])
    want = sdm_loss(q, g, lab).loss
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*backend exploded"):
        got = sdm_loss(q, g, lab, compiled=True).loss
    close(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        close(sdm_loss(q, g, lab, compiled=True).loss, want)  # no second warning


def test_out_of_memory_is_raised_not_taken_for_a_compile_failure(fresh_compile_state):
    def oom(*_args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    sdm_module._compiled[("_two_directions", "default")] = oom
    q = feats(4, 3, 1)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        sdm_loss(q, q, torch.tensor([0, 0, 1, 1]), compiled=True)
    assert not sdm_module._compile_failed  # later calls still try the compiled body


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_cuda_matches_float64_reference(dtype, mode):
    gen = torch.Generator().manual_seed(7)
    q64 = torch.randn(12, 16, generator=gen, dtype=torch.float64)
    g64 = torch.randn(10, 16, generator=gen, dtype=torch.float64)
    m64 = torch.randn(6, 16, generator=gen, dtype=torch.float64)
    ql, gl = torch.randint(0, 5, (12,), generator=gen), torch.randint(0, 5, (10,), generator=gen)
    ml = torch.randint(0, 7, (6,), generator=gen)
    q_ref, g_ref = q64.clone().requires_grad_(), g64.clone().requires_grad_()
    ref = naive_sdm(q_ref, g_ref, ql, gl, m64, ml, scale=30.0).loss
    ref.backward()
    dev = torch.device("cuda")
    args = (ql.to(dev), gl.to(dev), (m64.to(dev, dtype), ml.to(dev)))
    for _ in range(3):  # reduce-overhead: warm-up, recording, replay
        q, g = q64.to(dev, dtype).requires_grad_(), g64.to(dev, dtype).requires_grad_()
        res = sdm_loss(q, g, *args, logit_scale=30.0, compiled=mode, on_nonfinite="ignore")
        res.loss.backward()
        assert res.loss.dtype == torch.float32 and res.loss.device.type == "cuda"
        tol = 1e-4 if dtype == torch.float32 else 0.1
        torch.testing.assert_close(res.loss.double().cpu(), ref.detach(), rtol=tol, atol=tol)
        assert q.grad is not None and g.grad is not None
        torch.testing.assert_close(q.grad.double().cpu(), q_ref.grad, rtol=tol, atol=tol)
        torch.testing.assert_close(g.grad.double().cpu(), g_ref.grad, rtol=tol, atol=tol)
        assert bool(res.finite)
