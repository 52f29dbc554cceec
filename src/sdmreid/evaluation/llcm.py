"""LLCM (visible ↔ NIR, low light): the published protocol.

* Test cameras: visible ``test_vis/cam1..9``, NIR ``test_nir/cam1,2,4..9`` (the same number in
  both folders is the same camera).
* Query: every test image of the query modality. Gallery: one image per (identity, camera) of
  the other modality, drawn with :func:`~sdmreid.evaluation.draw_gallery` and seed
  ``seed + trial``; ten trials.
* Gallery items with the query's identity **and** camera are removed; standard CMC.
* Both directions are reported: IR→VIS (``"nir_to_rgb"``) and VIS→IR (``"rgb_to_nir"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np

from sdmreid.evaluation.metrics import Metric, evaluate_retrieval
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
from sdmreid.modality import as_modality_array

__all__ = ["LLCM_NIR_CAMS", "LLCM_RGB_CAMS", "evaluate_llcm"]

LLCM_RGB_CAMS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLCM_NIR_CAMS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 8, 9)


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
        ranks: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.
        metric: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.
        chunk_size: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.

    Example:
        >>> import torch
        >>> f = torch.eye(2)[[0, 1, 0, 1]]
        >>> res = evaluate_llcm(f, [0, 1, 0, 1], [1, 1, 2, 2], ["ir", "ir", "vis", "vis"],
        ...                     num_trials=2)
        >>> res["nir_to_rgb"].mean.rank1, len(res["rgb_to_nir"].trials)
        (1.0, 2)
    """
    single, dirs = _rgb_nir_directions(direction, "LLCM", "nir_to_rgb or rgb_to_nir")
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
        qi = np.flatnonzero(mods == int(qm)).astype(np.int64)
        cand = np.flatnonzero(mods == int(gm)).astype(np.int64)
        if qi.size == 0 or cand.size == 0:
            raise ValueError(f"modalities has no {qm.name} or no {gm.name} item")
        qf = _rows(x, qi)
        per_trial = []
        for t in range(num_trials):
            gi = draw_gallery(cand, lab, cam, shots=shots, seed=seed + t)
            per_trial.append(
                evaluate_retrieval(
                    qf,
                    lab[qi],
                    _rows(x, gi),
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
    return _one_or_all(single, results)
