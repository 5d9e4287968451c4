"""`ablations.status`: the trial states, `claim` (the one decision to skip, wait for or run a trial), the one
failure record every engine writes, and each result read once per sweep before `claim`'s locked re-check."""

from __future__ import annotations

import json
import types
from collections import Counter
from pathlib import Path
from typing import Any

from ablations import status as status_module
from ablations import trial as trial_module
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
from tests.test_trust import TINY, finished, notebook_trials

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
    args = ["--data-dir", str(cifar_dir), "--only", "pixel", "--seeds", "0,1", *TINY]
    assert sweep(capsys, *args, "--logdir", str(tmp_path / "a"))[0] == 0
    assert sweep(capsys, *args, "--logdir", str(tmp_path / "b"), "--force")[0] == 0
    # a: seed 0 finished, read once and skipped; seed 1 had no result. b: both rerun, read up front and under the lock
    assert reads == {"a/seed=0": 1, "b/seed=0": 2, "b/seed=1": 2}
