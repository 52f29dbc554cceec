r"""Similarity distribution matching (SDM) loss, as in IRRA, for cross-modal ReID batches.

SDM turns every similarity row into a softmax over the other side's items and pulls it, with a
KL divergence, toward the uniform distribution over that row's same-identity items.

Notation, for one direction with rows :math:`r` and columns :math:`c` (both L2-normalised):

.. math::

    z_{ij} &= s \cdot \cos(r_i, c_j), \qquad
    p_{ij} = \operatorname{softmax}_j(z_{ij}), \\
    k_i &= \#\{j : y^r_i = y^c_j\}, \qquad
    q_{ij} = [y^r_i = y^c_j] / k_i, \\
    L_i &= \sum_j p_{ij}\,\bigl(\log p_{ij} - \log(q_{ij} + \varepsilon)\bigr), \qquad
    \mathcal{L}_{\text{dir}} = \frac{1}{|V|} \sum_{i \in V} L_i, \quad V = \{i : k_i > 0\}.

The loss is :math:`\mathcal{L} = \mathcal{L}_{q \to g} + \mathcal{L}_{g \to q}` where

* query → gallery: rows are the ``B`` queries, columns the ``N`` gallery items followed by the
  ``M`` memory items (memory entries are constants: no gradient flows into them);
* gallery → query: rows are the ``N`` gallery items, columns the ``B`` queries (memory entries
  are never rows).

On a square batch (``gallery_labels=None``) in which every row has a positive this is exactly
IRRA's ``compute_sdm`` (``logit_scale`` = IRRA's ``1 / temperature``, ε = 1e-8). Rows without a
positive (:math:`k_i = 0`, where IRRA divides by zero) are excluded from their direction's mean and
counted in :class:`SDMResult`; a direction without any valid row contributes exactly ``0`` with
zero gradients, and the loss stays attached to the graph.

Implementation: a fused :class:`torch.autograd.Function` computes the similarity block
``query · [gallery; memory]ᵀ`` once per call, evaluates both directions on it in float32 (float64
for float64 inputs) with row-max subtraction, and writes the gradient analytically,
:math:`\partial L_i / \partial z_{ij} = p_{ij}(\log p_{ij} - \log(q_{ij}+\varepsilon) - L_i)`, while
the block is still in memory, so nothing of size ``B × (N + M)`` is kept for the backward pass.
The same-label entries are handled apart from the block: on CPU the (row, column) pairs are
enumerated from the sorted labels, so no block-sized label mask is formed (on other devices,
where such a mask costs little, it is).
With ``chunk_size`` the query rows are processed ``chunk_size`` at a time (the gallery → query
softmax runs over query rows, so its column statistics are accumulated first with a streaming
log-sum-exp), bounding the extra memory to ``O(chunk_size · (N + M))`` with the same value and
gradients. The backward pass only rescales the stored gradients (in place), so the loss is
differentiable once: double backward (``create_graph=True`` followed by a second backward
through the SDM term) raises a ``RuntimeError``. A second backward through a graph kept with
``retain_graph=True`` recomputes the gradients from the saved inputs.

``compiled=True`` replaces the eager kernel with the same computation written as one pure
function (:mod:`sdmreid.losses._sdm_compiled`) under ``torch.compile``: fewer, fused kernels,
which matters on a GPU where the eager kernel's many small launches dominate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from sdmreid.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum,
    get_world_size,
    is_dist,
)
from sdmreid.losses._sdm_compiled import run_compiled

__all__ = ["MemoryLike", "SDMLoss", "SDMResult", "sdm_loss"]


@runtime_checkable
class _FeaturesLabels(Protocol):
    features: Any
    labels: Any


#: What ``memory`` accepts: ``None``, a ``(features [M, d], labels [M])`` pair, or any object with
#: ``.features`` and ``.labels`` (attributes, or zero-argument methods).
MemoryLike = _FeaturesLabels | Sequence[Tensor] | None


@dataclass(frozen=True)
class SDMResult:
    """Everything :func:`sdm_loss` computes, for the optimiser and for monitoring.

    No field forces a host–device synchronisation; call :meth:`scalars` (which does) for logging.

    Attributes:
        loss: 0-dim total loss, attached to the graph; float32 (float64 for float64 inputs).
        loss_query_to_gallery: 0-dim query → gallery term (detached; for logging).
        loss_gallery_to_query: 0-dim gallery → query term (detached; for logging).
        rows: ``B + N``: query rows of query → gallery plus gallery rows of gallery → query
            (memory entries are columns only). Under ``gather=True`` this rank's rows.
        rows_without_positive: 0-dim int64 tensor on the input device: how many of ``rows`` have
            no same-label column (excluded from the loss).
        query_rows: ``B``.
        gallery_rows: ``N``.
        query_rows_without_positive: 0-dim int64: queries without a positive in gallery+memory.
        gallery_rows_without_positive: 0-dim int64: gallery items without a positive query.
        positive_mass_query_to_gallery: 0-dim: mean over valid query rows of the softmax
            probability on positive columns (1.0 = all mass on positives; 0 without valid rows).
        positive_mass_gallery_to_query: the same for the gallery → query direction.

    Example:
        >>> import torch
        >>> from sdmreid.losses import sdm_loss
        >>> g = torch.Generator().manual_seed(0)
        >>> q, x = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
        >>> r = sdm_loss(q, x, torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 3]))
        >>> r.rows, int(r.rows_without_positive)
        (8, 2)
    """

    loss: Tensor
    loss_query_to_gallery: Tensor
    loss_gallery_to_query: Tensor
    rows: int
    rows_without_positive: Tensor
    query_rows: int
    gallery_rows: int
    query_rows_without_positive: Tensor
    gallery_rows_without_positive: Tensor
    positive_mass_query_to_gallery: Tensor
    positive_mass_gallery_to_query: Tensor

    def scalars(self) -> dict[str, float]:
        """Python floats of every tensor field (synchronises with the device), for loggers."""
        out: dict[str, float] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = float(value.detach().item()) if isinstance(value, Tensor) else float(value)
        return out


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _check_features(x: object, name: str, *, dim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [n, d], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row (empty batch), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have a feature dimension d >= 1, got {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(
            f"{name} has feature dimension {x.shape[1]}, but query has {dim}: they must match"
        )
    return x


def _check_labels(y: object, name: str, n: int, device: torch.device) -> Tensor:
    if isinstance(y, Tensor):
        t = y
    else:
        try:
            t = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a 1-D integer tensor or array, got {y!r}") from exc
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer labels, got dtype {t.dtype}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} labels, but its features have {n} rows")
    return t.to(device=device, dtype=torch.int64)


def _checked_norms(q: Tensor, g: Tensor, m: Tensor) -> Tensor:
    """Row 2-norms of the three sides, concatenated (``[B + N + M]``), after checking that they
    are all finite.

    A row's 2-norm is finite iff all its entries are (barring overflow of huge values), and unlike
    ``torch.isfinite(x)`` it needs no temporary of ``x``'s size. The norms are reused by the
    kernel for the L2 normalisation. One host read of their sum checks all three sides at once
    (a NaN or Inf anywhere makes the sum non-finite); only then is each side looked at, so a sum
    that merely overflows raises nothing.
    """
    with torch.no_grad():  # the kernel differentiates the normalisation itself
        norms = [torch.linalg.vector_norm(x, dim=1) for x in (q, g, m)]
        joined = torch.cat(norms)
    if not math.isfinite(float(joined.sum())):
        for x, name in zip(norms, ("query", "gallery", "memory features"), strict=True):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(
                    f"{name} contains NaN or Inf values (or values whose norm overflows)"
                )
    return joined


def _unpack_memory(memory: object) -> tuple[Any, Any]:
    if isinstance(memory, _FeaturesLabels):
        feats, labels = memory.features, memory.labels
        feats = feats() if callable(feats) else feats
        labels = labels() if callable(labels) else labels
        return feats, labels
    if isinstance(memory, Sequence) and not isinstance(memory, str) and len(memory) == 2:
        return memory[0], memory[1]
    raise TypeError(
        "memory must be None, a (features [M, d], labels [M]) pair, or an object with "
        f".features and .labels, got {type(memory).__name__}"
    )


def _check_scale(logit_scale: float | Tensor) -> float | Tensor:
    if isinstance(logit_scale, Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(
                f"logit_scale must be a float or a 0-dim tensor, got shape "
                f"{tuple(logit_scale.shape)}"
            )
        if not logit_scale.is_floating_point():
            raise ValueError(f"logit_scale tensor must be floating point, got {logit_scale.dtype}")
        return logit_scale.reshape(())
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)):
        raise TypeError(f"logit_scale must be a float or a 0-dim tensor, got {logit_scale!r}")
    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be finite and > 0, got {logit_scale}")
    return float(logit_scale)


def _check_options(epsilon: object, chunk_size: object, compiled: bool = False) -> None:
    """Validate ``epsilon`` (finite, > 0), ``chunk_size`` (``None`` or an int >= 1) and that
    ``compiled`` is not asked for together with ``chunk_size``."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a float, got {epsilon!r}")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    if compiled and chunk_size is not None:
        raise ValueError(
            "chunk_size and compiled=True exclude each other: the compiled kernel forms the "
            "whole similarity block; pass chunk_size=None or compiled=False"
        )


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type in ("cpu", "cuda", "xpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# fused kernel
# ----------------------------------------------------------------------------------------------


def _inv_from_norms(norms: Tensor) -> Tensor:
    """``1 / max(norm, 1e-12)`` (the clamp of :func:`torch.nn.functional.normalize`)."""
    return norms.clamp_min(1e-12).reciprocal()


def _inv_norm(x: Tensor) -> Tensor:
    """``1 / max(||x_i||, 1e-12)`` per row."""
    return _inv_from_norms(torch.linalg.vector_norm(x, dim=1))


def _positive_counts(row_labels: Tensor, col_labels: Tensor) -> Tensor:
    """For each row label, how many column labels equal it (O((R + C) log C) memory-free)."""
    if col_labels.numel() == 0:
        return torch.zeros_like(row_labels)
    sorted_cols = torch.sort(col_labels).values
    left = torch.searchsorted(sorted_cols, row_labels, right=False)
    right = torch.searchsorted(sorted_cols, row_labels, right=True)
    return right - left


#: Device types on which :class:`_Positives` enumerates the same-label pairs (see there).
_SPARSE_POSITIVES_DEVICES = frozenset({"cpu"})
#: ... as long as the pairs are at most this fraction of the block's entries (24 bytes of indices
#: per pair then stay below 40 % of the float32 block; ReID batches have ~1-5 %).
_SPARSE_MAX_FRACTION = 1 / 16


class _Positives:
    """The same-label entries of a ``[rows, cols]`` block, for sums and gradient corrections.

    Two strategies with one interface. On CPU the (row, column) pairs are enumerated once per
    call from the sorted column labels (``O(pairs)`` work per block instead of a block-sized
    comparison, multiplication and reduction; enumerating needs one host read of the pair count,
    free on CPU). On other devices, where element-wise passes are cheap and host reads are
    synchronisations, a block-sized same-label mask is formed per block — and on CPU too when
    the pairs are too many to be worth listing (few identities: most entries are positives).

    :meth:`take` reads the same-label entries of the rows ``i0:i1`` of a contiguous block ``e``
    into a token; :meth:`sums_` writes their row (``dim=1``) or column (``dim=0``) sums into a
    vector; :meth:`sub_` subtracts ``coef[row or column] · e`` at those entries of another
    contiguous block of the same shape.
    """

    def __init__(self, row_labels: Tensor, col_labels: Tensor) -> None:
        self.ncols = int(col_labels.shape[0])
        self.sparse = row_labels.device.type in _SPARSE_POSITIVES_DEVICES
        self.row_labels, self.col_labels = row_labels, col_labels
        if not self.sparse:
            return
        order = torch.argsort(col_labels, stable=True)
        sorted_cols = col_labels[order]
        left = torch.searchsorted(sorted_cols, row_labels)
        k = torch.searchsorted(sorted_cols, row_labels, right=True) - left
        indptr = k.new_zeros(k.shape[0] + 1)
        torch.cumsum(k, 0, out=indptr[1:])
        self.indptr: list[int] = indptr.tolist()
        total = self.indptr[-1]
        if total > _SPARSE_MAX_FRACTION * k.shape[0] * self.ncols:
            self.sparse = False
            return
        rows = torch.repeat_interleave(torch.arange(k.shape[0]), k, output_size=total)
        offset = torch.arange(total) - indptr[rows]
        self.rows = rows
        self.cols = order[left[rows] + offset]
        self.flat = rows * self.ncols + self.cols

    def take(self, e: Tensor, i0: int, i1: int) -> Any:
        if not self.sparse:
            mask = self.row_labels[i0:i1, None] == self.col_labels[None, :]
            return e * mask  # e is finite (in [0, 1]): the same as where(mask, e, 0)
        a, b = self.indptr[i0], self.indptr[i1]
        if i0 == 0 and b == self.indptr[-1]:
            rows, cols, flat = self.rows, self.cols, self.flat
        else:
            rows, cols, flat = self.rows[a:b] - i0, self.cols[a:b], self.flat[a:b] - i0 * self.ncols
        return e.view(-1)[flat], rows, cols, flat

    @staticmethod
    def sums_(out: Tensor, token: Any, dim: int) -> None:
        if isinstance(token, Tensor):
            torch.sum(token, dim, out=out)
            return
        vals, rows, cols, _ = token
        out.zero_().index_add_(0, rows if dim == 1 else cols, vals)

    @staticmethod
    def sub_(out: Tensor, token: Any, coef: Tensor, dim: int) -> None:
        if isinstance(token, Tensor):
            out.addcmul_(token, coef[:, None] if dim == 1 else coef[None, :], value=-1.0)
            return
        vals, rows, cols, flat = token
        out.view(-1).index_add_(0, flat, vals * coef[rows if dim == 1 else cols], alpha=-1.0)


def _block_stats(
    z: Tensor, pos: _Positives, i0: int, i1: int, dim: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Any]:
    """Softmax statistics of ``z`` along ``dim`` (1: each row; 0: each column of the block).

    With ``z' = z - max`` and ``e = exp(z')``: returns ``(max, S = Σ e, A = Σ e·z',
    P = Σ_same-label e, e, token)`` and leaves ``e·z'`` in ``z``.
    """
    mx = z.amax(dim, keepdim=True)
    z.sub_(mx)
    e = z.exp()
    s = e.sum(dim)
    z.mul_(e)
    a = z.sum(dim)
    token = pos.take(e, i0, i1)
    p = s.new_empty(s.shape)
    pos.sums_(p, token, dim)
    return mx.squeeze(dim), s, a, p, e, token


def _merge_stats(
    x: tuple[Tensor, Tensor, Tensor, Tensor], y: tuple[Tensor, Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Combine two blocks' ``(max, S, A, P)`` column statistics (streaming log-sum-exp)."""
    mx, sx, ax, px = x
    my, sy, ay, py = y
    m = torch.maximum(mx, my)
    dx, dy = mx - m, my - m
    fx, fy = dx.exp(), dy.exp()
    a = fx * (ax + dx * sx) + fy * (ay + dy * sy)
    return m, fx * sx + fy * sy, a, fx * px + fy * py


def _row_dots(a: Tensor, b: Tensor, scratch: Tensor | None) -> Tensor:
    """Row-wise dot products ``a_i · b_i``; the product goes into a dead scratch block if it fits.

    (A fresh block-sized temporary costs page faults on CPU; reusing dead memory avoids them.)
    """
    if (
        scratch is not None
        and scratch.numel() >= a.numel()
        and scratch.dtype == a.dtype
        and scratch.is_contiguous()
    ):
        prod = scratch.view(-1)[: a.numel()].view(a.shape)
        return torch.mul(a, b, out=prod).sum(1)
    dots: Tensor = torch.linalg.vecdot(a, b)
    return dots


class _FusedSDM(torch.autograd.Function):
    """Both SDM directions on one similarity block; gradients written during the forward pass.

    Takes raw (un-normalised) features and folds the L2 normalisation, its backward and the
    ``logit_scale`` gradient into the same pass, so no normalised copy of any side is made.

    Per direction, with ``z' = z - max``, ``e = exp(z')``, ``S = Σ e``, ``A = Σ e z'`` and
    ``P = Σ_positives e`` along the softmax axis, ``δ = log(1/k + ε) - log ε``:
    ``L = A/S - log S - log ε - δ P/S`` and the weighted gradient
    ``w p (log p - log(q̃ + ε) - L) = (w/S) · (e z' - c e - δ e [positive])`` with
    ``c = (A - δ P)/S``; so a block needs a handful of element-wise passes and the positive
    entries are touched separately (see :class:`_Positives`).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        q: Tensor,
        g: Tensor,
        m: Tensor,
        scale: Tensor,
        q_labels: Tensor,
        c_labels: Tensor,
        t1pos: Tensor,
        w1: Tensor,
        t2pos: Tensor,
        w2: Tensor,
        log_eps: float,
        chunk: int,
        do_rows: bool,
        do_cols: bool,
        need_grad: bool,
        norms: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        ctx.set_materialize_grads(False)  # no zero gradients for the non-differentiable outputs
        b, n, n_mem = q.shape[0], g.shape[0], m.shape[0]
        width = n + n_mem
        if norms is None:
            rq, rg = _inv_norm(q), _inv_norm(g)
            rc = torch.cat([rg, _inv_norm(m)]) if n_mem > 0 else rg
        else:  # row norms [q; g; m] already computed by the caller's finiteness check
            inv = _inv_from_norms(norms)
            rq, rc = inv[:b], inv[b:]  # the columns are [g; m]
            rg = rc[:n]
        zero = q.new_zeros(())
        # per-direction loss and positive mass; zeros only for a direction not computed
        loss1: Tensor | None = None
        mass1: Tensor | None = None
        loss2: Tensor | None = None
        mass2: Tensor | None = None
        dq = torch.empty_like(q) if need_grad else q[:0]
        u = torch.empty_like(g) if need_grad else g[:0]  # written by the first block
        ds = zero.clone()
        delta1 = t1pos - log_eps
        delta2 = t2pos - log_eps
        rcs = rc * scale  # column factor of the logits: s / ||c||
        rq2, rqs = rq * rq, rq * scale
        pos1 = _Positives(q_labels, c_labels) if do_rows else None
        pos2 = _Positives(q_labels, c_labels[:n]) if do_cols else None
        single = chunk >= b
        # query -> gallery row statistics (S, A, P per query row), filled block by block
        s1, a1, p1 = (q.new_empty(b if do_rows else 0) for _ in range(3))

        # gallery -> query (softmax over the query rows of each gallery column): statistics
        # before any gradient can be formed; streamed over row blocks unless there is one block.
        col_shift = col_back = zero
        if do_cols and not single and pos2 is not None:
            # this pass only touches the N gallery columns: blocks of chunk·(N + M) elements
            step = max(chunk, (chunk * width) // max(n, 1))
            col_stats: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
            for i0 in range(0, b, step):
                i1 = min(b, i0 + step)
                zg = torch.mm(q[i0:i1] * rq[i0:i1, None], g.T).mul_(rcs[:n])
                mx, s, a, p, _, _ = _block_stats(zg, pos2, i0, i1, 0)
                part = (mx, s, a, p)
                col_stats = part if col_stats is None else _merge_stats(col_stats, part)
                del zg
            if col_stats is not None:
                mx, s, a, p = col_stats
                inv = s.reciprocal()
                c2 = torch.addcmul(a, delta2, p, value=-1.0).mul_(inv)
                log_s = s.log()
                loss2 = torch.dot(w2, c2 - log_s - log_eps)
                mass2 = torch.dot(w2, p * inv)
                # w p = exp(z - shift) with shift = max + log S - log w (a finite stand-in for
                # log 0 keeps w = 0 columns at exactly 0); log p - log ε - L = z - max - c
                log_w = torch.where(w2 > 0, w2.log(), -1e4)
                col_shift = mx + log_s - log_w
                col_back = log_s - log_w - c2

        for i0 in range(0, b, chunk):
            i1 = min(b, i0 + chunk)
            r = i1 - i0
            qh = q[i0:i1] * rq[i0:i1, None]  # q̂ of the block
            z = q.new_empty((r, width))  # scaled cosine logits, computed once per block
            torch.mm(qh, g.T, out=z[:, :n])
            if n_mem > 0:
                torch.mm(qh, m.T, out=z[:, n:])
            z.mul_(rcs)
            g2: Tensor | None = None
            scratch: Tensor | None = None
            if do_cols and pos2 is not None:
                if single:
                    g2 = z[:, :n].clone(memory_format=torch.contiguous_format) if do_rows else z
                    _, s, a, p, e2, tok2 = _block_stats(g2, pos2, i0, i1, 0)
                    inv = s.reciprocal()
                    c2 = torch.addcmul(a, delta2, p, value=-1.0).mul_(inv)
                    loss2 = torch.dot(w2, c2 - s.log() - log_eps)
                    mass2 = torch.dot(w2, p * inv)
                    if need_grad:  # (w/S) · (e z' - c e - δ e [pos]); g2 holds e z'
                        coef = w2 * inv
                        g2.mul_(coef)
                        g2.addcmul_(e2, coef * c2, value=-1.0)
                        _Positives.sub_(g2, tok2, coef * delta2, 0)
                    del e2, tok2
                elif need_grad:  # w p (log p - log ε - L - δ [pos]) = w p (z - max - c) - ...
                    g2 = z[:, :n] - col_shift
                    pw = g2.exp()  # w p
                    g2.add_(col_back).mul_(pw)
                    _Positives.sub_(g2, pos2.take(pw, i0, i1), delta2, 0)
                    del pw
            if do_rows and pos1 is not None:
                mx = z.amax(1, keepdim=True)
                z.sub_(mx)
                e = z.exp()
                s, a, p = s1[i0:i1], a1[i0:i1], p1[i0:i1]
                torch.sum(e, 1, out=s)
                z.mul_(e)
                torch.sum(z, 1, out=a)
                tok = pos1.take(e, i0, i1)
                _Positives.sums_(p, tok, 1)
                if need_grad:  # (w/S) · (e z' - c e - δ e [pos]); z holds e z'
                    dc = delta1[i0:i1]
                    coef = w1[i0:i1] / s
                    c = torch.addcmul(a, dc, p, value=-1.0).div_(s)
                    z.mul_(coef[:, None])
                    z.addcmul_(e, (coef * c)[:, None], value=-1.0)
                    _Positives.sub_(z, tok, coef * dc, 1)
                scratch = e  # dead from here on: room for the row dot products below
                del e, tok
                grad_blk = z
            elif need_grad:  # gallery -> query only: no memory columns, g2 has z's shape
                grad_blk = g2 if g2 is not None and g2.shape == z.shape else torch.zeros_like(z)
            if need_grad:
                if g2 is not None and g2 is not grad_blk:
                    grad_blk[:, :n].add_(g2)  # (`+=` on a slice would copy it back once more)
                grad_blk.mul_(rc)  # dL/dz · ||c||⁻¹: gradients w.r.t. raw columns
                qc = q[i0:i1]
                gc = torch.mm(grad_blk[:, :n], g, out=dq[i0:i1])  # Σ_j dL/dz_ij ĉ_j
                if n_mem > 0:
                    gc.addmm_(grad_blk[:, n:], m)
                dot = _row_dots(qc, gc, scratch)
                ds += torch.dot(rq[i0:i1], dot)
                # through q̂ = q / ||q||: dq = s/||q|| (gc - q̂ (q̂·gc))
                gc.addcmul_(qc, (rq2[i0:i1] * dot)[:, None], value=-1.0)
                gc.mul_(rqs[i0:i1, None])
                if i0 == 0:
                    torch.mm(grad_blk[:, :n].T, qh, out=u)
                else:
                    u.addmm_(grad_blk[:, :n].T, qh)
            del z, g2, qh

        if do_rows:
            inv1 = s1.reciprocal()
            c1 = torch.addcmul(a1, delta1, p1, value=-1.0).mul_(inv1)
            loss1 = torch.dot(w1, c1 - s1.log() - log_eps)
            mass1 = torch.dot(w1, p1 * inv1)
        if need_grad:  # through ĝ = g / ||g||
            dot = _row_dots(g, u, scratch)
            del scratch
            dg = u.addcmul_(g, (rg * rg * dot)[:, None], value=-1.0)
            dg.mul_(scale)
        else:
            dg = u
        ctx.grads = (dq, dg, ds)  # type: ignore[attr-defined]
        if need_grad:
            # The backward pass scales these gradients in place (no second copy of them). The
            # inputs are saved (references, no copies) so that a second backward through a
            # retained graph can recompute them; without retain_graph PyTorch frees them and a
            # second backward raises its usual error.
            extra = (norms,) if norms is not None else ()
            ctx.save_for_backward(q, g, m, scale, q_labels, c_labels, t1pos, w1, t2pos, w2, *extra)
            ctx.params = (log_eps, chunk, do_rows, do_cols, norms is not None)  # type: ignore[attr-defined]
        if loss1 is None or mass1 is None:
            loss1, mass1 = q.new_zeros(()), q.new_zeros(())
        if loss2 is None or mass2 is None:
            loss2, mass2 = q.new_zeros(()), q.new_zeros(())
        total = loss1 + loss2
        ctx.mark_non_differentiable(loss1, loss2, mass1, mass2)
        return total, loss1, loss2, mass1, mass2

    @staticmethod
    def backward(ctx: FunctionCtx, g_total: Tensor | None, *_: Tensor) -> tuple[Tensor | None, ...]:
        if g_total is None:  # no gradient reached the loss (grads are not materialised)
            return (None,) * 16
        grads = ctx.grads  # type: ignore[attr-defined]
        if grads is None:  # used by an earlier backward: recompute from the saved inputs
            saved = ctx.saved_tensors  # type: ignore[attr-defined]
            log_eps, chunk, do_rows, do_cols, has_norms = ctx.params  # type: ignore[attr-defined]
            norms = saved[10] if has_norms else None
            again = _Recompute()
            with torch.no_grad():
                q, g, m, scale, q_labels, c_labels, t1pos, w1, t2pos, w2 = saved[:10]
                _FusedSDM.forward(
                    again,  # type: ignore[arg-type]
                    q,
                    g,
                    m,
                    scale,
                    q_labels,
                    c_labels,
                    t1pos,
                    w1,
                    t2pos,
                    w2,
                    log_eps,
                    chunk,
                    do_rows,
                    do_cols,
                    True,
                    norms,
                )
            grads = again.grads
        ctx.grads = None  # type: ignore[attr-defined]
        dq, dg, ds = grads
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        with torch.no_grad():
            out: tuple[Tensor | None, ...] = (
                dq.mul_(g_total) if needs[0] else None,
                dg.mul_(g_total) if needs[1] else None,
                ds.mul_(g_total) if needs[3] else None,
            )
        if torch.is_grad_enabled():  # create_graph=True: make a second backward fail loudly
            out = tuple(None if x is None else _once(x) for x in out)
        return (out[0], out[1], None, out[2], *([None] * 12))


class _Recompute:
    """Stand-in ``ctx`` for re-running :meth:`_FusedSDM.forward` inside a backward pass."""

    grads: tuple[Tensor, Tensor, Tensor]
    params: tuple[Any, ...]

    def save_for_backward(self, *_: Tensor) -> None:
        pass

    def mark_non_differentiable(self, *_: Tensor) -> None:
        pass

    def set_materialize_grads(self, _: bool) -> None:
        pass


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose backward raises: marks gradients that cannot be differentiated again."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: FunctionCtx, *_: Tensor) -> Tensor:
        raise RuntimeError(
            "sdm_loss is differentiable once: its backward pass reuses gradients computed in the "
            "forward pass, so differentiating twice (double backward through the SDM loss after "
            "create_graph=True) is not supported"
        )


def _once(x: Tensor) -> Tensor:
    out = _NoDoubleBackward.apply(x.detach().requires_grad_())  # type: ignore[no-untyped-call]
    return out  # type: ignore[no-any-return]


def _fused(*args: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    out = _FusedSDM.apply(*args)  # type: ignore[no-untyped-call]
    return out  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def sdm_loss(
    query: Tensor,
    gallery: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor | None = None,
    memory: MemoryLike = None,
    *,
    logit_scale: float | Tensor = 50.0,
    epsilon: float = 1e-8,
    chunk_size: int | None = None,
    gather: bool = False,
    check_finite: bool = True,
    compiled: bool = False,
) -> SDMResult:
    r"""SDM loss between a query side and a gallery side (plus optional memory columns).

    .. math::

        \mathcal{L} = \frac{1}{|V_q|}\sum_{i \in V_q} \mathrm{KL}\bigl(p^{q\to g}_i \,\|\,
        \tilde q^{q\to g}_i\bigr) + \frac{1}{|V_g|}\sum_{j \in V_g} \mathrm{KL}\bigl(
        p^{g\to q}_j \,\|\, \tilde q^{g\to q}_j\bigr)

    with :math:`p_i = \operatorname{softmax}(s\cdot\cos(\text{row}_i, \text{columns}))`, IRRA's
    :math:`\mathrm{KL}(p\|\tilde q) = \sum_j p_j(\log p_j - \log(q_j + \varepsilon))`, :math:`q_i`
    the uniform distribution over row ``i``'s same-label columns, and :math:`V` the rows that have
    at least one same-label column. Query → gallery columns are ``[gallery; memory]``; gallery →
    query columns are the queries. See the module docstring for details.

    Args:
        query: ``[B, d]`` features (any float dtype; normalised inside).
        gallery: ``[N, d]`` features on the same device; ``N`` may differ from ``B``.
        query_labels: ``[B]`` integer identity labels.
        gallery_labels: ``[N]`` integer labels; ``None`` means ``query_labels`` (needs ``N == B``,
            the square IRRA case).
        memory: ``None``, ``(features [M, d], labels [M])`` or an object with ``.features`` and
            ``.labels`` (e.g. ``CrossBatchMemory.get()``). Extra query → gallery columns, treated
            as constants. An empty memory (``M == 0``) is ignored whatever its device or dtype.
        logit_scale: ``s`` (IRRA: ``1 / temperature``); a positive float or a 0-dim tensor, which
            receives a gradient when it requires one.
        epsilon: IRRA's ε inside ``log(q + ε)``; must be > 0.
        chunk_size: process the query rows ``chunk_size`` at a time (peak extra memory
            ``O(chunk_size · (N + M))``); same value and gradients. ``None``: one chunk.
        gather: under an initialised ``torch.distributed`` group, compute the global SDM of the
            concatenated batch (every rank's queries against every rank's gallery). The returned
            ``loss`` value equals single-process SDM on the concatenation on every rank; its
            gradient is ``world_size`` × this rank's share, so after DDP's gradient averaging the
            parameter gradients equal the single-process ones (a rank's local features receive
            ``world_size`` × the single-process gradient before averaging). ``memory`` is used as
            given on each rank (not gathered); the row counts in the result are this rank's rows.
            Without an initialised group it does nothing.
        check_finite: reject NaN/Inf features with a ``ValueError``. The check reads one bool
            from the device (a synchronisation on CUDA); pass ``False`` to skip it.
        compiled: run the whole block as one ``torch.compile``-d function (TorchInductor fuses
            the element-wise work into a few generated kernels; on a GPU, where the eager
            kernel's many small launches dominate at ReID batch sizes, it measured 1.7× the
            eager kernel's speed). Same value and gradients up to rounding. The first call of
            each new input signature compiles (seconds to a minute); if compilation fails, one
            ``RuntimeWarning`` says why and the same computation runs uncompiled. Not with
            ``chunk_size`` (the block is formed whole); with ``gather`` under an initialised
            process group the eager kernel is used.

    Returns:
        An :class:`SDMResult`; ``result.loss`` is the scalar to optimise. Only ``loss`` carries a
        gradient (it is differentiable once; double backward raises ``RuntimeError``).

    Raises:
        ValueError: non-2-D or empty features, mismatched dimensions or devices, label length
            mismatch, non-integer labels, NaN/Inf features, bad ``logit_scale``/``epsilon``/
            ``chunk_size``.
        TypeError: arguments of the wrong type.

    Example:
        >>> import torch
        >>> from sdmreid.losses import sdm_loss
        >>> g = torch.Generator().manual_seed(0)
        >>> img = torch.randn(4, 16, generator=g, requires_grad=True)
        >>> txt = torch.randn(4, 16, generator=g)
        >>> pids = torch.tensor([0, 0, 1, 1])
        >>> res = sdm_loss(img, txt, pids, logit_scale=50.0)
        >>> res.loss.backward()
        >>> res.rows, int(res.rows_without_positive), img.grad.shape
        (8, 0, torch.Size([4, 16]))
    """
    q = _check_features(query, "query")
    b, d = q.shape
    dev = q.device
    g = _check_features(gallery, "gallery", dim=d)
    n = g.shape[0]
    if g.device != dev:
        raise ValueError(f"gallery is on {g.device}, but query is on {dev}: they must match")
    ql = _check_labels(query_labels, "query_labels", b, dev)
    if gallery_labels is None:
        if n != b:
            raise ValueError(
                "gallery_labels=None means the gallery shares query_labels, which needs as many "
                f"gallery rows as queries; got {n} gallery rows and {b} queries"
            )
        gl = ql
    else:
        gl = _check_labels(gallery_labels, "gallery_labels", n, dev)
    scale = _check_scale(logit_scale)
    if not isinstance(compiled, bool):
        raise TypeError(f"compiled must be a bool, got {compiled!r}")
    _check_options(epsilon, chunk_size, compiled)

    cdt = torch.float64 if torch.float64 in (q.dtype, g.dtype) else torch.float32
    mem_f: Tensor | None = None
    mem_l: Tensor | None = None
    if memory is not None:
        raw_f, raw_l = _unpack_memory(memory)
        if not isinstance(raw_f, Tensor):
            raise TypeError(f"memory features must be a torch.Tensor, got {type(raw_f).__name__}")
        if raw_f.numel() > 0 or (raw_f.dim() == 2 and raw_f.shape[0] > 0):
            mem_f = _check_features(raw_f, "memory features", dim=d)
            mem_l = _check_labels(raw_l, "memory labels", mem_f.shape[0], dev)
            mem_f = mem_f.detach().to(device=dev)
    with _no_autocast(dev):
        qn = q.to(cdt)
        gn = g.to(cdt)
        mn = mem_f.to(cdt) if mem_f is not None else qn.new_zeros((0, d))
        ml = mem_l if mem_l is not None else ql.new_zeros(0)
        norms = None
        if check_finite:
            norms = _checked_norms(qn, gn, mn)
        if isinstance(scale, Tensor):
            s_t = scale.to(device=dev, dtype=cdt)
        else:
            s_t = torch.full((), scale, device=dev, dtype=cdt)  # a fill: no host-to-device copy
        if compiled and not (gather and is_dist()):
            return _sdm_compiled(qn, gn, mn, ql, gl, ml, s_t, float(epsilon))
        return _sdm_core(qn, gn, mn, ql, gl, ml, s_t, float(epsilon), chunk_size, gather, norms)


class _DenseSDM(torch.autograd.Function):
    """Autograd wrapper of the compiled one-block kernel: gradients come out of the forward.

    The stored gradients are kept (not scaled in place), so a second backward through a
    retained graph reuses them.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        q: Tensor,
        g: Tensor,
        m: Tensor,
        scale: Tensor,
        q_labels: Tensor,
        g_labels: Tensor,
        m_labels: Tensor,
        epsilon: float,
        need_grad: bool,
    ) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)
        out = run_compiled(
            q, g, m, q_labels, g_labels, m_labels, scale, epsilon, math.log(epsilon), need_grad
        )
        l1, l2, m1, m2, miss1, miss2, dq, dg, ds = out
        ctx.grads = (dq, dg, ds)  # type: ignore[attr-defined]
        # saved only so that PyTorch's own "backward through the graph a second time" error
        # fires once the graph is freed (the gradients above do not depend on it)
        ctx.save_for_backward(scale)
        total = l1 + l2
        ctx.mark_non_differentiable(l1, l2, m1, m2, miss1, miss2)
        return total, l1, l2, m1, m2, miss1, miss2

    @staticmethod
    def backward(ctx: FunctionCtx, g_total: Tensor | None, *_: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors  # type: ignore[attr-defined]
        if g_total is None:  # no gradient reached the loss (grads are not materialised)
            return (None,) * 9
        dq, dg, ds = ctx.grads  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        with torch.no_grad():
            out: tuple[Tensor | None, ...] = (
                dq * g_total if needs[0] else None,
                dg * g_total if needs[1] else None,
                ds * g_total if needs[3] else None,
            )
        if torch.is_grad_enabled():  # create_graph=True: make a second backward fail loudly
            out = tuple(None if x is None else _once(x) for x in out)
        return (out[0], out[1], None, out[2], *([None] * 5))


def _sdm_compiled(
    qn: Tensor,
    gn: Tensor,
    mn: Tensor,
    ql: Tensor,
    gl: Tensor,
    ml: Tensor,
    scale: Tensor,
    epsilon: float,
) -> SDMResult:
    need_grad = torch.is_grad_enabled() and (
        qn.requires_grad or gn.requires_grad or scale.requires_grad
    )
    out = _DenseSDM.apply(qn, gn, mn, scale, ql, gl, ml, epsilon, need_grad)  # type: ignore[no-untyped-call]
    total, l1, l2, m1, m2, miss1, miss2 = out
    return _result(total, l1, l2, m1, m2, miss1, miss2, qn.shape[0], gn.shape[0])


def _result(
    loss: Tensor,
    l1: Tensor,
    l2: Tensor,
    m1: Tensor,
    m2: Tensor,
    miss1: Tensor,
    miss2: Tensor,
    b: int,
    n: int,
) -> SDMResult:
    """The :class:`SDMResult` of ``b`` query and ``n`` gallery rows (logged fields detached)."""
    return SDMResult(
        loss=loss,
        loss_query_to_gallery=l1.detach(),
        loss_gallery_to_query=l2.detach(),
        rows=b + n,
        rows_without_positive=miss1 + miss2,
        query_rows=b,
        gallery_rows=n,
        query_rows_without_positive=miss1,
        gallery_rows_without_positive=miss2,
        positive_mass_query_to_gallery=m1.detach(),
        positive_mass_gallery_to_query=m2.detach(),
    )


def _sdm_core(
    qn: Tensor,
    gn: Tensor,
    mn: Tensor,
    ql: Tensor,
    gl: Tensor,
    ml: Tensor,
    scale: Tensor,
    epsilon: float,
    chunk_size: int | None,
    gather: bool,
    norms: Tensor | None = None,
) -> SDMResult:
    b, n = qn.shape[0], gn.shape[0]
    log_eps = math.log(epsilon)
    distributed = gather and is_dist()
    if distributed:
        q_all, g_all = all_gather_with_grad(qn), all_gather_with_grad(gn)
        ql_all, gl_all = all_gather_no_grad(ql), all_gather_no_grad(gl)
    else:
        q_all, g_all, ql_all, gl_all = qn, gn, ql, gl
    cl = torch.cat([gl_all, ml])

    # positives per row: query rows vs [gallery; memory], gallery rows vs queries
    # both directions' rows in one vector: fewer (small) kernels per call
    k = torch.cat([_positive_counts(ql, cl), _positive_counts(gl, ql_all)])
    b1 = ql.shape[0]
    valid = k > 0
    missing = (~valid).to(torch.int64)
    miss1, miss2 = missing[:b1].sum(), missing[b1:].sum()
    cdt = qn.dtype
    vf = valid.to(cdt)
    n1, n2 = vf[:b1].sum(), vf[b1:].sum()
    if distributed:
        n12 = all_reduce_sum(torch.stack([n1, n2]))
        n1, n2 = n12[0], n12[1]
    w1 = vf[:b1] / n1.clamp(min=1)
    w2 = vf[b1:] / n2.clamp(min=1)
    tpos = (k.clamp(min=1).to(cdt).reciprocal() + epsilon).log()
    t1pos, t2pos = tpos[:b1], tpos[b1:]

    need_grad = torch.is_grad_enabled() and (
        qn.requires_grad or gn.requires_grad or scale.requires_grad
    )
    fn = _fused
    if not distributed:
        chunk = b if chunk_size is None else min(chunk_size, b)
        total, l1, l2, m1, m2 = fn(
            qn,
            gn,
            mn,
            scale,
            ql,
            cl,
            t1pos,
            w1,
            t2pos,
            w2,
            log_eps,
            chunk,
            True,
            True,
            need_grad,
            norms,
        )
        loss = total
    else:
        world = get_world_size()
        b_all = q_all.shape[0]
        # this rank's query rows against every gallery column (+ memory) ...
        tot_a, l1, _, m1, _ = fn(
            qn,
            g_all,
            mn,
            scale,
            ql,
            cl,
            t1pos,
            w1,
            t2pos[:0],
            w2[:0],
            log_eps,
            b if chunk_size is None else min(chunk_size, b),
            True,
            False,
            need_grad,
            None,
        )
        # ... and this rank's gallery rows against every query column.
        tot_b, _, l2, _, m2 = fn(
            q_all,
            gn,
            mn[:0],
            scale,
            ql_all,
            gl,
            t1pos[:0],
            w1[:0],
            t2pos,
            w2,
            log_eps,
            b_all if chunk_size is None else min(chunk_size, b_all),
            False,
            True,
            need_grad,
            None,
        )
        local = tot_a + tot_b
        stats = all_reduce_sum(torch.stack([l1, l2, m1, m2]).detach())
        l1, l2, m1, m2 = stats[0], stats[1], stats[2], stats[3]
        # value: the global loss on every rank; gradient: world × this rank's share.
        loss = world * local + (l1 + l2 - world * local).detach()

    return _result(loss, l1, l2, m1, m2, miss1, miss2, b, n)


class SDMLoss(nn.Module):
    """Module form of :func:`sdm_loss`; ``forward`` returns the scalar loss.

    Args:
        logit_scale: default ``s`` (IRRA's ``1 / temperature``). A float is stored as
            configuration; an ``nn.Parameter`` is registered (learnable); another tensor is
            registered as a buffer (saved in ``state_dict``).
        epsilon: IRRA's ε.
        chunk_size: see :func:`sdm_loss`.
        gather: see :func:`sdm_loss` (global SDM across ``torch.distributed`` ranks).
        check_finite: see :func:`sdm_loss`.
        compiled: see :func:`sdm_loss` (the ``torch.compile``-d one-block kernel).

    ``forward`` and :meth:`detailed` also accept ``logit_scale=`` to override the stored one per
    call (e.g. a learnable scale that lives in the model, as in IRRA). Use :meth:`detailed` for
    the full :class:`SDMResult` (per-direction losses, row counts for ``PairCoverageMeter``).

    Example:
        >>> import torch
        >>> from sdmreid.losses import SDMLoss
        >>> g = torch.Generator().manual_seed(0)
        >>> crit = SDMLoss(logit_scale=50.0)
        >>> q, x = torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g)
        >>> pids = torch.tensor([3, 3, 7, 7, 9, 9])
        >>> loss = crit(q, x, pids)
        >>> loss.shape, loss.dtype
        (torch.Size([]), torch.float32)
        >>> res = crit.detailed(q, x, pids, memory=(torch.randn(5, 32, generator=g),
        ...                                         torch.tensor([3, 1, 2, 2, 9])))
        >>> res.rows, int(res.rows_without_positive)
        (12, 0)
    """

    logit_scale: float | Tensor

    def __init__(
        self,
        logit_scale: float | Tensor = 50.0,
        epsilon: float = 1e-8,
        chunk_size: int | None = None,
        gather: bool = False,
        *,
        check_finite: bool = True,
        compiled: bool = False,
    ) -> None:
        super().__init__()
        checked = _check_scale(logit_scale)
        if isinstance(checked, Tensor) and not isinstance(logit_scale, nn.Parameter):
            self.register_buffer("logit_scale", checked.detach().clone())
        else:
            self.logit_scale = logit_scale if isinstance(logit_scale, nn.Parameter) else checked
        _check_options(epsilon, chunk_size, bool(compiled))
        self.epsilon = float(epsilon)
        self.chunk_size = chunk_size
        self.gather = bool(gather)
        self.check_finite = bool(check_finite)
        self.compiled = bool(compiled)

    def detailed(
        self,
        query: Tensor,
        gallery: Tensor,
        query_labels: Tensor,
        gallery_labels: Tensor | None = None,
        memory: MemoryLike = None,
        *,
        logit_scale: float | Tensor | None = None,
    ) -> SDMResult:
        """Like ``forward`` but returns the full :class:`SDMResult`."""
        return sdm_loss(
            query,
            gallery,
            query_labels,
            gallery_labels,
            memory,
            logit_scale=self.logit_scale if logit_scale is None else logit_scale,
            epsilon=self.epsilon,
            chunk_size=self.chunk_size,
            gather=self.gather,
            check_finite=self.check_finite,
            compiled=self.compiled,
        )

    def forward(
        self,
        query: Tensor,
        gallery: Tensor,
        query_labels: Tensor,
        gallery_labels: Tensor | None = None,
        memory: MemoryLike = None,
        *,
        logit_scale: float | Tensor | None = None,
    ) -> Tensor:
        """Scalar SDM loss (see :func:`sdm_loss`)."""
        return self.detailed(
            query, gallery, query_labels, gallery_labels, memory, logit_scale=logit_scale
        ).loss

    def extra_repr(self) -> str:
        scale = (
            f"{self.logit_scale:g}"
            if isinstance(self.logit_scale, float)
            else f"tensor({float(self.logit_scale.detach()):g})"
        )
        return (
            f"logit_scale={scale}, epsilon={self.epsilon:g}, chunk_size={self.chunk_size}, "
            f"gather={self.gather}" + (", compiled=True" if self.compiled else "")
        )
