"""A training run's state and the mechanics of its epochs.

* :class:`TrainState` — where the run stands (epoch, step, best validation score, the running
  sums of an interrupted epoch): with the components' own ``state_dict`` s it is what a
  checkpoint holds, so ``--resume`` continues bit for bit.
* :class:`Run` — the typed pieces an epoch reads and changes.
* :func:`train_epoch` — the steps of one epoch. The steps queue their work on the device; at each
  logging step (``train.log_every``, and at the epoch's end, a step checkpoint and
  ``train.stop_after_steps``) one read brings the numbers of the steps since the last one to the
  host, and the step-level duties run for each of them in order (epoch sums, coverage meter,
  health reading, coverage line, step metrics row, step checkpoint, early stop).
* :func:`validate`, :func:`save_epoch_checkpoints`, :func:`score_best_checkpoint`,
  :func:`summarize` — the rest of an epoch and of the run;
* :func:`read_resume_checkpoint` and :func:`restore_run` — ``--resume``: the checkpoint is
  checked (format version, keys, position) before anything is written, and every component is
  restored from it, every rank's RNG states included.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch.distributed as dist
from torch import nn

from reid_example.builders import BatchWindow, DataBundle
from reid_example.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from reid_example.config import Config, apply_overrides, config_from_dict, config_to_dict
from reid_example.engine import (
    QUERY_MODALITIES,
    StepContext,
    StepLog,
    StepReading,
    StepScalars,
    train_step,
)
from reid_example.evaluate import Evaluator, Scores, Validation, format_metrics
from reid_example.health import HealthAdapter
from reid_example.reporting import RunOutputs, RunSummary
from reid_example.runtime import all_gather_objects, all_reduce_mean, is_distributed
from sdmreid import Finding

__all__ = [
    "Best",
    "EpochStats",
    "EpochSums",
    "Run",
    "TrainState",
    "epoch_row",
    "read_resume_checkpoint",
    "restore_run",
    "save_epoch_checkpoints",
    "score_best_checkpoint",
    "summarize",
    "train_epoch",
    "validate",
]

#: the checkpoint format :func:`checkpoint_state` writes and ``--resume`` reads
CHECKPOINT_VERSION = 2

#: the keys :func:`checkpoint_state` writes (``ema``, ``scaler``, ``memory``: None when off)
_CHECKPOINT_KEYS = (
    "version",
    "config",
    "epoch",
    "step_in_epoch",
    "global_step",
    "model",
    "ema",
    "optimizer",
    "scaler",
    "lr",
    "sdm_scheduler",
    "head_switch",
    "sampler",
    "memory",
    "meter",
    "health",
    "rng",
    "best",
    "epoch_acc",
)


@dataclass
class Best:
    """The best validation score so far (``eval.select_metric``) and its epoch."""

    metric: float = -math.inf
    epoch: int = 0
    val: Scores = field(default_factory=dict)


@dataclass
class EpochSums:
    """Running sums of the current epoch's step numbers. Checkpointed mid-epoch, so a resumed
    epoch reports the same means as an uninterrupted one.

    Example:
        >>> s = EpochSums()
        >>> s.add(StepScalars(2.0, math.nan, 2.0, 0.5, 0.0, 8, 1, 1.0, 8), seconds=0.5)
        >>> s.mean("ce"), s.mean("sdm"), s.samples
        (2.0, nan, 8)
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0

    def add(self, scalars: StepScalars, seconds: float) -> None:
        """Add one step (non-finite numbers are left out of their mean)."""
        for k, v in scalars.as_dict().items():
            if math.isfinite(v):
                self.sums[k] = self.sums.get(k, 0.0) + v
                self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1
        self.samples += int(scalars.batch)
        self.seconds += seconds

    def mean(self, key: str) -> float:
        """The mean of ``key`` over the steps where it was finite (NaN if none)."""
        n = self.counts.get(key, 0)
        return self.sums[key] / n if n else math.nan

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochSums:
        return cls(
            sums={k: float(v) for k, v in state.get("sums", {}).items()},
            counts={k: int(v) for k, v in state.get("counts", {}).items()},
            steps=int(state.get("steps", 0)),
            samples=int(state.get("samples", 0)),
            seconds=float(state.get("seconds", 0.0)),
        )


@dataclass
class TrainState:
    """Where the run stands. ``epoch`` is the epoch being trained (from 1), ``step_in_epoch``
    the batches of it already done; between epochs they point at the next epoch's start."""

    epoch: int = 1
    step_in_epoch: int = 0
    global_step: int = 0
    best: Best = field(default_factory=Best)
    sums: EpochSums = field(default_factory=EpochSums)
    stopped: bool = False
    #: this process only (not checkpointed): the last validation, the epochs' images/s
    last_val: Scores = field(default_factory=dict)
    throughput: list[float] = field(default_factory=list)

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch, self.sums = self.epoch + 1, 0, EpochSums()


@dataclass(frozen=True)
class EpochStats:
    """Means over one epoch's steps (over every rank under torchrun)."""

    epoch: int
    ce: float
    sdm: float
    loss: float
    top1: float
    sdm_weight: float
    pair_coverage: float
    rows_without_positive_frac: float
    images_per_second: float
    seconds: float
    #: ``{"pair_coverage/NIR": ..., "sdm/NIR": ...}``: each query modality's coverage (moving
    #: average, every rank's rows) and mean SDM term over the epoch (this rank's steps)
    by_modality: dict[str, float] = field(default_factory=dict)

    def log_line(self) -> str:
        cov = " ".join(
            f"{k.removeprefix('pair_coverage/')}={v:.3f}"
            for k, v in self.by_modality.items()
            if k.startswith("pair_coverage/") and math.isfinite(v)
        )
        return (
            f"epoch {self.epoch} | CE {self.ce:.4f} | SDM {self.sdm:.4f} "
            f"(w={self.sdm_weight:.3f}) | top1 {self.top1:.3f} | pair_coverage "
            f"{self.pair_coverage:.3f}{f' ({cov})' if cov else ''} | "
            f"{self.images_per_second:.1f} img/s | {self.seconds:.1f}s"
        )


@dataclass
class Run:
    """The typed pieces of a run that its epochs read and change."""

    cfg: Config
    step: StepContext
    health: HealthAdapter
    data: DataBundle
    #: the training batches of an epoch (a DataLoader, or the on-device batches)
    loader: Iterable[dict[str, Any]]
    window: BatchWindow
    #: the nominal (epoch 1) number of steps per epoch; no epoch runs more
    steps_per_epoch: int
    out: RunOutputs
    state: TrainState = field(default_factory=TrainState)
    #: the steps whose numbers are still on the device
    log: StepLog = field(default_factory=StepLog)

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation reads: the weight average when there is one, else the model."""
        return self.step.ema.module if self.step.ema is not None else self.step.raw_model


# -- training -------------------------------------------------------------------------------------


def train_epoch(run: Run, epoch: int) -> EpochStats:
    """Train ``epoch`` from the state's position on. Afterwards the state points at the next
    epoch, unless ``train.stop_after_steps`` stopped the run (``state.stopped``).

    The steps are not waited for: each one's numbers join :attr:`Run.log`, and the step duties
    run when a step must be read (:func:`_read_point`), for every step since the last read.
    """
    state = run.state
    run.out.log.info(_sdm_line(run, epoch))
    run.data.train.set_epoch(epoch)  # the augmentation stream (seed, epoch, index)
    run.window.configure(epoch, start=state.step_in_epoch, limit=run.steps_per_epoch)
    end = state.step_in_epoch + len(run.window)
    bar = _progress_bar(run, epoch, end)
    seconds: list[float] = []  # host time of each pending step: data wait + queueing the step
    t = time.perf_counter()
    for batch in run.loader:
        run.log.add(train_step(run.step, batch, epoch, state.global_step))
        state.global_step += 1
        state.step_in_epoch += 1
        now = time.perf_counter()
        seconds.append(now - t)
        if _read_point(run, last=state.step_in_epoch == end):
            _after_steps(run, run.log.read(), seconds, last=state.step_in_epoch == end, bar=bar)
            seconds = []
        if bar is not None:
            bar.update(1)
        t = time.perf_counter()  # the duties' time counts towards the next step
        if state.stopped:
            break
    if bar is not None:
        bar.close()
    stats = _epoch_stats(run, epoch)
    if not state.stopped:
        state.throughput.append(stats.images_per_second)
        run.out.log.info(stats.log_line())
        _log_decode_failures(run)
        state.next_epoch()
    return stats


def _read_point(run: Run, *, last: bool) -> bool:
    """Whether the step just queued is read now: a logging step, the epoch's last step, a step
    checkpoint or the step that stops the run (every step whose duties need its state)."""
    cfg, step = run.cfg, run.state.global_step
    return (
        last
        or step % cfg.train.log_every == 0
        or bool(cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0)
        or bool(cfg.train.stop_after_steps and step >= cfg.train.stop_after_steps)
    )


def _after_steps(
    run: Run, readings: list[StepReading], seconds: list[float], *, last: bool, bar: Any
) -> None:
    """The duties of each step read, in step order (the last one is the current step)."""
    for i, (reading, secs) in enumerate(zip(readings, seconds, strict=True)):
        run.state.sums.add(reading.scalars, seconds=secs)
        # data wait + step, per process (timing only: never part of any exact comparison)
        images_per_second = reading.scalars.batch / max(secs, 1e-9)
        _after_step(run, reading, images_per_second, last=last and i == len(readings) - 1)
    if bar is not None and readings:
        s = readings[-1].scalars
        bar.set_postfix(ce=f"{s.ce:.3f}", top1=f"{s.top1:.2f}")


def _log_decode_failures(run: Run) -> None:
    """Say how many training images failed to decode and were replaced (``data.on_error=skip``):
    a run that trains on substitutes should not look like a clean one."""
    failed: Callable[[], list[str]] | None = getattr(run.data.train, "failed_paths", None)
    paths = failed() if failed is not None else []
    if paths:
        run.out.log.warning(
            "[data] %d training image(s) failed to decode and were replaced, e.g. %s",
            len(paths),
            paths[0],
        )


def _sdm_line(run: Run, epoch: int) -> str:
    if run.step.settings.sdm:
        return run.step.sdm_scheduler.log_line(epoch)
    return f"[sdm] epoch={epoch} weight=0.000 use_sdm=False"


def _progress_bar(run: Run, epoch: int, total: int) -> Any:
    if not run.out.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=run.state.step_in_epoch, desc=f"epoch {epoch}", leave=False)


def _after_step(run: Run, reading: StepReading, images_per_second: float, *, last: bool) -> None:
    """The duties of one read step, by its global step: coverage meter, health reading,
    coverage line, metrics row, step checkpoint, early stop. Everything they read is on the
    host: the step's numbers, the coverage meter (fed here) and the health monitor."""
    cfg, step, epoch = run.cfg, reading.step, reading.epoch
    meter = run.step.meter
    s = reading.scalars
    # one update per step, with each query modality's rows (the window counts steps)
    meter.update(s.coverage_counts())
    run.health.step(epoch, step, meter, reading.head_norm, ce=s.ce)
    if step % cfg.train.coverage_every == 0:
        run.out.log.info(meter.log_line(gather=True))  # over every rank's rows
        run.out.log.info(meter.per_modality_log_line(gather=True))
    if step % cfg.train.log_every == 0 or last:
        run.out.metrics.log_step(_step_row(run, reading, images_per_second))
    if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
        save_run(run, "last.pt")
    if cfg.train.stop_after_steps and step >= cfg.train.stop_after_steps:
        save_run(run, "last.pt")
        run.state.stopped = True
        run.out.log.info(
            "stopped after global step %d (train.stop_after_steps); checkpoint %s",
            step,
            run.out.run_dir / "last.pt",
        )


def _step_row(run: Run, reading: StepReading, images_per_second: float) -> dict[str, float]:
    # logged steps are read when they are the latest step: the learning rates are theirs
    lrs = {f"lr/{g['name']}": float(g["lr"]) for g in run.step.optimizer.param_groups}
    return {
        "step": reading.step,
        "epoch": reading.epoch,
        **reading.scalars.as_dict(),
        "images_per_second": images_per_second,
        "pair_coverage": float(run.step.meter.compute()),
        **_coverage_by_modality(run),
        **lrs,
    }


def _coverage_by_modality(run: Run) -> dict[str, float]:
    """``{"pair_coverage/NIR": ..., ...}``: each query modality's moving-average coverage
    (NaN while the window holds none of its rows)."""
    return {f"pair_coverage/{k}": v for k, v in run.step.meter.compute_per_modality().items()}


def _epoch_stats(run: Run, epoch: int) -> EpochStats:
    sums, world = run.state.sums, run.step.runtime.world
    # every rank sees (and acts on) the same epoch means
    ce, sdm, loss, top1 = all_reduce_mean(
        [sums.mean(k) for k in ("ce", "sdm", "loss", "top1")], run.step.runtime.device
    )
    rows = sums.sums.get("rows", 0.0)
    weight = run.step.sdm_scheduler.weight(epoch) if run.step.settings.sdm else 0.0
    return EpochStats(
        epoch=epoch,
        ce=ce,
        sdm=sdm,
        loss=loss,
        top1=top1,
        sdm_weight=weight,
        pair_coverage=float(run.step.meter.compute()),
        rows_without_positive_frac=sums.sums.get("rows_without_positive", 0.0) / rows
        if rows
        else math.nan,
        images_per_second=world * sums.samples / sums.seconds if sums.seconds > 0 else math.nan,
        seconds=sums.seconds,
        by_modality={
            **_coverage_by_modality(run),
            **{f"sdm/{m.name}": sums.mean(f"sdm/{m.name}") for m in QUERY_MODALITIES},
        },
    )


# -- evaluation, logs, checkpoints ----------------------------------------------------------------


def validate(run: Run, evaluator: Evaluator, epoch: int) -> Validation:
    """Score the validation split (and the training subset) and log both."""
    result = evaluator.validate(run.eval_model)
    run.out.log.info(format_metrics("val", epoch, result.val))
    if result.train:
        run.out.log.info(format_metrics(f"train ({result.train_ids} ids)", epoch, result.train))
    run.state.last_val = result.val
    return result


def epoch_row(
    stats: EpochStats, run: Run, validation: Validation | None, findings: list[Finding]
) -> dict[str, Any]:
    """One ``epochs.jsonl`` / ``epochs.csv`` row."""
    row: dict[str, Any] = {"epoch": stats.epoch, "step": run.state.global_step}
    row.update({k: v for k, v in asdict(stats).items() if k not in ("epoch", "by_modality")})
    row.update(stats.by_modality)
    if validation is not None:
        metric = run.cfg.eval.select_metric
        for proto, m in validation.val.items():
            row.update({f"val/{k}/{proto}": m[k] for k in ("mAP", "rank1", "mINP")})
        row["val/select"] = validation.score(metric)
        for proto, m in validation.train.items():
            row[f"train/mAP/{proto}"] = m["mAP"]
        if validation.train_ids:
            gap = validation.gap_scores(metric)
            row["train/select"] = gap[0] if gap is not None else math.nan
    row["findings"] = len(findings)
    return row


def health_check(run: Run, stats: EpochStats, validation: Validation | None) -> list[Finding]:
    """The epoch's health rules (the overfitting rule on evaluation epochs)."""
    gap = validation.gap_scores(run.cfg.eval.select_metric) if validation is not None else None
    train_score, val_score = gap if gap is not None else (None, None)
    return run.health.check(stats.epoch, stats.ce, train_score, val_score)


def save_epoch_checkpoints(run: Run, epoch: int, validation: Validation | None) -> None:
    """``best.pt`` when the validation score improved; ``last.pt`` every
    ``checkpoint.every_epochs`` epochs and after the last one."""
    cfg, state = run.cfg, run.state
    score = validation.score(cfg.eval.select_metric) if validation is not None else -math.inf
    if validation is not None and math.isfinite(score) and score > state.best.metric:
        state.best = Best(score, epoch, validation.val)
        save_run(run, "best.pt")
        run.out.log.info("new best %s=%.4f at epoch %d", cfg.eval.select_metric, score, epoch)
    if epoch % max(1, cfg.checkpoint.every_epochs) == 0 or epoch == cfg.train.epochs:
        save_run(run, "last.pt")


def checkpoint_state(run: Run) -> dict[str, Any]:
    """Everything ``--resume`` needs, as tensors and plain containers (``weights_only`` loads)."""
    s, c = run.state, run.step
    return {
        "version": CHECKPOINT_VERSION,
        "config": config_to_dict(run.cfg),
        "epoch": s.epoch,
        "step_in_epoch": s.step_in_epoch,
        "global_step": s.global_step,
        "model": c.raw_model.state_dict(),
        "ema": c.ema.state_dict() if c.ema is not None else None,
        "optimizer": c.optimizer.state_dict(),
        "scaler": c.runtime.amp.scaler.state_dict() if c.runtime.amp.scaler is not None else None,
        "lr": {"global_step": s.global_step, "factor": c.lr_schedule.factor(s.global_step)},
        "sdm_scheduler": c.sdm_scheduler.state_dict(),
        "head_switch": c.head_switch.state_dict(),
        "sampler": {
            "epoch": s.epoch,
            "batches_done": s.step_in_epoch,
            "world_size": c.runtime.world,
        },
        "memory": c.memory.state_dict() if c.memory is not None else None,
        "meter": c.meter.state_dict(),
        "health": run.health.state_dict(),
        # every rank's generators (each rank draws its own dropout masks), indexed by rank
        "rng": all_gather_objects(capture_rng(c.runtime.np_rng)),
        "best": asdict(s.best),
        "epoch_acc": asdict(s.sums) if s.step_in_epoch > 0 else {},
    }


def save_run(run: Run, name: str) -> None:
    """Write ``<run_dir>/<name>`` (rank 0; every rank calls it, for the RNG states)."""
    state = checkpoint_state(run)
    if run.step.runtime.is_main:
        save_checkpoint(state, run.out.run_dir / name)


def read_resume_checkpoint(path: str, overrides: Sequence[str]) -> tuple[Config, dict[str, Any]]:
    """The config and checkpoint of ``--resume path``: the checkpoint's config with
    ``overrides`` applied on top.

    Everything that can be checked without building the run is checked here, before anything
    is written: the file is a checkpoint (:func:`load_checkpoint`), of this format version, with
    every key, a valid config, and a position (epoch, step) inside the run's ``train.epochs``.
    Each refusal is a ``ValueError`` that names the file.
    """
    ck = load_checkpoint(path)
    version = ck.get("version")
    if version is None:
        raise ValueError(f"checkpoint {path} has no format version: not written by this trainer")
    if type(version) is not int or version != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {version!r}; this trainer reads version "
            f"{CHECKPOINT_VERSION} (resume it with the trainer version that wrote it)"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise ValueError(
            f"checkpoint {path} is incomplete: missing {', '.join(map(repr, missing))}"
        )
    if not isinstance(ck["config"], Mapping):
        raise ValueError(
            f"checkpoint {path}: config must be a table of sections, got {ck['config']!r}"
        )
    try:
        base = config_from_dict(ck["config"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"checkpoint {path}: config: {err}") from err
    base.output.overwrite = False  # the choice of the command that started the run, not resumed
    cfg = apply_overrides(base, [*overrides, f"checkpoint.resume={path}"])
    _check_position(ck, path, cfg.train.epochs)
    return cfg, ck


def _check_position(ck: Mapping[str, Any], path: str, epochs: int) -> None:
    """Epoch and steps of a checkpoint: inside a run of ``epochs`` epochs. A finished run's
    ``last.pt`` points at the start of epoch ``epochs + 1``."""
    for key in ("epoch", "step_in_epoch", "global_step"):
        if type(ck[key]) is not int:
            raise ValueError(f"checkpoint {path}: {key} must be an integer, got {ck[key]!r}")
    epoch, step, total = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
    if not 1 <= epoch <= epochs + 1 or (epoch == epochs + 1 and step > 0):
        raise ValueError(
            f"checkpoint {path}: epoch {epoch} (step {step}) is outside this run's epochs "
            f"1..{epochs} (train.epochs={epochs}; a finished run's last.pt points at epoch "
            f"{epochs + 1}, step 0; --set train.epochs=N trains a finished run further)"
        )
    if step < 0 or total < step:
        raise ValueError(
            f"checkpoint {path}: step_in_epoch {step} and global_step {total} must satisfy "
            "0 <= step_in_epoch <= global_step"
        )


def restore_run(run: Run, ck: dict[str, Any]) -> None:
    """Load a checkpoint written by :func:`save_run` into the run's components and state.

    A checkpoint that does not fit the run (weights of another shape, a state a component
    refuses, a position past the epoch's end) is refused with a ``ValueError`` naming the file
    and the component, before the run continues (so before anything is written).
    """
    c, path = run.step, run.cfg.checkpoint.resume
    if ck["step_in_epoch"] > run.steps_per_epoch:
        raise ValueError(
            f"checkpoint {path}: step_in_epoch {ck['step_in_epoch']} is past the end of an "
            f"epoch of {run.steps_per_epoch} steps"
        )
    with _restoring(path, "best, epoch_acc, sampler"):
        saved_world = int(ck["sampler"]["world_size"])
        state = TrainState(
            ck["epoch"],
            ck["step_in_epoch"],
            ck["global_step"],
            best=Best(
                float(ck["best"]["metric"]), int(ck["best"]["epoch"]), dict(ck["best"]["val"])
            ),
            sums=EpochSums.from_state(ck["epoch_acc"]),
        )
    loads: list[tuple[str, Callable[[Any], object], Any]] = [
        ("model", c.raw_model.load_state_dict, ck["model"]),
        ("optimizer", c.optimizer.load_state_dict, ck["optimizer"]),
        ("sdm_scheduler", c.sdm_scheduler.load_state_dict, ck["sdm_scheduler"]),
        ("head_switch", c.head_switch.load_state_dict, ck["head_switch"]),
        ("meter", c.meter.load_state_dict, ck["meter"]),
        ("health", run.health.load_state_dict, ck["health"]),
        ("rng", lambda states: _restore_rank_rng(run, states), ck["rng"]),
    ]
    if c.ema is not None and ck["ema"] is not None:
        loads.append(("ema", c.ema.load_state_dict, ck["ema"]))
    if c.runtime.amp.scaler is not None and ck["scaler"]:
        loads.append(("scaler", c.runtime.amp.scaler.load_state_dict, ck["scaler"]))
    if c.memory is not None and ck["memory"] is not None:
        loads.append(("memory", c.memory.load_state_dict, ck["memory"]))
    for name, load, value in loads:
        with _restoring(path, name):
            load(value)
    run.state = state
    _restart_epoch_on_new_world(run, saved_world)
    run.out.metrics.truncate_after(run.state.global_step)
    run.out.log.info(
        "resumed from %s at epoch %d step %d (global %d)",
        path,
        run.state.epoch,
        run.state.step_in_epoch,
        run.state.global_step,
    )


@contextlib.contextmanager
def _restoring(path: str, part: str) -> Iterator[None]:
    """A part of the checkpoint the run refuses: a ``ValueError`` naming the file and part."""
    try:
        yield
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path}: cannot restore {part}: {err}") from err


def _restore_rank_rng(run: Run, states: Sequence[dict[str, Any]]) -> None:
    """This rank's generators from the checkpoint's per-rank states. With a different number
    of processes a rank without a saved state keeps its seeded one (the epoch restarts anyway,
    see :func:`_restart_epoch_on_new_world`)."""
    rt = run.step.runtime
    if not isinstance(states, Sequence) or not states:
        raise ValueError(f"expected a list of per-rank RNG states, got {type(states).__name__}")
    if rt.rank < len(states):
        restore_rng(states[rt.rank], rt.np_rng)


def _restart_epoch_on_new_world(run: Run, saved_world: int) -> None:
    s, world = run.state, run.step.runtime.world
    if saved_world != world and s.step_in_epoch > 0:
        run.out.log.warning(
            "checkpoint was written by %d processes, resuming with %d: epoch %d restarts "
            "from its first batch (per-rank batch positions do not carry over)",
            saved_world,
            world,
            s.epoch,
        )
        s.step_in_epoch, s.sums = 0, EpochSums()


def score_best_checkpoint(run: Run, evaluator: Evaluator) -> Scores:
    """The best validation checkpoint's weights (or the current ones, if none was written) on
    the test split."""
    if is_distributed():
        dist.barrier()  # rank 0 has finished writing best.pt
    best = run.state.best.epoch
    path = run.out.run_dir / "best.pt"
    if best and path.exists():
        ck = load_checkpoint(path)
        if run.step.ema is not None and ck.get("ema") is not None:
            run.step.ema.load_state_dict(ck["ema"])
        else:
            run.step.raw_model.load_state_dict(ck["model"])
    test = evaluator.scores(run.eval_model, "test")
    run.out.log.info(format_metrics(f"test (best epoch {best})", best, test))
    return test


def summarize(run: Run, test: Scores, train_seconds: float) -> RunSummary:
    """The run's outcome (what ``train.main`` returns)."""
    s = run.state
    return RunSummary(
        run_dir=str(run.out.run_dir),
        stopped=s.stopped,
        global_step=s.global_step,
        best_epoch=s.best.epoch,
        best_val=s.best.val,
        val=s.last_val,
        test=test,
        pair_coverage=float(run.step.meter.compute()),
        train_seconds=train_seconds,
        images_per_second=float(np.median(s.throughput)) if s.throughput else math.nan,
        findings=list(run.health.history),
        report=None,
    )
