"""Loss functions: similarity distribution matching (:func:`sdm_loss`, :class:`SDMLoss`)."""

from __future__ import annotations

from sdmreid.losses.sdm import CompileMode, MemoryLike, SDMLoss, SDMResult, sdm_loss

__all__ = ["CompileMode", "MemoryLike", "SDMLoss", "SDMResult", "sdm_loss"]
