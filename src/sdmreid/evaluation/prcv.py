"""The PRCV 2025 omni-modality ReID challenge (ORBench): the MM-k protocol.

The gallery is RGB; the queries are the four other modalities, alone and combined.

* **Query groups.** A query of kind **MM-k** is a *group* of ``k`` items, one from each of ``k``
  distinct query modalities (NIR, SKETCH, CPENCIL, TEXT), all of one identity. MM-1 is a single
  item; MM-2, MM-3 and MM-4 combine two, three or all four modalities.
* **Fusion.** The feature of a group is the weighted mean of its items' L2-normalised
  embeddings, ``Σ_m w_m e_m / ‖e_m‖ / Σ_m w_m`` (one weight per modality, equal by default),
  L2-normalised again; the gallery is ranked by cosine similarity, exactly as
  :func:`~sdmreid.evaluation.evaluate_retrieval` ranks (ties by gallery order).
* **MM-k metrics.** With ``average="queries"`` (default) the MM-k mAP is the mean AP over
  *every* MM-k query, whatever its combination: the organisers compute one mAP per query kind
  over its fixed query list, and the seed pipeline's ``tools/eval_mm_protocol.py`` pools the
  queries of all combinations the same way. ``average="combinations"`` takes the unweighted
  mean of the per-combination values instead (the seed's per-epoch validation in ``train.py``
  averages the per-combination mAPs). CMC, mINP and mAP@k follow the same rule.
* **Score.** The challenge score is the mean of the MM-1, MM-2, MM-3 and MM-4 mAPs (``mAP@k``
  with ``map_k=k``; the seed pipeline logs mAP@100), over the kinds that have queries.
* **mAP@k** is :func:`~sdmreid.evaluation.evaluate_retrieval`'s ``map_k`` option: the AP of the
  positives within the top ``k`` ranks, normalised by how many of them are there, as the seed's
  ``compute_map`` does; a query without a positive in its top ``k`` scores 0 (the seed's
  ``compute_map`` leaves such a query out of the mean, which can only raise the number).

Groups are given explicitly (the organisers' fixed query lists, written as indices into each
modality's query set) or drawn by :func:`build_query_groups` with an explicit seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal, Union

import numpy as np
import torch

from sdmreid._validation import check_has_data, check_int, int64_array
from sdmreid.evaluation.metrics import (
    RetrievalMetrics,
    _as_feats,
    _as_ints,
    _check_ranks,
    _unit_rows,
    evaluate_retrieval,
)
from sdmreid.evaluation.protocols import IntArrayLike, Tensorish, mean_over_trials
from sdmreid.modality import Modality, ModalityLike, parse_modality

__all__ = [
    "PRCV_QUERY_MODALITIES",
    "Combination",
    "PRCVResult",
    "QueryGroups",
    "build_query_groups",
    "combination_name",
    "evaluate_prcv",
]

#: The query modalities of the challenge, in the order used for combinations and names.
PRCV_QUERY_MODALITIES: tuple[Modality, ...] = (
    Modality.NIR,
    Modality.SKETCH,
    Modality.CPENCIL,
    Modality.TEXT,
)

#: A combination of distinct query modalities in :data:`PRCV_QUERY_MODALITIES` order.
Combination = tuple[Modality, ...]

#: Query groups: for each combination, an ``int64`` tensor ``[n, k]`` whose column ``j`` indexes
#: the query set of the combination's ``j``-th modality (one row = one query).
QueryGroups = dict[Combination, torch.Tensor]

#: How the MM-k value is formed from its combinations' queries.
Average = Literal["queries", "combinations"]

GroupKey = Union[str, ModalityLike, tuple[ModalityLike, ...]]  # noqa: UP007


def combination_name(combination: Sequence[ModalityLike]) -> str:
    """The name of a combination of query modalities: lower-case names joined by ``+``, in
    :data:`PRCV_QUERY_MODALITIES` order.

    Example:
        >>> combination_name(["text", "ir"])
        'nir+text'
    """
    mods = sorted({parse_modality(m) for m in combination})
    return "+".join(m.name.lower() for m in mods)


# ----------------------------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------------------------


def _query_modality(key: object, name: str) -> Modality:
    """``key`` as a query modality; RGB or an unknown name is a ``ValueError`` naming ``name``."""
    try:
        m = parse_modality(key)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if m == Modality.RGB:
        raise ValueError(
            f"{name} names RGB ({key!r}), the gallery modality; the query modalities are "
            f"{', '.join(q.name for q in PRCV_QUERY_MODALITIES)}"
        )
    return m


def _combination(key: object, name: str) -> tuple[Combination, list[int]]:
    """The canonical combination a groups key names, and ``perm`` with
    ``canonical[j] == given[perm[j]]`` (the key's columns in canonical order)."""
    parts: list[object]
    if isinstance(key, str):
        parts = [p.strip() for p in key.split("+")]
    elif isinstance(key, (tuple, list)):
        parts = list(key)
    else:
        parts = [key]
    if not parts:
        raise ValueError(f"{name} key {key!r} names no modality: give 1 to 4 query modalities")
    mods = [_query_modality(p, f"{name} key {key!r}") for p in parts]
    if len(set(mods)) != len(mods):
        raise ValueError(
            f"{name} key {key!r} names a modality twice: a group takes one item of each of 1 "
            f"to 4 distinct query modalities"
        )
    perm = sorted(range(len(mods)), key=lambda j: int(mods[j]))
    return tuple(mods[j] for j in perm), perm


def _parse_queries(
    queries: Mapping[ModalityLike, tuple[Tensorish, IntArrayLike]], gallery: torch.Tensor
) -> dict[Modality, tuple[torch.Tensor, torch.Tensor]]:
    if not isinstance(queries, Mapping):
        raise TypeError(
            f"queries must be a mapping {{modality: (feats, labels)}}, got {type(queries).__name__}"
        )
    if not queries:
        raise ValueError("queries is empty: give at least one query modality")
    out: dict[Modality, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, value in queries.items():
        m = _query_modality(key, "queries")
        if m in out:
            raise ValueError(f"queries names {m.name} twice (last as {key!r})")
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"queries[{key!r}] must be a (feats, labels) pair")
        feats = _as_feats(value[0], f"queries[{key!r}] feats")  # refuses an empty set by name
        if feats.shape[1] != gallery.shape[1]:
            raise ValueError(
                f"queries[{key!r}] feats have dimension {feats.shape[1]}, the gallery "
                f"{gallery.shape[1]}"
            )
        if feats.device != gallery.device:
            raise ValueError(
                f"queries[{key!r}] feats are on {feats.device}, the gallery on {gallery.device}"
            )
        labels = _as_ints(value[1], f"queries[{key!r}] labels", feats.shape[0], feats.device)
        out[m] = (feats, labels)
    return out


def _parse_weights(weights: Mapping[ModalityLike, float] | None) -> dict[Modality, float]:
    out = {m: 1.0 for m in PRCV_QUERY_MODALITIES}
    if weights is None:
        return out
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping {{modality: weight}}, got {weights!r}")
    named: set[Modality] = set()
    for key, w in weights.items():
        m = _query_modality(key, "weights")
        if m in named:
            raise ValueError(f"weights names {m.name} twice (last as {key!r})")
        named.add(m)
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, float, np.number)):
            raise TypeError(f"weights[{key!r}] must be a number, got {type(w).__name__} {w!r}")
        if not (math.isfinite(float(w)) and float(w) > 0):
            raise ValueError(f"weights[{key!r}] must be a finite number > 0, got {w!r}")
        out[m] = float(w)
    return out


def _index_matrix(value: object, name: str, k: int) -> torch.Tensor:
    """``value`` as an ``int64`` CPU tensor ``[n, k]`` with ``n >= 1`` (``[n]`` when ``k == 1``)."""
    if isinstance(value, torch.Tensor):
        check_has_data(value, name)
        t = value.detach().cpu()
    else:
        arr = int64_array(value, name)
        if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer indices, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{name} must hold integer indices, got dtype {t.dtype}")
    if t.ndim == 1 and k == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[1] != k:
        raise ValueError(
            f"{name} must have shape [n, {k}] (one column per modality of its key), got "
            f"{tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: give at least one group")
    return t.to(torch.int64)


def _parse_groups(
    groups: Mapping[GroupKey, object], labels: Mapping[Modality, torch.Tensor]
) -> QueryGroups:
    if not isinstance(groups, Mapping):
        raise TypeError(
            f"groups must be a mapping {{combination: [n, k] indices}}, got {type(groups).__name__}"
        )
    if not groups:
        raise ValueError("groups is empty: give at least one combination")
    out: QueryGroups = {}
    for key, value in groups.items():
        comb, perm = _combination(key, "groups")
        if comb in out:
            raise ValueError(f"groups names {combination_name(comb)} twice (last as {key!r})")
        missing = [m.name for m in comb if m not in labels]
        if missing:
            raise ValueError(f"groups[{key!r}] uses {missing}, which queries does not hold")
        index = _index_matrix(value, f"groups[{key!r}]", len(comb))[:, perm]
        for j, m in enumerate(comb):
            n = labels[m].shape[0]
            if bool(((index[:, j] < 0) | (index[:, j] >= n)).any()):
                raise ValueError(
                    f"groups[{key!r}] indexes {m.name} items outside 0..{n - 1} (queries holds "
                    f"{n} {m.name} items)"
                )
        ids = torch.stack([labels[m].cpu()[index[:, j]] for j, m in enumerate(comb)], 1)
        mixed = (ids != ids[:, :1]).any(1)
        if bool(mixed.any()):
            row = int(torch.argmax(mixed.to(torch.int8)))
            raise ValueError(
                f"groups[{key!r}] row {row} mixes identities {ids[row].tolist()}: the items of "
                f"a query group show one identity"
            )
        out[comb] = index
    return out


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(f"seed must be a CPU torch.Generator, got one on {seed.device}")
        return seed
    return torch.Generator().manual_seed(check_int("seed", seed, 0))


# ----------------------------------------------------------------------------------------------
# query groups
# ----------------------------------------------------------------------------------------------


def build_query_groups(
    query_labels: Mapping[ModalityLike, IntArrayLike],
    *,
    sizes: Sequence[int] = (1, 2, 3, 4),
    per_identity: int = 1,
    singles: Literal["all", "draw"] = "all",
    seed: int | torch.Generator = 0,
) -> QueryGroups:
    """Draw MM-k query groups from per-modality query sets, deterministically.

    For each ``k`` in ``sizes`` and each combination of ``k`` of the query modalities present
    (in :data:`PRCV_QUERY_MODALITIES` order), every identity that has at least one item in each
    of the combination's modalities gets ``per_identity`` groups; each group takes one item per
    modality, drawn uniformly among that identity's items (independently for every group, as
    the seed pipeline's ``random.choice``). With ``singles="all"`` (default) MM-1 is every item
    of each modality instead (the usual single-modality protocol); ``singles="draw"`` draws
    MM-1 like the others. A combination no identity can fill is left out.

    The draws come from ``seed`` only, in a fixed order (sizes ascending, combinations in
    canonical order, one ``torch.rand`` call per column), so the same labels and seed give the
    same groups whatever the order of the mapping's keys.

    Args:
        query_labels: ``{modality: [N_m] identities}`` of each query set (any modality alias).
        sizes: the MM-k kinds to build, each in ``1..4``.
        per_identity: groups per identity and combination (``>= 1``).
        singles: ``"all"`` or ``"draw"`` (see above).
        seed: an ``int >= 0`` or a CPU ``torch.Generator`` (advanced by the draws).

    Returns:
        :data:`QueryGroups`: ``{combination: int64 tensor [n, k]}``; column ``j`` indexes the
        query set of ``combination[j]``.

    Raises:
        ValueError: an unknown or RGB modality, a modality named twice, an empty query set,
            ``sizes`` outside ``1..4`` or empty, ``per_identity < 1``, an unknown ``singles``.
        TypeError: non-integer labels, ``sizes`` or ``per_identity``.

    Example:
        >>> groups = build_query_groups({"nir": [7, 7, 8], "text": [7, 8]}, seed=0)
        >>> {combination_name(c): tuple(g.shape) for c, g in groups.items()}
        {'nir': (3, 1), 'text': (2, 1), 'nir+text': (2, 2)}
        >>> groups[(Modality.NIR, Modality.TEXT)][:, 1].tolist()  # the one text item per id
        [0, 1]
    """
    if not isinstance(query_labels, Mapping):
        raise TypeError(
            "query_labels must be a mapping {modality: labels}, got "
            f"{type(query_labels).__name__}"
        )
    if not query_labels:
        raise ValueError("query_labels is empty: give at least one query modality")
    labels: dict[Modality, torch.Tensor] = {}
    for key, value in query_labels.items():
        m = _query_modality(key, "query_labels")
        if m in labels:
            raise ValueError(f"query_labels names {m.name} twice (last as {key!r})")
        lab = _as_ints(value, f"query_labels[{key!r}]", device=torch.device("cpu"))
        if lab.numel() == 0:
            raise ValueError(f"query_labels[{key!r}] is empty: a query set needs items")
        labels[m] = lab
    try:
        size_list = sorted({check_int("sizes", k, 1) for k in sizes})
    except TypeError:
        raise TypeError(f"sizes must be a sequence of integers in 1..4, got {sizes!r}") from None
    if not size_list or size_list[-1] > len(PRCV_QUERY_MODALITIES):
        raise ValueError(f"sizes must name MM-k kinds with k in 1..4, got {sizes!r}")
    per_identity = check_int("per_identity", per_identity, 1)
    if singles not in ("all", "draw"):
        raise ValueError(f"singles must be 'all' or 'draw', got {singles!r}")
    gen = _generator(seed)

    # each modality's items sorted by identity; identity ids[i] owns order[start[i]:][:count[i]]
    table: dict[Modality, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for m, lab in labels.items():
        order = torch.argsort(lab, stable=True)
        ids, count = torch.unique_consecutive(lab[order], return_counts=True)
        table[m] = (order, ids, torch.cumsum(count, 0) - count, count)

    present = [m for m in PRCV_QUERY_MODALITIES if m in labels]
    out: QueryGroups = {}
    for k in size_list:
        for comb in combinations(present, k):
            if k == 1 and singles == "all":
                out[comb] = torch.arange(labels[comb[0]].numel(), dtype=torch.int64)[:, None]
                continue
            eligible = table[comb[0]][1]
            for m in comb[1:]:
                eligible = eligible[torch.isin(eligible, table[m][1])]
            if eligible.numel() == 0:
                continue
            owners = eligible.repeat_interleave(per_identity)
            columns = []
            for m in comb:
                order, ids, start, count = table[m]
                slot = torch.searchsorted(ids, owners)
                u = torch.rand(owners.numel(), generator=gen, dtype=torch.float64)
                pick = (u * count[slot]).floor().to(torch.int64).clamp_max(count[slot] - 1)
                columns.append(order[start[slot] + pick])
            out[comb] = torch.stack(columns, 1)
    return out


# ----------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PRCVResult:
    """Metrics of the PRCV MM-k protocol.

    Attributes:
        protocols: ``{"MM-1": ..., "MM-4": ...}`` (the kinds that have queries, in order): each
            a :class:`~sdmreid.evaluation.RetrievalMetrics` formed by :attr:`average` from the
            combinations of that kind (query counts summed).
        combinations: ``{"nir": ..., "nir+text": ..., ...}``: the metrics of each combination,
            MM-1 first, in canonical order.
        score: the challenge score: the mean of the :attr:`protocols`' ``mAP`` (``mAP@k`` when
            :attr:`map_k` is set).
        average: ``"queries"`` or ``"combinations"``.
        weights: the fusion weight of each query modality (lower-case names).
        map_k: the cut-off of mAP@k, or ``None``.

    Example:
        >>> import torch
        >>> res = evaluate_prcv({"nir": (torch.eye(2), [0, 1])}, torch.eye(2), [0, 1])
        >>> res.score, list(res.protocols), list(res.combinations)
        (1.0, ['MM-1'], ['nir'])
        >>> res.as_dict()["prcv/MM-1/mAP"]
        1.0
    """

    protocols: Mapping[str, RetrievalMetrics]
    combinations: Mapping[str, RetrievalMetrics]
    score: float
    average: Average = "queries"
    weights: Mapping[str, float] = field(default_factory=dict)
    map_k: int | None = None

    @property
    def score_metric(self) -> str:
        """The metric the score averages: ``"mAP"`` or ``"mAP@{k}"``."""
        return "mAP" if self.map_k is None else f"mAP@{self.map_k}"

    def as_dict(self, prefix: str = "prcv/", *, percent: bool = False) -> dict[str, float]:
        """Flat ``{name: value}`` for loggers: ``"{prefix}score"``, then each protocol's and
        each combination's :meth:`RetrievalMetrics.as_dict` under ``"{prefix}{name}/"``."""
        out = {f"{prefix}score": (100.0 if percent else 1.0) * self.score}
        for name, m in [*self.protocols.items(), *self.combinations.items()]:
            out.update(m.as_dict(f"{prefix}{name}/", percent=percent))
        return out

    def format(self, *, percent: bool = True) -> str:
        """A table: one row per MM-k kind, its combinations indented below it, then the score.

        ``percent=True`` prints percentages with two decimals, ``False`` fractions with four.
        """
        scale, width = (100.0, 2) if percent else (1.0, 4)
        any_metrics = next(iter(self.protocols.values()), None)
        ranks = any_metrics.ranks if any_metrics is not None else (1,)
        heads = ["mAP"] + ([self.score_metric] if self.map_k is not None else [])
        heads += [f"R{k}" for k in ranks] + ["mINP"]

        def cells(m: RetrievalMetrics) -> list[str]:
            vals = [m.mAP] + ([m.mAP_at_k or 0.0] if self.map_k is not None else [])
            vals += [m.rank(k) for k in ranks] + [m.mINP]
            return [str(m.num_valid_queries)] + [f"{scale * v:.{width}f}" for v in vals]

        rows: list[list[str]] = []
        for proto, m in self.protocols.items():
            rows.append([proto, *cells(m)])
            k = int(proto.split("-")[1])
            for name, c in self.combinations.items():
                if name.count("+") + 1 == k:
                    rows.append([f"  {name}", *cells(c)])
        header = ["protocol", "queries", *heads]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(r)
            )
            for r in [header, *rows]
        ]
        names = list(self.protocols) or ["?"]
        kinds = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"
        lines.append(
            f"score (mean {self.score_metric} of {kinds}, averaged over {self.average}): "
            f"{scale * self.score:.{width}f}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        parts = [
            f"{p}: mAP={100 * m.mAP:.2f} R1={100 * m.rank1:.2f}" for p, m in self.protocols.items()
        ]
        return " | ".join([*parts, f"score({self.score_metric})={100 * self.score:.2f}"])


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------


def _pool_queries(parts: Sequence[RetrievalMetrics]) -> RetrievalMetrics:
    """The metrics of the union of the parts' queries: each mean weighted by its valid queries."""
    n = torch.tensor([p.num_valid_queries for p in parts], dtype=torch.float64)
    total = float(n.sum())

    def mean(values: Sequence[float]) -> float:
        return float((torch.tensor(values, dtype=torch.float64) * n).sum()) / total

    at_k = [p.mAP_at_k for p in parts]
    return RetrievalMetrics(
        cmc=(torch.stack([p.cmc for p in parts]) * n[:, None]).sum(0) / total,
        mAP=mean([p.mAP for p in parts]),
        mINP=mean([p.mINP for p in parts]),
        num_valid_queries=sum(p.num_valid_queries for p in parts),
        num_skipped_queries=sum(p.num_skipped_queries for p in parts),
        ranks=parts[0].ranks,
        mAP_at_k=None if None in at_k else mean([v for v in at_k if v is not None]),
        map_k=parts[0].map_k,
    )


def evaluate_prcv(
    queries: Mapping[ModalityLike, tuple[Tensorish, IntArrayLike]],
    gallery_feats: Tensorish,
    gallery_labels: IntArrayLike,
    *,
    groups: Mapping[GroupKey, object] | None = None,
    weights: Mapping[ModalityLike, float] | None = None,
    map_k: int | None = None,
    average: Average = "queries",
    ranks: Sequence[int] = (1, 5, 10),
    seed: int | torch.Generator = 0,
    chunk_size: int | None = None,
) -> PRCVResult:
    """The PRCV 2025 MM-k protocol: fused multi-modal queries against an RGB gallery.

    See the module documentation for the rules (fusion, MM-k averaging, score, mAP@k).

    Args:
        queries: ``{modality: (feats [N_m, d], labels [N_m])}``, one query set per query
            modality (NIR, SKETCH, CPENCIL, TEXT; any alias).
        gallery_feats: ``[G, d]`` RGB gallery features, on the device of the query features.
        gallery_labels: ``[G]`` identities.
        groups: the query groups: ``{combination: [n, k] indices}``; a key is a modality, a
            sequence of modalities or a ``"nir+text"`` string, column ``j`` indexes the query set
            of the key's ``j``-th modality, and every row shows one identity. ``None`` draws
            them with :func:`build_query_groups` ``(labels, seed=seed)``.
        weights: fusion weight per query modality (finite, ``> 0``); unnamed modalities weigh
            1.0.
        map_k: also compute mAP@k, and score with it (the seed pipeline uses 100).
        average: ``"queries"`` (MM-k over all its queries, the organisers' rule) or
            ``"combinations"`` (the mean of its combinations' values).
        ranks: CMC ranks reported (default R1, R5, R10).
        seed: the seed of :func:`build_query_groups` when ``groups`` is ``None``.
        chunk_size: passed to :func:`~sdmreid.evaluation.evaluate_retrieval`.

    Returns:
        :class:`PRCVResult`.

    Raises:
        ValueError: an unknown or RGB modality in ``queries``, ``weights`` or ``groups``; an
            empty query set or groups mapping; a group index out of range or a group whose items
            show different identities; a weight that is not finite and positive; a combination
            in which no query has a gallery positive; any error of
            :func:`~sdmreid.evaluation.evaluate_retrieval`.
        TypeError: a mapping of the wrong type, non-integer labels or indices, a non-number
            weight.

    Example:
        >>> import torch
        >>> gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> queries = {"nir": (torch.tensor([[0.0, 1.0], [0.0, 1.0]]), [1, 2]),
        ...            "text": (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [1, 2])}
        >>> res = evaluate_prcv(queries, gallery, [1, 2, 1], groups={
        ...     "nir": [0, 1], "text": [0, 1], "nir+text": [[0, 0], [1, 1]]})
        >>> round(res.combinations["nir"].mAP, 4), res.protocols["MM-2"].mAP
        (0.7917, 1.0)
        >>> round(res.score, 4)  # (MM-1 (7/12 + 1 + 1 + 1) / 4 + MM-2 1.0) / 2
        0.9479
    """
    gallery = _as_feats(gallery_feats, "gallery_feats")
    g_labels = _as_ints(gallery_labels, "gallery_labels", gallery.shape[0], gallery.device)
    sets = _parse_queries(queries, gallery)
    if average not in ("queries", "combinations"):
        raise ValueError(f"average must be 'queries' or 'combinations', got {average!r}")
    ranks_t = _check_ranks(ranks)
    if map_k is not None:
        map_k = check_int("map_k", map_k, 1)
    w = _parse_weights(weights)
    labels = {m: lab for m, (_, lab) in sets.items()}
    if groups is None:
        label_sets: dict[ModalityLike, IntArrayLike] = {m: lab for m, lab in labels.items()}
        found = build_query_groups(label_sets, seed=seed)
    else:
        found = _parse_groups(groups, labels)

    dtypes = [gallery.dtype, *(f.dtype for f, _ in sets.values())]
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    unit = {m: _unit_rows(f.to(dtype)) for m, (f, _) in sets.items()}

    per_combination: dict[Combination, RetrievalMetrics] = {}
    for comb in sorted(found, key=lambda c: (len(c), [int(m) for m in c])):
        index = found[comb].to(gallery.device)
        # the weighted mean of unit embeddings; evaluate_retrieval L2-normalises it again
        total = sum(w[m] for m in comb)
        fused = torch.zeros(index.shape[0], gallery.shape[1], dtype=dtype, device=gallery.device)
        for j, m in enumerate(comb):
            fused += (w[m] / total) * unit[m][index[:, j]]
        try:
            per_combination[comb] = evaluate_retrieval(
                fused,
                labels[comb[0]][index[:, 0]],
                gallery,
                g_labels,
                ranks=ranks_t,
                map_k=map_k,
                chunk_size=chunk_size,
            )
        except ValueError as err:
            raise ValueError(f"combination {combination_name(comb)}: {err}") from None

    protocols: dict[str, RetrievalMetrics] = {}
    for k in range(1, len(PRCV_QUERY_MODALITIES) + 1):
        parts = [m for c, m in per_combination.items() if len(c) == k]
        if parts:
            protocols[f"MM-{k}"] = (
                _pool_queries(parts) if average == "queries" else mean_over_trials(parts)
            )
    values = [m.mAP if map_k is None else m.mAP_at_k for m in protocols.values()]
    return PRCVResult(
        protocols=protocols,
        combinations={combination_name(c): m for c, m in per_combination.items()},
        score=float(np.mean([v for v in values if v is not None])),
        average=average,
        weights={m.name.lower(): w[m] for m in PRCV_QUERY_MODALITIES},
        map_k=map_k,
    )
