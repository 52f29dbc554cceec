"""Tests for sdmreid.evaluation.regdb."""

from __future__ import annotations

import pytest
import torch

from sdmreid.evaluation import ProtocolResult, RegDBTrial, evaluate_regdb
from sdmreid.modality import Modality


def test_regdb_per_trial_both_directions():
    e = torch.eye(3)
    # trial 0: perfect; trial 1: visible id 0 looks like thermal id 1
    t0 = RegDBTrial(e[[0, 1]], [0, 1], e[[0, 1]], [0, 1])
    t1 = (e[[1, 1]], [0, 1], e[[0, 1]], [0, 1])
    res = evaluate_regdb([t0, t1])
    v2t, t2v = res["rgb_to_nir"], res["nir_to_rgb"]
    assert v2t.name == "regdb"
    assert [t.rank1 for t in v2t.trials] == [1.0, 0.5]
    # visible->thermal trial 1: visible id0 = e1: thermal id1 (cos 1) first, id0 second -> AP 1/2
    assert v2t.trials[1].mAP == pytest.approx(0.75)
    # thermal->visible trial 1: thermal id0 = e0: both visible items are e1 (cos 0, tie) -> by
    # index, visible id0 first -> rank 1; thermal id1 = e1: tie, visible id0 first -> rank 2
    assert t2v.trials[1].cmc[:2].tolist() == [0.5, 1.0]
    assert v2t.mean.rank1 == pytest.approx(0.75)
    single = evaluate_regdb([t0, t1], direction="thermal_to_visible")
    assert isinstance(single, ProtocolResult) and single.mean.mAP == t2v.mean.mAP


def test_regdb_bad_input():
    with pytest.raises(ValueError, match="trials must not be empty"):
        evaluate_regdb([])
    with pytest.raises(TypeError, match="trials"):
        evaluate_regdb(RegDBTrial(torch.eye(2), [0, 1], torch.eye(2), [0, 1]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction for RegDB"):
        evaluate_regdb([(torch.eye(2), [0, 1], torch.eye(2), [0, 1])], direction="sketch_to_rgb")


def test_regdb_trial_from_modalities_splits_rgb_and_nir():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(9, 4, generator=gen)
    labels = [3, 3, 4, 4, 5, 5, 3, 4, 5]
    mods = ["rgb", "nir", "rgb", "nir", "rgb", "nir", "sketch", "visible", "thermal"]
    trial = RegDBTrial.from_modalities(feats, labels, mods)
    assert torch.equal(trial.visible_feats, feats[[0, 2, 4, 7]])
    assert torch.equal(trial.thermal_feats, feats[[1, 3, 5, 8]])
    assert list(trial.visible_labels) == [3, 4, 5, 4]
    assert list(trial.thermal_labels) == [3, 4, 5, 5]
    manual = RegDBTrial(feats[[0, 2, 4, 7]], [3, 4, 5, 4], feats[[1, 3, 5, 8]], [3, 4, 5, 5])
    a, b = evaluate_regdb([trial]), evaluate_regdb([manual])
    for key in ("rgb_to_nir", "nir_to_rgb"):
        assert a[key].mean.mAP == b[key].mean.mAP
        assert torch.equal(a[key].mean.cmc, b[key].mean.cmc)
    ints = RegDBTrial.from_modalities(feats[:2], [1, 1], [int(Modality.RGB), int(Modality.NIR)])
    assert list(ints.visible_labels) == [1] and list(ints.thermal_labels) == [1]
    with pytest.raises(ValueError, match="modalities has length"):
        RegDBTrial.from_modalities(feats, labels, mods[:3])
    with pytest.raises(ValueError, match="labels has length"):
        RegDBTrial.from_modalities(feats, labels[:3], mods)
