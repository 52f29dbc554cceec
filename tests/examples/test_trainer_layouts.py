"""The trainer on a real on-disk layout (a CSV manifest of PNG files written by the test)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reid_example.builders import build_data, load_real_records
from reid_example.config import Config, apply_overrides
from reid_example.evaluate import Evaluator

from tests.examples.test_data_layouts import png, sysu_tree
from tests.examples.test_trainer import run


def write_manifest(root: Path, n_train: int = 8, n_test: int = 4) -> Path:
    """n_train + n_test identities, 2 RGB (cam 1) + 2 NIR (cam 3) images each, 16x8 PNGs."""
    rng = np.random.default_rng(0)
    lines = ["path,label,modality,camera,split"]
    for pid in range(n_train + n_test):
        split = "train" if pid < n_train else "test"
        base = rng.integers(0, 256, size=3)
        for k, (mod, cam) in enumerate([("rgb", 1), ("rgb", 1), ("ir", 3), ("ir", 3)]):
            pix = np.clip(base + rng.integers(-20, 21, size=(16, 8, 3)), 0, 255).astype(np.uint8)
            if mod == "ir":
                pix = pix.mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8)
            name = f"{pid:03d}_{k}.png"
            Image.fromarray(pix).save(root / name)
            lines.append(f"{name},{100 + pid},{mod},{cam},{split}")
    path = root / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_real_layout_name_has_a_loader(tmp_path: Path) -> None:
    for name in ("sysu", "regdb", "llcm", "prcv", "csv"):
        cfg = apply_overrides(
            Config(), [f"data.dataset={name}", f"data.root={tmp_path / 'absent'}"]
        )
        # each name reaches its loader, which names the missing file or directory
        with pytest.raises((ValueError, OSError), match="absent"):
            load_real_records(cfg)


def test_csv_layout_builds_splits_and_protocols(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    overrides = ["data.dataset=csv", f"data.root={manifest}", "data.image_height=16"]
    cfg = apply_overrides(Config(), [*overrides, "data.image_width=8"])
    data = build_data(cfg)
    assert data.train.num_classes + len(set(data.val.identities.tolist())) == 8
    assert len(set(data.test.identities.tolist())) == 4
    assert Evaluator.protocol_names_for(cfg, data.test.modalities) == ["NIR->RGB", "RGB->RGB"]
    assert data.eval_set("train") is data.train_eval
    with pytest.raises(ValueError, match="'val', 'test' or 'train', got 'training'"):
        data.eval_set("training")


def test_trainer_runs_on_a_csv_manifest(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    summary = run(
        tmp_path,
        "csv",
        "data.dataset=csv",
        f"data.root={manifest}",
        "train.epochs=1",
        "eval.every=1",
        "output.plots=false",
        "sampler.num_identities=2",
        "sampler.num_instances=4",
    )
    assert (Path(summary["run_dir"]) / "report.md").exists()


def _small_run(tmp_path: Path, name: str, root: Path, *extra: str) -> dict:
    return run(
        tmp_path / "runs",
        name,
        f"data.dataset={name}",
        f"data.root={root}",
        "train.epochs=1",
        "eval.every=1",
        "output.plots=false",
        "sampler.num_identities=2",
        "sampler.num_instances=2",
        "sampler.kind=pk",
        *extra,
    )


def test_trainer_runs_sysu_with_the_published_protocol(tmp_path: Path) -> None:
    sysu_tree(tmp_path / "sysu")
    summary = _small_run(tmp_path, "sysu", tmp_path / "sysu", "eval.trials=3")
    report = (Path(summary["run_dir"]) / "report.md").read_text()
    # validation: all-search, one trial; the test split: both searches, 3 trials each
    assert re.search(r"## Test split, best checkpoint \(epoch \d+, 3 trials\)", report)
    assert "| SYSU-MM01 all-search |" in report
    assert "| SYSU-MM01 indoor-search |" in report


def test_trainer_runs_regdb_in_both_directions(tmp_path: Path) -> None:
    root = tmp_path / "regdb"
    idx = root / "idx"
    idx.mkdir(parents=True)
    for split, ids in (("train", range(4)), ("test", range(4, 7))):
        for modality, folder, mode in (("visible", "Visible", "RGB"), ("thermal", "Thermal", "L")):
            lines = []
            for pid in ids:
                for k in range(2):
                    rel = f"{folder}/{pid}/{k}.bmp"
                    png(root / rel, 30 * pid + k, mode)
                    lines.append(f"{rel} {pid}")
            (idx / f"{split}_{modality}_2.txt").write_text("\n".join(lines) + "\n")
    summary = _small_run(tmp_path, "regdb", root, "data.trial=2")
    report = (Path(summary["run_dir"]) / "report.md").read_text()
    assert "RegDB trial 2 visible_to_thermal" in report
    assert "RegDB trial 2 thermal_to_visible" in report


def _corrupt(path: Path) -> None:
    """Keep the first half of an image file, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_trainer_skips_an_image_that_breaks_after_loading_and_says_so(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    _corrupt(tmp_path / "000_0.png")  # a training identity's RGB image
    summary = _small_run(
        tmp_path, "csv", manifest, "data.on_error=skip", "data.verify=false", "eval.every=100"
    )
    log = (Path(summary["run_dir"]) / "train.log").read_text()
    assert re.search(r"\[data\] 1 training image\(s\) failed to decode .*000_0\.png", log)


def test_trainer_refuses_a_corrupt_image_at_start_up_under_raise(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    _corrupt(tmp_path / "000_0.png")
    with pytest.raises((ValueError, OSError), match=r"000_0\.png"):
        load_real_records(apply_overrides(Config(), ["data.dataset=csv", f"data.root={manifest}"]))
