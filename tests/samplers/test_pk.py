"""Unit tests of the P×K samplers: validation, inputs, distributed defaults, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import sdmreid.samplers.pk as pk_module
from sdmreid.samplers import (
    ModalAwarePKSampler,
    ModalAwarePKSampler_Strict,
    coverage_report,
)
from tests.samplers.reference import brute_coverage, split_chunks

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
        ({"retry_limit": -1}, ValueError, "retry_limit"),
        ({"retry_limit": 1.5}, TypeError, "retry_limit"),
    ],
)
def test_strict_only_settings_raise(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ModalAwarePKSampler_Strict(LABELS, MODS, 2, 2, **kwargs)  # type: ignore[arg-type]


def test_strict_requires_modalities() -> None:
    with pytest.raises(ValueError, match="modalities"):
        ModalAwarePKSampler_Strict(LABELS, None, 2, 2)  # type: ignore[arg-type]


def test_set_epoch_rejects_negative() -> None:
    with pytest.raises(ValueError, match="epoch"):
        ModalAwarePKSampler(LABELS, MODS, 2, 2).set_epoch(-1)


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
    s.set_epoch(1)
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
        s.load_state_dict({"epoch": 0})


def test_state_dict_is_small_and_plain() -> None:
    s = ModalAwarePKSampler_Strict(LABELS, MODS, 2, 2)
    state = s.state_dict()
    assert all(type(v) is int for v in state.values())
    assert {"epoch", "next_batch"} <= set(state)


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
    for epoch in range(2):
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
