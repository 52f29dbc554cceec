"""SYSU-MM01 (RGB ↔ NIR): the published all-/indoor-search protocol and its camera rule.

* Query: every image of the query-modality cameras (NIR: 3 and 6; RGB: 1, 2, 4, 5 for
  all-search, 1 and 2 for indoor-search).
* Gallery: ``shots`` images per (identity, camera) of the gallery cameras, taken from the
  official permutation ``exp/rand_perm_cam.mat`` when given (the first ``shots`` entries of row
  ``trial``), otherwise drawn with :func:`~sdmreid.evaluation.draw_gallery` and seed
  ``seed + trial``.
* Same-location rule (:func:`sysu_ignore_rule`): cameras 2 and 3 stand in the same place, so a
  camera-3 query ignores *every* camera-2 gallery image whatever its identity (the official code
  relabels camera 3 as 2), and in the reverse direction a camera-2 query ignores every camera-3
  image.
* CMC is identity-de-duplicated (official code); mAP and mINP are not. Queries with no true
  match are skipped. Ten trials; the mean is reported.

Nothing here reads images; :func:`load_sysu_permutation` reads the official permutation file
(it needs SciPy, an optional dependency) and :func:`parse_sysu_paths` turns image paths into the
camera, identity and image numbers the permutation is indexed by.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from sdmreid.evaluation.metrics import IgnoreRule, Metric, camera_pair_ignore, evaluate_retrieval
from sdmreid.evaluation.protocols import (
    IntArrayLike,
    ProtocolResult,
    Tensorish,
    _check_shots,
    _check_trials,
    _direction_key,
    _feats,
    _np_ints,
    _one_or_all,
    _rgb_nir_directions,
    _rows,
    draw_gallery,
    mean_over_trials,
)
from sdmreid.modality import Modality

__all__ = [
    "SYSU_ALL_RGB_CAMS",
    "SYSU_INDOOR_RGB_CAMS",
    "SYSU_NIR_CAMS",
    "SYSUPermutation",
    "evaluate_sysu_mm01",
    "load_sysu_permutation",
    "parse_sysu_paths",
    "sysu_ignore_rule",
]

SYSU_NIR_CAMS: tuple[int, ...] = (3, 6)
SYSU_ALL_RGB_CAMS: tuple[int, ...] = (1, 2, 4, 5)
SYSU_INDOOR_RGB_CAMS: tuple[int, ...] = (1, 2)

#: Official SYSU-MM01 gallery permutation: ``{(camera, identity): int array [trials, n]}`` of
#: 1-based image numbers (the number in ``cam{c}/{id:04d}/{number:04d}.jpg``).
SYSUPermutation = Mapping[tuple[int, int], npt.NDArray[np.int64]]

# RGB camera 2 and NIR camera 3 film the same place.
_SAME_LOCATION: dict[int, tuple[int, ...]] = {3: (2,), 2: (3,)}


def sysu_ignore_rule(query_cams: IntArrayLike, gallery_cams: IntArrayLike) -> IgnoreRule:
    """SYSU-MM01's same-location rule as an ``ignore`` argument of ``evaluate_retrieval``.

    A camera-3 query ignores every camera-2 gallery item and a camera-2 query every camera-3
    item, whatever their identity; other cameras are unaffected. It holds for both directions,
    so the NIR→RGB and RGB→NIR evaluations use the same rule.

    Args:
        query_cams: ``[Q]`` SYSU camera of each query.
        gallery_cams: ``[G]`` SYSU camera of each gallery item.

    Returns:
        An :data:`~sdmreid.evaluation.IgnoreRule`.

    Example:
        >>> import torch
        >>> from sdmreid.evaluation import evaluate_retrieval
        >>> rule = sysu_ignore_rule([3, 6], [2, 1, 2])
        >>> rule(torch.tensor([0, 1]))
        tensor([[ True, False,  True],
                [False, False, False]])
        >>> q, g = torch.eye(2), torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
        >>> m = evaluate_retrieval(q, [1, 2], g, [1, 3, 2], ignore=rule)  # query 0 loses item 0
        >>> m.num_valid_queries, m.num_skipped_queries
        (1, 1)
    """
    return camera_pair_ignore(query_cams, gallery_cams, _SAME_LOCATION)


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


def _permuted_gallery(
    candidates: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    cams: npt.NDArray[np.int64],
    image_index: npt.NDArray[np.int64],
    shots: int,
    trial: int,
    permutation: SYSUPermutation,
) -> npt.NDArray[np.int64]:
    """The first ``shots`` images of row ``trial`` of the official permutation, per
    (camera, identity) of the candidates, as item indices in (camera, identity) order."""
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
    single, dirs = _rgb_nir_directions(direction, "SYSU-MM01", "nir_to_rgb or rgb_to_nir")
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
    perm = (
        load_sysu_permutation(permutation)
        if isinstance(permutation, (str, os.PathLike))
        else permutation
    )
    if perm is not None and img is None:
        raise ValueError("image_index is required with permutation (see parse_sysu_paths)")

    def gallery(cand: npt.NDArray[np.int64], trial: int) -> npt.NDArray[np.int64]:
        if perm is not None and img is not None:
            return _permuted_gallery(cand, lab, cam, img, shots, trial, perm)
        return draw_gallery(cand, lab, cam, shots=shots, seed=seed + trial, image_index=img)

    rgb_cams = SYSU_ALL_RGB_CAMS if mode == "all" else SYSU_INDOOR_RGB_CAMS
    shot_name = "single" if shots == 1 else f"multi-{shots}"
    results: dict[str, ProtocolResult] = {}
    for qm, gm in dirs:
        q_cams = SYSU_NIR_CAMS if qm == Modality.NIR else rgb_cams
        g_cams = rgb_cams if qm == Modality.NIR else SYSU_NIR_CAMS
        qi = np.flatnonzero(np.isin(cam, q_cams)).astype(np.int64)
        cand = np.flatnonzero(np.isin(cam, g_cams)).astype(np.int64)
        if qi.size == 0:
            raise ValueError(f"no query image: no item from cameras {q_cams}")
        if cand.size == 0:
            raise ValueError(f"no gallery image: no item from cameras {g_cams}")
        qf = _rows(x, qi)
        trials = []
        for t in range(num_trials):
            gi = gallery(cand, t)
            trials.append(
                evaluate_retrieval(
                    qf,
                    lab[qi],
                    _rows(x, gi),
                    lab[gi],
                    ranks=ranks,
                    metric=metric,
                    chunk_size=chunk_size,
                    dedup_cmc=True,
                    ignore=sysu_ignore_rule(cam[qi], cam[gi]),
                )
            )
        key = _direction_key(qm, gm)
        results[key] = ProtocolResult(
            f"sysu_mm01/{mode}/{shot_name}", key, mean_over_trials(trials), tuple(trials)
        )
    return _one_or_all(single, results)
