"""Tests for sdmreid.evaluation.metrics against an independent numpy float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from sdmreid.evaluation import RetrievalMetrics, camera_pair_ignore, evaluate_retrieval

# ----------------------------------------------------------------------------------------------
# independent reference: per-query python loop, float64, stable argsort (ties by gallery index)
# ----------------------------------------------------------------------------------------------


def ref_distances(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    q = q.astype(np.float64)
    g = g.astype(np.float64)
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        gn = np.linalg.norm(g, axis=1, keepdims=True)
        qn[qn == 0] = 1.0
        gn[gn == 0] = 1.0
        return -(q / qn) @ (g / gn).T
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def ref_evaluate(dist, ql, gl, qc=None, gc=None, remove_extra=None, dedup=False):
    """Returns (cmc over all gallery positions, mAP, mINP, n_valid, n_skipped) or None."""
    nq, ng = dist.shape
    firsts, aps, inps = [], [], []
    for i in range(nq):
        order = np.argsort(dist[i], kind="stable")
        remove = np.zeros(ng, dtype=bool)
        if qc is not None:
            remove |= (gl == ql[i]) & (gc == qc[i])
        if remove_extra is not None:
            remove |= remove_extra[i]
        keep = ~remove[order]
        ranked = gl[order][keep]
        match = ranked == ql[i]
        if not match.any():
            continue
        pos_ranks = np.flatnonzero(match) + 1
        n = len(pos_ranks)
        aps.append(float(np.mean(np.arange(1, n + 1) / pos_ranks)))
        inps.append(n / pos_ranks[-1])
        if dedup:
            seen: list[int] = []
            for lab in ranked:
                if lab not in seen:
                    seen.append(int(lab))
            firsts.append(seen.index(int(ql[i])) + 1)
        else:
            firsts.append(int(pos_ranks[0]))
    if not firsts:
        return None
    cmc = np.array([np.mean([f <= k for f in firsts]) for k in range(1, ng + 1)])
    return cmc, float(np.mean(aps)), float(np.mean(inps)), len(firsts), nq - len(firsts)


def assert_matches(m: RetrievalMetrics, ref) -> None:
    cmc, m_ap, m_inp, nv, ns = ref
    np.testing.assert_allclose(m.cmc.numpy(), cmc, rtol=0, atol=1e-12)
    assert m.mAP == pytest.approx(m_ap, rel=1e-12, abs=1e-12)
    assert m.mINP == pytest.approx(m_inp, rel=1e-12, abs=1e-12)
    assert (m.num_valid_queries, m.num_skipped_queries) == (nv, ns)


# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------


@st.composite
def integer_problems(draw):
    """Small problems with integer features: Euclidean distances are exact, so ties are real."""
    d = draw(st.integers(1, 3))
    nq = draw(st.integers(1, 8))
    ng = draw(st.integers(1, 14))
    n_ids = draw(st.integers(1, 4))
    ints = st.integers(-2, 2)
    q = np.array(draw(st.lists(st.lists(ints, min_size=d, max_size=d), min_size=nq, max_size=nq)))
    g = np.array(draw(st.lists(st.lists(ints, min_size=d, max_size=d), min_size=ng, max_size=ng)))
    ql = np.array(draw(st.lists(st.integers(0, n_ids), min_size=nq, max_size=nq)))
    gl = np.array(draw(st.lists(st.integers(0, n_ids), min_size=ng, max_size=ng)))
    use_cams = draw(st.booleans())
    qc = gc = None
    if use_cams:
        qc = np.array(draw(st.lists(st.integers(0, 2), min_size=nq, max_size=nq)))
        gc = np.array(draw(st.lists(st.integers(0, 2), min_size=ng, max_size=ng)))
    return q.astype(np.float32), ql, g.astype(np.float32), gl, qc, gc


@st.composite
def axis_problems(draw):
    """Cosine problems whose features are positive multiples of basis vectors (exact cosines)."""
    d = draw(st.integers(1, 3))
    nq = draw(st.integers(1, 6))
    ng = draw(st.integers(1, 12))
    axes_q = draw(st.lists(st.integers(0, d - 1), min_size=nq, max_size=nq))
    axes_g = draw(st.lists(st.integers(0, d - 1), min_size=ng, max_size=ng))
    scale = st.sampled_from([0.5, 1.0, 2.0, 3.0])
    q = np.zeros((nq, d), np.float32)
    g = np.zeros((ng, d), np.float32)
    for i, a in enumerate(axes_q):
        q[i, a] = draw(scale)
    for i, a in enumerate(axes_g):
        g[i, a] = draw(scale)
    ql = np.array(draw(st.lists(st.integers(0, 3), min_size=nq, max_size=nq)))
    gl = np.array(draw(st.lists(st.integers(0, 3), min_size=ng, max_size=ng)))
    return q, ql, g, gl


def _run_both(q, ql, g, gl, qc, gc, metric, dedup, **kw):
    ref = ref_evaluate(ref_distances(q, g, metric), ql, gl, qc, gc, dedup=dedup)
    call = lambda: evaluate_retrieval(  # noqa: E731
        torch.from_numpy(q),
        ql,
        torch.from_numpy(g),
        gl,
        query_cams=qc,
        gallery_cams=gc,
        metric=metric,
        dedup_cmc=dedup,
        **kw,
    )
    if ref is None:
        with pytest.raises(ValueError, match="no query has a positive"):
            call()
        return
    assert_matches(call(), ref)


# ----------------------------------------------------------------------------------------------
# against the reference
# ----------------------------------------------------------------------------------------------


@given(integer_problems(), st.booleans())
def test_euclidean_with_ties_matches_reference(problem, dedup):
    q, ql, g, gl, qc, gc = problem
    _run_both(q, ql, g, gl, qc, gc, "euclidean", dedup)


@given(axis_problems(), st.booleans())
def test_cosine_with_ties_matches_reference(problem, dedup):
    q, ql, g, gl = problem
    _run_both(q, ql, g, gl, None, None, "cosine", dedup)


@settings(max_examples=40)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["cosine", "euclidean"]),
    st.booleans(),
    st.sampled_from([None, 1, 300]),
)
def test_many_exact_ties_with_removal_and_ignore_match_reference(seed, metric, dedup, chunk):
    # every feature is one of three codebook rows, so most scores tie exactly and negatives tie
    # with positives on both sides of them in gallery order; the rows are small integers
    # (exact squared distances) or multiples of basis vectors (exact cosines)
    rng = np.random.default_rng(seed)
    if metric == "euclidean":
        codebook = rng.integers(-2, 3, (3, 4)).astype(np.float32)
    else:
        codebook = np.eye(3, 4, dtype=np.float32)[rng.integers(0, 3, 3)]
        codebook *= rng.integers(0, 4, (3, 1)).astype(np.float32)
    nq, ng = int(rng.integers(1, 30)), int(rng.integers(1, 60))
    q = codebook[rng.integers(0, 3, nq)]
    g = codebook[rng.integers(0, 3, ng)]
    ql, gl = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    extra = (qc[:, None] == 3) & (gc[None, :] == 2)
    ref = ref_evaluate(ref_distances(q, g, metric), ql, gl, qc, gc, extra, dedup=dedup)
    call = lambda: evaluate_retrieval(  # noqa: E731
        q,
        ql,
        g,
        gl,
        query_cams=qc,
        gallery_cams=gc,
        metric=metric,
        dedup_cmc=dedup,
        chunk_size=chunk,
        ignore=camera_pair_ignore(qc, gc, {3: [2]}),
    )
    if ref is None:
        with pytest.raises(ValueError, match="no query has a positive"):
            call()
        return
    assert_matches(call(), ref)


@settings(max_examples=30)
@given(st.integers(0, 2**31 - 1), st.booleans(), st.sampled_from(["cosine", "euclidean"]))
def test_continuous_features_match_reference(seed, use_cams, metric):
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(1, 20)), int(rng.integers(1, 40))
    q = rng.standard_normal((nq, 6)).astype(np.float32)
    g = rng.standard_normal((ng, 6)).astype(np.float32)
    ql, gl = rng.integers(0, 5, nq), rng.integers(0, 5, ng)
    qc = rng.integers(0, 3, nq) if use_cams else None
    gc = rng.integers(0, 3, ng) if use_cams else None
    _run_both(q, ql, g, gl, qc, gc, metric, False, chunk_size=int(rng.integers(1, 10)))


@settings(max_examples=30)
@given(st.integers(0, 2**31 - 1))
def test_map_matches_sklearn_average_precision(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 12, 30
    q = rng.standard_normal((nq, 8)).astype(np.float32)
    g = rng.standard_normal((ng, 8)).astype(np.float32)
    ql, gl = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    qc, gc = rng.integers(0, 2, nq), rng.integers(0, 2, ng)
    sim = -ref_distances(q, g, "cosine")
    aps = []
    for i in range(nq):
        keep = ~((gl == ql[i]) & (gc == qc[i]))
        y = gl[keep] == ql[i]
        if y.any():
            aps.append(average_precision_score(y, sim[i, keep]))
    if not aps:
        return
    m = evaluate_retrieval(q, ql, g, gl, query_cams=qc, gallery_cams=gc)
    assert m.mAP == pytest.approx(float(np.mean(aps)), rel=1e-9)
    assert m.num_valid_queries == len(aps)


def test_hand_worked_example():
    # query label 1; cosine ranking of the gallery: g2 (label 2), g0 (label 1), g3 (label 2),
    # g1 (label 1).  Positives at ranks 2 and 4.
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.8, 0.6], [-1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    m = evaluate_retrieval(q, [1], g, [1, 1, 2, 2], ranks=(1, 2, 4))
    assert m.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert m.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m.mINP == pytest.approx(2 / 4)
    # de-duplicated: identities in order 2, 1 -> first hit at identity-rank 2
    md = evaluate_retrieval(q, [1], g, [1, 1, 2, 2], dedup_cmc=True)
    assert md.cmc[:2].tolist() == [0.0, 1.0]
    assert md.mAP == m.mAP
    assert m.as_dict()["rank2"] == 1.0 and m.rank(100) == 1.0


def test_ties_broken_by_gallery_index():
    q = torch.ones(1, 2)
    g = torch.ones(3, 2)  # all equal scores
    assert evaluate_retrieval(q, [5], g, [5, 0, 0]).rank1 == 1.0
    m = evaluate_retrieval(q, [5], g, [0, 0, 5])
    assert m.cmc.tolist() == [0.0, 0.0, 1.0]
    assert m.mAP == pytest.approx(1 / 3)


def test_negative_zero_ties_positive_zero():
    # cosine 0 vs -0: equal, so the index decides
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.0, -1.0], [0.0, 1.0]])  # q.g = -0.0 and +0.0
    assert evaluate_retrieval(q, [1], g, [1, 0]).rank1 == 1.0


def test_same_id_same_cam_removal_and_skipped_queries():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]])
    # query 0 (id 0, cam 0): its exact match (id 0, cam 0) is removed; next positive g1 (cam 1).
    # query 1 (id 9): no positive -> skipped.
    m = evaluate_retrieval(
        q, [0, 9], g, [0, 0, 3], query_cams=[0, 0], gallery_cams=[0, 1, 1], ranks=(1,)
    )
    assert (m.num_valid_queries, m.num_skipped_queries) == (1, 1)
    assert m.rank1 == 1.0 and m.mAP == 1.0
    assert len(m.cmc) == 3


def test_camera_pair_ignore_has_no_identity_condition():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    gl = [4, 7, 4]
    rule = camera_pair_ignore([3], [2, 2, 1], {3: [2]})
    m = evaluate_retrieval(q, [4], g, gl, ignore=rule)
    # both cam-2 items (one positive, one negative) are gone: only g2 remains, rank 1
    assert m.cmc.tolist() == [1.0, 1.0, 1.0] and m.mAP == 1.0
    unfiltered = evaluate_retrieval(q, [4], g, gl)
    assert unfiltered.mAP == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((10, 4))
    g = rng.standard_normal((25, 4))
    ql, gl = rng.integers(0, 3, 10), rng.integers(0, 3, 25)
    qt = torch.from_numpy(q).to(dtype)
    gt = torch.from_numpy(g).to(dtype)
    ref = ref_evaluate(ref_distances(qt.double().numpy(), gt.double().numpy(), "cosine"), ql, gl)
    assert_matches(evaluate_retrieval(qt, ql, gt, gl), ref)


def test_numpy_inputs_and_str():
    q = np.eye(2, dtype=np.float32)
    m = evaluate_retrieval(q, np.array([0, 1]), q, np.array([0, 1]), ranks=(1,))
    assert m.rank1 == 1.0
    assert "R1=100.00" in str(m)
    assert m.as_dict("val/", percent=True)["val/mAP"] == 100.0


# ----------------------------------------------------------------------------------------------
# very large and very small features
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1e25, 1e-25])
@pytest.mark.parametrize("which", ["all", "some rows"])
def test_cosine_features_beyond_float32_norm_range_match_reference(factor, which):
    # float32 squares overflow past ~1.8e19 and vanish below ~1e-19: a plain L2 norm would be
    # inf or 0 there and every such row would score 0 against everything
    rng = np.random.default_rng(0)
    q = rng.standard_normal((12, 8)).astype(np.float32)
    g = rng.standard_normal((30, 8)).astype(np.float32)
    ql, gl = rng.integers(0, 4, 12), rng.integers(0, 4, 30)
    rows_q = slice(None) if which == "all" else slice(0, 12, 2)
    rows_g = slice(None) if which == "all" else slice(1, 30, 3)
    q[rows_q] *= np.float32(factor)
    g[rows_g] *= np.float32(factor)
    ref = ref_evaluate(ref_distances(q, g, "cosine"), ql, gl)
    assert_matches(evaluate_retrieval(q, ql, g, gl), ref)


@pytest.mark.parametrize(
    ("dtype", "exponent"), [(torch.float32, 70), (torch.float32, -80), (torch.float64, 600)]
)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_power_of_two_scaled_features_rank_exactly_like_the_originals(dtype, exponent, metric):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(40, 16, generator=gen, dtype=dtype)
    g = torch.randn(90, 16, generator=gen, dtype=dtype)
    ql = torch.randint(0, 6, (40,), generator=gen)
    gl = torch.randint(0, 6, (90,), generator=gen)
    plain = evaluate_retrieval(q, ql, g, gl, metric=metric, dedup_cmc=True)
    scale = 2.0**exponent
    scaled = evaluate_retrieval(q * scale, ql, g * scale, gl, metric=metric, dedup_cmc=True)
    assert torch.isfinite(q * scale).all()
    assert torch.equal(scaled.cmc, plain.cmc)
    assert scaled.mAP == plain.mAP and scaled.mINP == plain.mINP


# ----------------------------------------------------------------------------------------------
# chunking
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dedup", [False, True])
def test_chunked_equals_unchunked_exactly(metric, dedup):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(300, 16, generator=gen)
    g = torch.randn(257, 16, generator=gen)
    ql = torch.randint(0, 20, (300,), generator=gen)
    gl = torch.randint(0, 20, (257,), generator=gen)
    qc = torch.randint(0, 3, (300,), generator=gen)
    gc = torch.randint(0, 3, (257,), generator=gen)
    kw = {"query_cams": qc, "gallery_cams": gc, "metric": metric, "dedup_cmc": dedup}
    full = evaluate_retrieval(q, ql, g, gl, chunk_size=10_000, **kw)
    for cs in (1, 63, 64, 100, 299):
        part = evaluate_retrieval(q, ql, g, gl, chunk_size=cs, **kw)
        assert torch.equal(part.cmc, full.cmc)
        assert part.mAP == full.mAP and part.mINP == full.mINP
        assert part.num_valid_queries == full.num_valid_queries


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

_Q = torch.randn(3, 4)
_G = torch.randn(5, 4)
_QL = [0, 1, 2]
_GL = [0, 1, 2, 0, 1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_feats": torch.randn(3, 5)}, "feature dimension"),
        ({"query_feats": torch.randn(0, 4), "query_labels": []}, "query_feats is empty"),
        ({"gallery_feats": torch.randn(0, 4), "gallery_labels": []}, "gallery_feats is empty"),
        ({"query_feats": torch.tensor([[float("nan")] * 4] * 3)}, "query_feats contains NaN"),
        ({"gallery_feats": torch.full((5, 4), float("inf"))}, "gallery_feats contains NaN"),
        ({"query_feats": torch.randn(3)}, "query_feats must be 2-D"),
        ({"query_feats": torch.ones(3, 4, dtype=torch.int64)}, "floating dtype"),
        ({"query_labels": [0, 1]}, "query_labels has length 2"),
        ({"gallery_labels": [[0, 1, 2, 0, 1]]}, "gallery_labels must be 1-D"),
        ({"query_cams": [0, 0, 0]}, "both query_cams and gallery_cams"),
        ({"query_cams": [0, 0], "gallery_cams": [0] * 5}, "query_cams has length 2"),
        ({"metric": "l1"}, "metric must be"),
        ({"ranks": ()}, "ranks must not be empty"),
        ({"ranks": (0,)}, "ranks must be integers >= 1"),
        ({"chunk_size": 0}, "chunk_size must be"),
        ({"ignore": lambda idx: torch.zeros(1, 1, dtype=torch.bool)}, "ignore must return"),
        ({"query_labels": [7, 8, 9]}, "no query has a positive"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = {
        "query_feats": _Q,
        "query_labels": _QL,
        "gallery_feats": _G,
        "gallery_labels": _GL,
    }
    extra = {k: v for k, v in kwargs.items() if k not in args}
    args.update({k: v for k, v in kwargs.items() if k in args})
    with pytest.raises(ValueError, match=match):
        evaluate_retrieval(**args, **extra)


def test_float_labels_raise_type_error():
    with pytest.raises(TypeError, match="query_labels"):
        evaluate_retrieval(_Q, [0.0, 1.0, 2.0], _G, _GL)


def test_rank_rejects_bad_k():
    m = evaluate_retrieval(_Q, _QL, _G, _GL)
    with pytest.raises(ValueError, match="k must be"):
        m.rank(0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(200, 32, generator=gen)
    g = torch.randn(500, 32, generator=gen)
    ql = torch.randint(0, 30, (200,), generator=gen)
    gl = torch.randint(0, 30, (500,), generator=gen)
    cpu = evaluate_retrieval(q, ql, g, gl, dedup_cmc=True)
    gpu = evaluate_retrieval(q.cuda(), ql.cuda(), g.cuda(), gl.cuda(), dedup_cmc=True)
    np.testing.assert_allclose(gpu.cmc.numpy(), cpu.cmc.numpy(), atol=1e-2)
    assert gpu.mAP == pytest.approx(cpu.mAP, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# reliability: options, devices and labels are refused by name
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["no", 0, 1, None, 1.0])
def test_bool_options_refuse_non_bool_values(bad):
    with pytest.raises(TypeError, match="dedup_cmc must be a bool"):
        evaluate_retrieval(_Q, _QL, _G, _GL, dedup_cmc=bad)
    m = evaluate_retrieval(_Q, _QL, _G, _GL)
    with pytest.raises(TypeError, match="percent must be a bool"):
        m.as_dict(percent=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_feats": _Q.to("meta"), "gallery_feats": _G.to("meta")}, "query_feats is on meta"),
        ({"gallery_feats": _G.to("meta")}, "gallery_feats is on meta"),
        ({"query_labels": torch.tensor(_QL, device="meta")}, "query_labels is on meta"),
        (
            {"query_cams": torch.zeros(3, dtype=torch.int64, device="meta"),
             "gallery_cams": [1] * 5},
            "query_cams is on meta",
        ),
    ],
)  # fmt: skip
def test_meta_tensors_are_refused_up_front(kwargs, match):
    args = {"query_feats": _Q, "query_labels": _QL, "gallery_feats": _G, "gallery_labels": _GL}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_retrieval(**args)


@pytest.mark.parametrize("big", [2**70, -(2**70), 2**63, 2**64])
@pytest.mark.parametrize("where", ["query_labels", "gallery_labels", "query_cams"])
def test_python_labels_beyond_int64_are_a_value_error_naming_the_argument(big, where):
    args = {"query_labels": list(_QL), "gallery_labels": list(_GL)}
    cams = {"query_cams": [0, 0, 0], "gallery_cams": [1] * 5}
    if where == "query_cams":
        cams["query_cams"] = [big, 0, 0]
    else:
        args[where][0] = big
    with pytest.raises(ValueError, match=f"{where} must fit in int64"):
        evaluate_retrieval(_Q, args["query_labels"], _G, args["gallery_labels"], **cams)
