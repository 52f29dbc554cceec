"""Modality-aware P×K batch samplers and the identity index they share.

* :class:`ModalAwarePKSampler` — plain P×K (torchreid-style epoch), vectorised.
* :class:`ModalAwarePKSampler_Strict` — P×K where every pairable identity brings at least one RGB
  and one non-RGB index, with at most ``⌈fallback_ratio·P⌉`` fallback identities per batch.
* :func:`coverage_report` — the non-RGB↔RGB SDM row coverage of given batches.
* :func:`build_identity_index` / :class:`IdentityIndex` — label/modality → index arrays.
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
