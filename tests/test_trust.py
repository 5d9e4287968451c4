"""`ablations.status`: a finished result of other settings is never replaced silently, no result records a precision
that did not run, only trials of one set of settings are compared, and a full disk at the end is said in one line.

Results are written by hand (`finished`) wherever training adds nothing to what is tested; trials that do train use
the tiny synthetic CIFAR-10 of `tests.conftest`.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ablations.report import report
from ablations.report.__main__ import main as report_command
from ablations.plan import make_plan
from ablations.run import build_parser, main, request_of, summarize
from ablations.status import TrialState, TrialStatus
from ablations.store import RESULT_FILE, write_result
from ablations.suite import Trial, expand_trials, load_suite

REPO = Path(__file__).resolve().parents[1]
TINY = ["--val-size", "100", "--batch-size", "64", "--limit-train", "64"]
TINY_SETTINGS = {"val_size": 100, "batch_size": 64, "limit_train": 64}


# ------------------------------------------------------------------------------------------------ helpers
def notebook_trials(*, only: list[str], seeds: tuple[int, ...] = (0,), **settings: Any) -> list[Trial]:
    suite = load_suite("notebook")
    return expand_trials(suite, replace(suite.settings, seeds=seeds, **{**TINY_SETTINGS, **settings}), only=only)


def finished(trial: Trial, logdir: Path, test_acc: float = 0.5, events: bool = True) -> Path:
    """Write a finished result.json (as `ablations.trial` does, with its checksum) and an event file."""
    paths = trial.paths(logdir)
    paths.folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "train/acc": test_acc + 0.1,
        "val/acc": test_acc,
        "test/acc": test_acc,
        "train/loss": 1.0,
        "val/loss": 1.0,
        "test/loss": 1.0,
    }
    write_result(
        paths.result,
        {
            **trial.record(),
            "metrics": metrics,
            "history": [{"epoch": 0, "val/acc": test_acc}],
            "wall_time_s": 1.0,
            "train_images": 64,
            "val_images": 100,
            "test_images": 200,
            "environment": {"cpu_threads": 1},
        },
    )
    if events:
        (paths.folder / "events.out.tfevents.1.host").write_bytes(b"events")
    return paths.result


def sweep_args(cifar_dir: Path, logdir: Path, *args: str) -> list[str]:
    return ["--data-dir", str(cifar_dir), "--logdir", str(logdir), *TINY, *args]


def python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------- 1. a changed setting never deletes a finished result
def test_a_run_with_other_settings_refuses_up_front(cifar_dir, tmp_path, capsys):
    [old] = notebook_trials(only=["pixel"], epochs=1)
    saved = finished(old, tmp_path).read_text()
    with pytest.raises(SystemExit) as stop:
        main(sweep_args(cifar_dir, tmp_path, "--only", "pixel", "--seeds", "0", "--epochs", "2"))
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "pixel/seed=0 (epochs 1 there, 2 here)" in err and "--force" in err and "another --logdir" in err
    assert "usage:" not in err and len(err.strip().splitlines()) == 1
    assert old.paths(tmp_path).result.read_text() == saved  # nothing trained, nothing deleted
    assert sorted(p.name for p in old.paths(tmp_path).folder.iterdir()) == ["events.out.tfevents.1.host", RESULT_FILE]


def test_the_report_compares_only_trials_of_one_set_of_settings(tmp_path, capsys):
    for t in notebook_trials(only=["pixel", "pixel+dropout=0.25"], seeds=(0, 1), epochs=1):
        finished(t, tmp_path, 0.4 + 0.01 * t.seed, events=False)
    for t in notebook_trials(only=["pixel"], seeds=(0, 1, 2), epochs=2):  # replaced pixel, as --force would
        shutil.rmtree(t.paths(tmp_path).folder, ignore_errors=True)
        finished(t, tmp_path, 0.6 + 0.01 * t.seed, events=False)
    table = report.write_report(tmp_path / "notebook")
    err = capsys.readouterr().err
    text = (tmp_path / "notebook" / "results.md").read_text()
    assert "pixel+dropout=0.25" not in table and "| pixel | 3 |" in table  # the larger set, never both
    assert "excluded 2 trial(s) trained with other settings" in err and "excluded 2 trial(s)" in text
    assert len({r["settings"]["epochs"] for r in report.build_report(tmp_path / "notebook").results}) == 1
    chosen = report.build_report(
        tmp_path / "notebook",
        settings=report.settings_key(notebook_trials(only=["pixel"], epochs=1)[0].hashed_settings()),
    )
    assert [r["spec"] for r in chosen.results] == ["pixel+dropout=0.25"] * 2
    assert "excluded 3 trial(s) trained with other settings, epochs=2 (the table's: 1)" in chosen.problems[0]


# --------------------------------------------------------------------------------- 2. results that do not lie
def test_16_mixed_on_a_cpu_is_refused_before_anything_runs(cifar_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(
            sweep_args(
                cifar_dir,
                tmp_path,
                "--only",
                "pixel",
                "--seeds",
                "0",
                "--accelerator",
                "cpu",
                "--precision",
                "16-mixed",
            )
        )
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "would run bf16-mixed instead" in err
    assert not (tmp_path / "notebook").exists()


def test_report_of_another_suites_folder_or_an_empty_one_exits_non_zero(tmp_path, capsys):
    for t in notebook_trials(only=["pixel"], seeds=(0, 1)):
        finished(t, tmp_path)
    foreign = tmp_path / "full"
    shutil.copytree(tmp_path / "notebook", foreign)
    for folder, message in [
        (foreign, "belong to suite(s) notebook"),
        (tmp_path / "empty", "holds no finished trial"),
        (tmp_path, "it holds the suite folders full, notebook"),
    ]:
        folder.mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as stop:
            report_command([str(folder)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err, err
        assert not (folder / "results.md").exists()


# ------------------------------------------------------------------ 5. a full disk at the end of a sweep is said
def test_a_full_disk_at_the_end_reports_what_finished_and_failed(cifar_dir, tmp_path, monkeypatch, capsys):
    plan = make_plan(
        request_of(build_parser().parse_args(sweep_args(cifar_dir, tmp_path, "--only", "pixel", "--seeds", "0,1")))
    )
    finished(plan.trials[0], tmp_path)

    def full(path: Path, *args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(report, "write_text_atomic", full)
    statuses = [
        TrialStatus("pixel/seed=0", TrialState.DONE),
        TrialStatus("pixel/seed=1", TrialState.FAILED, "OSError: [Errno 28] No space left"),
    ]
    assert summarize(plan, statuses, 3.0) == 1
    err = capsys.readouterr().err
    assert "1 trained, 0 already done, 1 failed" in err and "FAILED pixel/seed=1" in err
    assert "could not be written: the disk is full" in err and "python -m ablations.report" in err
