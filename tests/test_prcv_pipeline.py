"""A PRCV-style training step end to end, against the seed pipeline's formula written here.

PRCV training items are identity samples that carry several modalities (an RGB image, its
caption and the identity's NIR / sketch / colour-pencil views). The strict sampler draws batches
of such items given as modality sets; each item becomes one embedding row per modality it
carries; SDM runs per query modality in the seed's form (cross-entropy, directions averaged)
and must equal the seed's loop computed here in float64; the coverage meter reports every
query modality.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sdmreid import (
    ModalAwarePKSampler_Strict,
    Modality,
    PairCoverageMeter,
    as_modality_sets,
    coverage_report,
    sdm_per_modality,
)

QUERIES = (Modality.NIR, Modality.SKETCH, Modality.CPENCIL, Modality.TEXT)


def _seed_sdm(q: torch.Tensor, g: torch.Tensor, yq: torch.Tensor, yg: torch.Tensor, s: float):
    """The seed's SDM of one query modality: the cross-entropy of the row-normalised same-label
    target against the softmax of the scaled cosine similarities, both directions averaged."""
    q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    sim = s * q @ g.T
    same = (yq[:, None] == yg[None, :]).double()
    i2t = -(same / same.sum(1, keepdim=True) * F.log_softmax(sim, dim=1)).sum(1).mean()
    t2i = -(same.T / same.T.sum(1, keepdim=True) * F.log_softmax(sim.T, dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def test_prcv_items_strict_batches_per_modality_sdm_in_the_seed_form() -> None:
    rng = np.random.default_rng(0)
    n_ids, per_id = 12, 3
    labels = np.repeat(np.arange(n_ids), per_id)
    # every item: RGB + its caption + the identity's NIR / sketch / colour-pencil views
    sets = [("rgb", "text", "nir", "sketch", "cpencil")] * len(labels)
    # a few identities also have RGB-only items (no views, no caption)
    sets += [("rgb",)] * 4
    labels = np.concatenate([labels, rng.integers(0, n_ids, 4)])
    sampler = ModalAwarePKSampler_Strict(labels, sets, num_identities=4, num_instances=2, seed=3)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert coverage_report(batches, labels, sets).coverage == 1.0

    matrix = as_modality_sets(sets)
    g = torch.Generator().manual_seed(5)
    meter = PairCoverageMeter()
    scale = 20.0
    for batch in batches[:3]:
        # one row per (item, modality it carries)
        rows = [(i, m) for i in batch for m in Modality if matrix[i, int(m)]]
        emb = torch.randn(len(rows), 16, generator=g, dtype=torch.float64)
        y = torch.tensor([int(labels[i]) for i, _ in rows])
        mods = torch.tensor([int(m) for _, m in rows])
        result = sdm_per_modality(
            emb, y, mods, objective="ce", directions="mean", logit_scale=scale
        )
        rgb = mods == int(Modality.RGB)
        expected = torch.stack(
            [
                _seed_sdm(emb[mods == int(m)], emb[rgb], y[mods == int(m)], y[rgb], scale)
                for m in QUERIES
            ]
        ).mean()
        torch.testing.assert_close(result.loss, expected, rtol=1e-10, atol=1e-10)
        meter.update(result)
    assert meter.num_updates == 3  # one update per step, not one per modality
    assert meter.compute_per_modality() == {m.name: 1.0 for m in QUERIES}
    line = meter.per_modality_log_line()
    assert all(f"{m.name}=1.000" in line for m in QUERIES)
