"""The trainer's device pipeline, on the CPU (and on CUDA where marked ``gpu``).

* host synchronisations: none inside a step, one read per logging step, nothing at all on the
  other steps (counted with a ``TorchDispatchMode`` and a ``TorchFunctionMode`` written here);
* the logged numbers of a step equal an eager reference computed here (boolean-mask SDM rows,
  a per-parameter float64 gradient norm, naive row counts);
* the batch layout (``group_by_modality``), the per-modality stems by counts, one trunk pass;
* a non-finite step: skipped on the device, the run stops at the next read;
* the weight average without reads, the memory's ``on_nonfinite="ignore"``;
* ``data.device_cache``: the same batches as the loader (identities, modalities, rows, tokens;
  images without augmentation), augmentation statistics equal to the loader path's, the budget
  refused by name, an exact resume;
* ``data.decoded_cache``: a second epoch and a second run decode nothing, images bit for bit;
* ``train.compile``: a compiled run matches the eager first step; fallbacks logged.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import train
from hypothesis import given, settings
from hypothesis import strategies as st
from reid_example.builders import build_data, build_train_loader
from reid_example.config import Config, apply_overrides
from reid_example.data.collate import collate_grouped, collate_multimodal, group_by_modality
from reid_example.data.decoded_cache import DecodedImageCache
from reid_example.data.device_cache import DeviceAugment, DeviceBatches, DeviceCache
from reid_example.data.transforms import sample_generator, train_transform
from reid_example.engine import NonFiniteStepError, StepLog, StepReading, image_counts
from reid_example.model import ReIDModel
from reid_example.optim import build_ema, update_ema
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from sdmreid import CrossBatchMemory, Modality, sdm_loss
from tests.examples.test_trainer import TINY, run
from tests.examples.test_trainer_layouts import write_manifest

# ---------------------------------------------------------------------------------------------
# counting host reads

#: operators after which the host holds a value computed by the device
READ_OPS = {
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.equal.default",
    "aten.is_nonzero.default",
    "aten._unique2.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",
}


class Reads(TorchDispatchMode):
    """Counts, by ``phase``, the operators that read a value computed on the device (any
    device: on the CPU a step has no business reading its own tensors either), boolean-mask
    indexing and device-to-host copies."""

    def __init__(self) -> None:
        super().__init__()
        self.active = True
        self.phase = "rest"
        self.count: Counter[str] = Counter()

    def hit(self) -> None:
        if self.active:
            self.count[self.phase] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name, kwargs = str(func), kwargs or {}
        mask_index = name in ("aten.index.Tensor", "aten.index_put_.default") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()
        )
        to_host = (
            name == "aten._to_copy.default"
            and args[0].device.type != "cpu"
            and str(kwargs.get("device", args[0].device)) == "cpu"
        )
        if name in READ_OPS or mask_index or to_host:
            self.hit()
        return func(*args, **kwargs)


class ToList(TorchFunctionMode):
    """``.tolist()``/``.numpy()`` calls (no operator at all on a CPU tensor)."""

    def __init__(self, reads: Reads) -> None:
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in (torch.Tensor.tolist, torch.Tensor.numpy):
            self.reads.hit()
        return func(*args, **(kwargs or {}))


def _steps(tmp: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp / name / "steps.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("data", ["data.device_cache=true", "data.num_workers=2"])
def test_steps_read_the_device_only_at_logging_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: str
) -> None:
    """Per step window (one step, building the next batch, whatever runs until the next step
    starts): no read at all between logging steps; on a logging step none inside the step and
    exactly one in ``StepLog.read``. The step duties then get host numbers (their meter and
    monitor live on the host: their own reads are not counted). The batches come from the
    device cache or from loader workers (a loader in the main process reads its own host
    tensors while it decodes and augments)."""
    import reid_example.run as run_module

    reads = Reads()
    windows: dict[int, Counter[str]] = {}
    real_step, real_read, real_duties = run_module.train_step, StepLog.read, run_module._after_step

    def step(ctx: Any, batch: Any, epoch: int, global_step: int) -> Any:
        reads.count = windows.setdefault(global_step + 1, Counter())
        reads.phase = "step"
        try:
            return real_step(ctx, batch, epoch, global_step)
        finally:
            reads.phase = "rest"

    def read(self: StepLog) -> list[StepReading]:
        reads.phase = "read"
        try:
            return real_read(self)
        finally:
            reads.phase = "rest"

    seen: list[StepReading] = []

    def duties(run: Any, reading: StepReading, *args: Any, **kwargs: Any) -> None:
        assert all(type(v) is float for v in reading.scalars.as_dict().values())
        assert type(reading.head_norm) is float
        assert run.step.meter.device.type == "cpu"
        seen.append(reading)
        reads.active = False
        try:
            real_duties(run, reading, *args, **kwargs)
        finally:
            reads.active = True

    monkeypatch.setattr(run_module, "train_step", step)
    monkeypatch.setattr(StepLog, "read", read)
    monkeypatch.setattr(run_module, "_after_step", duties)
    with reads, ToList(reads):
        summary = run(
            tmp_path,
            "reads",
            data,
            "train.log_every=3",
            "loss.sdm_warmup_epochs=0",  # SDM and the memory live from the first step
            "train.epochs=1",
            "train.stop_after_steps=8",
            "health.every_steps=2",
            "train.coverage_every=4",
        )
    assert summary["stopped"]
    assert [r.step for r in seen] == list(range(1, 9))  # every step's duties, in order
    assert all(r.scalars.sdm_weight > 0 and r.scalars.rows > 0 for r in seen)
    for n in range(1, 9):
        logged = n % 3 == 0 or n == 8  # the stop step is read too
        w = windows[n]
        assert w["step"] == 0, (n, w)
        assert w["read"] == (1 if logged else 0), (n, w)
        if n < 8:  # (after the last step: the epoch's summary, the run's end)
            assert w["rest"] == 0, (n, w)
    assert [r["step"] for r in _steps(tmp_path, "reads")] == [3, 6]  # rows: log_every


def test_logged_values_equal_an_eager_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 3 of a run (SDM live, memory filled) against the formula computed here on a copy
    of the model and memory taken before the step: CE, SDM on boolean-mask rows, the loss,
    top-1, the row counts by brute force, the float64 gradient norm, the classifier norm."""
    import reid_example.run as run_module

    real_step = run_module.train_step
    ref: dict[str, float] = {}
    readings: dict[int, StepReading] = {}

    def step(ctx: Any, batch: Any, epoch: int, global_step: int) -> Any:
        if global_step == 2:
            model = copy.deepcopy(ctx.raw_model)
            memory = ctx.memory.view(copy=True)
            weight = ctx.sdm_scheduler.weight(epoch)
            out = real_step(ctx, batch, epoch, global_step)
            ref.update(_eager_reference(ctx, model, memory, batch, weight))
            return out
        return real_step(ctx, batch, epoch, global_step)

    real_duties = run_module._after_step

    def duties(run: Any, reading: StepReading, *args: Any, **kwargs: Any) -> None:
        readings[reading.step] = reading
        real_duties(run, reading, *args, **kwargs)

    monkeypatch.setattr(run_module, "train_step", step)
    monkeypatch.setattr(run_module, "_after_step", duties)
    run(
        tmp_path,
        "eager",
        "train.log_every=2",
        "loss.sdm_warmup_epochs=0",
        "train.epochs=1",
        "train.stop_after_steps=4",
    )
    got = readings[3]
    s = got.scalars
    assert s.rows == ref["rows"] and s.rows_without_positive == ref["without"]
    assert s.batch == ref["batch"] and s.sdm_weight == ref["weight"]
    for key, value in (("ce", s.ce), ("sdm", s.sdm), ("loss", s.loss), ("top1", s.top1)):
        assert value == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    assert s.grad_norm == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert got.head_norm == pytest.approx(ref["head_norm"], rel=1e-5)


def _eager_reference(
    ctx: Any, model: ReIDModel, memory: Any, batch: dict[str, Any], weight: float
) -> dict[str, float]:
    """The step's numbers, eagerly: the model reads the batch without its counts (grouping
    the images itself), SDM takes its rows by boolean masks, the gradient norm is a float64
    sum over parameters, rows without a positive are counted one by one."""
    model.train()
    images, labels, mods = batch["images"], batch["labels"], batch["modalities"]
    out = model(images, batch["image_rows"], batch["tokens"], batch["text_rows"], mods)
    ce = F.cross_entropy(out.logits, labels, label_smoothing=ctx.settings.label_smoothing)
    rgb = mods == int(Modality.RGB)
    emb = out.features
    sdm = sdm_loss(
        emb[~rgb],
        emb[rgb],
        labels[~rgb],
        labels[rgb],
        memory=(memory.features, memory.labels),
        logit_scale=ctx.settings.sdm_logit_scale,
        objective=ctx.settings.sdm_objective,  # type: ignore[arg-type]
        directions=ctx.settings.sdm_directions,  # type: ignore[arg-type]
    )
    loss = ce + weight * sdm.loss
    loss.backward()
    grad_norm = math.sqrt(
        sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    )
    q_labels, g_labels = labels[~rgb].tolist(), labels[rgb].tolist()
    columns = set(g_labels) | set(memory.labels.tolist())
    without = sum(lab not in columns for lab in q_labels) + sum(
        lab not in set(q_labels) for lab in g_labels
    )
    top1 = float((out.logits.argmax(1) == labels).double().mean())
    return {
        "ce": float(ce.detach()),
        "sdm": float(sdm.loss.detach()),
        "loss": float(loss.detach()),
        "top1": top1,
        "rows": float(len(q_labels) + len(g_labels)),
        "without": float(without),
        "grad_norm": grad_norm,
        # after the optimiser step: the trained model's classifier
        "head_norm": float(ctx.raw_model.classifier.weight.detach().double().norm()),
        "batch": float(labels.shape[0]),
        "weight": weight,
    }


# ---------------------------------------------------------------------------------------------
# the batch layout, the stems, the trunk


def _sample(i: int, modality: int, n_tokens: int) -> dict[str, Any]:
    text = modality == int(Modality.TEXT)
    return {
        "image": None if text else torch.full((3, 4, 2), float(i)),
        "tokens": torch.arange(1, n_tokens + 1) if text else None,
        "label": i % 3,
        "modality": modality,
        "camera": 0,
        "index": 100 + i,
    }


@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5)), min_size=1, max_size=12))
def test_group_by_modality_slices_each_modality(spec: list[tuple[int, int]]) -> None:
    samples = [_sample(i, m, n) for i, (m, n) in enumerate(spec)]
    out = collate_grouped(samples, text_length=6)
    mods = np.array([m for m, _ in spec])
    counts = out["modality_counts"]
    assert counts == tuple(int((mods == m).sum()) for m in range(len(Modality)))
    assert all(type(c) is int for c in counts)
    start = 0
    for m, n in enumerate(counts):  # each modality's rows: one slice at a host-known offset
        got = out["rows_by_modality"][start : start + n].tolist()
        assert got == np.flatnonzero(mods == m).tolist()
        start += n
    # images grouped by modality (sampler order within one), their rows moved with them
    assert out["image_rows"].tolist() == [
        r for r in out["rows_by_modality"].tolist() if mods[r] != 4
    ]
    for k, r in enumerate(out["image_rows"].tolist()):
        assert (out["images"][k] == r).all()
    assert out["tokens"].shape == (counts[int(Modality.TEXT)], 6)
    plain = collate_multimodal(samples)  # the batch rows themselves do not move
    for key in ("labels", "modalities", "indices", "text_rows"):
        assert torch.equal(out[key], plain[key])


def test_group_by_modality_refuses_long_captions() -> None:
    with pytest.raises(ValueError, match="exceed text_length=2"):
        group_by_modality(collate_multimodal([_sample(0, 4, 3)]), text_length=2)


def _tiny_model(**kw: Any) -> ReIDModel:
    torch.manual_seed(0)
    args = {"num_classes": 5, "vocab_size": 30, "image_size": (16, 8), "text_length": 8}
    return ReIDModel(**args, embed_dim=16, depth=1, num_heads=2, patch_size=4, stem_channels=4,
                     **kw)  # fmt: skip


def test_stems_by_counts_equal_the_grouping_path_and_one_trunk_pass_equals_two() -> None:
    """Images grouped with host counts give each row the feature the model gives it when it
    groups shuffled images itself; a trunk pass over images and captions of the same length
    gives each row its separate pass's feature."""
    model = _tiny_model().eval()
    g = torch.Generator().manual_seed(1)
    mods = torch.tensor([2, 0, 1, 0, 3, 1, 0, 2])
    images = torch.randn(8, 3, 16, 8, generator=g)
    order = torch.sort(mods, stable=True).indices
    counts = tuple(int((mods == m).sum()) for m in range(4))
    with torch.no_grad():
        grouped, _ = model.encode(images[order], None, None, image_counts=counts)
        shuffled, _ = model.encode(images, mods, None)
        torch.testing.assert_close(grouped, shuffled[order], rtol=1e-5, atol=1e-6)
        tokens = torch.randint(1, 30, (3, 8), generator=g)
        tokens[0, 5:] = 0  # padding
        img_tok = model._image_tokens(images[order], counts)
        assert img_tok.shape[1] == tokens.shape[1]  # 4x2 patches, 8 tokens: one pass
        both = model._trunk_features(img_tok, model.text_stem(tokens), tokens != 0)
        img_alone = model._trunk(img_tok, None).float()
        txt_alone = model._trunk(model.text_stem(tokens), tokens != 0).float()
    assert both[0] is not None and both[1] is not None
    torch.testing.assert_close(both[0], img_alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[1], txt_alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="image_counts must give"):
        model.encode(images, None, None, image_counts=(1, 2, 3))
    with pytest.raises(ValueError, match="no image stem for modality TEXT"):
        model.encode(images, torch.tensor([0, 1, 4, 0, 0, 0, 0, 0]), None)


def test_image_counts_drop_text() -> None:
    assert image_counts((3, 1, 0, 2, 5)) == (3, 1, 0, 2)


# ---------------------------------------------------------------------------------------------
# finiteness, weight average, memory


def test_a_non_finite_step_is_skipped_and_stops_the_run_at_the_next_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reid_example.run as run_module

    real_step = run_module.train_step
    before: dict[str, torch.Tensor] = {}
    after: dict[str, torch.Tensor] = {}

    def step(ctx: Any, batch: Any, epoch: int, global_step: int) -> Any:
        if global_step == 3:  # the 4th step: NaN images
            before.update({k: v.clone() for k, v in ctx.raw_model.state_dict().items()})
            batch = {**batch, "images": torch.full_like(batch["images"], math.nan)}
        out = real_step(ctx, batch, epoch, global_step)
        if global_step == 3:
            after.update({k: v.clone() for k, v in ctx.raw_model.named_parameters()})
        return out

    monkeypatch.setattr(run_module, "train_step", step)
    with pytest.raises(NonFiniteStepError, match="training step 4 \\(epoch 1\\) is not finite"):
        run(tmp_path, "nan", "train.log_every=5", "train.epochs=1", "loss.sdm_warmup_epochs=0")
    for name, p in after.items():  # the fused optimiser skipped the update
        assert torch.equal(p, before[name]), name
    steps = tmp_path / "nan" / "steps.jsonl"  # steps 1-4 never logged: the read raised first
    assert not steps.exists() or steps.read_text() == ""
    assert not (tmp_path / "nan" / "last.pt").exists()


def test_update_ema_equals_averaged_model_and_reads_nothing() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    cfg = Config().optim
    cfg.ema_decay = 0.9
    mine, ref = build_ema(cfg, net), build_ema(cfg, net)
    assert mine is not None and ref is not None
    reads = Reads()
    for i in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * (i + 1))
            net(torch.randn(5, 3))  # BN statistics move too
        if i == 2:  # a restored average: its count is read again
            mine.load_state_dict(copy.deepcopy(mine.state_dict()))
        ref.update_parameters(net)
        with reads:
            update_ema(mine, net)
        if i in (1, 3):
            assert sum(reads.count.values()) == 0, reads.count
        reads.count.clear()
    for (k, a), (_, b) in zip(mine.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_memory_ignore_policy_reads_nothing_and_stores_as_given() -> None:
    mem = CrossBatchMemory(2, max_steps=2, on_nonfinite="ignore")
    reads = Reads()
    feats = torch.tensor([[1.0, 2.0], [math.nan, 0.0]])
    with reads:
        for _ in range(3):
            mem.enqueue(feats, torch.tensor([0, 1]), modalities=Modality.RGB)
    assert sum(reads.count.values()) == 0, reads.count
    view = mem.view()
    assert view.features.shape == (4, 2) and torch.isnan(view.features[1, 0])
    with pytest.raises(ValueError, match="NaN or Inf"):
        CrossBatchMemory(2).enqueue(feats, torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------
# data.device_cache

DATA = [*TINY, "train.seed=3"]


def _cfg(*extra: str) -> Config:
    return apply_overrides(Config(), [*DATA, *extra])


@pytest.fixture(scope="module")
def tiny_data() -> Any:
    return build_data(_cfg())


def _loader_and_device(cfg: Config, data: Any, epoch: int) -> tuple[list[Any], list[Any]]:
    loader, window = build_train_loader(cfg, data, torch.device("cpu"))
    data.train.set_epoch(epoch)
    window.configure(epoch, start=0, limit=0)
    from_loader = list(loader)
    cfg_dev = apply_overrides(cfg, ["data.device_cache=true"])
    batches, window2 = build_train_loader(cfg_dev, data, torch.device("cpu"))
    window2.configure(epoch, start=0, limit=0)
    return from_loader, list(batches)


def test_device_batches_equal_the_loader_batches_without_augmentation() -> None:
    cfg = _cfg("data.augment=false")
    data = build_data(cfg)
    loader, device = _loader_and_device(cfg, data, epoch=2)
    assert len(loader) == len(device) > 1
    for a, b in zip(loader, device, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key == "images":
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
            elif key == "modality_counts":
                assert a[key] == b[key]
            else:
                assert torch.equal(a[key], b[key]), key


def test_device_batches_hold_the_loader_identities_and_modalities(tiny_data: Any) -> None:
    cfg = _cfg()
    loader, device = _loader_and_device(cfg, tiny_data, epoch=3)
    for a, b in zip(loader, device, strict=True):
        for key in ("labels", "modalities", "indices", "rows_by_modality", "tokens", "image_rows"):
            assert torch.equal(a[key], b[key]), key
        assert a["images"].shape == b["images"].shape
        assert not torch.equal(a["images"], b["images"])  # another generator


def _cpu_and_device(
    images: torch.Tensor, tf: Any, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loader path (one generator per sample) and the device path (one per batch)."""
    cpu = torch.stack([tf(x, sample_generator(seed, 1, i)) for i, x in enumerate(images)])
    dev = DeviceAugment.from_transform(tf)(images, torch.Generator().manual_seed(seed))
    return cpu, dev


N_AUG = 3000


def _coded_images(n: int, h: int = 8, w: int = 6) -> torch.Tensor:
    """uint8 images whose pixel (r, c) holds 1 + r*w + c in channel 0, a colour in 1 and 2."""
    code = (1 + torch.arange(h * w)).view(1, h, w).to(torch.uint8)
    plain = [torch.full((1, h, w), v, dtype=torch.uint8) for v in (200, 20)]
    img = torch.cat([code, *plain])
    return img.expand(n, 3, h, w).contiguous()


def _undo(x: torch.Tensor) -> torch.Tensor:
    """Normalised float back to the uint8 scale (ImageNet mean/std)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round()


def _binomial_close(a: float, b: float, n: int) -> bool:
    sd = math.sqrt(max(a * (1 - a), 1e-4) / n)
    return abs(a - b) < 6 * sd


def test_device_augmentation_rates_match_the_loader() -> None:
    """Flip rate; then grayscale (0.3) and single channel (0.2, which channel uniform): the
    value of pixel (0, 0) tells them apart (luminance 120, or the code 1, 200 or 20)."""
    images = _coded_images(N_AUG)
    flip = train_transform((8, 6), padding=0, flip_p=0.5, erasing_p=0.0)
    rates = []
    for out in _cpu_and_device(images, flip):
        code = _undo(out)[:, 0]
        rates.append(float((code[:, 0, 0] > code[:, 0, -1]).float().mean()))  # falls when flipped
    assert all(_binomial_close(r, 0.5, N_AUG) for r in rates)
    assert _binomial_close(rates[0], rates[1], N_AUG)
    colour = train_transform(
        (8, 6), padding=0, flip_p=0.0, erasing_p=0.0, grayscale_p=0.3, channel_p=0.2
    )
    expected = {"gray": 0.3, "c0": 0.7 * 0.2 / 3, "c1": 0.7 * 0.2 / 3, "c2": 0.7 * 0.2 / 3}
    found = []
    for out in _cpu_and_device(images, colour):
        px = _undo(out)
        same = (px[:, 0] == px[:, 1]).all(dim=(1, 2)) & (px[:, 1] == px[:, 2]).all(dim=(1, 2))
        first = px[:, 0, 0, 0]
        kinds = {
            "gray": same & (first == 120),  # round(0.299 * 1 + 0.587 * 200 + 0.114 * 20)
            "c0": same & (first == 1),
            "c1": same & (first == 200),
            "c2": same & (first == 20),
        }
        assert int(sum(k.long() for k in kinds.values()).max()) <= 1
        found.append({k: float(v.float().mean()) for k, v in kinds.items()})
    for k, p in expected.items():
        assert _binomial_close(found[0][k], p, N_AUG), (k, found[0][k], p)
        assert _binomial_close(found[1][k], p, N_AUG), (k, found[1][k], p)
        assert _binomial_close(found[0][k], found[1][k], N_AUG), k


def test_device_crop_offsets_match_the_loader() -> None:
    """Pad 2 and crop back: the offset of the first code pixel is uniform on 5 x 5, both ways."""
    tf = train_transform((8, 6), padding=2, flip_p=0.0, erasing_p=0.0)
    images = _coded_images(N_AUG)
    hists = []
    for out in _cpu_and_device(images, tf):
        px = _undo(out)[:, 0]
        hit = px == 1  # code 1 is pixel (0, 0) of the image before padding
        present = hit.flatten(1).any(1)
        rows = hit.any(2).float().argmax(1)
        cols = hit.any(1).float().argmax(1)
        # where pixel (0, 0) lands in the crop is (2 - top, 2 - left) when visible
        top = torch.where(present, 2 - rows, -1)
        left = torch.where(present, 2 - cols, -1)
        visible = (top >= 0) & (left >= 0)
        hist = torch.bincount((top * 5 + left)[visible], minlength=25).float() / N_AUG
        hists.append(hist)
    # pixel (0, 0) is visible iff top <= 2 and left <= 2: 9 of the 25 offsets, each 1/25
    for h in hists:
        assert h.numel() == 25
        seen = h.view(5, 5)[:3, :3].flatten()  # top, left in 0..2
        assert all(_binomial_close(float(v), 1 / 25, N_AUG) for v in seen), h
    assert float((hists[0] - hists[1]).abs().max()) < 0.02


def test_device_erasing_matches_the_loader() -> None:
    """Erasing rate and the erased area's distribution (mean, quartiles) as the loader's."""
    tf = train_transform((32, 16), padding=0, flip_p=0.0, erasing_p=0.5)
    images = torch.full((N_AUG, 3, 32, 16), 128, dtype=torch.uint8)
    areas = []
    for out in _cpu_and_device(images, tf):
        erased = (out == 0).all(dim=1).flatten(1).sum(1).float() / (32 * 16)
        areas.append(erased)
    (a, b) = areas
    assert _binomial_close(float((a > 0).float().mean()), float((b > 0).float().mean()), N_AUG)
    ea, eb = a[a > 0], b[b > 0]
    assert abs(float(ea.mean()) - float(eb.mean())) < 0.02
    for q in (0.25, 0.5, 0.75):
        assert abs(float(ea.quantile(q)) - float(eb.quantile(q))) < 0.03
    for e in (ea, eb):  # scale (0.02, 0.4), the side lengths rounded to pixels
        assert float(e.min()) >= 0.01 and float(e.max()) <= 0.45


def test_device_cache_refuses_a_split_beyond_its_budget(tiny_data: Any) -> None:
    with pytest.raises(ValueError, match=r"more than data\.device_cache_budget_mb=0"):
        DeviceCache.build(tiny_data.train, torch.device("cpu"), text_length=32, budget_mb=0)


def test_device_cache_refuses_a_real_layout_by_name(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    cfg = apply_overrides(
        Config(),
        ["data.dataset=csv", f"data.root={manifest}", "data.image_height=16",
         "data.image_width=8", "data.device_cache=true", "sampler.num_identities=2"],
    )  # fmt: skip
    data = build_data(cfg)
    with pytest.raises(TypeError, match=r"data\.device_cache needs a data set that renders"):
        build_train_loader(cfg, data, torch.device("cpu"))


def test_device_batches_are_seeded_by_epoch_and_position(tiny_data: Any) -> None:
    cfg = _cfg("data.device_cache=true")
    batches, window = build_train_loader(cfg, tiny_data, torch.device("cpu"))
    assert isinstance(batches, DeviceBatches)
    window.configure(2, start=0, limit=0)
    full = list(batches)
    window.configure(2, start=2, limit=0)  # a resumed epoch: from its third batch
    resumed = list(batches)
    for a, b in zip(full[2:], resumed, strict=True):
        assert torch.equal(a["images"], b["images"])


@pytest.mark.slow
def test_device_cache_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    common = (
        "data.device_cache=true",
        "train.epochs=2",
        "eval.every=2",
        "eval.test_at_end=false",
        "output.plots=false",
        "train.max_steps_per_epoch=4",
    )
    full = run(tmp_path, "full", *common)
    part = run(tmp_path, "part", *common, "train.stop_after_steps=3")
    resumed = train.main(
        ["--resume", str(Path(part["run_dir"]) / "last.pt"), "--set", "train.stop_after_steps=0"]
    )
    assert resumed["global_step"] == full["global_step"] == 8
    a = torch.load(Path(full["run_dir"]) / "last.pt", weights_only=True)
    b = torch.load(Path(resumed["run_dir"]) / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    def rows(name: str) -> list[dict[str, Any]]:
        drop = "images_per_second"
        return [{k: v for k, v in r.items() if k != drop} for r in _steps(tmp_path, name)]

    assert rows("full") == rows("part")  # the resumed run continued the part run's rows


# ---------------------------------------------------------------------------------------------
# data.decoded_cache


def test_decoded_cache_skips_decoding_after_the_first_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reid_example.data.records as records

    manifest = write_manifest(tmp_path)
    cache_dir = tmp_path / "cache"
    overrides = ["data.dataset=csv", f"data.root={manifest}", "data.image_height=16",
                 "data.image_width=8", f"data.decoded_cache={cache_dir}"]  # fmt: skip
    decodes: list[str] = []
    real = records.load_image

    def counting(path: Any) -> torch.Tensor:
        decodes.append(str(path))
        return real(path)

    monkeypatch.setattr(records, "load_image", counting)
    data = build_data(apply_overrides(Config(), overrides))
    train_ds = data.train
    first = [train_ds._decode(i) for i in range(len(train_ds))]
    assert len(decodes) == len(train_ds)
    for x, r in zip(first, train_ds.records, strict=True):
        assert torch.equal(x, real(str(r.path)))  # bit for bit
    decodes.clear()
    second = [train_ds._decode(i) for i in range(len(train_ds))]  # the next epoch
    assert decodes == []
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    again = build_data(apply_overrides(Config(), overrides))  # a later run on the same files
    [again.train._decode(i) for i in range(len(again.train))]
    [again.train_eval._decode(i) for i in range(len(again.train_eval))]  # shares the cache
    assert decodes == []
    # a changed file gives the split another cache: decoded again
    changed = Path(train_ds.records[0].path)
    changed.write_bytes(changed.read_bytes())
    import os

    os.utime(changed, ns=(1, 1))
    third = build_data(apply_overrides(Config(), overrides))
    third.train._decode(0)
    assert decodes == [str(changed)]


def test_decoded_cache_is_filled_by_loader_workers(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    cache_dir = tmp_path / "cache"
    run(
        tmp_path / "runs",
        "decoded",
        "data.dataset=csv",
        f"data.root={manifest}",
        f"data.decoded_cache={cache_dir}",
        "data.num_workers=2",
        "train.epochs=1",
        "eval.every=1",
        "eval.test_at_end=false",
        "output.plots=false",
        "sampler.num_identities=2",
        "sampler.num_instances=4",
    )
    caches = [DecodedImageCache.open(cache_dir, [r.path for r in ds.records]) for ds in
              _csv_splits(manifest, cache_dir)]  # fmt: skip
    train_cache = caches[0]
    # the epoch's 3 batches of 2 x 4 (written by the loader's worker processes), and the
    # training identity evaluated with them
    assert 24 <= train_cache.filled <= len(train_cache) == 28
    assert caches[1].filled == len(caches[1])  # validation, evaluated once


def _csv_splits(manifest: Path, cache_dir: Path) -> list[Any]:
    cfg = apply_overrides(
        Config(), ["data.dataset=csv", f"data.root={manifest}", f"data.decoded_cache={cache_dir}"]
    )
    data = build_data(cfg)
    return [data.train, data.val, data.test]


# ---------------------------------------------------------------------------------------------
# train.compile


def test_compile_falls_back_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import reid_example.runtime as runtime

    cfg = _cfg("train.compile=true", "train.compile_mode=reduce-overhead")
    monkeypatch.setattr(runtime, "_compile_problem", lambda device: None)
    with caplog.at_level(logging.WARNING, logger="reid_example"):
        assert runtime.resolve_compile_mode(cfg, torch.device("cpu")) == "default"
    assert "reduce-overhead needs CUDA" in caplog.text
    monkeypatch.setattr(runtime, "_compile_problem", lambda device: "no C++ compiler")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reid_example"):
        assert runtime.resolve_compile_mode(cfg, torch.device("cpu")) is None
    assert "torch.compile cannot run here (no C++ compiler): training eagerly" in caplog.text


@pytest.mark.slow
def test_compiled_run_trains_and_matches_the_eager_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first step's numbers match an eager run's; compiled graphs stop multiplying once
    the batch sizes have become dynamic (not one graph per batch composition)."""
    import reid_example.run as run_module
    import torch._dynamo
    from torch._dynamo.utils import counters

    common = ("train.epochs=1", "loss.sdm_warmup_epochs=0")
    run(tmp_path, "eager", *common, "train.stop_after_steps=3")
    torch._dynamo.reset()
    counters.clear()
    graphs: list[int] = []
    real_step = run_module.train_step

    def step(ctx: Any, batch: Any, epoch: int, global_step: int) -> Any:
        out = real_step(ctx, batch, epoch, global_step)
        graphs.append(int(counters["stats"]["unique_graphs"]))
        return out

    monkeypatch.setattr(run_module, "train_step", step)
    compiled = run(tmp_path, "compiled", *common, "train.stop_after_steps=10", "train.compile=true")
    log = (Path(compiled["run_dir"]) / "train.log").read_text()
    assert "training eagerly" not in log
    a, b = _steps(tmp_path, "eager"), _steps(tmp_path, "compiled")
    for key in ("ce", "sdm", "loss", "grad_norm"):
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-3), key
    assert all(math.isfinite(r["loss"]) for r in b)
    # first batch static, then dynamic sizes; a new case (no captions, one caption) may add a
    # graph, a new batch composition does not
    assert graphs[0] > 0 and graphs[-1] - graphs[2] <= 6, graphs


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
def test_gpu_steps_read_the_device_once_per_logging_step(tmp_path: Path) -> None:
    """On CUDA every read of a CUDA tensor is counted over the whole loop, duties included."""
    import reid_example.run as run_module

    class CudaReads(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.per_step: Counter[int] = Counter()
            self.step = 0

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            kwargs = kwargs or {}
            on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
            name = str(func)
            copy_out = name in ("aten._to_copy.default", "aten.copy_.default") and (
                str(kwargs.get("device", "")) == "cpu"
                or (name == "aten.copy_.default" and not args[0].is_cuda)
            )
            if on_cuda and (name in READ_OPS or copy_out):
                self.per_step[self.step] += 1
            return func(*args, **kwargs)

    counter = CudaReads()
    real_step = run_module.train_step

    def step(ctx: Any, batch: Any, epoch: int, global_step: int) -> Any:
        counter.step = global_step + 1
        return real_step(ctx, batch, epoch, global_step)

    run_module.train_step = step
    try:
        with counter:
            run(tmp_path, "cuda", "train.device=cuda", "train.log_every=4", "train.epochs=1",
                "train.stop_after_steps=8", "loss.sdm_warmup_epochs=0",
                "data.device_cache=true")  # fmt: skip
    finally:
        run_module.train_step = real_step
    for n in range(2, 8):  # (the stop step writes a checkpoint)
        assert counter.per_step[n] == (1 if n % 4 == 0 else 0), (n, counter.per_step)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_gpu_device_cache_and_compile_train(tmp_path: Path, mode: str) -> None:
    summary = run(tmp_path, f"gpu-{mode}", "train.device=cuda", "data.device_cache=true",
                  "train.compile=true", f"train.compile_mode={mode}", "train.epochs=2",
                  "eval.every=2", "output.plots=false", "loss.sdm_warmup_epochs=1")  # fmt: skip
    assert not summary["stopped"]
    rows = _steps(tmp_path, f"gpu-{mode}")
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert all(math.isfinite(m["mAP"]) for m in summary["test"].values())
