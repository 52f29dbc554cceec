"""What a synthetic data set contains: :class:`SyntheticSpec` and the named :data:`PRESETS`.

A spec fixes the identities of each split, the samples per identity and modality, the cameras,
the modality imbalance, the image size and the nuisance probabilities; together with a seed it
determines every sample of :class:`~reid_example.data.synthetic.SyntheticMultiModalReID`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sdmreid.modality import Modality, parse_modality

__all__ = ["PRESETS", "SyntheticSpec", "preset_spec"]


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Everything that defines a synthetic data set (besides the seed).

    Attributes:
        identities_per_split: identities of each split as ``(train, val, test)``; the splits
            are identity-disjoint.
        counts: per modality, the inclusive range ``(lo, hi)`` of samples per identity, as
            ``((modality, lo, hi), ...)``; a modality absent here is absent from the data.
        cameras: per modality, the camera ids a sample is drawn from, as
            ``((modality, (cam, ...)), ...)``; modalities without an entry get camera ``0``.
        rgb_only_fraction: fraction of *train* identities that have only RGB samples
            (modality imbalance that the strict sampler must cope with).
        image_size: rendered ``(height, width)``.
        occlusion_p: probability of an occluder in RGB/NIR samples.
        text_drop_p: probability of omitting each optional attribute from a caption.

    Raises:
        ValueError: a field out of range, a modality listed twice, or no RGB samples.

    Example:
        >>> spec = SyntheticSpec(identities_per_split=(4, 0, 2), counts=((0, 2, 3), (1, 1, 1)))
        >>> spec.modalities, spec.image_size
        ((0, 1), (128, 64))
        >>> SyntheticSpec(counts=((1, 1, 2),))
        Traceback (most recent call last):
        ...
        ValueError: counts must include RGB (the gallery modality)
    """

    identities_per_split: tuple[int, int, int] = (300, 50, 150)
    counts: tuple[tuple[int, int, int], ...] = (
        (0, 4, 10),
        (1, 2, 6),
        (2, 1, 2),
        (3, 1, 3),
        (4, 1, 3),
    )
    cameras: tuple[tuple[int, tuple[int, ...]], ...] = ((0, (1, 2, 4, 5)), (1, (3, 6)))
    rgb_only_fraction: float = 0.0
    image_size: tuple[int, int] = (128, 64)
    occlusion_p: float = 0.2
    text_drop_p: float = 0.25

    def __post_init__(self) -> None:
        ids = self.identities_per_split
        if len(ids) != 3 or any(n < 0 for n in ids):
            raise ValueError(f"identities_per_split must be (train, val, test) >= 0, got {ids!r}")
        seen: set[int] = set()
        for entry in self.counts:
            m, lo, hi = entry
            parse_modality(m)
            if m in seen:
                raise ValueError(f"counts lists modality {m} twice")
            seen.add(m)
            if not 0 <= lo <= hi:
                raise ValueError(f"counts for modality {m} must satisfy 0 <= lo <= hi, got {entry}")
        if int(Modality.RGB) not in seen:
            raise ValueError("counts must include RGB (the gallery modality)")
        for m, cams in self.cameras:
            parse_modality(m)
            if not cams or any(c < 0 for c in cams):
                raise ValueError(f"cameras for modality {m} must be non-empty ids >= 0")
        if not 0.0 <= self.rgb_only_fraction <= 1.0:
            raise ValueError(f"rgb_only_fraction must be in [0, 1], got {self.rgb_only_fraction}")
        h, w = self.image_size
        if h < 16 or w < 8:
            raise ValueError(f"image_size must be at least (16, 8), got {self.image_size!r}")
        for name in ("occlusion_p", "text_drop_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def modalities(self) -> tuple[int, ...]:
        """The modality codes that can occur (``hi > 0``), in ``counts`` order."""
        return tuple(m for m, _, hi in self.counts if hi > 0)


_ALL_COUNTS = ((0, 4, 10), (1, 2, 6), (2, 1, 2), (3, 1, 3), (4, 1, 3))
_ALL_CAMERAS = ((0, (1, 2, 4, 5)), (1, (3, 6)))

#: Preset specs. ``sysu``: RGB cams 1,2,4,5 + NIR cams 3,6, imbalanced counts. ``regdb``: exactly
#: 10 visible (cam 1) + 10 thermal (cam 2, blurrier) images per identity. ``prcv2025``: all five
#: modalities (ORBench-like). ``demo``: ``prcv2025`` scaled down for a minutes-long CPU run
#: (120/30/50 identities, ~2k training samples) at 64×32.
PRESETS: Mapping[str, SyntheticSpec] = {
    "sysu": SyntheticSpec(
        identities_per_split=(355, 40, 96),
        counts=((0, 12, 30), (1, 6, 16)),
        cameras=((0, (1, 2, 4, 5)), (1, (3, 6))),
    ),
    "regdb": SyntheticSpec(
        identities_per_split=(186, 20, 206),
        counts=((0, 10, 10), (1, 10, 10)),
        cameras=((0, (1,)), (1, (2,))),
        occlusion_p=0.05,
    ),
    "prcv2025": SyntheticSpec(
        identities_per_split=(300, 50, 150),
        counts=_ALL_COUNTS,
        cameras=_ALL_CAMERAS,
        rgb_only_fraction=0.1,
    ),
    "demo": SyntheticSpec(
        identities_per_split=(120, 30, 50),
        counts=((0, 6, 8), (1, 4, 6), (2, 2, 2), (3, 2, 2), (4, 2, 2)),
        cameras=_ALL_CAMERAS,
        rgb_only_fraction=0.1,
        image_size=(64, 32),
    ),
}
_PRESET_ALIASES = {
    "sysu-mm01": "sysu",
    "sysu_mm01": "sysu",
    "prcv": "prcv2025",
    "orbench": "prcv2025",
}


def preset_spec(name: str, **overrides: Any) -> SyntheticSpec:
    """The spec of preset ``name`` (case-insensitive; aliases ``sysu-mm01``, ``prcv``,
    ``orbench``), with any :class:`SyntheticSpec` field given as a keyword replaced.

    Raises:
        ValueError: an unknown preset name.
        TypeError: a keyword that is not a :class:`SyntheticSpec` field.

    Example:
        >>> preset_spec("prcv").identities_per_split
        (300, 50, 150)
        >>> preset_spec("demo", identities_per_split=(8, 2, 2)).image_size
        (64, 32)
    """
    key = name.lower()
    key = _PRESET_ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(SyntheticSpec)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"unknown SyntheticSpec fields {bad}; valid: {sorted(fields)}")
    return dataclasses.replace(PRESETS[key], **overrides)
