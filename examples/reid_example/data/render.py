"""The synthetic data set's image renderer: identity attributes and nuisances → pixels.

:func:`render` draws a batch of samples of one image modality at once, vectorised with torch on
one CPU core. Every sample is first painted as a region-id map (one int per pixel, in painter's
order); colours then come from one gather into a per-sample colour table, and blur is one
depthwise box convolution mixed in per sample, which keeps the number of full-image float
operations small.

* ``RGB`` — the colour image: background gradient and clutter, the person, an optional
  occluder, camera gain, colour cast and blur, per-sample brightness and pixel noise.
* ``NIR`` — one channel ``NIR_MIX · colour`` (skin bright, active-illumination vignette, more
  noise), replicated to 3 channels.
* ``SKETCH`` — edge strokes of the body parts and the texture on white paper with stroke jitter
  and dropout plus faint shading by garment lightness; no colour, background or camera.
* ``CPENCIL`` — posterised, lightened colours on paper with hatching strokes and dark outlines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from reid_example.data.attributes import N_CLUTTER, NIR_MIX, PALETTE, TEXTURE_FREQUENCIES, rng
from sdmreid.modality import Modality

__all__ = ["noise_bank", "render"]

# region ids of the region map
_BG, _GROUND, _CLUT0 = 0, 1, 2  # clutter rectangles use ids 2, 3, 4
_LOWER_ID, _SKIN, _SHOES, _UPPER, _STRIPE, _HAT, _BAG_ID, _OCC = 5, 6, 7, 8, 9, 10, 11, 12
_NUM_REGIONS = 13


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


def noise_bank(seed: int, size: tuple[int, int]) -> torch.Tensor:
    """``[97, 3, H, W]`` standard normal noise images of data seed ``seed``; each sample adds
    the one its ``noise_id`` selects (a bank instead of fresh noise keeps rendering cheap)."""
    g = torch.Generator().manual_seed(int(rng(seed, 0x401).integers(2**62)))
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


def render(
    modality: int,
    ida: Mapping[str, npt.NDArray[Any]],
    sp: Mapping[str, npt.NDArray[Any]],
    cams: npt.NDArray[np.int64],
    camp: Mapping[str, npt.NDArray[Any]],
    bank: torch.Tensor,
    occlusion_p: float,
) -> torch.Tensor:
    """Render ``n`` samples of one image modality → float ``[n, 3, H, W]`` in [0, 1].

    Args:
        modality: the :class:`~sdmreid.Modality` code (RGB, NIR, SKETCH or CPENCIL).
        ida: the identity attributes of each sample (see
            :func:`~reid_example.data.attributes.identity_attributes`), ``[n, ...]`` arrays.
        sp: the sample parameters (see :func:`~reid_example.data.attributes.sample_params`).
        cams: each sample's camera id, indexing ``camp``.
        camp: the camera properties (see :func:`~reid_example.data.attributes.camera_params`).
        bank: the noise images (see :func:`noise_bank`); their size is the image size.
        occlusion_p: probability of an occluder in RGB/NIR samples.

    Each sample depends only on its own rows, so a batch renders to the same pixels as its
    samples one by one (up to float rounding).

    Example:
        >>> from reid_example.data.attributes import (
        ...     camera_params, identity_attributes, rng, sample_params)
        >>> ida, sp = identity_attributes(0, 2), sample_params(rng(0, 1), 2)
        >>> img = render(0, ida, sp, np.array([1, 2]), camera_params(0), noise_bank(0, (32, 16)),
        ...              occlusion_p=0.2)
        >>> img.shape, 0.0 <= img.min().item() <= img.max().item() <= 1.0
        (torch.Size([2, 3, 32, 16]), True)
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
    f = _col(np.asarray(TEXTURE_FREQUENCIES)[ida["freq"]] / ida["torso"] * (2 * math.pi))
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
        for k in range(N_CLUTTER):
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
    table[:, :, _CLUT0 : _CLUT0 + N_CLUTTER] = torch.as_tensor(
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
