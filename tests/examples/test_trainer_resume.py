"""Exact resume and checkpoint refusal of the reference trainer (CPU, a tiny run).

* A resumed run ends with the uninterrupted run's checkpoint, every tensor bit for bit — with
  trunk dropout and the weight average on, whatever step the first leg stopped at, and from the
  epoch-end ``last.pt`` that a killed process leaves behind.
* Nothing the trainer does draws from the global torch generator behind the run's back (the
  loaders have their own), and every generator the run owns round-trips through a checkpoint.
* A checkpoint that cannot be resumed (empty, not a checkpoint, an unknown format version, an
  epoch outside the run, keys missing, a pickle that would run code) is refused before anything
  is written, with a ``ValueError`` that names the file.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import train
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reid_example.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint

from tests.examples.test_trainer import run

STEPS_PER_EPOCH = 3
EPOCHS = 2
TOTAL = STEPS_PER_EPOCH * EPOCHS

# Dropout and the weight average on; evaluation every epoch (it runs between the legs when a
# leg stops at an epoch's last step); SDM from epoch 2 with the memory.
COMMON = (
    f"train.epochs={EPOCHS}",
    f"train.max_steps_per_epoch={STEPS_PER_EPOCH}",
    "eval.every=1",
    "eval.train_ids=0",
    "eval.test_at_end=false",
    "output.plots=false",
    "model.dropout=0.1",
    "optim.ema_decay=0.9",
)


def differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Where two checkpoint trees differ: tensors bit for bit (dtype included), NaN == NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            yield f"{path}: keys {sorted(a)} != {sorted(b)}"
            return
        for k in a:
            yield from differences(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            yield f"{path}: length {len(a)} != {len(b)}"
            return
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            yield from differences(u, v, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            yield f"{path} (tensor)"
    elif isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return
    elif type(a) is not type(b) or a != b:
        yield f"{path}: {a!r} != {b!r}"


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    """The final checkpoints are equal in everything but the config (the resumed one names its
    checkpoint), and so are the metric rows (timings aside)."""
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    a.pop("config"), b.pop("config")
    diff = list(differences(a, b))
    tensors = sum(d.endswith("(tensor)") for d in diff)
    assert not diff, f"{len(diff)} entries differ ({tensors} tensors): {diff[:8]}"
    timing = ("images_per_second", "seconds")
    for name in ("steps.jsonl", "epochs.jsonl"):
        rows = [
            [
                {k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (d / name).read_text().splitlines()
            ]
            for d in (a_dir, b_dir)
        ]
        assert rows[0] == rows[1], name


def resume(path: Path, *extra: str) -> dict[str, Any]:
    argv = ["--resume", str(path), "--set", "train.stop_after_steps=0"]
    for item in extra:
        argv += ["--set", item]
    return train.main(argv)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    summary = run(tmp_path_factory.mktemp("full"), "full", *COMMON)
    assert summary["global_step"] == TOTAL and not summary["stopped"]
    return Path(summary["run_dir"])


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.pt`` of a run stopped mid-epoch 1 (read-only: tests copy it)."""
    summary = run(
        tmp_path_factory.mktemp("stopped"), "stopped", *COMMON, "train.stop_after_steps=2"
    )
    assert summary["stopped"] and summary["global_step"] == 2
    return Path(summary["run_dir"]) / "last.pt"


# -- exact resume ---------------------------------------------------------------------------------


def test_resume_with_dropout_and_ema_is_bit_identical(
    uninterrupted: Path, stopped: Path, tmp_path: Path
) -> None:
    shutil.copytree(stopped.parent, tmp_path / "run")
    resumed = resume(tmp_path / "run" / "last.pt")
    assert resumed["global_step"] == TOTAL
    assert_same_run(uninterrupted, tmp_path / "run")


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(stop=STEPS_PER_EPOCH)  # an epoch's last step: its validation runs after the resume
@given(stop=st.integers(min_value=1, max_value=TOTAL - 1))
def test_resume_after_a_stop_at_any_step_gives_the_uninterrupted_run(
    uninterrupted: Path, tmp_path_factory: pytest.TempPathFactory, stop: int
) -> None:
    part = run(
        tmp_path_factory.mktemp(f"stop{stop}"), "part", *COMMON, f"train.stop_after_steps={stop}"
    )
    assert part["stopped"] and part["global_step"] == stop
    resume(Path(part["run_dir"]) / "last.pt")
    assert_same_run(uninterrupted, Path(part["run_dir"]))


class Killed(BaseException):
    """Stands for a SIGKILL: the process ends inside a step, no handler, no checkpoint."""


def test_resume_after_a_kill_from_the_epoch_end_checkpoint(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed inside a step of epoch 2 leaves epoch 1's atomic ``last.pt`` and the metric
    rows flushed up to the kill; resuming from that ``last.pt`` gives the uninterrupted run."""
    import reid_example.run as run_module

    real_step = run_module.train_step
    kill_at = STEPS_PER_EPOCH + 2  # inside the second step of epoch 2

    def step_or_die(ctx: Any, batch: Any, epoch: int, global_step: int) -> Any:
        if global_step + 1 == kill_at:
            raise Killed
        return real_step(ctx, batch, epoch, global_step)

    monkeypatch.setattr(run_module, "train_step", step_or_die)
    with pytest.raises(Killed):
        run(tmp_path, "killed", *COMMON)
    monkeypatch.setattr(run_module, "train_step", real_step)
    run_dir = tmp_path / "killed"
    left = load_checkpoint(run_dir / "last.pt")
    assert (left["epoch"], left["step_in_epoch"], left["global_step"]) == (2, 0, STEPS_PER_EPOCH)
    logged = [json.loads(x)["step"] for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert logged == list(range(1, kill_at))  # rows past the checkpoint, dropped on resume
    resumed = resume(run_dir / "last.pt")
    assert resumed["global_step"] == TOTAL
    assert_same_run(uninterrupted, run_dir)


def test_train_loader_and_evaluation_never_draw_from_the_global_generator() -> None:
    from reid_example.builders import build_data, build_train_loader
    from reid_example.config import Config, apply_overrides
    from reid_example.evaluate import extract_features
    from reid_example.model import build_model
    from reid_example.runtime import resolve_amp

    cfg = apply_overrides(
        Config(),
        ["data.identities_per_split=4,2,2", "data.num_workers=0", "sampler.num_identities=2"],
    )
    data = build_data(cfg)
    cpu = torch.device("cpu")
    loader, window = build_train_loader(cfg, data, cpu)
    model = build_model(
        cfg.model,
        num_classes=data.num_classes,
        vocab_size=data.vocab_size,
        image_size=data.image_size,
        text_length=cfg.data.text_length,
    )
    amp = resolve_amp("off", cpu)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for epoch in (1, 2):
        window.configure(epoch, start=0, limit=0)
        assert sum(1 for _ in loader) > 0
    extract_features(model, data.val, collate=data.collate, batch_size=16, device=cpu, amp=amp)
    assert torch.equal(torch.get_rng_state(), before)


def test_every_generator_the_run_owns_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    np_rng = np.random.default_rng(5)
    torch.manual_seed(5)
    random.seed(5)
    save_checkpoint({"rng": capture_rng(np_rng)}, tmp_path / "rng.pt")

    def draws() -> tuple[Any, ...]:
        return (torch.rand(3).tolist(), np_rng.random(3).tolist(), random.random())

    first = draws()
    restore_rng(load_checkpoint(tmp_path / "rng.pt")["rng"], np_rng)
    assert draws() == first


# -- checkpoints that cannot be resumed ----------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def refused(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Resume from ``path`` through the command line: exit status 2 and the error message; the
    directory is left as it was."""
    before = snapshot(path.parent)
    with pytest.raises(SystemExit) as exc:
        train.main(["--resume", str(path)])
    assert exc.value.code == 2
    assert snapshot(path.parent) == before
    return capsys.readouterr().err


def tampered(stopped: Path, tmp_path: Path, **changes: Any) -> Path:
    """A copy of the stopped run's directory; its ``last.pt`` has ``changes`` (None: removed)."""
    run_dir = tmp_path / "run"
    shutil.copytree(stopped.parent, run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    save_checkpoint(state, run_dir / "last.pt")
    return run_dir / "last.pt"


def test_an_empty_checkpoint_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*empty"):
        load_checkpoint(path)
    assert str(path) in refused(path, capsys)


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_a_file_that_is_not_a_checkpoint_is_refused_naming_the_file(
    stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "last.pt"
    if content == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 4)
    else:  # what an interrupted copy leaves
        data = stopped.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*not a readable checkpoint"):
        load_checkpoint(path)
    assert str(path) in refused(path, capsys)


class _RunsCode:
    def __reduce__(self) -> Any:
        return (Path.touch, (Path(_RunsCode.marker),))

    marker = ""


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    _RunsCode.marker = str(marker)
    path = tmp_path / "last.pt"
    torch.save({"version": 2, "payload": _RunsCode()}, path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*nothing in the file was run"):
        load_checkpoint(path)
    err = refused(path, capsys)
    assert str(path) in err and "add_safe_globals" not in err
    assert not marker.exists()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"version": None}, r"no format version"),
        ({"version": 99}, r"format version 99.*reads version"),
        ({"version": "2"}, r"format version '2'"),
        ({"config": None}, r"missing.*'config'"),
        ({"config": None, "model": None}, r"missing.*'config', 'model'"),
        ({"epoch": 999}, r"epoch 999.*train.epochs=2"),
        ({"epoch": 0}, r"epoch 0"),
        ({"epoch": 3, "step_in_epoch": 1}, r"epoch 3"),
        ({"epoch": True}, r"epoch.*integer"),
        ({"step_in_epoch": -1}, r"step_in_epoch -1"),
        ({"global_step": 1}, r"global_step 1"),
        ({"config": [1, 2]}, r"config.*table"),
        ({"config": {"train": {"epochz": 3}}}, r"config.*epochz"),
    ],
    ids=lambda v: ",".join(f"{k}={v[k]!r}" for k in v) if isinstance(v, dict) else "",
)
def test_a_crafted_checkpoint_is_refused_naming_the_file(
    stopped: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    match: str,
) -> None:
    path = tampered(stopped, tmp_path, **changes)
    err = refused(path, capsys)
    assert str(path) in err
    assert re.search(match, err), err


def _misfit_model(state: dict[str, Any]) -> dict[str, Any]:
    model = dict(state["model"])
    model[next(iter(model))] = torch.zeros(1)
    return {"model": model}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_misfit_model, r"model"),
        (lambda state: {"step_in_epoch": 99, "global_step": 99}, r"step_in_epoch 99.*3 steps"),
    ],
    ids=["weights-of-another-shape", "position-past-the-epoch"],
)
def test_a_checkpoint_that_does_not_fit_the_run_is_refused_naming_the_file(
    stopped: Path, tmp_path: Path, change: Any, match: str
) -> None:
    """Checked once the run is built: refused before it continues, so the checkpoint and the
    metric rows stay as they were."""
    path = tampered(stopped, tmp_path, **change(load_checkpoint(stopped)))
    steps = (path.parent / "steps.jsonl").read_bytes()
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*{match}"):
        train.main(["--resume", str(path)])
    assert load_checkpoint(path)["global_step"] == change(load_checkpoint(stopped)).get(
        "global_step", 2
    )
    assert (path.parent / "steps.jsonl").read_bytes() == steps


def test_a_finished_run_resumes_into_more_epochs(stopped: Path, tmp_path: Path) -> None:
    """``last.pt`` of a finished run points at the epoch after the last: resuming it with more
    ``train.epochs`` continues; without, it is accepted and trains nothing more."""
    shutil.copytree(stopped.parent, tmp_path / "run")
    path = tmp_path / "run" / "last.pt"
    resume(path)
    assert load_checkpoint(path)["epoch"] == EPOCHS + 1
    again = resume(path)
    assert again["global_step"] == TOTAL
    more = resume(path, f"train.epochs={EPOCHS + 1}")
    assert more["global_step"] == TOTAL + STEPS_PER_EPOCH
    epochs = [
        json.loads(x)["epoch"] for x in (path.parent / "epochs.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3]


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_resume_restores_every_ranks_generators(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2`` (gloo): each rank draws its own dropout masks, so the
    checkpoint holds both ranks' generators and a resumed run ends where the uninterrupted
    one does."""
    import os
    import subprocess
    import sys

    from tests.examples.test_trainer import TINY

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "examples")}

    def torchrun(*args: str) -> None:
        cmd = [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
            str(root / "examples" / "train.py"),
            *args,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    sets: list[str] = []
    for item in (*TINY, *COMMON, "dist.backend=gloo", f"output.root={tmp_path}"):
        sets += ["--set", item]
    torchrun(*sets, "--set", "output.name=full")
    torchrun(*sets, "--set", "output.name=part", "--set", "train.stop_after_steps=2")
    assert len(load_checkpoint(tmp_path / "part" / "last.pt")["rng"]) == 2
    torchrun("--resume", str(tmp_path / "part" / "last.pt"), "--set", "train.stop_after_steps=0")
    full, resumed = (load_checkpoint(tmp_path / n / "last.pt") for n in ("full", "part"))
    for key in ("model", "ema", "optimizer", "rng"):
        diff = list(differences(full[key], resumed[key], key))
        assert not diff, diff[:8]
