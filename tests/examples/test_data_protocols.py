"""Per-epoch evaluation protocols of the trainer (``reid_example.data.protocols``)."""

from __future__ import annotations

import numpy as np
import pytest
from reid_example.data import SyntheticMultiModalReID
from reid_example.data.protocols import (
    all_to_rgb_protocols,
    llcm_protocol,
    regdb_protocol,
    sysu_protocol,
)

from sdmreid import Modality


def test_sysu_protocol_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 300
    ids = rng.integers(0, 8, n)
    cams = rng.integers(1, 7, n)
    mods = np.where(np.isin(cams, [3, 6]), 1, 0)
    for mode, gcams in (("all", {1, 2, 4, 5}), ("indoor", {1, 2})):
        for shots in (1, 10):
            p = sysu_protocol(ids, mods, cams, mode=mode, shots=shots, trial=3)
            assert p.camera_rule == "sysu"
            assert set(p.query.tolist()) == {i for i in range(n) if cams[i] in (3, 6)}
            for pid in range(8):
                for c in gcams:
                    cand = [i for i in range(n) if ids[i] == pid and cams[i] == c]
                    got = [i for i in p.gallery.tolist() if ids[i] == pid and cams[i] == c]
                    assert len(got) == min(shots, len(cand)) and set(got) <= set(cand)
            assert set(cams[p.gallery].tolist()) <= gcams
            again = sysu_protocol(ids, mods, cams, mode=mode, shots=shots, trial=3)
            assert np.array_equal(p.gallery, again.gallery)
    a = sysu_protocol(ids, mods, cams, trial=0).gallery
    assert any(
        not np.array_equal(a, sysu_protocol(ids, mods, cams, trial=t).gallery) for t in (1, 2)
    )


def test_regdb_and_llcm_protocols():
    mods = np.array([0, 1, 0, 1, 1])
    v2t = regdb_protocol(mods)
    assert v2t.query.tolist() == [0, 2] and v2t.gallery.tolist() == [1, 3, 4]
    t2v = regdb_protocol(mods, direction="thermal_to_visible")
    assert t2v.query.tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match="direction"):
        regdb_protocol(mods, direction="up")
    ids = np.array([1, 1, 1, 1, 2, 2])
    cams = np.array([1, 1, 2, 3, 1, 3])
    mods = np.array([0, 0, 0, 1, 0, 1])
    p = llcm_protocol(ids, mods, cams)
    assert p.query.tolist() == [3, 5] and p.camera_rule == "same_identity_camera"
    g = p.gallery.tolist()
    assert len(g) == 3 and 2 in g and 4 in g and len({0, 1} & set(g)) == 1


def test_all_to_rgb_protocols_cover_every_non_rgb_modality():
    ds = SyntheticMultiModalReID.preset(
        "prcv2025", split="test", identities_per_split=(8, 3, 5), image_size=(32, 16), cache=False
    )
    ps = {p.name: p for p in all_to_rgb_protocols(ds.identities, ds.modalities, seed=1)}
    assert set(ps) == {"NIR->RGB", "SKETCH->RGB", "CPENCIL->RGB", "TEXT->RGB", "RGB->RGB"}
    rgb = set(np.flatnonzero(ds.modalities == 0).tolist())
    for name, p in ps.items():
        assert set(ds.modalities[p.query].tolist()) == {Modality[name.split("->")[0]]}
        if name != "RGB->RGB":
            assert set(p.gallery.tolist()) == rgb
    rr = ps["RGB->RGB"]
    assert not set(rr.query.tolist()) & set(rr.gallery.tolist())
    assert set(rr.query.tolist()) | set(rr.gallery.tolist()) == rgb
    assert len(rr.query) == ds.num_classes  # every identity has >= 2 RGB images here
    assert len(set(ds.identities[rr.query].tolist())) == len(rr.query)
