"""Unit tests of the P×K samplers: validation, inputs, distributed defaults, statistics."""

from __future__ import annotations

import io
import json
import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import sdmreid
import sdmreid.samplers.pk as pk_module
from sdmreid.modality import as_modality_sets
from sdmreid.samplers import (
    ModalAwarePKSampler,
    ModalAwarePKSampler_Strict,
    build_identity_index,
    coverage_report,
)
from tests.samplers.reference import brute_coverage, oversampling_draws, split_chunks
from tests.strategies import corrupted_states, label_modality_layouts

LABELS = np.repeat(np.arange(6), 5)
MODS = np.tile([0, 0, 0, 1, 1], 6)


# --- construction errors -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((LABELS, MODS, 7, 2), {}, ValueError, "num_identities"),  # P > #identities
        ((LABELS, MODS, 0, 2), {}, ValueError, "num_identities must be >= 1"),
        ((LABELS, MODS, 2, 0), {}, ValueError, "num_instances must be >= 1"),
        ((LABELS, MODS, 2.0, 2), {}, TypeError, "num_identities"),
        ((LABELS, MODS, True, 2), {}, TypeError, "num_identities"),
        (([], [], 1, 1), {}, ValueError, "empty"),
        ((LABELS, MODS[:-1], 2, 2), {}, ValueError, "same length"),
        ((LABELS, MODS, 2, 2), {"num_replicas": 2, "rank": 2}, ValueError, "rank"),
        ((LABELS, MODS, 2, 2), {"num_replicas": 0}, ValueError, "num_replicas"),
        ((LABELS, MODS, 2, 2), {"rank": -1}, ValueError, "rank"),
        ((LABELS, MODS, 2, 2), {"seed": -1}, ValueError, "seed"),
    ],
)
def test_impossible_settings_raise(
    cls: type, args: tuple[object, ...], kwargs: dict[str, object], exc: type, match: str
) -> None:
    with pytest.raises(exc, match=match):
        cls(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"fallback_ratio": -0.1}, ValueError, "fallback_ratio"),
        ({"fallback_ratio": 1.5}, ValueError, "fallback_ratio"),
        ({"fallback_ratio": float("nan")}, ValueError, "fallback_ratio"),
        ({"fallback_ratio": "0.3"}, TypeError, "fallback_ratio"),
        ({"retry_limit": 3}, TypeError, "retry_limit"),  # removed: strict chunks never retry
    ],
)
def test_strict_only_settings_raise(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ModalAwarePKSampler_Strict(LABELS, MODS, 2, 2, **kwargs)  # type: ignore[arg-type]


def test_strict_requires_modalities() -> None:
    with pytest.raises(ValueError, match="modalities"):
        ModalAwarePKSampler_Strict(LABELS, None, 2, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
@pytest.mark.parametrize("epoch", [0, -1])
def test_epochs_are_numbered_from_one(cls: type, epoch: int) -> None:
    s = cls(LABELS, MODS, 2, 2)
    with pytest.raises(ValueError, match=r"epoch \(numbered from 1\) must be >= 1"):
        s.set_epoch(epoch)
    with pytest.raises(ValueError, match=r"epoch \(numbered from 1\) must be >= 1"):
        s.batches(epoch)
    with pytest.raises(TypeError, match="epoch"):
        s.set_epoch(1.0)
    assert s.epoch == 1  # the refused calls changed nothing


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
def test_never_set_epoch_is_epoch_one(cls: type) -> None:
    fresh = cls(LABELS, MODS, 2, 2, seed=5)
    assert fresh.epoch == 1
    first = list(fresh)
    chosen = cls(LABELS, MODS, 2, 2, seed=5)
    chosen.set_epoch(1)
    assert list(chosen) == first == fresh.batches(1).tolist()
    chosen.set_epoch(2)
    assert list(chosen) != first


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
@pytest.mark.parametrize("labels", [[0, "0", 1, "1"], [True, 1, 0, 1], ["a", "b", 2, 2]], ids=repr)
def test_mixed_label_types_raise_type_error(cls: type, labels: list[object]) -> None:
    with pytest.raises(TypeError, match="labels"):
        cls(labels, [0, 1, 0, 1], 1, 2)
    with pytest.raises(TypeError, match="labels"):
        coverage_report([[0, 1]], labels, [0, 1, 0, 1])


# --- sizes the dataset cannot serve --------------------------------------------------------------


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
@pytest.mark.parametrize("k", [10**8, 2**70])
def test_huge_k_is_refused_before_allocating(cls: type, k: int) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="num_instances"):
            cls([0, 0, 1, 1], [0, 1, 0, 1], 2, k)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, peak


@given(label_modality_layouts(max_ids=8, max_per_id=8), st.integers(1, 30), st.booleans())
def test_k_refused_exactly_when_draws_outnumber_samples(
    layout: tuple[np.ndarray, np.ndarray], k: int, strict: bool
) -> None:
    labels, mods = layout
    cls = ModalAwarePKSampler_Strict if strict else ModalAwarePKSampler
    if oversampling_draws(labels.tolist(), k) > len(labels):
        with pytest.raises(ValueError, match="num_instances"):
            cls(labels, mods, 1, k)
    else:
        s = cls(labels, mods, 1, k)
        assert s.batches().size <= 2 * len(labels)  # an epoch holds at most 2·N indices


# --- inputs and outputs ------------------------------------------------------------------------


def test_accepts_tensors_and_modality_names() -> None:
    names = np.where(MODS == 0, "visible", "IR").tolist()
    a = list(ModalAwarePKSampler_Strict(torch.from_numpy(LABELS), names, 3, 2, seed=4))
    b = list(ModalAwarePKSampler_Strict(LABELS.tolist(), torch.from_numpy(MODS), 3, 2, seed=4))
    assert a == b
    assert all(type(i) is int for batch in a for i in batch)


def test_edge_p_equals_identities_and_k_one() -> None:
    s = ModalAwarePKSampler_Strict(LABELS, MODS, 6, 1)
    batches = list(s)
    assert len(batches) == 5  # every identity has 5 samples -> 5 chunks of 1
    assert sorted(i for b in batches for i in b) == list(range(30))


def test_all_rgb_strict_degrades_to_plain_pk() -> None:
    mods = np.zeros_like(MODS)
    s = ModalAwarePKSampler_Strict(LABELS, mods, 3, 2, fallback_ratio=0.0)
    batches = list(s)
    assert len(batches) == len(ModalAwarePKSampler(LABELS, mods, 3, 2)) == 4
    assert s.coverage_report().coverage == 0.0


def test_epochs_differ_and_len_matches() -> None:
    s = ModalAwarePKSampler_Strict(LABELS, MODS, 2, 2, seed=3)
    first = list(s)
    s.set_epoch(2)
    second = list(s)
    assert first != second
    assert len(s) == len(second)


def test_dataloader_batch_sampler() -> None:
    ds = TensorDataset(torch.arange(30), torch.from_numpy(LABELS))
    s = ModalAwarePKSampler_Strict(LABELS, MODS, 3, 2)
    loader = DataLoader(ds, batch_sampler=s)
    got = [x.tolist() for x, _ in loader]
    assert got == list(s)
    assert len(loader) == len(s)


def test_distributed_defaults_come_from_sdmreid_distributed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pk_module, "is_dist", lambda: True)
    monkeypatch.setattr(pk_module, "get_world_size", lambda: 3)
    monkeypatch.setattr(pk_module, "get_rank", lambda: 2)
    s = ModalAwarePKSampler(LABELS, MODS, 2, 2)
    assert (s.num_replicas, s.rank) == (3, 2)


def test_replicas_when_p_times_r_exceeds_identities() -> None:
    # P·R = 8 > 6 identities: strided split of the single-replica plan
    streams = [
        list(ModalAwarePKSampler(LABELS, MODS, 4, 2, num_replicas=2, rank=r)) for r in (0, 1)
    ]
    single = list(ModalAwarePKSampler(LABELS, MODS, 4, 2))
    n = len(single) // 2
    assert streams[0] == single[0::2][:n]
    assert streams[1] == single[1::2][:n]


# --- state dict --------------------------------------------------------------------------------


def test_load_state_dict_rejects_mismatch() -> None:
    s = ModalAwarePKSampler(LABELS, MODS, 2, 2, seed=1)
    state = s.state_dict()
    other = ModalAwarePKSampler(LABELS, MODS, 2, 2, seed=2)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="next_batch"):
        s.load_state_dict({**state, "next_batch": len(s) + 1})
    with pytest.raises(ValueError, match="missing"):
        s.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="unknown"):
        s.load_state_dict({**state, "num_samples": 30})
    with pytest.raises(ValueError, match="max_fallback"):
        s.load_state_dict(ModalAwarePKSampler_Strict(LABELS, MODS, 2, 2, seed=1).state_dict())
    half = ModalAwarePKSampler_Strict(LABELS, MODS, 3, 2, fallback_ratio=0.5)  # cap 2, not 1
    with pytest.raises(ValueError, match="max_fallback"):
        ModalAwarePKSampler_Strict(LABELS, MODS, 3, 2).load_state_dict(half.state_dict())
    with pytest.raises(TypeError, match="mapping"):
        s.load_state_dict([("epoch", 1), ("next_batch", 0)])  # type: ignore[arg-type]


def test_state_dict_is_small_and_plain() -> None:
    s = ModalAwarePKSampler_Strict(LABELS, MODS, 2, 2)
    state = s.state_dict()
    assert all(type(v) is int for v in state.values())
    assert state == {
        "epoch": 1,
        "next_batch": 0,
        "seed": 0,
        "num_identities": 2,
        "num_instances": 2,
        "num_replicas": 1,
        "rank": 0,
        "sample_count": 30,
        "max_fallback": 1,
        "modality_digest": state["modality_digest"],
    }
    assert 0 <= state["modality_digest"] < 2**63  # fits int64 and JSON
    same = ModalAwarePKSampler_Strict(LABELS, np.eye(5, dtype=bool)[MODS], 2, 2)
    assert same.state_dict() == state  # codes and their one-hot sets are the same modalities
    other = MODS.copy()
    other[0] = 2  # a different non-RGB modality: same batches, but other modalities
    assert ModalAwarePKSampler_Strict(LABELS, other, 2, 2).state_dict() != state


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
def test_state_round_trips_through_torch_save_and_json(cls: type) -> None:
    s = cls(LABELS, MODS, 2, 2, seed=3)
    s.set_epoch(4)
    it = iter(s)
    next(it), next(it)
    state = s.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    for saved in (torch.load(buf, weights_only=True), json.loads(json.dumps(state))):
        t = cls(LABELS, MODS, 2, 2, seed=3)
        t.load_state_dict(saved)
        assert t.state_dict() == state
        assert list(t) == s.batches(4).tolist()[2:]
    # the settings keys are optional: a trainer may keep only the position
    t = cls(LABELS, MODS, 2, 2, seed=3)
    t.load_state_dict({"epoch": 4, "next_batch": 2})
    assert t.state_dict() == state


SAMPLER_BAD_VALUES = {
    "epoch": st.sampled_from([0, -1, 2.0, "3", None, True]),
    "next_batch": st.sampled_from([-1, 10**6, 1.0, "0", None]),
    "seed": st.sampled_from([99, -1, 0.0, "0"]),
    "num_identities": st.sampled_from([3, 0, 2.0]),
    "num_instances": st.sampled_from([3, "2"]),
    "num_replicas": st.sampled_from([2, None]),
    "rank": st.sampled_from([1, -1]),
    "sample_count": st.sampled_from([29, 31, 30.0]),
    "modality_digest": st.sampled_from([1, -1, 2.0, "0"]),
}


# One defect per case, so that each is tried often: a key with a bad value, a required key
# missing, or an unknown key.
SAMPLER_DEFECTS = [*({k: v} for k, v in SAMPLER_BAD_VALUES.items()), "missing", "unknown"]


@pytest.mark.parametrize("defect", SAMPLER_DEFECTS, ids=str)
@given(st.booleans(), st.integers(1, 6), st.integers(0, 2), st.data())
def test_refused_load_state_dict_leaves_state_unchanged(
    defect: Any, strict: bool, epoch: int, done: int, data: st.DataObject
) -> None:
    cls: Any = ModalAwarePKSampler_Strict if strict else ModalAwarePKSampler
    target = cls(LABELS, MODS, 2, 2, seed=0)
    target.set_epoch(epoch)
    for _ in zip(range(done), target, strict=False):
        pass
    before = target.state_dict()
    expected = list(target)  # what the next iteration yields (then back to batch 0)
    target.load_state_dict(before)
    other = cls(LABELS, MODS, 2, 2, seed=0)
    other.load_state_dict({"epoch": epoch + 3, "next_batch": 1})
    bad = data.draw(
        corrupted_states(
            other.state_dict(),
            defect if isinstance(defect, dict) else {},
            required=("epoch", "next_batch") if defect == "missing" else (),
            unknown_key=defect == "unknown",
        )
    )
    with pytest.raises((ValueError, TypeError)):
        target.load_state_dict(bad)
    assert target.state_dict() == before
    assert list(target) == expected


def test_strict_state_refuses_another_fallback_cap() -> None:
    target = ModalAwarePKSampler_Strict(LABELS, MODS, 3, 2)
    before = target.state_dict()
    for cap in (2, -1):
        with pytest.raises(ValueError, match="max_fallback"):
            target.load_state_dict({"epoch": 4, "next_batch": 1, "max_fallback": cap})
    assert target.state_dict() == before


# --- coverage ----------------------------------------------------------------------------------


def test_coverage_report_method_and_function_agree() -> None:
    s = ModalAwarePKSampler_Strict(LABELS, MODS, 3, 3)
    batches = list(s)
    rep = coverage_report(batches, LABELS, MODS)
    assert rep == s.coverage_report() == s.coverage_report(batches)
    assert (rep.rows, rep.rows_without_positive) == brute_coverage(
        batches, LABELS.tolist(), MODS.tolist()
    )
    assert coverage_report(np.asarray(batches), LABELS, MODS) == rep


def test_coverage_report_requires_modalities_and_valid_indices() -> None:
    with pytest.raises(ValueError, match="modalities"):
        ModalAwarePKSampler(LABELS, None, 2, 2).coverage_report()
    with pytest.raises(ValueError, match="outside"):
        coverage_report([[0, 30]], LABELS, MODS)
    assert math.isnan(coverage_report([], LABELS, MODS).coverage)


# --- statistical: SYSU-MM01-like layout ----------------------------------------------------------


def sysu_like(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """395 identities, ~2:1 RGB:NIR overall, 15 % of identities RGB-only."""
    rng = np.random.default_rng(seed)
    labels: list[np.ndarray] = []
    mods: list[np.ndarray] = []
    rgb_only = rng.permutation(395) < round(0.15 * 395)
    for pid in range(395):
        n_rgb = int(rng.integers(40, 73))
        n_nir = 0 if rgb_only[pid] else int(rng.integers(20, 51))
        labels.append(np.full(n_rgb + n_nir, pid))
        mods.append(np.r_[np.zeros(n_rgb, int), np.ones(n_nir, int)])
    lab, mod = np.concatenate(labels), np.concatenate(mods)
    perm = rng.permutation(lab.size)
    return lab[perm], mod[perm]


def test_sysu_like_strict_coverage_beats_plain(capsys: pytest.CaptureFixture[str]) -> None:
    labels, mods = sysu_like()
    ratio = (mods == 0).sum() / (mods == 1).sum()
    assert 1.7 < ratio < 2.3
    strict = ModalAwarePKSampler_Strict(labels, mods, 8, 4, seed=0)
    plain = ModalAwarePKSampler(labels, mods, 8, 4, seed=0)
    for epoch in (1, 2):
        strict.set_epoch(epoch)
        plain.set_epoch(epoch)
        cs = coverage_report(list(strict), labels, mods).coverage
        cp = coverage_report(list(plain), labels, mods).coverage
        with capsys.disabled():
            print(f"\n[sysu-like epoch {epoch}] strict coverage={cs:.3f} plain coverage={cp:.3f}")
        assert cs >= 0.85
        assert cs - cp >= 0.08
        # the fallback cap holds in every batch (plenty of pairable identities remain)
        cap = math.ceil(0.3 * 8)
        pairable = {
            lab for lab in set(labels.tolist()) if len(set(mods[labels == lab].tolist())) == 2
        }
        for batch in strict.batches().tolist():
            assert sum(lab not in pairable for lab in split_chunks(batch, labels)) <= cap


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
def test_labels_beyond_int64_are_a_value_error_naming_labels(cls: type) -> None:
    with pytest.raises(ValueError, match="labels must fit in int64"):
        cls([2**70, 0, 1, 1], [0, 1, 0, 1], 1, 2)
    with pytest.raises(ValueError, match="labels must fit in int64"):
        coverage_report([[0, 1]], [2**70, 0, 1, 1], [0, 1, 0, 1])


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
def test_meta_tensors_and_huge_modality_codes_are_refused_by_name(cls: type) -> None:
    meta = torch.tensor([0, 0, 1, 1], device="meta")
    with pytest.raises(ValueError, match="labels is on meta"):
        cls(meta, [0, 1, 0, 1], 1, 2)
    with pytest.raises(ValueError, match="modalities is on meta"):
        cls([0, 0, 1, 1], meta, 1, 2)
    with pytest.raises(ValueError, match="modalities contains unknown modality code"):
        cls([0, 0, 1, 1], [0, 1, 2**70, 1], 1, 2)


@pytest.mark.parametrize("cls", [ModalAwarePKSampler, ModalAwarePKSampler_Strict])
def test_a_refused_next_batch_does_not_keep_the_new_epoch(cls: type) -> None:
    s = cls(LABELS, MODS, 2, 2, seed=0)
    s.set_epoch(2)
    with pytest.raises(ValueError, match="next_batch"):
        s.load_state_dict({"epoch": 5, "next_batch": 10**6})
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["next_batch"] == 0


# --- items carrying several modalities ------------------------------------------------------------


def prcv_like(seed: int = 0, n_ids: int = 60) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """PRCV-style training items: every item an identity sample carrying an RGB image and its
    caption, plus that identity's NIR / sketch / colour-pencil views where it has them."""
    rng = np.random.default_rng(seed)
    labels: list[int] = []
    items: list[tuple[str, ...]] = []
    for pid in range(n_ids):
        views = [v for v in ("nir", "sk", "cp") if rng.random() < 0.7]
        for _ in range(int(rng.integers(3, 9))):
            labels.append(pid)
            items.append(("rgb", "text", *views))
    perm = rng.permutation(len(labels))
    return np.asarray(labels)[perm], [items[i] for i in perm]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_prcv_like_items_are_covered_when_given_as_sets(k: int) -> None:
    labels, items = prcv_like()
    s = ModalAwarePKSampler_Strict(labels, items, 8, k, seed=0)
    batches = list(s)
    assert batches
    # The port passed these items as plain RGB: no SDM row can have a positive then.
    as_rgb = coverage_report(batches, labels, ["rgb"] * len(labels))
    assert as_rgb.coverage == 0.0
    rep = coverage_report(batches, labels, items)
    # one row per modality an item carries; each item covers all its own rows
    assert rep.rows == sum(len(items[i]) for b in batches for i in b)
    assert (rep.rows, rep.rows_without_positive) == brute_coverage(
        batches, labels.tolist(), np.asarray([[m in it for m in MOD_NAMES] for it in items])
    )
    assert rep.coverage == 1.0
    assert s.coverage_report() == rep


MOD_NAMES = ("rgb", "nir", "sk", "cp", "text")  # column m is Modality(m), written out here


def test_coverage_report_counts_rows_as_pooled_sdm_does() -> None:
    """One embedding row per (item, modality): coverage_report's counts are sdm_loss's."""
    labels = np.array([0, 0, 1, 1, 2, 3, 3])
    sets = [("rgb", "text"), ("nir",), ("rgb",), ("rgb",), ("sk", "cp"), ("text",), ("rgb",)]
    batches = [[0, 1, 2, 3], [4, 5, 6], [0, 4]]
    rows = without = 0
    for batch in batches:
        q_lab = [labels[i] for i in batch for m in sets[i] if m != "rgb"]
        g_lab = [labels[i] for i in batch for m in sets[i] if m == "rgb"]
        g = torch.nn.functional.normalize(torch.randn(len(g_lab), 8, dtype=torch.float64), dim=1)
        q = torch.nn.functional.normalize(torch.randn(len(q_lab), 8, dtype=torch.float64), dim=1)
        r = sdmreid.sdm_loss(q, g, torch.tensor(q_lab), torch.tensor(g_lab))
        rows += int(r.rows)
        without += int(r.rows_without_positive)
    rep = coverage_report(batches, labels, sets)
    # by hand: batch 0 has 5 rows, items 2 and 3 (RGB) unpaired; batch 1 has 4, the sketch and
    # colour-pencil rows of item 4 unpaired; batch 2 has 4, item 4 again unpaired
    assert (rep.rows, rep.rows_without_positive) == (rows, without) == (13, 6)


def test_mixed_single_and_multi_modality_items() -> None:
    # identity 0: RGB-only items plus one item carrying RGB and a caption (its only non-RGB);
    # identity 1: single-modality RGB and NIR items; identity 2: RGB only; identity 3: NIR only.
    labels = np.array([0] * 6 + [1] * 6 + [2] * 4 + [3] * 4)
    mods: list[object] = ["rgb"] * 5 + [("rgb", "caption")]
    mods += ["rgb", "rgb", "rgb", "ir", "ir", "ir"] + ["rgb"] * 4 + ["ir"] * 4
    s = ModalAwarePKSampler_Strict(labels, mods, 2, 3, fallback_ratio=0.5, seed=1)
    assert s.index.pairable.tolist() == [True, True, False, False]
    assert s.index.both_counts.tolist() == [1, 0, 0, 0]
    for epoch in (1, 2, 3):
        s.set_epoch(epoch)
        batches = list(s)
        for batch in batches:
            chunks = split_chunks(batch, labels)
            assert sum(lab in (2, 3) for lab in chunks) <= 1  # the fallback cap ⌈0.5·2⌉
            if 0 in chunks:  # two chunks of 3: the caption item is reused in each
                assert 5 in chunks[0]
            if 1 in chunks:
                got = [mods[i] for i in chunks[1]]
                assert "rgb" in got and "ir" in got
        rep = coverage_report(batches, labels, mods)
        assert (rep.rows, rep.rows_without_positive) == brute_coverage(
            batches,
            labels.tolist(),
            np.asarray([[m in _names(x) for m in MOD_NAMES] for x in mods]),
        )


def _names(item: object) -> set[str]:
    aliases = {"ir": "nir", "caption": "text"}
    names = item if isinstance(item, tuple) else (item,)
    return {aliases.get(str(n), str(n)) for n in names}


def test_k1_items_carrying_both_are_covered_identities() -> None:
    # Identities 0-3: every item carries RGB and a caption; 4-7: RGB only. With K = 1 a chunk
    # is one item, so only the first four identities are pairs, and the cap applies to the rest.
    labels = np.repeat(np.arange(8), 3)
    sets = np.zeros((24, 5), dtype=bool)
    sets[:, 0] = True
    sets[:12, 4] = True
    s = ModalAwarePKSampler_Strict(labels, sets, 4, 1, fallback_ratio=0.25, seed=0)
    batches = list(s)
    # ⌈0.25·4⌉ = 1 RGB-only identity per batch: the 12 one-item pairs fill 4 batches with 3
    # each. With this seed those 4 batches use up one RGB-only identity, so the 8 chunks left
    # belong to 3 identities, fewer than P: no further batch.
    assert len(batches) == 4
    assert [sum(lab >= 4 for lab in labels[b]) for b in batches] == [1, 1, 1, 1]
    # 12 items with 2 rows each, 4 RGB-only items with 1: only the 4 RGB-only rows miss
    assert s.coverage_report().coverage == 1 - 4 / 28
    plain = ModalAwarePKSampler(labels, sets, 4, 1, seed=0)
    assert s.coverage_report().coverage >= plain.coverage_report().coverage


@pytest.mark.parametrize(
    ("mods", "exc", "match"),
    [
        ([("rgb", "depth")] * 4, ValueError, r"modalities\[0\]: unknown modality 'depth'"),
        (["rgb", "rgb", (), "ir"], ValueError, r"modalities\[2\] is an empty modality set"),
        (np.zeros((4, 5), dtype=bool), ValueError, r"modalities\[0\] has no modality"),
        (np.ones((4, 4), dtype=bool), ValueError, "modalities must have 5 columns"),
        (np.eye(5, dtype=np.int64)[[0, 1, 0, 1]], ValueError, "modalities: a 2-D array"),
        (torch.eye(5)[[0, 1, 0, 1]], ValueError, "modalities: a 2-D array"),
        ([[1, 0, 0, 0, 1]] * 4, ValueError, r"modalities\[0\] names a modality more than once"),
        (np.ones((3, 5), dtype=bool), ValueError, "same length"),
    ],
    ids=[
        "unknown",
        "empty set",
        "all-False row",
        "4 columns",
        "int 2-D",
        "float 2-D",
        "0/1 rows",
        "length",
    ],
)
def test_bad_modality_sets_are_refused_by_name(mods: object, exc: type, match: str) -> None:
    labels = [0, 0, 1, 1]
    for make in (
        lambda: ModalAwarePKSampler_Strict(labels, mods, 1, 2),  # type: ignore[arg-type]
        lambda: ModalAwarePKSampler(labels, mods, 1, 2),  # type: ignore[arg-type]
        lambda: coverage_report([[0, 1]], labels, mods),  # type: ignore[arg-type]
        lambda: build_identity_index(labels, mods),  # type: ignore[arg-type]
    ):
        with pytest.raises(exc, match=match):
            make()


def test_bitmasks_go_through_as_modality_sets() -> None:
    labels = [0, 0, 1, 1]
    masks = [0b10001, 0b00001, 0b00010, 0b00001]  # RGB+TEXT, RGB, NIR, RGB
    sets = as_modality_sets(masks, bitmask=True)
    expected = [("rgb", "text"), "rgb", "nir", "rgb"]
    a = ModalAwarePKSampler_Strict(labels, sets, 2, 2, seed=3)
    b = ModalAwarePKSampler_Strict(labels, expected, 2, 2, seed=3)
    assert a.batches().tolist() == b.batches().tolist()
    assert a.state_dict() == b.state_dict()
    # a plain 1-D integer array keeps meaning one modality code per item
    with pytest.raises(ValueError, match="unknown modality code 17"):
        ModalAwarePKSampler_Strict(labels, masks, 2, 2)
