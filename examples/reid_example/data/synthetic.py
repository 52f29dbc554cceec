"""An embedded, generated multi-modal person ReID data set (no download).

Every identity has latent attributes; every sample renders its identity under random nuisance
factors into one of five modalities. The problem is genuinely cross-modal:

* **Identity cues** that survive a modality change: silhouette proportions (height, shoulder
  width and taper, torso/leg ratio, head size), the upper garment's texture (plain, horizontal,
  vertical or diagonal stripes, checks; frequency; diagonal orientation), sleeve and lower
  garment type (trousers/shorts/skirt), accessories (a bag on the left or right, a hat), and
  — partially — garment lightness.
* **Colour** (21 garment colours) is a strong RGB-only cue. The NIR renderer applies a fixed
  spectral mix ``w = (0.5, 0.3, 0.2)`` under which the palette collapses onto three intensity
  levels (every palette colour is ``L + d`` with ``w · d = 0``), so a model that memorises RGB
  colour cannot match infrared queries.
* **Nuisances**: scale, shift, stance width, stride; camera-dependent gain, colour cast and blur;
  per-sample brightness; background gradients and clutter rectangles; occluders; pixel noise.

Modalities (:class:`sdmreid.Modality`):

* ``RGB`` — the colour image.
* ``NIR`` — one channel ``w · colour`` (skin bright, active-illumination vignette, more noise),
  replicated to 3 channels.
* ``SKETCH`` — edge strokes of the body parts and the texture on white paper with stroke jitter
  and dropout plus faint shading by garment lightness; no colour, no background, no camera.
* ``CPENCIL`` — posterised, lightened colours on paper with hatching strokes and dark outlines.
* ``TEXT`` — a templated caption (several paraphrases, synonyms, randomly omitted attributes),
  tokenised by :class:`~reid_example.data.text.WordTokenizer`.

Determinism: identity attributes depend on ``seed`` only (shared by the splits); the samples of a
split, their cameras and nuisance parameters on ``(seed, split)`` and the spec; sample ``i``
renders to the same pixels whether rendered alone, in a batch or from the cache. Random
augmentation uses ``sample_generator(seed, epoch, index)`` (see :mod:`.transforms`).

Rendering is vectorised over a batch with torch (float32, one core): see :func:`benchmark_render`
and the module README figures in the final report. Data sets whose rendered images fit in
``cache_bytes`` are rendered once at construction (``uint8``) and shared copy-on-write with
DataLoader workers; larger ones render in ``__getitem__``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from reid_example.data.protocols import RetrievalProtocol, all_to_rgb_protocols
from reid_example.data.records import EpochMixin, ReIDRecord, Sample
from reid_example.data.text import WordTokenizer
from reid_example.data.transforms import Transform, eval_transform
from sdmreid.modality import Modality, parse_modality

__all__ = [
    "NIR_MIX",
    "PALETTE",
    "PALETTE_NAMES",
    "PRESETS",
    "SyntheticMultiModalReID",
    "SyntheticSpec",
    "benchmark_render",
]

SPLITS = ("train", "val", "test")
NIR_MIX: tuple[float, float, float] = (0.5, 0.3, 0.2)
_LEVELS = (0.2, 0.45, 0.72)
_HUE_NAMES = (
    ("maroon", "brown", "dark green", "teal", "navy", "purple", "black"),
    ("red", "olive", "green", "cyan", "blue", "magenta", "grey"),
    ("pink", "yellow", "light green", "turquoise", "sky blue", "lavender", "silver"),
)


def _build_palette() -> tuple[npt.NDArray[np.float32], tuple[str, ...], npt.NDArray[np.int64]]:
    w = np.asarray(NIR_MIX, dtype=np.float64)
    a = np.array([1.0, -1.0, 0.0])
    a -= (a @ w) / (w @ w) * w
    a /= np.linalg.norm(a)
    b = np.cross(w, a)
    b /= np.linalg.norm(b)
    colours, names, levels = [], [], []
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
            levels.append(li)
    return (
        np.asarray(colours, dtype=np.float32),
        tuple(names),
        np.asarray(levels, dtype=np.int64),
    )


#: Garment palette ``[21, 3]`` in [0, 1]: 6 hues + 1 neutral at 3 NIR levels; ``NIR_MIX · c`` is
#: the same for all 7 colours of a level.
PALETTE, PALETTE_NAMES, _PALETTE_LEVEL = _build_palette()

_PATTERNS = ("plain", "horizontal", "vertical", "diagonal", "checked")
_FREQS = (2.0, 3.5, 5.0)  # texture cycles per torso height
_LOWER = ("trousers", "shorts", "skirt")
_BAG = ("none", "left", "right")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Everything that defines a synthetic data set (besides the seed).

    Attributes:
        num_identities: identities per split as ``(train, val, test)``; identity-disjoint.
        counts: per modality, the inclusive range ``(lo, hi)`` of samples per identity, as
            ``((modality, lo, hi), ...)``; a modality absent here is absent from the data.
        cameras: per modality, the camera ids a sample is drawn from, as
            ``((modality, (cam, ...)), ...)``; modalities without an entry get camera ``0``.
        rgb_only_fraction: fraction of *train* identities that have only RGB samples
            (modality imbalance that the strict sampler must cope with).
        image_size: rendered ``(height, width)``.
        occlusion_p: probability of an occluder in RGB/NIR samples.
        text_drop_p: probability of omitting each optional attribute from a caption.
    """

    num_identities: tuple[int, int, int] = (300, 50, 150)
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
        if len(self.num_identities) != 3 or any(n < 0 for n in self.num_identities):
            raise ValueError(
                f"num_identities must be (train, val, test) >= 0, got {self.num_identities!r}"
            )
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
        return tuple(m for m, _, hi in self.counts if hi > 0)


_ALL_COUNTS = ((0, 4, 10), (1, 2, 6), (2, 1, 2), (3, 1, 3), (4, 1, 3))
_ALL_CAMERAS = ((0, (1, 2, 4, 5)), (1, (3, 6)))

#: Preset specs. ``sysu``: RGB cams 1,2,4,5 + NIR cams 3,6, imbalanced counts. ``regdb``: exactly
#: 10 visible (cam 1) + 10 thermal (cam 2, blurrier) images per identity. ``prcv2025``: all five
#: modalities (ORBench-like). ``demo``: ``prcv2025`` scaled down for a minutes-long CPU run
#: (120/30/50 identities, ~2.3k training samples) at 64×32.
PRESETS: Mapping[str, SyntheticSpec] = {
    "sysu": SyntheticSpec(
        num_identities=(355, 40, 96),
        counts=((0, 12, 30), (1, 6, 16)),
        cameras=((0, (1, 2, 4, 5)), (1, (3, 6))),
    ),
    "regdb": SyntheticSpec(
        num_identities=(186, 20, 206),
        counts=((0, 10, 10), (1, 10, 10)),
        cameras=((0, (1,)), (1, (2,))),
        occlusion_p=0.05,
    ),
    "prcv2025": SyntheticSpec(
        num_identities=(300, 50, 150),
        counts=_ALL_COUNTS,
        cameras=_ALL_CAMERAS,
        rgb_only_fraction=0.1,
    ),
    "demo": SyntheticSpec(
        num_identities=(120, 30, 50),
        counts=((0, 6, 8), (1, 4, 6), (2, 2, 2), (3, 2, 2), (4, 2, 2)),
        cameras=_ALL_CAMERAS,
        rgb_only_fraction=0.1,
        image_size=(64, 32),
    ),
}
_PRESET_ALIASES = {
    "sysu-mm01": "sysu",
    "sysu_mm01": "sysu",
    "sysu-like": "sysu",
    "regdb-like": "regdb",
    "prcv": "prcv2025",
    "prcv2025-like": "prcv2025",
    "orbench": "prcv2025",
}


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


# --------------------------------------------------------------------------------------------
# identity attributes and sample parameters


def _identity_attributes(seed: int, n: int) -> dict[str, npt.NDArray[Any]]:
    r = _rng(seed, 0xA77)
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
        "noun": r.integers(0, 4, n),
    }


def _camera_params(seed: int, n_cams: int = 16) -> dict[str, npt.NDArray[np.float64]]:
    r = _rng(seed, 0xCA3)
    return {
        "gain": r.uniform(0.75, 1.15, n_cams),
        "cast": r.uniform(0.85, 1.15, (n_cams, 3)),
        "blur": r.uniform(0.0, 0.7, n_cams),
        "vignette": r.uniform(0.15, 0.45, n_cams),
    }


def _sample_params(r: np.random.Generator, n: int) -> dict[str, npt.NDArray[Any]]:
    k = 3  # clutter rectangles
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


# --------------------------------------------------------------------------------------------
# rendering
#
# Every sample is first painted as a region-id map (one int per pixel); colours come from one
# gather into a per-sample colour table, and blur + per-channel gain are one depthwise
# convolution with a per-sample kernel. That keeps the number of full-image float ops small.

_BG, _GROUND, _CLUT0 = 0, 1, 2  # clutter rectangles use ids 2, 3, 4
_LOWER_ID, _SKIN, _SHOES, _UPPER, _STRIPE, _HAT, _BAG_ID, _OCC = 5, 6, 7, 8, 9, 10, 11, 12
_NUM_REGIONS = 13
_N_CLUTTER = 3


def _col(x: npt.NDArray[Any] | float) -> torch.Tensor:
    """[n] or [n, c] → float tensor [n, 1|c, 1, 1]."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if t.ndim == 1:
        t = t[:, None]
    return t[:, :, None, None]


def _and(*terms: torch.Tensor) -> torch.Tensor:
    """Logical AND of broadcastable bool masks, small operands first.

    Computed as a product of ``uint8`` views: broadcasting ``&`` on bool tensors is an order of
    magnitude slower on CPU.
    """
    ordered = sorted(terms, key=lambda t: t.numel())
    out = ordered[0].view(torch.uint8)
    for t in ordered[1:]:
        out = out * t.view(torch.uint8)
    return out.view(torch.bool)


_NOISE_BANK_SIZE = 97


def _noise_bank(seed: int, size: tuple[int, int]) -> torch.Tensor:
    """``[97, 3, H, W]`` standard normal noise images; each sample uses one of them."""
    g = torch.Generator().manual_seed(int(_rng(seed, 0x401).integers(2**62)))
    return torch.randn((_NOISE_BANK_SIZE, 3, *size), generator=g)


def _pick_noise(bank: torch.Tensor, sp: Mapping[str, npt.NDArray[Any]], c: int) -> torch.Tensor:
    """Each sample's noise image → [n, c, H, W]."""
    idx = torch.as_tensor(sp["noise_id"] % bank.shape[0])
    return bank.index_select(0, idx)[:, :c]


_BOX3 = torch.full((3, 1, 3, 3), 1.0 / 9.0)


def _blur(img: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """Per-sample ``(1 - b)·img + b·box3(img)``; zero padding darkens the 1-pixel border a
    little, like lens vignetting. Runs in channels-last layout (fast depthwise convolution)."""
    n, c = img.shape[:2]
    x = img.contiguous(memory_format=torch.channels_last)
    box = F.conv2d(x, _BOX3[:c], padding=1, groups=c)
    return torch.lerp(x, box, blur.view(n, 1, 1, 1))


def _render(
    modality: int,
    ida: Mapping[str, npt.NDArray[Any]],
    sp: Mapping[str, npt.NDArray[Any]],
    cams: npt.NDArray[np.int64],
    camp: Mapping[str, npt.NDArray[Any]],
    bank: torch.Tensor,
    occlusion_p: float,
) -> torch.Tensor:
    """Render ``n`` samples of one image modality → float ``[n, 3, H, W]`` in [0, 1].

    ``ida`` holds the identity attributes per sample, ``sp`` the sample parameters.
    """
    H, W = bank.shape[-2:]
    n = len(cams)
    u = ((torch.arange(W, dtype=torch.float32) + 0.5 - W / 2) / H).view(1, 1, 1, W)
    v = ((torch.arange(H, dtype=torch.float32) + 0.5) / H).view(1, 1, H, 1)
    camera_like = modality in (int(Modality.RGB), int(Modality.NIR))

    fh = _col(ida["height"] * sp["scale"])
    y_f = torch.clamp(0.5 + fh / 2 + _col(sp["dy"]), max=0.985)
    y_t = y_f - fh
    cx = _col(sp["dx"])
    rh = _col(ida["head"]) * fh
    yh = y_t + rh
    y_s = y_t + 2.1 * rh
    y_w = y_s + _col(ida["torso"]) * fh
    sw = _col(ida["shoulder"] * sp["wj"]) * fh
    ww = sw * _col(ida["taper"])
    du = u - cx
    adu = du.abs()

    # body part masks, [n, 1, H, W] (or broadcastable)
    t_torso = ((v - y_s) / (y_w - y_s)).clamp(0, 1)
    half = sw + (ww - sw) * t_torso
    in_torso_v = (v >= y_s) & (v <= y_w)
    arm_w = 0.032 * fh
    arm_end = y_s + 0.4 * fh
    sleeve_end = torch.where(_col(ida["sleeve"]) > 0, y_s + 0.1 * fh, arm_end)
    in_arm_v = (v >= y_s) & (v <= arm_end)
    in_sleeve_v = (v >= y_s) & (v <= sleeve_end)
    near = adu <= half + arm_w
    torso_or_arm = _and(in_arm_v, near)
    upper = _and(in_torso_v, adu <= half) | _and(in_sleeve_v, near)
    t_leg = ((v - y_w) / (y_f - y_w)).clamp(0, 1)
    in_leg_v = (v > y_w) & (v <= y_f)
    spread = _col(sp["stride"]) * fh * t_leg
    legs = _and(in_leg_v, adu <= ww + spread, adu >= (0.1 * ww + spread) * (t_leg > 0.06))
    lower_type = _col(ida["lower_type"])
    lower_len = torch.where(lower_type == 0, 1.0, 0.42)
    skirt = _and(lower_type == 2, in_leg_v, t_leg <= 0.45, adu <= ww * (1 + 0.6 * t_leg))
    lower = _and(legs, t_leg <= lower_len) | skirt
    shoes = _and(legs, v >= y_f - 0.03 * fh)
    head = (du / (0.8 * rh)) ** 2 + ((v - yh) / rh) ** 2 <= 1.0
    hat = _and(
        _col(ida["hat"].astype(np.float32)) > 0,
        v >= y_t - 0.02 * fh,
        v <= yh - 0.25 * rh,
        adu <= 1.0 * rh,
    )
    bag_u = du * _col(np.where(ida["bag"] == 1, -1.0, 1.0))
    bag_in = sw * 0.95 + arm_w * 0.4
    bag = _and(
        _col((ida["bag"] > 0).astype(np.float32)) > 0,
        bag_u >= bag_in,
        bag_u <= bag_in + 0.075 * fh,
        v >= y_s + 0.5 * (y_w - y_s),
        v <= y_w + 0.07 * fh,
    )

    # texture on the upper garment, in body-relative coordinates
    pat = ida["pattern"]
    f = _col(np.asarray(_FREQS)[ida["freq"]] / ida["torso"] * (2 * math.pi))
    ca = _col(np.select([pat == 1, pat == 3], [0.0, 0.7071 * ida["orient"]], 1.0))
    cb = _col(np.select([pat == 2, pat == 3], [0.0, 0.7071], 1.0))
    cb = torch.where(_col(pat) == 4, 0.0, cb)  # checks: sin(f a) · sin(f b)
    a = du / fh
    b = (v - y_s) / fh
    s = torch.sin(f * (ca * a + cb * b) + _col(sp["phase"]) * (2 * math.pi))
    s = s * torch.where(_col(pat) == 4, torch.sin(f * b), 1.0)
    stripe = _and(s > 0, _col((pat > 0).astype(np.float32)) > 0)

    # region ids, painter's order
    region = torch.zeros((n, 1, H, W), dtype=torch.int8)
    if camera_like:
        region.masked_fill_((v > _col(sp["ground"])).expand_as(region), _GROUND)
        for k in range(_N_CLUTTER):
            cm = _and(
                u >= _col(sp["clut_x"][:, k, 0]),
                u <= _col(sp["clut_x"][:, k, 1]),
                v >= _col(sp["clut_y"][:, k, 0]),
                v <= _col(sp["clut_y"][:, k, 1]),
            )
            region.masked_fill_(cm, _CLUT0 + k)
    region.masked_fill_(legs, _SKIN)
    region.masked_fill_(lower, _LOWER_ID)
    region.masked_fill_(shoes, _SHOES)
    region.masked_fill_(torso_or_arm, _SKIN)
    region.masked_fill_(upper, _UPPER)
    region.masked_fill_(upper & stripe, _STRIPE)
    region.masked_fill_(head.expand_as(region), _SKIN)
    region.masked_fill_(hat, _HAT)
    region.masked_fill_(bag, _BAG_ID)
    fg = region >= _LOWER_ID
    if camera_like and occlusion_p > 0:
        occ = _and(
            _col(sp["occ"]) < occlusion_p,
            u >= _col(sp["occ_x"][:, 0]),
            u <= _col(sp["occ_x"][:, 1]),
            v >= _col(sp["occ_y0"]),
        )
        region.masked_fill_(occ, _OCC)

    # per-sample colour table [n, 3, R]
    table = torch.zeros((n, 3, _NUM_REGIONS))
    bg = torch.as_tensor(sp["bg"], dtype=torch.float32)
    table[:, :, _BG] = bg
    table[:, :, _GROUND] = bg * 0.6
    table[:, :, _CLUT0 : _CLUT0 + _N_CLUTTER] = torch.as_tensor(
        sp["clut_c"], dtype=torch.float32
    ).transpose(1, 2)
    table[:, :, _LOWER_ID] = torch.as_tensor(ida["lower_rgb"], dtype=torch.float32)
    skin = torch.as_tensor(ida["skin"], dtype=torch.float32)[:, None]
    table[:, :, _SKIN] = skin * torch.tensor([1.0, 0.78, 0.62])
    table[:, :, _SHOES] = 0.12
    up = torch.as_tensor(ida["upper_rgb"], dtype=torch.float32)
    table[:, :, _UPPER] = up
    table[:, :, _STRIPE] = up * 0.45
    table[:, :, _HAT] = torch.as_tensor(PALETTE[ida["hat_colour"]])
    table[:, :, _BAG_ID] = torch.as_tensor(PALETTE[ida["bag_colour"]])
    table[:, :, _OCC] = torch.as_tensor(sp["occ_c"], dtype=torch.float32)
    flat = region.view(n, 1, H * W).long()

    if camera_like:
        blur = torch.as_tensor(np.clip(camp["blur"][cams] + sp["blur_j"], 0.0, 1.0)).float()
        light = 1 + _col(sp["bg_grad"]) * (v - 0.5)  # illumination gradient [n, 1, H, 1]
        if modality == int(Modality.RGB):
            # gather in [n, HW, 3] order: the NCHW view is channels-last without a copy
            nhwc = table.transpose(1, 2).gather(1, flat.transpose(1, 2).expand(n, H * W, 3))
            img = _blur(nhwc.view(n, H, W, 3).permute(0, 3, 1, 2), blur)
            gain = camp["cast"][cams] * (camp["gain"][cams] * sp["bright"])[:, None]
            img = img * (_col(gain) * light)
            img = img.add_(_pick_noise(bank, sp, 3), alpha=0.02)
        else:
            nir = (table * torch.tensor(NIR_MIX).view(1, 3, 1)).sum(1, keepdim=True)
            nir[:, 0, _SKIN] = torch.as_tensor(0.75 + 0.1 * ida["skin"], dtype=torch.float32)
            img = nir.gather(2, flat).view(n, 1, H, W)
            r2 = (u / 0.25) ** 2 + ((v - 0.5) / 0.5) ** 2
            img = img * (light * (1 - _col(camp["vignette"][cams]) * r2))
            img = _blur(img, blur) * _col(camp["gain"][cams] * sp["bright"])
            img = img.add_(_pick_noise(bank, sp, 1), alpha=0.045)
    else:
        # outlines of the body parts and of the texture
        e = torch.zeros((n, 1, H, W))
        e[..., :, 1:] += region[..., :, 1:] != region[..., :, :-1]
        e[..., 1:, :] += region[..., 1:, :] != region[..., :-1, :]
        e = e.clamp_(max=1.0)
        thick = _col(sp["thick"].astype(np.float32)) > 0
        e = torch.where(thick, F.max_pool2d(e, 3, stride=1, padding=1), e)
        nz = _pick_noise(bank, sp, 1)
        if modality == int(Modality.SKETCH):
            ink = e * (0.75 + 0.25 * nz.clamp(-1, 1)) * (nz > -1.2)
            luma = (table * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1)).sum(1, True)
            lum = luma.gather(2, flat).view(n, 1, H, W)
            hatch = torch.sin(90 * (u + v + 0.05 * nz)) > 0.3
            shade = _and(fg, hatch) * (1 - lum).clamp(0, 1) * 0.25
            img = 0.96 - ink.clamp(0, 1) - shade
        else:  # CPENCIL: posterised, lightened colours on paper
            table = torch.round(table * 3.0) / 3.0 * 0.85 + 0.12
            table[:, :, _BG] = torch.tensor([0.95, 0.93, 0.88])
            img = table.gather(2, flat.expand(n, 3, H * W)).view(n, 3, H, W)
            th = _col(sp["hatch"])
            hatch = torch.sin(150 * (u * torch.cos(th) + v * torch.sin(th)) + 2 * nz)
            img = img * (1 - 0.15 * _and(hatch > 0.4, fg) - 0.55 * e) + 0.03 * nz
    img = img.clamp_(0.0, 1.0)
    return img.expand(n, 3, H, W) if img.shape[1] == 1 else img


# --------------------------------------------------------------------------------------------
# captions

_COLOUR_WORDS = PALETTE_NAMES
_UPPER_NOUNS = (("shirt", "top", "jacket", "sweater"), ("t-shirt", "shirt", "top", "blouse"))
_LOWER_NOUNS = (("trousers", "pants", "jeans"), ("shorts",), ("skirt",))
_PERSON = ("person", "pedestrian", "man", "woman", "individual", "someone")
_PATTERN_PHRASES = {
    1: ("with horizontal stripes", "horizontally striped", "with stripes across it"),
    2: ("with vertical stripes", "vertically striped", "with stripes going down"),
    3: ("with diagonal stripes", "diagonally striped"),
    4: ("checked", "plaid", "with a checkered pattern"),
}
_FREQ_WORDS = ("wide", "medium", "thin")


def _caption(ida: Mapping[str, npt.NDArray[Any]], i: int, r: np.random.Generator, p: float) -> str:
    def pick(options: Sequence[str]) -> str:
        return options[int(r.integers(len(options)))]

    def keep() -> bool:
        return bool(r.random() >= p)

    build: list[str] = []
    if keep():
        h = float(ida["height"][i])
        build.append("tall" if h > 0.89 else "short" if h < 0.83 else "")
    if keep():
        s = float(ida["shoulder"][i])
        build.append("broad" if s > 0.122 else "slim" if s < 0.1 else "")
    build_s = " ".join(x for x in build if x)
    person = pick(_PERSON)
    subject = f"a {build_s} {person}" if build_s else f"a {person}"

    sleeve = int(ida["sleeve"][i])
    up = pick(_UPPER_NOUNS[sleeve])
    up_col = _COLOUR_WORDS[int(ida["upper"][i])] + " " if keep() else ""
    pattern = int(ida["pattern"][i])
    if pattern and keep():
        phrase = pick(_PATTERN_PHRASES[pattern])
        if pattern in (1, 2, 3) and r.random() < 0.6:
            phrase = phrase.replace("stripes", f"{_FREQ_WORDS[int(ida['freq'][i])]} stripes")
        upper = (
            f"{up_col}{phrase} {up}"
            if "striped" in phrase or (pattern == 4 and " " not in phrase)
            else f"{up_col}{up} {phrase}"
        )
    else:
        upper = f"{up_col}{'plain ' if pattern == 0 and r.random() < 0.3 else ''}{up}"
    lt = int(ida["lower_type"][i])
    lower = f"{_COLOUR_WORDS[int(ida['lower'][i])] + ' ' if keep() else ''}{pick(_LOWER_NOUNS[lt])}"
    extras: list[str] = []
    bag = int(ida["bag"][i])
    if bag and keep():
        side = f" on the {_BAG[bag]} side" if r.random() < 0.5 else ""
        extras.append(f"carrying a {pick(('bag', 'handbag', 'shoulder bag'))}{side}")
    if bool(ida["hat"][i]) and keep():
        hat_col = _COLOUR_WORDS[int(ida["hat_colour"][i])] + " " if r.random() < 0.5 else ""
        extras.append(f"wearing a {hat_col}{pick(('hat', 'cap'))}")
    templates = (
        "{s} wearing a {u} and {l}{x}.",
        "{s} in a {u} with {l}{x}.",
        "the {p} wears a {u} and {l}{x}.",
        "{s} dressed in {l} and a {u}{x}.",
    )
    t = pick(templates)
    x = "".join(f", {e}" for e in extras)
    text = t.format(s=subject, u=upper, l=lower, x=x, p=(build_s + " " + person).strip())
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# the dataset


class SyntheticMultiModalReID(EpochMixin, Dataset[Sample]):
    """The generated cross-modal ReID data set; one instance holds one split.

    Args:
        spec: what to generate (see :class:`SyntheticSpec`, :data:`PRESETS`).
        seed: the data seed; identities are shared by the splits of one seed.
        split: ``"train"``, ``"val"`` or ``"test"`` (identity-disjoint).
        transform: image transform ``(uint8 [3,H,W], generator) -> float [3,H,W]``; default
            :func:`~reid_example.data.transforms.eval_transform` (ImageNet normalisation).
        tokenizer: caption tokenizer (default :class:`WordTokenizer`).
        max_text_len: token budget per caption.
        cache: render every image once at construction (``True``), never (``False``), or when
            the ``uint8`` images take at most ``cache_bytes`` (``None``).
        cache_bytes: the automatic-cache limit.

    Attributes:
        labels, identities, modalities, cameras: ``int64`` arrays, one entry per sample;
            ``labels = label_map[identities]`` are contiguous ``0..num_classes-1``.
        texts: the caption of each TEXT sample (``None`` elsewhere).

    Example:
        >>> ds = SyntheticMultiModalReID.preset("demo", seed=0, split="val",
        ...                                     num_identities=(0, 4, 0))
        >>> ds.num_classes, sorted(set(ds.modalities.tolist()))
        (4, [0, 1, 2, 3, 4])
        >>> item = ds[0]
        >>> item["image"].shape, item["modality"], item["label"]
        (torch.Size([3, 64, 32]), 0, 0)
    """

    def __init__(
        self,
        spec: SyntheticSpec,
        *,
        seed: int = 0,
        split: str = "train",
        transform: Transform | None = None,
        tokenizer: WordTokenizer | None = None,
        max_text_len: int = 48,
        cache: bool | None = None,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        if not isinstance(spec, SyntheticSpec):
            raise TypeError(f"spec must be a SyntheticSpec, got {type(spec).__name__}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self._init_epoch(seed)
        self.spec = spec
        self.split = split
        self.transform = transform if transform is not None else eval_transform(spec.image_size)
        self.tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
        self.max_text_len = max_text_len

        n_tr, n_va, n_te = spec.num_identities
        offsets = {"train": 0, "val": n_tr, "test": n_tr + n_va}
        n_split = spec.num_identities[SPLITS.index(split)]
        self._attrs_all = _identity_attributes(self.seed, n_tr + n_va + n_te)
        self._cams = _camera_params(self.seed)
        self._bank = _noise_bank(self.seed, spec.image_size)

        r = _rng(self.seed, 0x5A3, SPLITS.index(split))
        ids_local = np.arange(n_split)
        rgb_only = np.zeros(n_split, dtype=bool)
        if split == "train" and spec.rgb_only_fraction > 0:
            k = round(spec.rgb_only_fraction * n_split)
            rgb_only[r.permutation(n_split)[:k]] = True
        ident: list[npt.NDArray[np.int64]] = []
        mods: list[npt.NDArray[np.int64]] = []
        for m, lo, hi in spec.counts:
            cnt = r.integers(lo, hi + 1, n_split)
            if m != int(Modality.RGB):
                cnt[rgb_only] = 0
            ident.append(np.repeat(ids_local, cnt))
            mods.append(np.full(int(cnt.sum()), m, dtype=np.int64))
        ident_a = np.concatenate(ident) if ident else np.zeros(0, np.int64)
        mods_a = np.concatenate(mods) if mods else np.zeros(0, np.int64)
        order = np.lexsort((mods_a, ident_a))
        local = ident_a[order]
        self.modalities = mods_a[order].astype(np.int64)
        n = len(local)
        self._gid = local + offsets[split]  # row into the attribute table
        self.identities = (self._gid + 1).astype(np.int64)  # 1-based like real data sets
        self.labels = local.astype(np.int64)
        self.label_map = {int(offsets[split] + k + 1): int(k) for k in range(n_split)}
        self.num_classes = n_split
        cams = np.zeros(n, dtype=np.int64)
        for m, cam_ids in spec.cameras:
            sel = self.modalities == int(m)
            cams[sel] = np.asarray(cam_ids, dtype=np.int64)[r.integers(0, len(cam_ids), sel.sum())]
        self.cameras = cams
        self._params = _sample_params(r, n)
        rt = _rng(self.seed, 0x7E7, SPLITS.index(split))
        self.texts: list[str | None] = [
            _caption(self._attrs_all, int(self._gid[i]), rt, spec.text_drop_p)
            if self.modalities[i] == int(Modality.TEXT)
            else None
            for i in range(n)
        ]
        self._cache: torch.Tensor | None = None
        self._cache_row = np.full(n, -1, dtype=np.int64)
        image_rows = np.flatnonzero(self.modalities != int(Modality.TEXT))
        h, w = spec.image_size
        if cache is None:
            cache = len(image_rows) * 3 * h * w <= cache_bytes
        if cache and len(image_rows):
            self._cache_row[image_rows] = np.arange(len(image_rows))
            chunks = [
                (self.render(image_rows[s : s + 256]) * 255).round_().to(torch.uint8)
                for s in range(0, len(image_rows), 256)
            ]
            self._cache = torch.cat(chunks)

    # ---- construction helpers --------------------------------------------------------------
    @classmethod
    def preset(
        cls,
        name: str,
        *,
        seed: int = 0,
        split: str = "train",
        image_size: tuple[int, int] | None = None,
        transform: Transform | None = None,
        tokenizer: WordTokenizer | None = None,
        max_text_len: int = 48,
        cache: bool | None = None,
        **overrides: Any,
    ) -> SyntheticMultiModalReID:
        """Build a split of a named preset (``sysu``, ``regdb``, ``prcv2025``, ``demo``).

        ``image_size`` (default: the preset's) and any :class:`SyntheticSpec` field given as a
        keyword (e.g. ``num_identities=(40, 10, 20)``, ``rgb_only_fraction=0.3``) override the
        preset.

        Example:
            >>> ds = SyntheticMultiModalReID.preset("regdb", seed=1, split="test",
            ...     image_size=(32, 16), num_identities=(0, 0, 3))
            >>> len(ds), ds.num_classes
            (60, 3)
        """
        key = name.lower()
        key = _PRESET_ALIASES.get(key, key)
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(SyntheticSpec)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise TypeError(f"unknown SyntheticSpec fields {bad}; valid: {sorted(fields)}")
        spec = dataclasses.replace(PRESETS[key], **overrides)
        if image_size is not None:
            spec = dataclasses.replace(spec, image_size=(int(image_size[0]), int(image_size[1])))
        return cls(
            spec,
            seed=seed,
            split=split,
            transform=transform,
            tokenizer=tokenizer,
            max_text_len=max_text_len,
            cache=cache,
        )

    # ---- rendering ---------------------------------------------------------------------------
    def render(self, indices: Sequence[int] | npt.NDArray[np.integer[Any]]) -> torch.Tensor:
        """Render the raw images of ``indices`` (image modalities) → float ``[n, 3, H, W]``.

        No augmentation and no normalisation; independent of the cache. Runs single-threaded
        (the thread count is restored afterwards).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} samples")
        if (self.modalities[idx] == int(Modality.TEXT)).any():
            raise ValueError("render() takes image samples only (TEXT samples have no image)")
        threads = torch.get_num_threads()
        # Small-tensor work: intra-op threads only add overhead (and collapse under contention).
        torch.set_num_threads(1)
        try:
            return self._render_rows(idx)
        finally:
            torch.set_num_threads(threads)

    def _render_rows(self, idx: npt.NDArray[np.int64]) -> torch.Tensor:
        h, w = self.spec.image_size
        out = torch.empty((len(idx), 3, h, w))
        for m in np.unique(self.modalities[idx]).tolist():
            pos = np.flatnonzero(self.modalities[idx] == m)
            rows = idx[pos]
            gid = self._gid[rows]
            ida = {k: v[gid] for k, v in self._attrs_all.items()}
            sp = {k: v[rows] for k, v in self._params.items()}
            out[torch.from_numpy(pos)] = _render(
                m,
                ida,
                sp,
                self.cameras[rows],
                self._cams,
                self._bank,
                self.spec.occlusion_p,
            )
        return out

    def raw_image(self, index: int) -> torch.Tensor:
        """The ``uint8 [3, H, W]`` image of sample ``index`` (cached or rendered)."""
        row = int(self._cache_row[index])
        if self._cache is not None and row >= 0:
            return self._cache[row]
        return (self.render([index])[0] * 255).round_().to(torch.uint8)

    # ---- Dataset -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        m = int(self.modalities[index])
        image: torch.Tensor | None = None
        tokens: torch.Tensor | None = None
        if m == int(Modality.TEXT):
            text = self.texts[index]
            assert text is not None
            tokens = self.tokenizer.encode(text, self.max_text_len)
        else:
            image = self.transform(self.raw_image(index), self.generator(index))
        return {
            "image": image,
            "tokens": tokens,
            "label": int(self.labels[index]),
            "modality": m,
            "camera": int(self.cameras[index]),
            "index": index,
        }

    # ---- records and protocols -----------------------------------------------------------
    @property
    def records(self) -> list[ReIDRecord]:
        """The samples as :class:`ReIDRecord` (``path`` is a virtual ``synthetic://`` name)."""
        return [
            ReIDRecord(
                path=None if t is not None else f"synthetic://{self.split}/{i}",
                text=t,
                identity=int(self.identities[i]),
                label=int(self.labels[i]),
                modality=int(self.modalities[i]),
                camera=int(self.cameras[i]),
                split=self.split,
            )
            for i, t in enumerate(self.texts)
        ]

    def protocols(self, trial: int = 0) -> list[RetrievalProtocol]:
        """Query/gallery index sets of this split: every non-RGB modality → all RGB images,
        plus RGB → RGB (one seeded RGB query per identity, the other RGB images as gallery).

        Example:
            >>> ds = SyntheticMultiModalReID.preset("regdb", split="test", image_size=(32, 16),
            ...                                     num_identities=(0, 0, 3), cache=False)
            >>> [p.name for p in ds.protocols()]
            ['NIR->RGB', 'RGB->RGB']
        """
        return all_to_rgb_protocols(
            self.identities, self.modalities, seed=self.seed * 1000 + trial + 1
        )

    def __repr__(self) -> str:
        counts = {Modality(m).name: int((self.modalities == m).sum()) for m in self.spec.modalities}
        return (
            f"SyntheticMultiModalReID(split={self.split!r}, seed={self.seed}, "
            f"identities={self.num_classes}, samples={len(self)}, counts={counts}, "
            f"image_size={self.spec.image_size})"
        )


def benchmark_render(
    image_size: tuple[int, int] = (128, 64),
    *,
    num: int = 2048,
    batch: int = 256,
    modality: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Measure rendering throughput (images/s) on the current thread settings.

    Returns ``{"batched": ..., "single": ...}``: wall-clock images/s rendering ``num`` images
    in batches of ``batch``, and one image per call as ``__getitem__`` does without a cache;
    ``batched_cpu``/``single_cpu`` divide by process CPU time instead (the figure for one
    dedicated core when the machine is shared).

    Example:
        >>> r = benchmark_render((32, 16), num=64, batch=32)
        >>> r["batched"] > 0 and r["single"] > 0
        True
    """
    counts: tuple[tuple[int, int, int], ...] = ((0, 6, 6), (1, 3, 3), (2, 1, 1), (3, 1, 1))
    if modality is not None:
        counts = ((0, 0, 0), (int(modality), 10, 10)) if modality else ((0, 10, 10),)
    n_ids = max(1, num // 10)
    spec = SyntheticSpec(num_identities=(0, 0, n_ids), counts=counts, image_size=image_size)
    ds = SyntheticMultiModalReID(spec, seed=seed, split="test", cache=False)
    idx = np.arange(min(num, len(ds)))
    ds.render(idx[:batch])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(idx), batch):
        ds.render(idx[s : s + batch])
    batched = len(idx) / (time.perf_counter() - t0)
    batched_cpu = len(idx) / max(time.process_time() - c0, 1e-9)
    n_single = min(len(idx), 256)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in idx[:n_single].tolist():
        ds.raw_image(i)
    single = n_single / (time.perf_counter() - t0)
    single_cpu = n_single / max(time.process_time() - c0, 1e-9)
    return {
        "batched": batched,
        "single": single,
        "batched_cpu": batched_cpu,
        "single_cpu": single_cpu,
    }
