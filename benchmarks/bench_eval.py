"""Benchmark: sdmreid.evaluation.evaluate_retrieval vs a torchreid-style numpy evaluator.

The baseline follows torchreid's ``eval_market1501`` (``torchreid/metrics/rank.py``, the pure
Python path): a full query×gallery cosine distance matrix (``1 - q̂·ĝᵀ``), ``np.argsort`` of
the whole matrix, then a per-query loop removing same-identity-same-camera items and computing
CMC and AP; mINP is added as in the AGW evaluator. Both run in the same process on the same
features; the script asserts that the numbers agree and prints a Markdown table per case and a
summary.

Cases (every gallery identity has about 20 images):

* ``large`` — 4k queries × 20k gallery, d=512, 1,000 identities. The issue's size is 10k × 50k;
  this keeps its 1:5 ratio (the baseline's full matrix, its argsort and its match matrix need
  ~8 GB at full size).
* ``realistic`` — 2k queries × 10k gallery, d=256, 500 identities: a validation-sized split.

``--queries/--gallery/--dim`` run one custom case instead (e.g. ``--queries 10000 --gallery
50000`` on a larger machine).

Usage::

    python benchmarks/bench_eval.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sdmreid.evaluation import evaluate_retrieval


def torchreid_style_eval(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
    kind: str = "quicksort",
) -> tuple[np.ndarray, float, float]:
    """Port of torchreid's ``eval_market1501`` (+ AGW's mINP): full argsort, per-query loop."""
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1, kind=kind)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc = []
    all_ap = []
    all_inp = []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid = q_pids[q_idx]
        q_camid = q_camids[q_idx]
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)
        raw_cmc = matches[q_idx][keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        pos_max_idx = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp_cmc)]) * raw_cmc
        all_ap.append(tmp_cmc.sum() / num_rel)
    if num_valid_q == 0:
        raise RuntimeError("all query identities do not appear in gallery")
    cmc_curve = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q
    return cmc_curve, float(np.mean(all_ap)), float(np.mean(all_inp))


def baseline(q: torch.Tensor, g: torch.Tensor, ql: Any, gl: Any, qc: Any, gc: Any, max_rank: int):
    qn = torch.nn.functional.normalize(q, dim=1)
    gn = torch.nn.functional.normalize(g, dim=1)
    distmat = (1 - qn @ gn.T).numpy()  # torchreid's cosine distance
    return torchreid_style_eval(distmat, ql, gl, qc, gc, max_rank)


def same_scores_baseline(
    q: torch.Tensor, g: torch.Tensor, ql: Any, gl: Any, qc: Any, gc: Any, max_rank: int
):
    """The baseline loop on exactly the scores sdmreid ranks (256-row blocks, ``-cos``) with a
    stable argsort (ties by gallery index): isolates the metric code from score rounding."""
    qn = torch.nn.functional.normalize(q, dim=1)
    gn = torch.nn.functional.normalize(g, dim=1)
    neg_sim = torch.cat([(-qn[b : b + 256]) @ gn.T for b in range(0, len(qn), 256)]).numpy()
    return torchreid_style_eval(neg_sim, ql, gl, qc, gc, max_rank, kind="stable")


def make_problem(nq: int, ng: int, d: int, seed: int) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(seed)
    num_ids = max(2, ng // 20)
    centers = torch.randn(num_ids, d, generator=gen)
    gl = torch.randint(0, num_ids, (ng,), generator=gen)
    ql = torch.randint(0, num_ids, (nq,), generator=gen)
    g = centers[gl] + 2.5 * torch.randn(ng, d, generator=gen)
    q = centers[ql] + 2.5 * torch.randn(nq, d, generator=gen)
    gc = torch.randint(0, 6, (ng,), generator=gen)
    qc = torch.randint(0, 6, (nq,), generator=gen)
    return q, g, ql, gl, qc, gc


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in d.items())


def timeit(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    times = []
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return statistics.median(times), out


#: name -> (queries, gallery, dim); identities = gallery // 20 (see make_problem)
CASES: dict[str, tuple[int, int, int]] = {
    "large": (4000, 20000, 512),
    "realistic": (2000, 10000, 256),
}
QUICK_CASES: dict[str, tuple[int, int, int]] = {
    "large": (1000, 5000, 512),
    "realistic": (500, 2500, 256),
}


def run_case(nq: int, ng: int, dim: int, repeats: int, chunk_size: int | None) -> dict[str, Any]:
    """Time both evaluators on one problem, check that they agree, print the case's table."""
    q, g, ql, gl, qc, gc = make_problem(nq, ng, dim, seed=0)
    qln, gln, qcn, gcn = ql.numpy(), gl.numpy(), qc.numpy(), gc.numpy()
    max_rank = 50

    t_base, (b_cmc, b_map, b_minp) = timeit(
        lambda: baseline(q, g, qln, gln, qcn, gcn, max_rank), repeats
    )
    t_ours, m = timeit(
        lambda: evaluate_retrieval(
            q, ql, g, gl, query_cams=qc, gallery_cams=gc, chunk_size=chunk_size
        ),
        repeats,
    )
    # 1) same scores + stable argsort: the metrics must agree to float64 rounding
    s_cmc, s_map, s_minp = same_scores_baseline(q, g, qln, gln, qcn, gcn, max_rank)
    exact = {
        "cmc": float(np.abs(m.cmc[:max_rank].numpy() - s_cmc.astype(np.float64)).max()),
        "mAP": abs(m.mAP - s_map),
        "mINP": abs(m.mINP - s_minp),
    }
    # the baseline accumulates its CMC in float32
    assert exact["cmc"] < 1e-6, exact
    assert exact["mAP"] < 1e-12, exact
    assert exact["mINP"] < 1e-12, exact
    # 2) torchreid's own distance matrix (1 - cos, one big matmul, quicksort): float32 near-ties
    #    may swap, so the numbers agree only to ~1e-7
    faithful = {
        "cmc": float(np.abs(m.cmc[:max_rank].numpy() - b_cmc.astype(np.float64)).max()),
        "mAP": abs(m.mAP - b_map),
        "mINP": abs(m.mINP - b_minp),
    }
    assert max(faithful.values()) < 1e-5, faithful

    size = f"{nq}x{ng}, d={dim}, {max(2, ng // 20)} identities"
    rows = [
        ("torchreid-style numpy (full distmat + argsort + loop)", t_base, 1.0),
        ("sdmreid evaluate_retrieval (chunked, torch)", t_ours, t_base / t_ours),
    ]
    print(
        f"\n### retrieval evaluation, {size}, {torch.get_num_threads()} threads, median of "
        f"{repeats}\n"
    )
    print("| implementation | time (s) | speed-up |")
    print("|---|---:|---:|")
    for name, t, r in rows:
        print(f"| {name} | {t:.3f} | {r:.1f}x |")
    print(f"\nR1={m.rank1:.4f} R10={m.rank10:.4f} mAP={m.mAP:.6f} mINP={m.mINP:.6f}")
    print("max |diff| on identical scores (stable argsort): " + _fmt(exact))
    print("max |diff| vs torchreid's own 1-cos distmat (quicksort): " + _fmt(faithful))
    return {
        "size": size,
        "baseline_s": t_base,
        "sdmreid_s": t_ours,
        "speedup": t_base / t_ours,
        "rank1": m.rank1,
        "mAP": m.mAP,
        "mINP": m.mINP,
        "max_abs_diff_same_scores": exact,
        "max_abs_diff_torchreid_distmat": faithful,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=None, help="custom case (with --gallery)")
    parser.add_argument("--gallery", type=int, default=None)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smaller cases, one repeat")
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    if (args.queries is None) != (args.gallery is None):
        parser.error("give both --queries and --gallery for a custom case")
    cases = QUICK_CASES if args.quick else CASES
    if args.quick:
        args.repeats = 1
    if args.queries is not None:
        cases = {"custom": (args.queries, args.gallery, args.dim)}
    torch.set_num_threads(args.threads)
    results = {
        name: run_case(nq, ng, dim, args.repeats, args.chunk_size)
        for name, (nq, ng, dim) in cases.items()
    }
    print(f"\n### summary, {args.threads} threads, median of {args.repeats}\n")
    print("| case | size | baseline (s) | sdmreid (s) | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['size']} | {r['baseline_s']:.3f} | {r['sdmreid_s']:.3f} | "
            f"{r['speedup']:.1f}x |"
        )
    result = {"threads": args.threads, "repeats": args.repeats, "cases": results}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
