"""sdmreid: typed PyTorch components for SDM training in cross-modal person re-identification.

The public API (see the documentation for each name):

* :class:`Modality`, :func:`parse_modality` — the modality vocabulary.
"""

from __future__ import annotations

from sdmreid.modality import Modality, parse_modality

__version__ = "0.1.0"

__all__ = [
    "Modality",
    "__version__",
    "parse_modality",
]
