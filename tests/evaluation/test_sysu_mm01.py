"""Tests for sdmreid.evaluation.sysu_mm01 on small hand-built layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sdmreid.evaluation import (
    ProtocolResult,
    camera_pair_ignore,
    evaluate_retrieval,
    evaluate_sysu_mm01,
    load_sysu_permutation,
    parse_sysu_paths,
    sysu_ignore_rule,
)
from sdmreid.evaluation.protocols import _seeded_gallery
from sdmreid.evaluation.sysu_mm01 import _permuted_gallery

# ----------------------------------------------------------------------------------------------
# SYSU-MM01: a hand-built layout, one image per (identity, camera) so every trial is the same
# ----------------------------------------------------------------------------------------------
# RGB  a: cam2 id1 [1, 0,   0]      IR  q3: cam3 id1 [1, 0,   0]
#      b: cam1 id2 [1, 0.1, 0]          q6: cam6 id1 [0, 1,   0]
#      c: cam4 id2 [1, 0.2, 0]          e:  cam6 id3 [1, 0.1, 0]
#      d: cam5 id1 [1, 0.4, 0]
SYSU_FEATS = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [1.0, 0.1, 0.0],
        [1.0, 0.2, 0.0],
        [1.0, 0.4, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [1.0, 0.1, 0.0],
    ]
)
SYSU_LABELS = np.array([1, 2, 2, 1, 1, 1, 3])
SYSU_CAMS = np.array([2, 1, 4, 5, 3, 6, 6])


def test_sysu_nir_to_rgb_hand_worked():
    r = evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, num_trials=3)
    assert isinstance(r, ProtocolResult)
    assert r.name == "sysu_mm01/all/single" and r.direction == "nir_to_rgb"
    assert len(r.trials) == 3
    # q3 (cam 3) ignores a (cam 2, its own identity!): ranking b(2) c(2) d(1)
    #   -> de-duplicated CMC rank 2 (identities 2, 1), AP = 1/3, INP = 1/3
    # q6: cosines a 0, b .0995, c .196, d .371 -> d(1) c(2) b(2) a(1)
    #   -> CMC rank 1, AP = (1 + 2/4)/2, INP = 2/4
    # e (identity 3) has no RGB image -> skipped
    for m in (*r.trials,):
        assert m.cmc[:3].tolist() == [0.5, 1.0, 1.0]
        assert m.mAP == pytest.approx((1 / 3 + 0.75) / 2)
        assert m.mINP == pytest.approx((1 / 3 + 0.5) / 2)
        assert (m.num_valid_queries, m.num_skipped_queries) == (2, 1)
    assert r.mean.rank1 == 0.5 and r.mean.mAP == pytest.approx((1 / 3 + 0.75) / 2)
    assert r.mean.num_valid_queries == 6  # summed over the 3 trials


def test_sysu_rgb_to_nir_hand_worked():
    r = evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, direction="rgb_to_nir", num_trials=1)
    # a (cam 2) ignores q3 (cam 3): e(3) .995, q6(1) 0 -> rank 2, AP 1/2, INP 1/2
    # b, c (identity 2): no positive -> skipped
    # d: e .961, q3 .928, q6 .371 -> positives at 2, 3: AP (1/2 + 2/3)/2, INP 2/3, dedup rank 2
    m = r.trials[0]
    assert (m.num_valid_queries, m.num_skipped_queries) == (2, 2)
    assert m.cmc[:2].tolist() == [0.0, 1.0]
    assert m.mAP == pytest.approx((0.5 + 7 / 12) / 2)
    assert m.mINP == pytest.approx((0.5 + 2 / 3) / 2)


def test_sysu_both_directions_and_aliases():
    res = evaluate_sysu_mm01(
        SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, direction=["ir_to_visible", "vis_to_ir"], num_trials=1
    )
    assert sorted(res) == ["nir_to_rgb", "rgb_to_nir"]
    assert res["nir_to_rgb"].mean.rank1 == 0.5 and res["rgb_to_nir"].mean.rank1 == 0.0


def test_sysu_indoor_drops_outdoor_cameras():
    # indoor gallery = cams 1, 2: q3 ignores a (cam 2) -> only b (identity 2) -> no positive;
    # q6: b(2) .0995, a(1) 0 -> rank 2, AP 1/2
    r = evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, mode="indoor", num_trials=1)
    m = r.trials[0]
    assert (m.num_valid_queries, m.num_skipped_queries) == (1, 2)
    assert m.cmc[:2].tolist() == [0.0, 1.0] and m.mAP == pytest.approx(0.5)


def test_cam3_query_never_sees_cam2_items():
    # every cam-2 item is the query's exact duplicate; a cam-3 query must still rank the far
    # cam-1 item of its identity first, a cam-6 query ranks a cam-2 duplicate first.
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([1, 1, 2, 1, 1])
    cams = np.array([2, 2, 2, 1, 3])
    r = evaluate_sysu_mm01(feats, labels, cams, mode="indoor", shots=10, num_trials=1)
    assert r.mean.rank1 == 1.0 and r.mean.mAP == 1.0  # only the cam-1 item is left
    cams6 = cams.copy()
    cams6[-1] = 6
    r6 = evaluate_sysu_mm01(feats, labels, cams6, mode="indoor", shots=10, num_trials=1)
    # cam-6 query: cam-2 items (1, 1, 2) tie at cosine 1, then cam-1 (1): ranks 1, 2, 4
    assert r6.mean.mAP == pytest.approx((1 + 1 + 3 / 4) / 3)


def _multi_image_layout(seed: int = 0):
    rng = np.random.default_rng(seed)
    cams, labels, nums = [], [], []
    for cam in (1, 2, 3, 4, 5, 6):
        for pid in (1, 2, 3, 4):
            n = int(rng.integers(1, 13))
            cams += [cam] * n
            labels += [pid] * n
            nums += list(range(1, n + 1))
    cams_a, labels_a, nums_a = np.array(cams), np.array(labels), np.array(nums)
    feats = torch.from_numpy(rng.standard_normal((len(cams_a), 8)).astype(np.float32))
    return feats, labels_a, cams_a, nums_a


def test_seeded_trials_reproduce_and_differ():
    feats, labels, cams, nums = _multi_image_layout()
    kw = {"image_index": nums, "num_trials": 4}
    a = evaluate_sysu_mm01(feats, labels, cams, **kw)
    b = evaluate_sysu_mm01(feats, labels, cams, **kw)
    for ta, tb in zip(a.trials, b.trials, strict=True):
        assert torch.equal(ta.cmc, tb.cmc) and ta.mAP == tb.mAP
    assert len({t.mAP for t in a.trials}) > 1  # trials draw different galleries
    # the input order does not change the draw when image numbers are given
    perm = np.random.default_rng(1).permutation(len(labels))
    c = evaluate_sysu_mm01(
        feats[perm], labels[perm], cams[perm], image_index=nums[perm], num_trials=4
    )
    assert [t.mAP for t in c.trials] == pytest.approx([t.mAP for t in a.trials], rel=1e-12)
    # another base seed gives other galleries
    d = evaluate_sysu_mm01(feats, labels, cams, seed=100, **kw)
    assert [t.mAP for t in d.trials] != [t.mAP for t in a.trials]


@pytest.mark.parametrize("shots", [1, 3, 10])
def test_seeded_gallery_takes_shots_per_identity_camera(shots):
    _, labels, cams, nums = _multi_image_layout()
    cand = np.flatnonzero(np.isin(cams, (1, 2, 4, 5)))
    gi = _seeded_gallery(cand, labels, cams, nums, shots, seed=5)
    assert len(set(gi.tolist())) == len(gi)
    for cam in (1, 2, 4, 5):
        for pid in (1, 2, 3, 4):
            have = int(((cams == cam) & (labels == pid)).sum())
            got = int(((cams[gi] == cam) & (labels[gi] == pid)).sum())
            assert got == min(shots, have)
    again = _seeded_gallery(cand, labels, cams, nums, shots, seed=5)
    assert np.array_equal(gi, again)


def test_official_permutation_is_followed():
    # cam1 id1 has images 1..3 with features e0, e1, e2; cam3 id1 query = e1; cam1 id2 = e1+e0
    feats = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0], [0.0, 1.0, 0.0]]
    )
    labels = np.array([1, 1, 1, 2, 1])
    cams = np.array([1, 1, 1, 1, 3])
    nums = np.array([1, 2, 3, 1, 1])
    perm = {
        (1, 1): np.array([[2, 1, 3], [3, 2, 1]]),
        (1, 2): np.array([[1], [1]]),
        (3, 1): np.array([[1], [1]]),
    }
    r = evaluate_sysu_mm01(
        feats, labels, cams, image_index=nums, permutation=perm, mode="indoor", num_trials=2
    )
    # trial 0 picks image 2 (= the query): rank 1; trial 1 picks image 3 (orthogonal): the
    # identity-2 item (cos .8) comes first -> rank 2
    assert [t.rank1 for t in r.trials] == [1.0, 0.0]
    assert [t.mAP for t in r.trials] == pytest.approx([1.0, 0.5])
    with pytest.raises(ValueError, match="trials"):
        evaluate_sysu_mm01(
            feats, labels, cams, image_index=nums, permutation=perm, mode="indoor", num_trials=3
        )
    with pytest.raises(ValueError, match="image_index is required"):
        evaluate_sysu_mm01(feats, labels, cams, permutation=perm, mode="indoor")
    bad = dict(perm)
    bad[(1, 1)] = np.array([[7, 1, 2]])
    with pytest.raises(ValueError, match="not among the given items"):
        _permuted_gallery(np.array([0, 1, 2]), labels, cams, nums, 1, 0, bad)


def test_load_sysu_permutation_roundtrip(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    cams = np.empty((6, 1), dtype=object)
    for c in range(6):
        persons = np.empty((3, 1), dtype=object)
        for p in range(3):
            persons[p, 0] = (
                np.zeros((0, 0)) if (c, p) == (0, 2) else np.arange(1, 9).reshape(2, 4) + c + p
            )
        cams[c, 0] = persons
    path = tmp_path / "rand_perm_cam.mat"
    scipy_io.savemat(path, {"rand_perm_cam": cams})
    perm = load_sysu_permutation(path)
    assert (1, 3) not in perm  # empty cell: identity 3 has no image in camera 1
    assert np.array_equal(perm[(2, 1)], np.arange(1, 9).reshape(2, 4) + 1)
    assert np.array_equal(perm[(6, 3)], np.arange(1, 9).reshape(2, 4) + 7)
    assert len(perm) == 17


def test_parse_sysu_paths():
    cams, ids, nums = parse_sysu_paths(["x/cam6/0333/0010.jpg", "cam1\\0002\\0001.png"])
    assert (cams.tolist(), ids.tolist(), nums.tolist()) == ([6, 1], [333, 2], [10, 1])
    with pytest.raises(ValueError, match="paths"):
        parse_sysu_paths(["0001/0002.jpg"])


def test_sysu_bad_input():
    with pytest.raises(ValueError, match="mode"):
        evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, mode="outdoor")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shots"):
        evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, shots=0)
    with pytest.raises(ValueError, match="num_trials"):
        evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, num_trials=0)
    with pytest.raises(ValueError, match="cams must be SYSU-MM01 cameras"):
        evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, np.full(7, 9))
    with pytest.raises(ValueError, match="labels has length"):
        evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS[:3], SYSU_CAMS)
    with pytest.raises(ValueError, match="direction"):
        evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, direction="text_to_rgb")
    with pytest.raises(ValueError, match="direction"):
        evaluate_sysu_mm01(SYSU_FEATS, SYSU_LABELS, SYSU_CAMS, direction="nir-rgb")


# ----------------------------------------------------------------------------------------------
# the same-location rule
# ----------------------------------------------------------------------------------------------

_cams = st.lists(st.integers(1, 6), min_size=1, max_size=12)


@given(_cams, _cams, st.data())
def test_sysu_ignore_rule_pairs_cameras_2_and_3_both_ways(query_cams, gallery_cams, data):
    rule = sysu_ignore_rule(query_cams, gallery_cams)
    chunk = data.draw(st.lists(st.integers(0, len(query_cams) - 1), min_size=1, max_size=5))
    got = rule(torch.tensor(chunk)).numpy()
    for row, i in enumerate(chunk):
        for j, gcam in enumerate(gallery_cams):
            same_place = {query_cams[i], gcam} == {2, 3}
            assert got[row, j] == same_place


def test_sysu_rule_matches_the_plain_evaluator_with_the_pairs_spelled_out():
    rng = np.random.default_rng(3)
    q = torch.from_numpy(rng.standard_normal((20, 6)).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal((50, 6)).astype(np.float32))
    ql, gl = rng.integers(0, 5, 20), rng.integers(0, 5, 50)
    qc, gc = rng.integers(1, 7, 20), rng.integers(1, 7, 50)
    spelled = camera_pair_ignore(qc, gc, {3: [2], 2: [3]})
    a = evaluate_retrieval(q, ql, g, gl, ignore=sysu_ignore_rule(qc, gc), dedup_cmc=True)
    b = evaluate_retrieval(q, ql, g, gl, ignore=spelled, dedup_cmc=True)
    assert torch.equal(a.cmc, b.cmc) and a.mAP == b.mAP and a.mINP == b.mINP
