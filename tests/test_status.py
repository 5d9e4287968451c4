"""`ablations.status`: the trial states, `claim` (the one decision to skip, wait for or run a trial), the one
failure record every engine writes, each result read once per sweep before `claim`'s locked re-check; a finished
result of other settings never replaced silently, no precision recorded that did not run, only trials of one set of
settings compared, and a full disk at the end said in one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ablations import status as status_module
from ablations import trial as trial_module
from ablations.plan import make_plan
from ablations.report import report
from ablations.report.__main__ import main as report_command
from ablations.run import build_parser, main, request_of, summarize
from ablations.engines.base import Progress
from ablations.engines.local import run_local, worker_slots
from ablations.engines.ray import TrialResources
from ablations.status import TrialState, TrialStatus, claim, record_failure
from ablations.store import RESULT_FILE, SUPERSEDED_DIR, folder_lock, read_result
from ablations.suite import RunOptions, Trial
from ablations.trial import run_trial
from tests import fakes
from tests.fakes import METRICS
from tests.helpers import sweep
from tests.test_engines import fake_trials, finish
from tests.helpers import SMALL, finished, notebook_trials, sweep_args

TRAINED = {"metrics": {**METRICS, "test/acc": 0.7}, "history": []}


# ------------------------------------------------------------------------------------------- trial status
def test_a_trial_status_names_its_trial_state_and_reason():
    status = TrialStatus("pixel/seed=0", TrialState.FAILED, "boom")
    assert (status.trial, status.state, status.error) == ("pixel/seed=0", "failed", "boom")
    assert f"{status.state}" == str(status.state) == "failed" and json.dumps(status.state) == '"failed"'
    assert not TrialStatus("a", TrialState.BUSY).final and TrialStatus("a", TrialState.SKIPPED).final


def test_claim_is_the_one_decision_skip_busy_or_run(tmp_path):
    finished, held, free = fake_trials(3)
    options = RunOptions(logdir=str(tmp_path))
    finish(finished, tmp_path)
    with claim(finished, options) as state:
        assert state is TrialState.SKIPPED
    with folder_lock(held.paths(tmp_path).folder):  # another sweep runs it
        with claim(held, options) as state:
            assert state is TrialState.BUSY
    with claim(free, options) as state:
        assert state is TrialState.RUN
        with folder_lock(free.paths(tmp_path).folder) as locked:
            assert not locked  # the lock is held while the block runs
    with claim(finished, RunOptions(logdir=str(tmp_path), force=True)) as state:
        assert state is TrialState.RUN


def test_force_keeps_the_result_of_other_settings(tmp_path, monkeypatch):
    [old] = notebook_trials(only=["pixel"], epochs=1)
    [new] = notebook_trials(only=["pixel"], epochs=2)
    saved = finished(old, tmp_path).read_text()
    trained = {"metrics": {**METRICS, "test/acc": 0.7}, "history": []}
    monkeypatch.setattr(trial_module, "_train_and_test", lambda trial, options, paths: trained)
    status = trial_module.run_trial(new, RunOptions(logdir=str(tmp_path), force=True))
    assert status.state == "done"
    folder = new.paths(tmp_path).folder
    assert read_result(folder)["settings_hash"] == new.settings_hash
    kept = folder / SUPERSEDED_DIR / old.settings_hash
    assert (kept / RESULT_FILE).read_text() == saved and (kept / "events.out.tfevents.1.host").exists()


# ------------------------------------------------------------------------------------------ failure records
class _Lost(Exception):
    """A stand-in for Ray's WorkerCrashedError."""


def _stub_ray() -> Any:
    """Just what `_RaySweep` touches: a remote function, the exception types and a ``get`` whose worker died."""

    def get(ref: Any) -> Any:
        raise _Lost("the worker died")

    exceptions = types.SimpleNamespace(
        WorkerCrashedError=_Lost, NodeDiedError=_Lost, OutOfMemoryError=_Lost, RayError=Exception
    )
    return types.SimpleNamespace(
        remote=lambda f: types.SimpleNamespace(options=lambda **kw: None), exceptions=exceptions, get=get
    )


def _error_fields(trial: Trial, logdir: Path) -> set[str]:
    return set(json.loads(trial.paths(logdir).error.read_text()))


def test_every_engine_writes_the_same_error_json_fields(tmp_path, monkeypatch):
    """A trial that raised (run_trial, as local and Ray workers run it), a local worker that died, a Ray worker lost
    for good: each error.json holds the trial's record, error, traceback and signal, plus only
    what that path knows besides (the environment of a trial that started, Ray's engine and attempts)."""
    from ablations.engines.ray import _RaySweep

    trial = fake_trials(2)[1]  # seed 1: the one `fakes.die_on_seed_1` kills
    base = set(trial.record()) | {"error", "traceback", "signal"}
    fields = {}

    def boom(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("ablations.trial._train_and_test", boom)
    assert run_trial(trial, RunOptions(logdir=str(tmp_path / "trial"))).state == "failed"
    fields["trial"] = _error_fields(trial, tmp_path / "trial")

    options = RunOptions(logdir=str(tmp_path / "worker"))
    statuses = run_local(
        [trial], options, fakes.die_on_seed_1, Progress([trial], show=False), worker_slots(1, gpus=0, cpus=1)
    )
    assert statuses[0].state is TrialState.FAILED and "SIGKILL" in str(statuses[0].error)
    fields["worker"] = _error_fields(trial, tmp_path / "worker")

    sweep = _RaySweep(_stub_ray(), [trial], RunOptions(logdir=str(tmp_path / "ray")), TrialResources(), 0)
    sweep.attempts[0] = 1
    sweep._collect(object(), 0, False)
    sweep.progress.close()
    assert sweep.progress.statuses[0].state is TrialState.FAILED
    fields["ray"] = _error_fields(trial, tmp_path / "ray")

    assert fields == {
        "trial": base | {"environment"},
        "worker": base,
        "ray": base | {"engine", "attempts"},
    }


def test_a_failure_is_not_recorded_over_a_result_or_while_another_process_holds_the_trial(tmp_path):
    finished, held = fake_trials(2)
    finish(finished, tmp_path)
    assert record_failure(finished, tmp_path, "late").state is TrialState.FAILED
    assert not finished.paths(tmp_path).error.exists()
    with folder_lock(held.paths(tmp_path).folder):
        record_failure(held, tmp_path, "elsewhere")
    assert not held.paths(tmp_path).error.exists()


# ------------------------------------------------------------------------------- results read once per sweep
def test_a_sweep_reads_each_result_once_before_training_then_claim_rereads_it(cifar_dir, tmp_path, monkeypatch, capsys):
    """Every check before training (other settings, finished?) shares one read and checksum of each result.json;
    the one more read is `claim`'s, under the trial's lock, for a trial that runs."""
    reads: Counter = Counter()

    def counted(folder: Path) -> Any:
        if (Path(folder) / RESULT_FILE).exists():
            reads[Path(folder).relative_to(tmp_path).parts[0] + "/" + Path(folder).name] += 1
        return read_result(folder)

    monkeypatch.setattr(status_module, "read_result", counted)
    monkeypatch.setattr(trial_module, "_train_and_test", lambda trial, options, paths: TRAINED)
    for logdir, seeds in (("a", (0,)), ("b", (0, 1))):
        for trial in notebook_trials(only=["pixel"], seeds=seeds):
            finished(trial, tmp_path / logdir)
    args = ["--data-dir", str(cifar_dir), "--only", "pixel", "--seeds", "0,1", *SMALL]
    assert sweep(capsys, *args, "--logdir", str(tmp_path / "a"))[0] == 0
    assert sweep(capsys, *args, "--logdir", str(tmp_path / "b"), "--force")[0] == 0
    # a: seed 0 finished, read once and skipped; seed 1 had no result. b: both rerun, read up front and under the lock
    assert reads == {"a/seed=0": 1, "b/seed=0": 2, "b/seed=1": 2}


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
