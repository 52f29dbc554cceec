"""Cross-modal retrieval protocols: modality selection, query fusion and benchmark presets.

Everything here works on arrays that the caller has already extracted (features, identity labels,
cameras, modalities and, for SYSU-MM01's official permutation, image numbers); nothing reads
images or split files except :func:`load_sysu_permutation`, which reads the official
``exp/rand_perm_cam.mat`` (it needs SciPy, an optional dependency).

Helpers:

* :func:`cross_modal_split` — query/gallery indices by modality (NIR→RGB, text→RGB, ...).
* :func:`fuse_queries` — multi-modal queries (PRCV2025 "MM-k"): one query per
  (identity, query group), the mean of the group's L2-normalised embeddings by default.
* :func:`evaluate_cross_modal` — the two above plus :func:`~sdmreid.evaluation.evaluate_retrieval`
  (text/sketch/colour-pencil → RGB: no camera filtering, standard CMC).

Presets (each returns a :class:`ProtocolResult` with the mean over trials and every trial; a
sequence of directions returns ``{direction: ProtocolResult}``). A direction is written
``"<query>_to_<gallery>"`` with any modality alias (``"nir_to_rgb"``, ``"ir_to_visible"``,
``"visible_to_thermal"``); result keys use the canonical form ``"nir_to_rgb"``/``"rgb_to_nir"``.

* :func:`evaluate_sysu_mm01` — SYSU-MM01 all-/indoor-search, single-/multi-shot, 10 trials.
  Query: every image of the query-modality cameras (NIR: 3 and 6; RGB: 1, 2, 4, 5 for all-search,
  1 and 2 for indoor-search). Gallery: ``shots`` images per (identity, camera) of the gallery
  cameras, taken from the official permutation when given (the first ``shots`` entries of row
  ``trial``), otherwise drawn with ``numpy.random.default_rng(seed + trial)``. Same-location
  rule: cameras 2 and 3 stand in the same place, so a camera-3 query ignores *every* camera-2
  gallery image whatever its identity (and, in the reverse direction, a camera-2 query ignores
  every camera-3 image). CMC is identity-de-duplicated (official code); mAP and mINP are not.
* :func:`evaluate_regdb` — per-trial features (one model per trial), no camera filtering,
  standard CMC, both directions.
* :func:`evaluate_llcm` — single-shot gallery per (identity, camera) drawn with
  ``default_rng(seed + trial)``, gallery items with the query's identity *and* camera removed,
  standard CMC, both directions.

Gallery draws are independent of the order of the input arrays: candidates are first put in a
canonical order (camera, identity, image number — or input position when no image numbers are
given), then the seeded generator picks within each (identity, camera) group.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, overload

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from sdmreid.evaluation.metrics import (
    Metric,
    RetrievalMetrics,
    camera_pair_ignore,
    evaluate_retrieval,
)
from sdmreid.modality import Modality, as_modality_array, parse_modality

__all__ = [
    "LLCM_NIR_CAMS",
    "LLCM_RGB_CAMS",
    "SYSU_ALL_RGB_CAMS",
    "SYSU_INDOOR_RGB_CAMS",
    "SYSU_NIR_CAMS",
    "FusedQueries",
    "ProtocolResult",
    "RegDBTrial",
    "SYSUPermutation",
    "cross_modal_split",
    "draw_gallery",
    "evaluate_cross_modal",
    "evaluate_llcm",
    "evaluate_regdb",
    "evaluate_sysu_mm01",
    "fuse_queries",
    "load_sysu_permutation",
    "mean_over_trials",
    "parse_direction",
    "parse_sysu_paths",
]

SYSU_NIR_CAMS: tuple[int, ...] = (3, 6)
SYSU_ALL_RGB_CAMS: tuple[int, ...] = (1, 2, 4, 5)
SYSU_INDOOR_RGB_CAMS: tuple[int, ...] = (1, 2)
LLCM_RGB_CAMS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLCM_NIR_CAMS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 8, 9)

#: Official SYSU-MM01 gallery permutation: ``{(camera, identity): int array [trials, n]}`` of
#: 1-based image numbers (the number in ``cam{c}/{id:04d}/{number:04d}.jpg``).
SYSUPermutation = Mapping[tuple[int, int], npt.NDArray[np.int64]]

Tensorish = Union[torch.Tensor, npt.NDArray[Any]]  # noqa: UP007
IntArrayLike = Union[npt.ArrayLike, torch.Tensor]  # noqa: UP007


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _np_ints(x: IntArrayLike, name: str, n: int | None = None) -> npt.NDArray[np.int64]:
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.dtype.is_floating_point or x.dtype.is_complex:
            raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
        arr: npt.NDArray[Any] = x.detach().cpu().numpy()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    return arr.astype(np.int64, copy=False)


def _feats(x: Tensorish, name: str) -> torch.Tensor:
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {tuple(t.shape)}")
    return t


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


def _check_trials(num_trials: int) -> None:
    if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")


def _check_shots(shots: int) -> None:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer (1 = single-shot), got {shots!r}")


# ----------------------------------------------------------------------------------------------
# results over trials
# ----------------------------------------------------------------------------------------------


def mean_over_trials(trials: Sequence[RetrievalMetrics]) -> RetrievalMetrics:
    """Average trial metrics: CMC curves (shorter ones padded with their last value), mAP, mINP.

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
    return RetrievalMetrics(
        cmc=cmc,
        mAP=float(np.mean([t.mAP for t in trials])),
        mINP=float(np.mean([t.mINP for t in trials])),
        num_valid_queries=sum(t.num_valid_queries for t in trials),
        num_skipped_queries=sum(t.num_skipped_queries for t in trials),
        ranks=trials[0].ranks,
        dedup_cmc=trials[0].dedup_cmc,
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
    x = _feats(feats, "feats")
    lab = _np_ints(labels, "labels", x.shape[0])
    qi, gi = cross_modal_split(modalities, query_modality, gallery_modality)
    if len(as_modality_array(modalities)) != x.shape[0]:  # type: ignore[arg-type]
        raise ValueError("modalities must have one entry per row of feats")
    qi_t = torch.from_numpy(qi).to(x.device)
    gi_t = torch.from_numpy(gi).to(x.device)
    if query_groups is not None:
        if cams is not None:
            raise ValueError("cams cannot be combined with query_groups (fused queries)")
        grp = _np_ints(query_groups, "query_groups", x.shape[0])
        fused = fuse_queries(x[qi_t], lab[qi], grp[qi], normalize=fuse_normalize)
        return evaluate_retrieval(fused.feats, fused.labels, x[gi_t], lab[gi], **kwargs)
    if cams is not None:
        cam = _np_ints(cams, "cams", x.shape[0])
        kwargs = {**kwargs, "query_cams": cam[qi], "gallery_cams": cam[gi]}
    return evaluate_retrieval(x[qi_t], lab[qi], x[gi_t], lab[gi], **kwargs)


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
    """The seeded single-/multi-shot gallery draw of :func:`evaluate_sysu_mm01` and
    :func:`evaluate_llcm`: up to ``shots`` of ``candidates`` per (camera, identity).

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


def _permuted_gallery(
    candidates: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    cams: npt.NDArray[np.int64],
    image_index: npt.NDArray[np.int64],
    shots: int,
    trial: int,
    permutation: SYSUPermutation,
) -> npt.NDArray[np.int64]:
    lookup: dict[tuple[int, int, int], int] = {}
    for i in candidates.tolist():
        key = (int(cams[i]), int(labels[i]), int(image_index[i]))
        if key in lookup:
            raise ValueError(
                f"image_index is not unique within (camera, identity): camera {key[0]}, "
                f"identity {key[1]}, image {key[2]} appears twice"
            )
        lookup[key] = i
    groups = sorted({(int(cams[i]), int(labels[i])) for i in candidates.tolist()})
    out: list[int] = []
    for cam, pid in groups:
        if (cam, pid) not in permutation:
            raise ValueError(f"permutation has no entry for camera {cam}, identity {pid}")
        perm = np.atleast_2d(np.asarray(permutation[(cam, pid)]))
        if trial >= perm.shape[0]:
            raise ValueError(
                f"permutation for camera {cam}, identity {pid} has {perm.shape[0]} trials; "
                f"trial {trial} requested"
            )
        for number in perm[trial, :shots].tolist():
            key = (cam, pid, int(number))
            if key not in lookup:
                raise ValueError(
                    f"permutation selects image {int(number)} of camera {cam}, identity {pid}, "
                    f"which is not among the given items (check image_index)"
                )
            out.append(lookup[key])
    return np.asarray(out, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# SYSU-MM01
# ----------------------------------------------------------------------------------------------


def parse_sysu_paths(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(cams, identities, image_numbers)`` from SYSU-MM01 paths ``.../cam{c}/{id}/{n}.jpg``.

    Only the last three path components are used.

    Example:
        >>> paths = ["SYSU-MM01/cam3/0001/0004.jpg", "cam1/0012/0001.jpg"]
        >>> cams, ids, nums = parse_sysu_paths(paths)
        >>> cams.tolist(), ids.tolist(), nums.tolist()
        ([3, 1], [1, 12], [4, 1])
    """
    cams, ids, nums = [], [], []
    for p in paths:
        parts = os.fspath(p).replace("\\", "/").split("/")
        if len(parts) < 3 or not parts[-3].startswith("cam"):
            raise ValueError(f"paths: expected '.../cam<c>/<id>/<n>.<ext>', got {p!r}")
        try:
            cams.append(int(parts[-3][3:]))
            ids.append(int(parts[-2]))
            nums.append(int(os.path.splitext(parts[-1])[0]))
        except ValueError:
            raise ValueError(f"paths: expected '.../cam<c>/<id>/<n>.<ext>', got {p!r}") from None
    return (
        np.asarray(cams, dtype=np.int64),
        np.asarray(ids, dtype=np.int64),
        np.asarray(nums, dtype=np.int64),
    )


def load_sysu_permutation(path: str | os.PathLike[str]) -> dict[tuple[int, int], Any]:
    """Load the official ``exp/rand_perm_cam.mat`` as ``{(camera, identity): [trials, n]}``.

    Needs SciPy (``scipy.io.loadmat``), which is not a dependency of sdmreid. The values are the
    1-based image numbers of the official MATLAB code; identity ``k`` is the ``k``-th entry
    (1-based) of the camera's cell, i.e. the folder name ``{k:04d}``.

    Raises:
        ImportError: SciPy is not installed.
        ValueError: the file does not hold a ``rand_perm_cam`` cell array.
    """
    try:
        scipy_io = importlib.import_module("scipy.io")
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_sysu_permutation needs SciPy (pip install scipy); or pass permutation=None "
            "for the seeded draw"
        ) from err
    mat = scipy_io.loadmat(os.fspath(path))
    if "rand_perm_cam" not in mat:
        raise ValueError(f"{os.fspath(path)!r} has no 'rand_perm_cam' variable")
    cells = np.asarray(mat["rand_perm_cam"], dtype=object).reshape(-1)
    out: dict[tuple[int, int], Any] = {}
    for cam_pos, cam_cell in enumerate(cells):
        persons = np.asarray(cam_cell, dtype=object).reshape(-1)
        if persons.size == 1 and isinstance(persons[0], np.ndarray) and persons[0].dtype == object:
            persons = persons[0].reshape(-1)
        for pid_pos, perm in enumerate(persons):
            arr = np.asarray(perm)
            if arr.size == 0:
                continue
            out[(cam_pos + 1, pid_pos + 1)] = np.atleast_2d(arr).astype(np.int64)
    return out


@overload
def evaluate_sysu_mm01(
    feats: Tensorish,
    labels: IntArrayLike,
    cams: IntArrayLike,
    *,
    direction: str = ...,
    mode: Literal["all", "indoor"] = ...,
    shots: int = ...,
    num_trials: int = ...,
    image_index: IntArrayLike | None = ...,
    permutation: SYSUPermutation | str | os.PathLike[str] | None = ...,
    seed: int = ...,
    ranks: Sequence[int] = ...,
    metric: Metric = ...,
    chunk_size: int | None = ...,
) -> ProtocolResult: ...
@overload
def evaluate_sysu_mm01(
    feats: Tensorish,
    labels: IntArrayLike,
    cams: IntArrayLike,
    *,
    direction: list[str] | tuple[str, ...],
    mode: Literal["all", "indoor"] = ...,
    shots: int = ...,
    num_trials: int = ...,
    image_index: IntArrayLike | None = ...,
    permutation: SYSUPermutation | str | os.PathLike[str] | None = ...,
    seed: int = ...,
    ranks: Sequence[int] = ...,
    metric: Metric = ...,
    chunk_size: int | None = ...,
) -> dict[str, ProtocolResult]: ...
def evaluate_sysu_mm01(
    feats: Tensorish,
    labels: IntArrayLike,
    cams: IntArrayLike,
    *,
    direction: str | Sequence[str] = "nir_to_rgb",
    mode: Literal["all", "indoor"] = "all",
    shots: int = 1,
    num_trials: int = 10,
    image_index: IntArrayLike | None = None,
    permutation: SYSUPermutation | str | os.PathLike[str] | None = None,
    seed: int = 0,
    ranks: Sequence[int] = (1, 5, 10, 20),
    metric: Metric = "cosine",
    chunk_size: int | None = None,
) -> ProtocolResult | dict[str, ProtocolResult]:
    """SYSU-MM01 all-search / indoor-search evaluation over trials (see the module docs).

    Args:
        feats: ``[N, d]`` features of the test-identity images of all six cameras (or at least
            of the cameras the direction uses). RGB cameras are 1, 2, 4, 5; NIR cameras 3, 6.
        labels: ``[N]`` SYSU identities (the folder numbers, not relabelled, when a permutation
            is used).
        cams: ``[N]`` camera numbers 1..6.
        direction: ``"nir_to_rgb"`` (the official setting), ``"rgb_to_nir"``, or a sequence.
        mode: ``"all"`` (gallery/query RGB cameras 1, 2, 4, 5) or ``"indoor"`` (1, 2).
        shots: gallery images per (identity, camera): 1 single-shot, 10 multi-shot.
        num_trials: number of trials (10 in the published protocol).
        image_index: ``[N]`` image number within its (camera, identity) folder (the ``n`` in
            ``cam3/0001/000n.jpg``, see :func:`parse_sysu_paths`). Needed with ``permutation``;
            otherwise only used to make the seeded draw independent of the input order.
        permutation: the official permutation (a mapping, or the path of ``rand_perm_cam.mat``
            loaded with :func:`load_sysu_permutation`); ``None`` uses
            ``numpy.random.default_rng(seed + trial)``.
        seed: base seed of the seeded draw (trial ``t`` uses ``seed + t``).
        ranks: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.
        metric: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.
        chunk_size: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.

    Returns:
        A :class:`ProtocolResult` (``name="sysu_mm01/{mode}/{single|multi-N}"``), or
        ``{direction: ProtocolResult}`` for a sequence of directions.

    Example:
        >>> import torch
        >>> feats = torch.eye(4)[[0, 1, 0, 0, 1, 1]]
        >>> labels = [1, 2, 1, 1, 2, 2]
        >>> cams = [3, 3, 1, 2, 1, 2]
        >>> r = evaluate_sysu_mm01(feats, labels, cams, mode="indoor", num_trials=2, ranks=(1,))
        >>> r.mean.rank1, r.mean.mAP, len(r.trials)
        (1.0, 1.0, 2)
    """
    single, dirs = _directions(direction)
    if mode not in ("all", "indoor"):
        raise ValueError(f"mode must be 'all' or 'indoor', got {mode!r}")
    _check_shots(shots)
    _check_trials(num_trials)
    x = _feats(feats, "feats")
    n = x.shape[0]
    lab = _np_ints(labels, "labels", n)
    cam = _np_ints(cams, "cams", n)
    bad = ~np.isin(cam, (1, 2, 3, 4, 5, 6))
    if bad.any():
        raise ValueError(f"cams must be SYSU-MM01 cameras 1..6, got {int(cam[bad][0])}")
    img = None if image_index is None else _np_ints(image_index, "image_index", n)
    perm: SYSUPermutation | None
    if isinstance(permutation, (str, os.PathLike)):
        perm = load_sysu_permutation(permutation)
    else:
        perm = permutation
    if perm is not None and img is None:
        raise ValueError("image_index is required with permutation (see parse_sysu_paths)")
    rgb_cams = SYSU_ALL_RGB_CAMS if mode == "all" else SYSU_INDOOR_RGB_CAMS
    shot_name = "single" if shots == 1 else f"multi-{shots}"
    results: dict[str, ProtocolResult] = {}
    for qm, gm in dirs:
        if {qm, gm} != {Modality.RGB, Modality.NIR}:
            raise ValueError(
                f"direction for SYSU-MM01 must be nir_to_rgb or rgb_to_nir, got "
                f"{_direction_key(qm, gm)}"
            )
        q_cams = SYSU_NIR_CAMS if qm == Modality.NIR else rgb_cams
        g_cams = rgb_cams if qm == Modality.NIR else SYSU_NIR_CAMS
        pairs = {3: [2]} if qm == Modality.NIR else {2: [3]}
        qi = np.flatnonzero(np.isin(cam, q_cams)).astype(np.int64)
        cand = np.flatnonzero(np.isin(cam, g_cams)).astype(np.int64)
        if qi.size == 0:
            raise ValueError(f"no query image: no item from cameras {q_cams}")
        if cand.size == 0:
            raise ValueError(f"no gallery image: no item from cameras {g_cams}")
        qf = x[torch.from_numpy(qi).to(x.device)]
        trials = []
        for t in range(num_trials):
            if perm is not None:
                assert img is not None  # checked above
                gi = _permuted_gallery(cand, lab, cam, img, shots, t, perm)
            else:
                gi = _seeded_gallery(cand, lab, cam, img, shots, seed + t)
            rule = camera_pair_ignore(cam[qi], cam[gi], pairs)
            trials.append(
                evaluate_retrieval(
                    qf,
                    lab[qi],
                    x[torch.from_numpy(gi).to(x.device)],
                    lab[gi],
                    ranks=ranks,
                    metric=metric,
                    chunk_size=chunk_size,
                    dedup_cmc=True,
                    ignore=rule,
                )
            )
        key = _direction_key(qm, gm)
        results[key] = ProtocolResult(
            f"sysu_mm01/{mode}/{shot_name}", key, mean_over_trials(trials), tuple(trials)
        )
    return next(iter(results.values())) if single else results


# ----------------------------------------------------------------------------------------------
# RegDB
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RegDBTrial:
    """Test features of one RegDB trial, extracted with the model trained on that trial."""

    visible_feats: Tensorish
    visible_labels: IntArrayLike
    thermal_feats: Tensorish
    thermal_labels: IntArrayLike


@overload
def evaluate_regdb(
    trials: Sequence[RegDBTrial | tuple[Any, Any, Any, Any]],
    *,
    direction: str,
    ranks: Sequence[int] = ...,
    metric: Metric = ...,
    chunk_size: int | None = ...,
) -> ProtocolResult: ...
@overload
def evaluate_regdb(
    trials: Sequence[RegDBTrial | tuple[Any, Any, Any, Any]],
    *,
    direction: list[str] | tuple[str, ...] = ...,
    ranks: Sequence[int] = ...,
    metric: Metric = ...,
    chunk_size: int | None = ...,
) -> dict[str, ProtocolResult]: ...
def evaluate_regdb(
    trials: Sequence[RegDBTrial | tuple[Any, Any, Any, Any]],
    *,
    direction: str | Sequence[str] = ("visible_to_thermal", "thermal_to_visible"),
    ranks: Sequence[int] = (1, 5, 10, 20),
    metric: Metric = "cosine",
    chunk_size: int | None = None,
) -> ProtocolResult | dict[str, ProtocolResult]:
    """RegDB: every trial evaluated with its own features, no camera filtering, standard CMC.

    Each trial must come from the model trained on that trial's split (testing one model on all
    trials leaks test identities). The published protocol has 10 trials.

    Args:
        trials: one :class:`RegDBTrial` (or ``(visible_feats, visible_labels, thermal_feats,
            thermal_labels)`` tuple) per trial.
        direction: ``"visible_to_thermal"``, ``"thermal_to_visible"``, or a sequence (default:
            both). Result keys are canonical: ``"rgb_to_nir"`` / ``"nir_to_rgb"``.
        ranks: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.
        metric: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.
        chunk_size: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.

    Example:
        >>> import torch
        >>> t = RegDBTrial(torch.eye(2), [0, 1], torch.eye(2), [0, 1])
        >>> res = evaluate_regdb([t, t])
        >>> sorted(res), res["rgb_to_nir"].mean.rank1
        (['nir_to_rgb', 'rgb_to_nir'], 1.0)
    """
    single, dirs = _directions(direction)
    if isinstance(trials, RegDBTrial):
        raise TypeError("trials must be a sequence of RegDBTrial (one per trial), got one trial")
    items: list[RegDBTrial] = []
    for k, t in enumerate(trials):
        if isinstance(t, RegDBTrial):
            items.append(t)
        elif isinstance(t, (tuple, list)) and len(t) == 4:
            items.append(RegDBTrial(*t))
        else:
            raise TypeError(f"trials[{k}] must be a RegDBTrial or a 4-tuple, got {type(t)}")
    if not items:
        raise ValueError("trials must not be empty")
    results: dict[str, ProtocolResult] = {}
    for qm, gm in dirs:
        if {qm, gm} != {Modality.RGB, Modality.NIR}:
            raise ValueError(
                f"direction for RegDB must be visible_to_thermal or thermal_to_visible, got "
                f"{_direction_key(qm, gm)}"
            )
        per_trial = []
        for t in items:
            vis = (t.visible_feats, t.visible_labels)
            th = (t.thermal_feats, t.thermal_labels)
            (qf, ql), (gf, gl) = (vis, th) if qm == Modality.RGB else (th, vis)
            per_trial.append(
                evaluate_retrieval(
                    qf, ql, gf, gl, ranks=ranks, metric=metric, chunk_size=chunk_size
                )
            )
        key = _direction_key(qm, gm)
        results[key] = ProtocolResult("regdb", key, mean_over_trials(per_trial), tuple(per_trial))
    return next(iter(results.values())) if single else results


# ----------------------------------------------------------------------------------------------
# LLCM
# ----------------------------------------------------------------------------------------------


@overload
def evaluate_llcm(
    feats: Tensorish,
    labels: IntArrayLike,
    cams: IntArrayLike,
    modalities: object,
    *,
    direction: str,
    num_trials: int = ...,
    shots: int = ...,
    seed: int = ...,
    ranks: Sequence[int] = ...,
    metric: Metric = ...,
    chunk_size: int | None = ...,
) -> ProtocolResult: ...
@overload
def evaluate_llcm(
    feats: Tensorish,
    labels: IntArrayLike,
    cams: IntArrayLike,
    modalities: object,
    *,
    direction: list[str] | tuple[str, ...] = ...,
    num_trials: int = ...,
    shots: int = ...,
    seed: int = ...,
    ranks: Sequence[int] = ...,
    metric: Metric = ...,
    chunk_size: int | None = ...,
) -> dict[str, ProtocolResult]: ...
def evaluate_llcm(
    feats: Tensorish,
    labels: IntArrayLike,
    cams: IntArrayLike,
    modalities: object,
    *,
    direction: str | Sequence[str] = ("nir_to_rgb", "rgb_to_nir"),
    num_trials: int = 10,
    shots: int = 1,
    seed: int = 0,
    ranks: Sequence[int] = (1, 5, 10, 20),
    metric: Metric = "cosine",
    chunk_size: int | None = None,
) -> ProtocolResult | dict[str, ProtocolResult]:
    """LLCM: seeded single-shot gallery per trial, same-identity-same-camera removal.

    Args:
        feats: ``[N, d]`` features of the test images of both modalities
            (``test_vis/cam1..9`` and ``test_nir/cam1,2,4..9``).
        labels: ``[N]`` identities.
        cams: ``[N]`` camera numbers (the ``cam<k>`` folder; the same number in ``test_vis``
            and ``test_nir`` is the same camera).
        modalities: ``[N]`` modality of each item (RGB for ``test_vis``, NIR for ``test_nir``).
        direction: ``"nir_to_rgb"``, ``"rgb_to_nir"``, or a sequence (default: both).
        num_trials: trials (10 in the published protocol); trial ``t`` draws its gallery with
            ``numpy.random.default_rng(seed + t)``.
        shots: gallery images per (identity, camera) (1 in the published protocol).
        seed: base seed of the gallery draw (trial ``t`` uses ``seed + t``).
        ranks: passed to :func:`evaluate_retrieval`.
        metric: passed to :func:`evaluate_retrieval`.
        chunk_size: passed to :func:`evaluate_retrieval`.

    Example:
        >>> import torch
        >>> f = torch.eye(2)[[0, 1, 0, 1]]
        >>> res = evaluate_llcm(f, [0, 1, 0, 1], [1, 1, 2, 2], ["ir", "ir", "vis", "vis"],
        ...                     num_trials=2)
        >>> res["nir_to_rgb"].mean.rank1, len(res["rgb_to_nir"].trials)
        (1.0, 2)
    """
    single, dirs = _directions(direction)
    _check_shots(shots)
    _check_trials(num_trials)
    x = _feats(feats, "feats")
    n = x.shape[0]
    lab = _np_ints(labels, "labels", n)
    cam = _np_ints(cams, "cams", n)
    mods = as_modality_array(modalities, name="modalities")  # type: ignore[arg-type]
    if mods.shape[0] != n:
        raise ValueError(f"modalities has length {mods.shape[0]}, expected {n}")
    results: dict[str, ProtocolResult] = {}
    for qm, gm in dirs:
        if {qm, gm} != {Modality.RGB, Modality.NIR}:
            raise ValueError(
                f"direction for LLCM must be nir_to_rgb or rgb_to_nir, got {_direction_key(qm, gm)}"
            )
        qi = np.flatnonzero(mods == int(qm)).astype(np.int64)
        cand = np.flatnonzero(mods == int(gm)).astype(np.int64)
        if qi.size == 0 or cand.size == 0:
            raise ValueError(f"modalities has no {qm.name} or no {gm.name} item")
        qf = x[torch.from_numpy(qi).to(x.device)]
        per_trial = []
        for t in range(num_trials):
            gi = _seeded_gallery(cand, lab, cam, None, shots, seed + t)
            per_trial.append(
                evaluate_retrieval(
                    qf,
                    lab[qi],
                    x[torch.from_numpy(gi).to(x.device)],
                    lab[gi],
                    query_cams=cam[qi],
                    gallery_cams=cam[gi],
                    ranks=ranks,
                    metric=metric,
                    chunk_size=chunk_size,
                )
            )
        key = _direction_key(qm, gm)
        results[key] = ProtocolResult("llcm", key, mean_over_trials(per_trial), tuple(per_trial))
    return next(iter(results.values())) if single else results
