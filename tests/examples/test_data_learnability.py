"""The synthetic data set is a real cross-modal problem: a gap exists and it is solvable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reid_example.data import SyntheticMultiModalReID
from torch import nn

KW = {"identities_per_split": (60, 0, 30), "counts": ((0, 6, 6), (1, 6, 6)), "image_size": (64, 32)}


def _retrieval(q: torch.Tensor, g: torch.Tensor, ql: torch.Tensor, gl: torch.Tensor):
    """Brute-force cosine ranking → (rank-1, mAP), written independently of the library."""
    q = F.normalize(q, dim=1)
    g = F.normalize(g, dim=1)
    order = (q @ g.T).argsort(dim=1, descending=True)
    hits = (gl[order] == ql[:, None]).float()
    prec = hits.cumsum(1) / torch.arange(1, hits.shape[1] + 1)
    ap = (prec * hits).sum(1) / hits.sum(1)
    return hits[:, 0].mean().item(), ap.mean().item()


@pytest.fixture(scope="module")
def data():
    tr = SyntheticMultiModalReID.preset("sysu", seed=3, split="train", **KW)
    te = SyntheticMultiModalReID.preset("sysu", seed=3, split="test", **KW)

    def raw(ds):
        return torch.stack([ds.raw_image(i) for i in range(len(ds))]).float() / 255

    lab = torch.as_tensor(te.labels)
    rgb = np.flatnonzero(te.modalities == 0)
    nir = np.flatnonzero(te.modalities == 1)
    q_rgb = np.array([rgb[te.labels[rgb] == k][0] for k in range(te.num_classes)])
    gallery = np.setdiff1d(rgb, q_rgb)
    return tr, raw(tr), te, raw(te), lab, q_rgb, nir, gallery


def test_raw_pixels_show_a_cross_modal_gap(data):
    _, _, te, x, lab, q_rgb, nir, gallery = data
    f = x.flatten(1)
    f = f - f.mean(1, keepdim=True)
    r1_rgb, _ = _retrieval(f[q_rgb], f[gallery], lab[q_rgb], lab[gallery])
    r1_nir, _ = _retrieval(f[nir], f[gallery], lab[nir], lab[gallery])
    chance = 1 / te.num_classes
    assert r1_rgb > 5 * chance  # colour makes RGB->RGB easy on raw pixels
    assert r1_rgb >= 2 * r1_nir and r1_rgb - r1_nir >= 0.2, (r1_rgb, r1_nir)


@pytest.mark.slow
def test_tiny_model_beats_chance_nir_to_rgb(data):
    tr, xtr, te, xte, lab, _, nir, gallery = data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)  # test-local: module initialisation
        net = nn.Sequential(
            nn.AvgPool2d(2),
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((4, 2)),
            nn.Flatten(),
            nn.Linear(64 * 8, 64),
        )
        head = nn.Linear(64, tr.num_classes)
        opt = torch.optim.Adam([*net.parameters(), *head.parameters()], 2e-3)
        mean = xtr.mean((0, 2, 3), keepdim=True)
        std = xtr.std((0, 2, 3), keepdim=True)
        y = torch.as_tensor(tr.labels)
        for _ in range(12):  # all modalities, plain cross-entropy
            perm = torch.randperm(len(tr), generator=g)
            for s in range(0, len(tr), 64):
                b = perm[s : s + 64]
                x = (xtr[b] - mean) / std
                flip = torch.rand(len(b), generator=g) < 0.5
                x[flip] = x[flip].flip(-1)
                loss = F.cross_entropy(head(net(x)), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            f = net((xte - mean) / std)
    finally:
        torch.set_num_threads(threads)
    r1, m_ap = _retrieval(f[nir], f[gallery], lab[nir], lab[gallery])
    # chance: rank-1 = 1/#ids; mAP of a random ranking ≈ fraction of positives (6/180) ≪ 0.1
    assert r1 > 3 / te.num_classes, r1
    assert m_ap > 0.15, m_ap
