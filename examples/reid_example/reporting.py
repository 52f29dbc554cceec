"""Metric logs (CSV + JSONL + optional TensorBoard), PNG plots and ``report.md``.

Files in the run directory:

* ``steps.jsonl`` — one row every ``train.log_every`` steps (loss terms, SDM weight, coverage,
  top-1, learning rates, images/s);
* ``epochs.csv`` / ``epochs.jsonl`` — one row per epoch (means over the epoch + validation
  metrics when evaluated);
* ``plots/*.png`` — CE, SDM loss, SDM weight, pair coverage (with the target line), train top-1,
  mAP per protocol per epoch;
* ``report.md`` — configuration summary, final/best metrics, health findings, the plots.

Rows are appended and flushed as they are written, so a resumed run continues the same files.
On resume, rows after the checkpoint's step are dropped first (:meth:`MetricsLog.truncate_after`)
so the logs of a resumed run equal those of an uninterrupted one.

A new run never writes into a directory that holds another run's files
(:func:`check_run_directory`): it is refused unless the run resumes (``--resume``) or
overwrites it (``--overwrite``, which deletes the old run's files first, so nothing is mixed).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch.distributed as dist

from reid_example.config import Config, config_toml
from reid_example.evaluate import Scores, select_score
from reid_example.logging_utils import progress_enabled, setup_logging
from reid_example.runtime import is_distributed

__all__ = [
    "MetricsLog",
    "RunOutputs",
    "RunSummary",
    "check_run_directory",
    "open_outputs",
    "run_files",
    "write_plots",
    "write_report",
    "write_run_report",
]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLog:
    """Append-only metric rows for steps and epochs; TensorBoard when available and wanted."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.steps_path = run_dir / "steps.jsonl"
        self.epochs_jsonl = run_dir / "epochs.jsonl"
        self.epochs_csv = run_dir / "epochs.csv"
        self.tb: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tb = None
            else:
                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after global ``step`` (resume: the run continues from there)."""
        if not self.enabled:
            return
        for path, key in ((self.steps_path, "step"), (self.epochs_jsonl, "step")):
            if path.exists():
                rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
                keep = [r for r in rows if int(r.get(key, 0)) <= step]
                path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self._rewrite_csv()

    def log_step(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self.steps_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        if self.tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch") and math.isfinite(v):
                    self.tb.add_scalar(f"step/{k}", v, step)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self.epochs_jsonl.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._rewrite_csv()
        if self.tb is not None:
            epoch = int(row["epoch"])
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(v):
                    self.tb.add_scalar(f"epoch/{k}", v, epoch)
            self.tb.flush()

    def _rewrite_csv(self) -> None:
        rows = self.epoch_rows()
        if not rows:
            if self.epochs_csv.exists():
                self.epochs_csv.unlink()
            return
        keys: list[str] = []
        for r in rows:
            keys.extend(k for k in r if k not in keys)
        with self.epochs_csv.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})

    def step_rows(self) -> list[dict[str, Any]]:
        if not self.steps_path.exists():
            return []
        return [json.loads(x) for x in self.steps_path.read_text().splitlines() if x.strip()]

    def epoch_rows(self) -> list[dict[str, Any]]:
        if not self.epochs_jsonl.exists():
            return []
        return [json.loads(x) for x in self.epochs_jsonl.read_text().splitlines() if x.strip()]

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _series(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(y)
        if v is None or r.get(x) is None:
            continue
        xs.append(float(r[x]))
        ys.append(float(v))
    return xs, ys


def write_plots(
    step_rows: Sequence[Mapping[str, Any]],
    epoch_rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    coverage_target: float = 0.85,
    ce_ceiling: float | None = 2.5,
) -> dict[str, Path]:
    """Write the PNG plots; returns ``{name: path}`` of those written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def one(
        name: str,
        title: str,
        ylabel: str,
        curves: list[tuple[str, list[float], list[float]]],
        hline: tuple[float, str] | None = None,
        xlabel: str = "step",
    ) -> None:
        if not any(xs for _, xs, _ in curves):
            return
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        for label, xs, ys in curves:
            if xs:
                ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, ms=3)
        if hline is not None:
            ax.axhline(hline[0], color="red", linestyle="--", linewidth=1, label=hline[1])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(curves) > 1 or hline is not None:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written[name] = path

    s = step_rows

    # one curve per query modality where the rows have them (``<key>/<MODALITY>``)
    def by_modality(key: str) -> list[tuple[str, list[float], list[float]]]:
        names = sorted({k for r in s for k in r if k.startswith(f"{key}/")})
        return [(k.removeprefix(f"{key}/"), *_series(s, "step", k)) for k in names]

    one(
        "ce",
        "identity cross-entropy (label-smoothed)",
        "CE",
        [("CE (step)", *_series(s, "step", "ce"))],
        (ce_ceiling, f"health ceiling {ce_ceiling}") if ce_ceiling else None,
    )
    one(
        "sdm_loss",
        "SDM loss (non-RGB → RGB + memory)",
        "SDM",
        [("SDM", *_series(s, "step", "sdm")), *by_modality("sdm")],
    )
    one("sdm_weight", "SDM weight", "weight", [("weight", *_series(s, "step", "sdm_weight"))])
    one(
        "pair_coverage",
        "pair coverage (moving average)",
        "coverage",
        [
            ("pair_coverage_mavg", *_series(s, "step", "pair_coverage")),
            *by_modality("pair_coverage"),
        ],
        (coverage_target, f"target {coverage_target}"),
    )
    one("train_top1", "train-batch top-1", "top-1", [("top-1", *_series(s, "step", "top1"))])
    map_keys = sorted({k for r in epoch_rows for k in r if k.startswith("val/mAP/")})
    one(
        "map",
        "validation mAP per protocol",
        "mAP",
        [(k.removeprefix("val/mAP/"), *_series(epoch_rows, "epoch", k)) for k in map_keys],
        xlabel="epoch",
    )
    return written


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "—" if v is None else str(v)


def write_report(
    path: Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    tables: Mapping[str, Mapping[str, Mapping[str, float]]],
    findings: Sequence[str],
    plots: Mapping[str, Path],
    config_text: str,
) -> None:
    """Write ``report.md``: summary, metric tables (rows = protocols), findings, plots, config."""
    lines = [f"# {title}", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in summary.items()]
    for name, table in tables.items():
        if not table:
            continue
        cols: list[str] = []
        for row in table.values():
            cols.extend(c for c in row if c not in cols)
        lines += [
            "",
            f"## {name}",
            "",
            "| protocol | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for proto, row in table.items():
            lines.append(f"| {proto} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    lines += ["", "## Health findings", ""]
    lines += [f"- {f}" for f in findings] if findings else ["- none"]
    if plots:
        lines += ["", "## Curves", ""]
        for name, p in plots.items():
            rel = p.relative_to(path.parent) if p.is_relative_to(path.parent) else p
            lines += [f"### {name}", "", f"![{name}]({rel.as_posix()})", ""]
    lines += ["", "## Configuration", "", "```toml", config_text.rstrip(), "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


@dataclass
class RunOutputs:
    """Where a run writes: its directory, the logger, the metric files, progress bars."""

    run_dir: Path
    log: logging.Logger
    metrics: MetricsLog
    #: tqdm bars (``output.progress``)
    progress: bool


#: what a run writes into its directory: a directory holding any of them holds a run
RUN_FILES = (
    "last.pt",
    "best.pt",
    "config.toml",
    "train.log",
    "steps.jsonl",
    "epochs.jsonl",
    "epochs.csv",
    "report.md",
    "plots",
    "tensorboard",
)


def run_directory(cfg: Config, config_path: str | None) -> Path:
    """A resumed run continues in its checkpoint's directory; a new one goes to
    ``<output.root>/<output.name>`` (default name: ``<config file stem>-seed<train.seed>``)."""
    if cfg.checkpoint.resume:
        return Path(cfg.checkpoint.resume).resolve().parent
    stem = Path(config_path).stem if config_path else "default"
    return Path(cfg.output.root) / (cfg.output.name or f"{stem}-seed{cfg.train.seed}")


def run_files(run_dir: Path) -> list[str]:
    """The names of the run files (:data:`RUN_FILES`) in ``run_dir``; empty when it holds no run.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "notes.txt").write_text("mine"), run_files(d)
        (4, [])
        >>> (d / "train.log").write_text(""), run_files(d)
        (0, ['train.log'])
    """
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_run_directory(cfg: Config, config_path: str | None) -> Path:
    """The run's directory, refused (``ValueError``) when it already holds a run that this one
    neither resumes (``checkpoint.resume``) nor overwrites (``output.overwrite``).

    Reads only; every rank calls it before rank 0 writes anything (:func:`open_outputs`).
    """
    run_dir = run_directory(cfg, config_path)
    if cfg.checkpoint.resume and cfg.output.overwrite:
        raise ValueError(
            "--resume (checkpoint.resume) continues a run and --overwrite (output.overwrite) "
            "deletes it: give one of them"
        )
    found = run_files(run_dir)
    if found and not (cfg.checkpoint.resume or cfg.output.overwrite):
        resume = f"continue it with --resume {run_dir / 'last.pt'}, " if "last.pt" in found else ""
        raise ValueError(
            f"run directory {run_dir} already holds a run ({', '.join(found)}): {resume}"
            "start over with --overwrite (output.overwrite=true; deletes those files first), "
            "or choose another output.name"
        )
    return run_dir


def _delete_run_files(run_dir: Path) -> None:
    """``--overwrite``: the previous run's files go before the new run writes any."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for leftover in run_dir.glob(".*.pt.*.tmp"):  # a checkpoint write that was interrupted
        leftover.unlink()


def open_outputs(cfg: Config, config_path: str | None, rank: int) -> RunOutputs:
    """The run directory with the resolved ``config.toml``, the logger and the metric files;
    only rank 0 writes. With ``output.overwrite`` the previous run's files are deleted first.
    """
    run_dir = check_run_directory(cfg, config_path)
    if is_distributed():
        dist.barrier()  # every rank has checked the directory before rank 0 changes it
    if rank == 0:
        if cfg.output.overwrite:
            _delete_run_files(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_toml(cfg))
    return RunOutputs(
        run_dir=run_dir,
        log=setup_logging(run_dir if rank == 0 else None, rank),
        metrics=MetricsLog(run_dir, tensorboard=cfg.output.tensorboard, enabled=rank == 0),
        progress=progress_enabled(cfg.output.progress, rank),
    )


class RunSummary(TypedDict):
    """What :func:`train.main` returns (and the report summarises)."""

    run_dir: str
    #: stopped early by ``train.stop_after_steps`` (no test, no report)
    stopped: bool
    global_step: int
    best_epoch: int
    best_val: Scores
    #: the last validation of this process
    val: Scores
    #: the best checkpoint on the test split (empty when not run)
    test: Scores
    pair_coverage: float
    train_seconds: float
    #: median over the epochs trained in this process
    images_per_second: float
    findings: list[str]
    report: str | None


def write_run_report(
    cfg: Config, out: RunOutputs, summary: RunSummary, dataset: str, test_trials: str
) -> Path:
    """Plots (``output.plots``) and ``report.md`` of a finished run."""
    plots: dict[str, Path] = {}
    if cfg.output.plots:
        plots = write_plots(
            out.metrics.step_rows(),
            out.metrics.epoch_rows(),
            out.run_dir / "plots",
            coverage_target=cfg.train.coverage_target,
            ce_ceiling=cfg.health.ce_ceiling,
        )
    best = summary["best_epoch"]
    path = out.run_dir / "report.md"
    write_report(
        path,
        title=f"Training report: {out.run_dir.name}",
        summary={
            "dataset": dataset,
            "epochs": cfg.train.epochs,
            "global steps": summary["global_step"],
            "best epoch (validation)": best,
            f"best validation {cfg.eval.select_metric}": (
                select_score(summary["best_val"], cfg.eval.select_metric)
                if summary["best_val"]
                else None
            ),
            "final pair coverage (moving avg)": summary["pair_coverage"],
            "training wall time (s)": summary["train_seconds"],
            "throughput (images/s, median epoch)": summary["images_per_second"],
        },
        tables={
            f"Test split, best checkpoint (epoch {best}{test_trials})": summary["test"],
            f"Validation split, best epoch {best}": summary["best_val"],
            "Validation split, last evaluation": summary["val"],
        },
        findings=summary["findings"],
        plots=plots,
        config_text=config_toml(cfg),
    )
    return path
