"""The latent factors of the synthetic data set: the garment palette, identity attributes,
camera properties and per-sample nuisances.

Everything here is drawn from NumPy generators seeded by ``(seed, stream)`` (:func:`rng`), never
from global state, so a data seed fixes every factor.

The palette is what makes the data cross-modal: every colour is ``L + d`` with ``NIR_MIX · d = 0``
for one of three lightness levels ``L``, so the NIR renderer (one channel ``NIR_MIX · colour``)
maps the 21 garment colours onto three intensities while RGB keeps them apart.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "NIR_MIX",
    "N_CLUTTER",
    "PALETTE",
    "PALETTE_NAMES",
    "TEXTURE_FREQUENCIES",
    "camera_params",
    "identity_attributes",
    "rng",
    "sample_params",
]

#: The NIR renderer's spectral weights of the red, green and blue garment colour.
NIR_MIX: tuple[float, float, float] = (0.5, 0.3, 0.2)
_LEVELS = (0.2, 0.45, 0.72)
_HUE_NAMES = (
    ("maroon", "brown", "dark green", "teal", "navy", "purple", "black"),
    ("red", "olive", "green", "cyan", "blue", "magenta", "grey"),
    ("pink", "yellow", "light green", "turquoise", "sky blue", "lavender", "silver"),
)
#: Texture cycles per torso height of the three stripe/check frequencies.
TEXTURE_FREQUENCIES = (2.0, 3.5, 5.0)
#: Background clutter rectangles per sample.
N_CLUTTER = 3


def rng(seed: int, *stream: int) -> np.random.Generator:
    """The NumPy generator of ``stream`` under data seed ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _build_palette() -> tuple[npt.NDArray[np.float32], tuple[str, ...]]:
    w = np.asarray(NIR_MIX, dtype=np.float64)
    a = np.array([1.0, -1.0, 0.0])
    a -= (a @ w) / (w @ w) * w
    a /= np.linalg.norm(a)
    b = np.cross(w, a)
    b /= np.linalg.norm(b)
    colours, names = [], []
    for li, level in enumerate(_LEVELS):
        for k in range(7):
            if k == 6:  # neutral
                c = np.full(3, level)
            else:
                theta = math.pi / 3 * k + 0.3
                d = math.cos(theta) * a + math.sin(theta) * b
                m = min((0.98 - level) / x if x > 0 else (0.02 - level) / x for x in d if x)
                c = level + 0.9 * m * d
            colours.append(c)
            names.append(_HUE_NAMES[li][k])
    return np.asarray(colours, dtype=np.float32), tuple(names)


#: Garment palette ``[21, 3]`` in [0, 1]: 6 hues + 1 neutral at 3 NIR levels; ``NIR_MIX · c`` is
#: the same for all 7 colours of a level. ``PALETTE_NAMES`` are the caption words of the colours.
PALETTE, PALETTE_NAMES = _build_palette()


def identity_attributes(seed: int, n: int) -> dict[str, npt.NDArray[Any]]:
    """The latent attributes of identities ``0..n-1`` of data seed ``seed``, one array each.

    Proportions are fractions of the image height; ``upper``/``lower``/``bag_colour``/
    ``hat_colour`` index :data:`PALETTE`; ``pattern`` is plain, horizontal, vertical, diagonal or
    checked (0..4) with ``freq`` indexing :data:`TEXTURE_FREQUENCIES`; ``lower_type`` is trousers,
    shorts or skirt (0..2); ``bag`` is none, left or right (0..2). The data set draws one
    table for the identities of all its splits.

    Example:
        >>> a = identity_attributes(0, 5)
        >>> a["height"].shape, a["upper_rgb"].shape, int(a["upper"].max()) < len(PALETTE)
        ((5,), (5, 3), True)
    """
    r = rng(seed, 0xA77)
    n_col = len(PALETTE)
    upper = r.integers(0, n_col, n)
    lower = r.integers(0, n_col, n)
    return {
        "height": r.uniform(0.78, 0.95, n),
        "shoulder": r.uniform(0.085, 0.14, n),
        "taper": r.uniform(0.7, 0.95, n),
        "torso": r.uniform(0.27, 0.37, n),
        "head": r.uniform(0.055, 0.075, n),
        "upper": upper,
        "lower": lower,
        "upper_rgb": np.clip(PALETTE[upper] + r.uniform(-0.03, 0.03, (n, 3)), 0, 1),
        "lower_rgb": np.clip(PALETTE[lower] + r.uniform(-0.03, 0.03, (n, 3)), 0, 1),
        "pattern": r.choice(5, n, p=[0.3, 0.2, 0.15, 0.2, 0.15]),
        "freq": r.integers(0, 3, n),
        "orient": r.choice([-1.0, 1.0], n),
        "sleeve": r.integers(0, 2, n),  # 0 long, 1 short
        "lower_type": r.choice(3, n, p=[0.6, 0.25, 0.15]),
        "bag": r.choice(3, n, p=[0.5, 0.25, 0.25]),
        "bag_colour": r.integers(0, n_col, n),
        "hat": r.random(n) < 0.3,
        "hat_colour": r.integers(0, n_col, n),
        "skin": r.uniform(0.45, 0.85, n),
    }


def camera_params(seed: int, n_cams: int = 16) -> dict[str, npt.NDArray[np.float64]]:
    """Per-camera ``gain``, colour ``cast``, ``blur`` and NIR ``vignette`` of data seed ``seed``,
    indexed by camera id."""
    r = rng(seed, 0xCA3)
    return {
        "gain": r.uniform(0.75, 1.15, n_cams),
        "cast": r.uniform(0.85, 1.15, (n_cams, 3)),
        "blur": r.uniform(0.0, 0.7, n_cams),
        "vignette": r.uniform(0.15, 0.45, n_cams),
    }


def sample_params(r: np.random.Generator, n: int) -> dict[str, npt.NDArray[Any]]:
    """Nuisance parameters of ``n`` samples drawn from ``r``: pose and placement, background
    and clutter, occluder, brightness, blur jitter, stroke style and the noise image."""
    k = N_CLUTTER
    return {
        "scale": r.uniform(0.86, 1.0, n),
        "dx": r.uniform(-0.05, 0.05, n),
        "dy": r.uniform(-0.03, 0.03, n),
        "wj": r.uniform(0.88, 1.1, n),
        "stride": r.uniform(0.0, 0.05, n),
        "phase": r.uniform(0.0, 1.0, n),
        "bg": r.uniform(0.15, 0.85, (n, 3)),
        "bg_grad": r.uniform(-0.25, 0.25, n),
        "ground": r.uniform(0.75, 0.95, n),
        "clut_x": np.sort(r.uniform(-0.3, 0.3, (n, k, 2)), axis=2),
        "clut_y": np.sort(r.uniform(0.0, 1.0, (n, k, 2)), axis=2),
        "clut_c": r.uniform(0.0, 1.0, (n, k, 3)),
        "occ": r.random(n),
        "occ_x": np.sort(r.uniform(-0.3, 0.3, (n, 2)), axis=1),
        "occ_y0": r.uniform(0.45, 0.8, n),
        "occ_c": r.uniform(0.0, 1.0, (n, 3)),
        "bright": r.uniform(0.85, 1.15, n),
        "blur_j": r.uniform(0.0, 0.3, n),
        "thick": r.random(n) < 0.5,
        "hatch": r.uniform(0.0, math.pi, n),
        "noise_id": r.integers(0, 2**31, n),
    }
