"""Query/gallery index sets per evaluation protocol, for the trainer's per-epoch evaluation.

Being retired: evaluation moves to :mod:`sdmreid.evaluation` (``evaluate_all_to_rgb`` and the
SYSU-MM01/RegDB/LLCM presets); this module goes once the trainer evaluates through it.

A :class:`RetrievalProtocol` names the query and gallery samples of one evaluation as index
arrays into an evaluation dataset (whose ``identities``/``cameras`` arrays the evaluator reads).
``camera_rule`` tells the evaluator which per-query gallery filter the benchmark prescribes:

* ``"none"`` — no filtering (RegDB, text/sketch→image, synthetic data);
* ``"sysu"`` — a camera-3 query ignores every camera-2 gallery item (same location);
* ``"same_identity_camera"`` — gallery items with the query's identity *and* camera are
  removed (LLCM, Market-style).

Seeded draws are reproducible per trial. The SYSU-MM01 and LLCM galleries come from
:func:`sdmreid.evaluation.draw_gallery`, so trial ``t`` here is trial ``t`` of the library's
published evaluators (``evaluate_sysu_mm01`` / ``evaluate_llcm`` with ``seed=0``); the RGB→RGB
queries use ``numpy.random.default_rng`` seeded from the trial number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from sdmreid.evaluation import draw_gallery
from sdmreid.modality import Modality

__all__ = [
    "RetrievalProtocol",
    "all_to_rgb_protocols",
    "llcm_protocol",
    "regdb_protocol",
    "sysu_protocol",
]

IntArray = npt.NDArray[np.int64]
CameraRule = Literal["none", "sysu", "same_identity_camera"]


@dataclasses.dataclass(frozen=True)
class RetrievalProtocol:
    """Query and gallery of one evaluation, as indices into the evaluation dataset.

    Example:
        >>> p = RetrievalProtocol("NIR->RGB", np.array([0, 1]), np.array([2, 3]), 1, 0)
        >>> p.name, p.query.tolist(), p.camera_rule
        ('NIR->RGB', [0, 1], 'none')
    """

    name: str
    query: IntArray
    gallery: IntArray
    query_modality: int
    gallery_modality: int
    camera_rule: CameraRule = "none"
    trial: int = 0


def _as_int(a: Sequence[int] | npt.ArrayLike, name: str) -> IntArray:
    arr = np.asarray(a)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {arr.shape} {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _first_per_group(keys: IntArray, candidates: IntArray, k: int, seed: int) -> IntArray:
    """Seeded draw of up to ``k`` of ``candidates`` per distinct ``keys`` value (sorted)."""
    if candidates.size == 0:
        return candidates
    rnd = np.random.default_rng(seed).random(candidates.size)
    order = np.lexsort((rnd, keys))
    sk = keys[order]
    starts = np.r_[0, np.flatnonzero(sk[1:] != sk[:-1]) + 1]
    rank = np.arange(sk.size) - np.repeat(starts, np.diff(np.r_[starts, sk.size]))
    return np.sort(candidates[order][rank < k])


def all_to_rgb_protocols(
    identities: Sequence[int] | npt.ArrayLike,
    modalities: Sequence[int] | npt.ArrayLike,
    *,
    seed: int = 0,
) -> list[RetrievalProtocol]:
    """Every non-RGB modality present → all RGB samples, then RGB → RGB.

    RGB → RGB draws one RGB query per identity with at least two RGB samples (seeded); the
    remaining RGB samples form its gallery.

    Example:
        >>> ids = [1, 1, 1, 2, 2, 2]
        >>> mods = [0, 0, 1, 0, 0, 4]
        >>> ps = all_to_rgb_protocols(ids, mods)
        >>> [(p.name, p.query.tolist()) for p in ps][:2]
        [('NIR->RGB', [2]), ('TEXT->RGB', [5])]
        >>> rgb = ps[2]; len(rgb.query), sorted([*rgb.query.tolist(), *rgb.gallery.tolist()])
        (2, [0, 1, 3, 4])
    """
    ids = _as_int(identities, "identities")
    mods = _as_int(modalities, "modalities")
    if ids.shape != mods.shape:
        raise ValueError(f"identities and modalities differ in length: {ids.size} vs {mods.size}")
    rgb = np.flatnonzero(mods == int(Modality.RGB))
    out = [
        RetrievalProtocol(
            f"{Modality(m).name}->RGB", np.flatnonzero(mods == m), rgb, int(m), int(Modality.RGB)
        )
        for m in sorted(set(mods.tolist()) - {int(Modality.RGB)})
    ]
    if rgb.size:
        rid = ids[rgb]
        uniq, counts = np.unique(rid, return_counts=True)
        eligible = rgb[np.isin(rid, uniq[counts >= 2])]
        query = _first_per_group(ids[eligible], eligible, 1, seed)
        gallery = np.setdiff1d(rgb, query)
        out.append(RetrievalProtocol("RGB->RGB", query, gallery, 0, 0))
    return out


def sysu_protocol(
    identities: Sequence[int] | npt.ArrayLike,
    modalities: Sequence[int] | npt.ArrayLike,
    cameras: Sequence[int] | npt.ArrayLike,
    *,
    mode: Literal["all", "indoor"] = "all",
    shots: int = 1,
    trial: int = 0,
) -> RetrievalProtocol:
    """SYSU-MM01 test protocol on the test identities.

    Query: NIR images of cameras 3 and 6. Gallery: RGB cameras 1, 2, 4, 5 (``all``) or 1, 2
    (``indoor``), ``shots`` images per (identity, camera) drawn with seed ``trial``. The
    evaluator applies ``camera_rule="sysu"``.

    Example:
        >>> ids = [1, 1, 1, 1, 2, 2]
        >>> p = sysu_protocol(ids, [1, 0, 0, 0, 1, 0], [3, 1, 1, 4, 6, 2], mode="indoor")
        >>> p.query.tolist(), len(p.gallery)
        ([0, 4], 2)
    """
    if mode not in ("all", "indoor"):
        raise ValueError(f"mode must be 'all' or 'indoor', got {mode!r}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    ids = _as_int(identities, "identities")
    mods = _as_int(modalities, "modalities")
    cams = _as_int(cameras, "cameras")
    query = np.flatnonzero((mods == int(Modality.NIR)) & np.isin(cams, [3, 6]))
    gcams = [1, 2, 4, 5] if mode == "all" else [1, 2]
    cand = np.flatnonzero((mods == int(Modality.RGB)) & np.isin(cams, gcams))
    # the library's seeded draw: trial t here is trial t of evaluate_sysu_mm01 (seed 0)
    gallery = np.sort(draw_gallery(cand, ids, cams, shots=shots, seed=trial))
    return RetrievalProtocol(
        f"SYSU-{mode}-{'single' if shots == 1 else 'multi'}",
        query,
        gallery,
        int(Modality.NIR),
        int(Modality.RGB),
        "sysu",
        trial,
    )


def regdb_protocol(
    modalities: Sequence[int] | npt.ArrayLike,
    *,
    direction: Literal["visible_to_thermal", "thermal_to_visible"] = "visible_to_thermal",
    trial: int = 1,
) -> RetrievalProtocol:
    """RegDB: all test images of one modality query all of the other; no camera filter.

    Example:
        >>> regdb_protocol([0, 1, 0], direction="thermal_to_visible").query.tolist()
        [1]
    """
    mods = _as_int(modalities, "modalities")
    vis = np.flatnonzero(mods == int(Modality.RGB))
    th = np.flatnonzero(mods == int(Modality.NIR))
    if direction == "visible_to_thermal":
        return RetrievalProtocol("RegDB-V2T", vis, th, 0, 1, "none", trial)
    if direction == "thermal_to_visible":
        return RetrievalProtocol("RegDB-T2V", th, vis, 1, 0, "none", trial)
    raise ValueError(
        f"direction must be 'visible_to_thermal' or 'thermal_to_visible', got {direction!r}"
    )


def llcm_protocol(
    identities: Sequence[int] | npt.ArrayLike,
    modalities: Sequence[int] | npt.ArrayLike,
    cameras: Sequence[int] | npt.ArrayLike,
    *,
    direction: Literal["nir_to_vis", "vis_to_nir"] = "nir_to_vis",
    trial: int = 0,
) -> RetrievalProtocol:
    """LLCM: all query-modality images vs a single-shot gallery of the other modality (one image
    per identity and camera, seeded by ``trial``); ``camera_rule="same_identity_camera"``.

    Example:
        >>> p = llcm_protocol([1, 1, 1], [1, 0, 0], [2, 5, 5])
        >>> p.query.tolist(), len(p.gallery)
        ([0], 1)
    """
    ids = _as_int(identities, "identities")
    mods = _as_int(modalities, "modalities")
    cams = _as_int(cameras, "cameras")
    if direction == "nir_to_vis":
        qm, gm, name = int(Modality.NIR), int(Modality.RGB), "LLCM-IR2VIS"
    elif direction == "vis_to_nir":
        qm, gm, name = int(Modality.RGB), int(Modality.NIR), "LLCM-VIS2IR"
    else:
        raise ValueError(f"direction must be 'nir_to_vis' or 'vis_to_nir', got {direction!r}")
    query = np.flatnonzero(mods == qm)
    cand = np.flatnonzero(mods == gm)
    # the library's seeded draw: trial t here is trial t of evaluate_llcm (seed 0)
    gallery = np.sort(draw_gallery(cand, ids, cams, shots=1, seed=trial))
    return RetrievalProtocol(name, query, gallery, qm, gm, "same_identity_camera", trial)
