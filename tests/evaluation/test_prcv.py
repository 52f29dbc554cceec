"""Tests for the PRCV MM-k protocol (sdmreid.evaluation.prcv) and the truncated mAP@k.

Every number is checked against a float64 numpy reference written here: brute-force ranking
(stable sort, ties by gallery index), AP, AP@k as the seed pipeline's ``compute_map`` defines it
(precision at each positive within the top k, averaged over those positives; 0 when none is
there), and fusion (weighted mean of unit embeddings, normalised again).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmreid.evaluation import (
    PRCV_QUERY_MODALITIES,
    PRCVResult,
    RetrievalMetrics,
    build_query_groups,
    combination_name,
    evaluate_prcv,
    evaluate_retrieval,
    mean_over_trials,
)
from sdmreid.modality import Modality
from tests.evaluation.test_metrics import integer_problems, ref_distances

NAMES = ["nir", "sketch", "cpencil", "text"]

# ----------------------------------------------------------------------------------------------
# independent reference
# ----------------------------------------------------------------------------------------------


def ref_query(scores: np.ndarray, gl: np.ndarray, label: int, k: int | None):
    """(AP, AP@k, rank of the first positive, INP) of one query, or None without a positive.

    ``scores`` are similarities (higher first); ties keep gallery order.
    """
    order = np.argsort(-scores, kind="stable")
    match = gl[order] == label
    if not match.any():
        return None
    pos_ranks = np.flatnonzero(match) + 1
    precision = np.arange(1, len(pos_ranks) + 1) / pos_ranks
    ap = float(precision.mean())
    at_k = None
    if k is not None:
        inside = pos_ranks <= k
        at_k = float(precision[inside].mean()) if inside.any() else 0.0
    return ap, at_k, int(pos_ranks[0]), len(pos_ranks) / pos_ranks[-1]


def ref_unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_fuse(rows: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of unit embeddings, L2-normalised again."""
    fused = sum(w * ref_unit(r) for w, r in zip(weights, rows, strict=True)) / sum(weights)
    return ref_unit(fused)


def ref_summary(per_query: list[tuple], ranks=(1, 5, 10)) -> dict[str, float]:
    aps, at_k, firsts, inps = zip(*per_query, strict=True)
    out = {"mAP": np.mean(aps), "mINP": np.mean(inps), "n": len(aps)}
    out.update({f"R{r}": np.mean([f <= r for f in firsts]) for r in ranks})
    if at_k[0] is not None:
        out["mAP@k"] = np.mean(at_k)
    return out


def ref_prcv(queries, gallery, gl, groups, weights, k, average):
    """{"combinations": {name: summary}, "protocols": {MM-k: summary}, "score": float}."""
    g_unit = ref_unit(gallery)
    per_comb: dict[tuple, list[tuple]] = {}
    for comb, index in groups.items():
        fused = ref_fuse(
            [queries[m][0][index[:, j]] for j, m in enumerate(comb)],
            [weights.get(m, 1.0) for m in comb],
        )
        labels = queries[comb[0]][1][index[:, 0]]
        rows = [ref_query(fused[i] @ g_unit.T, gl, labels[i], k) for i in range(len(labels))]
        per_comb[comb] = [r for r in rows if r is not None]
    combs = {combination_name(c): ref_summary(v) for c, v in per_comb.items()}
    protocols = {}
    for size in range(1, 5):
        parts = [(c, v) for c, v in per_comb.items() if len(c) == size]
        if not parts:
            continue
        if average == "queries":
            protocols[f"MM-{size}"] = ref_summary([r for _, v in parts for r in v])
        else:
            each = [ref_summary(v) for _, v in parts]
            protocols[f"MM-{size}"] = {
                key: np.mean([e[key] for e in each]) for key in each[0] if key != "n"
            }
            protocols[f"MM-{size}"]["n"] = sum(e["n"] for e in each)
    metric = "mAP" if k is None else "mAP@k"
    score = float(np.mean([p[metric] for p in protocols.values()]))
    return {"combinations": combs, "protocols": protocols, "score": score}


def assert_summary(m: RetrievalMetrics, ref: dict[str, float], tol: float = 1e-9) -> None:
    assert m.mAP == pytest.approx(ref["mAP"], abs=tol)
    assert m.mINP == pytest.approx(ref["mINP"], abs=tol)
    for r in (1, 5, 10):
        assert m.rank(r) == pytest.approx(ref[f"R{r}"], abs=tol)
    if "mAP@k" in ref:
        assert m.mAP_at_k == pytest.approx(ref["mAP@k"], abs=tol)
    else:
        assert m.mAP_at_k is None
    assert m.num_valid_queries == ref["n"]


def assert_result(res: PRCVResult, ref: dict, tol: float = 1e-9) -> None:
    assert list(res.combinations) == list(ref["combinations"])
    assert list(res.protocols) == list(ref["protocols"])
    for name, m in res.combinations.items():
        assert_summary(m, ref["combinations"][name], tol)
    for name, m in res.protocols.items():
        assert_summary(m, ref["protocols"][name], tol)
    assert res.score == pytest.approx(ref["score"], abs=tol)


# ----------------------------------------------------------------------------------------------
# the worked example of the docs, by hand
# ----------------------------------------------------------------------------------------------

GALLERY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
GALLERY_LABELS = [1, 2, 1]
QUERIES = {
    "nir": (torch.tensor([[0.0, 1.0], [0.0, 1.0]]), [1, 2]),
    "text": (torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), [1, 2, 2]),
}
GROUPS = {"nir": [0, 1], "text": [0, 1, 2], "nir+text": [[0, 0], [1, 1]]}


def test_worked_example_by_hand():
    # NIR item 0 (identity 1) is (0, 1): it ranks g1 (id 2, cos 1), g2 (id 1, .8), g0 (id 1, 0),
    # so its positives are at ranks 2 and 3: AP = (1/2 + 2/3) / 2 = 7/12; every other single
    # query finds its positives first (AP 1). The fused group (NIR 0, text 0) with text weighing
    # 3 is (0.75, 0.25): g0 .75, g2 .65, g1 .25 -> AP 1.
    res = evaluate_prcv(QUERIES, GALLERY, GALLERY_LABELS, groups=GROUPS, weights={"text": 3.0})
    assert res.combinations["nir"].mAP == pytest.approx((7 / 12 + 1) / 2)
    assert res.combinations["text"].mAP == 1.0
    assert res.protocols["MM-1"].mAP == pytest.approx((7 / 12 + 4) / 5)  # over the 5 queries
    assert res.protocols["MM-2"].mAP == 1.0
    assert res.score == pytest.approx(((7 / 12 + 4) / 5 + 1) / 2)
    assert res.protocols["MM-1"].rank1 == pytest.approx(4 / 5)
    assert res.weights == {"nir": 1.0, "sketch": 1.0, "cpencil": 1.0, "text": 3.0}
    # averaging over combinations: MM-1 = (nir 19/24 + text 1) / 2
    by_comb = evaluate_prcv(QUERIES, GALLERY, GALLERY_LABELS, groups=GROUPS, average="combinations")
    assert by_comb.protocols["MM-1"].mAP == pytest.approx((19 / 24 + 1) / 2)
    assert by_comb.protocols["MM-1"].num_valid_queries == 5
    # mAP@1: NIR item 0 has no positive at rank 1 -> AP@1 = 0 (it stays in the mean)
    at1 = evaluate_prcv(QUERIES, GALLERY, GALLERY_LABELS, groups=GROUPS, map_k=1)
    assert at1.protocols["MM-1"].mAP_at_k == pytest.approx(4 / 5)
    assert at1.score == pytest.approx((4 / 5 + 1) / 2)
    assert at1.score_metric == "mAP@1"


def test_ap_at_k_is_normalised_by_the_positives_in_the_top_k():
    # positives at ranks 2 and 5 of 5: AP = (1/2 + 2/5) / 2; AP@3 = (1/2) / 1; AP@1 = 0
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.0, 1.0]])
    labels = [0, 7, 0, 0, 7]
    assert evaluate_retrieval(q, [7], g, labels).mAP == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert evaluate_retrieval(q, [7], g, labels, map_k=3).mAP_at_k == pytest.approx(1 / 2)
    assert evaluate_retrieval(q, [7], g, labels, map_k=1).mAP_at_k == 0.0
    assert evaluate_retrieval(q, [7], g, labels, map_k=5).mAP_at_k == pytest.approx(0.45)
    assert evaluate_retrieval(q, [7], g, labels).mAP_at_k is None


# ----------------------------------------------------------------------------------------------
# against the reference: mAP@k on its own, then the whole protocol
# ----------------------------------------------------------------------------------------------


@given(integer_problems(), st.integers(1, 16))
def test_map_at_k_matches_reference_with_ties_and_removal(problem, k):
    q, ql, g, gl, qc, gc = problem
    dist = ref_distances(q, g, "euclidean")
    rows = []
    for i in range(len(ql)):
        keep = np.ones(len(gl), bool) if qc is None else ~((gl == ql[i]) & (gc == qc[i]))
        r = ref_query(-dist[i][keep], gl[keep], ql[i], k)
        if r is not None:
            rows.append(r)
    call = lambda: evaluate_retrieval(  # noqa: E731
        q, ql, g, gl, query_cams=qc, gallery_cams=gc, metric="euclidean", map_k=k
    )
    if not rows:
        with pytest.raises(ValueError, match="no query has a positive"):
            call()
        return
    m = call()
    assert m.mAP_at_k == pytest.approx(float(np.mean([r[1] for r in rows])), abs=1e-12)
    assert m.mAP == pytest.approx(float(np.mean([r[0] for r in rows])), abs=1e-12)
    assert m.map_k == k and f"mAP@{k}" in m.as_dict() and f"mAP@{k}=" in str(m)


def test_mean_over_trials_averages_map_at_k_only_when_every_trial_has_it():
    cmc = torch.tensor([1.0])
    a = RetrievalMetrics(cmc, 0.5, 0.5, 1, 0, mAP_at_k=0.2, map_k=10)
    b = RetrievalMetrics(cmc, 0.5, 0.5, 1, 0, mAP_at_k=0.6, map_k=10)
    c = RetrievalMetrics(cmc, 0.5, 0.5, 1, 0, mAP_at_k=0.6, map_k=5)
    assert mean_over_trials([a, b]).mAP_at_k == pytest.approx(0.4)
    assert mean_over_trials([a, b]).map_k == 10
    assert mean_over_trials([a, c]).mAP_at_k is None
    assert mean_over_trials([a, RetrievalMetrics(cmc, 0.5, 0.5, 1, 0)]).mAP_at_k is None


@st.composite
def prcv_cases(draw):  # type: ignore[no-untyped-def]
    n_ids = draw(st.integers(1, 4))
    mods = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    ident = st.integers(0, n_ids - 1)
    labels = {m: np.array(draw(st.lists(ident, min_size=1, max_size=6))) for m in mods}
    # every identity is in the gallery (so no combination is without positives), plus others
    extra = draw(st.lists(st.integers(0, n_ids), max_size=8))
    gl = np.array(draw(st.permutations(list(range(n_ids)) + extra)))
    weights = {
        m: draw(st.sampled_from([0.5, 1.0, 2.0, 3.5]))
        for m in draw(st.lists(st.sampled_from(mods), unique=True))
    }
    return {
        "labels": labels,
        "gallery_labels": gl,
        "dim": draw(st.integers(2, 6)),
        "values": draw(st.integers(0, 2**32 - 1)),
        "weights": weights,
        "map_k": draw(st.sampled_from([None, 1, 2, 5, 100])),
        "average": draw(st.sampled_from(["queries", "combinations"])),
        "sizes": draw(st.lists(st.integers(1, 4), min_size=1, max_size=4, unique=True)),
        "per_identity": draw(st.integers(1, 3)),
        "singles": draw(st.sampled_from(["all", "draw"])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _features(case):
    # Gaussian features: distinct scores are far apart compared with rounding, so the float64
    # reference and the library rank identically (exact ties are tested by evaluate_retrieval)
    rng = np.random.default_rng(case["values"])
    d = case["dim"]
    queries = {m: (rng.normal(size=(len(lab), d)), lab) for m, lab in case["labels"].items()}
    return queries, rng.normal(size=(len(case["gallery_labels"]), d))


@settings(max_examples=80, deadline=None)
@given(prcv_cases())
def test_evaluate_prcv_matches_reference(case):
    queries, gallery = _features(case)
    gl = case["gallery_labels"]
    groups = build_query_groups(
        case["labels"],
        sizes=case["sizes"],
        per_identity=case["per_identity"],
        singles=case["singles"],
        seed=case["seed"],
    )
    call = lambda: evaluate_prcv(  # noqa: E731
        {m: (torch.from_numpy(f), lab) for m, (f, lab) in queries.items()},
        torch.from_numpy(gallery),
        gl,
        groups=groups,
        weights=case["weights"],
        map_k=case["map_k"],
        average=case["average"],
    )
    if not groups:  # e.g. MM-2 only, with one query modality
        with pytest.raises(ValueError, match="groups is empty"):
            call()
        return
    by_name = {m.name.lower(): m for m in PRCV_QUERY_MODALITIES}
    ref_queries = {by_name[m]: v for m, v in queries.items()}
    ref_weights = {by_name[m]: w for m, w in case["weights"].items()}
    ref_groups = {c: g.numpy() for c, g in groups.items()}
    ref = ref_prcv(
        ref_queries, gallery, gl, ref_groups, ref_weights, case["map_k"], case["average"]
    )
    assert_result(call(), ref)


@settings(max_examples=60, deadline=None)
@given(prcv_cases())
def test_built_groups_hold_one_identity_and_every_eligible_identity(case):
    labels, k_list = case["labels"], case["sizes"]
    groups = build_query_groups(
        labels,
        sizes=k_list,
        per_identity=case["per_identity"],
        singles=case["singles"],
        seed=case["seed"],
    )
    present = [m for m in PRCV_QUERY_MODALITIES if m.name.lower() in labels]
    expected = []
    for k in sorted(k_list):
        for comb in combinations(present, k):
            lab = [labels[m.name.lower()] for m in comb]
            eligible = set(lab[0].tolist()).intersection(*[set(x.tolist()) for x in lab[1:]])
            if k == 1 and case["singles"] == "all":
                assert groups[comb][:, 0].tolist() == list(range(len(lab[0])))
            elif eligible:
                got = groups[comb]
                assert got.dtype == torch.int64 and got.shape[1] == k
                ids = np.stack([lab[j][got[:, j].numpy()] for j in range(k)], 1)
                assert (ids == ids[:, :1]).all()  # one identity per group
                owners, counts = np.unique(ids[:, 0], return_counts=True)
                assert set(owners.tolist()) == eligible
                assert (counts == case["per_identity"]).all()
            else:
                assert comb not in groups
                continue
            expected.append(comb)
    assert list(groups) == expected


def test_built_groups_are_deterministic_and_ignore_key_order():
    labels = {"nir": [1, 1, 2, 2, 2], "text": [2, 1, 1], "sk": [1, 2, 2, 2]}
    a = build_query_groups(labels, per_identity=3, seed=5)
    b = build_query_groups(dict(reversed(list(labels.items()))), per_identity=3, seed=5)
    c = build_query_groups(labels, per_identity=3, seed=torch.Generator().manual_seed(5))
    d = build_query_groups(labels, per_identity=3, seed=6)
    assert list(a) == list(b) == list(c)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert any(not torch.equal(a[k], d[k]) for k in a)
    gen = torch.Generator().manual_seed(5)
    first = build_query_groups(labels, per_identity=3, seed=gen)
    second = build_query_groups(labels, per_identity=3, seed=gen)  # the generator advanced
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_built_groups_draw_items_uniformly():
    # identity 0 has 4 NIR items and 1 text item; 4000 groups: each NIR item about 1000 times
    groups = build_query_groups(
        {"nir": [0, 0, 0, 0], "text": [0]}, sizes=(2,), per_identity=4000, seed=0
    )
    counts = np.bincount(groups[(Modality.NIR, Modality.TEXT)][:, 0].numpy(), minlength=4)
    chi2 = float(((counts - 1000) ** 2 / 1000).sum())
    assert chi2 < 16.3  # the 0.999 quantile of chi-square with 3 degrees of freedom


def test_default_groups_are_built_with_the_seed_and_float32_agrees():
    rng = np.random.default_rng(0)
    queries = {m: (rng.normal(size=(12, 8)), rng.integers(0, 4, 12)) for m in NAMES}
    gallery, gl = rng.normal(size=(30, 8)), np.arange(30) % 5
    res64 = evaluate_prcv(queries, gallery, gl, seed=3, map_k=10)
    explicit = evaluate_prcv(
        queries,
        gallery,
        gl,
        groups=build_query_groups({m: v[1] for m, v in queries.items()}, seed=3),
        map_k=10,
    )
    res32 = evaluate_prcv(
        {m: (f.astype(np.float32), lab) for m, (f, lab) in queries.items()},
        gallery.astype(np.float32),
        gl,
        seed=3,
        map_k=10,
    )
    assert list(res64.protocols) == ["MM-1", "MM-2", "MM-3", "MM-4"]
    assert res64.score == explicit.score
    assert res32.score == pytest.approx(res64.score, abs=1e-6)
    assert res64.protocols["MM-1"].num_valid_queries == 48


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_give_the_cpu_result():
    rng = np.random.default_rng(1)
    queries = {m: (torch.randn(10, 6, dtype=torch.float64), rng.integers(0, 3, 10)) for m in NAMES}
    gallery, gl = torch.randn(20, 6, dtype=torch.float64), np.arange(20) % 3
    cpu = evaluate_prcv(queries, gallery, gl, map_k=5)
    cuda = evaluate_prcv(
        {m: (f.cuda(), torch.as_tensor(lab).cuda()) for m, (f, lab) in queries.items()},
        gallery.cuda(),
        torch.as_tensor(gl).cuda(),
        map_k=5,
    )
    assert cuda.score == pytest.approx(cpu.score, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# the result type
# ----------------------------------------------------------------------------------------------


def test_result_table_dict_and_line():
    res = evaluate_prcv(QUERIES, GALLERY, GALLERY_LABELS, groups=GROUPS, map_k=1)
    table = res.format()
    lines = table.splitlines()
    assert lines[0].split() == ["protocol", "queries", "mAP", "mAP@1", "R1", "R5", "R10", "mINP"]
    assert [ln.split()[0] for ln in lines[1:-1]] == ["MM-1", "nir", "text", "MM-2", "nir+text"]
    assert lines[1].split()[1:3] == ["5", f"{100 * (7 / 12 + 4) / 5:.2f}"]
    assert lines[-1].endswith(f"{100 * res.score:.2f}") and "mAP@1" in lines[-1]
    assert res.format(percent=False).splitlines()[-1].endswith(f"{res.score:.4f}")
    d = res.as_dict()
    assert d["prcv/score"] == res.score
    assert d["prcv/MM-1/mAP@1"] == pytest.approx(4 / 5)
    assert d["prcv/nir+text/rank1"] == 1.0
    assert res.as_dict("x/", percent=True)["x/score"] == pytest.approx(100 * res.score)
    assert str(res).endswith(f"score(mAP@1)={100 * res.score:.2f}")


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def _call(**overrides):
    kwargs = {"groups": GROUPS, **overrides}
    queries = kwargs.pop("queries", QUERIES)
    return evaluate_prcv(queries, GALLERY, GALLERY_LABELS, **kwargs)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"queries": {"depth": QUERIES["nir"]}}, ValueError, r"queries: unknown modality 'depth'"),
        ({"queries": {"rgb": QUERIES["nir"]}}, ValueError, r"queries names RGB"),
        ({"queries": {"nir": QUERIES["nir"], "ir": QUERIES["nir"]}}, ValueError, "twice"),
        ({"queries": {}}, ValueError, r"queries is empty"),
        ({"queries": {"nir": (torch.zeros(0, 2), [])}}, ValueError, r"queries\['nir'\] feats"),
        ({"queries": {"nir": torch.zeros(2, 2)}}, TypeError, r"queries\['nir'\] must be a"),
        ({"queries": {"nir": (torch.zeros(2, 3), [1, 2])}}, ValueError, "dimension"),
        ({"queries": {"nir": (torch.ones(2, 2), [1])}}, ValueError, r"queries\['nir'\] labels"),
        ({"weights": {"rgb": 2.0}}, ValueError, r"weights names RGB"),
        ({"weights": {"depth": 2.0}}, ValueError, r"weights: unknown modality"),
        ({"weights": {"nir": 0.0}}, ValueError, r"weights\['nir'\] must be a finite number > 0"),
        ({"weights": {"nir": float("nan")}}, ValueError, r"weights\['nir'\]"),
        ({"weights": {"nir": True}}, TypeError, r"weights\['nir'\] must be a number"),
        ({"weights": [1.0]}, TypeError, "weights must be a mapping"),
        ({"groups": {"nir+rgb": [[0, 0]]}}, ValueError, r"groups key 'nir\+rgb' names RGB"),
        ({"groups": {"nir+ir": [[0, 0]]}}, ValueError, r"names a modality twice"),
        ({"groups": {(): [[0]]}}, ValueError, r"names no modality"),
        ({"groups": {"nir+text": [[0, 1]]}}, ValueError, r"row 0 mixes identities \[1, 2\]"),
        ({"groups": {"nir": [0, 5]}}, ValueError, r"groups\['nir'\] indexes NIR items outside"),
        ({"groups": {"sketch": [0]}}, ValueError, r"uses \['SKETCH'\], which queries does not"),
        ({"groups": {"nir+text": [0, 1]}}, ValueError, r"must have shape \[n, 2\]"),
        ({"groups": {"nir": []}}, ValueError, r"groups\['nir'\] is empty"),
        ({"groups": {}}, ValueError, "groups is empty"),
        ({"groups": {"nir": [0.0]}}, TypeError, "integer indices"),
        ({"groups": {"nir": [0], "ir": [1]}}, ValueError, "twice"),
        ({"average": "median"}, ValueError, "average must be"),
        ({"map_k": 0}, ValueError, "map_k must be >= 1"),
        ({"map_k": 1.5}, TypeError, "map_k must be an int"),
        ({"ranks": ()}, ValueError, "ranks must not be empty"),
        ({"groups": None, "seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_bad_input_names_the_argument(overrides, error, match):
    with pytest.raises(error, match=match):
        _call(**overrides)


def test_a_combination_without_gallery_positives_is_named():
    queries = {"nir": (torch.eye(2), [5, 6])}
    with pytest.raises(ValueError, match="combination nir: no query has a positive"):
        evaluate_prcv(queries, GALLERY, GALLERY_LABELS)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sizes": (0,)}, ValueError, "sizes must be >= 1"),
        ({"sizes": (5,)}, ValueError, r"sizes must name MM-k kinds with k in 1\.\.4"),
        ({"sizes": ()}, ValueError, "sizes must name"),
        ({"sizes": (1.0,)}, TypeError, "sizes must be a sequence of integers"),
        ({"per_identity": 0}, ValueError, "per_identity must be >= 1"),
        ({"singles": "some"}, ValueError, "singles must be"),
        ({"seed": "0"}, TypeError, "seed must be an int"),
    ],
)
def test_builder_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_query_groups({"nir": [1, 2]}, **kwargs)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        ({"nir": []}, ValueError, r"query_labels\['nir'\] is empty"),
        ({"visible": [1]}, ValueError, "query_labels names RGB"),
        ({"depth": [1]}, ValueError, "query_labels: unknown modality"),
        ({}, ValueError, "query_labels is empty"),
        ({"nir": [1.5]}, TypeError, r"query_labels\['nir'\] must hold integers"),
        ([1, 2], TypeError, "query_labels must be a mapping"),
    ],
)
def test_builder_bad_query_sets(labels, error, match):
    with pytest.raises(error, match=match):
        build_query_groups(labels)
