r"""SDM per query modality: every query modality against the anchor modality, in one call.

A batch of the PRCV task mixes an anchor modality (the RGB gallery) with several query
modalities (NIR, sketch, colour pencil, text). :func:`sdm_per_modality` takes the whole batch
and computes, for each configured query modality :math:`m`,

.. math::

    \mathcal{L}_m = \operatorname{SDM}\bigl(\text{rows of } m,\ \text{anchor rows} + \text{memory}
    \bigr), \qquad \mathcal{L} = \sum_m \tilde w_m \mathcal{L}_m, \qquad
    \tilde w_m = \frac{w_m [V_m > 0]}{\sum_{m'} w_{m'} [V_{m'} > 0]},

where SDM is exactly :func:`~sdmreid.losses.sdm_loss` (either objective, either way of
combining the directions) and :math:`V_m` counts the valid rows (with a positive) of modality
:math:`m`'s call: a modality absent from the batch, or without any positive, contributes nothing
and the weights of the others renormalise. ``mode="pooled"`` instead puts every query row into
one softmax against the anchor rows (``sdm_loss`` on all configured query rows at once).

How it is computed, without any host read: row roles are masks, never indices, so no shape
depends on the data. One similarity block ``[batch rows, batch rows + memory]`` serves both
directions. Query → gallery is row-wise: each row's softmax runs over the anchor columns and
the memory, so the per-modality query → gallery terms are group means of the same row losses.
Gallery → query needs one softmax per anchor row *and* query modality: the same
:func:`~sdmreid.losses.sdm._direction` runs with the columns split into groups (one per query
modality), which gives every (row, modality) pair its own log-softmax on the one block (a
segmented log-sum-exp) instead of one block per modality. ``compiled=True`` runs the same body
under :func:`torch.compile`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from sdmreid._validation import check_bool, check_has_data
from sdmreid.distributed import (
    agree_or_raise,
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum,
    get_world_size,
    is_dist,
)
from sdmreid.losses.sdm import (
    CompileMode,
    Directions,
    MemoryLike,
    Objective,
    SDMResult,
    _check_choice,
    _check_features,
    _check_labels,
    _check_options,
    _check_scale,
    _check_scale_fits,
    _combine,
    _direction,
    _logits,
    _memory,
    _no_autocast,
    _nonfinite_problem,
    _norms,
    _run_compiled,
)
from sdmreid.modality import Modality, as_modality_tensor, parse_modality

__all__ = ["PerModalitySDMResult", "SDMMode", "sdm_per_modality"]

#: ``mode=``: one SDM per query modality (``"per_modality"``) or one over all (``"pooled"``).
SDMMode = Literal["per_modality", "pooled"]
_MODES = ("per_modality", "pooled")


@dataclass(frozen=True)
class PerModalitySDMResult:
    """What :func:`sdm_per_modality` computes: the loss, one :class:`SDMResult` per query
    modality and the batch's counts, every tensor on the input device (nothing read).

    The aggregated counts count each row once, whatever the mode: each query row of a
    configured modality and each anchor row; an anchor row is without a positive when no query
    row of any configured modality shares its label. They equal the counts of the pooled call,
    so a ``PairCoverageMeter`` reads the same coverage in both modes.

    Attributes:
        loss: the total, attached to the graph (float32; float64 for float64 inputs).
        per_modality: one entry per configured query modality, in ``query_modalities`` order.
            ``mode="per_modality"``: entry ``m`` equals ``sdm_loss(rows of m, anchor rows,
            labels..., memory)`` field by field; a modality without rows in the batch has zero
            counts and a zero loss. ``mode="pooled"``: entry ``m`` describes modality ``m``'s
            query rows inside the pooled softmax (``query_rows``,
            ``query_rows_without_positive``, ``loss_query_to_gallery``,
            ``positive_mass_query_to_gallery``; ``loss`` is that query → gallery term alone,
            halved under ``directions="mean"``); the gallery → query term is one softmax over
            every query modality and is not split, so the entry's gallery fields are 0.
        weights: ``[len(query_modalities)]`` effective weights, in ``query_modalities`` order.
            ``"per_modality"``: the given weights renormalised over the modalities with at least
            one valid row in this batch (0 for the others; all 0 when none has one).
            ``"pooled"``: each modality's share of the valid query rows, i.e. its weight in the
            pooled query → gallery mean.
        loss_query_to_gallery: the query → gallery term (detached): ``Σ weights · entry term``
            in ``"per_modality"`` mode, the pooled term in ``"pooled"`` mode; ``loss`` is this
            plus ``loss_gallery_to_query`` (halved under ``directions="mean"``).
        loss_gallery_to_query: the gallery → query term, likewise.
        rows: query rows of the configured modalities plus anchor rows (this rank's).
        rows_without_positive: how many of ``rows`` have no positive.
        query_rows: query rows of the configured modalities.
        query_rows_without_positive: those without a same-label anchor row or memory item.
        gallery_rows: anchor rows.
        gallery_rows_without_positive: anchor rows whose label no configured query row has.
        finite: bool; False when an embedding row (any row: they share one similarity block),
            a memory feature or ``logit_scale`` is NaN/Inf. Every entry carries the same flag.

    Example:
        >>> import torch
        >>> from sdmreid import Modality, sdm_per_modality
        >>> g = torch.Generator().manual_seed(0)
        >>> emb = torch.randn(6, 8, generator=g)
        >>> labels = torch.tensor([0, 1, 0, 1, 0, 2])
        >>> mods = torch.tensor([0, 0, 1, 1, 2, 2])  # RGB, RGB, NIR, NIR, SKETCH, SKETCH
        >>> r = sdm_per_modality(emb, labels, mods, query_modalities=["nir", "sketch"])
        >>> int(r.rows), int(r.rows_without_positive), r.weights.tolist()
        (6, 1, [0.5, 0.5])
        >>> int(r.per_modality[Modality.SKETCH].query_rows_without_positive)
        1
    """

    loss: Tensor
    per_modality: dict[Modality, SDMResult]
    weights: Tensor
    loss_query_to_gallery: Tensor
    loss_gallery_to_query: Tensor
    rows: Tensor
    rows_without_positive: Tensor
    query_rows: Tensor
    query_rows_without_positive: Tensor
    gallery_rows: Tensor
    gallery_rows_without_positive: Tensor
    finite: Tensor

    def scalars(self) -> dict[str, float]:
        """Every number as a Python float, in one read from the device (for loggers).

        Keys: the aggregated fields by name, ``weight/<modality>`` and
        ``<modality>/<SDMResult field>`` per query modality (modality names in lower case).
        """
        named: list[tuple[str, Tensor]] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "per_modality":
                for m, entry in value.items():
                    named += [(f"{m.name.lower()}/{g.name}", getattr(entry, g.name))
                              for g in fields(entry)]  # fmt: skip
            elif f.name == "weights":
                named += [(f"weight/{m.name.lower()}", w) for m, w in zip(
                    self.per_modality, value.unbind(), strict=True)]  # fmt: skip
            else:
                named.append((f.name, value))
        values = torch.stack([v.detach().to(torch.float64) for _, v in named]).tolist()
        return {name: float(v) for (name, _), v in zip(named, values, strict=True)}


# ----------------------------------------------------------------------------------------------
# the formula
# ----------------------------------------------------------------------------------------------


class _Sums(NamedTuple):
    """This rank's rows, summed per query modality ``g`` (``G`` of them) or per gallery → query
    group ``h`` (``H = G`` per modality, ``H = 1`` pooled)."""

    s1: Tensor  # [G] Σ query → gallery row losses of g's valid query rows
    mass1: Tensor  # [G] Σ of their positive masses
    n1: Tensor  # [G] their number
    s2: Tensor  # [H] Σ gallery → query row losses of the anchor rows valid in group h
    mass2: Tensor  # [H]
    n2: Tensor  # [H]
    queries: Tensor  # [G] query rows of modality g
    anchors: Tensor  # [] anchor rows
    anchors_without_positive: Tensor  # [] anchor rows without a positive in any query column
    finite: Tensor  # [] embeddings, memory and scale finite


def _masked(logits: Tensor, keep: Tensor) -> Tensor:
    """``logits`` where ``keep``, else the most negative finite value of the dtype: those columns
    get probability 0 and no gradient (and a row without a kept column stays finite)."""
    return torch.where(keep, logits, torch.finfo(logits.dtype).min)


def _sums(
    x: Tensor,
    labels: Tensor,
    mods: Tensor,
    cx: Tensor,
    clabels: Tensor,
    cmods: Tensor,
    m: Tensor,
    ml: Tensor,
    scale: Tensor,
    epsilon: float,
    objective: str,
    codes: tuple[int, ...],
    anchor: int,
    pooled: bool,
) -> _Sums:
    """Both directions' row losses of this rank's rows ``x``, summed per query modality.

    Columns are the batch rows ``cx`` (``x`` itself in one process; every rank's rows under
    ``gather``) followed by the memory. Roles are masks and column groups, never indices: a
    row's query → gallery loss counts for modality ``g`` when the row is a query of ``g``, its
    gallery → query losses count when it is an anchor row; the rest is computed and discarded.
    """
    (ix, im), finite = _norms(scale, x, m)
    icx = ix if cx is x else _norms(scale, cx)[0][0]
    c = cx.shape[0]
    logits = _logits(x, ix, [(cx, icx), (m, im)], scale)  # [n, C + M]: the one block
    same = labels[:, None] == torch.cat([clabels, ml])[None, :]  # [n, C + M]
    is_query = torch.stack([mods == code for code in codes])  # [G, n]
    is_anchor = mods == anchor  # [n]

    # query → gallery: one softmax per row over the anchor columns and the memory
    gallery_col = torch.cat([cmods == anchor, torch.ones_like(ml, dtype=torch.bool)])
    r1 = _direction(_masked(logits, gallery_col), same & gallery_col, epsilon, objective)
    valid1 = is_query & r1.valid  # [G, n]

    # gallery → query: one softmax per row over the query columns (pooled), or one per row and
    # query modality, over that modality's columns (the columns split into groups)
    block, same_block = logits[:, :c], same[:, :c]
    query_col = torch.stack([cmods == code for code in codes])  # [G, C]
    if pooled:
        any_query = query_col.any(0)
        r2 = _direction(_masked(block, any_query), same_block & any_query, epsilon, objective)
        loss2, mass2, valid2 = r2.loss[None], r2.mass[None], is_anchor & r2.valid[None]
    else:
        group = torch.full_like(cmods, -1)  # column → index of its query modality, or -1
        for g, member in enumerate(query_col):
            group = torch.where(member, g, group)
        r2 = _direction(block, same_block, epsilon, objective, group, len(codes))  # [n, G]
        loss2, mass2, valid2 = r2.loss.T, r2.mass.T, is_anchor & r2.valid.T  # [H, n]

    def total(valid: Tensor, values: Tensor) -> Tensor:
        return torch.where(valid, values, 0.0).sum(-1)

    return _Sums(
        s1=total(valid1, r1.loss),
        mass1=total(valid1, r1.mass).detach(),
        n1=valid1.sum(-1),
        s2=total(valid2, loss2),
        mass2=total(valid2, mass2).detach(),
        n2=valid2.sum(-1),
        queries=is_query.sum(-1),
        anchors=is_anchor.sum(),
        anchors_without_positive=(is_anchor & ~valid2.any(0)).sum(),
        finite=finite,
    )


class _Out(NamedTuple):
    """The per-modality body's results (flat tensors, as ``torch.compile`` returns them)."""

    loss: Tensor  # [] total, attached
    entry_loss: Tensor  # [G] each entry's loss, attached
    l1: Tensor  # [G] each modality's query → gallery mean (detached)
    l2: Tensor  # [G] each modality's gallery → query mean (0 pooled; detached)
    mass1: Tensor  # [G]
    mass2: Tensor  # [G]
    weights: Tensor  # [G] effective weights
    total_l1: Tensor  # [] the total's query → gallery term (detached)
    total_l2: Tensor  # []
    n1: Tensor  # [G] this rank's valid query rows of each modality
    n2: Tensor  # [G] this rank's anchor rows valid for each modality (0 pooled)
    queries: Tensor  # [G] this rank's query rows of each modality
    present: Tensor  # [G] the modality has query rows on some rank
    anchors: Tensor  # []
    anchors_without_positive: Tensor  # []
    finite: Tensor  # []


def _finish(
    s: _Sums,
    weights: Tensor,
    directions: str,
    pooled: bool,
    world: int = 1,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> _Out:
    """Means, weights and the total from this rank's sums.

    One process: ``reduce`` is ``None`` and the means are the sums over the counts. Under
    ``gather`` (``reduce`` = all-reduce sum over ``world`` ranks): each rank holds its share of
    every mean (its sums over every rank's counts); the value is the sum of the shares, and the
    gradient is ``world ×`` this rank's share, so that DDP's averaging gives the single-process
    gradient (as in :func:`sdmreid.losses.sdm._gathered`).
    """

    def everywhere(t: Tensor) -> Tensor:
        return t if reduce is None else reduce(t)

    # 1st exchange: the counts, for the means' denominators and the weights
    counts = everywhere(torch.cat([s.n1, s.n2, s.queries, (~s.finite).reshape(1).long()]))
    g, h = s.n1.shape[0], s.n2.shape[0]
    n1, n2 = counts[:g], counts[g : g + h]
    queries, finite = counts[g + h : 2 * g + h], counts[-1] == 0
    dt = s.s1.dtype
    # this rank's shares of the means (the means themselves in one process)
    l1, l2 = s.s1 / n1.clamp(min=1), s.s2 / n2.clamp(min=1)
    pooled_l1 = s.s1.sum() / n1.sum().clamp(min=1)
    # 2nd exchange: the shares' sums, i.e. the means of the whole batch
    local = [l1, l2, pooled_l1.reshape(1), s.mass1 / n1.clamp(min=1), s.mass2 / n2.clamp(min=1)]
    summed = torch.split(everywhere(torch.cat([t.detach() for t in local])), [g, h, 1, g, h])

    def attach(share: Tensor, value: Tensor) -> Tensor:
        """``value`` (the sum over ranks of ``share``) with ``world ×`` the share's gradient."""
        if reduce is None:
            return share
        return world * share + (value - world * share).detach()

    entry_l1 = attach(l1, summed[0])
    mass1 = summed[3]
    if pooled:
        weights = n1.to(dt) / n1.sum().clamp(min=1).to(dt)  # each modality's share of the mean
        term1, term2 = attach(pooled_l1, summed[2][0]), attach(l2[0], summed[1][0])
        entry_l2 = torch.zeros_like(entry_l1)  # the gallery side is not split by modality
        # c · l1 rather than _combine(l1, 0): torch.compile (2.13) drops the gradient of
        # "x + zeros_like(x)" next to an output "x.detach()" and then fails in backward
        entry_loss = entry_l1 * (0.5 if directions == "mean" else 1.0)
        mass2 = torch.zeros_like(mass1)
        n2_entries = torch.zeros_like(s.n1)
    else:
        valid = (n1 + n2) > 0
        w = torch.where(valid, weights, 0.0)
        weights = w / w.sum().clamp(min=torch.finfo(dt).tiny)  # all 0 when no modality is valid
        entry_l2 = attach(l2, summed[1])
        term1, term2 = (weights * entry_l1).sum(), (weights * entry_l2).sum()
        entry_loss = _combine(entry_l1, entry_l2, directions)
        mass2 = summed[4]
        n2_entries = s.n2
    loss = _combine(term1, term2, directions)
    return _Out(
        loss=loss,
        entry_loss=entry_loss,
        l1=entry_l1.detach(),
        l2=entry_l2.detach(),
        mass1=mass1,
        mass2=mass2,
        weights=weights,
        total_l1=term1.detach(),
        total_l2=term2.detach(),
        n1=s.n1,
        n2=n2_entries,
        queries=s.queries,
        present=queries > 0,
        anchors=s.anchors,
        anchors_without_positive=s.anchors_without_positive,
        finite=finite,
    )


def _per_modality_body(
    x: Tensor,
    labels: Tensor,
    mods: Tensor,
    m: Tensor,
    ml: Tensor,
    scale: Tensor,
    weights: Tensor,
    epsilon: float,
    objective: str,
    directions: str,
    codes: tuple[int, ...],
    anchor: int,
    pooled: bool,
) -> _Out:
    """Per-modality SDM in one process (the body that ``compiled`` compiles)."""
    sums = _sums(x, labels, mods, x, labels, mods, m, ml, scale, epsilon, objective, codes,
                 anchor, pooled)  # fmt: skip
    return _finish(sums, weights, directions, pooled)


def _per_modality_gathered(
    x: Tensor,
    labels: Tensor,
    mods: Tensor,
    m: Tensor,
    ml: Tensor,
    scale: Tensor,
    weights: Tensor,
    epsilon: float,
    objective: str,
    directions: str,
    codes: tuple[int, ...],
    anchor: int,
    pooled: bool,
) -> _Out:
    """Under ``torch.distributed``: this rank's rows against every rank's rows (+ this rank's
    memory). Value: per-modality SDM of the concatenated batch."""
    cx = all_gather_with_grad(x)
    clabels, cmods = all_gather_no_grad(labels), all_gather_no_grad(mods)
    sums = _sums(x, labels, mods, cx, clabels, cmods, m, ml, scale, epsilon, objective, codes,
                 anchor, pooled)  # fmt: skip
    return _finish(sums, weights, directions, pooled, get_world_size(), all_reduce_sum)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _parse_named(value: object, name: str) -> Modality:
    try:
        return parse_modality(value)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


def _check_modalities(values: object, n: int, device: torch.device) -> tuple[Tensor, bool]:
    """``[n]`` int64 codes on ``device``, and whether their range is still to be checked (a
    tensor's values are checked with the finiteness read rather than by a read of their own)."""
    if isinstance(values, Tensor):
        check_has_data(values, "modalities")
        if values.dim() != 1:
            raise ValueError(f"modalities must be 1-D, got shape {tuple(values.shape)}")
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise ValueError(
                f"modalities must hold Modality codes (an integer tensor), got dtype {values.dtype}"
            )
        codes, unchecked = values.to(device=device, dtype=torch.int64), True
    else:
        codes, unchecked = as_modality_tensor(values, name="modalities"), False  # type: ignore[arg-type]
    if codes.shape[0] != n:
        raise ValueError(f"modalities has {codes.shape[0]} entries, but embeddings has {n} rows")
    return codes.to(device), unchecked


def _check_query_modalities(values: object, anchor: Modality) -> tuple[Modality, ...]:
    if values is None:
        return tuple(m for m in Modality if m != anchor)
    if isinstance(values, (str, bytes, Modality)) or not isinstance(values, Sequence):
        raise TypeError(
            "query_modalities must be a sequence of modalities (e.g. ['nir', 'sketch']) or None, "
            f"got {values!r}"
        )
    parsed = tuple(_parse_named(v, "query_modalities") for v in values)
    if not parsed:
        raise ValueError("query_modalities must name at least one modality, got an empty sequence")
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"query_modalities names a modality twice: {[m.name for m in parsed]}")
    if anchor in parsed:
        raise ValueError(
            f"query_modalities must not contain the anchor modality {anchor.name}: the anchor "
            "rows are the gallery side"
        )
    return parsed


def _check_weights(values: object, queries: tuple[Modality, ...], mode: str) -> tuple[float, ...]:
    if values is None:
        return (1.0,) * len(queries)
    if mode == "pooled":
        raise ValueError(
            "weights apply to mode='per_modality'; mode='pooled' has one softmax over every "
            "query modality (pass weights=None)"
        )
    if not isinstance(values, Mapping):
        raise TypeError(f"weights must be a mapping modality -> float or None, got {values!r}")
    given: dict[Modality, float] = {}
    for key, w in values.items():
        mod = _parse_named(key, "weights")
        if mod not in queries:
            raise ValueError(
                f"weights names {mod.name}, which is not a query modality of this call "
                f"(query_modalities: {[q.name for q in queries]})"
            )
        if mod in given:
            raise ValueError(f"weights names {mod.name} twice ({key!r})")
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise TypeError(f"weights[{key!r}] must be a float, got {w!r}")
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weights[{key!r}] must be finite and >= 0, got {w}")
        given[mod] = float(w)
    out = tuple(given.get(q, 1.0) for q in queries)
    if not any(out):
        raise ValueError(f"weights must not all be 0, got {dict(values)}")
    return out


class _Checked(NamedTuple):
    x: Tensor
    labels: Tensor
    mods: Tensor
    m: Tensor
    ml: Tensor
    scale: Tensor
    weights: Tensor
    codes_unchecked: bool
    queries: tuple[Modality, ...]
    anchor: Modality
    compile_mode: str | None


def _checked(
    embeddings: object,
    labels: object,
    modalities: object,
    memory: object,
    anchor: object,
    query_modalities: object,
    weights: object,
    mode: object,
    logit_scale: object,
    epsilon: object,
    objective: object,
    directions: object,
    gather: object,
    on_nonfinite: object,
    compiled: object,
) -> _Checked:
    """Validate every argument (raising before any computation); convert to the compute dtype."""
    x = _check_features(embeddings, "embeddings")
    n, d = x.shape
    dev = x.device
    y = _check_labels(labels, "labels", n, dev)
    mods, unchecked = _check_modalities(modalities, n, dev)
    anchor_m = _parse_named(anchor, "anchor")
    queries = _check_query_modalities(query_modalities, anchor_m)
    _check_choice("mode", mode, _MODES)
    ws = _check_weights(weights, queries, str(mode))
    scale = _check_scale(logit_scale)
    compile_mode = _check_options(
        epsilon, None, on_nonfinite, compiled, gather, objective, directions
    )
    mem = _memory(memory, d, dev)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    _check_scale_fits(scale, cdt)
    with _no_autocast(dev):
        # fills, not host-to-device copies: nothing here waits for the device
        s = (
            scale.to(device=dev, dtype=cdt)
            if isinstance(scale, Tensor)
            else torch.full((), scale, device=dev, dtype=cdt)
        )
        w = torch.stack([torch.full((), v, device=dev, dtype=cdt) for v in ws])
        return _Checked(
            x.to(cdt),
            y,
            mods,
            mem[0].to(cdt) if mem is not None else x.new_zeros((0, d), dtype=cdt),
            mem[1] if mem is not None else y.new_zeros(0),
            s,
            w,
            unchecked,
            queries,
            anchor_m,
            compile_mode,
        )


def _problem(c: _Checked, out_finite: Tensor) -> str | None:
    """What is wrong with the inputs, or ``None`` (one read of the device)."""
    codes_ok = (
        ((c.mods >= 0) & (c.mods < len(Modality))).all()
        if c.codes_unchecked
        else torch.ones((), dtype=torch.bool, device=c.mods.device)
    )
    if bool(out_finite & (c.scale > 0) & codes_ok):
        return None
    if not bool(codes_ok):
        bad = sorted({int(v) for v in c.mods.tolist() if not 0 <= v < len(Modality)})
        return f"modalities holds codes {bad} that name no modality; accepted: " + ", ".join(
            f"{m.name}={int(m)}" for m in Modality
        )
    return _nonfinite_problem(c.scale, {"embeddings": c.x, "memory features": c.m})


def _checked_on_every_rank(args: tuple[Any, ...], on_nonfinite: object) -> _Checked:
    """:func:`_checked` under ``gather=True``: the ranks agree that each passed, that they share
    the feature dimension and compute dtype and (``on_nonfinite="raise"``) that every rank's
    inputs are finite, before any data is exchanged (one small all-gather and one host read)."""
    caller = "sdm_per_modality(gather=True)"
    try:
        c = _checked(*args)
    except Exception as exc:
        agree_or_raise(caller, exc, sizes=[("feature dimension", None)],
                       dtypes=[("compute dtype", None)])  # fmt: skip
        raise  # agree_or_raise raised already; this keeps the type checker informed
    nonfinite = None
    if on_nonfinite == "raise":
        _, finite = _norms(c.scale, c.x, c.m)
        codes_ok = ((c.mods >= 0) & (c.mods < len(Modality))).all()
        nonfinite = ~(finite & (c.scale > 0) & codes_ok)
    agree_or_raise(
        caller,
        None,
        sizes=[("feature dimension", c.x.shape[1])],
        dtypes=[("compute dtype", c.x.dtype)],
        nonfinite=nonfinite,
        nonfinite_message=lambda: _problem(c, torch.zeros((), dtype=torch.bool)) or "",
    )
    return c


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def sdm_per_modality(
    embeddings: Tensor,
    labels: Tensor,
    modalities: Tensor | Sequence[Modality | int | str],
    memory: MemoryLike = None,
    *,
    anchor: Modality | str = Modality.RGB,
    query_modalities: Sequence[Modality | str] | None = None,
    weights: Mapping[Modality | str, float] | None = None,
    mode: SDMMode = "per_modality",
    logit_scale: float | Tensor = 50.0,
    epsilon: float = 1e-8,
    objective: Objective = "kl",
    directions: Directions = "sum",
    gather: bool = False,
    on_nonfinite: Literal["raise", "ignore"] = "raise",
    compiled: CompileMode = False,
) -> PerModalitySDMResult:
    r"""SDM of every query modality against the anchor modality, from one batch.

    ``mode="per_modality"``: for each query modality :math:`m`,
    :math:`\mathcal{L}_m` = :func:`~sdmreid.losses.sdm_loss` of the rows of :math:`m` (queries)
    against the anchor rows (gallery) and ``memory``, and the total is
    :math:`\sum_m \tilde w_m \mathcal{L}_m` with the weights renormalised over the modalities
    that have at least one row with a positive in this batch (an absent modality, or one without
    positives, contributes nothing). ``mode="pooled"``: one ``sdm_loss`` of all configured query
    rows against the anchor rows and ``memory`` (one softmax over every query modality in the
    gallery → query direction).

    Nothing reads the device (under ``on_nonfinite="ignore"``): rows are selected by masks, and
    every count is a 0-dim tensor. The price of the masks is one similarity block over the whole
    batch, ``[B, B + M]``, whatever the roles of its rows (``sdm_loss`` on rows split beforehand
    forms ``[queries, anchors + M]``); the per-modality softmax itself adds little to the pooled
    one (one log-sum-exp per row and modality on the same block).

    Args:
        embeddings: ``[B, d]`` features of the whole batch, every modality (normalised inside).
        labels: ``[B]`` integer identity labels.
        modalities: ``[B]`` modality of each row: an integer tensor of :class:`Modality` codes
            (on the embeddings' device, or it is copied there, which waits for the device), or
            a sequence/array of modalities in any form :func:`~sdmreid.parse_modality` accepts
            (parsed on the host, then copied). A tensor's codes
            are checked by ``on_nonfinite="raise"``'s one read; under ``"ignore"`` a row with a
            code outside ``0..4`` takes no part.
        memory: as in :func:`~sdmreid.losses.sdm_loss`: extra anchor-side columns (detached)
            for every query row.
        anchor: the gallery modality (default RGB).
        query_modalities: the query modalities, in the order of the result's entries; default:
            every modality other than ``anchor``. Rows of other modalities take no part.
        weights: per query modality weight (``mode="per_modality"`` only), finite and
            ``>= 0``, not all 0; a query modality it does not name weighs 1. Default: equal.
        mode: ``"per_modality"`` or ``"pooled"``.
        logit_scale: ``s`` as in :func:`~sdmreid.losses.sdm_loss` (a float or 0-dim tensor).
        epsilon: IRRA's ε (``objective="kl"``).
        objective: ``"kl"`` (IRRA) or ``"ce"`` (the seed pipeline), as in ``sdm_loss``.
        directions: ``"sum"`` (IRRA) or ``"mean"`` (the seed pipeline), as in ``sdm_loss``.
        gather: under an initialised ``torch.distributed`` group, the per-modality SDM of the
            concatenated batch (every rank's rows), with ``sdm_loss``'s gradient convention
            (``world_size`` × this rank's share, so that DDP's averaging gives the
            single-process gradient), its agreement check before the gather and this rank's
            counts in the result. Without a process group it does nothing.
        on_nonfinite: ``"raise"``: one read of the device checks that the embeddings, memory
            and ``logit_scale`` are finite (and a tensor's modality codes valid), else
            ``ValueError``. ``"ignore"``: no read; see ``result.finite``.
        compiled: ``False``, ``True``/``"default"`` or ``"reduce-overhead"``: the same body
            under ``torch.compile`` (as in ``sdm_loss``); with ``gather`` under a process group
            the eager path runs.

    Returns:
        A :class:`PerModalitySDMResult`; ``result.loss`` is the scalar to optimise.

    Raises:
        ValueError: bad features, labels or memory (as ``sdm_loss``), unknown modality names
            or codes, a ``weights`` key that is not a query modality (e.g. the anchor),
            negative, non-finite or all-zero weights, weights with ``mode="pooled"``, empty or
            repeated ``query_modalities`` or one that contains ``anchor``, bad
            ``mode``/``objective``/``directions``/``logit_scale``/``epsilon``/``compiled``.
        TypeError: arguments of the wrong type.

    Example:
        >>> import torch
        >>> from sdmreid import Modality, sdm_per_modality
        >>> g = torch.Generator().manual_seed(0)
        >>> emb = torch.randn(8, 16, generator=g, requires_grad=True)
        >>> labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 5])
        >>> mods = ["rgb", "rgb", "nir", "nir", "sketch", "sketch", "text", "text"]
        >>> res = sdm_per_modality(emb, labels, mods, weights={"text": 2.0},
        ...                        objective="ce", directions="mean")
        >>> res.loss.backward()
        >>> [m.name for m in res.per_modality], res.weights.tolist()
        (['NIR', 'SKETCH', 'CPENCIL', 'TEXT'], [0.25, 0.25, 0.0, 0.5])
        >>> int(res.per_modality[Modality.TEXT].query_rows_without_positive)
        1
    """
    args = (embeddings, labels, modalities, memory, anchor, query_modalities, weights, mode,
            logit_scale, epsilon, objective, directions, gather, on_nonfinite,
            compiled)  # fmt: skip
    distributed = check_bool("gather", gather) and is_dist()
    c = _checked_on_every_rank(args, on_nonfinite) if distributed else _checked(*args)
    dev = c.x.device
    codes = tuple(int(q) for q in c.queries)
    with _no_autocast(dev):
        body = (c.x, c.labels, c.mods, c.m, c.ml, c.scale, c.weights, float(epsilon),
                objective, directions, codes, int(c.anchor), mode == "pooled")  # fmt: skip
        if distributed:
            out = _per_modality_gathered(*body)
        elif c.compile_mode is not None:
            out = _run_compiled(
                _per_modality_body, c.compile_mode, *body, caller="sdm_per_modality"
            )
        else:
            out = _per_modality_body(*body)
    if on_nonfinite == "raise" and not distributed:  # (checked across ranks before the gather)
        problem = _problem(c, out.finite)
        if problem is not None:
            raise ValueError(problem)
    return _result(out, c.queries, mode == "pooled")


def _result(out: _Out, queries: tuple[Modality, ...], pooled: bool) -> PerModalitySDMResult:
    """Assemble the typed result (indexing only: nothing is read from the device)."""
    zero = torch.zeros_like(out.anchors)
    entries: dict[Modality, SDMResult] = {}
    for i, q in enumerate(queries):
        query_rows = out.queries[i]
        if pooled:
            gallery_rows = gallery_without = zero
        else:  # an absent modality has zero counts
            gallery_rows = torch.where(out.present[i], out.anchors, zero)
            gallery_without = gallery_rows - out.n2[i]
        query_without = query_rows - out.n1[i]
        entries[q] = SDMResult(
            loss=out.entry_loss[i],
            loss_query_to_gallery=out.l1[i],
            loss_gallery_to_query=out.l2[i],
            rows=query_rows + gallery_rows,
            rows_without_positive=query_without + gallery_without,
            query_rows=query_rows,
            gallery_rows=gallery_rows,
            query_rows_without_positive=query_without,
            gallery_rows_without_positive=gallery_without,
            positive_mass_query_to_gallery=out.mass1[i],
            positive_mass_gallery_to_query=out.mass2[i],
            finite=out.finite,
        )
    query_rows = out.queries.sum()
    query_without = query_rows - out.n1.sum()
    return PerModalitySDMResult(
        loss=out.loss,
        per_modality=entries,
        weights=out.weights,
        loss_query_to_gallery=out.total_l1,
        loss_gallery_to_query=out.total_l2,
        rows=query_rows + out.anchors,
        rows_without_positive=query_without + out.anchors_without_positive,
        query_rows=query_rows,
        query_rows_without_positive=query_without,
        gallery_rows=out.anchors,
        gallery_rows_without_positive=out.anchors_without_positive,
        finite=out.finite,
    )
