"""Tests for sdmreid.evaluation.llcm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdmreid.evaluation import evaluate_llcm


def test_llcm_same_identity_same_camera_removed():
    # NIR query id1 cam1 = e0. RGB: id1 cam1 = e0 (removed), id2 cam1 = .8e0+.6e1, id1 cam2 = e1
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = [1, 1, 2, 1]
    cams = [1, 1, 1, 2]
    mods = ["nir", "rgb", "rgb", "rgb"]
    res = evaluate_llcm(feats, labels, cams, mods, num_trials=2)
    n2r = res["nir_to_rgb"]
    # ranking after removal: id2 (.8), id1 cam2 (0) -> rank 2
    assert [t.rank1 for t in n2r.trials] == [0.0, 0.0]
    assert n2r.mean.mAP == pytest.approx(0.5)
    # RGB->NIR: id1 cam1 query vs NIR id1 cam1: removed -> skipped; id1 cam2 query has it
    r2n = res["rgb_to_nir"].trials[0]
    assert (r2n.num_valid_queries, r2n.num_skipped_queries) == (1, 2)


def test_llcm_seeded_single_shot_reproduces():
    rng = np.random.default_rng(0)
    n = 200
    feats = torch.from_numpy(rng.standard_normal((n, 8)).astype(np.float32))
    labels, cams = rng.integers(0, 10, n), rng.integers(1, 4, n)
    mods = rng.integers(0, 2, n)
    a = evaluate_llcm(feats, labels, cams, mods, direction="nir_to_rgb", num_trials=3)
    b = evaluate_llcm(feats, labels, cams, mods, direction="nir_to_rgb", num_trials=3)
    assert [t.mAP for t in a.trials] == [t.mAP for t in b.trials]
    assert len({t.mAP for t in a.trials}) > 1
    with pytest.raises(ValueError, match="modalities has length"):
        evaluate_llcm(feats, labels, cams, mods[:5])
