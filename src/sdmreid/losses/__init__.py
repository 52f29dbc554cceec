"""Loss functions: similarity distribution matching (:func:`sdm_loss`, :class:`SDMLoss`) and SDM
per query modality (:func:`sdm_per_modality`)."""

from __future__ import annotations

from sdmreid.losses.per_modality import PerModalitySDMResult, SDMMode, sdm_per_modality
from sdmreid.losses.sdm import (
    CompileMode,
    Directions,
    MemoryLike,
    Objective,
    SDMLoss,
    SDMResult,
    sdm_loss,
)

__all__ = [
    "CompileMode",
    "Directions",
    "MemoryLike",
    "Objective",
    "PerModalitySDMResult",
    "SDMLoss",
    "SDMMode",
    "SDMResult",
    "sdm_loss",
    "sdm_per_modality",
]
