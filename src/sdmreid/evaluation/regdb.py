"""RegDB (visible ↔ thermal): the published per-trial protocol.

* Ten trials, each with its own split files ``idx/{train,test}_{visible,thermal}_{trial}.txt``;
  a model is trained and tested **per trial** — testing one model on every trial leaks test
  identities into training and inflates the scores.
* Every test image of one modality queries every test image of the other; no camera filtering;
  standard CMC.
* Both directions are reported: visible→thermal (``"rgb_to_nir"``) and thermal→visible
  (``"nir_to_rgb"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from sdmreid.evaluation.metrics import Metric, evaluate_retrieval
from sdmreid.evaluation.protocols import (
    IntArrayLike,
    ProtocolResult,
    Tensorish,
    _direction_key,
    _feats,
    _np_ints,
    _one_or_all,
    _rgb_nir_directions,
    _rows,
    mean_over_trials,
)
from sdmreid.modality import Modality, as_modality_array

__all__ = ["RegDBTrial", "evaluate_regdb"]


@dataclass(frozen=True, eq=False)
class RegDBTrial:
    """Test features of one RegDB trial, extracted with the model trained on that trial.

    Attributes:
        visible_feats: ``[V, d]`` features of the visible test images.
        visible_labels: ``[V]`` their identities.
        thermal_feats: ``[T, d]`` features of the thermal test images.
        thermal_labels: ``[T]`` their identities.

    Example:
        >>> import torch
        >>> t = RegDBTrial.from_modalities(torch.eye(3), [4, 4, 5], ["rgb", "nir", "nir"])
        >>> t.visible_labels.tolist(), t.thermal_labels.tolist()
        ([4], [4, 5])
    """

    visible_feats: Tensorish
    visible_labels: IntArrayLike
    thermal_feats: Tensorish
    thermal_labels: IntArrayLike

    @classmethod
    def from_modalities(
        cls, feats: Tensorish, labels: IntArrayLike, modalities: object
    ) -> RegDBTrial:
        """Split one trial's pooled test features by modality: RGB items are the visible side,
        NIR items the thermal side (items of other modalities are ignored).

        Args:
            feats: ``[N, d]`` features of the trial's test images.
            labels: ``[N]`` identities.
            modalities: ``[N]`` modality of each item (any form accepted by
                :func:`sdmreid.modality.as_modality_array`).
        """
        x = _feats(feats, "feats")
        lab = _np_ints(labels, "labels", x.shape[0])
        mods = as_modality_array(modalities, name="modalities")  # type: ignore[arg-type]
        if mods.shape[0] != x.shape[0]:
            raise ValueError(f"modalities has length {mods.shape[0]}, expected {x.shape[0]}")
        vis = np.flatnonzero(mods == int(Modality.RGB))
        th = np.flatnonzero(mods == int(Modality.NIR))
        return cls(_rows(x, vis), lab[vis], _rows(x, th), lab[th])


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
    single, dirs = _rgb_nir_directions(
        direction, "RegDB", "visible_to_thermal or thermal_to_visible"
    )
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
    return _one_or_all(single, results)
