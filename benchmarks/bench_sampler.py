"""Benchmark: vectorised P×K samplers vs a pure-Python port of torchreid's RandomIdentitySampler.

One measurement = build the sampler from the dataset's labels (index building included) and draw
one full epoch of batches as ``list[list[int]]``. Configurations: 100k samples / 2k identities
and 1M samples / 20k identities, P=16, K=4, about one third non-RGB samples.

* ``torchreid port``: the behaviour of torchreid's ``RandomIdentitySampler`` written here in pure
  Python (dict of lists built by enumerating ``(img_path, pid, camid)`` items, per-identity
  shuffle and K-chunks, ``random.sample`` of P available identities, ``pop(0)``,
  ``list.remove``), followed by cutting the flat index list into batches of P·K (what
  ``BatchSampler`` would do).
* ``plain``: :class:`sdmreid.samplers.ModalAwarePKSampler`.
* ``strict``: :class:`sdmreid.samplers.ModalAwarePKSampler_Strict` (default fallback settings).
* ``tolist floor``: only converting an already computed ``[batches, P·K]`` array of the same size
  to ``list[list[int]]`` — the part no implementation returning Python lists can avoid.

Variants run interleaved round by round in one process, with gc disabled, after a warm-up; the
median of the rounds is reported together with the speed-up over the port.

Usage::

    python benchmarks/bench_sampler.py [--quick] [--json out.json] [--repeats N]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from sdmreid.samplers import ModalAwarePKSampler, ModalAwarePKSampler_Strict


class TorchreidRandomIdentitySamplerPort:
    """Pure-Python port of torchreid's ``RandomIdentitySampler`` (reference behaviour only)."""

    def __init__(
        self,
        data_source: list[tuple[Any, int, int]],
        batch_size: int,
        num_instances: int,
        seed: int,
    ) -> None:
        if batch_size < num_instances:
            raise ValueError("batch_size must be >= num_instances")
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.index_dic: defaultdict[int, list[int]] = defaultdict(list)
        for index, (_, pid, _) in enumerate(data_source):
            self.index_dic[pid].append(index)
        self.pids = list(self.index_dic.keys())
        self.rand = random.Random(seed)
        self.np_rng = np.random.RandomState(seed)

    def __iter__(self) -> Any:
        batch_idxs_dict: defaultdict[int, list[list[int]]] = defaultdict(list)
        for pid in self.pids:
            idxs = copy.deepcopy(self.index_dic[pid])
            if len(idxs) < self.num_instances:
                idxs = self.np_rng.choice(idxs, size=self.num_instances, replace=True).tolist()
            self.rand.shuffle(idxs)
            batch_idxs: list[int] = []
            for idx in idxs:
                batch_idxs.append(idx)
                if len(batch_idxs) == self.num_instances:
                    batch_idxs_dict[pid].append(batch_idxs)
                    batch_idxs = []
        avai_pids = copy.deepcopy(self.pids)
        final_idxs: list[int] = []
        while len(avai_pids) >= self.num_pids_per_batch:
            selected_pids = self.rand.sample(avai_pids, self.num_pids_per_batch)
            for pid in selected_pids:
                batch_idxs = batch_idxs_dict[pid].pop(0)
                final_idxs.extend(batch_idxs)
                if len(batch_idxs_dict[pid]) == 0:
                    avai_pids.remove(pid)
        return iter(final_idxs)


def make_dataset(n: int, ids: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (every identity present, sizes vary) and modalities (~1/3 non-RGB)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(ids), rng.integers(0, ids, n - ids)])
    rng.shuffle(labels)
    mods = (rng.random(n) < 1 / 3).astype(np.int64)
    return labels.astype(np.int64), mods


def run_case(n: int, ids: int, p: int, k: int, repeats: int) -> dict[str, Any]:
    labels, mods = make_dataset(n, ids)
    data_source = [(None, int(pid), 0) for pid in labels.tolist()]
    bs = p * k

    def port() -> int:
        s = TorchreidRandomIdentitySamplerPort(data_source, bs, k, seed=0)
        flat = list(iter(s))
        batches = [flat[i : i + bs] for i in range(0, len(flat) - bs + 1, bs)]
        return len(batches)

    def plain() -> int:
        return len(list(ModalAwarePKSampler(labels, mods, p, k, seed=0)))

    def strict() -> int:
        return len(list(ModalAwarePKSampler_Strict(labels, mods, p, k, seed=0)))

    ref = ModalAwarePKSampler(labels, mods, p, k, seed=0).batches().copy()

    def floor() -> int:
        return len(ref.tolist())

    variants: dict[str, Callable[[], int]] = {
        "torchreid port": port,
        "plain": plain,
        "strict": strict,
        "tolist floor": floor,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    nbatches: dict[str, int] = {}
    gc.collect()
    gc.disable()
    try:
        for name, fn in variants.items():  # warm-up
            nbatches[name] = fn()
        for _ in range(repeats):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                gc.collect()
    finally:
        gc.enable()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["torchreid port"]
    return {
        "samples": n,
        "identities": ids,
        "P": p,
        "K": k,
        "repeats": repeats,
        "batches": nbatches,
        "median_s": med,
        "all_s": times,
        "speedup_vs_port": {name: base / t for name, t in med.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small fast smoke configuration")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("-P", type=int, default=16)
    parser.add_argument("-K", type=int, default=4)
    args = parser.parse_args(argv)
    if args.quick:
        cases = [(20_000, 400)]
        repeats = args.repeats or 3
    else:
        cases = [(100_000, 2_000), (1_000_000, 20_000)]
        repeats = args.repeats or 7
    results = []
    for n, ids in cases:
        results.append(
            run_case(n, ids, args.P, args.K, repeats if n <= 100_000 else max(3, repeats // 2))
        )
    print(f"P={args.P}, K={args.K}; index build + one epoch as list[list[int]]; median of rounds\n")
    print("| samples / ids | variant | batches | median ms | speed-up vs port |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        for name, t in r["median_s"].items():
            print(
                f"| {r['samples']:,} / {r['identities']:,} | {name} | {r['batches'][name]} | "
                f"{1e3 * t:.1f} | {r['speedup_vs_port'][name]:.1f}× |"
            )
    out = {"benchmark": "sampler", "cases": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
