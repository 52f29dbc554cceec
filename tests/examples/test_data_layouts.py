"""Real-layout loaders on tiny fixture trees written here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from reid_example.data import (
    ImageDecodeError,
    RecordDataset,
    collate_multimodal,
    eval_transform,
    load_csv_manifest,
    load_json_manifest,
    load_llcm,
    load_regdb,
    load_sysu_mm01,
)


def png(path: Path, value: int, mode: str = "RGB", size=(6, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (value, 255 - value, value // 2) if mode == "RGB" else value
    Image.new(mode, size, colour).save(path)
    return path


# --- SYSU-MM01 ----------------------------------------------------------------------------


def sysu_tree(root: Path) -> None:
    (root / "exp").mkdir(parents=True)
    (root / "exp" / "train_id.txt").write_text("1,2")
    (root / "exp" / "val_id.txt").write_text("3")
    (root / "exp" / "test_id.txt").write_text("4,5\n")
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(exist_ok=True)
        for pid in (1, 2, 3, 4, 5, 9):  # 9 is in no list → ignored
            if (pid + cam) % 3 == 0:
                continue
            for k in range(2):
                png(
                    root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg",
                    10 * pid + k,
                    "L" if cam in (3, 6) else "RGB",
                )


def test_sysu_layout(tmp_path):
    sysu_tree(tmp_path)
    recs = load_sysu_mm01(tmp_path)
    expected = {
        (pid, cam, k)
        for cam in range(1, 7)
        for pid in (1, 2, 3, 4, 5)
        if (pid + cam) % 3
        for k in range(2)
    }
    got = {(r.identity, r.camera, int(Path(r.path).stem)) for r in recs}
    assert got == expected
    for r in recs:
        assert r.modality == (1 if r.camera in (3, 6) else 0)
        assert r.split == {1: "train", 2: "train", 3: "val", 4: "test", 5: "test"}[r.identity]
        assert r.label == -1
    assert recs.skipped == []
    ds = RecordDataset(recs, image_size=(12, 6))
    i = next(k for k, r in enumerate(recs) if r.camera == 3)
    img = ds[i]["image"]
    assert img.shape == (3, 12, 6)
    assert torch.allclose(img[0] * 0.229 + 0.485, img[1] * 0.224 + 0.456, atol=1e-5)  # grey → 3ch


def test_sysu_missing_index_and_bad_files(tmp_path):
    sysu_tree(tmp_path)
    (tmp_path / "exp" / "val_id.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("val_id.txt")):
        load_sysu_mm01(tmp_path)
    (tmp_path / "exp" / "val_id.txt").write_text("3,x")
    with pytest.raises(ValueError, match=re.escape("val_id.txt")):
        load_sysu_mm01(tmp_path)
    (tmp_path / "exp" / "val_id.txt").write_text("3")
    bad = tmp_path / "cam1" / "0001" / "0000.jpg"
    bad.write_bytes(b"not an image")
    assert len(load_sysu_mm01(tmp_path, verify=False)) > 0  # existence checked only ...
    with pytest.raises(ImageDecodeError, match=re.escape("0000.jpg")):
        load_sysu_mm01(tmp_path)  # ... every image decoded by default
    with pytest.warns(UserWarning, match="skipped 1"):
        recs = load_sysu_mm01(tmp_path, on_error="skip")
    assert recs.skipped == [(str(bad), recs.skipped[0][1])] and "corrupt" in recs.skipped[0][1]
    # ... and a corrupt file that reaches the dataset fails with its name, not deep in numpy
    ds = RecordDataset(load_sysu_mm01(tmp_path, verify=False), image_size=(12, 6))
    i = next(k for k, r in enumerate(ds.records) if r.path == str(bad))
    with pytest.raises(ImageDecodeError, match=re.escape("0000.jpg")):
        ds[i]


# --- RegDB --------------------------------------------------------------------------------


def test_regdb_layout_and_missing_file(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    for split, ids in (("train", (0, 1)), ("test", (0, 1, 2))):
        for name, folder, mode in (("visible", "Visible", "RGB"), ("thermal", "Thermal", "L")):
            lines = []
            for pid in ids:
                rel = f"{folder}/{split}{pid}/a.bmp"
                png(tmp_path / rel, 50 + pid, mode)
                lines.append(f"{rel} {pid}")
            (idx / f"{split}_{name}_3.txt").write_text("\n".join(lines) + "\n")
    recs = load_regdb(tmp_path, trial=3)
    assert len(recs) == 10
    train = [r for r in recs if r.split == "train"]
    test = [r for r in recs if r.split == "test"]
    assert {r.identity for r in train} == {0, 1}
    assert {r.identity for r in test} == {100000, 100001, 100002}  # kept disjoint
    assert {(r.modality, r.camera) for r in recs} == {(0, 1), (1, 2)}
    with pytest.raises(FileNotFoundError, match=re.escape("train_visible_4.txt")):
        load_regdb(tmp_path, trial=4)
    (tmp_path / "Thermal" / "test2" / "a.bmp").unlink()
    with pytest.raises(ImageDecodeError, match="test2"):
        load_regdb(tmp_path, trial=3)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(load_regdb(tmp_path, trial=3, on_error="skip").skipped) == 1
    (idx / "train_visible_3.txt").write_text("Visible/train0/a.bmp\n")
    with pytest.raises(ValueError, match=re.escape("train_visible_3.txt:1")):
        load_regdb(tmp_path, trial=3)


# --- LLCM ---------------------------------------------------------------------------------


def test_llcm_layout(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    for split in ("train", "test"):
        for name, mode in (("vis", "RGB"), ("nir", "L")):
            lines = []
            for pid, cam in ((1, 2), (1, 5), (2, 9)):
                pid += 2 if split == "test" else 0  # splits are identity-disjoint
                rel = f"{split}_{name}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_s1_f1_{name}.jpg"
                png(tmp_path / rel, pid, mode)
                lines.append(f"{rel} {pid}")
            (idx / f"{split}_{name}.txt").write_text("\n".join(lines))
    recs = load_llcm(tmp_path)
    assert len(recs) == 12
    assert sorted({r.camera for r in recs}) == [2, 5, 9]
    assert {r.modality for r in recs if "_nir" in r.path} == {1}
    (idx / "train_vis.txt").write_text("somewhere/x.jpg 1")
    with pytest.raises(ValueError, match="camera"):
        load_llcm(tmp_path)


# --- JSON and CSV manifests ---------------------------------------------------------------


def test_json_manifest(tmp_path):
    for name in ("a_rgb.png", "a_ir.png", "a_sk.png", "a_cp.png", "b_rgb.png"):
        png(tmp_path / "img" / name, 7)
    manifest = {
        "identities": [
            {
                "id": 11,
                "split": "train",
                "rgb": [{"path": "img/a_rgb.png", "camera": 2}],
                "nir": ["img/a_ir.png"],
                "images": {"sketch": ["img/a_sk.png"], "CP": ["img/a_cp.png"]},
                "text": ["a person in a red coat", "someone in red"],
            },
            {"id": "12", "split": "test", "vis": ["img/b_rgb.png"], "caption": ["a man"]},
        ]
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    recs = load_json_manifest(path)
    assert sorted((r.identity, r.modality, r.camera) for r in recs) == [
        (11, 0, 2),
        (11, 1, 0),
        (11, 2, 0),
        (11, 3, 0),
        (11, 4, 0),
        (11, 4, 0),
        (12, 0, 0),
        (12, 4, 0),
    ]
    assert {r.text for r in recs if r.modality == 4} == {
        "a person in a red coat",
        "someone in red",
        "a man",
    }
    manifest["identities"][0]["depth"] = ["img/a_rgb.png"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="depth"):
        load_json_manifest(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape("m.json")):
        load_json_manifest(path)


def test_csv_manifest_and_dataset_roundtrip(tmp_path):
    png(tmp_path / "p1.png", 200)
    png(tmp_path / "p2.png", 20, "L")
    path = tmp_path / "m.csv"
    path.write_text(
        "path,label,modality,camera,split,text\n"
        "p1.png,5,rgb,1,train,\n"
        "p2.png,9,IR,3,train,\n"
        ",9,text,0,train,a short person\n"
    )
    recs = load_csv_manifest(path)
    assert [(r.identity, r.modality, r.camera) for r in recs] == [(5, 0, 1), (9, 1, 3), (9, 4, 0)]
    ds = RecordDataset(recs, eval_transform((12, 6), mean=(0, 0, 0), std=(1, 1, 1)))
    assert ds.label_map == {5: 0, 9: 1} and ds.labels.tolist() == [0, 1, 1]
    batch = collate_multimodal([ds[i] for i in range(3)])
    expected = torch.tensor([200, 55, 100]) / 255  # the pixels written above
    torch.testing.assert_close(batch["images"][0, :, 0, 0], expected, atol=1e-6, rtol=0)
    assert torch.allclose(batch["images"][1], torch.tensor(20 / 255))
    assert batch["tokens"].shape[0] == 1 and batch["text_rows"].tolist() == [2]
    path.write_text("path,label,modality,camera\np1.png,5,depth,1\n")
    with pytest.raises(ValueError, match=re.escape("m.csv:2")):
        load_csv_manifest(path)
    path.write_text("path,label\n")
    with pytest.raises(ValueError, match="header"):
        load_csv_manifest(path)
    path.write_text("path,label,modality,camera\nmissing.png,5,rgb,1\n")
    with pytest.raises(ImageDecodeError, match=re.escape("missing.png")):
        load_csv_manifest(path)
