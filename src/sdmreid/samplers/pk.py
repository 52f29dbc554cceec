"""Modality-aware P×K batch samplers for SDM training.

Both samplers are *batch samplers*: iterating yields ``list[int]`` batches of exactly
``P × K`` dataset indices (``P = num_identities`` distinct identities, ``K = num_instances``
indices each), ready for ``DataLoader(dataset, batch_sampler=sampler)``. Everything is computed
from the label/modality arrays (an :class:`~sdmreid.samplers.IdentityIndex` built once); no
dataset item is ever read.

Epoch semantics (both samplers)
-------------------------------
* **Chunks.** Identity ``i`` with ``n_i`` samples is cut into ``c_i = max(1, n_i // K)`` chunks
  of ``K`` indices, as torchreid's ``RandomIdentitySampler`` does. If ``n_i >= K`` its samples are
  shuffled and each is used at most once: the ``n_i - c_i·K`` left over are skipped this epoch
  (a different random subset every epoch). If ``n_i < K`` the single chunk holds all ``n_i``
  samples plus ``K - n_i`` draws with replacement from the identity (oversampling; never dropped).
  A ``K`` so large that these draws would outnumber the dataset's samples
  (``Σ_i max(0, K - n_i) > N``) is refused at construction: such an epoch would be mostly
  repeats, and refusing it bounds an epoch at ``2·N`` indices whatever ``K`` is asked for.
* **Batches.** A batch takes one chunk from each of ``P`` distinct identities, so an identity
  appears in at most one chunk per batch and in at most ``c_i`` batches per epoch: identities
  appear in proportion to their size. The number of batches ``B`` is the largest value with
  ``Σ_i min(c_i, B) >= B·P`` (an identity cannot fill more batches than there are). The chunks
  beyond that (fewer than ``P`` of them, plus the surplus ``c_i - B`` of an identity holding more
  than ``B`` chunks) are skipped, exactly like torchreid's leftover when fewer than ``P``
  identities remain. ``len(sampler)`` is the exact number of batches the next iteration yields.
* **Randomness.** Everything is drawn from ``numpy.random.default_rng([seed, epoch])``:
  the same ``(seed, epoch)`` gives the same batches on every machine; call :meth:`set_epoch`
  before each epoch. Epochs are numbered from 1, as training logs print them: a sampler never
  given an epoch draws epoch 1. Batch composition is randomised (identities are laid out in
  random order, then chunks are permuted within layout rows and the batch order is permuted).

:class:`ModalAwarePKSampler_Strict` additionally
------------------------------------------------
* Items may carry several modalities (``modalities`` as per-item sets, see
  :func:`sdmreid.modality.as_modality_sets`). What counts is whether an item *carries RGB* and
  whether it *carries a non-RGB modality*; an item carrying both is a cross-modal pair on its
  own. With one modality per item, "carrying RGB" is "being an RGB sample".
* An identity is **pairable** when it has an item carrying RGB and an item carrying a non-RGB
  modality (possibly the same item). With ``K >= 2`` *every* chunk of a pairable identity is a
  **strong pair**: it holds at least one index carrying RGB and at least one carrying a non-RGB
  modality (possibly the same index). The identity's samples form an RGB side (carrying RGB)
  and a non-RGB side (carrying non-RGB); items carrying both go to whichever side needs them to
  reach one per chunk, chosen afresh each epoch among them. When a side still has fewer samples
  than the identity has chunks, it is reused (drawn with replacement) so that each chunk gets one
  (``c_i - m_i`` repeats, ``m_i`` that side's count, i.e. the count of items carrying RGB or of
  items carrying non-RGB); all other samples are used at most once, so
  ``n_i - c_i·K + max(0, c_i - m_i)`` samples of the identity are skipped that epoch. The
  remaining slots get the two sides in proportion. Because the pair is built into every chunk,
  no identity is ever retried, so there is no retry budget to set.
* With ``K == 1`` a chunk is one item: an identity's chunks are all pairs only when every one of
  its items carries both RGB and a non-RGB modality; those identities count as pairable there.
* Identities that cannot form a strong pair (RGB-only, non-RGB-only, or with ``K == 1`` any
  identity with an item carrying one side only) are **fallback** identities. Every batch holds
  at most ``max(F, P - ⌊p / R⌋)`` fallback identities, where ``F = ⌈fallback_ratio·P⌉``, ``R``
  the number of replicas and ``p`` the number of pairable identities that still appear in this
  batch or a later one of the epoch. While at least ``(P - F)·R`` pairable identities remain this
  is the plain cap ``F``; as pairable identities run out the cap relaxes so their remaining
  chunks can still be placed, and once none remain the batches are plain P×K. The fallback
  chunks are spread evenly over the batches (pairable chunks first in the layout, fallback
  chunks filling the last layout rows), so coverage does not dip at any point of the epoch.
* The layout is built in phases: each phase places as many batches as the cap allows, and the
  chunks it could not place (surplus of large identities, fallback chunks over the cap) go to the
  next phase with a recomputed cap; phases are emitted in order. Without pairable identities
  the strict sampler has the plain sampler's layout (but still its own chunks).

Replicas (``num_replicas = R``, ``rank``)
-----------------------------------------
Every rank computes the same global plan from ``(seed, epoch)``. When ``P·R <= #identities``
each global step is one batch of ``P·R`` distinct identities split into ``R`` disjoint batches of
``P``: ranks yield equally many batches, their streams are disjoint (a chunk goes to one rank)
and batches of the same step share no identity. When ``P·R > #identities`` that is impossible:
the plan is then the single-replica one and rank ``r`` takes its batches ``r, r+R, r+2R, …``
(truncated so all ranks get ``⌊B/R⌋``); streams stay disjoint and equally long, but batches of
the same step may share identities.

Resuming
--------
:meth:`state_dict` returns ``{"epoch", "next_batch", ...}`` (ints only). ``next_batch`` counts the
batches this sampler's iterator has yielded in the current epoch; a ``DataLoader`` with workers
prefetches ahead of the training step, so a trainer should overwrite ``next_batch`` with the
number of steps it actually completed before saving. :meth:`load_state_dict` makes the next
iteration start at exactly that batch of that epoch; later iterations start at batch 0. It checks
the whole state before changing anything, so a refused state leaves the sampler as it was. The
strict sampler's state also holds ``modality_digest``, a digest of the items' modality sets: its
batches depend on them, so a state saved for other modalities is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from sdmreid._validation import check_int
from sdmreid.distributed import get_rank, get_world_size, is_dist
from sdmreid.modality import Modality, as_modality_sets
from sdmreid.samplers.identity_index import (
    IdentityIndex,
    as_label_array,
    build_identity_index,
    stable_argsort_small,
)

__all__ = [
    "CoverageReport",
    "ModalAwarePKSampler",
    "ModalAwarePKSampler_Strict",
    "coverage_report",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


# ----------------------------------------------------------------------------------------------
# coverage
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoverageReport:
    """Cross-modal SDM row coverage of a set of batches.

    Attributes:
        rows: SDM rows: one per modality each batch entry carries — a non-RGB row (query→gallery
            direction) for each non-RGB modality and an RGB row (gallery→query direction) if it
            carries RGB. With one modality per item, the number of batch entries.
        rows_without_positive: rows whose batch holds no same-identity row of the other side (a
            non-RGB row needs a same-identity item carrying RGB, an RGB row one carrying a
            non-RGB modality; the item itself counts).
        coverage: ``1 - rows_without_positive / rows``; ``nan`` when ``rows == 0``.
    """

    rows: int
    rows_without_positive: int
    coverage: float


def coverage_report(
    batches: Iterable[Sequence[int]] | npt.ArrayLike,
    labels: Iterable[Any] | npt.ArrayLike | torch.Tensor,
    modalities: Iterable[object] | npt.ArrayLike | torch.Tensor,
) -> CoverageReport:
    """Fraction of the batches' non-RGB↔RGB SDM rows that have a positive in their batch.

    Same definition as ``sdm_loss``'s ``rows``/``rows_without_positive`` (without memory) and
    :class:`PairCoverageMeter`, with one embedding row per modality an item carries: each
    non-RGB row is a query needing a same-identity RGB row in its batch; each RGB row is a
    gallery item needing a same-identity non-RGB row. An item that carries RGB and a non-RGB
    modality (an image with its caption) therefore covers itself.

    Args:
        batches: iterable of batches of dataset indices (batches may differ in size).
        labels: the dataset's labels (indexed by the dataset indices in ``batches``).
        modalities: the dataset's modality, or modality set, per item: any form
            :func:`sdmreid.modality.as_modality_sets` accepts.

    Raises:
        ValueError: lengths differ, an index is out of range, an unknown modality or an item
            without one.

    Example:
        >>> from sdmreid.samplers import coverage_report
        >>> labels, mods = [0, 0, 1, 1], ["rgb", "ir", "rgb", "rgb"]
        >>> r = coverage_report([[0, 1, 2, 3]], labels, mods)
        >>> r.rows, r.rows_without_positive, r.coverage
        (4, 2, 0.5)
        >>> sets = [("rgb", "text"), ("rgb", "text", "sk")]  # every item is a pair on its own
        >>> coverage_report([[0], [1]], [0, 1], sets)
        CoverageReport(rows=5, rows_without_positive=0, coverage=1.0)
    """
    lab = as_label_array(labels)
    sets = as_modality_sets(modalities, name="modalities")
    if lab.shape[0] != sets.shape[0]:
        raise ValueError(
            f"labels and modalities must have the same length, got {lab.shape[0]} and "
            f"{sets.shape[0]}"
        )
    _, inverse = np.unique(lab, return_inverse=True) if lab.size else (lab, lab)
    ident = np.asarray(inverse, dtype=np.int64).reshape(-1)
    if isinstance(batches, np.ndarray):
        arr = batches.astype(np.int64, copy=False)
        if arr.ndim != 2:
            raise ValueError(f"batches array must be 2-D, got shape {arr.shape}")
        flat = arr.reshape(-1)
        batch_of = np.repeat(np.arange(arr.shape[0], dtype=np.int64), arr.shape[1])
    else:
        lists = [list(b) for b in batches]  # type: ignore[union-attr, arg-type]
        sizes = np.asarray([len(b) for b in lists], dtype=np.int64)
        flat = np.asarray([i for b in lists for i in b], dtype=np.int64).reshape(-1)
        batch_of = np.repeat(np.arange(len(lists), dtype=np.int64), sizes)
    if flat.size == 0:
        return CoverageReport(0, 0, float("nan"))
    if int(flat.min()) < 0 or int(flat.max()) >= lab.shape[0]:
        raise ValueError(f"batches contain indices outside [0, {lab.shape[0]})")
    n_ids = int(ident.max()) + 1 if ident.size else 1
    key = batch_of * n_ids + ident[flat]
    _, group = np.unique(key, return_inverse=True)
    group = group.reshape(-1)
    carries = sets[flat]
    rgb = carries[:, Modality.RGB]
    non_rgb = carries[:, Modality.RGB + 1 :].sum(axis=1)  # non-RGB rows of each entry
    rgb_in_group = np.bincount(group, weights=rgb.astype(np.float64)) > 0
    non_in_group = np.bincount(group, weights=non_rgb.astype(np.float64)) > 0
    rows = int(rgb.sum() + non_rgb.sum())
    missing = int((rgb & ~non_in_group[group]).sum() + non_rgb[~rgb_in_group[group]].sum())
    return CoverageReport(rows, missing, 1.0 - missing / rows)


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _check_epoch(name: str, epoch: object) -> int:
    """An epoch number: an integer ``>= 1`` (epochs are numbered from 1, as logs print them)."""
    return check_int(f"{name} (numbered from 1)", epoch, 1)


def _stable_group_shuffle(group: IntArray, rng: np.random.Generator) -> IntArray:
    """Permutation of ``arange(len(group))`` that sorts by ``group`` with random ties.

    ``group`` must be non-decreasing; the result keeps each group's block in place and shuffles
    positions within it (a random permutation + a stable radix sort on the group keys).
    """
    perm = rng.permutation(group.shape[0])
    return perm[stable_argsort_small(group[perm])]


# ----------------------------------------------------------------------------------------------
# epoch construction
# ----------------------------------------------------------------------------------------------


class _ChunkPlan:
    """Everything about cutting identities into K-chunks that does not depend on the epoch.

    Identity ``i`` gets ``c_i = max(1, n_i // k)`` chunks, rows ``base[i] .. base[i] + c_i - 1``
    of the chunk matrix. Each epoch shuffles the samples inside fixed groups of positions of
    ``index.order`` (the identity; for the strict sampler each of the identity's three blocks —
    RGB only, RGB and non-RGB, no RGB — separately) and scatters position ``t`` to a fixed cell
    ``dest[t]``:

    * plain identities: the ``q``-th position of the identity goes to cell ``q`` (row-major) if
      ``q < c_i·k``, i.e. the first ``c_i·k`` shuffled samples are used;
    * paired identities (``strong[i]`` and ``k >= 2``): the identity's positions are cut into an
      RGB side (the first ``s_i``, all carrying RGB) and a non-RGB side (the rest, all carrying
      a non-RGB modality). The items carrying both sit where the sides meet, so the cut
      ``s_i = clip(c_i, rgb_only_i, rgb_i)`` can give either side as many of them as it needs
      to reach ``c_i``; with one modality per item ``s_i`` is the RGB count. The ``j``-th RGB
      side position goes to slot 0 of chunk ``j`` and the ``j``-th non-RGB side position to
      slot 1 (``j < c_i``); the remaining positions of the two sides are merged by their
      fractional rank inside their side (a proportional interleave, so the extra slots get the
      two sides in proportion) and fill slots ``2..k-1`` of chunks ``0, 1, …`` in turn; what
      does not fit is skipped;
    * cells left empty (``n_i < k``; a paired identity's shorter side with fewer than ``c_i``
      samples) are static and get draws with replacement from the identity (slot 0/1 of a
      paired identity: from its samples carrying RGB / carrying a non-RGB modality).

    ``strong`` marks the identities whose every chunk holds a pair (the strict sampler's
    non-fallback identities): paired identities, or with ``k == 1`` identities whose every
    sample carries both (cut like plain identities).
    """

    def __init__(self, index: IdentityIndex, k: int, strong: BoolArray, by_modality: bool) -> None:
        self.index, self.k = index, k
        counts, starts, rgb_counts = index.counts, index.starts, index.rgb_counts
        rgb_only = rgb_counts - index.both_counts
        n_ids, n = index.identity_count, index.sample_count
        c = np.maximum(counts // k, 1)
        self.counts_c = c
        self.base = np.cumsum(c) - c
        self.num_chunks = int(c.sum())
        self.strong = strong
        pid = index.position_identity
        if by_modality:
            off = np.arange(n) - starts[pid]
            block = (off >= rgb_only[pid]).astype(np.int64) + (off >= rgb_counts[pid])
            self.group = pid * 3 + block
        else:
            self.group = pid
        paired = strong & (k >= 2)
        base = self.base
        dest = np.full(n, -1, dtype=np.int64)
        ids = np.flatnonzero(~paired)
        ident, off = _runs(ids, np.minimum(counts, c * k)[ids])
        dest[starts[ident] + off] = base[ident] * k + off
        ids = np.flatnonzero(paired)
        if ids.size:
            cs = c[ids]
            n_r = np.clip(cs, rgb_only[ids], rgb_counts[ids])  # RGB side
            n_n = counts[ids] - n_r  # non-RGB side
            local = np.arange(ids.shape[0], dtype=np.int64)
            for col, size, offset in ((0, n_r, np.zeros_like(n_r)), (1, n_n, n_r)):
                loc, j = _runs(local, np.minimum(size, cs))
                ident = ids[loc]
                dest[starts[ident] + offset[loc] + j] = (base[ident] + j) * k + col
            if k > 2:
                # The leftovers of both sides are merged by fractional rank: leftover t of a
                # side with `own` leftovers comes after the other side's leftovers s with
                # (s + .5)/other < (t + .5)/own (ties: RGB first); counted in closed form.
                left_r = np.maximum(n_r - cs, 0)
                left_n = np.maximum(n_n - cs, 0)
                for own, other, offset, rgb in (
                    (left_r, left_n, cs, True),
                    (left_n, left_r, n_r + cs, False),
                ):
                    loc, t = _runs(local, own)
                    ident = ids[loc]
                    o, a = other[loc], own[loc]
                    x = (2 * t + 1) * o - a
                    d = 2 * np.maximum(a, 1)
                    before = -(-x // d) if rgb else x // d + 1
                    rank_x = t + np.clip(before, 0, o)
                    fits = rank_x < cs[loc] * (k - 2)
                    pos = starts[ident] + offset[loc] + t
                    dest[pos[fits]] = (
                        (base[ident] + rank_x // (k - 2)) * k + 2 + rank_x % (k - 2)
                    )[fits]
        used = dest >= 0
        self.src_pos = np.flatnonzero(used)
        self.dest = dest[used]
        # Cells no sample fills (n_i < k, or a paired identity's shorter side) are drawn
        # with replacement each epoch, from the range of positions recorded here.
        filled = np.zeros(self.num_chunks * k, dtype=np.bool_)
        filled[self.dest] = True
        miss = np.flatnonzero(~filled)
        ident_rows = np.repeat(np.arange(n_ids, dtype=np.int64), c)
        ident = ident_rows[miss // k]
        slot = miss % k
        lo = starts[ident].copy()
        size = counts[ident].copy()
        s = paired[ident]
        rgb_slot = s & (slot == 0)
        non_slot = s & (slot == 1)
        size[rgb_slot] = rgb_counts[ident[rgb_slot]]
        lo[non_slot] += rgb_only[ident[non_slot]]
        size[non_slot] = counts[ident[non_slot]] - rgb_only[ident[non_slot]]
        self.miss_dest, self.miss_lo, self.miss_size = miss, lo, size

    def draw(self, rng: np.random.Generator) -> IntArray:
        """One epoch's chunk matrix ``[num_chunks, k]`` of dataset indices."""
        pos = _stable_group_shuffle(self.group, rng)  # random order inside each group
        flat = np.empty(self.num_chunks * self.k, dtype=np.int64)
        flat[self.dest] = self.index.order[pos[self.src_pos]]
        if self.miss_dest.size:
            u = rng.random(self.miss_dest.shape[0])
            size = self.miss_size
            pick = self.miss_lo + np.minimum((u * size).astype(np.int64), size - 1)
            flat[self.miss_dest] = self.index.order[pick]
        return flat.reshape(self.num_chunks, self.k)


def _max_batches(rem: IntArray, fallback: BoolArray, width: int, cap: int) -> int:
    """Largest ``B`` with ``Σ_pair min(rem, B) + min(Σ_fb min(rem, B), cap·B) >= B·width``."""
    pair, fb = rem[~fallback], rem[fallback]

    def ok(b: int) -> bool:
        sp = int(np.minimum(pair, b).sum())
        sf = int(np.minimum(fb, b).sum())
        return sp + min(sf, cap * b) >= b * width

    lo, hi = 0, int(rem.sum()) // width
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _runs(ids: IntArray, lengths: IntArray) -> tuple[IntArray, IntArray]:
    """Expand runs: ``(identity per position, offset within the run)``."""
    total = int(lengths.sum())
    ident = np.repeat(ids, lengths)
    first = np.cumsum(lengths) - lengths
    offset = np.arange(total, dtype=np.int64) - np.repeat(first, lengths)
    return ident, offset


def _layout(seq: IntArray, run: IntArray, width: int, b: int, rng: np.random.Generator) -> IntArray:
    """Place ``width·b`` chunks into ``b`` batches of ``width`` with distinct runs per batch.

    ``seq`` lists chunk rows as contiguous runs (one run per identity, each of length ``<= b``,
    ``run`` numbers them). Filling a ``width × b`` grid row-major puts a run's chunks in distinct
    columns (batches). Chunks of runs lying inside one grid row are then permuted within that row
    (any permutation keeps the columns of such a run distinct); runs that cross a row boundary
    stay pinned. Finally the columns are permuted. Returns ``[b, width]`` chunk rows.
    """
    n = width * b
    grid_row = np.arange(n, dtype=np.int64) // b
    change = np.ones(n, dtype=np.bool_)
    change[1:] = run[1:] != run[:-1]
    run_no = np.cumsum(change) - 1
    first = np.flatnonzero(change)
    last = np.append(first[1:] - 1, n - 1)
    crosses = grid_row[first] != grid_row[last]
    free = np.flatnonzero(~crosses[run_no])
    out = seq.copy()
    if free.size:
        shuffled = _stable_group_shuffle(grid_row[free], rng)
        out[free] = seq[free[shuffled]]
    grid = out.reshape(width, b)
    return np.ascontiguousarray(grid[:, rng.permutation(b)].T)


def _schedule(
    chunk_counts: IntArray,
    chunk_base: IntArray,
    fallback: BoolArray,
    p: int,
    replicas: int,
    cap: int | None,
    rng: np.random.Generator,
) -> IntArray:
    """Global plan: ``[steps, p·replicas]`` chunk rows (see the module docstring)."""
    width = p * replicas
    rem = chunk_counts.copy()
    used = np.zeros_like(rem)
    phases: list[IntArray] = []
    while True:
        alive = rem > 0
        if int(alive.sum()) < width:
            break
        if cap is None:
            fb = np.zeros_like(fallback)
            total_cap = width
        else:
            fb = fallback
            n_pair = int((alive & ~fb).sum())
            per_rank = min(p, max(cap, p - n_pair // replicas))
            total_cap = per_rank * replicas
        b = _max_batches(rem, fb, width, total_cap)
        if b == 0:
            break
        take = np.minimum(rem, b)
        pair_ids = rng.permutation(np.flatnonzero(alive & ~fb))
        fb_ids = rng.permutation(np.flatnonzero(alive & fb))
        slots = width * b
        pid, poff = _runs(pair_ids, take[pair_ids])
        pid, poff = pid[:slots], poff[:slots]
        need = slots - pid.shape[0]
        fid, foff = _runs(fb_ids, take[fb_ids])
        fid, foff = fid[:need], foff[:need]
        ident = np.concatenate([pid, fid])
        off = np.concatenate([poff, foff])
        seq = chunk_base[ident] + used[ident] + off
        phases.append(_layout(seq, ident, width, b, rng))
        placed = np.bincount(ident, minlength=rem.shape[0])
        used += placed
        rem -= placed
    if not phases:
        return np.zeros((0, width), dtype=np.int64)
    return np.concatenate(phases, axis=0)


def _epoch_batches(
    plan: _ChunkPlan,
    p: int,
    replicas: int,
    rank: int,
    cap: int,
    seed: int,
    epoch: int,
) -> IntArray:
    """This rank's batches for one epoch, ``[num_batches, p·k]`` dataset indices."""
    rng = np.random.default_rng([seed, epoch])
    chunks = plan.draw(rng)
    fallback = ~plan.strong
    use_cap = cap if plan.strong.any() else None
    shared_steps = p * replicas <= plan.index.identity_count
    r = replicas if shared_steps else 1
    sched = _schedule(plan.counts_c, plan.base, fallback, p, r, use_cap, rng)
    # [steps, r, p]: rank q of a shared step holds layout rows q, q + r, q + 2r, ...
    groups = sched.reshape(sched.shape[0], p, r).transpose(0, 2, 1)
    # random order of the P chunks inside each batch (drawn for every rank alike)
    within = np.argsort(rng.random(groups.shape), axis=2)
    groups = np.take_along_axis(groups, within, axis=2)
    if shared_steps:
        mine = groups[:, rank, :]
    else:
        steps = groups.shape[0] // replicas
        mine = groups[rank::replicas, 0, :][:steps]
    out: IntArray = chunks[mine].reshape(mine.shape[0], p * plan.k)
    return out


# ----------------------------------------------------------------------------------------------
# samplers
# ----------------------------------------------------------------------------------------------


def _modality_digest(sets: BoolArray) -> int:
    """A 63-bit digest of the items' modality sets, for the strict sampler's saved state.

    The strict sampler's batches depend on which items carry RGB and which a non-RGB modality,
    so a state saved for other modalities (same dataset size) must be refused.
    """
    data = np.packbits(np.ascontiguousarray(sets, dtype=np.bool_)).tobytes()
    digest = hashlib.blake2b(data, digest_size=8, person=b"sdmreid-mods").digest()
    return int.from_bytes(digest, "big") >> 1


class _PKSamplerBase:
    _strict = False

    def __init__(
        self,
        labels: Iterable[Any] | npt.ArrayLike | torch.Tensor,
        modalities: Iterable[object] | npt.ArrayLike | torch.Tensor | None,
        num_identities: int,
        num_instances: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        fallback_ratio: float = 1.0,
    ) -> None:
        self.num_identities = check_int("num_identities", num_identities, 1)
        self.num_instances = check_int("num_instances", num_instances, 1)
        self.seed = check_int("seed", seed, 0)
        if num_replicas is None:
            num_replicas = get_world_size() if is_dist() else 1
        if rank is None:
            rank = get_rank() if is_dist() else 0
        self.num_replicas = check_int("num_replicas", num_replicas, 1)
        self.rank = check_int("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.index = build_identity_index(labels, modalities)
        if self.num_identities > self.index.identity_count:
            raise ValueError(
                f"num_identities (P={self.num_identities}) must be <= the number of distinct "
                f"identities in labels ({self.index.identity_count})"
            )
        self._check_oversampling()
        self._cap = math.ceil(fallback_ratio * self.num_identities)
        self._plan = _ChunkPlan(
            self.index, self.num_instances, self._strong_identities(), by_modality=self._strict
        )
        self._epoch = 1
        self._next = 0
        self._cache: tuple[int, IntArray] | None = None

    def _strong_identities(self) -> BoolArray:
        """``[I]`` identities whose every chunk holds a pair (none for the plain sampler).

        With ``K >= 2`` the pairable ones (a pair is built into each chunk); with ``K == 1`` those
        whose every sample carries RGB and a non-RGB modality (each one-sample chunk is a pair).
        """
        index = self.index
        if not self._strict:
            return np.zeros(index.identity_count, dtype=np.bool_)
        if self.num_instances >= 2:
            return index.pairable
        every_item_pairs: BoolArray = np.equal(index.both_counts, index.counts)
        return every_item_pairs

    def _check_oversampling(self) -> None:
        """Refuse a ``K`` whose draws with replacement would outnumber the dataset's samples.

        Checked from the identity sizes alone, before any ``[chunks, K]`` array exists, so an
        absurd ``K`` costs nothing (the chunk matrix would hold about ``N + draws`` indices).
        """
        k, counts, n = self.num_instances, self.index.counts, self.index.sample_count
        short = counts < min(k, n + 1)  # min(): no NumPy overflow for a huge Python int K
        draws = k * int(short.sum()) - int(counts[short].sum())
        if draws > n:
            raise ValueError(
                f"num_instances (K={k}) is too large for this dataset: filling every identity "
                f"with fewer than K samples up to K would draw {draws} samples with replacement "
                f"per epoch, more than the dataset's {n} samples"
            )

    # -- epoch --------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch (from 1) the next iteration draws."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch, numbered from 1 (reshuffles deterministically).

        Selecting another epoch resets the resume position to its first batch.

        Raises:
            ValueError: ``epoch < 1``.
            TypeError: ``epoch`` is not an integer.
        """
        e = _check_epoch("epoch", epoch)
        if e != self._epoch:
            self._next = 0
        self._epoch = e

    def batches(self, epoch: int | None = None) -> IntArray:
        """All of this rank's batches of an epoch as a read-only ``[len, P·K]`` int64 array.

        Args:
            epoch: The epoch (from 1); default: the one the next iteration draws.

        Raises:
            ValueError: ``epoch < 1``.
        """
        e = self._epoch if epoch is None else _check_epoch("epoch", epoch)
        if self._cache is not None and self._cache[0] == e:
            return self._cache[1]
        arr = _epoch_batches(
            self._plan, self.num_identities, self.num_replicas, self.rank, self._cap, self.seed, e
        )
        arr.setflags(write=False)
        self._cache = (e, arr)
        return arr

    def __len__(self) -> int:
        return int(self.batches().shape[0])

    def __iter__(self) -> Iterator[list[int]]:
        start = self._next
        lists: list[list[int]] = self.batches()[start:].tolist()
        for i, batch in enumerate(lists, start=start + 1):
            self._next = i
            yield batch
        self._next = 0

    # -- checkpointing ------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, int]:
        """The settings that decide the batches: a state saved under others is refused."""
        return {
            "seed": self.seed,
            "num_identities": self.num_identities,
            "num_instances": self.num_instances,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "sample_count": self.index.sample_count,
        }

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "next_batch"}`` plus the settings that must match on reload (ints only)."""
        return {"epoch": self._epoch, "next_batch": self._next, **self._fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next iteration starts at batch ``next_batch`` of epoch ``epoch``.

        ``epoch`` and ``next_batch`` are required; the settings keys of :meth:`state_dict` are
        optional and, when present, must match this sampler's. The whole state is checked before
        anything changes: a refused state leaves the sampler as it was.

        Raises:
            ValueError: A key is missing or unknown, ``epoch < 1``, ``next_batch`` is past the
                epoch's last batch, or the state was saved with other settings (seed, P, K,
                replicas, rank, dataset size or, for the strict sampler, fallback cap).
            TypeError: ``state`` is not a mapping, or a value is not an integer.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        fingerprint = self._fingerprint()
        unknown = sorted(map(repr, set(state) - {"epoch", "next_batch", *fingerprint}))
        if unknown:
            raise ValueError(
                f"state has unknown keys {', '.join(unknown)}; expected 'epoch', 'next_batch' "
                f"and optionally {', '.join(map(repr, fingerprint))}"
            )
        for key in ("epoch", "next_batch"):
            if key not in state:
                raise ValueError(f"state is missing {key!r}")
        for key, value in fingerprint.items():
            if key in state and check_int(f"state[{key!r}]", state[key], 0) != value:
                raise ValueError(
                    f"state was saved with {key}={int(state[key])}, this sampler has {value}"
                )
        epoch = _check_epoch("state['epoch']", state["epoch"])
        nxt = check_int("state['next_batch']", state["next_batch"], 0)
        n = int(self.batches(epoch).shape[0])
        if nxt > n:
            raise ValueError(
                f"state['next_batch'] must be <= {n} (batches in epoch {epoch}), got {nxt}"
            )
        self._epoch, self._next = epoch, nxt

    # -- diagnostics --------------------------------------------------------------------------
    def coverage_report(self, batches: Iterable[Sequence[int]] | None = None) -> CoverageReport:
        """:func:`coverage_report` of ``batches`` (default: this rank's current epoch).

        Raises:
            ValueError: the sampler was built without modalities.
        """
        if not self.index.has_modalities:
            raise ValueError("coverage_report needs modalities; this sampler was built without")
        lab = self.index.sample_identity
        sets = self.index.sample_modalities
        return coverage_report(self.batches() if batches is None else batches, lab, sets)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self.num_identities}, K={self.num_instances}, "
            f"identities={self.index.identity_count}, samples={self.index.sample_count}, "
            f"seed={self.seed}, replicas={self.num_replicas}, rank={self.rank})"
        )


class ModalAwarePKSampler(_PKSamplerBase):
    """Plain P×K batch sampler (modality-agnostic), vectorised and resumable.

    See the module docstring for the epoch semantics. ``modalities`` is only used by
    :meth:`coverage_report` and may be ``None``.

    Args:
        labels: identity label of each dataset item (all integers or all strings).
        modalities: modality, or modality set, of each dataset item (any form
            :func:`sdmreid.modality.as_modality_sets` accepts) or ``None``.
        num_identities: ``P``, distinct identities per batch (``1 <= P <= #identities``).
        num_instances: ``K``, indices per identity (``>= 1``).
        seed: non-negative base seed.
        num_replicas: number of ranks (default: the initialised world size, else 1).
        rank: this rank (default: the initialised rank, else 0).

    Raises:
        ValueError: empty labels, length mismatch, ``P``/``K`` < 1, ``P`` > #identities, a ``K``
            whose draws with replacement would outnumber the samples, rank out of range.
        TypeError: non-integer settings, or labels mixing integers and strings.

    Example:
        >>> from sdmreid.samplers import ModalAwarePKSampler
        >>> labels = [0, 0, 1, 1, 2, 2, 3, 3]
        >>> s = ModalAwarePKSampler(labels, None, num_identities=2, num_instances=2, seed=1)
        >>> s.epoch, len(s), [len(b) for b in s]
        (1, 2, [4, 4])
        >>> sorted(i for b in s for i in b)
        [0, 1, 2, 3, 4, 5, 6, 7]
        >>> s.set_epoch(0)
        Traceback (most recent call last):
        ...
        ValueError: epoch (numbered from 1) must be >= 1, got 0
    """

    def __init__(
        self,
        labels: Iterable[Any] | npt.ArrayLike | torch.Tensor,
        modalities: Iterable[object] | npt.ArrayLike | torch.Tensor | None,
        num_identities: int,
        num_instances: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(
            labels,
            modalities,
            num_identities,
            num_instances,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        )


class ModalAwarePKSampler_Strict(_PKSamplerBase):
    """P×K batch sampler whose pairable identities always bring an RGB↔non-RGB pair.

    See the module docstring for the exact epoch, fallback and replica semantics. Every chunk of
    a pairable identity is built with its pair, so nothing is ever retried. Items may carry
    several modalities: every identity of a batch that is not a fallback identity then brings an
    item carrying RGB and an item carrying a non-RGB modality, possibly the same item.

    Args:
        labels: identity label of each dataset item (all integers or all strings).
        modalities: modality, or modality set, of each dataset item: any form
            :func:`sdmreid.modality.as_modality_sets` accepts (one modality per item, a
            ``[N, 5]`` bool array, per-item collections such as ``("rgb", "text")``).
        num_identities: ``P``, distinct identities per batch (``1 <= P <= #identities``).
        num_instances: ``K``, indices per identity (``>= 1``; strong pairs need ``K >= 2``).
        fallback_ratio: in ``[0, 1]``; at most ``⌈fallback_ratio·P⌉`` fallback identities per
            batch while enough pairable identities remain.
        seed: non-negative base seed.
        num_replicas: number of ranks (default: the initialised world size, else 1).
        rank: this rank (default: the initialised rank, else 0).

    Raises:
        ValueError: empty labels, length mismatch, ``P``/``K`` < 1, ``P`` > #identities, a ``K``
            whose draws with replacement would outnumber the samples, ``fallback_ratio``
            outside ``[0, 1]``, rank out of range.
        TypeError: non-numeric settings, or labels mixing integers and strings.

    Example:
        >>> from sdmreid.samplers import ModalAwarePKSampler_Strict
        >>> labels = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
        >>> mods = ["rgb", "rgb", "rgb", "ir"] * 3
        >>> s = ModalAwarePKSampler_Strict(labels, mods, num_identities=3, num_instances=2)
        >>> len(s)
        2
        >>> all(len(b) == 6 for b in s)
        True
        >>> s.coverage_report().coverage  # every chunk is an RGB + IR pair
        1.0
        >>> items = [("rgb", "text")] * 4 + ["rgb", "rgb", "nir", "nir"]  # with captions: pairs
        >>> s = ModalAwarePKSampler_Strict([0] * 4 + [1] * 4, items, 2, 1)  # even with K = 1
        >>> s.index.pairable.tolist(), s.coverage_report().coverage < 1
        ([True, True], True)
    """

    _strict = True

    def __init__(
        self,
        labels: Iterable[Any] | npt.ArrayLike | torch.Tensor,
        modalities: Iterable[object] | npt.ArrayLike | torch.Tensor,
        num_identities: int,
        num_instances: int,
        *,
        fallback_ratio: float = 0.3,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if modalities is None:
            raise ValueError("ModalAwarePKSampler_Strict needs modalities, got None")
        if isinstance(fallback_ratio, bool) or not isinstance(
            fallback_ratio, float | int | np.floating | np.integer
        ):
            raise TypeError(f"fallback_ratio must be a float, got {fallback_ratio!r}")
        fr = float(fallback_ratio)
        if not 0.0 <= fr <= 1.0:  # also rejects nan
            raise ValueError(f"fallback_ratio must be in [0, 1], got {fallback_ratio}")
        self.fallback_ratio = fr
        super().__init__(
            labels,
            modalities,
            num_identities,
            num_instances,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            fallback_ratio=fr,
        )

    @property
    def max_fallback(self) -> int:
        """``⌈fallback_ratio·P⌉``."""
        return self._cap

    def _fingerprint(self) -> dict[str, int]:
        return {
            **super()._fingerprint(),
            "max_fallback": self._cap,
            "modality_digest": _modality_digest(self.index.sample_modalities),
        }
