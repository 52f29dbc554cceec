"""Modality-aware P×K batch samplers and the identity index they share.

* :class:`ModalAwarePKSampler` — plain P×K (torchreid-style epoch), vectorised.
* :class:`ModalAwarePKSampler_Strict` — P×K where every pairable identity brings at least one
  index carrying RGB and one carrying a non-RGB modality (one item may carry both), with at most
  ``⌈fallback_ratio·P⌉`` fallback identities per batch.
* :func:`coverage_report` — the non-RGB↔RGB SDM row coverage of given batches.
* :func:`build_identity_index` / :class:`IdentityIndex` — label/modality → index arrays.

All of them take one modality per item or per-item modality sets
(:func:`sdmreid.modality.as_modality_sets`).
"""

from sdmreid.samplers.identity_index import IdentityIndex, as_label_array, build_identity_index
from sdmreid.samplers.pk import (
    CoverageReport,
    ModalAwarePKSampler,
    ModalAwarePKSampler_Strict,
    coverage_report,
)

__all__ = [
    "CoverageReport",
    "IdentityIndex",
    "ModalAwarePKSampler",
    "ModalAwarePKSampler_Strict",
    "as_label_array",
    "build_identity_index",
    "coverage_report",
]
