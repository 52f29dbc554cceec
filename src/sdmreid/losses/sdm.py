r"""Similarity distribution matching (SDM) loss, as in IRRA, for cross-modal ReID batches.

SDM turns every similarity row into a softmax over the other side's items and pulls it toward the
uniform distribution over that row's same-identity items. Two forms of "pulls toward" exist in
practice, and both are options of the one formula below.

For one direction with rows :math:`r_i` and columns :math:`c_j`:

.. math::

    \log p_{ij} &= \operatorname{log\_softmax}_j\bigl(s \cdot \cos(r_i, c_j)\bigr), \qquad
    k_i = \#\{j : y^r_i = y^c_j\}, \qquad q_{ij} = [y^r_i = y^c_j] / k_i, \\
    L^{\text{kl}}_i &= \sum_j p_{ij}\,\bigl(\log p_{ij} - \log(q_{ij} + \varepsilon)\bigr),
    \qquad L^{\text{ce}}_i = -\sum_j q_{ij} \log p_{ij}, \\
    \mathcal{L}_{\text{dir}} &= \frac{1}{|V|} \sum_{i \in V} L_i, \quad V = \{i : k_i > 0\}.

``objective="kl"`` (the default) is IRRA's KL divergence with ε = 1e-8; ``objective="ce"`` is the
cross-entropy form of the PRCV 2025 seed pipeline. The loss is
:math:`\mathcal{L} = \mathcal{L}_{q \to g} + \mathcal{L}_{g \to q}` (``directions="sum"``, IRRA)
or half of it (``directions="mean"``, the seed pipeline): query → gallery has the ``B`` queries
as rows and the ``N`` gallery items followed by the ``M`` (detached) memory items as columns;
gallery → query is the same function on the transposed problem (memory items are never rows).
On a square batch in which every row has a positive, ``kl``/``sum`` is IRRA's ``compute_sdm``
(``logit_scale`` = IRRA's ``1 / temperature``). Rows without a positive (where IRRA divides by
zero) are left out of their direction's mean and counted; a direction without any valid row
contributes an exact ``0`` that stays attached to the graph.

The code is that formula, differentiated by autograd: :func:`_direction` is one direction, and
:func:`_two_directions` calls it on the logits block and on its transpose. ``chunk_size`` runs each
direction over its own rows a chunk at a time and recomputes each chunk in the backward pass
(:func:`torch.utils.checkpoint.checkpoint`); ``compiled`` runs :func:`_two_directions` under
:func:`torch.compile`. :mod:`sdmreid.losses.per_modality` builds per-query-modality SDM on the
same :func:`_direction`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sdmreid._validation import check_bool, check_has_data, int64_array
from sdmreid.distributed import (
    agree_or_raise,
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum,
    get_world_size,
    is_dist,
)

__all__ = [
    "CompileMode",
    "Directions",
    "MemoryLike",
    "Objective",
    "SDMLoss",
    "SDMResult",
    "sdm_loss",
]

#: What ``memory`` accepts: ``None``, a ``MemoryView`` (``features, labels, modalities``) or a
#: ``(features [M, d], labels [M])`` tuple; the first two items are read.
MemoryLike = tuple[Tensor, ...] | list[Tensor] | None
#: ``compiled=``: ``False`` (eager), ``True`` (= ``"default"``) or a ``torch.compile`` mode.
CompileMode = bool | Literal["default", "reduce-overhead"]
_COMPILE_MODES = ("default", "reduce-overhead")
#: ``objective=``: ``"kl"`` (IRRA's KL divergence) or ``"ce"`` (the seed pipeline's cross-entropy).
Objective = Literal["kl", "ce"]
#: ``directions=``: ``"sum"`` (IRRA: both directions added) or ``"mean"`` (their average).
Directions = Literal["sum", "mean"]
_OBJECTIVES = ("kl", "ce")
_DIRECTIONS = ("sum", "mean")


@dataclass(frozen=True)
class SDMResult:
    """Everything :func:`sdm_loss` computes, for the optimiser and for monitoring.

    Every field is a 0-dim tensor on the input device. Counts are int64 tensors rather than Python
    ints so that nothing here reads the device: a ``PairCoverageMeter`` accumulates them on the
    device, and one read at a logging step (:meth:`scalars`) brings everything to the host.

    Attributes:
        loss: total loss, attached to the graph; float32 (float64 for float64 inputs).
        loss_query_to_gallery: query → gallery term (detached; for logging).
        loss_gallery_to_query: gallery → query term (detached; for logging).
        rows: ``B + N``: query rows plus gallery rows (memory items are columns only); under
            ``gather=True`` this rank's rows.
        rows_without_positive: how many of ``rows`` have no same-label column (left out).
        query_rows: ``B``.
        gallery_rows: ``N``.
        query_rows_without_positive: queries without a positive in gallery + memory.
        gallery_rows_without_positive: gallery items without a positive query.
        positive_mass_query_to_gallery: mean over valid query rows of the softmax mass on positive
            columns (1.0 = all mass on positives; 0 without valid rows).
        positive_mass_gallery_to_query: the same for gallery → query.
        finite: bool, False when a feature (query, gallery, memory) or ``logit_scale`` is NaN/Inf.

    Example:
        >>> import torch
        >>> from sdmreid.losses import sdm_loss
        >>> g = torch.Generator().manual_seed(0)
        >>> q, x = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
        >>> r = sdm_loss(q, x, torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 3]))
        >>> int(r.rows), int(r.rows_without_positive), bool(r.finite)
        (8, 2, True)
    """

    loss: Tensor
    loss_query_to_gallery: Tensor
    loss_gallery_to_query: Tensor
    rows: Tensor
    rows_without_positive: Tensor
    query_rows: Tensor
    gallery_rows: Tensor
    query_rows_without_positive: Tensor
    gallery_rows_without_positive: Tensor
    positive_mass_query_to_gallery: Tensor
    positive_mass_gallery_to_query: Tensor
    finite: Tensor

    def scalars(self) -> dict[str, float]:
        """Every field as a Python float, in one read from the device (for loggers)."""
        names = [f.name for f in fields(self)]
        values = torch.stack([getattr(self, n).detach().to(torch.float64) for n in names])
        return dict(zip(names, values.tolist(), strict=True))


# ----------------------------------------------------------------------------------------------
# the formula
# ----------------------------------------------------------------------------------------------


class _Rows(NamedTuple):
    """Per row (``[R]``), or per row and column group (``[R, G]``)."""

    loss: Tensor  # L_i
    mass: Tensor  # Σ_{j positive} p_ij
    valid: Tensor  # k_i > 0


def _direction(
    logits: Tensor,
    positive: Tensor,
    epsilon: float,
    objective: str = "kl",
    group: Tensor | None = None,
    num_groups: int = 1,
) -> _Rows:
    """One direction: row ``i`` is a softmax over the columns of ``logits[i] = s · cos(r_i, ·)``.

    ``positive[i, j]`` says that column ``j`` has row ``i``'s label; ``q_ij = 1/k_i`` on those
    ``k_i`` columns and 0 elsewhere. ``"kl"`` is IRRA's ``Σ_j p_j (log p_j − log(q_j + ε))``, with
    ``Σ_j p_j log(q_j + ε)`` read off the positive mass, so no block-sized target is formed.
    ``"ce"`` is the seed pipeline's ``−Σ_j q_j log p_j = −(1/k) Σ_pos log p_j`` (no ε).

    ``group`` (``[C]`` integers) splits the columns: each row then has one softmax per group
    ``0 .. num_groups - 1``, over that group's columns (a column of group ``-1`` is in none), and
    each ``[R]`` result becomes ``[R, num_groups]``. The formula is the same; only the sum over a
    softmax's columns changes, from a row sum to a product with the groups' one-hot matrix.
    """
    if group is None:
        log_p = torch.log_softmax(logits, dim=-1)  # subtracts the row maximum

        def total(t: Tensor) -> Tensor:  # Σ_j over the row's softmax
            return t.sum(-1)
    else:
        log_p, one_hot = _grouped_log_softmax(logits, group, num_groups)

        def total(t: Tensor) -> Tensor:  # Σ_j over each group's softmax
            return t.to(one_hot.dtype) @ one_hot

    p = log_p.exp()
    k = total(positive)
    mass = total(torch.where(positive, p, 0.0))
    if objective == "ce":
        loss = -total(torch.where(positive, log_p, 0.0)) / k.clamp(min=1).to(p.dtype)
    else:
        log_q_pos = torch.log(k.clamp(min=1).to(p.dtype).reciprocal() + epsilon)
        cross = mass * log_q_pos + (1 - mass) * math.log(epsilon)
        loss = total(p * log_p) - cross
    return _Rows(loss, mass, k > 0)


def _grouped_log_softmax(logits: Tensor, group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """``log_softmax`` of each row of ``[R, C]`` logits within each column group, and the groups'
    ``[C, num_groups]`` one-hot matrix.

    Like :func:`torch.log_softmax`, each (row, group) maximum is subtracted before ``exp``. The
    columns of group ``-1`` get a softmax of their own (finite values that the one-hot matrix
    leaves out of every sum).
    """
    slot = torch.where(group >= 0, group, num_groups)  # [C]: group -1 → an extra slot
    slots = slot.expand_as(logits)
    one_hot = (slot[:, None] == torch.arange(num_groups + 1, device=slot.device)).to(logits.dtype)
    lowest = torch.finfo(logits.dtype).min
    top = logits.new_full((logits.shape[0], num_groups + 1), lowest)
    top = top.scatter_reduce(1, slots, logits.detach(), "amax")  # [R, G + 1]
    sums = torch.exp(logits - top.gather(1, slots)) @ one_hot  # >= 1 for a non-empty group
    # the clamp keeps an empty group's log (never read) finite, and so its zero gradient
    log_sum = torch.log(sums.clamp(min=torch.finfo(sums.dtype).tiny)) + top
    return logits - log_sum.gather(1, slots), one_hot[:, :num_groups]


def _logits(
    rows: Tensor, rows_inv: Tensor, columns: list[tuple[Tensor, Tensor]], scale: Tensor
) -> Tensor:
    """``s · cos(rows_i, cols_j) = rows_i · cols_j · (s / ‖rows_i‖) · (1 / ‖cols_j‖)``.

    ``columns`` are ``(features, inverse norms)`` parts, multiplied apart so that no gradient is
    computed for a constant part (the memory). Working from the raw features and inverse norms
    makes no normalised copy of the features (at ReID sizes ``[R, C]`` is smaller than ``[C, d]``).
    """
    dots = torch.cat([rows @ c.T for c, _ in columns], dim=1)
    cols_inv = torch.cat([c_inv for _, c_inv in columns])
    return dots * (scale * rows_inv)[:, None] * cols_inv[None, :]


def _rows_vs(
    rows: Tensor,
    rows_inv: Tensor,
    row_labels: Tensor,
    columns: list[tuple[Tensor, Tensor]],
    col_labels: Tensor,
    scale: Tensor,
    epsilon: float,
    objective: str,
) -> _Rows:
    """:func:`_direction` of ``rows`` against ``columns``."""
    logits = _logits(rows, rows_inv, columns, scale)
    return _direction(logits, row_labels[:, None] == col_labels[None, :], epsilon, objective)


def _chunked(
    rows: Tensor,
    rows_inv: Tensor,
    row_labels: Tensor,
    columns: list[tuple[Tensor, Tensor]],
    col_labels: Tensor,
    scale: Tensor,
    epsilon: float,
    objective: str,
    chunk_size: int,
) -> _Rows:
    """:func:`_rows_vs`, ``chunk_size`` rows at a time, each chunk recomputed in backward."""
    split = [torch.split(x, chunk_size) for x in (rows, rows_inv, row_labels)]
    parts = [
        checkpoint(_rows_vs, r, r_inv, r_lab, columns, col_labels, scale, epsilon, objective,
                   use_reentrant=False, preserve_rng_state=False)
        for r, r_inv, r_lab in zip(*split, strict=True)
    ]  # fmt: skip
    return _Rows(*(torch.cat(x) for x in zip(*parts, strict=True)))


def _combine(l1: Tensor, l2: Tensor, directions: str) -> Tensor:
    """The two directions' losses added (``"sum"``, IRRA) or averaged (``"mean"``)."""
    return 0.5 * (l1 + l2) if directions == "mean" else l1 + l2


def _valid_sums(r: _Rows) -> tuple[Tensor, Tensor, Tensor]:
    """Sums of the row losses and positive masses over valid rows, and the number of those."""
    return (
        torch.where(r.valid, r.loss, 0.0).sum(),
        torch.where(r.valid, r.mass, 0.0).sum().detach(),
        r.valid.sum(),
    )


class _Out(NamedTuple):
    loss: Tensor
    l1: Tensor
    l2: Tensor
    mass1: Tensor
    mass2: Tensor
    missing1: Tensor
    missing2: Tensor
    finite: Tensor


def _norms(scale: Tensor, *features: Tensor) -> tuple[list[Tensor], Tensor]:
    """Inverse row norms (clamped like :func:`torch.nn.functional.normalize`) of each of
    ``features``, and whether they and ``scale`` are all finite (a row's 2-norm is finite iff its
    entries are, barring overflow, and needs no temporary of the features' size)."""
    norms = [torch.linalg.vector_norm(x, dim=1) for x in features]
    finite = torch.isfinite(torch.cat([*norms, scale.reshape(1)]).detach()).all()
    return [x.clamp_min(1e-12).reciprocal() for x in norms], finite


def _two_directions(
    q: Tensor,
    g: Tensor,
    m: Tensor,
    ql: Tensor,
    gl: Tensor,
    ml: Tensor,
    scale: Tensor,
    epsilon: float,
    objective: str,
    directions: str,
    chunk_size: int | None = None,
) -> _Out:
    """SDM of ``q`` against ``[g; m]`` in one process (the body that ``compiled`` compiles)."""
    n = g.shape[0]
    (iq, ig, im), finite = _norms(scale, q, g, m)
    cl = torch.cat([gl, ml])
    if chunk_size is None:  # one block: query → gallery on it, gallery → query on its transpose
        logits = _logits(q, iq, [(g, ig), (m, im)], scale)
        positive = ql[:, None] == cl[None, :]
        r1 = _direction(logits, positive, epsilon, objective)
        r2 = _direction(logits[:, :n].T, positive[:, :n].T, epsilon, objective)
    else:
        r1 = _chunked(q, iq, ql, [(g, ig), (m, im)], cl, scale, epsilon, objective, chunk_size)
        r2 = _chunked(g, ig, gl, [(q, iq)], ql, scale, epsilon, objective, chunk_size)
    (s1, mass1, n1), (s2, mass2, n2) = _valid_sums(r1), _valid_sums(r2)
    l1, l2 = s1 / n1.clamp(min=1), s2 / n2.clamp(min=1)
    mass1, mass2 = mass1 / n1.clamp(min=1), mass2 / n2.clamp(min=1)
    b = q.shape[0]
    return _Out(_combine(l1, l2, directions), l1, l2, mass1, mass2, b - n1, n - n2, finite)


def _gathered(
    q: Tensor,
    g: Tensor,
    m: Tensor,
    ql: Tensor,
    gl: Tensor,
    ml: Tensor,
    scale: Tensor,
    epsilon: float,
    objective: str,
    directions: str,
    chunk_size: int | None,
) -> _Out:
    """Global SDM under ``torch.distributed``: this rank's queries against every rank's gallery
    (+ this rank's memory), this rank's gallery against every rank's queries.

    Value: the SDM of the concatenated batch. Gradient: ``world ×`` this rank's share, so that
    DDP's averaging of parameter gradients gives the single-process gradient.
    """
    world = get_world_size()
    q_all, g_all = all_gather_with_grad(q), all_gather_with_grad(g)
    ql_all, gl_all = all_gather_no_grad(ql), all_gather_no_grad(gl)
    (iq, ig, im), finite = _norms(scale, q, g, m)
    (iq_all, ig_all), _ = _norms(scale, q_all, g_all)
    cl = torch.cat([gl_all, ml])
    if chunk_size is None:
        r1 = _rows_vs(q, iq, ql, [(g_all, ig_all), (m, im)], cl, scale, epsilon, objective)
        r2 = _rows_vs(g, ig, gl, [(q_all, iq_all)], ql_all, scale, epsilon, objective)
    else:
        cols = [(g_all, ig_all), (m, im)]
        r1 = _chunked(q, iq, ql, cols, cl, scale, epsilon, objective, chunk_size)
        r2 = _chunked(g, ig, gl, [(q_all, iq_all)], ql_all, scale, epsilon, objective, chunk_size)
    (s1, mass1, n1), (s2, mass2, n2) = _valid_sums(r1), _valid_sums(r2)
    total = all_reduce_sum(torch.stack([n1, n2])).clamp(min=1)  # valid rows of every rank
    l1, l2 = s1 / total[0], s2 / total[1]  # this rank's share of each mean
    # the last entry counts the ranks with a non-finite input: the flag covers every rank
    value = all_reduce_sum(
        torch.stack([l1, l2, mass1 / total[0], mass2 / total[1], (~finite).to(l1.dtype)]).detach()
    )
    local = world * _combine(l1, l2, directions)
    loss = local + (_combine(value[0], value[1], directions) - local).detach()
    missing1, missing2 = q.shape[0] - n1, g.shape[0] - n2
    return _Out(loss, value[0], value[1], value[2], value[3], missing1, missing2, value[4] == 0)


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------

_compile_lock = threading.Lock()
# one compiled callable per (body, mode): sdm_loss's body and per-modality SDM's body
_compiled: dict[tuple[str, str], Callable[..., Any]] = {}
_compile_failed: set[tuple[str, str]] = set()
_OutT = TypeVar("_OutT", bound=tuple[Tensor, ...])


def _run_compiled(
    body: Callable[..., _OutT], mode: str, *args: Any, caller: str = "sdm_loss"
) -> _OutT:
    """``body`` (e.g. :func:`_two_directions`) under ``torch.compile(mode=mode)``, compiled
    on first use. If compilation fails, one ``RuntimeWarning`` says why and this and later calls
    of that body and mode run eagerly (running out of device memory is raised as is)."""
    key = (body.__name__, mode)
    if key not in _compile_failed:
        with _compile_lock:
            if key not in _compiled:
                # Default shape handling: the first sizes get a static graph (the fastest at a
                # fixed batch composition); once a size changes, one dynamic-shape graph serves
                # every later size, so varying batches compile twice, not once per size.
                _compiled[key] = torch.compile(body, mode=mode)
        try:
            out: _OutT = _compiled[key](*args)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            _compile_failed.add(key)
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            warnings.warn(
                f"{caller}(compiled={mode!r}): torch.compile failed ({type(exc).__name__}: "
                f"{first_line}); running the same computation uncompiled",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            if mode == "reduce-overhead":  # a CUDA graph's outputs are reused by its next replay
                return type(out)(out[0], *(x.clone() for x in out[1:]))
            return out
    return body(*args)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _check_features(x: object, name: str, *, dim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [n, d], got {type(x).__name__}")
    check_has_data(x, name)
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
        check_has_data(t, name)
    else:
        arr = int64_array(y, name)  # refuses integers beyond int64 by name
        try:
            t = torch.as_tensor(arr)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a 1-D integer tensor or array, got {y!r}") from exc
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer labels, got dtype {t.dtype}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} labels, but its features have {n} rows")
    return t.to(device=device, dtype=torch.int64)


def _check_scale(logit_scale: object) -> float | Tensor:
    """A float must be finite and > 0; so must a tensor on the CPU (reading it costs nothing
    there). A device tensor's value is checked by ``on_nonfinite="raise"``'s one read."""
    if isinstance(logit_scale, Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(
                "logit_scale must be a float or a 0-dim tensor, got shape "
                f"{tuple(logit_scale.shape)}"
            )
        if not logit_scale.is_floating_point():
            raise ValueError(f"logit_scale tensor must be floating point, got {logit_scale.dtype}")
        check_has_data(logit_scale, "logit_scale")
        if logit_scale.device.type == "cpu":
            _check_scale(float(logit_scale.detach()))
        return logit_scale.reshape(())
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)):
        raise TypeError(f"logit_scale must be a float or a 0-dim tensor, got {logit_scale!r}")
    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be finite and > 0, got {logit_scale}")
    return float(logit_scale)


def _check_scale_fits(scale: float | Tensor, dtype: torch.dtype) -> None:
    """A float or CPU-tensor scale must be a positive normal number of the compute dtype (a
    larger one would turn into Inf there). A device tensor is left to ``on_nonfinite``."""
    if isinstance(scale, Tensor):
        if scale.device.type != "cpu":
            return
        value = float(scale.detach())
    else:
        value = scale
    info = torch.finfo(dtype)
    if not info.tiny <= value <= info.max:
        raise ValueError(
            f"logit_scale {value:g} is not representable in {dtype}, the compute dtype of these "
            f"features: it must lie in [{info.tiny:g}, {info.max:g}]"
        )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` must be one of the strings ``choices`` (``TypeError`` for another type)."""
    spelled = " or ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {spelled} (a str), got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be {spelled}, got {value!r}")
    return value


def _check_form(objective: object, directions: object) -> None:
    """``objective`` and ``directions`` name one of the loss forms."""
    _check_choice("objective", objective, _OBJECTIVES)
    _check_choice("directions", directions, _DIRECTIONS)


def _check_options(
    epsilon: object,
    chunk_size: object,
    on_nonfinite: object,
    compiled: object,
    gather: object,
    objective: object = "kl",
    directions: object = "sum",
) -> str | None:
    """Validate the options; return the compile mode (``None``: eager)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a float, got {epsilon!r}")
    # epsilon smooths the target q in log(q + epsilon), q in [0, 1]: from 1 on, the target's
    # zeros no longer dominate (and a huge value overflows the compute dtype)
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    check_bool("gather", gather)
    _check_form(objective, directions)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    if not isinstance(on_nonfinite, str):
        raise TypeError(
            f"on_nonfinite must be 'raise' or 'ignore' (a str), got {type(on_nonfinite).__name__}"
        )
    if on_nonfinite not in ("raise", "ignore"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'ignore', got {on_nonfinite!r}")
    if not isinstance(compiled, (bool, str)):
        raise TypeError(f"compiled must be a bool or a compile mode, got {compiled!r}")
    if isinstance(compiled, str) and compiled not in _COMPILE_MODES:
        raise ValueError(f"compiled must be a bool or one of {_COMPILE_MODES}, got {compiled!r}")
    mode = "default" if compiled is True else (compiled or None)
    if mode is not None and chunk_size is not None:
        raise ValueError(
            "chunk_size and compiled exclude each other: the compiled body forms the whole "
            "similarity block; pass chunk_size=None or compiled=False"
        )
    return mode


def _memory(memory: object, d: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """``(features, labels)`` of a non-empty memory, or ``None``."""
    if memory is None:
        return None
    if not isinstance(memory, (tuple, list)) or len(memory) not in (2, 3):
        raise TypeError(
            "memory must be None, a MemoryView or a (features [M, d], labels [M]) tuple, "
            f"got {type(memory).__name__}"
        )
    feats, labels = memory[0], memory[1]
    if not isinstance(feats, Tensor):
        raise TypeError(f"memory features must be a torch.Tensor, got {type(feats).__name__}")
    if feats.numel() == 0 and not (feats.dim() == 2 and feats.shape[0] > 0):
        return None  # an empty memory, whatever its shape, device or dtype
    feats = _check_features(feats, "memory features", dim=d).detach().to(device)
    return feats, _check_labels(labels, "memory labels", feats.shape[0], device)


def _nonfinite_problem(scale: Tensor, sides: dict[str, Tensor]) -> str:
    """What is not finite (reads the device; only called once something is known to be)."""
    if not (math.isfinite(float(scale)) and float(scale) > 0):
        return f"logit_scale must be finite and > 0, got {float(scale)}"
    for name, x in sides.items():
        if not bool(torch.isfinite(torch.linalg.vector_norm(x.detach(), dim=1)).all()):
            return f"{name} contains NaN or Inf values (or values whose norm overflows)"
    return "the inputs are not finite"


def _raise_if_bad(out: _Out, scale: Tensor, sides: dict[str, Tensor]) -> None:
    """``on_nonfinite="raise"``: one read of the device, then a precise message if needed."""
    if bool(out.finite & (scale > 0)):
        return
    raise ValueError(_nonfinite_problem(scale, sides))


class _Checked(NamedTuple):
    """The validated arguments of :func:`sdm_loss`, converted to the compute dtype."""

    q: Tensor
    g: Tensor
    m: Tensor
    ql: Tensor
    gl: Tensor
    ml: Tensor
    scale: Tensor
    mode: str | None


def _checked(
    query: object,
    gallery: object,
    query_labels: object,
    gallery_labels: object,
    memory: object,
    logit_scale: object,
    epsilon: object,
    chunk_size: object,
    on_nonfinite: object,
    compiled: object,
    gather: object,
    objective: object = "kl",
    directions: object = "sum",
) -> _Checked:
    """Validate every argument of :func:`sdm_loss` (raising before any computation)."""
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
    mode = _check_options(
        epsilon, chunk_size, on_nonfinite, compiled, gather, objective, directions
    )
    mem = _memory(memory, d, dev)
    cdt = torch.float64 if torch.float64 in (q.dtype, g.dtype) else torch.float32
    _check_scale_fits(scale, cdt)
    with _no_autocast(dev):
        if isinstance(scale, Tensor):
            s = scale.to(device=dev, dtype=cdt)
        else:
            s = torch.full((), scale, device=dev, dtype=cdt)  # a fill: no host-to-device copy
        return _Checked(
            q.to(cdt),
            g.to(cdt),
            mem[0].to(cdt) if mem is not None else q.new_zeros((0, d), dtype=cdt),
            ql,
            gl,
            mem[1] if mem is not None else ql.new_zeros(0),
            s,
            mode,
        )


def _checked_on_every_rank(*args: Any) -> _Checked:
    """:func:`_checked` under ``gather=True`` with a process group: the ranks agree that each
    of them passed, has the same feature dimension and compute dtype, and (under
    ``on_nonfinite="raise"``) finite inputs, before the gather; otherwise every rank raises the
    same error. One small all-gather (and one host read of it) per call."""
    try:
        c = _checked(*args)
    except Exception as exc:
        agree_or_raise(
            "sdm_loss(gather=True)",
            exc,
            sizes=[("feature dimension", None)],
            dtypes=[("compute dtype", None)],
        )
        raise  # agree_or_raise raised already; this keeps the type checker informed
    on_nonfinite = args[8]
    nonfinite = None
    if on_nonfinite == "raise":
        _, finite = _norms(c.scale, c.q, c.g, c.m)
        nonfinite = ~(finite & (c.scale > 0))
    sides = {"query": c.q, "gallery": c.g, "memory features": c.m}
    agree_or_raise(
        "sdm_loss(gather=True)",
        None,
        sizes=[("feature dimension", c.q.shape[1])],
        dtypes=[("compute dtype", c.q.dtype)],
        nonfinite=nonfinite,
        nonfinite_message=lambda: _nonfinite_problem(c.scale, sides),
    )
    return c


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type in ("cpu", "cuda", "xpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


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
    on_nonfinite: Literal["raise", "ignore"] = "raise",
    compiled: CompileMode = False,
    objective: Objective = "kl",
    directions: Directions = "sum",
) -> SDMResult:
    r"""SDM loss between a query side and a gallery side (plus optional memory columns).

    .. math::

        \mathcal{L} = c \Bigl(\frac{1}{|V_q|}\sum_{i \in V_q} L\bigl(p^{q\to g}_i,
        q^{q\to g}_i\bigr) + \frac{1}{|V_g|}\sum_{j \in V_g} L\bigl(
        p^{g\to q}_j, q^{g\to q}_j\bigr)\Bigr)

    with :math:`p_i = \operatorname{softmax}(s\cdot\cos(\text{row}_i, \text{columns}))`,
    :math:`q_i` the uniform distribution over row ``i``'s same-label columns, :math:`V` the rows
    that have one, :math:`L` IRRA's :math:`\mathrm{KL}(p\|q) = \sum_j p_j(\log p_j - \log(q_j +
    \varepsilon))` (``objective="kl"``) or the cross-entropy :math:`-\sum_j q_j \log p_j`
    (``objective="ce"``), and :math:`c = 1` (``directions="sum"``) or :math:`1/2`
    (``directions="mean"``). Computed in float32 (float64 for float64 inputs) with autocast
    disabled.

    Typical magnitudes, which is what a weight or a threshold on this loss is tuned against: the
    KL form is about :math:`-\log\varepsilon \approx 18.4` times the softmax mass on negative
    columns (so close to 18.4 per direction at the start of training), the cross-entropy form
    about :math:`\ln(\#\text{columns})` at the start. The seed pipeline's weights (0.1/0.3/0.5)
    and thresholds (SDM 1.6–2.2 normal, warn above 1.5, roll back above 5) assume
    ``objective="ce", directions="mean"``; on its 16-row square batch at scale 5 the default
    ``"kl"``/``"sum"`` value is about 10× larger.

    Args:
        query: ``[B, d]`` features (any float dtype; normalised inside).
        gallery: ``[N, d]`` features on the same device; ``N`` may differ from ``B``.
        query_labels: ``[B]`` integer identity labels (on the features' device, or they are
            copied there, which waits for the device).
        gallery_labels: ``[N]`` integer labels; ``None`` means ``query_labels`` (needs ``N == B``,
            the square IRRA case).
        memory: ``None``, a ``MemoryView`` (``memory.view()``) or a ``(features [M, d],
            labels [M])`` tuple: extra query → gallery columns, treated as constants. An empty
            memory (``M == 0``) is ignored whatever its device or dtype.
        logit_scale: ``s`` (IRRA: ``1 / temperature``); a positive float or a 0-dim tensor, which
            receives a gradient when it requires one. A float or CPU tensor is checked at once
            (finite, > 0 and representable in the compute dtype: at most about 3.4e38 for
            float32); a device tensor by ``on_nonfinite="raise"``'s read.
        epsilon: IRRA's ε inside ``log(q + ε)``; must lie in ``(0, 1)`` (it smooths a target
            whose entries lie in ``[0, 1]``). Checked but unused by ``objective="ce"``.
        chunk_size: run each direction over ``chunk_size`` of its rows at a time, recomputing
            each chunk in the backward pass: peak extra memory ``O(chunk_size · (N + M))``
            instead of ``O(B · (N + M))``, same value and gradients. It costs time (the two
            directions stop sharing one block, and each chunk's forward pass runs twice): a
            memory option. ``None``: one block.
        gather: under an initialised ``torch.distributed`` group, compute the global SDM of the
            concatenated batch (every rank's queries against every rank's gallery). ``loss``
            equals single-process SDM on the concatenation on every rank; its gradient is
            ``world_size`` × this rank's share, so after DDP's gradient averaging the parameter
            gradients equal the single-process ones. ``memory`` is used as given on each rank;
            the counts in the result are this rank's, ``finite`` covers every rank's inputs.
            Before the gather, one small all-gather of each rank's status (and a host read of
            it, also under ``on_nonfinite="ignore"``; the gather itself reads the row counts
            anyway) makes the ranks agree that every rank's arguments are valid, that they
            share the feature dimension and compute dtype, and (``on_nonfinite="raise"``) that
            every rank's inputs are finite; if not, every rank raises the same error naming the
            ranks and reasons, and no rank is left waiting in a collective. Must be a bool.
            Without a process group it does nothing.
        on_nonfinite: ``"raise"``: one read of the device per call (a synchronisation on CUDA)
            checks that the features and ``logit_scale`` are finite (and a device
            ``logit_scale`` > 0), else ``ValueError``. ``"ignore"``: no read at all; the result's
            ``finite`` flag says whether they were, for a logging step to read.
        compiled: ``False``: eager. ``True`` or ``"default"``: the two-direction body under
            ``torch.compile`` (fused kernels around the matrix products). ``"reduce-overhead"``:
            the same with CUDA graphs on a GPU (launch overhead removed; combine with
            ``on_nonfinite="ignore"``, which keeps host reads out of the step). Same value and
            gradients up to rounding. Each new input signature compiles on its first call; if
            compilation fails, one ``RuntimeWarning`` says why and the eager path runs. Not with
            ``chunk_size``; with ``gather`` under a process group the eager path runs.
        objective: ``"kl"`` (IRRA's KL divergence, the default) or ``"ce"`` (the seed
            pipeline's cross-entropy :math:`-\sum_j q_j \log p_j`).
        directions: ``"sum"`` (IRRA: the two directions added, the default) or ``"mean"`` (the
            seed pipeline: averaged). ``loss_query_to_gallery`` and ``loss_gallery_to_query``
            are each direction's mean either way.

    Returns:
        An :class:`SDMResult`; ``result.loss`` is the scalar to optimise.

    Raises:
        ValueError: non-2-D or empty features, mismatched dimensions or devices, label length
            mismatch, non-integer labels or Python integers beyond int64, a tensor on the
            ``meta`` device, NaN/Inf features (``on_nonfinite="raise"``), bad
            ``logit_scale``/``epsilon``/``chunk_size``/``on_nonfinite``/``compiled``/
            ``objective``/``directions``; under
            ``gather=True`` any of these on any rank, or ranks that disagree on the feature
            dimension or compute dtype (raised on every rank).
        TypeError: arguments of the wrong type (``gather`` not a bool, ``on_nonfinite``,
            ``objective`` or ``directions`` not a str, ...).

    Example:
        >>> import torch
        >>> from sdmreid.losses import sdm_loss
        >>> g = torch.Generator().manual_seed(0)
        >>> img = torch.randn(4, 16, generator=g, requires_grad=True)
        >>> txt = torch.randn(4, 16, generator=g)
        >>> pids = torch.tensor([0, 0, 1, 1])
        >>> res = sdm_loss(img, txt, pids, logit_scale=50.0)
        >>> res.loss.backward()
        >>> int(res.rows), int(res.rows_without_positive), img.grad.shape
        (8, 0, torch.Size([4, 16]))

        The seed pipeline's form on the same batch: cross-entropy, directions averaged.

        >>> ce = sdm_loss(img, txt, pids, logit_scale=50.0, objective="ce", directions="mean")
        >>> bool(ce.loss < res.loss)
        True
    """
    args = (query, gallery, query_labels, gallery_labels, memory, logit_scale, epsilon,
            chunk_size, on_nonfinite, compiled, gather, objective, directions)  # fmt: skip
    distributed = check_bool("gather", gather) and is_dist()
    c = _checked_on_every_rank(*args) if distributed else _checked(*args)
    dev = c.q.device
    b, n = c.q.shape[0], c.g.shape[0]
    with _no_autocast(dev):
        body = (c.q, c.g, c.m, c.ql, c.gl, c.ml, c.scale, float(epsilon), objective, directions)
        if distributed:
            out = _gathered(*body, chunk_size)
        elif c.mode is not None:
            out = _run_compiled(_two_directions, c.mode, *body)
        else:
            out = _two_directions(*body, chunk_size)
    if on_nonfinite == "raise" and not distributed:  # (checked across ranks before the gather)
        _raise_if_bad(out, c.scale, {"query": c.q, "gallery": c.g, "memory features": c.m})

    def count(x: int) -> Tensor:
        return torch.full((), x, dtype=torch.int64, device=dev)

    return SDMResult(
        loss=out.loss,
        loss_query_to_gallery=out.l1.detach(),
        loss_gallery_to_query=out.l2.detach(),
        rows=count(b + n),
        rows_without_positive=out.missing1 + out.missing2,
        query_rows=count(b),
        gallery_rows=count(n),
        query_rows_without_positive=out.missing1,
        gallery_rows_without_positive=out.missing2,
        positive_mass_query_to_gallery=out.mass1,
        positive_mass_gallery_to_query=out.mass2,
        finite=out.finite,
    )


def _loaded_scale_problem(value: object, current: Tensor) -> str | None:
    """Why a checkpoint's ``logit_scale`` cannot replace ``current``, or ``None``."""
    if not isinstance(value, Tensor):
        return f"expected a tensor, got {type(value).__name__}"
    if value.shape != current.shape:
        return f"expected shape {tuple(current.shape)}, got {tuple(value.shape)}"
    if not value.is_floating_point():
        return f"expected a floating-point tensor, got dtype {value.dtype}"
    if value.is_meta:
        return "expected a tensor with values, got one on meta"
    as_stored = value.detach().to("cpu").to(current.dtype)  # a load may read the device
    if not (bool(torch.isfinite(as_stored).all()) and bool((as_stored > 0).all())):
        return (
            f"must be finite and > 0 as {current.dtype}, got {value.detach().cpu().tolist()} "
            f"({value.dtype})"
        )
    return None


class SDMLoss(nn.Module):
    """Module form of :func:`sdm_loss`; ``forward`` returns the scalar loss.

    Args:
        logit_scale: default ``s`` (IRRA's ``1 / temperature``). A float is stored as
            configuration; an ``nn.Parameter`` is registered (learnable); another tensor is
            registered as a buffer (saved in ``state_dict``). ``load_state_dict`` refuses a
            scale that is not finite and > 0 in the module's dtype (or has another shape, or
            an integer dtype) and leaves the module unchanged.
        epsilon: IRRA's ε.
        chunk_size: see :func:`sdm_loss`.
        gather: see :func:`sdm_loss` (global SDM across ``torch.distributed`` ranks).
        on_nonfinite: see :func:`sdm_loss` (``"raise"`` or ``"ignore"``).
        compiled: see :func:`sdm_loss` (``False``, ``True``, ``"default"``, ``"reduce-overhead"``).
        objective: see :func:`sdm_loss` (``"kl"``, IRRA's, or ``"ce"``, the seed pipeline's).
        directions: see :func:`sdm_loss` (``"sum"``, IRRA's, or ``"mean"``, the seed pipeline's).

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
        >>> int(res.rows), int(res.rows_without_positive)
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
        on_nonfinite: Literal["raise", "ignore"] = "raise",
        compiled: CompileMode = False,
        objective: Objective = "kl",
        directions: Directions = "sum",
    ) -> None:
        super().__init__()
        checked = _check_scale(logit_scale)
        if isinstance(checked, Tensor) and not isinstance(logit_scale, nn.Parameter):
            self.register_buffer("logit_scale", checked.detach().clone())
        else:
            self.logit_scale = logit_scale if isinstance(logit_scale, nn.Parameter) else checked
        _check_options(epsilon, chunk_size, on_nonfinite, compiled, gather, objective, directions)
        self.epsilon = float(epsilon)
        self.chunk_size = chunk_size
        self.gather = gather
        self.on_nonfinite: Literal["raise", "ignore"] = on_nonfinite
        self.compiled: CompileMode = compiled
        self.objective: Objective = objective
        self.directions: Directions = directions

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A tensor scale is checked like the constructor checks it, in this module's dtype,
        # before anything is copied: a refused checkpoint leaves the scale as it was.
        key = prefix + "logit_scale"
        if strict:  # torch would copy the scale first and refuse an unknown key afterwards
            mine = {key} if isinstance(self.logit_scale, Tensor) else set()
            unknown = [
                k
                for k in state_dict
                if k.startswith(prefix) and "." not in k[len(prefix) :] and k not in mine
            ]
            if unknown:
                unexpected_keys.extend(unknown)
                return
        if isinstance(self.logit_scale, Tensor) and key in state_dict:
            problem = _loaded_scale_problem(state_dict[key], self.logit_scale)
            if problem is not None:
                error_msgs.append(f"{key}: {problem}; nothing was loaded")
                return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

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
            on_nonfinite=self.on_nonfinite,
            compiled=self.compiled,
            objective=self.objective,
            directions=self.directions,
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
            f"gather={self.gather}, on_nonfinite={self.on_nonfinite!r}, "
            f"objective={self.objective!r}, directions={self.directions!r}"
            + (f", compiled={self.compiled!r}" if self.compiled else "")
        )
