"""Retrieval metrics for person re-identification: CMC, mAP and mINP.

:func:`evaluate_retrieval` ranks a gallery for every query and returns a typed
:class:`RetrievalMetrics`.

Semantics (the same as torchreid's ``eval_market1501`` and the AGW/SYSU-MM01 evaluators):

* **Scores.** ``metric="cosine"`` ranks by cosine similarity of the L2-normalised features
  (higher first; an all-zero feature has similarity 0 to everything); ``metric="euclidean"``
  ranks by squared Euclidean distance ``|q|² + |g|² − 2 q·g`` (lower first; the square root
  does not change the order). Half/bfloat16 features are scored in float32, float64 features
  in float64.
* **Ties** are broken deterministically by gallery index: among gallery items with exactly the
  same score, the one that comes first in ``gallery_feats`` is ranked first (a stable sort by
  score). ``-0.0`` and ``+0.0`` count as equal.
* **Ignored items.** When both ``query_cams`` and ``gallery_cams`` are given, gallery items with
  the same identity *and* the same camera as the query are removed from that query's ranking
  (the standard Market-1501 rule). ``ignore`` adds any other per-query rule (for instance
  SYSU-MM01's "a camera-3 query ignores every camera-2 item",
  :func:`~sdmreid.evaluation.sysu_ignore_rule`; :func:`camera_pair_ignore` builds such rules).
  Removed items do not occupy ranks.
* **Skipped queries.** A query with no positive (same identity) left after removal is skipped:
  it contributes to no metric and is counted in ``num_skipped_queries``. When every query is
  skipped a :class:`ValueError` is raised (the metrics would be undefined).
* **CMC.** ``cmc[k-1]`` is the fraction of valid queries whose first positive is at rank ``<= k``
  (the curve covers every gallery position, so ``len(cmc) == len(gallery)``; it is
  non-decreasing and reaches 1.0). With ``dedup_cmc=True`` the ranking is first reduced to
  distinct identities (the first occurrence of each identity keeps its place), as the official
  SYSU-MM01 code does; the curve then reaches 1.0 by the number of distinct gallery identities.
* **AP / mAP.** AP of one query is the mean over its positives of ``(i / rank_i)`` where
  ``rank_i`` is the rank of its ``i``-th positive (never de-duplicated); mAP is the mean over
  valid queries.
* **AP@k / mAP@k** (with ``map_k=k``; the "mAP@100" of the PRCV 2025 challenge pipeline):
  the AP formula restricted to the top ``k`` ranks, normalised by the positives found there:
  ``AP@k = (1 / h) Σ_{i ≤ h} (i / rank_i)`` over the ``h`` positives with ``rank_i <= k``.
  A valid query without a positive in its top ``k`` has ``AP@k = 0`` (it stays in the mean).
* **INP / mINP** (Ye et al., "Deep Learning for Person Re-identification: A Survey and
  Outlook"): ``num_positives / rank_of_the_last_positive``, averaged over valid queries.

Implementation: queries are processed in chunks so the full query×gallery matrix is never held
at once. For each chunk, the positive scores of every query are sorted (few per query) and each
gallery negative is placed among them with a batched binary search, which yields the rank of
every positive without sorting the gallery (``O(G log P)`` per query instead of ``O(G log G)``).
Everything runs on the device of the features. Scores are computed in fixed 256-row query blocks,
so the result does not depend on ``chunk_size`` at all (bit for bit).

Very large or very small features (a float32 row norm overflows beyond about ``1.8e19`` and
underflows below about ``1e-19``) are rescaled before scoring, so they rank like rescaled copies
of themselves instead of silently scoring 0 (cosine) or NaN (Euclidean).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from sdmreid._validation import check_bool, check_has_data, check_int, int64_array

__all__ = [
    "IgnoreRule",
    "RetrievalMetrics",
    "camera_pair_ignore",
    "evaluate_retrieval",
]

#: A per-query ignore rule: called with the (absolute) indices of a chunk of queries, a 1-D
#: ``int64`` tensor on the features' device, it returns a ``bool`` tensor ``[len(index), G]``
#: (``True`` = remove this gallery item from this query's ranking) on the same device.
IgnoreRule = Callable[[torch.Tensor], torch.Tensor]

Metric = Literal["cosine", "euclidean"]

# Scores are computed in blocks of this many query rows, aligned to multiples of it, so that
# matrix-multiplication rounding never depends on the chunk size.
_SCORE_BLOCK = 256
# Default number of query×gallery elements processed per chunk.
_DEFAULT_CHUNK_ELEMENTS = 1 << 23
# F.normalize's default eps: rows with a smaller norm would not come out as unit vectors.
_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------------------------
# result type
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RetrievalMetrics:
    """Result of :func:`evaluate_retrieval`.

    Attributes:
        cmc: ``float64`` CPU tensor; ``cmc[k-1]`` is the fraction of valid queries with their
            first positive at rank ``<= k``. Its length is the number of gallery items (every
            position); :meth:`rank` clamps larger ``k`` to the last value.
        mAP: mean average precision over valid queries (a fraction in ``[0, 1]``).
        mINP: mean inverse negative penalty over valid queries (a fraction in ``[0, 1]``).
        num_valid_queries: queries that had at least one positive after removal.
        num_skipped_queries: queries without a positive (not counted in any metric).
        ranks: the ranks reported by :meth:`as_dict`.
        dedup_cmc: whether the CMC was computed on identity-de-duplicated rankings.
        mAP_at_k: mean AP@k over valid queries when ``map_k`` was given, else ``None``.
        map_k: the cut-off ``k`` of :attr:`mAP_at_k` (``None``: not computed).

    Example:
        >>> import torch
        >>> from sdmreid.evaluation import evaluate_retrieval
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> g = torch.tensor([[0.9, 0.1], [0.1, 0.9], [1.0, 1.0]])
        >>> m = evaluate_retrieval(q, [0, 1], g, [0, 1, 1], ranks=(1, 2))
        >>> m.rank1, m.mAP, m.num_valid_queries
        (1.0, 1.0, 2)
        >>> sorted(m.as_dict())
        ['mAP', 'mINP', 'num_skipped_queries', 'num_valid_queries', 'rank1', 'rank2']
    """

    cmc: torch.Tensor
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int
    ranks: tuple[int, ...] = (1, 5, 10, 20)
    dedup_cmc: bool = False
    mAP_at_k: float | None = None
    map_k: int | None = None

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based); ranks beyond the gallery size give the last value."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if self.cmc.numel() == 0:
            return math.nan
        return float(self.cmc[min(int(k), self.cmc.numel()) - 1])

    @property
    def rank1(self) -> float:
        """CMC at rank 1."""
        return self.rank(1)

    @property
    def rank5(self) -> float:
        """CMC at rank 5."""
        return self.rank(5)

    @property
    def rank10(self) -> float:
        """CMC at rank 10."""
        return self.rank(10)

    @property
    def rank20(self) -> float:
        """CMC at rank 20."""
        return self.rank(20)

    def as_dict(self, prefix: str = "", *, percent: bool = False) -> dict[str, float]:
        """Flat ``{name: value}`` for loggers: ``rank{k}`` for each of :attr:`ranks`, ``mAP``,
        ``mAP@{k}`` (when computed), ``mINP`` and the two query counts. ``percent=True`` scales
        the rates by 100."""
        scale = 100.0 if check_bool("percent", percent) else 1.0
        out: dict[str, float] = {f"{prefix}rank{k}": scale * self.rank(k) for k in self.ranks}
        out[f"{prefix}mAP"] = scale * self.mAP
        if self.mAP_at_k is not None:
            out[f"{prefix}mAP@{self.map_k}"] = scale * self.mAP_at_k
        out[f"{prefix}mINP"] = scale * self.mINP
        out[f"{prefix}num_valid_queries"] = float(self.num_valid_queries)
        out[f"{prefix}num_skipped_queries"] = float(self.num_skipped_queries)
        return out

    def __str__(self) -> str:
        parts = [f"R{k}={100 * self.rank(k):.2f}" for k in self.ranks]
        parts.append(f"mAP={100 * self.mAP:.2f}")
        if self.mAP_at_k is not None:
            parts.append(f"mAP@{self.map_k}={100 * self.mAP_at_k:.2f}")
        parts.append(f"mINP={100 * self.mINP:.2f}")
        parts.append(f"valid={self.num_valid_queries} skipped={self.num_skipped_queries}")
        return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# input checking
# ----------------------------------------------------------------------------------------------


def _as_feats(x: object, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    check_has_data(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); need at least one row")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has feature dimension 0 (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x.detach()


def _as_ints(
    x: object, name: str, n: int | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """``x`` (a tensor, array or sequence of integers) as a 1-D ``int64`` tensor on ``device``
    (``None``: where a tensor already is, else the CPU), checked to have ``n`` entries."""
    if isinstance(x, torch.Tensor):
        check_has_data(x, name)
        t = x.detach()
    else:
        arr = int64_array(x, name)  # refuses integers beyond int64 by name
        if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} has length {t.shape[0]}, expected {n} (one per item)")
    return t.to(device=device, dtype=torch.int64)


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(ranks)
    except TypeError:
        raise TypeError(f"ranks must be a sequence of integers, got {ranks!r}") from None
    if not out:
        raise ValueError("ranks must not be empty")
    for k in out:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ranks must be integers >= 1, got {ranks!r}")
    return tuple(int(k) for k in out)


# ----------------------------------------------------------------------------------------------
# scoring and ordering
# ----------------------------------------------------------------------------------------------


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows (``F.normalize``), also for rows whose norm overflows or underflows.

    Such rows (the sum of squares leaves the floating range, or the norm falls below
    ``F.normalize``'s eps) are first divided by their largest magnitude; every other row is
    divided by its norm exactly as ``F.normalize`` does, so its scores are the usual ones bit
    for bit. All-zero rows stay zero.
    """
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    unsafe = (~torch.isfinite(norm) | (norm < _NORM_EPS))[:, 0]
    if bool(unsafe.any()):
        top = x[unsafe].abs().amax(1, keepdim=True)
        x = x.clone()
        x[unsafe] = x[unsafe] / torch.where(top > 0, top, 1.0)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    unit: torch.Tensor = x / norm.clamp_min(_NORM_EPS)
    return unit


def _safe_euclidean_scale(q: torch.Tensor, g: torch.Tensor) -> float:
    """A power of two to multiply both sides by so that squared distances stay finite and normal.

    The largest possible squared distance is ``4 d top²`` (``top`` the largest magnitude).
    Multiplying every feature by the same power of two multiplies every squared distance by its
    square, which keeps the order; ``1.0`` when no scaling is needed.
    """
    top = max(float(q.abs().max()), float(g.abs().max()))
    info = torch.finfo(q.dtype)
    if top == 0.0 or (top * top >= info.tiny and 4.0 * q.shape[1] * top * top < info.max):
        return 1.0
    return math.ldexp(1.0, -math.frexp(top)[1])


def _fill_scores(
    out: torch.Tensor,
    q: torch.Tensor,
    g_t: torch.Tensor,
    q_sqnorm: torch.Tensor | None,
    g_sqnorm: torch.Tensor | None,
) -> None:
    """Write scores whose ascending order is the ranking into ``out`` (one chunk of queries).

    ``q`` is pre-negated for cosine (so ``q @ g_t`` is ``-cos``, exactly). Matrix products are
    taken in blocks of :data:`_SCORE_BLOCK` rows aligned to the chunk start (a multiple of the
    block), so every value is bit-identical whatever the chunk size.
    """
    for b in range(0, q.shape[0], _SCORE_BLOCK):
        torch.mm(q[b : b + _SCORE_BLOCK], g_t, out=out[b : b + _SCORE_BLOCK])
    if q_sqnorm is not None and g_sqnorm is not None:  # squared Euclidean distance
        out.mul_(-2.0).add_(q_sqnorm[:, None]).add_(g_sqnorm[None, :])


def _sorted_positives(
    scores: torch.Tensor, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query's positive scores in ascending order, their gallery indices and their count.

    The scores and indices are ``[c, pmax + 1]`` (``pmax`` the largest count), padded with
    ``+inf`` scores (index ``G``), so every finite score has a slot at or before the first
    padding entry.
    """
    c, g = scores.shape
    rows, cols = pos.nonzero(as_tuple=True)
    npos = torch.bincount(rows, minlength=c)
    pmax = int(npos.max())
    slot = torch.arange(rows.numel(), device=scores.device) - (torch.cumsum(npos, 0) - npos)[rows]
    pos_scores = torch.full((c, pmax + 1), math.inf, dtype=scores.dtype, device=scores.device)
    pos_scores[rows, slot] = scores[rows, cols]
    pos_index = torch.full((c, pmax + 1), g, dtype=torch.int64, device=scores.device)
    pos_index[rows, slot] = cols
    pos_scores, order = torch.sort(pos_scores, dim=1, stable=True)
    return pos_scores, pos_index.gather(1, order), npos


def _positives_before(
    scores: torch.Tensor,
    not_negative: torch.Tensor,
    pos_scores: torch.Tensor,
    pos_index: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """For every negative, the number of the query's positives ranked before it.

    A binary search among the few sorted positive scores counts the strictly better positives.
    A negative with exactly a positive's score comes after that positive only when its gallery
    index is larger (index tie-break); such exact ties are rare, so they are counted separately
    for just the tied items. Entries where ``not_negative`` is set are unspecified.
    """
    before = torch.searchsorted(pos_scores, scores, out=out)
    tied = pos_scores.gather(1, before) == scores
    tied.masked_fill_(not_negative, False)
    if bool(tied.any()):
        r, col = tied.nonzero(as_tuple=True)
        earlier = (pos_scores[r] == scores[r, col, None]) & (pos_index[r] < col[:, None])
        before[r, col] += earlier.sum(1)
    return before


def camera_pair_ignore(
    query_cams: npt.ArrayLike | torch.Tensor,
    gallery_cams: npt.ArrayLike | torch.Tensor,
    pairs: Mapping[int, Sequence[int]],
) -> IgnoreRule:
    """An :data:`IgnoreRule` removing *every* gallery item of given cameras for queries of a camera.

    ``pairs={3: [2]}`` removes all camera-2 gallery items from the ranking of each camera-3 query,
    whatever their identity (SYSU-MM01's same-location rule).

    Args:
        query_cams: camera of each query (1-D integers).
        gallery_cams: camera of each gallery item (1-D integers).
        pairs: ``{query_camera: [gallery cameras to ignore]}``.

    Returns:
        A callable for the ``ignore`` argument of :func:`evaluate_retrieval`.

    Example:
        >>> import torch
        >>> rule = camera_pair_ignore([3, 6], [1, 2, 2], {3: [2]})
        >>> rule(torch.tensor([0, 1]))
        tensor([[False,  True,  True],
                [False, False, False]])
    """
    qc = _as_ints(query_cams, "query_cams", device=torch.device("cpu"))
    gc = _as_ints(gallery_cams, "gallery_cams", device=torch.device("cpu"))
    if not isinstance(pairs, Mapping):
        raise TypeError(f"pairs must be a dict {{query_cam: [gallery cams]}}, got {pairs!r}")
    # table[q_cam_code, g_cam_code] over the distinct cameras
    cams, inv = torch.unique(torch.cat([qc, gc]), return_inverse=True)
    q_code, g_code = inv[: qc.numel()], inv[qc.numel() :]
    table = torch.zeros(cams.numel(), cams.numel(), dtype=torch.bool)
    lookup = {int(c): i for i, c in enumerate(cams.tolist())}
    for qcam, gcams in pairs.items():
        if int(qcam) not in lookup:
            continue
        for gcam in gcams:
            if int(gcam) in lookup:
                table[lookup[int(qcam)], lookup[int(gcam)]] = True
    cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def rule(query_index: torch.Tensor) -> torch.Tensor:
        dev = query_index.device
        if dev not in cache:
            cache[dev] = (q_code.to(dev), g_code.to(dev), table.to(dev))
        qd, gd, td = cache[dev]
        mask: torch.Tensor = td[qd[query_index]][:, gd]
        return mask

    return rule


# ----------------------------------------------------------------------------------------------
# main entry point
# ----------------------------------------------------------------------------------------------


def evaluate_retrieval(
    query_feats: torch.Tensor | npt.NDArray[Any],
    query_labels: npt.ArrayLike | torch.Tensor,
    gallery_feats: torch.Tensor | npt.NDArray[Any],
    gallery_labels: npt.ArrayLike | torch.Tensor,
    *,
    query_cams: npt.ArrayLike | torch.Tensor | None = None,
    gallery_cams: npt.ArrayLike | torch.Tensor | None = None,
    ranks: Sequence[int] = (1, 5, 10, 20),
    metric: Metric = "cosine",
    chunk_size: int | None = None,
    dedup_cmc: bool = False,
    ignore: IgnoreRule | None = None,
    map_k: int | None = None,
) -> RetrievalMetrics:
    """Rank the gallery for every query and compute CMC, mAP and mINP.

    See the module documentation for the exact rules (removal, skipped queries, tie-breaking,
    de-duplicated CMC).

    Args:
        query_feats: ``[Q, d]`` float tensor (or array) of query features.
        query_labels: ``[Q]`` integer identities.
        gallery_feats: ``[G, d]`` float tensor on the same device as ``query_feats``.
        gallery_labels: ``[G]`` integer identities.
        query_cams: ``[Q]`` integer cameras; with ``gallery_cams`` enables the
            same-identity-same-camera removal. Give both or neither.
        gallery_cams: ``[G]`` integer cameras.
        ranks: the CMC ranks reported by :meth:`RetrievalMetrics.as_dict` (the full curve is
            always computed).
        metric: ``"cosine"`` (default) or ``"euclidean"``.
        chunk_size: number of queries per chunk; ``None`` picks about 8M query×gallery
            elements per chunk. Rounded up to a multiple of 256. The result never depends on it.
        dedup_cmc: rank distinct identities for the CMC (official SYSU-MM01 rule); a bool.
        ignore: an extra :data:`IgnoreRule` (applied on top of the camera rule).
        map_k: also compute the truncated mAP@k with this ``k`` (an integer >= 1; see the
            module documentation); ``None`` (default) skips it.

    Returns:
        :class:`RetrievalMetrics`.

    Raises:
        ValueError: mismatched shapes/lengths, empty query or gallery, NaN/inf features, a
            tensor on the ``meta`` device, Python integers beyond int64 in the labels or
            cameras, an unknown ``metric``, bad ``ranks``/``chunk_size``, only one of the camera
            arrays, an ``ignore`` rule returning the wrong shape, ``map_k < 1``, or no query
            with a positive.
        TypeError: non-integer labels or cameras, a non-bool ``dedup_cmc`` or a non-integer
            ``map_k``.

    Example:
        >>> import torch
        >>> from sdmreid.evaluation import evaluate_retrieval
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> g = torch.tensor([[0.0, 1.0], [1.0, 0.1], [0.5, 0.5]])
        >>> m = evaluate_retrieval(q, [7], g, [7, 3, 7], ranks=(1, 3))
        >>> m.rank1, m.cmc.tolist(), round(m.mAP, 4), round(m.mINP, 4)
        (0.0, [0.0, 1.0, 1.0], 0.5833, 0.6667)
        >>> evaluate_retrieval(q, [7], g, [7, 3, 7], map_k=2).mAP_at_k  # only rank 2 counts
        0.5
    """
    qf = _as_feats(query_feats, "query_feats")
    gf = _as_feats(gallery_feats, "gallery_feats")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"query_feats and gallery_feats must have the same feature dimension, got "
            f"{qf.shape[1]} and {gf.shape[1]}"
        )
    if qf.device != gf.device:
        raise ValueError(
            f"query_feats and gallery_feats must be on the same device, got {qf.device} and "
            f"{gf.device}"
        )
    device = qf.device
    nq, ng = qf.shape[0], gf.shape[0]
    ql = _as_ints(query_labels, "query_labels", nq, device)
    gl = _as_ints(gallery_labels, "gallery_labels", ng, device)
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("give both query_cams and gallery_cams, or neither")
    qc = gc = None
    if query_cams is not None and gallery_cams is not None:
        qc = _as_ints(query_cams, "query_cams", nq, device)
        gc = _as_ints(gallery_cams, "gallery_cams", ng, device)
    ranks_t = _check_ranks(ranks)
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if chunk_size is None:
        chunk = max(1, _DEFAULT_CHUNK_ELEMENTS // ng)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    else:
        chunk = chunk_size
    chunk = -(-chunk // _SCORE_BLOCK) * _SCORE_BLOCK
    if ignore is not None and not callable(ignore):
        raise TypeError(f"ignore must be callable or None, got {type(ignore).__name__}")
    check_bool("dedup_cmc", dedup_cmc)
    if map_k is not None:
        map_k = check_int("map_k", map_k, 1)

    compute_dtype = torch.float64 if torch.float64 in (qf.dtype, gf.dtype) else torch.float32
    qf = qf.to(compute_dtype)
    gf = gf.to(compute_dtype)
    q_sqnorm = g_sqnorm = None
    if metric == "cosine":
        qf = -_unit_rows(qf)  # q @ g.T is then -cos: ascending order = ranking
        gf = _unit_rows(gf)
    else:
        scale = _safe_euclidean_scale(qf, gf)
        if scale != 1.0:
            qf, gf = qf * scale, gf * scale
        q_sqnorm = (qf * qf).sum(1)
        g_sqnorm = (gf * gf).sum(1)
    g_t = gf.T.contiguous()

    g_codes = None
    num_ids = 0
    if dedup_cmc:
        _, g_codes = torch.unique(gl, return_inverse=True)
        num_ids = int(g_codes.max()) + 1

    first_rank = torch.zeros(nq, dtype=torch.int64, device=device)  # 0 = skipped
    ap = torch.zeros(nq, dtype=torch.float64, device=device)
    inp = torch.zeros(nq, dtype=torch.float64, device=device)
    ap_at_k = torch.zeros(nq, dtype=torch.float64, device=device)

    rows_max = min(chunk, nq)
    score_buf = torch.empty((rows_max, ng), dtype=compute_dtype, device=device)
    before_buf = torch.empty((rows_max, ng), dtype=torch.int64, device=device)
    for start in range(0, nq, chunk):
        stop = min(start + chunk, nq)
        c = stop - start
        scores = score_buf[:c]
        _fill_scores(
            scores,
            qf[start:stop],
            g_t,
            None if q_sqnorm is None else q_sqnorm[start:stop],
            g_sqnorm,
        )
        # positives: same identity, not removed; negatives: other identity, not removed
        same_id = gl[None, :] == ql[start:stop, None]
        pos, not_negative = same_id, same_id
        if qc is not None and gc is not None:
            pos = same_id & (gc[None, :] != qc[start:stop, None])
        if ignore is not None:
            extra = ignore(torch.arange(start, stop, device=device))
            if not isinstance(extra, torch.Tensor) or tuple(extra.shape) != (c, ng):
                shape = tuple(extra.shape) if isinstance(extra, torch.Tensor) else type(extra)
                raise ValueError(
                    f"ignore must return a bool tensor of shape ({c}, {ng}), got {shape}"
                )
            extra = extra.to(device=device, dtype=torch.bool)
            pos = pos & ~extra
            not_negative = same_id | extra
        pos_scores, pos_index, npos = _sorted_positives(scores, pos)
        pmax = pos_scores.shape[1] - 1
        if pmax == 0:
            continue
        before = _positives_before(scores, not_negative, pos_scores, pos_index, before_buf[:c])
        # negatives ranked before the i-th positive: a histogram over "positives before", summed
        before.masked_fill_(not_negative, pmax)  # a bucket that is never read
        hist = torch.zeros((c, pmax + 1), dtype=torch.int64, device=device)
        hist.scatter_add_(1, before, torch.ones((), dtype=torch.int64, device=device).expand(c, ng))
        neg_before = torch.cumsum(hist[:, :pmax], 1)
        slots = torch.arange(pmax, device=device)
        pos_rank = neg_before + slots[None, :] + 1  # rank of the i-th positive (1-based)
        in_row = slots[None, :] < npos[:, None]
        valid_q = npos > 0
        npos_f = npos.to(torch.float64)
        precision = torch.where(
            in_row, (slots[None, :] + 1).to(torch.float64) / pos_rank.to(torch.float64), 0.0
        )
        ap_c = precision.sum(1) / npos_f.clamp_min(1.0)
        last = pos_rank.gather(1, (npos - 1).clamp_min(0)[:, None])[:, 0]
        inp_c = npos_f / last.to(torch.float64)
        if map_k is not None:  # AP over the positives within the top map_k ranks
            top = in_row & (pos_rank <= map_k)
            hits = top.sum(1).clamp_min(1).to(torch.float64)
            ap_at_k[start:stop] = torch.where(valid_q, (precision * top).sum(1) / hits, 0.0)
        if g_codes is not None:
            ahead = before == 0  # negatives ranked before the first positive
            code = torch.where(ahead, g_codes[None, :], torch.full_like(before, num_ids))
            seen = torch.zeros((c, num_ids + 1), dtype=torch.bool, device=device)
            seen.scatter_(1, code, True)
            fr = seen[:, :num_ids].sum(1) + 1
        else:
            fr = pos_rank[:, 0]
        first_rank[start:stop] = torch.where(valid_q, fr, 0)
        ap[start:stop] = torch.where(valid_q, ap_c, 0.0)
        inp[start:stop] = torch.where(valid_q, inp_c, 0.0)

    valid = first_rank > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError(
            "no query has a positive gallery item after removal (check the labels, cameras and "
            "ignore rule); the metrics are undefined"
        )
    counts = torch.bincount(first_rank[valid] - 1, minlength=ng).cpu()
    cmc = torch.cumsum(counts, 0).to(torch.float64) / n_valid
    m_ap = float(ap[valid].cpu().sum()) / n_valid
    m_inp = float(inp[valid].cpu().sum()) / n_valid
    m_ap_at_k = None if map_k is None else float(ap_at_k[valid].cpu().sum()) / n_valid
    return RetrievalMetrics(
        cmc=cmc,
        mAP=m_ap,
        mINP=m_inp,
        num_valid_queries=n_valid,
        num_skipped_queries=nq - n_valid,
        ranks=ranks_t,
        dedup_cmc=dedup_cmc,
        mAP_at_k=m_ap_at_k,
        map_k=map_k,
    )
