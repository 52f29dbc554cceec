"""SDM on one similarity block as a single pure function, for ``torch.compile``.

The eager kernel in :mod:`sdmreid.losses.sdm` issues a few dozen element-wise and reduction
operations per call; on a GPU at ReID batch sizes each of them is a kernel launch and a Python
dispatch, which cost more than the arithmetic. :func:`sdm_dense` states the same computation
(both directions, label mask, statistics, analytic gradient, normalisation backward) as plain
tensor expressions without in-place tricks, so that TorchInductor can fuse them into a few
generated kernels around the matrix products. It handles one block (no chunking); the caller
chooses it with ``sdm_loss(..., compiled=True)``.

Same formulas as the eager kernel (see :class:`sdmreid.losses.sdm._FusedSDM`): per direction,
with ``z' = z - max``, ``e = exp(z')``, ``S = Σ e``, ``A = Σ e z'``, ``P = Σ_pos e``,
``δ = log(1/k + ε) - log ε`` and ``c = (A - δP)/S``, the row loss is ``c - log S - log ε`` and
``∂L/∂z = (w/S)(e z' - c e - δ e [pos])``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["run_compiled", "sdm_dense"]


def _direction(
    z: Tensor, pos: Tensor, dim: int, epsilon: float, log_eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loss, positive mass, ``∂L/∂z`` (already weighted) and the number of rows without a
    positive of one softmax direction of ``z`` along ``dim`` (1: each row's softmax over the
    columns; 0: each column's over the rows)."""
    posf = pos.to(z.dtype)
    k = posf.sum(dim)
    valid = k > 0
    n_valid = valid.sum()
    w = valid.to(z.dtype) / n_valid.clamp(min=1).to(z.dtype)
    delta = torch.log(k.clamp(min=1).reciprocal() + epsilon) - log_eps
    zs = z - z.amax(dim, keepdim=True)
    e = torch.exp(zs)
    s = e.sum(dim)
    a = (e * zs).sum(dim)
    p = (e * posf).sum(dim)
    c = (a - delta * p) / s
    loss = (w * (c - torch.log(s) - log_eps)).sum()
    mass = (w * p / s).sum()
    coef, cc, dd = w / s, w * c / s, w * delta / s
    if dim == 1:
        coef, cc, dd = coef[:, None], cc[:, None], dd[:, None]
    grad = e * (zs * coef - cc - dd * posf)
    return loss, mass, grad, (~valid).sum()


def sdm_dense(
    q: Tensor,
    g: Tensor,
    m: Tensor,
    q_labels: Tensor,
    g_labels: Tensor,
    m_labels: Tensor,
    scale: Tensor,
    epsilon: float,
    log_eps: float,
    need_grad: bool,
) -> tuple[Tensor, ...]:
    """Both SDM directions of ``q`` against ``[g; m]`` and, if ``need_grad``, the gradients.

    Args:
        q, g, m: ``[B, d]``, ``[N, d]``, ``[M, d]`` raw (un-normalised) features, one float dtype.
        q_labels, g_labels, m_labels: int64 labels of the three sides.
        scale: 0-dim ``logit_scale`` tensor of the features' dtype (> 0).
        epsilon, log_eps: IRRA's ε and ``log ε``.
        need_grad: also return ``dL/dq``, ``dL/dg`` and ``dL/dscale``.

    Returns:
        ``(loss_qg, loss_gq, mass_qg, mass_gq, missing_q, missing_g, dq, dg, dscale)``; the three
        gradients are empty tensors when ``need_grad`` is false.
    """
    n = g.shape[0]
    rq = torch.linalg.vector_norm(q, dim=1).clamp_min(1e-12).reciprocal()
    rg = torch.linalg.vector_norm(g, dim=1).clamp_min(1e-12).reciprocal()
    rm = torch.linalg.vector_norm(m, dim=1).clamp_min(1e-12).reciprocal()
    qh = q * rq[:, None]
    gh = g * rg[:, None]
    ch = torch.cat([gh, m * rm[:, None]])
    cos = qh @ ch.T
    z = cos * scale
    pos = q_labels[:, None] == torch.cat([g_labels, m_labels])[None, :]
    loss1, mass1, grad1, miss1 = _direction(z, pos, 1, epsilon, log_eps)
    loss2, mass2, grad2, miss2 = _direction(z[:, :n], pos[:, :n], 0, epsilon, log_eps)
    if not need_grad:
        empty = q.new_zeros(0)
        return loss1, loss2, mass1, mass2, miss1, miss2, empty, empty, empty
    grad = torch.cat([grad1[:, :n] + grad2, grad1[:, n:]], dim=1)  # dL/dz
    ds = (grad * cos).sum()
    gs = grad * scale  # dL/dcos
    dqh = gs @ ch
    dgh = gs[:, :n].T @ qh
    # through x̂ = x / ||x||: dx = (dx̂ - x̂ (x̂ · dx̂)) / ||x||
    dq = (dqh - qh * (qh * dqh).sum(1, keepdim=True)) * rq[:, None]
    dg = (dgh - gh * (gh * dgh).sum(1, keepdim=True)) * rg[:, None]
    return loss1, loss2, mass1, mass2, miss1, miss2, dq, dg, ds


_lock = threading.Lock()
_compiled: Callable[..., tuple[Tensor, ...]] | None = None
_failed = False


def run_compiled(*args: Any) -> tuple[Tensor, ...]:
    """:func:`sdm_dense` under ``torch.compile`` (dynamic shapes), compiled on first use.

    If compilation fails (no ``torch.compile`` support, no C++ compiler for a CPU build, ...),
    one ``RuntimeWarning`` says why and this and later calls run :func:`sdm_dense` uncompiled.
    The arguments are validated by the caller, so an error here is the compiler's (except running
    out of device memory, which is raised as is).
    """
    global _compiled, _failed
    if not _failed:
        with _lock:
            if _compiled is None:
                _compiled = torch.compile(sdm_dense, dynamic=True)
        try:
            return _compiled(*args)
        except torch.cuda.OutOfMemoryError:
            raise  # the computation's own failure, not the compiler's
        except Exception as exc:
            _failed = True
            warnings.warn(
                "sdm_loss(compiled=True): torch.compile failed "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "running the same computation uncompiled",
                RuntimeWarning,
                stacklevel=2,
            )
    return sdm_dense(*args)
