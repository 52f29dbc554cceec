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

import sdmreid.samplers.pk as pk_module
from sdmreid.samplers import (
    ModalAwarePKSampler,
    ModalAwarePKSampler_Strict,
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
    }


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
