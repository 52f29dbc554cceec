"""The trainer's SDM options (``loss.sdm_mode``, ``loss.sdm_weights``, ``loss.sdm_objective``,
``loss.sdm_directions``) and its per-query-modality coverage.

* the logged SDM value of a step equals the library's :func:`sdmreid.sdm_loss` called here on
  boolean-mask rows: once over every query row (``pooled``), or once per query modality and
  averaged with the configured weights renormalised over the modalities present
  (``per_modality``), in either loss form;
* the per-modality row counts of a step are counted here by brute force;
* the per-modality coverage reaches the ``[dbg]`` line, the step and epoch rows and the plot,
  and the meter counts one update per step whatever the mode;
* a bad ``loss.sdm_weights`` is refused, naming the option.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from reid_example.config import Config, apply_overrides
from reid_example.engine import QUERY_MODALITIES, StepReading, StepSettings, parse_sdm_weights

from sdmreid import Modality, sdm_loss
from tests.examples.test_trainer import run


def _reference_sdm(
    model: Any, memory: Any, batch: dict[str, Any], settings: StepSettings
) -> tuple[float, dict[str, tuple[int, int]]]:
    """The step's SDM value from ``sdm_loss`` on boolean-mask rows, and each query modality's
    (query rows, query rows without a positive) counted one row at a time."""
    model.train()
    labels, mods = batch["labels"], batch["modalities"]
    out = model(batch["images"], batch["image_rows"], batch["tokens"], batch["text_rows"], mods)
    emb = out.features.detach().double()
    mem = (memory.features.double(), memory.labels)
    rgb = mods == int(Modality.RGB)
    kw: dict[str, Any] = {
        "memory": mem,
        "logit_scale": settings.sdm_logit_scale,
        "objective": settings.sdm_objective,
        "directions": settings.sdm_directions,
    }
    columns = set(labels[rgb].tolist()) | set(memory.labels.tolist())
    counts: dict[str, tuple[int, int]] = {}
    for m in QUERY_MODALITIES:
        q = labels[mods == int(m)].tolist()
        counts[m.name] = (len(q), sum(lab not in columns for lab in q))
    query = ~rgb
    if settings.sdm_mode == "pooled":
        r = sdm_loss(emb[query], emb[rgb], labels[query], labels[rgb], **kw)
        return float(r.loss), counts
    total, weight_sum = 0.0, 0.0
    for m in QUERY_MODALITIES:
        sel = mods == int(m)
        if not bool(sel.any()):
            continue
        r = sdm_loss(emb[sel], emb[rgb], labels[sel], labels[rgb], **kw)
        valid = int(r.query_rows - r.query_rows_without_positive) + int(
            r.gallery_rows - r.gallery_rows_without_positive
        )
        if valid == 0:  # no valid row: the modality contributes nothing
            continue
        w = settings.sdm_weights.get(m, 1.0)
        total += w * float(r.loss)
        weight_sum += w
    return total / weight_sum if weight_sum else 0.0, counts


def _third_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *options: str) -> dict[str, Any]:
    """Run four steps; step 3 (SDM live, memory filled) is recomputed here before it runs."""
    import reid_example.run as run_module

    real_step = run_module.train_step
    ref: dict[str, Any] = {}
    readings: dict[int, StepReading] = {}

    def step(ctx: Any, batch: Any, epoch: int, global_step: int) -> Any:
        if global_step == 2:
            model = copy.deepcopy(ctx.raw_model)
            memory = ctx.memory.view(copy=True)
            ref["sdm"], ref["counts"] = _reference_sdm(model, memory, batch, ctx.settings)
        return real_step(ctx, batch, epoch, global_step)

    real_duties = run_module._after_step

    def duties(run_: Any, reading: StepReading, *args: Any, **kwargs: Any) -> None:
        readings[reading.step] = reading
        real_duties(run_, reading, *args, **kwargs)

    monkeypatch.setattr(run_module, "train_step", step)
    monkeypatch.setattr(run_module, "_after_step", duties)
    run(
        tmp_path,
        "modes",
        "loss.sdm_warmup_epochs=0",
        "train.epochs=1",
        "train.stop_after_steps=4",
        *options,
    )
    return {"ref": ref, "reading": readings[3]}


@pytest.mark.parametrize(
    "options",
    [
        ("loss.sdm_mode=pooled",),
        ("loss.sdm_mode=pooled", "loss.sdm_objective=kl", "loss.sdm_directions=sum"),
        ("loss.sdm_mode=per_modality",),
        ("loss.sdm_mode=per_modality", "loss.sdm_weights=NIR=3,SKETCH=0.5,TEXT=0"),
        ("loss.sdm_mode=per_modality", "loss.sdm_objective=kl", "loss.sdm_weights=CPENCIL=2"),
    ],
    ids=["pooled-ce", "pooled-kl", "per-modality", "per-modality-weights", "per-modality-kl"],
)
def test_logged_sdm_is_the_library_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: tuple[str, ...]
) -> None:
    got = _third_step(tmp_path, monkeypatch, *options)
    ref, s = got["ref"], got["reading"].scalars
    assert s.sdm == pytest.approx(ref["sdm"], rel=1e-4, abs=1e-6)
    for name, (rows, without) in ref["counts"].items():
        assert s.by_modality[f"rows/{name}"] == rows
        assert s.by_modality[f"rows_without_positive/{name}"] == without
    # the aggregate counts every query row once, whatever the mode
    assert s.rows >= sum(rows for rows, _ in ref["counts"].values())


def test_per_modality_coverage_reaches_the_logs(tmp_path: Path) -> None:
    summary = run(
        tmp_path,
        "coverage",
        "loss.sdm_mode=per_modality",
        "train.epochs=2",
        "train.coverage_every=2",
        "eval.every=2",
        "output.plots=true",
    )
    run_dir = Path(summary["run_dir"])
    log = (run_dir / "train.log").read_text()
    lines = re.findall(r"\[dbg\] pair_coverage_mavg_by_modality (.*)$", log, flags=re.M)
    assert lines, log[-2000:]
    names = [kv.split("=")[0] for kv in lines[-1].split()]
    assert set(names) <= {m.name for m in QUERY_MODALITIES} and names
    # the seed's line is unchanged and still parses
    assert re.search(r"^.*\[dbg\] pair_coverage_mavg=(\d\.\d{3})$", log, flags=re.M)
    steps = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    epochs = [json.loads(x) for x in (run_dir / "epochs.jsonl").read_text().splitlines()]
    for row in (steps[-1], epochs[-1]):
        cov = {k: v for k, v in row.items() if k.startswith("pair_coverage/")}
        assert cov and all(v is None or 0.0 <= v <= 1.0 for v in cov.values()), row
    assert any(k.startswith("sdm/") for k in epochs[-1])
    assert re.search(r"epoch 2 \| .* pair_coverage \d\.\d{3} \((\w+=\d\.\d{3} ?)+\) \|", log)
    assert (run_dir / "plots" / "pair_coverage.png").is_file()


def test_the_meter_counts_one_update_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four query modalities, one update: a 4-step run leaves 4 updates in the window (a meter
    fed once per modality would hold 16 and report a 4x shorter window)."""
    import reid_example.run as run_module

    meters: list[Any] = []
    real_duties = run_module._after_step

    def duties(run_: Any, reading: StepReading, *args: Any, **kwargs: Any) -> None:
        real_duties(run_, reading, *args, **kwargs)
        meters.append(run_.step.meter)

    monkeypatch.setattr(run_module, "_after_step", duties)
    run(
        tmp_path,
        "window",
        "loss.sdm_mode=per_modality",
        "loss.sdm_warmup_epochs=0",
        "train.epochs=1",
        "train.stop_after_steps=4",
    )
    assert meters[-1].num_updates == 4


def test_equal_weights_and_no_weights_are_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _third_step(tmp_path / "a", monkeypatch, "loss.sdm_mode=per_modality")
    b = _third_step(
        tmp_path / "b",
        monkeypatch,
        "loss.sdm_mode=per_modality",
        "loss.sdm_weights=NIR=1,SKETCH=1,CPENCIL=1,TEXT=1",
    )
    assert a["reading"].scalars.sdm == b["reading"].scalars.sdm
    assert math.isfinite(a["reading"].scalars.sdm)


@pytest.mark.parametrize(
    ("items", "mode", "message"),
    [
        (("RGB=1",), "per_modality", "does not name a query modality"),
        (("NIR",), "per_modality", "NAME=weight"),
        (("FOO=1",), "per_modality", "NAME=weight"),
        (("NIR=x",), "per_modality", "NAME=weight"),
        (("NIR=-1",), "per_modality", "finite weight >= 0"),
        (("NIR=nan",), "per_modality", "finite weight >= 0"),
        (("NIR=1", "nir=2"), "per_modality", "named twice"),
        (("NIR=0", "SKETCH=0", "CPENCIL=0", "TEXT=0"), "per_modality", "weight > 0"),
        (("NIR=2",), "pooled", "applies to loss.sdm_mode = 'per_modality'"),
    ],
)
def test_bad_sdm_weights_name_the_option(items: tuple[str, ...], mode: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"loss\.sdm_weights") as err:
        parse_sdm_weights(items, mode)
    assert message in str(err.value)
    cfg = apply_overrides(
        Config(), [f"loss.sdm_mode={mode}", f"loss.sdm_weights={','.join(items)}"]
    )
    with pytest.raises(ValueError, match=r"loss\.sdm_weights"):
        StepSettings.from_config(cfg)


def test_weights_parse_case_insensitively() -> None:
    assert parse_sdm_weights(["nir=2", " Text = 0.5"]) == {Modality.NIR: 2.0, Modality.TEXT: 0.5}
    assert parse_sdm_weights([]) == {}
