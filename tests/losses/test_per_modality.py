"""``sdm_per_modality``: SDM of every query modality against the anchor modality, in one call.

References, written here or tested elsewhere against references written there:

* ``reference_sdm`` (tests/losses/test_sdm_objectives.py): a per-row float64 loop with explicit
  target distributions, used for every per-modality entry (also with an empty anchor side);
* a loop of single-modality ``sdm_loss`` calls on rows selected by boolean indexing, the
  behaviour the function promises to equal;
* the renormalised weighted total written out from those.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmreid import Modality, PairCoverageMeter, PerModalitySDMResult, sdm_per_modality
from sdmreid.losses import sdm_loss
from tests.losses.test_sdm import HostReads
from tests.losses.test_sdm_objectives import reference_sdm

F64 = torch.float64
FORMS = [(o, d) for o in ("kl", "ce") for d in ("sum", "mean")]


def feats(n, d, seed, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64).requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------------------
# the reference: one call per modality, renormalised weights
# ----------------------------------------------------------------------------------------------


def reference(x, labels, mods, mem, *, anchor=0, queries=(1, 2, 3, 4), weights=None,
              scale=50.0, objective="kl", directions="sum", pooled=False):  # fmt: skip
    """Per-entry reference tuples and the total, from ``reference_sdm`` on selected rows."""
    labels, mods = [int(v) for v in labels], [int(v) for v in mods]
    mf, ml = (mem[0], [int(v) for v in mem[1]]) if mem is not None else (None, [])
    a_idx = [i for i, m in enumerate(mods) if m == anchor]
    gal, gl = x[a_idx], [labels[i] for i in a_idx]

    def call(idx):
        return reference_sdm(x[idx], gal, [labels[i] for i in idx], gl, mf, ml, scale, 1e-8,
                             objective, directions)  # fmt: skip

    if pooled:
        idx = [i for i, m in enumerate(mods) if m in queries]
        return {"total": call(idx), "entries": None}
    entries, valid = {}, {}
    for q in queries:
        idx = [i for i, m in enumerate(mods) if m == q]
        entries[q] = (idx, call(idx))
        _, _, _, miss1, miss2, _, _ = entries[q][1]
        valid[q] = (len(idx) - miss1) + (len(a_idx) - miss2) if idx else 0
    w = {q: (1.0 if weights is None else weights.get(q, 1.0)) for q in queries}
    norm = sum(w[q] for q in queries if valid[q] > 0)
    eff = {q: (w[q] / norm if valid[q] > 0 and norm > 0 else 0.0) for q in queries}
    total = sum(eff[q] * entries[q][1][0] for q in queries) + 0.0 * x.sum()
    return {"total": total, "entries": entries, "weights": eff, "anchors": a_idx}


def close(a, b, rtol=1e-8, atol=1e-9):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def check_entry(entry, idx, ref, n_anchors):
    """One per-modality entry against the reference of its single-modality call."""
    loss, l1, l2, miss1, miss2, mass1, mass2 = ref
    b = len(idx)
    n = n_anchors if b else 0  # an absent modality has zero counts
    close(entry.loss, loss.detach() if b else torch.zeros((), dtype=F64))
    close(entry.loss_query_to_gallery, l1.detach() if b else torch.zeros((), dtype=F64))
    close(entry.loss_gallery_to_query, l2.detach() if b else torch.zeros((), dtype=F64))
    want_miss2 = miss2 if b else 0
    counts = {
        "query_rows": b,
        "gallery_rows": n,
        "rows": b + n,
        "query_rows_without_positive": miss1,
        "gallery_rows_without_positive": want_miss2,
        "rows_without_positive": miss1 + want_miss2,
    }
    for name, want in counts.items():
        got = getattr(entry, name)
        assert got.dtype == torch.int64 and got.dim() == 0, name
        assert int(got) == want, (name, int(got), want)
    assert float(entry.positive_mass_query_to_gallery) == pytest.approx(mass1, abs=1e-9)
    assert float(entry.positive_mass_gallery_to_query) == pytest.approx(mass2, abs=1e-9)


def pooled_counts(labels, mods, mem_labels, anchor, queries):
    """Counts of the pooled call, by brute force: each query row and each anchor row once."""
    labels, mods = [int(v) for v in labels], [int(v) for v in mods]
    q_idx = [i for i, m in enumerate(mods) if m in queries]
    a_idx = [i for i, m in enumerate(mods) if m == anchor]
    gallery_labels = {labels[i] for i in a_idx} | {int(v) for v in mem_labels}
    query_labels = {labels[i] for i in q_idx}
    q_miss = sum(labels[i] not in gallery_labels for i in q_idx)
    a_miss = sum(labels[i] not in query_labels for i in a_idx)
    return {
        "rows": len(q_idx) + len(a_idx),
        "rows_without_positive": q_miss + a_miss,
        "query_rows": len(q_idx),
        "query_rows_without_positive": q_miss,
        "gallery_rows": len(a_idx),
        "gallery_rows_without_positive": a_miss,
    }


@st.composite
def batches(draw, max_rows=12):
    """A batch mixing modalities (some absent, some without positives), memory or not, a
    random anchor, query modality subset, weights and loss form."""
    b = draw(st.integers(1, max_rows))
    anchor = draw(st.sampled_from([0, 0, 0, 1, 4]))
    others = [m for m in range(5) if m != anchor]
    queries = draw(st.lists(st.sampled_from(others), min_size=1, max_size=4, unique=True))
    mods = draw(st.lists(st.integers(0, 4), min_size=b, max_size=b))
    k = draw(st.integers(1, 5))
    labels = draw(st.lists(st.integers(0, k), min_size=b, max_size=b))
    m = draw(st.sampled_from([0, 0, 1, 3]))
    mem_labels = draw(st.lists(st.integers(0, k + 2), min_size=m, max_size=m))
    weights = draw(
        st.none()
        | st.dictionaries(st.sampled_from(queries), st.sampled_from([0.0, 0.5, 1.0, 3.0])).filter(
            lambda w: any(w.values()) or len(w) < len(queries)
        )
    )
    objective, directions = draw(st.sampled_from(FORMS))
    return SimpleNamespace(
        b=b, d=draw(st.integers(1, 8)), anchor=anchor, queries=tuple(queries), mods=mods,
        labels=labels, m=m, mem_labels=mem_labels, weights=weights, objective=objective,
        directions=directions, scale=draw(st.floats(1.0, 60.0)), seed=draw(st.integers(0, 999)),
    )  # fmt: skip


def run(case, **kwargs):
    x = feats(case.b, case.d, case.seed)
    mem = None
    if case.m:
        mem = (feats(case.m, case.d, case.seed + 1, requires_grad=False),
               torch.tensor(case.mem_labels))  # fmt: skip
    s = torch.tensor(case.scale, dtype=F64, requires_grad=True)
    res = sdm_per_modality(
        x, torch.tensor(case.labels), torch.tensor(case.mods), mem, anchor=case.anchor,
        query_modalities=case.queries, weights=case.weights, logit_scale=s,
        objective=case.objective, directions=case.directions, **kwargs,
    )  # fmt: skip
    return x, mem, s, res


# ----------------------------------------------------------------------------------------------
# per-modality mode: the loop of single-modality calls
# ----------------------------------------------------------------------------------------------


@given(case=batches())
@settings(max_examples=80)
def test_per_modality_equals_the_loop_of_single_modality_calls(case):
    x, mem, s, res = run(case)
    ref = reference(x, case.labels, case.mods, mem, anchor=case.anchor, queries=case.queries,
                    weights=case.weights, scale=s, objective=case.objective,
                    directions=case.directions)  # fmt: skip
    assert list(res.per_modality) == [Modality(q) for q in case.queries]
    for q in case.queries:
        idx, r = ref["entries"][q]
        check_entry(res.per_modality[Modality(q)], idx, r, len(ref["anchors"]))
    close(res.weights, torch.tensor([ref["weights"][q] for q in case.queries], dtype=F64))
    close(res.loss, ref["total"])
    # gradients of the total (embeddings and the learnable scale) against the reference's
    got = torch.autograd.grad(res.loss, [x, s])
    want = torch.autograd.grad(ref["total"], [x, s], allow_unused=True)
    for a, w, t in zip(got, want, [x, s], strict=True):
        close(a, torch.zeros_like(t) if w is None else w)
    # the aggregated counts count each row once: those of the pooled call
    counts = pooled_counts(case.labels, case.mods, case.mem_labels, case.anchor, case.queries)
    for name, want_count in counts.items():
        assert int(getattr(res, name)) == want_count, name


@pytest.mark.parametrize(("objective", "directions"), FORMS)
def test_entries_equal_sdm_loss_field_by_field(objective, directions):
    """The promise in the docs, checked with sdm_loss itself on boolean-indexed rows."""
    x = feats(14, 6, 3)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 9, 0, 3, 3, 1, 2, 7])
    mods = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 4, 4, 4, 0])
    mem = (feats(4, 6, 4, requires_grad=False), torch.tensor([9, 1, 5, 2]))
    res = sdm_per_modality(x, labels, mods, mem, objective=objective, directions=directions,
                           logit_scale=20.0)  # fmt: skip
    a = mods == 0
    for q in (Modality.NIR, Modality.SKETCH, Modality.TEXT):
        r = mods == q
        want = sdm_loss(x[r], x[a], labels[r], labels[a], mem, logit_scale=20.0,
                        objective=objective, directions=directions)  # fmt: skip
        got = res.per_modality[q]
        for f in dataclasses.fields(want):
            close(getattr(got, f.name), getattr(want, f.name).detach(), rtol=1e-10, atol=1e-12)
    cp = res.per_modality[Modality.CPENCIL]  # absent: zero counts and a zero loss
    assert int(cp.rows) == 0 and int(cp.gallery_rows) == 0 and float(cp.loss.detach()) == 0.0
    assert res.weights.tolist() == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_each_modality_softmax_is_stable_when_modalities_lie_far_apart(dtype):
    """At a large scale one modality's logits lie thousands below another's: each (row,
    modality) softmax subtracts its own maximum, so nothing underflows to -inf or NaN."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 8, generator=gen, dtype=F64)
    x = torch.cat(
        [
            base + 0.01 * torch.randn(4, 8, generator=gen, dtype=F64),  # RGB
            base + 0.01 * torch.randn(3, 8, generator=gen, dtype=F64),  # NIR: close
            -base + 0.01 * torch.randn(3, 8, generator=gen, dtype=F64),
        ]
    )  # SKETCH: opposite
    x = x.to(dtype).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0, 1, 3])
    mods = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    res = sdm_per_modality(x, labels, mods, query_modalities=["nir", "sketch"],
                           logit_scale=2000.0, objective="ce")  # fmt: skip
    res.loss.backward()
    assert torch.isfinite(res.loss) and torch.isfinite(x.grad).all()
    a = mods == 0
    for q in (Modality.NIR, Modality.SKETCH):
        r = mods == q
        want = sdm_loss(x[r], x[a], labels[r], labels[a], logit_scale=2000.0, objective="ce")
        tol = 1e-3 if dtype == torch.float32 else 1e-9  # float32 logits near 2000: ulp 1e-4
        torch.testing.assert_close(res.per_modality[q].loss, want.loss, rtol=tol, atol=tol)


def test_weights_renormalise_over_modalities_with_a_valid_row():
    x = feats(8, 5, 0)
    labels = torch.tensor([0, 1, 0, 1, 7, 8, 1, 0])
    mods = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])  # SKETCH rows have no positive anywhere
    w = {"nir": 1.0, "sk": 5.0, "cp": 2.0, "text": 1.0}
    res = sdm_per_modality(x, labels, mods, weights=w)
    assert res.weights.tolist() == pytest.approx([0.25, 0.0, 0.5, 0.25])
    entries = [res.per_modality[m].loss for m in (Modality.NIR, Modality.CPENCIL, Modality.TEXT)]
    close(res.loss, 0.25 * entries[0] + 0.5 * entries[1] + 0.25 * entries[2])


def test_a_modality_not_named_in_weights_weighs_one():
    x = feats(6, 5, 0)
    labels, mods = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    a = sdm_per_modality(x, labels, mods, query_modalities=["nir", "sk"], weights={"nir": 3.0})
    b = sdm_per_modality(x, labels, mods, query_modalities=["nir", "sk"],
                         weights={"nir": 3.0, "sketch": 1.0})  # fmt: skip
    assert a.weights.tolist() == pytest.approx([0.75, 0.25])
    close(a.loss, b.loss, rtol=0, atol=0)


def test_memory_only_positive_and_no_anchor_rows():
    """Without anchor rows, a query row with a memory positive is still valid (query → gallery
    over the memory alone), as the reference loop with an empty gallery says."""
    x = feats(4, 5, 0)
    labels, mods = torch.tensor([3, 4, 3, 9]), torch.tensor([1, 1, 2, 2])
    mem = (feats(3, 5, 1, requires_grad=False), torch.tensor([3, 3, 4]))
    res = sdm_per_modality(x, labels, mods, mem, query_modalities=["nir", "sketch"])
    ref = reference(x, labels, mods, mem, queries=(1, 2))
    close(res.loss, ref["total"])
    assert int(res.gallery_rows) == 0 and int(res.query_rows_without_positive) == 1
    assert int(res.per_modality[Modality.SKETCH].gallery_rows) == 0


@pytest.mark.parametrize("pooled", [False, True])
def test_no_valid_modality_gives_a_zero_loss_attached_to_the_graph(pooled):
    x = feats(5, 4, 0)
    labels, mods = torch.tensor([0, 1, 5, 6, 7]), torch.tensor([0, 0, 1, 2, 3])
    res = sdm_per_modality(x, labels, mods, mode="pooled" if pooled else "per_modality")
    assert float(res.loss.detach()) == 0.0 and res.loss.requires_grad
    (gx,) = torch.autograd.grad(res.loss, [x])
    assert torch.equal(gx, torch.zeros_like(x))
    assert res.weights.tolist() == [0.0] * 4
    assert int(res.rows_without_positive) == int(res.rows) == 5


# ----------------------------------------------------------------------------------------------
# pooled mode: sdm_loss on every configured query row
# ----------------------------------------------------------------------------------------------


@given(case=batches())
@settings(max_examples=50)
def test_pooled_equals_one_call_on_every_configured_query_row(case):
    case.weights = None
    x, mem, s, res = run(case, mode="pooled")
    ref = reference(x, case.labels, case.mods, mem, anchor=case.anchor, queries=case.queries,
                    scale=s, objective=case.objective, directions=case.directions,
                    pooled=True)["total"]  # fmt: skip
    loss, l1, l2, miss1, miss2, _, _ = ref
    close(res.loss, loss)
    close(res.loss_query_to_gallery, l1.detach())
    close(res.loss_gallery_to_query, l2.detach())
    counts = pooled_counts(case.labels, case.mods, case.mem_labels, case.anchor, case.queries)
    assert counts["query_rows_without_positive"] == miss1
    if counts["gallery_rows"]:
        assert counts["gallery_rows_without_positive"] == miss2
    for name, want in counts.items():
        assert int(getattr(res, name)) == want, name
    got = torch.autograd.grad(res.loss, [x, s])
    want = torch.autograd.grad(loss + 0.0 * x.sum(), [x, s], allow_unused=True)
    for a, w, t in zip(got, want, [x, s], strict=True):
        close(a, torch.zeros_like(t) if w is None else w)
    # entries: each modality's query rows inside the pooled softmax; weights = their share
    valid = []
    for q in case.queries:
        e = res.per_modality[Modality(q)]
        rows = [i for i, m in enumerate(case.mods) if m == q]
        assert int(e.query_rows) == len(rows) == int(e.rows)
        assert int(e.gallery_rows) == 0 and float(e.loss_gallery_to_query) == 0.0
        valid.append(len(rows) - int(e.query_rows_without_positive))
    share = [v / max(1, sum(valid)) for v in valid]
    close(res.weights, torch.tensor(share, dtype=F64))
    close((res.weights * torch.stack([res.per_modality[Modality(q)].loss_query_to_gallery
                                      for q in case.queries])).sum(),
          res.loss_query_to_gallery)  # fmt: skip


def test_aggregated_counts_are_the_same_in_both_modes():
    x = feats(10, 4, 1)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2, 4, 4])
    mods = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 4])
    a = sdm_per_modality(x, labels, mods)
    b = sdm_per_modality(x, labels, mods, mode="pooled")
    names = ["rows", "rows_without_positive", "query_rows", "query_rows_without_positive",
             "gallery_rows", "gallery_rows_without_positive"]  # fmt: skip
    assert [int(getattr(a, n)) for n in names] == [int(getattr(b, n)) for n in names]
    assert [int(getattr(a, n)) for n in names] == [10, 3, 7, 3, 3, 0]
    for m in a.per_modality:  # per-modality query counts agree too
        assert int(a.per_modality[m].query_rows_without_positive) == int(
            b.per_modality[m].query_rows_without_positive
        )


# ----------------------------------------------------------------------------------------------
# no host synchronisation, the result type, options
# ----------------------------------------------------------------------------------------------


class HostReadsAndNonzero(HostReads):
    """Also counts the operations whose output size depends on the data (they wait for the
    device): ``nonzero``, ``masked_select`` and indexing with a boolean mask."""

    def __init__(self):
        super().__init__()
        self.nonzero = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        data_sized = func in (torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default)
        if func is torch.ops.aten.index.Tensor:
            data_sized = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        self.nonzero += int(data_sized)
        return super().__torch_dispatch__(func, types, args, kwargs)


def test_the_spy_sees_boolean_indexing_and_nonzero():
    x, mask = torch.randn(5, 3), torch.tensor([True, False, True, False, True])
    for select in (lambda: x[mask], lambda: mask.nonzero(), lambda: x.masked_select(mask[:, None])):
        with HostReadsAndNonzero() as spy:
            select()
        assert spy.nonzero == 1


@pytest.mark.parametrize("mode", ["per_modality", "pooled"])
def test_ignore_reads_nothing_from_the_device(mode):
    x = feats(9, 6, 0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 5, 1])
    mods = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 4])
    mem = (feats(4, 6, 1, requires_grad=False), torch.tensor([5, 1, 1, 8]))
    weights = {"nir": 2.0} if mode == "per_modality" else None
    with HostReadsAndNonzero() as spy:
        res = sdm_per_modality(x, labels, mods, mem, mode=mode, weights=weights,
                               on_nonfinite="ignore")  # fmt: skip
        res.loss.backward()
    assert spy.reads == 0 and spy.nonzero == 0
    with HostReadsAndNonzero() as spy:
        sdm_per_modality(x, labels, mods, mem, mode=mode, weights=weights)
    assert spy.reads == 1 and spy.nonzero == 0  # "raise": the one finiteness read
    with HostReads() as spy:
        logged = res.scalars()
    assert spy.reads == 0  # one stacked transfer (tolist), no read per field
    assert logged["finite"] == 1.0 and logged["rows"] == 9.0
    assert logged["nir/query_rows"] == 2.0 and "weight/text" in logged


def test_result_is_frozen_and_feeds_the_coverage_meter():
    x = feats(6, 4, 0)
    labels, mods = torch.tensor([0, 1, 0, 1, 0, 9]), torch.tensor([0, 0, 1, 1, 2, 2])
    res = sdm_per_modality(x, labels, mods, query_modalities=["nir", "sketch"])
    assert isinstance(res, PerModalitySDMResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.loss = res.loss  # type: ignore[misc]
    meter = PairCoverageMeter(window=10)
    meter.update(res)
    assert float(meter.compute()) == pytest.approx(1 - 1 / 6)
    sk = res.per_modality[Modality.SKETCH]
    assert (int(sk.query_rows), int(sk.query_rows_without_positive)) == (2, 1)


def test_modality_names_and_codes_give_the_same_result():
    x = feats(6, 4, 0)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    a = sdm_per_modality(x, labels, torch.tensor([0, 0, 1, 1, 4, 4]))
    names = ["vis", "RGB", "ir", "nir", "caption", "txt"]
    queries = ["thermal", "sk", "cp", "text"]
    b = sdm_per_modality(x, labels, names, anchor="visible", query_modalities=queries)
    close(a.loss, b.loss, rtol=0, atol=0)


def test_another_anchor_and_rows_of_unconfigured_modalities_take_no_part():
    x = feats(8, 5, 2)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    mods = torch.tensor([1, 1, 4, 4, 0, 0, 2, 2])
    res = sdm_per_modality(x, labels, mods, anchor="nir", query_modalities=["text"])
    n, t = mods == 1, mods == 4
    want = sdm_loss(x[t], x[n], labels[t], labels[n])
    close(res.loss, want.loss)
    assert int(res.rows) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_give_a_float32_result_close_to_float64(dtype):
    x64 = feats(12, 8, 5, requires_grad=False)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 9])
    mods = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 4])
    res = sdm_per_modality(x64.to(dtype), labels, mods, logit_scale=10.0)
    want = sdm_per_modality(x64.to(dtype).to(F64), labels, mods, logit_scale=10.0)
    assert res.loss.dtype == torch.float32
    torch.testing.assert_close(res.loss.double(), want.loss, rtol=1e-5, atol=1e-5)


def test_gather_without_a_process_group_is_a_noop():
    x = feats(6, 4, 0)
    labels, mods = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    a = sdm_per_modality(x, labels, mods, gather=True)
    b = sdm_per_modality(x, labels, mods)
    close(a.loss, b.loss, rtol=0, atol=0)


@pytest.mark.parametrize("directions", ["sum", "mean"])
@pytest.mark.parametrize("mode", ["per_modality", "pooled"])
def test_compiled_matches_eager(mode, directions):
    x = feats(12, 6, 7)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 5, 0, 2, 2])
    mods = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 4, 4, 0])
    mem = (feats(3, 6, 8, requires_grad=False), torch.tensor([5, 1, 7]))
    kw = {"mode": mode, "objective": "ce", "directions": directions, "logit_scale": 15.0}
    eager = sdm_per_modality(x, labels, mods, mem, **kw)
    comp = sdm_per_modality(x, labels, mods, mem, compiled=True, **kw)
    close(comp.loss, eager.loss)
    for m in eager.per_modality:
        close(comp.per_modality[m].loss, eager.per_modality[m].loss)
        assert comp.per_modality[m].loss.requires_grad  # entries stay attached when compiled
    comp.loss.backward()  # (a compiled backward runs once)
    want = torch.autograd.grad(eager.loss, [x])[0]
    close(x.grad, want)


# ----------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------

X = torch.randn(4, 3)
LAB = torch.tensor([0, 1, 0, 1])
MODS = torch.tensor([0, 0, 1, 2])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"modalities": ["rgb", "rgb", "depth", "nir"]}, ValueError, "unknown modality 'depth'"),
        ({"modalities": torch.tensor([0, 0, 1])}, ValueError, "modalities has 3 entries"),
        ({"modalities": MODS.float()}, ValueError, "modalities must hold Modality codes"),
        ({"modalities": MODS[None]}, ValueError, "modalities must be 1-D"),
        ({"modalities": torch.tensor([0, 0, 1, 7])}, ValueError, "modalities holds codes \\[7\\]"),
        ({"anchor": "depth"}, ValueError, "anchor: unknown modality 'depth'"),
        ({"query_modalities": ["nir", "depth"]}, ValueError, "query_modalities: unknown"),
        ({"query_modalities": []}, ValueError, "query_modalities must name at least one"),
        ({"query_modalities": ["rgb", "nir"]}, ValueError, "must not contain the anchor"),
        ({"query_modalities": ["nir", "ir"]}, ValueError, "query_modalities names a modality"),
        ({"query_modalities": "nir"}, TypeError, "query_modalities must be a sequence"),
        ({"weights": {"rgb": 1.0}}, ValueError, "weights names RGB, which is not a query"),
        ({"query_modalities": ["nir"], "weights": {"sk": 1.0}}, ValueError, "weights names"),
        ({"weights": {"nir": -1.0}}, ValueError, "weights\\['nir'\\] must be finite and >= 0"),
        ({"weights": {"nir": math.nan}}, ValueError, "weights\\['nir'\\] must be finite"),
        ({"weights": {"nir": math.inf}}, ValueError, "weights\\['nir'\\] must be finite"),
        ({"weights": {"nir": "1"}}, TypeError, "weights\\['nir'\\] must be a float"),
        ({"weights": {"nir": True}}, TypeError, "weights\\['nir'\\] must be a float"),
        ({"weights": {"nir": 1.0, "ir": 2.0}}, ValueError, "weights names NIR twice"),
        ({"weights": {"bogus": 1.0}}, ValueError, "weights: unknown modality 'bogus'"),
        ({"weights": [1.0, 2.0]}, TypeError, "weights must be a mapping"),
        ({"weights": dict.fromkeys(["nir", "sk", "cp", "text"], 0.0)}, ValueError,
         "weights must not all be 0"),
        ({"weights": {"nir": 1.0}, "mode": "pooled"}, ValueError, "weights apply to mode="),
        ({"mode": "mean"}, ValueError, "mode must be 'per_modality' or 'pooled'"),
        ({"objective": "mse"}, ValueError, "objective must be 'kl' or 'ce'"),
        ({"directions": "max"}, ValueError, "directions must be 'sum' or 'mean'"),
        ({"embeddings": X[:, :0]}, ValueError, "embeddings must have a feature dimension"),
        ({"embeddings": torch.full((4, 3), math.nan)}, ValueError, "embeddings contains NaN"),
        ({"labels": LAB[:3]}, ValueError, "labels has 3 labels"),
        ({"memory": (torch.randn(2, 5), LAB[:2])}, ValueError, "memory features has feature"),
        ({"logit_scale": 0.0}, ValueError, "logit_scale must be finite and > 0"),
        ({"gather": 1}, TypeError, "gather"),
        ({"compiled": "fast"}, ValueError, "compiled must be a bool or one of"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_argument(kwargs, exc, match):
    args = {"embeddings": X, "labels": LAB, "modalities": MODS}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sdm_per_modality(**args)


def test_unknown_codes_take_no_part_under_ignore():
    """A tensor's codes are checked by the 'raise' read; without it a bad code plays no role."""
    x = feats(5, 4, 0)
    labels = torch.tensor([0, 1, 0, 1, 0])
    a = sdm_per_modality(x, labels, torch.tensor([0, 0, 1, 1, 9]), on_nonfinite="ignore")
    b = sdm_per_modality(x[:4], labels[:4], torch.tensor([0, 0, 1, 1]))
    close(a.loss, b.loss)
    assert int(a.rows) == 4
