"""A run directory that holds a run is never written into by another run by accident.

Three paths: a new run there is refused (and changes nothing), ``--resume`` continues the run
in it, ``--overwrite`` (``output.overwrite``) deletes the old run's files first and starts over.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import train
from reid_example.checkpoint import load_checkpoint
from reid_example.config import Config, apply_overrides
from reid_example.reporting import RUN_FILES, check_run_directory

from tests.examples.test_trainer import TINY, run

# Two epochs of two steps, each evaluated; no plots (report.md is written)
SHORT = ("train.epochs=2", "train.max_steps_per_epoch=2", "eval.every=1", "output.plots=false")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def epochs_logged(run_dir: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run_dir / "epochs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run (read-only: tests copy it)."""
    summary = run(tmp_path_factory.mktemp("finished"), "r", *SHORT)
    run_dir = Path(summary["run_dir"])
    assert epochs_logged(run_dir) == [1, 2] and (run_dir / "report.md").exists()
    return run_dir


def copy_of(finished: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(finished, tmp_path / "r")
    return tmp_path / "r"


def test_rerunning_a_finished_run_is_refused_and_changes_nothing(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = copy_of(finished, tmp_path)
    before = snapshot(run_dir)
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, "r", "train.epochs=1")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"run directory {run_dir} already holds a run" in err
    assert f"--resume {run_dir / 'last.pt'}" in err and "--overwrite" in err
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("how", ["--overwrite", "output.overwrite=true"])
def test_overwrite_deletes_the_old_run_first(finished: Path, tmp_path: Path, how: str) -> None:
    run_dir = copy_of(finished, tmp_path)
    (run_dir / ".last.pt.x1y2.tmp").write_bytes(b"interrupted write")
    (run_dir / "notes.txt").write_text("not the trainer's")
    argv: list[str] = ["--overwrite"] if how == "--overwrite" else ["--set", how]
    for item in (*TINY, *SHORT, f"output.root={tmp_path}", "output.name=r"):
        argv += ["--set", item]
    # the new run stops after one step: no epoch row, no best.pt, no report of its own
    summary = train.main([*argv, "--set", "train.stop_after_steps=1"])
    assert summary["stopped"]
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["config.toml", "last.pt", "notes.txt", "steps.jsonl", "train.log"]
    assert load_checkpoint(run_dir / "last.pt")["global_step"] == 1
    assert [json.loads(x)["step"] for x in (run_dir / "steps.jsonl").read_text().splitlines()] == [
        1
    ]
    assert "[sdm] epoch=2" not in (run_dir / "train.log").read_text()  # the old run's log is gone


def test_resume_continues_the_run_in_its_directory(finished: Path, tmp_path: Path) -> None:
    run_dir = copy_of(finished, tmp_path)
    train.main(["--resume", str(run_dir / "last.pt"), "--set", "train.epochs=3"])
    assert epochs_logged(run_dir) == [1, 2, 3]
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 4


def test_an_overwritten_run_resumes_without_overwriting_again(tmp_path: Path) -> None:
    """``output.overwrite`` is stored in the run's config but is not resumed with it."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.log").write_text("an older run\n")
    run(tmp_path, "r", *SHORT, "train.stop_after_steps=1", "output.overwrite=true")
    assert "an older run" not in (tmp_path / "r" / "train.log").read_text()
    resumed = train.main(
        ["--resume", str(tmp_path / "r" / "last.pt"), "--set", "train.stop_after_steps=0"]
    )
    assert resumed["global_step"] == 4
    assert epochs_logged(tmp_path / "r") == [1, 2]


def test_resume_and_overwrite_together_are_refused(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        train.main(["--resume", str(finished / "last.pt"), "--overwrite"])
    assert exc.value.code == 2
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.parametrize("name", RUN_FILES)
def test_any_run_file_marks_a_run_directory(tmp_path: Path, name: str) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("a directory with other files is not a run")
    cfg = apply_overrides(Config(), [f"output.root={tmp_path}", "output.name=r"])
    assert check_run_directory(cfg, None) == run_dir
    (run_dir / name).mkdir() if name in ("plots", "tensorboard") else (run_dir / name).touch()
    with pytest.raises(ValueError, match=rf"already holds a run \({name}\)"):
        check_run_directory(cfg, None)
    overwrite = apply_overrides(cfg, ["output.overwrite=true"])
    assert check_run_directory(overwrite, None) == run_dir


def test_overwrite_must_be_a_boolean(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["--set", "output.overwrite=maybe"])
    assert "output.overwrite: expected a boolean" in capsys.readouterr().err
