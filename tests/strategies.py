"""Hypothesis strategies shared by the test suite.

Each component's block is headed by a comment naming it; reuse before adding.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np
import torch
from hypothesis import strategies as st

from sdmreid.modality import MODALITY_ALIASES, Modality

# --- modality vocabulary ---------------------------------------------------------------------

#: Every alias, in random letter case.
alias_any_case = st.sampled_from(sorted(MODALITY_ALIASES)).flatmap(
    lambda a: st.lists(st.booleans(), min_size=len(a), max_size=len(a)).map(
        lambda ups: "".join(c.upper() if u else c for c, u in zip(a, ups, strict=True))
    )
)

#: One modality in any accepted form (member, int code, alias in any case).
modality_like = st.one_of(
    st.sampled_from(list(Modality)),
    st.integers(min_value=0, max_value=len(Modality) - 1),
    alias_any_case,
)


# --- identity / modality layouts ---------------------------------------------------------------


@st.composite
def label_modality_layouts(
    draw: st.DrawFn,
    min_ids: int = 1,
    max_ids: int = 12,
    max_per_id: int = 12,
    modalities: tuple[int, ...] = (0, 1, 2, 3, 4),
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, modalities) int64 arrays for a random dataset layout, in shuffled order.

    Covers identities with one sample, all-RGB identities, all-non-RGB identities and heavy
    modality imbalance; labels are arbitrary (non-contiguous) integers.
    """
    n_ids = draw(st.integers(min_ids, max_ids))
    ids = draw(st.lists(st.integers(0, 10_000), min_size=n_ids, max_size=n_ids, unique=True))
    labels: list[int] = []
    mods: list[int] = []
    non_rgb = [x for x in modalities if x != 0] or [1]
    for pid in ids:
        n = draw(st.integers(1, max_per_id))
        kind = draw(
            st.sampled_from(["mixed", "rgb_only", "non_rgb_only", "one_rgb", "one_non_rgb"])
        )
        if kind == "rgb_only":
            m = [0] * n
        elif kind == "non_rgb_only":
            m = draw(
                st.lists(
                    st.sampled_from(non_rgb),
                    min_size=n,
                    max_size=n,
                )
            )
        elif kind == "one_rgb":
            m = [0, *draw(st.lists(st.sampled_from(non_rgb), min_size=n - 1, max_size=n - 1))]
        elif kind == "one_non_rgb":
            m = [draw(st.sampled_from(non_rgb))] + [0] * (n - 1)
        else:
            m = draw(st.lists(st.sampled_from(modalities), min_size=n, max_size=n))
        labels += [pid] * n
        mods += m
    perm = draw(st.permutations(range(len(labels))))
    lab = np.asarray(labels, dtype=np.int64)[list(perm)]
    mod = np.asarray(mods, dtype=np.int64)[list(perm)]
    return lab, mod


#: Non-empty subsets of the non-RGB modality codes.
_non_rgb_sets = st.sets(st.integers(1, len(Modality) - 1), min_size=1)


@st.composite
def label_modality_set_layouts(
    draw: st.DrawFn, min_ids: int = 1, max_ids: int = 12, max_per_id: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 ``[n]``, modality sets bool ``[n, 5]``), single and multi-modality items mixed.

    Identity kinds: one modality per item (any mix), RGB-only, non-RGB sets only, every item
    carrying RGB and a non-RGB modality (a pair on its own), exactly one such item among RGB-only
    or non-RGB-only items, and arbitrary non-empty sets. Items are in shuffled order.
    """
    n_ids = draw(st.integers(min_ids, max_ids))
    ids = draw(st.lists(st.integers(0, 10_000), min_size=n_ids, max_size=n_ids, unique=True))
    labels: list[int] = []
    sets: list[set[int]] = []
    for pid in ids:
        n = draw(st.integers(1, max_per_id))
        kind = draw(
            st.sampled_from(["single", "rgb_only", "non_rgb_only", "both", "one_both", "any"])
        )
        if kind == "single":
            items = [{m} for m in draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))]
        elif kind == "rgb_only":
            items = [{0}] * n
        elif kind == "non_rgb_only":
            items = draw(st.lists(_non_rgb_sets, min_size=n, max_size=n))
        elif kind == "both":
            items = [{0, *x} for x in draw(st.lists(_non_rgb_sets, min_size=n, max_size=n))]
        elif kind == "one_both":
            rest = draw(st.sampled_from([[{0}] * (n - 1), [{1}] * (n - 1)]))
            items = [{0, *draw(_non_rgb_sets)}, *rest]
        else:
            items = draw(st.lists(st.sets(st.integers(0, 4), min_size=1), min_size=n, max_size=n))
        labels += [pid] * n
        sets += items
    perm = draw(st.permutations(range(len(labels))))
    mask = np.zeros((len(labels), len(Modality)), dtype=np.bool_)
    for row, i in enumerate(perm):
        mask[row, sorted(sets[i])] = True
    return np.asarray(labels, dtype=np.int64)[list(perm)], mask


@st.composite
def modality_set_forms(draw: st.DrawFn, mask: np.ndarray) -> object:
    """The same modality sets (a ``[n, 5]`` bool array) in another accepted input form.

    A bool array or tensor, or per-item collections (tuple, list, set) whose elements are drawn
    from member / code / alias forms; an item carrying one modality may also be that bare value.
    """
    form = draw(st.sampled_from(["array", "tensor", "collections"]))
    if form == "array":
        return mask.copy()
    if form == "tensor":
        return torch.from_numpy(mask.copy())
    names = {m: [m, int(m), *(a for a, v in MODALITY_ALIASES.items() if v == m)] for m in Modality}
    items: list[object] = []
    for row in mask:
        members = [draw(st.sampled_from(names[Modality(int(c))])) for c in np.flatnonzero(row)]
        container = draw(st.sampled_from(["tuple", "list", "set", "bare"]))
        if container == "bare" and len(members) == 1:
            items.append(members[0])
        elif container == "set":
            items.append(set(members))
        elif container == "list":
            items.append(list(members))
        else:
            items.append(tuple(members))
    return items


# --- component state (load_state_dict) ------------------------------------------------------------


@st.composite
def corrupted_states(
    draw: st.DrawFn,
    valid: Mapping[str, object],
    bad_values: Mapping[
        str, st.SearchStrategy[object] | Callable[[object], st.SearchStrategy[object]]
    ],
    required: Collection[str] = (),
    unknown_key: bool = True,
) -> dict[str, object]:
    """``valid`` with one defect its ``load_state_dict`` must refuse.

    The defect is one of: a key of ``bad_values`` set to a value drawn from its strategy, a
    ``required`` key dropped, or (``unknown_key``) an unknown key added. Every other key keeps its
    valid value, so taking ``valid`` from *another* instance than the one loading it catches a
    loader that assigns part of the state before it refuses the rest. Pass one kind of defect
    per test case (e.g. ``bad_values`` of one key) to make sure each is tried often.

    Args:
        valid: A state the loader accepts.
        bad_values: Per key, a strategy of values the loader must refuse for that key, or a
            function of the valid value returning one (for values that must keep the valid
            one's shape, e.g. a tensor with one NaN).
        required: Keys the loader must refuse to do without.
        unknown_key: Whether adding a key the loader does not know is one of the defects.
    """
    defects = [("bad", k) for k in bad_values] + [("missing", k) for k in required]
    if unknown_key:
        defects.append(("unknown", "__unknown_key__"))
    if not defects:
        raise ValueError("corrupted_states needs at least one kind of defect")
    kind, key = draw(st.sampled_from(defects))
    out = dict(valid)
    if kind == "bad":
        bad = bad_values[key]
        out[key] = draw(bad if isinstance(bad, st.SearchStrategy) else bad(valid[key]))
    elif kind == "missing":
        del out[key]
    else:
        out[key] = draw(st.integers(0, 3))
    return out
