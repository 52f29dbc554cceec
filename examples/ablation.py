#!/usr/bin/env python
"""Ablation of the recipe: what each component adds, over several seeds.

Variants (everything else from the config, e.g. ``examples/configs/demo.toml``):

=========================  ===========================================================
``ce_only``                cross-entropy only, plain P×K sampler, no memory
``+sdm_pooled``            + scheduled SDM, one softmax over every query modality
                           (plain P×K, no memory)
``+sdm_per_modality``      + scheduled SDM, one per query modality (plain P×K, no memory)
``+sdm+strict``            + the strict modality-aware P×K sampler (``loss.sdm_mode`` of
                           the config)
``+sdm+strict+mem``        + the cross-batch memory of RGB features (the full recipe)
``+sdm+strict+mem(kl)``    the full recipe with IRRA's loss form (KL, directions summed);
                           not run unless named with ``--variants``
=========================  ===========================================================

Each variant trains with every seed (``train.seed``; the data set is the same), picks its best
checkpoint on the validation split and reports the test split. The table gives mean ± sample
standard deviation over seeds of mAP and rank-1 per protocol, the final pair coverage, and how
often the health monitor rolled SDM back.

Usage::

    python examples/ablation.py --config examples/configs/demo.toml --seeds 0 1 2 \\
        --out docs/ablation.md
    python examples/ablation.py --quick        # a minute-long smoke run of the whole table

Runs whose directories (``<--root>/<variant>-seed<k>``) already hold a run are refused before
anything trains, unless ``--overwrite`` starts them over.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import train
from reid_example.reporting import run_files

VARIANTS: dict[str, list[str]] = {
    "ce_only": ["loss.sdm=false", "sampler.kind=pk", "loss.memory=false"],
    "+sdm_pooled": [
        "loss.sdm=true",
        "loss.sdm_mode=pooled",
        "sampler.kind=pk",
        "loss.memory=false",
    ],
    "+sdm_per_modality": [
        "loss.sdm=true",
        "loss.sdm_mode=per_modality",
        "sampler.kind=pk",
        "loss.memory=false",
    ],
    "+sdm+strict": ["loss.sdm=true", "sampler.kind=strict", "loss.memory=false"],
    "+sdm+strict+mem": ["loss.sdm=true", "sampler.kind=strict", "loss.memory=true"],
    "+sdm+strict+mem(kl)": [
        "loss.sdm=true",
        "sampler.kind=strict",
        "loss.memory=true",
        "loss.sdm_objective=kl",
        "loss.sdm_directions=sum",
    ],
}
#: what runs without --variants
DEFAULT_VARIANTS = [v for v in VARIANTS if not v.endswith("(kl)")]

QUICK = [
    "data.identities_per_split=24,8,8",
    "sampler.num_identities=8",  # P must not exceed the 24 training identities
    "train.epochs=3",
    "loss.sdm_warmup_epochs=1",
    "eval.every=3",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
]


def _run_name(variant: str, seed: int) -> str:
    name = variant.replace("+", "plus_").replace("(", "_").replace(")", "")
    return f"{name}-seed{seed}"


def _mean_sd(xs: Sequence[float]) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def _protocols(results: dict[str, list[dict[str, Any]]], split: str) -> list[str]:
    """Every protocol any run reports, in first-seen order."""
    names = [p for runs in results.values() for r in runs for p in r[split]]
    return list(dict.fromkeys(names))


def _table_row(name: str, runs: list[dict[str, Any]], protocols: list[str], split: str) -> str:
    row = [f"`{name}`", str(len(runs))]
    for p in protocols:
        for metric in ("mAP", "rank1"):
            row.append(_mean_sd([r[split].get(p, {}).get(metric, math.nan) for r in runs]))
    row.append(_mean_sd([r["pair_coverage"] for r in runs]))
    row.append(str(sum(r["rollbacks"] for r in runs)))
    return "| " + " | ".join(row) + " |"


def markdown_table(results: dict[str, list[dict[str, Any]]], split: str = "test") -> str:
    """One row per variant: mean ± sd over seeds of mAP and rank-1 per protocol, pair
    coverage, SDM rollbacks.

    Example:
        >>> run = {"test": {"NIR->RGB": {"mAP": 0.5, "rank1": 0.6}}, "pair_coverage": 0.9,
        ...        "rollbacks": 0}
        >>> print(markdown_table({"full": [run]}).splitlines()[2])
        | `full` | 1 | 0.500 | 0.600 | 0.900 | 0 |
    """
    protocols = _protocols(results, split)
    head = ["variant", "seeds"]
    for p in protocols:
        head += [f"{p} mAP", f"{p} R1"]
    head += ["pair coverage", "SDM rollbacks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_table_row(name, runs, protocols, split) for name, runs in results.items()]
    return "\n".join(lines)


def change_table(results: dict[str, list[dict[str, Any]]], split: str = "test") -> str:
    """One row per variant: its mean mAP per protocol and the change against the first
    variant's mean (the baseline, ``ce_only`` by default).

    Example:
        >>> a = {"test": {"NIR->RGB": {"mAP": 0.5}}}
        >>> b = {"test": {"NIR->RGB": {"mAP": 0.6}}}
        >>> print(change_table({"ce_only": [a], "full": [b]}).splitlines()[3])
        | `full` | 0.600 (+0.100) |
    """
    protocols = _protocols(results, split)

    def mean_map(runs: list[dict[str, Any]], p: str) -> float:
        xs = [r[split].get(p, {}).get("mAP", math.nan) for r in runs]
        xs = [x for x in xs if math.isfinite(x)]
        return statistics.mean(xs) if xs else math.nan

    base_runs = next(iter(results.values()), [])
    lines = [
        "| variant | " + " | ".join(f"{p} mAP" for p in protocols) + " |",
        "|" + "---|" * (len(protocols) + 1),
    ]
    for i, (name, runs) in enumerate(results.items()):
        cells = []
        for p in protocols:
            m, b = mean_map(runs, p), mean_map(base_runs, p)
            if i == 0 or not (math.isfinite(m) and math.isfinite(b)):
                cells.append(f"{m:.3f}" if math.isfinite(m) else "—")
            else:
                cells.append(f"{m:.3f} ({m - b:+.3f})")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="examples/configs/demo.toml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--root", default="runs/ablation", help="parent of the runs' directories")
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    ap.add_argument("--json", default=None, help="write every run's metrics here (after each run)")
    ap.add_argument("--quick", action="store_true", help="tiny data/model, 3 epochs, 1 seed")
    ap.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        metavar="JSON",
        help="train nothing: print (and --out) the table of runs saved with --json by earlier "
        "invocations (e.g. variants split over two processes), variants in the order given",
    )
    ap.add_argument(
        "--overwrite", action="store_true", help="start over runs whose directories hold a run"
    )
    args = ap.parse_args(argv)
    if args.from_json:
        return _from_json(args.from_json, args.out, args.config)
    seeds = args.seeds[:1] if args.quick else args.seeds
    extra = [*(QUICK if args.quick else []), *args.overrides]
    if args.overwrite:
        extra.append("output.overwrite=true")
    # refused up front, not after hours of training the variants before it
    dirs = [Path(args.root) / _run_name(v, seed) for v in args.variants for seed in seeds]
    taken = [str(d) for d in dirs if run_files(d)]
    if taken and not args.overwrite:
        ap.error(
            f"these run directories already hold runs: {', '.join(taken)}; start them over with "
            "--overwrite, or choose another --root"
        )

    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    t0 = time.perf_counter()
    for variant in args.variants:
        for seed in seeds:
            name = _run_name(variant, seed)
            sets = [
                *VARIANTS[variant],
                *extra,
                f"train.seed={seed}",
                f"output.root={args.root}",
                f"output.name={name}",
                "output.progress=off",
            ]
            argv_run = ["--config", args.config]
            for s in sets:
                argv_run += ["--set", s]
            summary = train.main(argv_run)
            rollbacks = sum("-> SDM rolled back" in f for f in summary["findings"])
            results[variant].append(
                {
                    "seed": seed,
                    "test": summary.get("test", {}),
                    "val": summary.get("best_val", {}),
                    "pair_coverage": summary["pair_coverage"],
                    "rollbacks": rollbacks,
                    "best_epoch": summary["best_epoch"],
                    "run_dir": summary["run_dir"],
                }
            )
            print(
                f"[ablation] {variant} seed={seed} done ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
            if args.json:  # after every run: an interrupted ablation keeps what it trained
                Path(args.json).write_text(json.dumps(results, indent=2))
    what = f"{'quick, ' if args.quick else ''}seeds {seeds}"
    return _report(results, args.config, what, args.out)


def _report(
    results: dict[str, list[dict[str, Any]]], config: str, what: str, out: str | None
) -> dict[str, Any]:
    """Print (and write to ``out``) both tables of ``results``."""
    table = markdown_table(results) + "\n\nmAP, and its change against the first variant:\n\n"
    table += change_table(results)
    header = (
        f"Ablation on `{config}` ({what}; test split, best validation checkpoint; "
        "mean ± sd over seeds)\n\n"
    )
    print(header + table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(header + table + "\n")
    return {"results": results, "table": table}


def _from_json(paths: Sequence[str], out: str | None, config: str) -> dict[str, Any]:
    """The table of the runs saved in ``paths`` (``--json`` files of earlier invocations)."""
    saved: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for variant, runs in json.loads(Path(path).read_text()).items():
            saved.setdefault(variant, []).extend(runs)
    # the variants in the table's order (the baseline first), whatever the files' order
    order = [v for v in VARIANTS if saved.get(v)] + [v for v in saved if v not in VARIANTS]
    results = {v: sorted(saved[v], key=lambda r: int(r["seed"])) for v in order}
    seeds = sorted({r["seed"] for runs in results.values() for r in runs})
    return _report(results, config, f"seeds {seeds}", out)


if __name__ == "__main__":
    main(sys.argv[1:])
