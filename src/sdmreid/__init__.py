"""sdmreid: typed PyTorch components for SDM training in cross-modal person re-identification.

The public API (each name is documented where it is defined):

* :class:`Modality`, :func:`parse_modality`, :func:`as_modality_sets` — the modality vocabulary
  (:mod:`sdmreid.modality`).
* :func:`sdm_loss`, :class:`SDMLoss`, :class:`SDMResult` — similarity distribution matching
  (:mod:`sdmreid.losses`); :func:`sdm_per_modality`, :class:`PerModalitySDMResult` — SDM per
  query modality against the anchor modality.
* :class:`CrossBatchMemory`, :class:`MemoryView` — a queue of recent RGB embeddings
  (:mod:`sdmreid.memory`).
* :class:`ModalAwarePKSampler`, :class:`ModalAwarePKSampler_Strict`, :func:`coverage_report`,
  :class:`CoverageReport` — P×K batch samplers (:mod:`sdmreid.samplers`).
* :class:`SDMWeightScheduler`, :class:`HeadLRSwitch` — schedules (:mod:`sdmreid.schedules`).
* :class:`PairCoverageMeter` — pair coverage (:mod:`sdmreid.coverage`).
* :class:`HealthMonitor`, :class:`RunSettings`, :class:`Finding`, :class:`Severity`,
  :class:`Action` — training health rules (:mod:`sdmreid.health`).
* :func:`sdmreid.evaluation.evaluate_retrieval` and the protocol presets
  (:mod:`sdmreid.evaluation`).
"""

from __future__ import annotations

from sdmreid.coverage import PairCoverageMeter
from sdmreid.health import Action, Finding, HealthMonitor, RunSettings, Severity
from sdmreid.losses import PerModalitySDMResult, SDMLoss, SDMResult, sdm_loss, sdm_per_modality
from sdmreid.memory import CrossBatchMemory, MemoryView
from sdmreid.modality import Modality, as_modality_sets, parse_modality
from sdmreid.samplers import (
    CoverageReport,
    ModalAwarePKSampler,
    ModalAwarePKSampler_Strict,
    coverage_report,
)
from sdmreid.schedules import HeadLRSwitch, SDMWeightScheduler

__version__ = "0.1.0"

__all__ = [
    "Action",
    "CoverageReport",
    "CrossBatchMemory",
    "Finding",
    "HeadLRSwitch",
    "HealthMonitor",
    "MemoryView",
    "ModalAwarePKSampler",
    "ModalAwarePKSampler_Strict",
    "Modality",
    "PairCoverageMeter",
    "PerModalitySDMResult",
    "RunSettings",
    "SDMLoss",
    "SDMResult",
    "SDMWeightScheduler",
    "Severity",
    "__version__",
    "as_modality_sets",
    "coverage_report",
    "parse_modality",
    "sdm_loss",
    "sdm_per_modality",
]
