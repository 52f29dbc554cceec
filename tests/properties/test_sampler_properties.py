"""Hypothesis property suite of the P×K samplers (the guarantees of DESIGN §4 and the docs).

Every check is computed from the batches with plain Python / NumPy (tests/samplers/reference.py),
never from the sampler's internals. Layouts have one modality per item or, mixed, items carrying
several modalities (given to the samplers in any accepted form).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdmreid.samplers import ModalAwarePKSampler, ModalAwarePKSampler_Strict, coverage_report
from tests.samplers.reference import (
    brute_coverage,
    index_counts,
    item_sets,
    layout_stats,
    oversampling_draws,
    split_chunks,
)
from tests.strategies import (
    label_modality_layouts,
    label_modality_set_layouts,
    modality_set_forms,
)


@st.composite
def layouts(draw: st.DrawFn, max_ids: int = 12, max_per_id: int = 12) -> tuple[Any, Any, Any]:
    """(labels, modalities as given to the samplers, modalities for the references).

    Either one modality code per item, or modality sets (single and multi-modality items mixed)
    in a random accepted form; the references read the codes or the ``[n, 5]`` bool array.
    """
    if draw(st.booleans()):
        labels, mods = draw(label_modality_layouts(max_ids=max_ids, max_per_id=max_per_id))
        return labels, mods, mods
    labels, mask = draw(label_modality_set_layouts(max_ids=max_ids, max_per_id=max_per_id))
    return labels, draw(modality_set_forms(mask)), mask


@st.composite
def sampler_cases(draw: st.DrawFn, max_ids: int = 12, max_per_id: int = 12) -> dict[str, Any]:
    """A layout plus sampler settings: P in [1, #ids], K in [1, 5], replicas in [1, 3].

    K stays where the samplers accept it: its draws with replacement do not outnumber the samples.
    """
    labels, mods, ref = draw(layouts(max_ids=max_ids, max_per_id=max_per_id))
    n_ids = len(set(labels.tolist()))
    k_max = max(k for k in range(1, 6) if oversampling_draws(labels.tolist(), k) <= len(labels))
    return {
        "labels": labels,
        "mods": mods,
        "ref": ref,
        "P": draw(st.integers(1, n_ids)),
        "K": draw(st.integers(1, k_max)),
        "seed": draw(st.integers(0, 2**16)),
        "epoch": draw(st.integers(1, 6)),
        "replicas": draw(st.integers(1, 3)),
        "strict": draw(st.booleans()),
        "fallback_ratio": draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
    }


def strong_labels(stats: dict[int, dict[str, int]], k: int) -> set[int]:
    """Identities whose every chunk must hold a pair in the strict sampler.

    K >= 2: pairable ones (an item carrying RGB and one carrying non-RGB, maybe the same item);
    K == 1: those whose every item carries both.
    """
    key = "pairable" if k >= 2 else "all_both"
    return {lab for lab, s in stats.items() if s[key]}


def make(case: dict[str, Any], rank: int = 0, replicas: int | None = None, **kw: Any) -> Any:
    common = {
        "seed": case["seed"],
        "num_replicas": case["replicas"] if replicas is None else replicas,
        "rank": rank,
    }
    if case["strict"]:
        s: Any = ModalAwarePKSampler_Strict(
            case["labels"],
            case["mods"],
            case["P"],
            case["K"],
            fallback_ratio=case["fallback_ratio"],
            **common,
            **kw,
        )
    else:
        s = ModalAwarePKSampler(case["labels"], case["mods"], case["P"], case["K"], **common)
    s.set_epoch(case["epoch"])
    return s


def streams(case: dict[str, Any], replicas: int | None = None) -> list[list[list[int]]]:
    r = case["replicas"] if replicas is None else replicas
    out = []
    for rank in range(r):
        s = make(case, rank=rank, replicas=r)
        stream = list(s)
        assert len(s) == len(stream)  # len() is exact
        out.append(stream)
    return out


def max_repeats(case: dict[str, Any]) -> dict[int, int]:
    """How often each dataset index may occur in one epoch (all ranks together).

    A paired identity's side with fewer items than chunks (items carrying RGB, or items carrying
    a non-RGB modality) is reused so each chunk gets one; everything else is used at most once.
    """
    k = case["K"]
    stats = layout_stats(case["labels"], case["ref"], k)
    allowed: dict[int, int] = {}
    sets = item_sets(case["ref"])
    for i, (lab, m) in enumerate(zip(case["labels"].tolist(), sets, strict=True)):
        st_ = stats[lab]
        if st_["n"] < k:
            allowed[i] = k - st_["n"] + 1
        elif case["strict"] and k >= 2 and st_["pairable"]:
            short = (0 in m and st_["rgb"] < st_["chunks"]) or (
                bool(m - {0}) and st_["non"] < st_["chunks"]
            )
            allowed[i] = st_["chunks"] if short else 1
        else:
            allowed[i] = 1
    return allowed


@given(sampler_cases())
def test_batches_are_exact_pk_and_ranks_are_disjoint(case: dict[str, Any]) -> None:
    labels, p, k, r = case["labels"], case["P"], case["K"], case["replicas"]
    n_ids = len(set(labels.tolist()))
    all_streams = streams(case)
    assert len({len(s) for s in all_streams}) == 1  # equally long rank streams
    for stream in all_streams:
        for batch in stream:
            assert len(batch) == p * k  # no empty / short batch
            assert all(type(i) is int and 0 <= i < len(labels) for i in batch)
            per_id = Counter(labels[batch].tolist())
            assert len(per_id) == p
            assert set(per_id.values()) == {k}
    if p * r <= n_ids:
        for step in zip(*all_streams, strict=True):
            seen: set[int] = set()
            for batch in step:
                ids = set(labels[batch].tolist())
                assert not ids & seen  # same step, different ranks: no shared identity
                seen |= ids
    # disjoint streams: an index occurs (over all ranks) at most as often as its identity allows
    allowed = max_repeats(case)
    for i, n in index_counts(all_streams).items():
        assert n <= allowed[i], (i, n, allowed[i])


@given(sampler_cases())
def test_strict_pairs_and_fallback_cap(case: dict[str, Any]) -> None:
    case = {**case, "strict": True}
    labels, p, k, r = case["labels"], case["P"], case["K"], case["replicas"]
    sets = item_sets(case["ref"])
    n_ids = len(set(labels.tolist()))
    if p * r > n_ids:
        r = 1  # the cap is stated for the shared-step layout; strided replicas checked elsewhere
    stats = layout_stats(labels, case["ref"], k)
    strong = strong_labels(stats, k)
    cap = math.ceil(case["fallback_ratio"] * p)
    all_streams = streams(case, replicas=r)
    n_steps = len(all_streams[0])
    # pairable identities appearing at step >= t, over all ranks
    remaining: list[set[int]] = [set() for _ in range(n_steps + 1)]
    for t in range(n_steps - 1, -1, -1):
        remaining[t] = set(remaining[t + 1])
        for stream in all_streams:
            remaining[t] |= {lab for lab in labels[stream[t]].tolist() if lab in strong}
    for stream in all_streams:
        for t, batch in enumerate(stream):
            chunks = split_chunks(batch, labels)
            n_fallback = 0
            for lab, idx in chunks.items():
                if lab in strong:
                    # an item carrying RGB and one carrying a non-RGB modality (maybe the same)
                    assert any(0 in sets[i] for i in idx), "pairable identity without RGB"
                    assert any(sets[i] - {0} for i in idx), "pairable identity without non-RGB"
                else:
                    n_fallback += 1
            if strong:
                assert n_fallback <= max(cap, p - len(remaining[t]) // r)


@given(sampler_cases())
def test_epoch_visits_every_sample_about_once(case: dict[str, Any]) -> None:
    case = {**case, "replicas": 1}
    labels, p, k = case["labels"], case["P"], case["K"]
    stats = layout_stats(labels, case["ref"], k)
    (stream,) = streams(case)
    nb = len(stream)
    app: Counter[int] = Counter()
    distinct: dict[int, set[int]] = {lab: set() for lab in stats}
    for batch in stream:
        for lab, idx in split_chunks(batch, labels).items():
            app[lab] += 1
            distinct[lab] |= set(idx)
    deficit = 0
    for lab, s in stats.items():
        a = app[lab]
        assert a <= min(s["chunks"], nb)  # at most one chunk per batch, at most c_i chunks
        deficit += min(s["chunks"], nb) - a
        strong = case["strict"] and k >= 2 and s["pairable"]
        if a == 0:
            continue
        if s["n"] < k:
            assert len(distinct[lab]) == s["n"]  # all samples, plus draws with replacement
        elif strong:
            # only the side with fewer items than chunks repeats, once per chunk beyond it
            assert len(distinct[lab]) == k * a - max(0, a - min(s["rgb"], s["non"]))
        else:
            assert len(distinct[lab]) == k * a  # every used sample exactly once
    if not case["strict"] or case["fallback_ratio"] == 1.0:
        # identities appear in proportion to their size: only fewer than P chunks are left over
        assert deficit < p
    if nb == 0:
        assert sum(min(s["chunks"], 1) for s in stats.values()) < p or case["strict"]


@given(sampler_cases(), st.data())
def test_deterministic_and_resumable(case: dict[str, Any], data: st.DataObject) -> None:
    rank = data.draw(st.integers(0, case["replicas"] - 1))
    full = list(make(case, rank=rank))
    assert list(make(case, rank=rank)) == full  # same seed + epoch -> same batches
    cut = data.draw(st.integers(0, len(full)))
    s = make(case, rank=rank)
    head = list(itertools.islice(iter(s), cut))
    state = json.loads(json.dumps(s.state_dict()))  # ints only, JSON-serialisable
    resumed = make({**case, "epoch": case["epoch"] % 6 + 1}, rank=rank)  # another epoch
    resumed.load_state_dict(state)
    assert head + list(resumed) == full  # resume equals uninterrupted
    assert list(resumed) == full  # the following iteration starts the epoch again


@given(sampler_cases(max_ids=10, max_per_id=10))
def test_strict_full_coverage_when_every_identity_pairable(case: dict[str, Any]) -> None:
    labels, k = case["labels"], case["K"]
    stats = layout_stats(labels, case["ref"], k)
    case = {**case, "strict": True}
    stream = list(make(case))
    if len(strong_labels(stats, k)) == len(stats) and stream:
        assert coverage_report(stream, labels, case["mods"]).coverage == 1.0


@given(layouts(max_ids=6, max_per_id=6), st.data())
def test_coverage_report_matches_bruteforce(layout: tuple[Any, Any, Any], data: Any) -> None:
    labels, mods, ref = layout
    n = len(labels)
    batches = data.draw(
        st.lists(st.lists(st.integers(0, n - 1), min_size=0, max_size=10), max_size=5)
    )
    rep = coverage_report(batches, labels, mods)
    rows, missing = brute_coverage(batches, labels.tolist(), ref)
    assert (rep.rows, rep.rows_without_positive) == (rows, missing)
    if rows:
        assert rep.coverage == 1 - missing / rows
    else:
        assert math.isnan(rep.coverage)


@given(sampler_cases(), st.data())
def test_every_form_of_the_same_sets_gives_the_same_batches(
    case: dict[str, Any], data: st.DataObject
) -> None:
    """Codes, bool arrays/tensors and per-item collections naming the same sets are one input."""
    ref = np.asarray(case["ref"])
    mask = ref if ref.ndim == 2 else np.eye(5, dtype=np.bool_)[ref]
    other = data.draw(modality_set_forms(mask))
    first = make(case)
    second = make({**case, "mods": other})
    assert first.batches().tolist() == second.batches().tolist()
    assert first.state_dict() == second.state_dict()
    a, b = first.coverage_report(), second.coverage_report()
    assert (a.rows, a.rows_without_positive) == (b.rows, b.rows_without_positive)


@given(label_modality_set_layouts(min_ids=2, max_ids=8, max_per_id=6), st.data())
def test_strict_state_is_refused_when_the_modality_sets_change(
    layout: tuple[np.ndarray, np.ndarray], data: st.DataObject
) -> None:
    labels, mask = layout
    changed = mask.copy()
    i = data.draw(st.integers(0, len(labels) - 1))
    new_row = data.draw(
        st.sets(st.integers(0, 4), min_size=1).filter(
            lambda s: s != set(np.flatnonzero(mask[i]).tolist())
        )
    )
    changed[i] = False
    changed[i, sorted(new_row)] = True
    saved = ModalAwarePKSampler_Strict(labels, mask, 1, 1).state_dict()
    target = ModalAwarePKSampler_Strict(labels, changed, 1, 1)
    before = target.state_dict()
    assert saved["modality_digest"] != before["modality_digest"]
    with pytest.raises(ValueError, match="modality_digest"):
        target.load_state_dict(saved)
    assert target.state_dict() == before
    ModalAwarePKSampler_Strict(labels, mask.copy(), 1, 1).load_state_dict(saved)  # same sets
