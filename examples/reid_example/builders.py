"""Build the data side of a run from the config: splits, transforms, sampler, loaders, protocols.

* The **synthetic** family uses :class:`~reid_example.data.synthetic.SyntheticMultiModalReID`
  presets (``demo``, ``sysu``, ``regdb``, ``prcv2025``); every split is its own identity-disjoint
  dataset and its evaluation protocols come from ``dataset.protocols()`` (every non-RGB modality
  → RGB, plus RGB → RGB).
* **Real layouts** (``sysu``, ``regdb``, ``prcv``) read records with the data package's loader
  for that layout, carve a validation split from the training identities when the layout has
  none (:func:`~reid_example.data.protocols.make_splits`) and use the benchmark protocol presets.

The training loader uses the modality-aware P×K batch sampler (strict by default), the seed's
DataLoader settings, and a per-sample augmentation generator seeded from (seed, epoch, index), so
batches are bit-identical whatever the number of workers — which is what makes an exact resume
possible.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader

from reid_example.config import Config
from reid_example.data.collate import collate_multimodal
from reid_example.data.text import WordTokenizer
from reid_example.data.transforms import eval_transform, train_transform
from sdmreid.modality import Modality
from sdmreid.samplers import ModalAwarePKSampler, ModalAwarePKSampler_Strict

__all__ = ["BatchWindow", "DataBundle", "build_data", "build_train_loader"]

log = logging.getLogger("reid_example")


class _RecordDatasetKwargs(TypedDict):
    """The ``RecordDataset`` arguments every split of a real layout shares."""

    tokenizer: WordTokenizer
    max_text_len: int
    image_size: tuple[int, int]


@dataclasses.dataclass
class DataBundle:
    """The datasets of a run and how to evaluate them."""

    name: str
    train: Any
    val: Any
    test: Any
    tokenizer: WordTokenizer
    image_size: tuple[int, int]
    protocol_fn: Callable[[Any], list[Any]]
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]] = collate_multimodal
    #: The benchmark's published multi-trial protocol (``sdmreid.evaluation`` presets), run on
    #: the test split's features at the end: ``(feats, test_dataset) -> {name: metrics}``.
    benchmark_fn: Callable[[torch.Tensor, Any], dict[str, dict[str, float]]] | None = None
    #: The training split with evaluation transforms (for the train-side score), if available.
    train_eval: Any = None

    @property
    def num_classes(self) -> int:
        return int(self.train.num_classes)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def eval_set(self, split: str) -> Any:
        """The dataset evaluated for ``split``: "val", "test" or, when available, "train"."""
        if split == "train" and self.train_eval is not None:
            return self.train_eval
        if split not in ("val", "test"):
            has_train = self.train_eval is not None
            allowed = "'val', 'test' or 'train'" if has_train else "'val' or 'test'"
            raise ValueError(f"split must be {allowed}, got {split!r}")
        return self.val if split == "val" else self.test

    def protocols(self, split: str, only: Sequence[str] = ()) -> list[Any]:
        ps = self.protocol_fn(self.eval_set(split))
        if only:
            missing = sorted(set(only) - {p.name for p in ps})
            if missing:
                raise ValueError(
                    f"eval.protocols names {missing}, not among {[p.name for p in ps]}"
                )
            ps = [p for p in ps if p.name in only]
        return ps

    def describe(self) -> str:
        def counts(ds: Any) -> str:
            mods = np.asarray(ds.modalities)
            return ", ".join(
                f"{Modality(m).name}={int((mods == m).sum())}" for m in sorted(set(mods.tolist()))
            )

        return (
            f"data {self.name}: train {len(self.train)} samples / {self.num_classes} ids "
            f"({counts(self.train)}); val {len(self.val)}; test {len(self.test)}; "
            f"image {self.image_size[0]}x{self.image_size[1]}; vocab {self.vocab_size}"
        )


class RandomGrayscale:
    """With probability ``p``, replace a ``[3, H, W]`` float image by its luminance (ITU-R 601
    weights) in all three channels — the usual visible/infrared channel augmentation. Draws only
    from the given generator."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"grayscale_p must be in [0, 1], got {p}")
        self.p = p
        self.weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.p == 0.0 or float(torch.rand((), generator=generator)) >= self.p:
            return img
        gray = (img * self.weights.to(img.dtype)).sum(dim=0, keepdim=True)
        return gray.expand_as(img).contiguous()


class RandomChannel:
    """With probability ``p``, replace a ``[3, H, W]`` float image by one of its channels, drawn
    uniformly, in all three channels (the channel augmentation of CAJ, Ye et al., ICCV 2021: a
    visible image seen through one sensor band, closer to an infrared one than any colour
    image). Images with another channel count pass through. Draws only from the generator."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"channel_p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.p == 0.0 or img.shape[0] != 3:
            return img
        if float(torch.rand((), generator=generator)) >= self.p:
            return img
        c = int(torch.randint(0, 3, (), generator=generator))
        return img[c : c + 1].expand_as(img).contiguous()


def _train_transform(cfg: Config, size: tuple[int, int], padding: int) -> Any:
    """The data package's training pipeline, plus the optional channel augmentations (grayscale,
    single channel) before normalisation."""
    from reid_example.data.transforms import Compose

    if not cfg.data.augment:
        return eval_transform(size)
    tf = train_transform(size, padding=padding, erasing_p=cfg.data.erasing_p)
    extra: list[Any] = []
    if cfg.data.grayscale_p > 0:
        extra.append(RandomGrayscale(cfg.data.grayscale_p))
    if cfg.data.channel_p > 0:
        extra.append(RandomChannel(cfg.data.channel_p))
    if extra:
        steps = list(tf.transforms)
        at = next(i for i, t in enumerate(steps) if type(t).__name__ == "Normalize")
        steps[at:at] = extra
        tf = Compose(steps)
    return tf


def _synthetic(cfg: Config) -> DataBundle:
    from reid_example.data.synthetic import PRESETS, SyntheticMultiModalReID

    key = {"prcv": "prcv2025"}.get(cfg.data.preset, cfg.data.preset)
    native = PRESETS[key].image_size if key in PRESETS else (128, 64)
    size = (cfg.data.image_height or native[0], cfg.data.image_width or native[1])
    tokenizer = WordTokenizer()
    pad = max(1, size[1] // 16)
    train_tf = _train_transform(cfg, size, pad)
    overrides: dict[str, Any] = {}
    if cfg.data.num_identities:
        if len(cfg.data.num_identities) != 3:
            raise ValueError(
                "data.num_identities must be (train, val, test), got "
                f"{list(cfg.data.num_identities)}"
            )
        overrides["num_identities"] = tuple(cfg.data.num_identities)
    common = {
        **overrides,
        "seed": cfg.data.data_seed,
        "image_size": size,
        "tokenizer": tokenizer,
        "max_text_len": cfg.data.text_length,
    }
    train = SyntheticMultiModalReID.preset(
        cfg.data.preset, split="train", transform=train_tf, **common
    )
    val = SyntheticMultiModalReID.preset(cfg.data.preset, split="val", **common)
    test = SyntheticMultiModalReID.preset(cfg.data.preset, split="test", **common)
    return DataBundle(
        name=f"synthetic/{cfg.data.preset}",
        train=train,
        val=val,
        test=test,
        tokenizer=tokenizer,
        image_size=size,
        protocol_fn=lambda ds: ds.protocols(),
        train_eval=SyntheticMultiModalReID.preset(cfg.data.preset, split="train", **common),
    )


def load_real_records(cfg: Config) -> list[Any]:
    """Records of the real layout named by ``cfg.data.dataset`` (``data.root`` points at it)."""
    from reid_example.data import layouts

    if not cfg.data.root:
        raise ValueError(f"data.root must point at the {cfg.data.dataset} data (directory or file)")
    kw: dict[str, Any] = {"on_error": cfg.data.on_error}
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
    from reid_example.data.protocols import (
        all_to_rgb_protocols,
        llcm_protocol,
        make_splits,
        regdb_protocol,
        sysu_protocol,
    )
    from reid_example.data.records import RecordDataset

    splits = make_splits(load_real_records(cfg), seed=cfg.data.data_seed)
    size = (cfg.data.image_height or 256, cfg.data.image_width or 128)
    tokenizer = WordTokenizer()
    train_tf = _train_transform(cfg, size, 10)
    kw: _RecordDatasetKwargs = {
        "tokenizer": tokenizer,
        "max_text_len": cfg.data.text_length,
        "image_size": size,
    }
    train = RecordDataset(splits.train, train_tf, label_map=splits.label_map, **kw)
    val = RecordDataset(splits.val, **kw)
    test = RecordDataset(splits.test, **kw)

    def protocols(ds: Any) -> list[Any]:
        if cfg.data.dataset == "sysu":
            return [
                sysu_protocol(ds.identities, ds.modalities, ds.cameras, mode=m)
                for m in ("all", "indoor")
            ]
        if cfg.data.dataset == "regdb":
            return [
                regdb_protocol(ds.modalities, direction=d, trial=cfg.data.trial)
                for d in ("visible_to_thermal", "thermal_to_visible")
            ]
        if cfg.data.dataset == "llcm":
            return [
                llcm_protocol(ds.identities, ds.modalities, ds.cameras, direction=d)
                for d in ("nir_to_vis", "vis_to_nir")
            ]
        return all_to_rgb_protocols(ds.identities, ds.modalities, seed=1)

    return DataBundle(
        cfg.data.dataset,
        train,
        val,
        test,
        tokenizer,
        size,
        protocols,
        benchmark_fn=_benchmark_fn(cfg),
        train_eval=RecordDataset(splits.train, label_map=splits.label_map, **kw),
    )


def _metrics(result: Any) -> dict[str, float]:
    m = result.mean
    return {k: float(getattr(m, k)) for k in ("mAP", "mINP", "rank1", "rank5", "rank10")}


def _benchmark_fn(
    cfg: Config,
) -> Callable[[torch.Tensor, Any], dict[str, dict[str, float]]] | None:
    """The published protocol of SYSU-MM01 / RegDB / LLCM, all trials, both directions."""
    from sdmreid.evaluation import (
        RegDBTrial,
        evaluate_llcm,
        evaluate_regdb,
        evaluate_sysu_mm01,
        parse_sysu_paths,
    )

    trials = cfg.eval.trials
    name = cfg.data.dataset

    def sysu(feats: torch.Tensor, ds: Any) -> dict[str, dict[str, float]]:
        kw: dict[str, Any] = {}
        perm = Path(cfg.data.root) / "exp" / "rand_perm_cam.mat"
        if perm.is_file():  # the official per-trial gallery draw
            paths = [r.path for r in ds.records]
            kw = {"permutation": perm, "image_index": parse_sysu_paths(paths)[2]}
        out = {}
        for mode in ("all", "indoor"):
            r = evaluate_sysu_mm01(
                feats, ds.identities, ds.cameras, mode=mode, num_trials=trials, **kw
            )
            out[f"SYSU-MM01 {mode}-search ({trials} trials)"] = _metrics(r)
        return out

    def regdb(feats: torch.Tensor, ds: Any) -> dict[str, dict[str, float]]:
        vis = np.flatnonzero(ds.modalities == int(Modality.RGB))
        th = np.flatnonzero(ds.modalities == int(Modality.NIR))
        trial = RegDBTrial(feats[vis], ds.identities[vis], feats[th], ds.identities[th])
        out = {}
        for direction in ("visible_to_thermal", "thermal_to_visible"):
            r = evaluate_regdb([trial], direction=direction)
            out[f"RegDB trial {cfg.data.trial} {direction}"] = _metrics(r)
        return out

    def llcm(feats: torch.Tensor, ds: Any) -> dict[str, dict[str, float]]:
        out = {}
        for direction in ("nir_to_rgb", "rgb_to_nir"):
            r = evaluate_llcm(
                feats,
                ds.identities,
                ds.cameras,
                ds.modalities,
                direction=direction,
                num_trials=trials,
            )
            out[f"LLCM {direction} ({trials} trials)"] = _metrics(r)
        return out

    return {"sysu": sysu, "regdb": regdb, "llcm": llcm}.get(name)


def build_data(cfg: Config) -> DataBundle:
    """The datasets and protocols named by ``cfg.data``."""
    if cfg.data.dataset == "synthetic":
        return _synthetic(cfg)
    return _real_layout(cfg)


class BatchWindow:
    """Batch-sampler view for one epoch: resume position and a per-epoch step cap.

    ``start`` batches are skipped through the sampler's own ``load_state_dict`` (the resume
    position), and at most ``limit - start`` batches are yielded (``limit <= 0``: all).
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.start = 0
        self.limit = 0

    def configure(self, epoch: int, start: int, limit: int) -> None:
        self.sampler.set_epoch(epoch)
        self.sampler.load_state_dict({"epoch": epoch, "next_batch": start})
        self.start, self.limit = start, limit

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
) -> tuple[DataLoader[Any], BatchWindow]:
    """DataLoader over the train split with the configured P×K batch sampler."""
    s = cfg.sampler
    labels, mods = data.train.labels, data.train.modalities
    sampler: Any
    if s.kind == "strict":
        sampler = ModalAwarePKSampler_Strict(
            labels,
            mods,
            s.num_identities,
            s.num_instances,
            retry_limit=s.retry_limit,
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
    workers = cfg.data.num_workers
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {
            "persistent_workers": cfg.data.persistent_workers,
            "prefetch_factor": cfg.data.prefetch_factor,
        }
    loader = DataLoader(
        data.train,
        batch_sampler=window,
        num_workers=workers,
        collate_fn=data.collate,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
        **kwargs,
    )
    return loader, window
