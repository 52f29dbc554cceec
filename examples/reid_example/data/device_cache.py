"""The training split kept on the training device, and batches built there (``data.device_cache``).

:class:`DeviceCache` holds a split's images as one ``uint8 [n, 3, H, W]`` tensor and its captions
as one padded token tensor on the device, with the per-sample labels, modalities, cameras.
:class:`DeviceAugment` is the training transform of the loader path
(:func:`~reid_example.data.transforms.train_transform`) rewritten for a whole batch on the device:
the same steps in the same order with the same options and probabilities — flip, pad + crop,
grayscale, channel, normalisation, erasing — drawing from a device generator instead of a
per-sample CPU one. :class:`DeviceBatches` iterates the run's batch sampler (the same
:class:`~reid_example.builders.BatchWindow` the DataLoader would iterate, so the same identities
and modalities per batch for the same seed and epoch) and builds each training batch on the
device, in the layout of :func:`~reid_example.data.collate.group_by_modality`: one small
host-to-device copy of the batch's indices, then gathers and the augmentation. No worker
processes, no host-side image work.

Each batch's augmentation stream is seeded from ``(seed, rank, epoch, position in the epoch)``,
so a resumed run draws what an uninterrupted one does. The random numbers differ from the
loader path's (another generator); their distributions are the same.

Example:
    >>> from reid_example.data.synthetic import SyntheticMultiModalReID
    >>> from reid_example.data.transforms import train_transform
    >>> ds = SyntheticMultiModalReID.preset("demo", split="val", image_size=(32, 16),
    ...     identities_per_split=(0, 4, 0), transform=train_transform((32, 16), padding=2))
    >>> cache = DeviceCache.build(ds, torch.device("cpu"), text_length=48, budget_mb=64)
    >>> batches = DeviceBatches(cache, [[0, 1, 2, 3]], DeviceAugment.from_transform(ds.transform),
    ...                         seed=0)
    >>> batch = next(iter(batches))
    >>> batch["images"].shape[1:], batch["modality_counts"][0] + batch["modality_counts"][1] <= 4
    (torch.Size([3, 32, 16]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from reid_example.data.transforms import (
    Compose,
    Normalize,
    RandomChannel,
    RandomCrop,
    RandomErasing,
    RandomGrayscale,
    RandomHorizontalFlip,
    Resize,
    ToFloat,
)
from sdmreid.modality import Modality

__all__ = ["DeviceAugment", "DeviceBatches", "DeviceCache", "batch_seed"]

IntArray = npt.NDArray[np.int64]


class CacheableDataset(Protocol):
    """What :meth:`DeviceCache.build` reads: per-sample arrays, the raw ``uint8`` image of an
    image sample (at the training size) and the item of a caption sample."""

    @property
    def labels(self) -> IntArray: ...
    @property
    def modalities(self) -> IntArray: ...
    @property
    def cameras(self) -> IntArray: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    def raw_image(self, index: int) -> torch.Tensor: ...


@dataclass
class DeviceCache:
    """A data split on one device: images, captions and per-sample arrays.

    Attributes:
        images: ``uint8 [n_images, 3, H, W]`` on the device.
        tokens: ``int64 [n_captions, text_length]`` on the device (``0`` = padding).
        slot: ``[n]`` host array: each sample's row in ``images`` or in ``tokens``.
        labels, modalities, cameras: ``[n]`` host arrays (the dataset's).
        device_labels, device_modalities, device_cameras: the same on the device.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    slot: IntArray
    labels: IntArray
    modalities: IntArray
    cameras: IntArray
    device_labels: torch.Tensor
    device_modalities: torch.Tensor
    device_cameras: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Device memory taken by the cache."""
        tensors = (self.images, self.tokens, self.device_labels, self.device_modalities)
        return sum(t.numel() * t.element_size() for t in (*tensors, self.device_cameras))

    @staticmethod
    def required_bytes(
        dataset: CacheableDataset, image_size: tuple[int, int], text_length: int
    ) -> int:
        """The device memory a cache of ``dataset`` takes (computed before building it)."""
        mods = np.asarray(dataset.modalities)
        n_text = int((mods == int(Modality.TEXT)).sum())
        n_images = len(mods) - n_text
        image_bytes = n_images * 3 * image_size[0] * image_size[1]
        return image_bytes + 8 * (n_text * text_length + 3 * len(mods))

    @classmethod
    def build(
        cls,
        dataset: CacheableDataset,
        device: torch.device,
        *,
        text_length: int,
        budget_mb: int,
        image_size: tuple[int, int] | None = None,
    ) -> DeviceCache:
        """Copy ``dataset`` to ``device``: every image once as ``uint8``, every caption's tokens.

        Args:
            dataset: a split with ``raw_image`` (the synthetic data sets).
            device: the training device.
            text_length: captions are padded to this many tokens.
            budget_mb: the most device memory (MiB) the cache may take
                (``data.device_cache_budget_mb``).
            image_size: ``(H, W)`` of the images (default: the first image's).

        Raises:
            TypeError: ``dataset`` has no ``raw_image`` (real layouts: use
                ``data.decoded_cache``).
            ValueError: the cache would take more than ``budget_mb`` MiB (the message names
                ``data.device_cache_budget_mb``), or a caption longer than ``text_length``.
        """
        if not callable(getattr(dataset, "raw_image", None)):
            raise TypeError(
                f"data.device_cache needs a data set that renders its images "
                f"(the synthetic data), got {type(dataset).__name__}; for real layouts set "
                "data.device_cache=false and use data.decoded_cache"
            )
        mods = np.asarray(dataset.modalities, dtype=np.int64)
        text = int(Modality.TEXT)
        image_idx = np.flatnonzero(mods != text)
        text_idx = np.flatnonzero(mods == text)
        if image_size is None:
            first = dataset.raw_image(int(image_idx[0])) if len(image_idx) else None
            image_size = (1, 1) if first is None else (int(first.shape[1]), int(first.shape[2]))
        need = cls.required_bytes(dataset, image_size, text_length)
        if need > budget_mb * 2**20:
            raise ValueError(
                f"data.device_cache: the training split takes {need / 2**20:.0f} MiB on the "
                f"device, more than data.device_cache_budget_mb={budget_mb}; raise "
                "data.device_cache_budget_mb if the device has the memory, or set "
                "data.device_cache=false"
            )
        slot = np.full(len(mods), -1, dtype=np.int64)
        slot[image_idx] = np.arange(len(image_idx))
        slot[text_idx] = np.arange(len(text_idx))
        images = torch.empty((len(image_idx), 3, *image_size), dtype=torch.uint8, device=device)
        for start in range(0, len(image_idx), 256):  # bounded host memory
            chunk = image_idx[start : start + 256]
            host = torch.stack([dataset.raw_image(int(i)) for i in chunk])
            images[start : start + len(chunk)] = host.to(device)
        tokens = torch.zeros((len(text_idx), text_length), dtype=torch.int64)
        for row, i in enumerate(text_idx):
            t = dataset[int(i)]["tokens"]
            if t.numel() > text_length:
                raise ValueError(
                    f"caption {int(i)} has {t.numel()} tokens, more than text_length={text_length}"
                )
            tokens[row, : t.numel()] = t
        labels = np.asarray(dataset.labels, dtype=np.int64)
        cameras = np.asarray(dataset.cameras, dtype=np.int64)
        return cls(
            images=images,
            tokens=tokens.to(device),
            slot=slot,
            labels=labels,
            modalities=mods,
            cameras=cameras,
            device_labels=torch.from_numpy(labels).to(device),
            device_modalities=torch.from_numpy(mods).to(device),
            device_cameras=torch.from_numpy(cameras).to(device),
        )


# -- augmentation on the device -------------------------------------------------------------------

#: one step of the device pipeline: ``(float [B, 3, H, W], generator) -> [B, 3, H', W']``
DeviceStep = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _rand(n: int, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, generator=g, device=like.device)


def _randint(high: int, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform integers in ``[0, high]`` inclusive, one per image."""
    return (_rand(like.shape[0], g, like) * (high + 1)).floor().long()


def _on(
    t: torch.Tensor, like: torch.Tensor, cache: dict[tuple[str, Any], torch.Tensor]
) -> torch.Tensor:
    """``t`` on ``like``'s device and dtype, copied there once."""
    key = (str(like.device), like.dtype)
    if key not in cache:
        cache[key] = t.to(like.device, like.dtype)
    return cache[key]


def _where(flag: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(flag[:, None, None, None], a, b)


def _flip(p: float) -> DeviceStep:
    def step(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return _where(_rand(x.shape[0], g, x) < p, x.flip(-1), x)

    return step


def _pad_crop(size: tuple[int, int], padding: int, fill: float) -> DeviceStep:
    h, w = size

    def step(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if padding:
            x = F.pad(x, (padding, padding, padding, padding), value=fill)
        big_h, big_w = x.shape[-2:]
        if h > big_h or w > big_w:
            raise ValueError(f"RandomCrop size {size} exceeds padded image {(big_h, big_w)}")
        top = _randint(big_h - h, g, x)
        left = _randint(big_w - w, g, x)
        rows = top[:, None] + torch.arange(h, device=x.device)  # [B, h]
        cols = left[:, None] + torch.arange(w, device=x.device)  # [B, w]
        b = torch.arange(x.shape[0], device=x.device)[:, None, None]
        # advanced indices on dims 0, 2, 3 → [B, h, w, C]
        return x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    return step


def _grayscale(p: float) -> DeviceStep:
    weights = RandomGrayscale(p).weights.view(1, 3, 1, 1)
    on_device: dict[tuple[str, Any], torch.Tensor] = {}

    def step(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        gray = (x * _on(weights, x, on_device)).sum(dim=1, keepdim=True).expand_as(x)
        return _where(_rand(x.shape[0], g, x) < p, gray, x)

    return step


def _channel(p: float) -> DeviceStep:
    def step(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        apply = _rand(x.shape[0], g, x) < p
        c = _randint(2, g, x)
        one = x.gather(1, c[:, None, None, None].expand(-1, 1, *x.shape[2:])).expand_as(x)
        return _where(apply, one, x)

    return step


def _normalize(mean: torch.Tensor, std: torch.Tensor) -> DeviceStep:
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    on_device: dict[tuple[str, Any], torch.Tensor] = {}
    on_device_std: dict[tuple[str, Any], torch.Tensor] = {}

    def step(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return (x - _on(mean, x, on_device)) / _on(std, x, on_device_std)

    return step


def _erasing(
    p: float, scale: tuple[float, float], ratio: tuple[float, float], value: float | str
) -> DeviceStep:
    attempts = 10
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])

    def step(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, big_h, big_w = x.shape
        dev = x.device
        apply = _rand(n, g, x) < p
        # the loader's up to 10 attempts, all drawn at once; the first that fits is used
        u_scale = torch.rand((n, attempts), generator=g, device=dev)
        u_ratio = torch.rand((n, attempts), generator=g, device=dev)
        target = big_h * big_w * (scale[0] + (scale[1] - scale[0]) * u_scale)
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
        hs = torch.round(torch.sqrt(target * aspect))
        ws = torch.round(torch.sqrt(target / aspect))
        fits = (hs > 0) & (hs < big_h) & (ws > 0) & (ws < big_w)
        first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
        h = hs.gather(1, first).squeeze(1)
        w = ws.gather(1, first).squeeze(1)
        apply = apply & fits.any(dim=1)
        top = (_rand(n, g, x) * (big_h - h + 1)).floor()
        left = (_rand(n, g, x) * (big_w - w + 1)).floor()
        rows = torch.arange(big_h, device=dev)[None, :]
        cols = torch.arange(big_w, device=dev)[None, :]
        inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # [n, H]
        inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # [n, W]
        mask = (inside_rows[:, :, None] & inside_cols[:, None, :]) & apply[:, None, None]
        if value == "random":
            fill = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)
        else:
            fill = torch.full((), float(value), device=dev, dtype=x.dtype)
        return torch.where(mask[:, None], fill, x)

    return step


class DeviceAugment:
    """A loader-path transform pipeline, run on a batch on the device.

    :meth:`from_transform` translates a :class:`~reid_example.data.transforms.Compose` step by
    step (``ToFloat``, ``Resize``, ``RandomHorizontalFlip``, ``RandomCrop``,
    ``RandomGrayscale``, ``RandomChannel``, ``Normalize``, ``RandomErasing``), keeping every
    option and probability; calling it maps ``uint8 [B, 3, H, W]`` to the normalised float
    batch.

    Example:
        >>> from reid_example.data.transforms import train_transform
        >>> aug = DeviceAugment.from_transform(train_transform((8, 4), padding=1))
        >>> aug.names
        ['ToFloat', 'Resize', 'RandomHorizontalFlip', 'RandomCrop', 'Normalize', 'RandomErasing']
        >>> x = torch.randint(0, 256, (5, 3, 8, 4), dtype=torch.uint8)
        >>> aug(x, torch.Generator().manual_seed(0)).shape
        torch.Size([5, 3, 8, 4])
    """

    def __init__(self, steps: Sequence[tuple[str, DeviceStep]]) -> None:
        self.steps = list(steps)

    @property
    def names(self) -> list[str]:
        """The loader-path transforms, in order."""
        return [name for name, _ in self.steps]

    @classmethod
    def from_transform(cls, transform: object) -> DeviceAugment:
        """The device form of ``transform`` (a ``Compose`` of this package's transforms).

        Raises:
            TypeError: ``transform`` is not a ``Compose``, or holds a step without a device
                form (naming it).
        """
        if not isinstance(transform, Compose):
            raise TypeError(
                "data.device_cache runs the training transform on the device and needs a "
                f"Compose of reid_example.data.transforms steps, got {type(transform).__name__}"
            )
        steps: list[tuple[str, DeviceStep]] = []
        for t in transform.transforms:
            steps.append((type(t).__name__, _device_step(t)))
        return cls(steps)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = images
        for _, step in self.steps:
            x = step(x, generator)
        return x


def _device_step(t: object) -> DeviceStep:
    if isinstance(t, ToFloat):
        return lambda x, g: x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if isinstance(t, Resize):
        size = t.size

        def resize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            if tuple(x.shape[-2:]) == size:
                return x
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

        return resize
    if isinstance(t, RandomHorizontalFlip):
        return _flip(t.p)
    if isinstance(t, RandomCrop):
        return _pad_crop(t.size, t.padding, t.fill)
    if isinstance(t, RandomGrayscale):
        return _grayscale(t.p)
    if isinstance(t, RandomChannel):
        return _channel(t.p)
    if isinstance(t, Normalize):
        return _normalize(t.mean.flatten(), t.std.flatten())
    if isinstance(t, RandomErasing):
        return _erasing(t.p, t.scale, t.ratio, t.value)
    raise TypeError(f"data.device_cache has no device form of the transform {t!r}")


# -- batches --------------------------------------------------------------------------------------


def batch_seed(seed: int, rank: int, epoch: int, position: int) -> int:
    """The augmentation seed of the batch at ``position`` (from 0) of ``epoch`` on ``rank``.

    Example:
        >>> batch_seed(0, 0, 1, 5) == batch_seed(0, 0, 1, 5) != batch_seed(0, 0, 1, 6)
        True
    """
    key = np.random.SeedSequence([seed, rank, epoch, position])
    return int(key.generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochWindow(Protocol):
    """The batch sampler view :class:`DeviceBatches` iterates (a ``BatchWindow``)."""

    epoch: int
    start: int

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[list[int]]: ...


class DeviceBatches:
    """Training batches built on the device from a :class:`DeviceCache`.

    Iterating yields, for each list of dataset indices the ``window`` yields, the batch
    :func:`~reid_example.data.collate.collate_grouped` would build from the loader — same keys,
    same row order, images grouped by modality, captions padded — with the augmentation run on
    the device.

    Args:
        cache: the split on the device.
        window: the batch sampler view of the epoch (``epoch`` and ``start``, the position of
            its first batch, are read when iterating); a plain iterable of index lists counts
            as epoch 0 from position 0.
        augment: the device pipeline (``None``: ``uint8`` → float only, no normalisation).
        seed: the run's seed; each batch's stream is seeded by :func:`batch_seed`.
        rank: this process's rank.
    """

    def __init__(
        self,
        cache: DeviceCache,
        window: EpochWindow | Iterable[list[int]],
        augment: DeviceAugment | None,
        *,
        seed: int,
        rank: int = 0,
    ) -> None:
        self.cache = cache
        self.window = window
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.generator = torch.Generator(device=cache.images.device)

    def __len__(self) -> int:
        return len(self.window)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = int(getattr(self.window, "epoch", 0))
        start = int(getattr(self.window, "start", 0))
        for i, indices in enumerate(self.window):
            yield self.batch(indices, epoch=epoch, position=start + i)

    def batch(self, indices: Sequence[int], *, epoch: int, position: int) -> dict[str, Any]:
        """The training batch of ``indices`` (dataset indices, sampler order)."""
        c = self.cache
        idx = np.asarray(indices, dtype=np.int64)
        mods = c.modalities[idx]
        text = int(Modality.TEXT)
        is_text = mods == text
        image_rows = np.flatnonzero(~is_text)
        image_rows = image_rows[np.argsort(mods[image_rows], kind="stable")]
        text_rows = np.flatnonzero(is_text)
        rows_by_modality = np.argsort(mods, kind="stable")
        # one host-to-device copy of every index the batch needs
        slots = (c.slot[idx[image_rows]], c.slot[idx[text_rows]])
        host = torch.from_numpy(
            np.concatenate((idx, *slots, image_rows, text_rows, rows_by_modality))
        )
        dev = host.to(c.images.device, non_blocking=True)
        b, ni, nt = len(idx), len(image_rows), len(text_rows)
        cuts = np.cumsum([b, ni, nt, ni, nt, b])[:-1].tolist()
        d_idx, d_img, d_txt, d_image_rows, d_text_rows, d_rows = torch.tensor_split(dev, cuts)
        images = c.images.index_select(0, d_img)
        if self.augment is not None:
            self.generator.manual_seed(batch_seed(self.seed, self.rank, epoch, position))
            images = self.augment(images, self.generator)
        else:
            images = images.float()
        return {
            "images": images,
            "image_rows": d_image_rows,
            "tokens": c.tokens.index_select(0, d_txt),
            "text_rows": d_text_rows,
            "labels": c.device_labels.index_select(0, d_idx),
            "modalities": c.device_modalities.index_select(0, d_idx),
            "cameras": c.device_cameras.index_select(0, d_idx),
            "indices": d_idx,
            "rows_by_modality": d_rows,
            "modality_counts": tuple(int(n) for n in np.bincount(mods, minlength=len(Modality))),
        }
