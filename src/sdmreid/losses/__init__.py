"""Loss functions: similarity distribution matching (:func:`sdm_loss`, :class:`SDMLoss`)."""

from __future__ import annotations

from sdmreid.losses.sdm import MemoryLike, SDMLoss, SDMResult, sdm_loss

__all__ = ["MemoryLike", "SDMLoss", "SDMResult", "sdm_loss"]
