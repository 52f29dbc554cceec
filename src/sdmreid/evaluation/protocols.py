"""Generic cross-modal protocol helpers: modality selection, query fusion, gallery draws, trials.

Everything here works on arrays that the caller has already extracted (features, identity labels,
cameras, modalities); nothing reads images or split files.

* :func:`cross_modal_split` — query/gallery indices by modality (NIR→RGB, text→RGB, ...).
* :func:`fuse_queries` — multi-modal queries (PRCV2025 "MM-k"): one query per
  (identity, query group), the mean of the group's L2-normalised embeddings by default.
* :func:`evaluate_cross_modal` — the two above plus :func:`~sdmreid.evaluation.evaluate_retrieval`
  (text/sketch/colour-pencil → RGB: no camera filtering, standard CMC).
* :func:`evaluate_all_to_rgb` — every non-RGB modality present → all RGB items, plus RGB → RGB
  with one seeded query per identity: the per-epoch validation of a pooled multi-modal split.
* :func:`draw_gallery` — the seeded single-/multi-shot gallery draw of the benchmark presets.
* :func:`mean_over_trials` / :class:`ProtocolResult` — multi-trial results.
* :func:`parse_direction` — ``"<query>_to_<gallery>"`` with any modality alias.

The published benchmarks have a module each, built on these helpers:
:mod:`sdmreid.evaluation.sysu_mm01`, :mod:`sdmreid.evaluation.regdb`,
:mod:`sdmreid.evaluation.llcm`. A preset returns a :class:`ProtocolResult` (mean over trials and
every trial) for one direction, or ``{direction: ProtocolResult}`` for a sequence of directions;
result keys use the canonical form ``"nir_to_rgb"`` / ``"rgb_to_nir"``.

Gallery draws are independent of the order of the input arrays: candidates are first put in a
canonical order (camera, identity, image number — or input position when no image numbers are
given), then the seeded generator picks within each (identity, camera) group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from sdmreid._validation import check_bool, check_has_data
from sdmreid.evaluation.metrics import RetrievalMetrics, _as_ints, evaluate_retrieval
from sdmreid.modality import Modality, as_modality_array, parse_modality

__all__ = [
    "FusedQueries",
    "ProtocolResult",
    "cross_modal_split",
    "draw_gallery",
    "evaluate_all_to_rgb",
    "evaluate_cross_modal",
    "fuse_queries",
    "mean_over_trials",
    "parse_direction",
]

Tensorish = Union[torch.Tensor, npt.NDArray[Any]]  # noqa: UP007
IntArrayLike = Union[npt.ArrayLike, torch.Tensor]  # noqa: UP007


# ----------------------------------------------------------------------------------------------
# argument checks shared by the benchmark modules
# ----------------------------------------------------------------------------------------------


def _np_ints(x: IntArrayLike, name: str, n: int | None = None) -> npt.NDArray[np.int64]:
    arr: npt.NDArray[np.int64] = _as_ints(x, name, n).cpu().numpy()
    return arr


def _feats(x: Tensorish, name: str) -> torch.Tensor:
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    check_has_data(t, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {tuple(t.shape)}")
    return t


def _rows(x: torch.Tensor, index: npt.NDArray[np.int64]) -> torch.Tensor:
    """The rows ``index`` (a numpy array) of ``x``, wherever ``x`` lives."""
    return x[torch.from_numpy(index).to(x.device)]


def _check_trials(num_trials: int) -> None:
    if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")


def _check_shots(shots: int) -> None:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer (1 = single-shot), got {shots!r}")


def _modality_set(x: object, name: str) -> frozenset[int]:
    if isinstance(x, (str, Modality, int, np.integer, torch.Tensor)):
        return frozenset({int(parse_modality(x))})
    if isinstance(x, (list, tuple, set, frozenset)):
        if not x:
            raise ValueError(f"{name} must name at least one modality")
        return frozenset(int(parse_modality(v)) for v in x)
    raise TypeError(f"{name} must be a modality or a collection of modalities, got {x!r}")


def parse_direction(direction: str) -> tuple[Modality, Modality]:
    """Parse ``"<query>_to_<gallery>"`` (any modality alias, any case) into two modalities.

    Example:
        >>> parse_direction("Thermal_to_Visible")
        (<Modality.NIR: 1>, <Modality.RGB: 0>)
    """
    if not isinstance(direction, str) or "_to_" not in direction.lower():
        raise ValueError(
            f"direction must look like '<query>_to_<gallery>' (e.g. 'nir_to_rgb'), "
            f"got {direction!r}"
        )
    a, b = direction.lower().split("_to_", 1)
    try:
        return parse_modality(a), parse_modality(b)
    except ValueError as err:
        raise ValueError(f"direction {direction!r}: {err}") from None


def _direction_key(q: Modality, g: Modality) -> str:
    return f"{q.name.lower()}_to_{g.name.lower()}"


def _directions(direction: str | Sequence[str]) -> tuple[bool, list[tuple[Modality, Modality]]]:
    single = isinstance(direction, str)
    items = [direction] if isinstance(direction, str) else list(direction)
    if not items:
        raise ValueError("direction must name at least one direction")
    return single, [parse_direction(d) for d in items]


def _rgb_nir_directions(
    direction: str | Sequence[str], benchmark: str, spelled: str
) -> tuple[bool, list[tuple[Modality, Modality]]]:
    """:func:`_directions` for the RGB↔NIR benchmarks; anything else is a ``ValueError``."""
    single, dirs = _directions(direction)
    for qm, gm in dirs:
        if {qm, gm} != {Modality.RGB, Modality.NIR}:
            raise ValueError(
                f"direction for {benchmark} must be {spelled}, got {_direction_key(qm, gm)}"
            )
    return single, dirs


def _one_or_all(
    single: bool, results: dict[str, ProtocolResult]
) -> ProtocolResult | dict[str, ProtocolResult]:
    return next(iter(results.values())) if single else results


# ----------------------------------------------------------------------------------------------
# results over trials
# ----------------------------------------------------------------------------------------------


def mean_over_trials(trials: Sequence[RetrievalMetrics]) -> RetrievalMetrics:
    """Average trial metrics: CMC curves (shorter ones padded with their last value), mAP, mINP,
    and mAP@k when every trial has it with the same ``k``.

    Query counts are *summed* over the trials.

    Example:
        >>> import torch
        >>> a = RetrievalMetrics(torch.tensor([0.5, 1.0]), 0.6, 0.4, 2, 0)
        >>> b = RetrievalMetrics(torch.tensor([1.0]), 1.0, 1.0, 2, 1)
        >>> m = mean_over_trials([a, b])
        >>> m.cmc.tolist(), round(m.mAP, 2), m.num_valid_queries, m.num_skipped_queries
        ([0.75, 1.0], 0.8, 4, 1)
    """
    if not trials:
        raise ValueError("trials must not be empty")
    length = max(t.cmc.numel() for t in trials)
    curves = []
    for t in trials:
        c = t.cmc.to(torch.float64)
        if c.numel() < length:
            c = torch.cat([c, c[-1:].expand(length - c.numel())])
        curves.append(c)
    cmc = torch.stack(curves).mean(0)
    # mAP@k is averaged only when every trial has it with the same k
    map_ks = {t.map_k for t in trials}
    at_k = [t.mAP_at_k for t in trials if t.mAP_at_k is not None]
    map_k = map_ks.pop() if len(map_ks) == 1 and len(at_k) == len(trials) else None
    return RetrievalMetrics(
        cmc=cmc,
        mAP=float(np.mean([t.mAP for t in trials])),
        mINP=float(np.mean([t.mINP for t in trials])),
        num_valid_queries=sum(t.num_valid_queries for t in trials),
        num_skipped_queries=sum(t.num_skipped_queries for t in trials),
        ranks=trials[0].ranks,
        dedup_cmc=trials[0].dedup_cmc,
        mAP_at_k=None if map_k is None else float(np.mean(at_k)),
        map_k=map_k,
    )


@dataclass(frozen=True, eq=False)
class ProtocolResult:
    """Metrics of a multi-trial protocol in one direction.

    Attributes:
        name: the protocol, e.g. ``"sysu_mm01/all/single"``.
        direction: canonical direction, e.g. ``"nir_to_rgb"``.
        mean: :func:`mean_over_trials` of :attr:`trials` (counts summed).
        trials: the metrics of every trial, in trial order.

    Example:
        >>> import torch
        >>> t = RetrievalMetrics(torch.tensor([1.0]), 1.0, 1.0, 1, 0, ranks=(1,))
        >>> r = ProtocolResult("demo", "nir_to_rgb", mean_over_trials([t]), (t,))
        >>> r.as_dict()["demo/nir_to_rgb/rank1"]
        1.0
    """

    name: str
    direction: str
    mean: RetrievalMetrics
    trials: tuple[RetrievalMetrics, ...]

    def as_dict(self, *, percent: bool = False) -> dict[str, float]:
        """Mean metrics keyed ``"{name}/{direction}/{metric}"``."""
        return self.mean.as_dict(f"{self.name}/{self.direction}/", percent=percent)

    def __str__(self) -> str:
        return f"{self.name} {self.direction} ({len(self.trials)} trials): {self.mean}"


# ----------------------------------------------------------------------------------------------
# modality selection and query fusion
# ----------------------------------------------------------------------------------------------


def cross_modal_split(
    modalities: object,
    query_modality: object,
    gallery_modality: object,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices of the query and gallery items by modality.

    Args:
        modalities: modality of every item (any form accepted by
            :func:`sdmreid.modality.as_modality_array`).
        query_modality: one modality or a collection (e.g. ``{"nir", "sketch"}``).
        gallery_modality: one modality or a collection.

    Returns:
        ``(query_index, gallery_index)`` sorted ``int64`` arrays.

    Example:
        >>> q, g = cross_modal_split(["rgb", "ir", "rgb", "sketch"], "ir", "rgb")
        >>> q.tolist(), g.tolist()
        ([1], [0, 2])
    """
    mods = as_modality_array(modalities)  # type: ignore[arg-type]
    qset = _modality_set(query_modality, "query_modality")
    gset = _modality_set(gallery_modality, "gallery_modality")
    q = np.flatnonzero(np.isin(mods, sorted(qset))).astype(np.int64)
    g = np.flatnonzero(np.isin(mods, sorted(gset))).astype(np.int64)
    if q.size == 0:
        raise ValueError(f"no item has a query modality {sorted(Modality(m).name for m in qset)}")
    if g.size == 0:
        raise ValueError(f"no item has a gallery modality {sorted(Modality(m).name for m in gset)}")
    return q, g


@dataclass(frozen=True, eq=False)
class FusedQueries:
    """Output of :func:`fuse_queries`: one row per (identity, query group)."""

    feats: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    counts: torch.Tensor


def fuse_queries(
    feats: Tensorish,
    labels: IntArrayLike,
    groups: IntArrayLike,
    *,
    normalize: bool = True,
    reduce: Literal["mean", "sum"] | Callable[[torch.Tensor], torch.Tensor] = "mean",
) -> FusedQueries:
    """Fuse the embeddings of multi-modal queries (PRCV2025 "MM-k") into one row per query.

    Rows with the same (identity, group) form one query; by default its feature is the mean of
    the L2-normalised embeddings of its rows (``normalize=False`` skips the normalisation;
    ``reduce`` may be ``"sum"`` or a callable mapping a ``[k, d]`` tensor to ``[d]``).

    Args:
        feats: ``[N, d]`` embeddings of every modality view of every query.
        labels: ``[N]`` identities.
        groups: ``[N]`` query group ids (e.g. the MM-k sample number).
        normalize: L2-normalise each row before reducing.
        reduce: ``"mean"``, ``"sum"`` or a callable.

    Returns:
        :class:`FusedQueries` sorted by (identity, group), with the number of fused rows.

    Example:
        >>> import torch
        >>> f = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
        >>> out = fuse_queries(f, [5, 5, 6], [0, 0, 0])
        >>> out.feats.tolist(), out.labels.tolist(), out.counts.tolist()
        ([[0.5, 0.5], [1.0, 0.0]], [5, 6], [2, 1])
    """
    check_bool("normalize", normalize)
    x = _feats(feats, "feats")
    if x.shape[0] == 0:
        raise ValueError("feats is empty")
    if not x.dtype.is_floating_point:
        raise ValueError(f"feats must have a floating dtype, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("feats contains NaN or infinite values")
    lab = torch.from_numpy(_np_ints(labels, "labels", x.shape[0])).to(x.device)
    grp = torch.from_numpy(_np_ints(groups, "groups", x.shape[0])).to(x.device)
    if normalize:
        x = F.normalize(x, dim=1)
    keys, inv = torch.unique(torch.stack([lab, grp], 1), dim=0, return_inverse=True)
    counts = torch.bincount(inv, minlength=keys.shape[0])
    if callable(reduce):
        order = torch.argsort(inv, stable=True)
        chunks = torch.split(x[order], counts.tolist())
        fused = torch.stack([reduce(c) for c in chunks])
    elif reduce in ("mean", "sum"):
        fused = torch.zeros(keys.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        fused.index_add_(0, inv, x)
        if reduce == "mean":
            fused = fused / counts[:, None].to(x.dtype)
    else:
        raise ValueError(f"reduce must be 'mean', 'sum' or a callable, got {reduce!r}")
    return FusedQueries(feats=fused, labels=keys[:, 0], groups=keys[:, 1], counts=counts)


def evaluate_cross_modal(
    feats: Tensorish,
    labels: IntArrayLike,
    modalities: object,
    *,
    query_modality: object,
    gallery_modality: object,
    cams: IntArrayLike | None = None,
    query_groups: IntArrayLike | None = None,
    fuse_normalize: bool = True,
    **kwargs: Any,
) -> RetrievalMetrics:
    """Evaluate one cross-modal direction on a pooled test set.

    Queries are the items of ``query_modality`` (fused per (identity, ``query_groups``) when
    groups are given — the MM-k setting), the gallery is every item of ``gallery_modality``.
    With ``cams`` the same-identity-same-camera rule applies (not with fused queries). Text,
    sketch and colour-pencil → RGB use no cameras. Extra keyword arguments go to
    :func:`~sdmreid.evaluation.evaluate_retrieval`.

    Example:
        >>> import torch
        >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
        >>> m = evaluate_cross_modal(f, [1, 2, 1, 2], ["text", "text", "rgb", "rgb"],
        ...                          query_modality="text", gallery_modality="rgb", ranks=(1,))
        >>> m.rank1, m.mAP
        (1.0, 1.0)
    """
    check_bool("fuse_normalize", fuse_normalize)
    x = _feats(feats, "feats")
    lab = _np_ints(labels, "labels", x.shape[0])
    qi, gi = cross_modal_split(modalities, query_modality, gallery_modality)
    if len(as_modality_array(modalities)) != x.shape[0]:  # type: ignore[arg-type]
        raise ValueError("modalities must have one entry per row of feats")
    if query_groups is not None:
        if cams is not None:
            raise ValueError("cams cannot be combined with query_groups (fused queries)")
        grp = _np_ints(query_groups, "query_groups", x.shape[0])
        fused = fuse_queries(_rows(x, qi), lab[qi], grp[qi], normalize=fuse_normalize)
        return evaluate_retrieval(fused.feats, fused.labels, _rows(x, gi), lab[gi], **kwargs)
    if cams is not None:
        cam = _np_ints(cams, "cams", x.shape[0])
        kwargs = {**kwargs, "query_cams": cam[qi], "gallery_cams": cam[gi]}
    return evaluate_retrieval(_rows(x, qi), lab[qi], _rows(x, gi), lab[gi], **kwargs)


# ----------------------------------------------------------------------------------------------
# every modality against RGB
# ----------------------------------------------------------------------------------------------

#: Keyword arguments of :func:`evaluate_retrieval` that are per query/gallery item, which
#: :func:`evaluate_all_to_rgb` chooses itself.
_PER_ITEM_OPTIONS = ("query_cams", "gallery_cams", "ignore")


def _one_query_per_identity(
    candidates: npt.NDArray[np.int64], labels: npt.NDArray[np.int64], seed: int
) -> npt.NDArray[np.int64]:
    """One of ``candidates`` per identity, drawn with ``default_rng(seed)``, sorted.

    Every candidate (in the given order) gets one uniform draw; the smallest draw of each
    identity wins.
    """
    draw = np.random.default_rng(seed).random(candidates.size)
    ids = labels[candidates]
    order = np.lexsort((draw, ids))
    first = np.ones(order.size, dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    return np.sort(candidates[order][first])


def evaluate_all_to_rgb(
    feats: Tensorish,
    labels: IntArrayLike,
    modalities: object,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, RetrievalMetrics]:
    """Every non-RGB modality against all RGB items, plus RGB against RGB, on a pooled split.

    * ``"<M>->RGB"`` for each non-RGB modality ``M`` present (``"NIR->RGB"``,
      ``"SKETCH->RGB"``, ``"CPENCIL->RGB"``, ``"TEXT->RGB"``, in modality order): every item
      of ``M`` queries every RGB item; no camera filtering.
    * ``"RGB->RGB"`` (last): each identity with at least two RGB items gives one query, drawn
      with ``numpy.random.default_rng(seed)``; every other RGB item (also those of identities
      with a single RGB item) is in the gallery.

    A protocol in which no query has a positive — no RGB item at all, identities of ``M``
    without any RGB item, or no identity with two RGB items — is **left out** of the result
    rather than raising, so an early or sparse validation split still reports what it can;
    check the keys when a protocol must be present.

    Args:
        feats: ``[N, d]`` embeddings of every item of the split.
        labels: ``[N]`` identities.
        modalities: ``[N]`` modality of each item (any form accepted by
            :func:`sdmreid.modality.as_modality_array`).
        seed: seed of the RGB→RGB query draw.
        **kwargs: passed to :func:`~sdmreid.evaluation.evaluate_retrieval` (``ranks``,
            ``metric``, ``chunk_size``, ``dedup_cmc``).

    Returns:
        ``{protocol name: RetrievalMetrics}`` in the order above.

    Raises:
        ValueError: mismatched lengths, or an error of :func:`evaluate_retrieval`.
        TypeError: a per-item option (``query_cams``, ``gallery_cams``, ``ignore``) in
            ``kwargs``, a non-integer ``seed`` or non-integer labels.

    Example:
        >>> import torch
        >>> feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
        >>> res = evaluate_all_to_rgb(feats, [1, 1, 2, 1, 2], ["rgb", "rgb", "rgb", "nir", "nir"])
        >>> list(res), res["NIR->RGB"].rank1, res["RGB->RGB"].num_valid_queries
        (['NIR->RGB', 'RGB->RGB'], 1.0, 1)
    """
    for key in _PER_ITEM_OPTIONS:
        if key in kwargs:
            raise TypeError(
                f"evaluate_all_to_rgb chooses its queries and gallery; {key} is not an option"
            )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    x = _feats(feats, "feats")
    lab = _np_ints(labels, "labels", x.shape[0])
    mods = as_modality_array(modalities, name="modalities")  # type: ignore[arg-type]
    if mods.shape[0] != x.shape[0]:
        raise ValueError(f"modalities has length {mods.shape[0]}, expected {x.shape[0]}")
    rgb = np.flatnonzero(mods == int(Modality.RGB))
    protocols = [
        (f"{Modality(m).name}->RGB", np.flatnonzero(mods == m), rgb)
        for m in sorted(set(mods.tolist()) - {int(Modality.RGB)})
    ]
    ids, counts = np.unique(lab[rgb], return_counts=True)
    repeated = rgb[np.isin(lab[rgb], ids[counts >= 2])]
    rgb_query = _one_query_per_identity(repeated, lab, int(seed))
    protocols.append(("RGB->RGB", rgb_query, np.setdiff1d(rgb, rgb_query)))
    out: dict[str, RetrievalMetrics] = {}
    for name, q, g in protocols:
        if not np.isin(lab[q], lab[g]).any():
            continue
        out[name] = evaluate_retrieval(_rows(x, q), lab[q], _rows(x, g), lab[g], **kwargs)
    return out


# ----------------------------------------------------------------------------------------------
# gallery sampling
# ----------------------------------------------------------------------------------------------


def draw_gallery(
    candidates: IntArrayLike,
    labels: IntArrayLike,
    cams: IntArrayLike,
    *,
    shots: int = 1,
    seed: int = 0,
    image_index: IntArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """The seeded single-/multi-shot gallery draw of
    :func:`~sdmreid.evaluation.evaluate_sysu_mm01` and :func:`~sdmreid.evaluation.evaluate_llcm`:
    up to ``shots`` of ``candidates`` per (camera, identity).

    Trial ``t`` of those evaluators (without an official permutation) is
    ``draw_gallery(..., seed=seed + t)``, so a trainer that validates on one trial every epoch
    sees exactly the gallery of the published evaluation's trial.

    Args:
        candidates: Item indices eligible for the gallery (into ``labels`` / ``cams``).
        labels: Identity label of every item.
        cams: Camera id of every item (same length as ``labels``).
        shots: Items per (camera, identity); ``1`` = single-shot.
        seed: Seed of ``numpy.random.default_rng``.
        image_index: Optional per-item image number (as in the file name), which makes the
            draw independent of the order of the items.

    Returns:
        The drawn item indices, in (camera, identity, draw) order.

    Raises:
        ValueError: Wrong lengths, negative or out-of-range indices, ``shots < 1``.
        TypeError: Non-integer inputs.

    Example:
        >>> import numpy as np
        >>> from sdmreid.evaluation import draw_gallery
        >>> labels = np.array([7, 7, 7, 8, 8, 9])
        >>> cams = np.array([1, 1, 2, 1, 1, 3])
        >>> g = draw_gallery(np.arange(5), labels, cams, seed=0)  # item 5 is not a candidate
        >>> sorted((int(cams[i]), int(labels[i])) for i in g)
        [(1, 7), (1, 8), (2, 7)]
        >>> bool((draw_gallery(np.arange(5), labels, cams, seed=0) == g).all())
        True
    """
    _check_shots(shots)
    lab = _np_ints(labels, "labels")
    cam = _np_ints(cams, "cams", lab.shape[0])
    cand = _np_ints(candidates, "candidates")
    if cand.size and (cand.min() < 0 or cand.max() >= lab.shape[0]):
        raise ValueError(f"candidates must index the {lab.shape[0]} items, got out-of-range values")
    img = None if image_index is None else _np_ints(image_index, "image_index", lab.shape[0])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return _seeded_gallery(cand, lab, cam, img, shots, int(seed))


def _seeded_gallery(
    candidates: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    cams: npt.NDArray[np.int64],
    image_index: npt.NDArray[np.int64] | None,
    shots: int,
    seed: int,
) -> npt.NDArray[np.int64]:
    """Pick up to ``shots`` candidates per (camera, identity) with ``default_rng(seed)``.

    Returns item indices in (camera, identity, draw order) order.
    """
    tie = image_index[candidates] if image_index is not None else candidates
    canon = candidates[np.lexsort((candidates, tie, labels[candidates], cams[candidates]))]
    rng = np.random.default_rng(seed)
    r = rng.random(canon.size)
    c, p = cams[canon], labels[canon]
    order = np.lexsort((r, p, c))
    c, p = c[order], p[order]
    new_group = np.ones(order.size, dtype=bool)
    new_group[1:] = (c[1:] != c[:-1]) | (p[1:] != p[:-1])
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(order.size), 0))
    within = np.arange(order.size) - group_start
    return canon[order[within < shots]]
