"""Build the data side of a run from the config: splits, transforms, the sampler and the loader.

* The **synthetic** family uses :class:`~reid_example.data.synthetic.SyntheticMultiModalReID`
  presets (``demo``, ``sysu``, ``regdb``, ``prcv2025``); every split is its own identity-disjoint
  dataset.
* **Real layouts** (``sysu``, ``regdb``, ``llcm``, ``prcv``, ``csv``) read records with the data
  package's loader for that layout and carve a validation split from the training identities when
  the layout has none (:func:`~reid_example.data.splits.make_splits`).

How each split is evaluated is :mod:`reid_example.evaluate`'s business.

The training loader uses the modality-aware P×K batch sampler (strict by default), the seed's
DataLoader settings, and a per-sample augmentation generator seeded from (seed, epoch, index), so
batches are bit-identical whatever the number of workers — which is what makes an exact resume
possible.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypedDict, cast

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset

from reid_example.config import Config
from reid_example.data.collate import collate_grouped, collate_multimodal
from reid_example.data.device_cache import (
    CacheableDataset,
    DeviceAugment,
    DeviceBatches,
    DeviceCache,
)
from reid_example.data.records import OnError
from reid_example.data.text import CaptionTokenizer
from reid_example.data.transforms import Compose, eval_transform, train_transform
from reid_example.hf_backbone import DataInputs, data_inputs
from sdmreid import ModalAwarePKSampler, ModalAwarePKSampler_Strict, Modality

__all__ = [
    "BatchWindow",
    "DataBundle",
    "EvalDataset",
    "ReIDDataset",
    "build_data",
    "build_train_loader",
]

log = logging.getLogger("reid_example")


class _RecordDatasetKwargs(TypedDict):
    """The ``RecordDataset`` arguments every split of a real layout shares."""

    tokenizer: CaptionTokenizer
    max_text_len: int
    image_size: tuple[int, int]
    on_error: OnError


IntArray = npt.NDArray[np.int64]
Collate = Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]


class EvalDataset(Protocol):
    """What evaluation reads from a data set: items and per-item identity/camera/modality."""

    @property
    def identities(self) -> IntArray: ...
    @property
    def cameras(self) -> IntArray: ...
    @property
    def modalities(self) -> IntArray: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, Any]: ...


class ReIDDataset(EvalDataset, Protocol):
    """What the trainer reads from a split: evaluation's view plus training labels, the class
    count and the augmentation epoch."""

    @property
    def labels(self) -> IntArray: ...
    @property
    def num_classes(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


@dataclasses.dataclass
class DataBundle:
    """The datasets of a run."""

    name: str
    train: ReIDDataset
    val: ReIDDataset
    test: ReIDDataset
    tokenizer: CaptionTokenizer
    image_size: tuple[int, int]
    #: seed of the RGB -> RGB query draw of the all-to-RGB protocols
    protocol_seed: int = 1
    collate: Collate = collate_multimodal
    #: The training split with evaluation transforms (for the train-side score), if available.
    train_eval: ReIDDataset | None = None

    @property
    def num_classes(self) -> int:
        return int(self.train.num_classes)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def eval_set(self, split: str) -> ReIDDataset:
        """The dataset evaluated for ``split``: "val", "test" or, when available, "train"."""
        if split == "train" and self.train_eval is not None:
            return self.train_eval
        if split not in ("val", "test"):
            has_train = self.train_eval is not None
            allowed = "'val', 'test' or 'train'" if has_train else "'val' or 'test'"
            raise ValueError(f"split must be {allowed}, got {split!r}")
        return self.val if split == "val" else self.test

    def describe(self) -> str:
        def counts(ds: ReIDDataset) -> str:
            mods = np.asarray(ds.modalities)
            return ", ".join(
                f"{Modality(m).name}={int((mods == m).sum())}" for m in sorted(set(mods.tolist()))
            )

        return (
            f"data {self.name}: train {len(self.train)} samples / {self.num_classes} ids "
            f"({counts(self.train)}); val {len(self.val)}; test {len(self.test)}; "
            f"image {self.image_size[0]}x{self.image_size[1]}; vocab {self.vocab_size}"
        )


def _eval_transform(inputs: DataInputs) -> Compose:
    """Resize and normalise as the backbone expects (see :func:`data_inputs`)."""
    return eval_transform(inputs.image_size, mean=inputs.mean, std=inputs.std)


def _train_transform(cfg: Config, inputs: DataInputs, padding: int) -> Compose:
    """The training pipeline (``data.augment``), or the evaluation one without augmentation."""
    if not cfg.data.augment:
        return _eval_transform(inputs)
    return train_transform(
        inputs.image_size,
        padding=padding,
        erasing_p=cfg.data.erasing_p,
        grayscale_p=cfg.data.grayscale_p,
        channel_p=cfg.data.channel_p,
        mean=inputs.mean,
        std=inputs.std,
    )


def _synthetic(cfg: Config) -> DataBundle:
    from reid_example.data.synthetic import PRESETS, SyntheticMultiModalReID

    key = {"prcv": "prcv2025"}.get(cfg.data.preset, cfg.data.preset)
    native = PRESETS[key].image_size if key in PRESETS else (128, 64)
    inputs = data_inputs(cfg, default_size=native)  # size, normalisation, tokenizer
    size, tokenizer = inputs.image_size, inputs.tokenizer
    overrides: dict[str, Any] = {}
    if cfg.data.identities_per_split:
        if len(cfg.data.identities_per_split) != 3:
            raise ValueError(
                "data.identities_per_split must be (train, val, test), got "
                f"{list(cfg.data.identities_per_split)}"
            )
        overrides["identities_per_split"] = tuple(cfg.data.identities_per_split)
    common = {
        **overrides,
        "seed": cfg.data.data_seed,
        "image_size": size,
        "tokenizer": tokenizer,
        "max_text_len": cfg.data.text_length,
    }

    def split(name: str, **kw: Any) -> SyntheticMultiModalReID:
        return SyntheticMultiModalReID.preset(cfg.data.preset, split=name, **common, **kw)

    train_tf = _train_transform(cfg, inputs, padding=max(1, size[1] // 16))
    eval_tf = _eval_transform(inputs)
    return DataBundle(
        name=f"synthetic/{cfg.data.preset}",
        train=split("train", transform=train_tf),
        val=split("val", transform=eval_tf),
        test=split("test", transform=eval_tf),
        tokenizer=tokenizer,
        image_size=size,
        # from the data seed only: every training run on this data is scored on the same queries
        protocol_seed=cfg.data.data_seed * 1000 + 1,
        train_eval=split("train", transform=eval_tf),
    )


def load_real_records(cfg: Config) -> list[Any]:
    """Records of the real layout named by ``cfg.data.dataset`` (``data.root`` points at it)."""
    from reid_example.data import layouts

    if not cfg.data.root:
        raise ValueError(f"data.root must point at the {cfg.data.dataset} data (directory or file)")
    kw: dict[str, Any] = {"on_error": cfg.data.on_error, "verify": cfg.data.verify}
    name = cfg.data.dataset
    if name == "sysu":
        return layouts.load_sysu_mm01(cfg.data.root, **kw)
    if name == "regdb":
        return layouts.load_regdb(cfg.data.root, cfg.data.trial, **kw)
    if name == "llcm":
        return layouts.load_llcm(cfg.data.root, **kw)
    if name == "prcv":
        return layouts.load_json_manifest(cfg.data.root, **kw)
    if name == "csv":
        return layouts.load_csv_manifest(cfg.data.root, **kw)
    raise ValueError(f"data.dataset={name!r} is not a real layout (sysu, regdb, llcm, prcv, csv)")


def _real_layout(cfg: Config) -> DataBundle:
    from reid_example.data.records import RecordDataset
    from reid_example.data.splits import make_splits

    splits = make_splits(load_real_records(cfg), seed=cfg.data.data_seed)
    inputs = data_inputs(cfg, default_size=(256, 128))  # size, normalisation, tokenizer
    size, tokenizer = inputs.image_size, inputs.tokenizer
    kw: _RecordDatasetKwargs = {
        "tokenizer": tokenizer,
        "max_text_len": cfg.data.text_length,
        "image_size": size,
        # an image that breaks after the up-front check is replaced and counted, or raises
        "on_error": cast(OnError, cfg.data.on_error),
    }
    train_tf = _train_transform(cfg, inputs, padding=10)
    eval_tf = _eval_transform(inputs)
    bundle = DataBundle(
        cfg.data.dataset,
        train=RecordDataset(splits.train, train_tf, label_map=splits.label_map, **kw),
        val=RecordDataset(splits.val, eval_tf, **kw),
        test=RecordDataset(splits.test, eval_tf, **kw),
        tokenizer=tokenizer,
        image_size=size,
        train_eval=RecordDataset(splits.train, eval_tf, label_map=splits.label_map, **kw),
    )
    if cfg.data.decoded_cache:
        _attach_decoded_caches(bundle, cfg.data.decoded_cache)
    return bundle


def _attach_decoded_caches(bundle: DataBundle, directory: str) -> None:
    """``data.decoded_cache``: one memory-mapped cache of decoded images per split (the
    training split's evaluation view shares the training split's)."""
    from reid_example.data.decoded_cache import DecodedImageCache
    from reid_example.data.records import RecordDataset

    caches: dict[int, DecodedImageCache] = {}
    for ds in (bundle.train, bundle.train_eval, bundle.val, bundle.test):
        if not isinstance(ds, RecordDataset):
            continue
        paths = [r.path for r in ds.records]
        key = hash(tuple(paths))
        if key not in caches:
            caches[key] = DecodedImageCache.open(directory, paths)
        ds.decoded_cache = caches[key]
    for cache in caches.values():
        log.info(
            "data.decoded_cache: %d of %d images already decoded in %s",
            cache.filled,
            len(cache),
            cache.directory,
        )


def build_data(cfg: Config) -> DataBundle:
    """The datasets named by ``cfg.data``.

    Example:
        >>> from reid_example.config import apply_overrides
        >>> cfg = apply_overrides(Config(), ["data.identities_per_split=4,2,2"])
        >>> data = build_data(cfg)
        >>> data.name, data.num_classes, sorted(set(data.val.identities.tolist())) != []
        ('synthetic/demo', 4, True)
    """
    if cfg.data.dataset == "synthetic":
        return _synthetic(cfg)
    return _real_layout(cfg)


class BatchWindow:
    """Batch-sampler view for one epoch: resume position, a per-epoch step cap, and the
    loader's own generator.

    ``start`` batches are skipped through the sampler's own ``load_state_dict`` (the resume
    position), and at most ``limit - start`` batches are yielded (``limit <= 0``: all).

    The DataLoader draws its workers' base seed from :attr:`generator` each time it starts
    iterating, never from the global torch generator that dropout draws from: a resumed run
    starts its loader once more than an uninterrupted one, and would otherwise draw other
    dropout masks. :meth:`configure` reseeds it from (sampler seed, rank, epoch), so workers
    started for an epoch get the same seeds however the run got there. (No sample depends on
    them: each sample's augmentation has its own generator, seeded by (seed, epoch, index).)

    Example:
        >>> labels, mods = [0, 0, 1, 1, 2, 2, 3, 3] * 2, ["rgb", "ir"] * 8
        >>> window = BatchWindow(ModalAwarePKSampler_Strict(labels, mods, 2, 2))
        >>> window.steps_per_epoch(), window.steps_per_epoch(cap=3)
        (4, 3)
        >>> window.configure(1, start=1, limit=3)
        >>> len(window), len(list(window))
        (2, 2)
    """

    def __init__(self, sampler: ModalAwarePKSampler | ModalAwarePKSampler_Strict) -> None:
        self.sampler = sampler
        self.start = 0
        #: the epoch being iterated (set by :meth:`configure`)
        self.epoch = 0
        self.limit = 0
        #: the DataLoader's generator (``DataLoader(..., generator=window.generator)``)
        self.generator = torch.Generator()

    def configure(self, epoch: int, start: int, limit: int) -> None:
        """Iterate ``epoch`` (from 1) from batch ``start``, up to batch ``limit`` (> 0)."""
        # the epoch's shuffle and the resume position, in one call
        self.sampler.load_state_dict({"epoch": epoch, "next_batch": start})
        self.start, self.limit, self.epoch = start, limit, epoch
        key = np.random.SeedSequence([self.sampler.seed, self.sampler.rank, epoch])
        self.generator.manual_seed(int(key.generate_state(1, np.uint64)[0] >> np.uint64(1)))

    def steps_per_epoch(self, cap: int = 0) -> int:
        """The nominal epoch length: the batches of epoch 1 (at most ``cap`` when > 0)."""
        self.configure(1, start=0, limit=cap)
        return len(self)

    def __len__(self) -> int:
        n = len(self.sampler)
        if self.limit > 0:
            n = min(n, self.limit)
        return max(0, n - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        remaining = len(self)
        if remaining == 0:
            return
        for batch in self.sampler:
            yield batch
            remaining -= 1
            if remaining == 0:
                return


def build_train_loader(
    cfg: Config, data: DataBundle, device: torch.device, *, rank: int = 0, world: int = 1
) -> tuple[Iterable[dict[str, Any]], BatchWindow]:
    """The training batches of the train split with the configured P×K batch sampler: a
    DataLoader (worker processes, ``collate_grouped``), or with ``data.device_cache`` the
    split on ``device`` and batches built there (:mod:`reid_example.data.device_cache`)."""
    s = cfg.sampler
    labels, mods = data.train.labels, data.train.modalities
    sampler: ModalAwarePKSampler | ModalAwarePKSampler_Strict
    if s.kind == "strict":
        sampler = ModalAwarePKSampler_Strict(
            labels,
            mods,
            s.num_identities,
            s.num_instances,
            fallback_ratio=s.fallback_ratio,
            seed=cfg.train.seed,
            num_replicas=world,
            rank=rank,
        )
    else:
        sampler = ModalAwarePKSampler(
            labels,
            mods,
            s.num_identities,
            s.num_instances,
            seed=cfg.train.seed,
            num_replicas=world,
            rank=rank,
        )
    window = BatchWindow(sampler)
    if cfg.data.device_cache:
        return _device_batches(cfg, data, device, window, rank), window
    workers = cfg.data.num_workers
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {
            "persistent_workers": cfg.data.persistent_workers,
            "prefetch_factor": cfg.data.prefetch_factor,
        }
    loader: DataLoader[dict[str, Any]] = DataLoader(
        cast("Dataset[dict[str, Any]]", data.train),
        batch_sampler=window,
        num_workers=workers,
        # grouped by modality, with host-side counts: the step slices rows without reading
        # the device (and padded captions keep the shapes fixed)
        collate_fn=functools.partial(
            collate_grouped, collate=data.collate, text_length=cfg.data.text_length
        ),
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
        generator=window.generator,
        **kwargs,
    )
    return loader, window


def _device_batches(
    cfg: Config, data: DataBundle, device: torch.device, window: BatchWindow, rank: int
) -> DeviceBatches:
    """``data.device_cache``: the training split on ``device``, its transform on the device."""
    augment = DeviceAugment.from_transform(getattr(data.train, "transform", None))
    cache = DeviceCache.build(
        cast(CacheableDataset, data.train),
        device,
        text_length=cfg.data.text_length,
        budget_mb=cfg.data.device_cache_budget_mb,
        image_size=data.image_size,
    )
    log.info(
        "data.device_cache: training split on %s (%.0f MiB); augmentation there: %s",
        device,
        cache.nbytes / 2**20,
        ", ".join(augment.names),
    )
    return DeviceBatches(cache, window, augment, seed=cfg.train.seed, rank=rank)
