"""Evaluation of the reference trainer: embed a split, score it with :mod:`sdmreid.evaluation`.

The protocols follow the data set (``data.dataset``):

* ``synthetic``, ``prcv``, ``csv`` — :func:`~sdmreid.evaluation.evaluate_all_to_rgb`: every
  non-RGB modality against all RGB items, plus RGB → RGB;
* ``sysu`` — :func:`~sdmreid.evaluation.evaluate_sysu_mm01`: all-search with one trial on the
  validation split; all- and indoor-search with ``eval.trials`` trials on the test split (with the
  official gallery permutation when ``<data.root>/exp/rand_perm_cam.mat`` exists);
* ``regdb`` — :func:`~sdmreid.evaluation.evaluate_regdb`, both directions (one model per trial,
  ``data.trial``);
* ``llcm`` — :func:`~sdmreid.evaluation.evaluate_llcm`, both directions, one trial on the
  validation split, ``eval.trials`` on the test split.

Each protocol's metrics are kept as ``{"mAP", "mINP", "rank1", "rank5", "rank10"}`` floats, the
form the logs, the report and model selection read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from reid_example.builders import DataBundle, EvalDataset
from reid_example.config import Config
from reid_example.data.records import RecordDataset
from reid_example.engine import forward, retrieval_embedding
from reid_example.runtime import AmpSetup, Runtime, all_gather_rows, is_distributed
from sdmreid import Modality
from sdmreid.evaluation import (
    RegDBTrial,
    RetrievalMetrics,
    evaluate_all_to_rgb,
    evaluate_llcm,
    evaluate_regdb,
    evaluate_sysu_mm01,
    parse_sysu_paths,
)

__all__ = [
    "Evaluator",
    "IndexSubset",
    "Scores",
    "Validation",
    "extract_features",
    "format_metrics",
    "select_score",
]

log = logging.getLogger("reid_example")

#: ``{protocol: {"mAP", "mINP", "rank1", "rank5", "rank10"}}``
Scores = dict[str, dict[str, float]]
Split = Literal["val", "test", "train"]
IntArray = npt.NDArray[np.int64]


def metrics_dict(m: RetrievalMetrics) -> dict[str, float]:
    """The metrics the trainer logs, as floats."""
    return {
        "mAP": float(m.mAP),
        "mINP": float(m.mINP),
        "rank1": m.rank1,
        "rank5": m.rank5,
        "rank10": m.rank10,
    }


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Sequence[dict[str, Any]] | EvalDataset,
    *,
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    device: torch.device,
    amp: AmpSetup,
    channels_last: bool = False,
    embedding: str = "pre_bn",
    flip: bool = False,
) -> torch.Tensor:
    """Retrieval embeddings ``[len(dataset), d]`` (float32, CPU) in dataset order.

    ``embedding`` picks the trunk feature (``pre_bn``) or the BNNeck output (``bn``). With
    ``flip`` an image's embedding is the mean of the embeddings of the image and of its
    horizontal mirror (text items are embedded once). Under torch.distributed each rank embeds
    the items ``rank, rank + W, ...`` and the shards are gathered.
    """
    model.eval()
    n = len(dataset)
    rank, world = _rank_world()
    items = cast("Dataset[dict[str, Any]]", dataset)
    loader: DataLoader[dict[str, Any]] = DataLoader(
        Subset(items, range(rank, n, world)),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        # its own generator: evaluating never draws from the global one (dropout's)
        generator=torch.Generator(),
    )
    chunks: list[torch.Tensor] = []
    for batch in loader:
        b = {k: v.to(device) for k, v in batch.items()}
        if channels_last and b["images"].dim() == 4 and b["images"].shape[0] > 0:
            b["images"] = b["images"].contiguous(memory_format=torch.channels_last)
        with amp.autocast():
            out = forward(model, b)
        feat = retrieval_embedding(out, embedding)
        if flip and b["images"].shape[0] > 0:
            with amp.autocast():
                mirrored = forward(model, {**b, "images": b["images"].flip(-1)})
            rows = b["image_rows"]
            feat[rows] = 0.5 * (feat[rows] + retrieval_embedding(mirrored, embedding)[rows])
        chunks.append(feat)
    dim = chunks[0].shape[1] if chunks else int(getattr(model, "embed_dim", 1))
    local = torch.cat(chunks) if chunks else torch.zeros(0, dim, device=device)
    return all_gather_rows(local, n)


def _rank_world() -> tuple[int, int]:
    if not is_distributed():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


class IndexSubset:
    """Items ``index`` of an evaluation data set, with its identity/camera/modality arrays.

    Example:
        >>> class DS:
        ...     identities = cameras = modalities = np.array([5, 6, 7])
        ...     def __len__(self): return 3
        ...     def __getitem__(self, i): return {"i": i}
        >>> sub = IndexSubset(DS(), np.array([0, 2]))
        >>> len(sub), sub[1], sub.identities.tolist()
        (2, {'i': 2}, [5, 7])
    """

    def __init__(self, dataset: EvalDataset, index: IntArray) -> None:
        self.dataset, self.index = dataset, index
        self.identities = np.asarray(dataset.identities)[index]
        self.cameras = np.asarray(dataset.cameras)[index]
        self.modalities = np.asarray(dataset.modalities)[index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[int(self.index[i])]


def select_score(results: Scores, metric: str, missing: float | None = None) -> float:
    """``eval.select_metric`` (``mAP_mean`` or ``mAP/<protocol>``) of ``results``; ``missing``
    (if given) when it is not there.

    Example:
        >>> r = {"A": {"mAP": 0.5}, "B": {"mAP": 0.7}}
        >>> select_score(r, "mAP_mean"), select_score(r, "mAP/B"), select_score(r, "mAP/C", 0.0)
        (0.6, 0.7, 0.0)
    """
    if not results:
        return -math.inf if missing is None else missing
    if metric == "mAP_mean":
        return float(np.mean([m["mAP"] for m in results.values()]))
    if metric.startswith("mAP/") and metric[4:] in results:
        return results[metric[4:]]["mAP"]
    if missing is not None:
        return missing
    raise ValueError(
        f"eval.select_metric={metric!r}: use mAP_mean or mAP/<protocol> with one of "
        f"{sorted(results)}"
    )


def format_metrics(name: str, epoch: int, results: Scores) -> str:
    """The ``[eval] <name> epoch=<E> | <protocol>: mAP .. R1 .. mINP ..`` log line."""
    parts = [
        f"{p}: mAP {m['mAP']:.4f} R1 {m['rank1']:.4f} mINP {m['mINP']:.4f}"
        for p, m in results.items()
    ]
    return f"[eval] {name} epoch={epoch} | " + " | ".join(parts)


@dataclass
class Validation:
    """One evaluation epoch: the validation split and, when on, the same protocols on training
    identities (the overfitting rule's train-validation gap)."""

    val: Scores
    train: Scores
    #: identities of the training subset (0: not evaluated)
    train_ids: int = 0

    def score(self, metric: str) -> float:
        """The validation split's ``eval.select_metric`` (``-inf`` when nothing was scored)."""
        return select_score(self.val, metric)

    def gap_scores(self, metric: str) -> tuple[float, float] | None:
        """``(train score, validation score)`` on the protocols both sides have, if any."""
        common = [k for k in self.val if k in self.train]
        if not common:
            return None
        train = select_score({k: self.train[k] for k in common}, metric, math.nan)
        val = select_score({k: self.val[k] for k in common}, metric, math.nan)
        return train, val


class Evaluator:
    """Embeds a split with a model and scores it with the data set's protocols.

    Example:
        >>> from reid_example.config import Config
        >>> Evaluator.protocol_names_for(Config(), np.array([0, 0, 1, 4]))
        ['NIR->RGB', 'TEXT->RGB', 'RGB->RGB']
    """

    def __init__(self, cfg: Config, data: DataBundle, rt: Runtime) -> None:
        self.cfg, self.data, self.rt = cfg, data, rt
        self.train_subset = self._train_subset()
        self._check_names()

    # -- which protocols ------------------------------------------------------------------------

    @staticmethod
    def protocol_names_for(cfg: Config, modalities: IntArray) -> list[str]:
        """The protocol names a split with these modalities is scored under."""
        name = cfg.data.dataset
        if name == "sysu":
            return [f"SYSU-MM01 {mode}-search" for mode in ("all", "indoor")]
        if name == "regdb":
            return [f"RegDB trial {cfg.data.trial} {d}" for d in _REGDB_DIRECTIONS]
        if name == "llcm":
            return [f"LLCM {d}" for d in _LLCM_DIRECTIONS]
        present = sorted(set(np.asarray(modalities).tolist()) - {int(Modality.RGB)})
        return [f"{Modality(m).name}->RGB" for m in present] + ["RGB->RGB"]

    def _check_names(self) -> None:
        """Fail at start-up, not at the first evaluation, on a protocol name that is not there."""
        names = self.protocol_names_for(self.cfg, self.data.val.modalities)
        only = self.cfg.eval.protocols
        missing = sorted(set(only) - set(names))
        if missing:
            raise ValueError(f"eval.protocols names {missing}, not among {names}")
        kept = [n for n in names if not only or n in only]
        metric = self.cfg.eval.select_metric
        if metric != "mAP_mean" and not (metric.startswith("mAP/") and metric[4:] in kept):
            raise ValueError(
                f"eval.select_metric={metric!r}: use mAP_mean or mAP/<protocol> with one of {kept}"
            )

    def _train_subset(self) -> IndexSubset | None:
        """The first ``eval.train_ids`` training identities (in identity order; -1: as many as
        the validation split has), seen through the evaluation transforms. ``None`` when off."""
        train = self.data.train_eval
        if self.cfg.eval.train_ids == 0 or train is None:
            return None
        n_ids = self.cfg.eval.train_ids
        if n_ids < 0:
            n_ids = len(np.unique(np.asarray(self.data.val.identities)))
        ids = np.asarray(train.identities)
        index = np.flatnonzero(np.isin(ids, np.unique(ids)[:n_ids])).astype(np.int64)
        return IndexSubset(train, index) if index.size else None

    # -- scoring --------------------------------------------------------------------------------

    def features(self, model: nn.Module, dataset: EvalDataset) -> torch.Tensor:
        """Embeddings of every item of ``dataset`` (see :func:`extract_features`)."""
        return extract_features(
            model,
            dataset,
            collate=self.data.collate,
            batch_size=self.cfg.data.eval_batch_size,
            device=self.rt.device,
            amp=self.rt.amp,
            channels_last=self.rt.channels_last,
            embedding=self.cfg.model.embedding,
            flip=self.cfg.eval.flip,
        )

    def scores(self, model: nn.Module, split: Split) -> Scores:
        """Embed ``split`` ("val", "test" or "train": the training subset) and score it."""
        dataset: EvalDataset | None = (
            self.train_subset if split == "train" else self.data.eval_set(split)
        )
        if dataset is None:
            return {}
        results = self.score_features(self.features(model, dataset), dataset, split)
        only = self.cfg.eval.protocols
        return {k: v for k, v in results.items() if not only or k in only}

    def validate(self, model: nn.Module) -> Validation:
        """The validation split and the training subset."""
        n_ids = 0 if self.train_subset is None else len(np.unique(self.train_subset.identities))
        return Validation(self.scores(model, "val"), self.scores(model, "train"), n_ids)

    def trials(self, split: Split) -> int:
        """Trials of the multi-trial protocols (SYSU-MM01, LLCM): ``eval.trials`` on the test
        split, one elsewhere."""
        return self.cfg.eval.trials if split == "test" else 1

    def test_note(self) -> str:
        """``", N trials"`` when the test split's protocols average several trials."""
        multi = self.cfg.data.dataset in ("sysu", "llcm")
        return f", {self.trials('test')} trials" if multi else ""

    # -- per data set ---------------------------------------------------------------------------

    def score_features(self, feats: torch.Tensor, ds: EvalDataset, split: Split) -> Scores:
        """Score ``feats`` (the embeddings of every item of ``ds``) with the data set's
        protocols for ``split``."""
        name = self.cfg.data.dataset
        if name == "sysu":
            return self._sysu(feats, ds, split)
        if name == "regdb":
            return self._regdb(feats, ds)
        if name == "llcm":
            return self._llcm(feats, ds, split)
        return self._all_to_rgb(feats, ds)

    def _all_to_rgb(self, feats: torch.Tensor, ds: EvalDataset) -> Scores:
        results = evaluate_all_to_rgb(
            feats, ds.identities, ds.modalities, seed=self.data.protocol_seed
        )
        return {name: metrics_dict(m) for name, m in results.items()}

    def _sysu(self, feats: torch.Tensor, ds: EvalDataset, split: Split) -> Scores:
        kw: dict[str, Any] = {}
        perm = Path(self.cfg.data.root) / "exp" / "rand_perm_cam.mat"
        if split == "test" and perm.is_file() and isinstance(ds, RecordDataset):
            # the official per-trial gallery draw of the test identities
            paths = [str(r.path) for r in ds.records]
            kw = {"permutation": perm, "image_index": parse_sysu_paths(paths)[2]}
        out: Scores = {}
        for mode in ("all", "indoor") if split == "test" else ("all",):
            name = f"SYSU-MM01 {mode}-search"
            try:
                r = evaluate_sysu_mm01(
                    feats, ds.identities, ds.cameras, mode=mode, num_trials=self.trials(split), **kw
                )
            except ValueError as err:
                _skipped(name, err)
                continue
            out[name] = metrics_dict(r.mean)
        return out

    def _regdb(self, feats: torch.Tensor, ds: EvalDataset) -> Scores:
        trial = RegDBTrial.from_modalities(feats, ds.identities, ds.modalities)
        out: Scores = {}
        for direction in _REGDB_DIRECTIONS:
            name = f"RegDB trial {self.cfg.data.trial} {direction}"
            try:
                r = evaluate_regdb([trial], direction=direction)
            except ValueError as err:
                _skipped(name, err)
                continue
            out[name] = metrics_dict(r.mean)
        return out

    def _llcm(self, feats: torch.Tensor, ds: EvalDataset, split: Split) -> Scores:
        out: Scores = {}
        for direction in _LLCM_DIRECTIONS:
            name = f"LLCM {direction}"
            try:
                r = evaluate_llcm(
                    feats,
                    ds.identities,
                    ds.cameras,
                    ds.modalities,
                    direction=direction,
                    num_trials=self.trials(split),
                )
            except ValueError as err:
                _skipped(name, err)
                continue
            out[name] = metrics_dict(r.mean)
        return out


_REGDB_DIRECTIONS = ("visible_to_thermal", "thermal_to_visible")
_LLCM_DIRECTIONS = ("nir_to_rgb", "rgb_to_nir")


def _skipped(name: str, err: ValueError) -> None:
    """A split that cannot be scored under a protocol (e.g. no query has a positive in a tiny
    split) is logged and left out, not fatal."""
    log.warning("protocol %s: %s", name, err)
