"""Image transforms as plain tensor ops (no torchvision), driven by an explicit generator.

Every transform is a callable ``t(image, generator) -> image`` on a ``[C, H, W]`` tensor.
Deterministic transforms ignore the generator; random ones draw *only* from it, never from the
global RNG. :class:`Compose` chains them.

Reproducibility across DataLoader workers: the datasets in this package build one generator per
sample with :func:`sample_generator` from ``(seed, epoch, index)`` — the dataset seed, the epoch set
by ``dataset.set_epoch(epoch)`` (kept in a shared-memory cell, so persistent worker processes see
the new value) and the dataset index. The worker id and the number of workers play no part, so
``num_workers=0`` and ``num_workers=4`` give bit-identical batches.

Example:
    >>> import torch
    >>> tf = train_transform((32, 16), padding=2)
    >>> img = torch.rand(3, 40, 20)
    >>> a = tf(img, sample_generator(0, 1, 7))
    >>> b = tf(img, sample_generator(0, 1, 7))
    >>> a.shape, torch.equal(a, b)
    (torch.Size([3, 32, 16]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Normalize",
    "RandomChannel",
    "RandomCrop",
    "RandomErasing",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "Resize",
    "ToFloat",
    "Transform",
    "eval_transform",
    "sample_generator",
    "train_transform",
]

#: A transform: ``(image [C,H,W], generator) -> image``.
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, epoch, index)`` (via NumPy's SeedSequence).

    Distinct triples give statistically independent streams; equal triples give equal streams.

    Example:
        >>> g1, g2 = sample_generator(0, 0, 1), sample_generator(0, 0, 1)
        >>> torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
        True
    """
    for name, v in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return g


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _check_image(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.ndim != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"image must be a [C, H, W] tensor, got {shape}")


def _check_probability(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    return float(p)


def _check_size(size: Sequence[int], name: str = "size") -> tuple[int, int]:
    if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size):
        raise ValueError(f"{name} must be (height, width) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


class Compose:
    """Apply transforms in order, all drawing from the same generator.

    Example:
        >>> tf = Compose([ToFloat(), Resize((4, 2))])
        >>> tf(torch.full((3, 8, 4), 255, dtype=torch.uint8), torch.Generator()).max().item()
        1.0
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            img = t(img, generator)
        return img

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ToFloat:
    """``uint8`` in ``[0, 255]`` → ``float32`` in ``[0, 1]``; floating input passes unchanged.

    Example:
        >>> ToFloat()(torch.tensor([[[0, 255]]], dtype=torch.uint8), torch.Generator())
        tensor([[[0., 1.]]])
    """

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_image(img)
        if img.dtype == torch.uint8:
            return img.to(torch.float32).div_(255.0)
        if not img.dtype.is_floating_point:
            raise TypeError(f"image must be uint8 or floating point, got {img.dtype}")
        return img

    def __repr__(self) -> str:
        return "ToFloat()"


class Resize:
    """Bilinear resize (with antialiasing when shrinking) to ``size = (height, width)``.

    Example:
        >>> Resize((4, 2))(torch.ones(3, 16, 8), torch.Generator()).shape
        torch.Size([3, 4, 2])
    """

    def __init__(self, size: Sequence[int]) -> None:
        self.size = _check_size(size)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_image(img)
        if tuple(img.shape[-2:]) == self.size:
            return img
        x = img.unsqueeze(0).to(torch.float32)
        out = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return out.squeeze(0).to(img.dtype) if img.dtype.is_floating_point else out.squeeze(0)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomCrop:
    """Zero-pad each side by ``padding`` pixels, then crop a random ``size`` window.

    With ``size`` equal to the input size this is the usual ReID "pad 10 and crop back".

    Example:
        >>> img = torch.ones(1, 4, 4)
        >>> out = RandomCrop((4, 4), padding=2)(img, torch.Generator().manual_seed(0))
        >>> out.shape, 0.0 < out.mean().item() <= 1.0
        (torch.Size([1, 4, 4]), True)
    """

    def __init__(self, size: Sequence[int], padding: int = 0, fill: float = 0.0) -> None:
        self.size = _check_size(size)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be an int >= 0, got {padding!r}")
        self.padding = padding
        self.fill = float(fill)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_image(img)
        p = self.padding
        if p:
            img = F.pad(img, (p, p, p, p), value=self.fill)
        h, w = self.size
        H, W = img.shape[-2:]
        if h > H or w > W:
            raise ValueError(f"RandomCrop size {self.size} exceeds padded image {(H, W)}")
        top = _randint(generator, 0, H - h)
        left = _randint(generator, 0, W - w)
        return img[:, top : top + h, left : left + w]

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``.

    Example:
        >>> img = torch.arange(4.0).view(1, 1, 4)
        >>> RandomHorizontalFlip(1.0)(img, torch.Generator()).flatten().tolist()
        [3.0, 2.0, 1.0, 0.0]
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_image(img)
        # Always draw, so later transforms see the same stream whatever p is.
        if _uniform(generator) < self.p:
            return img.flip(-1)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomGrayscale:
    """With probability ``p``, replace a colour image by its luminance in all three channels.

    Luminance uses the ITU-R BT.601 weights ``(0.299, 0.587, 0.114)``. Removing colour is the
    usual visible/infrared augmentation: colour is an RGB-only cue that no NIR query can match.
    Images without exactly three channels pass through unchanged.

    Example:
        >>> img = torch.tensor([[[1.0]], [[0.0]], [[0.0]]])
        >>> [round(v, 3) for v in RandomGrayscale(1.0)(img, torch.Generator()).flatten().tolist()]
        [0.299, 0.299, 0.299]
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_probability(p, "p")
        self.weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_image(img)
        # Always draw, so later transforms see the same stream whatever p is.
        if _uniform(generator) >= self.p or img.shape[0] != 3:
            return img
        gray = (img * self.weights.to(img.dtype)).sum(dim=0, keepdim=True)
        return gray.expand_as(img).contiguous()

    def __repr__(self) -> str:
        return f"RandomGrayscale(p={self.p})"


class RandomChannel:
    """With probability ``p``, replace a colour image by one of its channels, drawn uniformly,
    repeated in all three channels.

    This is the channel augmentation of CAJ (Ye et al., ICCV 2021): a visible image seen through
    one sensor band is closer to an infrared one than any colour image. Images without exactly
    three channels pass through unchanged.

    Example:
        >>> img = torch.tensor([[[1.0]], [[2.0]], [[3.0]]])
        >>> out = RandomChannel(1.0)(img, torch.Generator().manual_seed(0))
        >>> len(set(out.flatten().tolist())), out[0].item() in (1.0, 2.0, 3.0)
        (1, True)
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_probability(p, "p")

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_image(img)
        # Always draw the decision, so later transforms see the same stream whatever p is.
        if _uniform(generator) >= self.p or img.shape[0] != 3:
            return img
        c = _randint(generator, 0, 2)
        return img[c : c + 1].expand_as(img).contiguous()

    def __repr__(self) -> str:
        return f"RandomChannel(p={self.p})"


class RandomErasing:
    """Random erasing (Zhong et al., 2020): with probability ``p`` replace a random rectangle.

    The rectangle's area is a fraction in ``scale`` of the image and its aspect ratio
    (height / width) is log-uniform in ``ratio``; up to 10 attempts are made to fit it. It is
    filled with ``value`` (a float) or, when ``value="random"``, with per-pixel normal noise.
    Apply after :class:`Normalize` (the usual ReID order), so ``0`` means the mean colour.

    Example:
        >>> out = RandomErasing(p=1.0, value=-9.0)(torch.zeros(3, 32, 16), torch.Generator())
        >>> bool((out == -9.0).any()), bool((out == 0.0).any())
        (True, True)
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 0.4),
        ratio: tuple[float, float] = (0.3, 3.3),
        value: float | str = 0.0,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale!r}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio!r}")
        if isinstance(value, str) and value != "random":
            raise ValueError(f"value must be a float or 'random', got {value!r}")
        self.p, self.scale, self.ratio, self.value = float(p), scale, ratio, value

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_image(img)
        if _uniform(generator) >= self.p:
            return img
        C, H, W = img.shape
        area = H * W
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * _uniform(generator, *self.scale)
            aspect = math.exp(_uniform(generator, log_lo, log_hi))
            h = round(math.sqrt(target * aspect))
            w = round(math.sqrt(target / aspect))
            if 0 < h < H and 0 < w < W:
                top = _randint(generator, 0, H - h)
                left = _randint(generator, 0, W - w)
                out = img.clone()
                if self.value == "random":
                    fill = torch.randn((C, h, w), generator=generator).to(img.dtype)
                    out[:, top : top + h, left : left + w] = fill
                else:
                    out[:, top : top + h, left : left + w] = float(self.value)
                return out
        return img

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio})"


class Normalize:
    """``(img - mean) / std`` per channel.

    Example:
        >>> Normalize((0.5,), (0.5,))(torch.ones(1, 1, 1), torch.Generator()).item()
        1.0
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std must have the same non-zero length, got {mean}, {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_image(img)
        if img.shape[0] != self.mean.shape[0]:
            raise ValueError(
                f"image has {img.shape[0]} channels but Normalize has {self.mean.shape[0]}"
            )
        return (img.to(torch.float32) - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def train_transform(
    size: Sequence[int],
    *,
    padding: int = 10,
    flip_p: float = 0.5,
    erasing_p: float = 0.5,
    grayscale_p: float = 0.0,
    channel_p: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """The ReID training pipeline: to-float, resize, flip, pad + crop, the optional channel
    augmentations, normalise, erase.

    Args:
        size: output ``(height, width)``.
        padding: zero padding of each side before the random crop back to ``size``.
        flip_p: probability of a horizontal flip.
        erasing_p: probability of random erasing (after normalisation, so it fills with the
            mean colour).
        grayscale_p: probability of :class:`RandomGrayscale`; ``0`` leaves the step out.
        channel_p: probability of :class:`RandomChannel` (after grayscale); ``0`` leaves the
            step out.
        mean, std: per-channel normalisation.

    Raises:
        ValueError: a probability outside ``[0, 1]``, a bad size or padding.

    Example:
        >>> tf = train_transform((16, 8), padding=1, grayscale_p=0.5)
        >>> [type(t).__name__ for t in tf.transforms]  # doctest: +NORMALIZE_WHITESPACE
        ['ToFloat', 'Resize', 'RandomHorizontalFlip', 'RandomCrop', 'RandomGrayscale',
         'Normalize', 'RandomErasing']
        >>> tf(torch.rand(3, 20, 10), torch.Generator()).shape
        torch.Size([3, 16, 8])
    """
    size = _check_size(size)
    steps: list[Transform] = [
        ToFloat(),
        Resize(size),
        RandomHorizontalFlip(flip_p),
        RandomCrop(size, padding=padding),
    ]
    # Channel augmentations act on [0, 1] colours, before normalisation shifts each channel.
    if _check_probability(grayscale_p, "grayscale_p") > 0:
        steps.append(RandomGrayscale(grayscale_p))
    if _check_probability(channel_p, "channel_p") > 0:
        steps.append(RandomChannel(channel_p))
    steps += [Normalize(mean, std), RandomErasing(erasing_p)]
    return Compose(steps)


def eval_transform(
    size: Sequence[int],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Deterministic evaluation pipeline: to-float, resize, normalise.

    Example:
        >>> eval_transform((16, 8))(torch.rand(3, 20, 10), torch.Generator()).shape
        torch.Size([3, 16, 8])
    """
    return Compose([ToFloat(), Resize(_check_size(size)), Normalize(mean, std)])
