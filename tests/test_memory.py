"""Tests for sdmreid.memory.CrossBatchMemory against independent references.

Step mode is checked against ``collections.deque(maxlen=N)`` of batches + concatenation (the seed's
code), item mode against a plain Python list of every stored row sliced to its last N entries.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sdmreid.memory import UNKNOWN_MODALITY, CrossBatchMemory, MemoryView
from sdmreid.modality import Modality

DIM = 3

# --- helpers ---------------------------------------------------------------------------------


def make_batch(rng: np.random.Generator, n: int, counter: int, dim: int = DIM):
    """Distinct, recognisable rows: feature[:, 0] is a running row counter."""
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    feats[:, 0] = np.arange(counter, counter + n, dtype=np.float32)
    labels = rng.integers(-5, 1000, size=n)
    mods = rng.integers(0, 5, size=n)
    return torch.from_numpy(feats), torch.from_numpy(labels), torch.from_numpy(mods)


def keep_mask_reference(kind: str, mods: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which rows a keep spec selects, computed without the library."""
    if kind == "none":
        return np.ones(len(mods), dtype=bool)
    if kind in ("mask", "mask_list", "mask_np"):
        return mask
    if kind in ("rgb", "rgb_alias", "rgb_int"):
        return mods == 0
    if kind == "set":
        return (mods == 1) | (mods == 4)
    if kind == "callable":
        return mods >= 2
    raise AssertionError(kind)


def keep_arg(kind: str, mask: np.ndarray):
    return {
        "none": None,
        "mask": torch.from_numpy(mask),
        "mask_list": [bool(x) for x in mask],
        "mask_np": mask,
        "rgb": Modality.RGB,
        "rgb_alias": "Visible",
        "rgb_int": 0,
        "set": {"ir", Modality.TEXT},
        "callable": lambda m: m >= 2,
    }[kind]


KEEP_KINDS = ["none", "mask", "mask_list", "mask_np", "rgb", "rgb_alias", "rgb_int", "set",
              "callable"]  # fmt: skip

steps_strategy = st.lists(
    st.tuples(st.integers(0, 300), st.sampled_from(KEEP_KINDS), st.booleans()),
    min_size=1,
    max_size=14,
)


def assert_memory_equals(mem: CrossBatchMemory, feats, labels, mods) -> None:
    assert len(mem) == feats.shape[0]
    for view in (mem.view(), mem.view(copy=True)):
        assert isinstance(view, MemoryView)
        torch.testing.assert_close(view.features, feats, rtol=0, atol=0)
        assert view.labels.tolist() == labels.tolist()
        assert view.modalities.tolist() == mods.tolist()
        assert view.labels.dtype == torch.int64 and view.modalities.dtype == torch.int64


def run_and_check(mem: CrossBatchMemory, steps, seed: int, reference) -> None:
    rng = np.random.default_rng(seed)
    counter = 0
    for n, kind, with_mods in steps:
        if not with_mods and kind not in ("none", "mask", "mask_list", "mask_np"):
            kind = "mask"
        feats, labels, mods = make_batch(rng, n, counter)
        counter += n
        mask = rng.random(n) < 0.5
        sel = keep_mask_reference(kind, mods.numpy(), mask)
        if kind == "mask_list" and n == 0:
            kind = "mask"  # an empty list cannot be told apart from an empty collection
        stored_mods = mods if with_mods else torch.full((n,), UNKNOWN_MODALITY)
        ret = mem.enqueue(
            feats, labels, modalities=mods if with_mods else None, keep=keep_arg(kind, mask)
        )
        assert ret == int(sel.sum())
        sel_t = torch.from_numpy(sel)
        reference.push(feats[sel_t], labels[sel_t], stored_mods[sel_t])
        assert_memory_equals(mem, *reference.contents())


class DequeReference:
    """The seed: deque(maxlen=N) of per-step tensors, concatenated on read."""

    def __init__(self, n: int) -> None:
        self.q: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=n)

    def push(self, f, lab, m) -> None:
        self.q.append((f.clone(), lab.clone(), m.clone()))

    def contents(self):
        if not self.q:
            return torch.zeros(0, DIM), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        return tuple(torch.cat([e[i] for e in self.q]) for i in range(3))


class ListReference:
    """Item mode: every stored row in a list, the last N of them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[tuple[torch.Tensor, int, int]] = []

    def push(self, f, lab, m) -> None:
        self.rows += [(f[i].clone(), int(lab[i]), int(m[i])) for i in range(f.shape[0])]

    def contents(self):
        last = self.rows[-self.n :]
        if not last:
            return torch.zeros(0, DIM), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        return (
            torch.stack([r[0] for r in last]),
            torch.tensor([r[1] for r in last]),
            torch.tensor([r[2] for r in last]),
        )


# --- contents vs references ------------------------------------------------------------------


@settings(max_examples=40)
@given(max_steps=st.integers(1, 8), steps=steps_strategy, seed=st.integers(0, 2**32 - 1))
def test_step_mode_matches_deque_reference(max_steps, steps, seed):
    mem = CrossBatchMemory(DIM, max_steps=max_steps)
    run_and_check(mem, steps, seed, DequeReference(max_steps))
    assert mem.steps_seen == len(steps)


@settings(max_examples=40)
@given(max_items=st.integers(1, 700), steps=steps_strategy, seed=st.integers(0, 2**32 - 1))
def test_item_mode_matches_list_slice_reference(max_items, steps, seed):
    mem = CrossBatchMemory(DIM, max_items=max_items)
    run_and_check(mem, steps, seed, ListReference(max_items))
    assert len(mem) <= max_items


def test_zero_row_step_evicts_oldest_step():
    mem = CrossBatchMemory(DIM, max_steps=2)
    mem.enqueue(torch.ones(2, DIM), torch.tensor([1, 1]))
    mem.enqueue(torch.ones(3, DIM), torch.tensor([2, 2, 2]))
    mem.enqueue(torch.ones(0, DIM), torch.tensor([], dtype=torch.int64))
    assert mem.view().labels.tolist() == [2, 2, 2]
    mem.enqueue(torch.ones(4, DIM), [3, 3, 3, 3], keep=torch.zeros(4, dtype=torch.bool))
    assert len(mem) == 0 and mem.steps_seen == 4


def test_item_mode_batch_larger_than_capacity_keeps_its_last_rows():
    mem = CrossBatchMemory(DIM, max_items=3)
    mem.enqueue(torch.zeros(2, DIM), [0, 1])
    feats = torch.arange(7 * DIM, dtype=torch.float32).reshape(7, DIM)
    mem.enqueue(feats, list(range(10, 17)), keep=torch.tensor([1, 1, 0, 1, 1, 0, 1]).bool())
    assert mem.view().labels.tolist() == [13, 14, 16]
    torch.testing.assert_close(mem.view().features, feats[[3, 4, 6]])


def test_string_modalities_and_alias_keep():
    mem = CrossBatchMemory(DIM)
    mem.enqueue(
        torch.zeros(4, DIM), [1, 2, 3, 4], modalities=["rgb", "IR", "vis", "sketch"], keep="visible"
    )
    assert mem.view().labels.tolist() == [1, 3]
    assert mem.view().modalities.tolist() == [0, 0]


def test_integer_modality_tensors_are_validated_and_stored_as_int64():
    mem = CrossBatchMemory(DIM)
    for bad in (torch.tensor([0, 5]), torch.tensor([-1, 0], dtype=torch.int8)):
        with pytest.raises(ValueError, match="unknown modality code"):
            mem.enqueue(torch.zeros(2, DIM), [1, 2], modalities=bad)
    seen = []
    mem.enqueue(
        torch.zeros(3, DIM),
        [1, 2, 3],
        modalities=torch.tensor([4, 1, 0], dtype=torch.uint8),
        keep=lambda m: seen.append(m.dtype) or m > 0,
    )
    assert seen == [torch.int64]
    mem.enqueue(
        torch.zeros(2, DIM),
        [4, 5],
        modalities=torch.tensor([2, 3], dtype=torch.int16),
        keep={"sketch"},
    )
    view = mem.view()
    assert view.modalities.tolist() == [4, 1, 2] and view.modalities.dtype == torch.int64
    assert view.labels.tolist() == [1, 2, 4] and len(mem) == 3


def test_modalities_none_stores_unknown():
    mem = CrossBatchMemory(DIM)
    mem.enqueue(torch.zeros(2, DIM), [1, 2])
    assert mem.view().modalities.tolist() == [UNKNOWN_MODALITY] * 2 == [-1, -1]


@pytest.mark.parametrize(
    "single",
    [Modality.NIR, 1, "ir", np.int64(1), torch.tensor(1), torch.tensor(1, dtype=torch.int16)],
)
def test_a_single_modality_applies_to_every_row(single):
    mem = CrossBatchMemory(DIM)
    assert mem.enqueue(torch.zeros(3, DIM), [1, 2, 3], modalities=single) == 3
    assert mem.view().modalities.tolist() == [1, 1, 1]
    # keep selects on the broadcast modality like on a per-row one
    assert mem.enqueue(torch.zeros(3, DIM), [4, 5, 6], modalities=single, keep="rgb") == 0
    assert mem.enqueue(torch.zeros(2, DIM), [7, 8], modalities=single, keep={"nir"}) == 2
    assert mem.enqueue(torch.zeros(0, DIM), [], modalities=single) == 0
    assert mem.view().labels.tolist() == [1, 2, 3, 7, 8]


@pytest.mark.parametrize(
    "rgb",
    [
        Modality.RGB,
        0,
        "rgb",
        "VIS",
        np.int64(0),
        torch.tensor(0),
        torch.tensor(0, dtype=torch.int8),
    ],
)
def test_a_single_rgb_modality_is_broadcast_to_the_batch(rgb):
    # The seed's call: a batch of RGB gallery embeddings stored as RGB, one modality for all rows.
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, DIM, generator=g)
    mem = CrossBatchMemory(DIM, max_steps=3)
    assert mem.enqueue(feats, [3, 1, 4, 1], modalities=rgb) == 4
    assert mem.enqueue(feats[:2], [5, 9], modalities=rgb, keep=Modality.RGB) == 2
    assert mem.enqueue(feats, [2, 6, 5, 3], modalities=rgb, keep={"nir", "sketch"}) == 0
    view = mem.view()
    assert view.modalities.tolist() == [int(Modality.RGB)] * 6
    assert view.modalities.dtype == torch.int64
    assert view.labels.tolist() == [3, 1, 4, 1, 5, 9]
    assert torch.equal(view.features, torch.cat([feats, feats[:2]]))
    assert mem.steps_seen == 3


def test_a_single_unknown_modality_is_refused():
    mem = CrossBatchMemory(DIM)
    with pytest.raises(ValueError, match="unknown modality"):
        mem.enqueue(torch.zeros(2, DIM), [1, 2], modalities=7)
    with pytest.raises(TypeError, match="bool"):
        mem.enqueue(torch.zeros(2, DIM), [1, 2], modalities=True)
    assert len(mem) == 0 and mem.steps_seen == 0


def test_reset_behaves_like_fresh_memory():
    rng = np.random.default_rng(0)
    steps = [(5, "none", True), (9, "rgb", True), (0, "none", True), (4, "set", True)]
    mem = CrossBatchMemory(DIM, max_steps=2)
    run_and_check(mem, steps, 1, DequeReference(2))
    mem.reset()
    assert len(mem) == 0 and mem.steps_seen == 0
    assert mem.view().features.shape == (0, DIM)
    run_and_check(mem, steps, int(rng.integers(100)), DequeReference(2))


# --- checkpointing ---------------------------------------------------------------------------


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@settings(max_examples=25)
@given(
    item_mode=st.booleans(),
    cap=st.integers(1, 400),
    steps=st.lists(
        st.tuples(st.one_of(st.just(0), st.integers(0, 200)), st.booleans()),
        min_size=2,
        max_size=12,
    ),
    cut=st.integers(0, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_state_dict_round_trip_mid_sequence_continues_exactly(item_mode, cap, steps, cut, seed):
    def fresh():
        if item_mode:
            return CrossBatchMemory(DIM, max_items=cap)
        return CrossBatchMemory(DIM, max_steps=min(cap, 9))

    rng = np.random.default_rng(seed)
    batches = []
    counter = 0
    for n, rgb_only in steps:
        f, lab, m = make_batch(rng, n, counter)
        counter += n
        batches.append((f, lab, m, Modality.RGB if rgb_only else None))
    cut = min(cut, len(batches))
    straight, first = fresh(), fresh()
    for f, lab, m, keep in batches[:cut]:
        straight.enqueue(f, lab, modalities=m, keep=keep)
        first.enqueue(f, lab, modalities=m, keep=keep)
    resumed = fresh()
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    assert resumed.steps_seen == straight.steps_seen
    for f, lab, m, keep in batches[cut:]:
        straight.enqueue(f, lab, modalities=m, keep=keep)
        resumed.enqueue(f, lab, modalities=m, keep=keep)
        assert_memory_equals(resumed, *straight.view())
    assert resumed.steps_seen == straight.steps_seen


def test_round_trip_keeps_empty_steps_in_the_window():
    mem = CrossBatchMemory(DIM, max_steps=3)
    mem.enqueue(torch.ones(2, DIM), [1, 2])
    mem.enqueue(torch.ones(0, DIM), [])
    mem.enqueue(torch.ones(1, DIM), [3])
    restored = CrossBatchMemory(DIM, max_steps=3)
    restored.load_state_dict(_roundtrip(mem.state_dict()))
    for m in (mem, restored):
        m.enqueue(torch.ones(1, DIM), [4])  # evicts step 0 only
        assert m.view().labels.tolist() == [3, 4]
        m.enqueue(torch.ones(1, DIM), [5])  # evicts the empty step
        assert m.view().labels.tolist() == [3, 4, 5]


def test_state_dict_records_the_step_of_every_row():
    items = CrossBatchMemory(DIM, max_items=5)
    items.enqueue(torch.ones(3, DIM), [0, 1, 2])
    items.enqueue(torch.ones(0, DIM), [])
    items.enqueue(torch.ones(4, DIM), [3, 4, 5, 6])
    sd = items.state_dict()
    assert sd["step_ids"].tolist() == [0, 2, 2, 2, 2]
    assert sd["labels"].tolist() == [2, 3, 4, 5, 6]
    assert sd["counters"][0].item() == 3  # steps seen
    steps = CrossBatchMemory(DIM, max_steps=2)
    for k, n in enumerate([2, 1, 0, 3]):
        steps.enqueue(torch.ones(n, DIM), [k] * n)
    assert steps.state_dict()["step_ids"].tolist() == [3, 3, 3]


def test_state_dict_keys_and_nested_prefix():
    parent = torch.nn.Module()
    parent.mem = CrossBatchMemory(DIM, max_steps=3)
    parent.mem.enqueue(torch.ones(2, DIM), [4, 5])
    sd = parent.state_dict()
    assert set(sd) == {
        f"mem.{k}" for k in ("features", "labels", "modalities", "step_ids", "counters", "config")
    }
    assert sd["mem.features"].shape == (2, DIM)
    other = torch.nn.Module()
    other.mem = CrossBatchMemory(DIM, max_steps=3)
    other.load_state_dict(sd)
    assert other.mem.view().labels.tolist() == [4, 5]


def test_load_state_dict_rejects_other_config_and_missing_keys():
    sd = CrossBatchMemory(DIM, max_steps=3).state_dict()
    with pytest.raises(RuntimeError, match="config"):
        CrossBatchMemory(DIM, max_steps=4).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="config"):
        CrossBatchMemory(DIM + 1, max_steps=3).load_state_dict(sd)
    del sd["step_ids"]
    with pytest.raises(RuntimeError, match="step_ids"):
        CrossBatchMemory(DIM, max_steps=3).load_state_dict(sd)
    sd2 = CrossBatchMemory(DIM, max_steps=3).state_dict()
    sd2["bogus"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="bogus"):
        CrossBatchMemory(DIM, max_steps=3).load_state_dict(sd2)


def test_state_of_empty_memory_keeps_dtype_lazy():
    src = CrossBatchMemory(DIM)
    dst = CrossBatchMemory(DIM)
    dst.load_state_dict(src.state_dict())
    dst.enqueue(torch.ones(1, DIM, dtype=torch.float64), [1])
    assert dst.view().features.dtype == torch.float64


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def _fill(mem: CrossBatchMemory, sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    counter = 0
    for n in sizes:
        f, lab, m = make_batch(rng, n, counter)
        counter += n
        mem.enqueue(f, lab, modalities=m)


CORRUPTIONS = [
    "nan_feature", "inf_feature", "modality_above", "modality_below", "float_labels",
    "bool_labels", "float_modalities", "integer_features", "short_labels", "wide_features",
    "step_id_too_new", "step_id_too_old", "step_ids_unsorted", "config", "negative_steps",
    "counters_shape", "rows_but_unmaterialised", "over_max_items", "unexpected_key",
]  # fmt: skip


def corrupt(state: dict, kind: str, row: int) -> bool:
    """Make ``state`` invalid in the way ``kind`` names; False when ``kind`` does not apply."""
    m = state["labels"].shape[0]
    steps_seen, max_steps, max_items = (
        int(v) for v in (*state["counters"][:1], *state["config"][1:])
    )
    row = row % max(m, 1)
    if kind in ("nan_feature", "inf_feature", "modality_above", "modality_below") and m == 0:
        return False
    if kind == "nan_feature":
        state["features"][row, row % DIM] = math.nan
    elif kind == "inf_feature":
        state["features"][row, 0] = -math.inf
    elif kind == "modality_above":
        state["modalities"][row] = len(Modality)
    elif kind == "modality_below":
        state["modalities"][row] = UNKNOWN_MODALITY - 1
    elif kind == "float_labels":
        state["labels"] = state["labels"].double()
    elif kind == "bool_labels":
        state["labels"] = state["labels"] > 0
    elif kind == "float_modalities":
        state["modalities"] = state["modalities"].float()
    elif kind == "integer_features":
        state["features"] = state["features"].long()
    elif kind == "short_labels":
        if m == 0:
            return False
        state["labels"] = state["labels"][1:]
    elif kind == "wide_features":
        state["features"] = torch.zeros(m, DIM + 1)
    elif kind == "step_id_too_new":
        if m == 0:
            return False
        state["step_ids"][row] = steps_seen
    elif kind == "step_id_too_old":
        if m == 0 or max_steps == 0:
            return False
        state["step_ids"][row] = steps_seen - max_steps - 1
    elif kind == "step_ids_unsorted":
        ids = state["step_ids"]
        if ids.unique().numel() < 2:
            return False
        state["step_ids"] = ids.flip(0)
    elif kind == "config":
        state["config"][1:] = state["config"][1:] + (state["config"][1:] > 0).long()
    elif kind == "negative_steps":
        state["counters"][0] = -1
    elif kind == "counters_shape":
        state["counters"] = state["counters"][:2]
    elif kind == "rows_but_unmaterialised":
        if m == 0:
            return False
        state["counters"][1] = 0
    elif kind == "over_max_items":
        if max_items == 0:
            return False
        extra = max_items + 1 - m
        state["features"] = torch.cat([state["features"], torch.zeros(extra, DIM)])
        state["labels"] = torch.cat([state["labels"], torch.zeros(extra, dtype=torch.int64)])
        state["modalities"] = torch.cat(
            [state["modalities"], torch.zeros(extra, dtype=torch.int64)]
        )
        last = state["step_ids"][-1:] if m else torch.tensor([max(steps_seen - 1, 0)])
        state["step_ids"] = torch.cat([state["step_ids"], last.repeat(extra)])
    elif kind == "unexpected_key":
        state["bogus"] = torch.zeros(1)
    return True


@settings(max_examples=80)
@given(
    item_mode=st.booleans(),
    source_sizes=st.lists(st.integers(0, 9), min_size=0, max_size=7),
    target_sizes=st.lists(st.integers(0, 9), min_size=0, max_size=7),
    kind=st.sampled_from(CORRUPTIONS),
    row=st.integers(0, 100),
    seed=st.integers(0, 2**16),
)
def test_a_refused_load_state_dict_leaves_state_dict_unchanged(
    item_mode, source_sizes, target_sizes, kind, row, seed
):
    def fresh() -> CrossBatchMemory:
        return (
            CrossBatchMemory(DIM, max_items=12) if item_mode else CrossBatchMemory(DIM, max_steps=3)
        )

    source, target = fresh(), fresh()
    _fill(source, source_sizes, seed)
    _fill(target, target_sizes, seed + 1)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    assume(corrupt(state, kind, row))
    before = target.state_dict()
    with pytest.raises(RuntimeError):
        target.load_state_dict(state)
    assert _state_equal(target.state_dict(), before)
    assert (
        target.steps_seen == int(before["counters"][0]) and len(target) == before["labels"].shape[0]
    )


def test_load_state_dict_refuses_rows_that_overflow_the_storage_dtype():
    source = CrossBatchMemory(DIM, max_steps=2)
    source.enqueue(torch.full((2, DIM), 1e5), [1, 2])  # finite in float32
    target = CrossBatchMemory(DIM, max_steps=2, dtype=torch.float16)
    target.enqueue(torch.ones(1, DIM), [7])
    before = target.state_dict()
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        target.load_state_dict(source.state_dict())
    assert _state_equal(target.state_dict(), before)
    # values that fit the storage dtype load (converted)
    source.enqueue(torch.full((1, DIM), 60000.0), [3])
    source.enqueue(torch.full((1, DIM), -2.0), [4])
    target.load_state_dict(source.state_dict())
    assert target.view().features.dtype == torch.float16
    assert target.view().labels.tolist() == [3, 4]


# --- gradients, NaN, validation ----------------------------------------------------------------


def test_stored_rows_are_detached_copies():
    x = torch.randn(4, DIM, requires_grad=True)
    feats = x * 2
    mem = CrossBatchMemory(DIM)
    mem.enqueue(feats, [1, 2, 3, 4])
    stored = mem.view().features
    assert not stored.requires_grad and stored.grad_fn is None
    expected = feats.detach().clone()
    with torch.no_grad():
        feats.add_(100.0)  # the caller reuses its tensor: the memory must not change
    torch.testing.assert_close(mem.view().features, expected)


def test_autograd_raises_if_a_saved_view_is_overwritten_before_backward():
    mem = CrossBatchMemory(DIM, max_items=2)
    mem.enqueue(torch.randn(2, DIM), [1, 2])
    q = torch.randn(3, DIM, requires_grad=True)
    loss = (q @ mem.view().features.T).sum()  # autograd saves the view
    mem.enqueue(torch.randn(2, DIM), [3, 4])
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
    q2 = torch.randn(3, DIM, requires_grad=True)
    loss2 = (q2 @ mem.view(copy=True).features.T).sum()
    mem.enqueue(torch.randn(2, DIM), [5, 6])
    loss2.backward()  # a copy is unaffected
    assert q2.grad is not None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_rows_raise_and_leave_memory_unchanged(bad):
    mem = CrossBatchMemory(DIM, max_steps=2)
    mem.enqueue(torch.ones(2, DIM), [1, 2])
    feats = torch.zeros(3, DIM)
    feats[1, 2] = bad
    with pytest.raises(ValueError, match=r"1 row\(s\) with NaN or Inf.*row 1"):
        mem.enqueue(feats, [7, 8, 9])
    assert mem.view().labels.tolist() == [1, 2] and mem.steps_seen == 1
    # a refused first batch does not fix the storage dtype of a lazy memory
    lazy = CrossBatchMemory(DIM)
    with pytest.raises(ValueError, match="NaN or Inf"):
        lazy.enqueue(feats.half(), [7, 8, 9])
    lazy.enqueue(torch.ones(1, DIM, dtype=torch.float64), [1])
    assert lazy.view().features.dtype == torch.float64
    # a non-finite row that keep does not select is not stored, so it is no error
    mem.enqueue(feats, [7, 8, 9], keep=torch.tensor([True, False, True]))
    assert mem.view().labels.tolist() == [1, 2, 7, 9]


@settings(max_examples=30)
@given(
    n=st.integers(1, 40),
    data=st.data(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
)
def test_drop_mode_never_stores_nonfinite_rows(n, data, dtype):
    bad_rows = data.draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True))
    values = data.draw(
        st.lists(
            st.sampled_from([math.nan, math.inf, -math.inf]),
            min_size=len(bad_rows),
            max_size=len(bad_rows),
        )
    )
    feats = torch.arange(n * DIM, dtype=torch.float32).reshape(n, DIM).to(dtype)
    for r, v in zip(bad_rows, values, strict=True):
        feats[r, r % DIM] = v
    mem = CrossBatchMemory(DIM, max_items=1000, on_nonfinite="drop")
    expected = [i for i in range(n) if i not in set(bad_rows)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stored = mem.enqueue(feats, list(range(n)))
    assert stored == len(expected)
    assert mem.view().labels.tolist() == expected
    assert bool(torch.isfinite(mem.view().features).all())
    drop_warnings = [w for w in caught if "dropped" in str(w.message)]
    assert len(drop_warnings) == (1 if bad_rows else 0)
    if bad_rows:
        assert f"{len(bad_rows)} row(s)" in str(drop_warnings[0].message)
        assert drop_warnings[0].filename == __file__  # points at the caller


def test_large_finite_values_whose_sum_overflows_are_stored():
    feats = torch.full((4, DIM), 3e38)  # finite, but the sum overflows float32
    mem = CrossBatchMemory(DIM)
    assert mem.enqueue(feats, [1, 2, 3, 4]) == 4
    half = torch.full((4, DIM), 60000.0, dtype=torch.float16)
    mem16 = CrossBatchMemory(DIM)
    assert mem16.enqueue(half, [1, 2, 3, 4]) == 4


def _storage_memory(how: str, dtype: torch.dtype, on_nonfinite: str) -> CrossBatchMemory:
    """A memory whose storage dtype is ``dtype``, fixed in one of the three ways there are."""
    if how == "constructor":
        return CrossBatchMemory(8, dtype=dtype, on_nonfinite=on_nonfinite)
    if how == "to":
        return CrossBatchMemory(8, on_nonfinite=on_nonfinite).to(dtype)
    mem = CrossBatchMemory(8, on_nonfinite=on_nonfinite)
    mem.enqueue(torch.zeros(1, 8, dtype=dtype), [99])  # the first batch fixes the dtype
    return mem


@pytest.mark.parametrize("how", ["constructor", "to", "first_batch"])
def test_rows_that_overflow_the_storage_dtype_are_nonfinite(how):
    assert math.isinf(float(torch.tensor(1e5).to(torch.float16)))  # the premise
    mem = _storage_memory(how, torch.float16, "raise")
    before = mem.state_dict()
    with pytest.raises(ValueError, match="NaN or Inf"):
        mem.enqueue(torch.full((2, 8), 1e5), [0, 1])
    assert _state_equal(mem.state_dict(), before)
    drop = _storage_memory(how, torch.float16, "drop")
    kept = len(drop)
    feats = torch.ones(3, 8)
    feats[1, 4] = 1e5
    with pytest.warns(RuntimeWarning, match="dropped 1 row"):
        assert drop.enqueue(feats, [0, 1, 2]) == 2
    assert drop.view().labels.tolist()[kept:] == [0, 2]
    assert bool(torch.isfinite(drop.view().features).all())
    with pytest.warns(RuntimeWarning, match="dropped 2 row"):
        assert drop.enqueue(torch.full((2, 8), 1e5), [0, 1]) == 0


@settings(max_examples=60)
@given(
    rows=st.lists(
        st.lists(
            st.one_of(st.floats(-7e4, 7e4, width=32), st.sampled_from([65504.0, 65519.0, 65520.0])),
            min_size=4,
            max_size=4,
        ),
        min_size=0,
        max_size=6,
    ),
    keep_every=st.integers(1, 3),
    on_nonfinite=st.sampled_from(["raise", "drop"]),
)
def test_float16_storage_matches_a_numpy_cast(rows, keep_every, on_nonfinite):
    x = np.asarray(rows, dtype=np.float32).reshape(-1, 4)
    with np.errstate(over="ignore"):
        cast = x.astype(np.float16)  # the reference conversion (round to nearest even)
    keep = np.arange(len(x)) % keep_every == 0
    finite = np.isfinite(cast).all(axis=1)
    expected = keep & finite
    mem = CrossBatchMemory(4, dtype=torch.float16, on_nonfinite=on_nonfinite)
    args = (torch.from_numpy(x), list(range(len(x))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if on_nonfinite == "raise" and not finite[keep].all():
            with pytest.raises(ValueError, match="NaN or Inf"):
                mem.enqueue(*args, keep=torch.from_numpy(keep))
            assert len(mem) == 0 and mem.steps_seen == 0
            return
        assert mem.enqueue(*args, keep=torch.from_numpy(keep)) == int(expected.sum())
    assert mem.view().labels.tolist() == np.flatnonzero(expected).tolist()
    np.testing.assert_array_equal(mem.view().features.numpy(), cast[expected])


def test_constructor_validation():
    with pytest.raises(ValueError, match="not both"):
        CrossBatchMemory(DIM, max_steps=6, max_items=10)
    with pytest.raises(ValueError, match="not both"):
        CrossBatchMemory(DIM, max_steps=3, max_items=10)
    assert CrossBatchMemory(DIM, max_items=10).max_steps is None
    assert CrossBatchMemory(DIM).max_steps == 6
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        CrossBatchMemory(DIM, max_steps=0)
    with pytest.raises(ValueError, match="max_items must be >= 1"):
        CrossBatchMemory(DIM, max_items=0)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        CrossBatchMemory(0)
    with pytest.raises(TypeError, match="dim must be an int"):
        CrossBatchMemory(True)
    with pytest.raises(TypeError, match="max_steps must be an int"):
        CrossBatchMemory(DIM, max_steps=2.0)
    with pytest.raises(ValueError, match="on_nonfinite"):
        CrossBatchMemory(DIM, on_nonfinite="skip")
    with pytest.raises(TypeError, match="dtype"):
        CrossBatchMemory(DIM, dtype=torch.int64)


def test_enqueue_validation_leaves_memory_unchanged():
    mem = CrossBatchMemory(DIM)
    mem.enqueue(torch.ones(1, DIM), [1])
    cases = [
        ((torch.zeros(2, DIM + 1), [1, 2]), {}, ValueError, "feats must have shape"),
        ((torch.zeros(2), [1, 2]), {}, ValueError, "feats must have shape"),
        ((torch.zeros(2, DIM), [1, 2, 3]), {}, ValueError, "labels must have shape"),
        ((torch.zeros(2, DIM), torch.tensor([1.0, 2.0])), {}, ValueError, "labels must be int"),
        ((torch.zeros(2, DIM), torch.tensor([True, False])), {}, ValueError, "labels must be int"),
        ((torch.zeros(2, DIM, dtype=torch.int64), [1, 2]), {}, TypeError, "floating"),
        (([[0.0] * DIM], [1]), {}, TypeError, "feats must be a torch.Tensor"),
        ((torch.zeros(2, DIM), [1, 2]), {"modalities": [0]}, ValueError, "modalities must have"),
        ((torch.zeros(2, DIM), [1, 2]), {"modalities": ["rgb", "x"]}, ValueError, "unknown"),
        ((torch.zeros(2, DIM), [1, 2]), {"keep": Modality.RGB}, ValueError, "modalities=None"),
        ((torch.zeros(2, DIM), [1, 2]), {"keep": lambda m: m == 0}, ValueError, "modalities=None"),
        ((torch.zeros(2, DIM), [1, 2]), {"keep": torch.ones(2, 1, dtype=torch.bool)}, ValueError,
         "shape \\[2\\]"),
        ((torch.zeros(2, DIM), [1, 2]), {"keep": torch.ones(3, dtype=torch.bool)}, ValueError,
         "shape \\[2\\]"),
        ((torch.zeros(2, DIM), [1, 2]), {"modalities": [0, 1], "keep": lambda m: m},
         TypeError, "boolean"),
        ((torch.zeros(2, DIM), [1, 2]), {"modalities": [0, 1], "keep": 1.5}, TypeError, "keep"),
    ]  # fmt: skip
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            mem.enqueue(*args, **kwargs)
    assert mem.view().labels.tolist() == [1] and mem.steps_seen == 1


# --- dtype, device, views, allocation --------------------------------------------------------


def test_dtype_follows_constructor_else_first_batch():
    mem = CrossBatchMemory(DIM, dtype=torch.float64)
    assert mem.view().features.dtype == torch.float64
    mem.enqueue(torch.ones(2, DIM), [1, 2])
    assert mem.view().features.dtype == torch.float64
    lazy = CrossBatchMemory(DIM)
    lazy.enqueue(torch.ones(2, DIM, dtype=torch.float16), [1, 2])
    lazy.enqueue(torch.ones(2, DIM, dtype=torch.float32), [1, 2])
    assert lazy.view().features.dtype == torch.float16
    moved = CrossBatchMemory(DIM).to(torch.float64)
    moved.enqueue(torch.ones(2, DIM), [1, 2])
    assert moved.view().features.dtype == torch.float64
    moved.to(torch.float32)
    assert moved.view().features.dtype == torch.float32
    assert moved.view().labels.tolist() == [1, 2]


def test_labels_of_other_integer_dtypes_are_stored_as_int64():
    mem = CrossBatchMemory(DIM)
    mem.enqueue(
        torch.ones(2, DIM),
        torch.tensor([3, 4], dtype=torch.int32),
        modalities=np.array([0, 1], dtype=np.int8),
        keep=torch.tensor([True, True]),
    )
    mem.enqueue(torch.ones(2, DIM), np.array([5, 6], dtype=np.uint8))
    assert mem.view().labels.dtype == torch.int64
    assert mem.view().labels.tolist() == [3, 4, 5, 6]


def test_copy_survives_enqueue_and_views_are_views():
    mem = CrossBatchMemory(DIM, max_items=2)
    mem.enqueue(torch.ones(2, DIM), [1, 2])
    snapshot = mem.view(copy=True)
    view = mem.view()
    for v, again, c in zip(view, mem.view(), snapshot, strict=True):
        assert v.data_ptr() == again.data_ptr()  # both views read the storage
        assert v.untyped_storage().data_ptr() != c.untyped_storage().data_ptr()
    for k in range(5):
        mem.enqueue(torch.full((2, DIM), float(k)), [10 + k, 20 + k])
    assert snapshot.labels.tolist() == [1, 2]
    torch.testing.assert_close(snapshot.features, torch.ones(2, DIM))


def test_no_storage_allocation_after_warm_up():
    g = torch.Generator().manual_seed(0)
    for mem in (CrossBatchMemory(8, max_steps=4), CrossBatchMemory(8, max_items=300)):
        sizes = torch.randint(0, 100, (200,), generator=g).tolist()
        for n in sizes[:20]:
            mem.enqueue(torch.randn(n, 8, generator=g), torch.zeros(n, dtype=torch.int64))
        mem.enqueue(torch.randn(99, 8, generator=g), torch.zeros(99, dtype=torch.int64))
        mem.enqueue(torch.randn(99, 8, generator=g), torch.zeros(99, dtype=torch.int64))
        ptr = mem.view().features.untyped_storage().data_ptr()
        cap = mem.capacity
        for n in sizes[20:]:
            mem.enqueue(torch.randn(n, 8, generator=g), torch.zeros(n, dtype=torch.int64))
            assert mem.view().features.untyped_storage().data_ptr() == ptr
            view = mem.view()
            assert view.labels.is_contiguous() and view.features.is_contiguous()
        # step mode: 4 * 99 rows fit after growth; item mode capacity is max_items from the start
        assert mem.capacity == cap


def test_gather_without_process_group_is_local_enqueue():
    mem, ref = CrossBatchMemory(DIM), CrossBatchMemory(DIM)
    f = torch.randn(5, DIM)
    mem.enqueue(f, [1, 2, 3, 4, 5], modalities=[0, 1, 0, 1, 0], keep="rgb", gather=True)
    ref.enqueue(f, [1, 2, 3, 4, 5], modalities=[0, 1, 0, 1, 0], keep="rgb")
    assert_memory_equals(mem, *ref.view())


def test_memory_view_feeds_sdm_loss_including_empty():
    sdm = pytest.importorskip("sdmreid.losses.sdm")
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    mem = CrossBatchMemory(8, max_steps=2)
    empty = sdm.sdm_loss(q, gal, y, y, memory=mem.view())
    plain = sdm.sdm_loss(q, gal, y, y)
    torch.testing.assert_close(empty.loss, plain.loss)
    mem.enqueue(torch.randn(3, 8, generator=g), [0, 1, 9])
    with_mem = sdm.sdm_loss(q, gal, y, y, memory=mem.view())
    copied = mem.view(copy=True)
    explicit = sdm.sdm_loss(q, gal, y, y, memory=(copied.features, copied.labels))
    torch.testing.assert_close(with_mem.loss, explicit.loss)
    assert not torch.allclose(with_mem.loss, plain.loss)


@pytest.mark.gpu
def test_cuda_storage_with_cpu_labels_and_modalities():
    mem = CrossBatchMemory(DIM, max_steps=2)
    dev = torch.device("cuda")
    for k in range(4):
        mem.enqueue(
            torch.full((3, DIM), float(k), device=dev),
            [k, k, k],
            modalities=torch.tensor([0, 1, 0]),
            keep=Modality.RGB,
        )
    assert mem.view().features.device.type == "cuda"
    assert mem.view().labels.device.type == "cuda"
    assert mem.view().labels.tolist() == [2, 2, 3, 3]
    cpu = CrossBatchMemory(DIM, max_steps=2)
    cpu.load_state_dict(mem.state_dict())
    assert cpu.view().features.device.type == "cuda"  # lazy memory follows the checkpoint
    cpu2 = CrossBatchMemory(DIM, max_steps=2, device="cpu")
    cpu2.load_state_dict(mem.state_dict())
    assert cpu2.view().features.device.type == "cpu"
    assert cpu2.view().labels.tolist() == [2, 2, 3, 3]


def test_deepcopy_is_independent():
    import copy

    mem = CrossBatchMemory(DIM, max_steps=2)
    mem.enqueue(torch.ones(3, DIM), [1, 2, 3])
    twin = copy.deepcopy(mem)
    twin.enqueue(torch.zeros(1, DIM), [9])
    assert mem.view().labels.tolist() == [1, 2, 3] and mem.steps_seen == 1
    assert twin.view().labels.tolist() == [1, 2, 3, 9]


# --- reliability: ambiguous or invalid arguments are refused and change nothing ---------------


def _memory_with_one_step() -> CrossBatchMemory:
    mem = CrossBatchMemory(DIM, max_steps=3)
    mem.enqueue(torch.ones(1, DIM), [1], modalities=[0])
    return mem


@pytest.mark.parametrize(
    "keep",
    [
        [1, 0, 1, 0],
        (0, 1, 1, 0),
        [1, 1, 1, 1],
        [0],
        {0, 1},
        [np.int64(1), 0, 1, 0],
        np.array([1, 0, 1, 0]),
        torch.tensor([1, 0, 1, 0]),
        torch.tensor([0, 0, 0, 0], dtype=torch.uint8),
    ],
    ids=repr,
)
def test_keep_of_plain_zero_one_integers_is_refused_as_ambiguous(keep):
    """``[1, 0, 1, 0]`` reads as a mask or as the modality codes NIR and RGB: refused, whatever
    the batch size, with a message that shows both unambiguous spellings."""
    mem = _memory_with_one_step()
    before = mem.state_dict()
    with pytest.raises(ValueError, match="ambiguous") as err:
        mem.enqueue(torch.zeros(4, DIM), [5, 6, 7, 8], modalities=[0, 1, 0, 1], keep=keep)
    assert "True" in str(err.value) and "Modality.RGB" in str(err.value)
    assert _state_equal(mem.state_dict(), before)


def test_unambiguous_keep_spellings_of_masks_and_modalities_are_accepted():
    feats, labels, mods = torch.zeros(4, DIM), [5, 6, 7, 8], [0, 1, 0, 2]
    as_mask = [True, False, True, False]
    for keep, stored in [
        (as_mask, [5, 7]),
        (np.array(as_mask), [5, 7]),
        (torch.tensor(as_mask), [5, 7]),
        ([Modality.NIR, Modality.RGB], [5, 6, 7]),  # enum members are modalities
        (["nir", "rgb"], [5, 6, 7]),
        ([2, 3], [8]),  # codes beyond 1 cannot be a mask
        (0, [5, 7]),  # a single code is a modality
        (torch.tensor(1), [6]),
        ([], []),  # an empty selection reads the same either way
    ]:
        mem = CrossBatchMemory(DIM)
        mem.enqueue(feats, labels, modalities=mods, keep=keep)
        assert mem.view().labels.tolist() == stored, keep


@pytest.mark.parametrize("bad", ["no", 0, 1, None, 1.0])
def test_bool_options_of_the_memory_refuse_non_bool_values(bad):
    mem = _memory_with_one_step()
    before = mem.state_dict()
    with pytest.raises(TypeError, match="gather must be a bool"):
        mem.enqueue(torch.zeros(2, DIM), [1, 2], gather=bad)
    with pytest.raises(TypeError, match="copy must be a bool"):
        mem.view(copy=bad)
    assert _state_equal(mem.state_dict(), before)


@pytest.mark.parametrize("bad", [1, None, True, b"raise"])
def test_on_nonfinite_of_the_memory_refuses_non_str_values(bad):
    with pytest.raises(TypeError, match="on_nonfinite must be"):
        CrossBatchMemory(DIM, on_nonfinite=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feats": torch.zeros(2, DIM, device="meta")}, "feats is on meta"),
        ({"labels": torch.tensor([1, 2], device="meta")}, "labels is on meta"),
        ({"modalities": torch.tensor([0, 1], device="meta")}, "modalities is on meta"),
        ({"keep": torch.tensor([True, False], device="meta")}, "keep is on meta"),
    ],
)
def test_meta_tensors_are_refused_by_enqueue_up_front(kwargs, match):
    mem = _memory_with_one_step()
    before = mem.state_dict()
    args = {"feats": torch.zeros(2, DIM), "labels": [1, 2], "modalities": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        mem.enqueue(**args)
    assert _state_equal(mem.state_dict(), before)


@pytest.mark.parametrize("big", [2**70, -(2**70), 2**63, 2**64])
def test_python_labels_beyond_int64_are_a_value_error_naming_labels(big):
    mem = _memory_with_one_step()
    before = mem.state_dict()
    with pytest.raises(ValueError, match="labels must fit in int64"):
        mem.enqueue(torch.zeros(2, DIM), [big, 1])
    assert _state_equal(mem.state_dict(), before)


def test_float16_storage_never_holds_inf_from_a_finite_float32_batch():
    """Issue item: the finiteness test must see the rows as stored (``1e5`` is Inf in float16)."""
    mem = CrossBatchMemory(dim=8, dtype=torch.float16)
    with pytest.raises(ValueError, match="NaN or Inf"):
        mem.enqueue(torch.full((2, 8), 1e5), [0, 1])
    assert len(mem) == 0 and mem.steps_seen == 0


def test_a_single_meta_or_huge_modality_is_refused_by_name():
    mem = _memory_with_one_step()
    before = mem.state_dict()
    with pytest.raises(ValueError, match="modality is on meta"):
        mem.enqueue(torch.zeros(2, DIM), [1, 2], modalities=torch.tensor(1, device="meta"))
    with pytest.raises(ValueError, match="unknown modality code"):
        mem.enqueue(torch.zeros(2, DIM), [1, 2], modalities=[0, 2**70])
    assert _state_equal(mem.state_dict(), before)
