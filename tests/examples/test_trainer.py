"""End-to-end tests of the reference trainer on a tiny synthetic data set (CPU).

* smoke: train → validate → checkpoint → test → report; the recipe's health lines in their exact
  formats, coverage reported, the loss decreases, report and plots exist, checkpoints load with
  ``weights_only=True``;
* exact resume: stop after step k (mid-epoch), resume, and the final weights, optimiser state
  and metric rows equal those of an uninterrupted run, bit for bit — with a different number of
  DataLoader workers on the resumed leg;
* GPU (marked ``gpu``): bf16 autocast with each SDPA backend.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import train
from reid_example.checkpoint import load_checkpoint, save_checkpoint

# A tiny run: 12 training identities (~200 samples) at 32x16, a 2-block ViT.
TINY = [
    "data.dataset=synthetic",
    "data.preset=demo",
    "data.identities_per_split=12,4,4",
    "data.image_height=32",
    "data.image_width=16",
    "data.num_workers=0",
    "sampler.num_identities=4",
    "sampler.num_instances=4",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.patch_size=8",
    "model.stem_channels=8",
    "train.device=cpu",  # these tests are about CPU behaviour (bit-identical resume) anywhere
    "train.num_threads=1",
    "train.log_every=1",
    "train.coverage_every=4",
    "optim.lr=2e-3",
    "optim.warmup_epochs=0.5",
    "output.progress=off",
    "output.tensorboard=false",
]


def run(tmp: Path, name: str, *extra: str) -> dict[str, Any]:
    argv: list[str] = []
    for item in [*TINY, f"output.root={tmp}", f"output.name={name}", *extra]:
        argv += ["--set", item]
    return train.main(argv)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("smoke")
    return run(tmp, "smoke", "train.epochs=4", "eval.every=2", "output.plots=true")


def _log(summary: dict[str, Any]) -> str:
    return (Path(summary["run_dir"]) / "train.log").read_text()


def test_health_lines_have_the_recipe_formats(smoke: dict[str, Any]) -> None:
    text = _log(smoke)
    sdm_lines = re.findall(
        r"\[sdm\] epoch=(\d+) weight=(\d\.\d{3}) use_sdm=(True|False)$", text, flags=re.M
    )
    assert [int(e) for e, _, _ in sdm_lines] == [1, 2, 3, 4]
    # epoch 1 off, then the schedule (unless the health monitor rolled it back)
    assert sdm_lines[0][1:] == ("0.000", "False")
    assert sdm_lines[1][2] in ("True", "False")
    cov = re.findall(r"\[dbg\] pair_coverage_mavg=(\d\.\d{3})$", text, flags=re.M)
    assert cov, "no coverage line"
    assert all(0.0 <= float(c) <= 1.0 for c in cov)
    assert re.search(r"epoch 1 \| CE \d+\.\d+ \| SDM \d+\.\d+ \(w=0\.000\) \| top1 \d\.\d+", text)


def test_loss_decreases_and_coverage_is_reported(smoke: dict[str, Any]) -> None:
    rows = [
        json.loads(x) for x in (Path(smoke["run_dir"]) / "steps.jsonl").read_text().splitlines()
    ]
    ce = [r["ce"] for r in rows]
    k = max(3, len(ce) // 4)
    assert sum(ce[-k:]) / k < sum(ce[:k]) / k - 0.1, ce
    assert all(0.0 <= r["pair_coverage"] <= 1.0 for r in rows)
    # strict sampler + memory: almost every SDM row has a positive
    assert smoke["pair_coverage"] >= 0.85
    epochs = [
        json.loads(x) for x in (Path(smoke["run_dir"]) / "epochs.jsonl").read_text().splitlines()
    ]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all(math.isfinite(e["ce"]) for e in epochs)
    # evaluation epochs also score training identities (the overfitting rule's train side)
    assert [("train/select" in e, "val/select" in e) for e in epochs] == [
        (False, False),
        (True, True),
        (False, False),
        (True, True),
    ]
    assert all(0.0 < e["train/select"] <= 1.0 for e in epochs if "train/select" in e)


def test_eval_report_and_plots(smoke: dict[str, Any]) -> None:
    run_dir = Path(smoke["run_dir"])
    protocols = {"NIR->RGB", "SKETCH->RGB", "CPENCIL->RGB", "TEXT->RGB", "RGB->RGB"}
    assert set(smoke["val"]) == protocols
    assert set(smoke["test"]) == protocols
    for m in smoke["test"].values():
        assert 0.0 < m["mAP"] <= 1.0 and 0.0 <= m["rank1"] <= 1.0
    assert smoke["best_epoch"] in (2, 4)  # evaluated epochs only: chosen on validation
    report = (run_dir / "report.md").read_text()
    assert "Test split, best checkpoint" in report and "NIR->RGB" in report
    for name in ("ce", "sdm_loss", "sdm_weight", "pair_coverage", "train_top1", "map"):
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"plots/{name}.png" in report
    assert (run_dir / "epochs.csv").read_text().startswith("epoch,")


def test_checkpoints_load_weights_only(smoke: dict[str, Any]) -> None:
    run_dir = Path(smoke["run_dir"])
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / name, weights_only=True)
        for key in (
            "model",
            "optimizer",
            "sdm_scheduler",
            "memory",
            "meter",
            "health",
            "rng",
            "sampler",
            "head_switch",
            "lr",
        ):
            assert key in state, key
    last = load_checkpoint(run_dir / "last.pt")
    assert (last["epoch"], last["step_in_epoch"]) == (5, 0)  # resumes at the next epoch
    assert last["global_step"] == smoke["global_step"]
    assert not list(run_dir.glob(".*.tmp")), "temporary checkpoint files left behind"


def test_atomic_checkpoint_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint({"a": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def _state_equal(a: dict[str, Any], b: dict[str, Any], path: str = "") -> None:
    assert a.keys() == b.keys(), path
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            _state_equal(x, y, f"{path}.{k}")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{path}.{k} differs"
        elif isinstance(x, list):
            assert len(x) == len(y), f"{path}.{k}"
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                if isinstance(u, dict):
                    _state_equal(u, v, f"{path}.{k}[{i}]")
                elif isinstance(u, torch.Tensor):
                    assert torch.equal(u, v), f"{path}.{k}[{i}]"
                else:
                    assert u == v or (u != u and v != v), f"{path}.{k}[{i}]"
        else:
            assert x == y or (x != x and y != y), f"{path}.{k}: {x!r} != {y!r}"


@pytest.mark.slow
@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_resume_is_bit_identical(tmp_path: Path, ema: str) -> None:
    common = (
        "train.epochs=2",
        "eval.every=2",
        "eval.test_at_end=false",
        "output.plots=false",
        "train.max_steps_per_epoch=5",
        f"optim.ema_decay={ema}",  # with weight averaging the validation reads the average
    )
    full = run(tmp_path, "full", *common)
    # Stop mid-epoch 1 (after global step 3), then resume with DataLoader workers.
    part = run(tmp_path, "part", *common, "train.stop_after_steps=3")
    assert part["stopped"] and part["global_step"] == 3
    ck = load_checkpoint(Path(part["run_dir"]) / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (1, 3)
    resumed = train.main(
        [
            "--resume",
            str(Path(part["run_dir"]) / "last.pt"),
            "--set",
            "train.stop_after_steps=0",
            "--set",
            "data.num_workers=2",
        ]
    )
    assert resumed["global_step"] == full["global_step"] == 10
    a = load_checkpoint(Path(full["run_dir"]) / "last.pt")
    b = load_checkpoint(Path(resumed["run_dir"]) / "last.pt")
    keys = ("model", "ema", "optimizer", "memory", "meter", "sdm_scheduler", "head_switch", "rng")
    for key in keys:
        _state_equal({key: a[key]}, {key: b[key]})
    assert (a["ema"] is None) == (ema == "0")
    if a["ema"] is not None:  # one average update per optimiser step, resumed or not
        assert int(a["ema"]["n_averaged"]) == int(b["ema"]["n_averaged"]) == 10
    assert resumed["val"] == full["val"]

    def steps(run: dict[str, Any]) -> list[dict[str, Any]]:
        rows = (Path(run["run_dir"]) / "steps.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(r).items() if k != "images_per_second"} for r in rows]

    assert steps(full) == steps(resumed)
    ep_a = [
        json.loads(x) for x in (Path(full["run_dir"]) / "epochs.jsonl").read_text().splitlines()
    ]
    ep_b = [
        json.loads(x) for x in (Path(resumed["run_dir"]) / "epochs.jsonl").read_text().splitlines()
    ]
    drop = ("seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ep_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in ep_b
    ]


def test_cpu_bf16_autocast_trains(tmp_path: Path) -> None:
    """bf16 autocast runs end to end on CPU. (CPU autocast keeps batch norm in float32, unlike
    CUDA's: the dtype case the GPU run found is tested in tests/examples/test_model.py.)"""
    summary = run(
        tmp_path, "bf16", "train.amp=bf16", "train.epochs=2", "eval.every=2", "output.plots=false"
    )
    assert not summary["stopped"]
    assert "amp bfloat16" in _log(summary)
    rows = [
        json.loads(x) for x in (Path(summary["run_dir"]) / "epochs.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(r["ce"]) for r in rows)
    assert all(math.isfinite(m["mAP"]) for m in summary["test"].values())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "flash", "efficient", "math"])
def test_gpu_bf16_sdpa_backends(tmp_path: Path, backend: str) -> None:
    summary = run(
        tmp_path,
        f"gpu-{backend}",
        "train.device=cuda",
        "train.amp=bf16",
        f"model.sdpa_backend={backend}",
        "train.epochs=2",
        "eval.every=2",
        "output.plots=false",
        "data.num_workers=2",
    )
    assert not summary["stopped"]
    assert all(math.isfinite(m["mAP"]) for m in summary["test"].values())
    log = _log(summary)
    # a backend that cannot run says so in one line and falls back
    assert log.count("falling back to automatic selection") <= 1


@pytest.mark.gpu
def test_gpu_compiled_sdm_trains(tmp_path: Path) -> None:
    summary = run(
        tmp_path,
        "gpu-compiled",
        "train.device=cuda",
        "loss.sdm_compiled=true",
        "loss.sdm_warmup_epochs=0",
        "train.epochs=2",
        "eval.every=2",
        "output.plots=false",
    )
    assert not summary["stopped"]
    rows = [
        json.loads(x) for x in (Path(summary["run_dir"]) / "epochs.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(r["sdm"]) for r in rows)
    assert rows[0]["sdm_weight"] > 0  # SDM (compiled) took part in training from epoch 1


@pytest.mark.ddp
@pytest.mark.slow
def test_torchrun_two_process_gloo(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2`` on CPU/gloo: runs, rank 0 alone writes, and the loss
    curve follows a 1-process run with the doubled batch (P=8 vs 2×P=4)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    sets: list[str] = []
    for item in [
        *TINY,
        f"output.root={tmp_path}",
        "output.name=ddp",
        "train.epochs=2",
        "eval.every=2",
        "dist.backend=gloo",
        "output.plots=false",
    ]:
        sets += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "examples")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(root / "examples" / "train.py"),
        *sets,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    assert (run_dir / "last.pt").exists() and (run_dir / "report.md").exists()
    log = (run_dir / "train.log").read_text()
    assert "world 2" in log
    assert log.count("[sdm] epoch=1 ") == 1  # one writer
    ck = load_checkpoint(run_dir / "last.pt")
    assert ck["sampler"]["world_size"] == 2
    single = run(
        tmp_path,
        "single",
        "train.epochs=2",
        "eval.every=2",
        "output.plots=false",
        "sampler.num_identities=8",
    )
    ddp_rows = [json.loads(x) for x in (run_dir / "epochs.jsonl").read_text().splitlines()]
    one_rows = [
        json.loads(x) for x in (Path(single["run_dir"]) / "epochs.jsonl").read_text().splitlines()
    ]
    assert len(ddp_rows) == len(one_rows) == 2
    # Different batch compositions, same data per step: epoch CE within 10 %.
    for a, b in zip(ddp_rows, one_rows, strict=True):
        assert abs(a["ce"] - b["ce"]) <= 0.10 * b["ce"], (a["ce"], b["ce"])


def test_flip_embedding_is_the_mean_of_image_and_mirror() -> None:
    """eval.flip: image rows get the mean of both passes, text rows a single pass."""
    from reid_example.evaluate import extract_features
    from reid_example.model import EmbeddingOutput
    from reid_example.runtime import resolve_amp

    class Stub(torch.nn.Module):
        embed_dim = 2

        def forward(self, images, image_rows, tokens, text_rows, modalities):
            n = modalities.shape[0]
            feats = torch.zeros(n, 2)
            if images is not None:
                w = torch.arange(images.shape[-1], dtype=torch.float32)
                # position-weighted: a mirror image gives a different feature
                feats[image_rows, 0] = (images.mean(dim=(1, 2)) * w).sum(-1)
                feats[image_rows, 1] = images.mean(dim=(1, 2, 3))
            if tokens is not None:
                feats[text_rows] = tokens.float().mean(1, keepdim=True).expand(-1, 2)
            return EmbeddingOutput(feats, feats, feats)

    g = torch.Generator().manual_seed(0)
    items = [
        {"image": torch.rand(3, 4, 3, generator=g), "label": 0, "modality": 0, "camera": 0},
        {"tokens": torch.tensor([3, 4, 0]), "label": 1, "modality": 4, "camera": 0},
        {"image": torch.rand(3, 4, 3, generator=g), "label": 1, "modality": 1, "camera": 0},
    ]

    def collate(batch):
        rows = [i for i, x in enumerate(batch) if "image" in x]
        trows = [i for i, x in enumerate(batch) if "tokens" in x]
        return {
            "images": torch.stack([batch[i]["image"] for i in rows]),
            "image_rows": torch.tensor(rows),
            "tokens": torch.stack([batch[i]["tokens"] for i in trows]),
            "text_rows": torch.tensor(trows),
            "modalities": torch.tensor([x["modality"] for x in batch]),
        }

    amp = resolve_amp("off", torch.device("cpu"))
    kw = {"collate": collate, "batch_size": 8, "device": torch.device("cpu"), "amp": amp}
    plain = extract_features(Stub(), items, **kw)
    flipped = extract_features(Stub(), items, flip=True, **kw)
    mirror_items = [{**x, "image": x["image"].flip(-1)} if "image" in x else x for x in items]
    mirror = extract_features(Stub(), mirror_items, **kw)
    torch.testing.assert_close(flipped[[0, 2]], 0.5 * (plain[[0, 2]] + mirror[[0, 2]]))
    torch.testing.assert_close(flipped[1], plain[1])
    assert not torch.allclose(plain[[0, 2]], mirror[[0, 2]])  # the stub sees the mirroring


def test_health_adapter_feeds_the_overfitting_rule_on_evaluation_epochs() -> None:
    import logging

    from reid_example.config import Config
    from reid_example.health import HealthAdapter

    from sdmreid import SDMWeightScheduler

    adapter = HealthAdapter(Config(), SDMWeightScheduler(), logging.getLogger("t"), 100)
    val = [0.50, 0.52, 0.52, 0.51]  # validation stalls while the train score climbs
    train = [0.55, 0.62, 0.70, 0.80]
    fired = []
    for epoch in range(1, 9):
        if epoch % 2 == 0:  # evaluated every second epoch
            i = epoch // 2 - 1
            found = adapter.check(epoch, 1.0, train[i], val[i])
        else:
            found = adapter.check(epoch, 1.0)
        fired += [(f.rule, epoch) for f in found]
    assert fired == [("overfitting", 8)]
    (finding,) = adapter.monitor.compute()
    # the advice starts from this run's settings (defaults: label smoothing 0.1, weight decay
    # 0.05, head LR 3e-3 from epoch 2): +0.05, x2 and x1/3 by the rule's documented factors
    assert dict(finding.suggested) == pytest.approx(
        {"label_smoothing": 0.1 + 0.05, "weight_decay": 0.05 * 2, "head_lr": 3e-3 / 3}, rel=1e-3
    )
    (line,) = [line for line in adapter.history if "overfitting" in line]
    assert line.startswith("[health] warning overfitting epoch=8: ")
    # non-finite scores are not fed (no crash, no finding)
    assert adapter.check(9, 1.0, math.nan, 0.5) == []


def test_health_adapter_advises_from_the_head_lr_in_force() -> None:
    import logging

    from reid_example.config import Config, apply_overrides
    from reid_example.health import HealthAdapter

    from sdmreid import PairCoverageMeter, SDMWeightScheduler

    cfg = apply_overrides(
        Config(),
        ["optim.head_lr=1e-2", "optim.head_lr_after=1e-3", "optim.head_lr_switch_epoch=3"],
    )
    adapter = HealthAdapter(cfg, SDMWeightScheduler(), logging.getLogger("t"), 100)
    meter, w = PairCoverageMeter(), torch.ones(4)
    # the classifier norm quadruples within epoch 1 (head LR 1e-2), then within epoch 3 (1e-3)
    for epoch, step, scale in ((1, 10, 1.0), (1, 20, 4.0), (3, 30, 4.0), (3, 40, 16.0)):
        adapter.step(epoch, step, meter, float((scale * w).norm()))
    advice = [(f.epoch, dict(f.suggested)["head_lr"]) for f in adapter.monitor.compute()]
    assert advice == [
        (1, pytest.approx(1e-2 / 3, rel=1e-3)),
        (3, pytest.approx(1e-3 / 3, rel=1e-3)),
    ]
    assert all("head_weight_norm_growth" in line for line in adapter.history)


@pytest.mark.slow
def test_ablation_quick_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ablation

    argv = ["--quick", "--root", str(tmp_path), "--variants", "ce_only", "+sdm+strict+mem"]
    out = ablation.main(argv)
    rows = out["table"].splitlines()
    assert rows[0].startswith("| variant | seeds | NIR->RGB mAP | NIR->RGB R1 |")
    assert [r.split(" | ")[0] for r in rows[2:4]] == ["| `ce_only`", "| `+sdm+strict+mem`"]
    # the change table: the full recipe's mAP and its change against CE only, per protocol
    change = rows[-1]
    assert change.startswith("| `+sdm+strict+mem` | ")
    assert len(re.findall(r"\d\.\d{3} \([+-]\d\.\d{3}\)", change)) == len(
        out["results"]["ce_only"][0]["test"]
    )
    assert all(len(runs) == 1 and runs[0]["test"] for runs in out["results"].values())
    # run again into the same root: refused before anything trains, naming both runs
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(SystemExit) as exc:
        ablation.main(argv)
    assert exc.value.code == 2
    assert "ce_only-seed0" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def _naive_cross_modal(
    feats: torch.Tensor, ids: Any, mods: Any, query_modality: int
) -> dict[str, float]:
    """mAP and rank-1 of every ``query_modality`` item against all RGB items, one query at a
    time: cosine similarity, sort, precision at each positive."""
    import numpy as np

    f = torch.nn.functional.normalize(feats.double(), dim=1).numpy()
    gallery = np.flatnonzero(mods == 0)
    aps, top1 = [], []
    for q in np.flatnonzero(mods == query_modality):
        order = gallery[np.argsort(-(f[gallery] @ f[q]), kind="stable")]
        hits = ids[order] == ids[q]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        top1.append(float(hits[0]))
    return {"mAP": float(np.mean(aps)), "rank1": float(np.mean(top1))}


def test_evaluator_scores_like_a_naive_loop() -> None:
    import numpy as np
    from reid_example.builders import build_data
    from reid_example.config import Config, apply_overrides
    from reid_example.evaluate import Evaluator
    from reid_example.runtime import Runtime, resolve_amp

    cfg = apply_overrides(Config(), ["data.identities_per_split=4,6,4", "train.device=cpu"])
    data = build_data(cfg)
    cpu = torch.device("cpu")
    rt = Runtime(cpu, 0, 1, resolve_amp("off", cpu), False, np.random.default_rng(0))
    ds = data.val
    feats = torch.randn(len(ds), 8, generator=torch.Generator().manual_seed(0))
    feats += torch.nn.functional.one_hot(torch.from_numpy(ds.identities) % 8, 8)
    scores = Evaluator(cfg, data, rt).score_features(feats, ds, "val")
    names = {"NIR->RGB": 1, "SKETCH->RGB": 2, "CPENCIL->RGB": 3, "TEXT->RGB": 4}
    assert list(scores) == [*names, "RGB->RGB"]
    for name, modality in names.items():
        want = _naive_cross_modal(feats, ds.identities, ds.modalities, modality)
        assert scores[name]["mAP"] == pytest.approx(want["mAP"], abs=1e-6), name
        assert scores[name]["rank1"] == pytest.approx(want["rank1"], abs=1e-6), name


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["eval.select_metric=mAP/NIR->NIR"], r"eval.select_metric='mAP/NIR->NIR'"),
        (["eval.select_metric=rank1"], "use mAP_mean or mAP/<protocol>"),
        (["eval.protocols=NIR->RGB", "eval.select_metric=mAP/RGB->RGB"], r"\['NIR->RGB'\]"),
        (["eval.protocols=RGB->NIR"], r"eval.protocols names \['RGB->NIR'\]"),
    ],
)
def test_bad_protocol_names_fail_before_training(
    tmp_path: Path, overrides: list[str], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        run(tmp_path, "bad", "train.epochs=1", *overrides)
    assert not (tmp_path / "bad" / "steps.jsonl").exists()


@pytest.mark.parametrize(
    "name",
    [
        "ablation",
        "reid_example.builders",
        "reid_example.checkpoint",
        "reid_example.config",
        "reid_example.engine",
        "reid_example.evaluate",
        "reid_example.health",
        "reid_example.optim",
        "reid_example.reporting",
        "reid_example.run",
        "reid_example.runtime",
    ],
)
def test_docstring_examples(name: str) -> None:
    """The trainer modules' ``>>>`` examples run (examples/ is outside pytest's doctest paths)."""
    import doctest
    import importlib

    module = importlib.import_module(name)
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_ablation_from_json_merges_saved_runs_in_the_scripts_order(tmp_path: Path) -> None:
    import ablation

    def runs(variant_maps: dict[str, list[float]]) -> dict[str, list[dict[str, Any]]]:
        return {
            v: [
                {
                    "seed": seed,
                    "test": {"NIR->RGB": {"mAP": m, "rank1": m}},
                    "pair_coverage": 0.9,
                    "rollbacks": 0,
                }
                for seed, m in reversed(list(enumerate(maps)))
            ]
            for v, maps in variant_maps.items()
        }

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    b.write_text(json.dumps(runs({"ce_only": [0.5, 0.7]})))
    a.write_text(json.dumps(runs({"+sdm+strict+mem": [0.8, 0.9]})))
    out = ablation.main(["--from-json", str(a), str(b), "--out", str(tmp_path / "t.md")])
    rows = out["table"].splitlines()
    assert rows[2].startswith("| `ce_only` | 2 | 0.600 ± 0.141 |")
    assert rows[3].startswith("| `+sdm+strict+mem` | 2 | 0.850 ± 0.071 |")
    assert rows[-1] == "| `+sdm+strict+mem` | 0.850 (+0.250) |"
    assert [r["seed"] for r in out["results"]["ce_only"]] == [0, 1]
    assert (tmp_path / "t.md").read_text().endswith(out["table"] + "\n")
