"""The adversarial cases of docs/reliability.md ("Trust under attack"), one test (or more) per numbered case.

Results are written by hand (`tests.helpers.finished`) and training is replaced by a stand-in wherever it adds
nothing to what is tested, so these run in seconds.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ablations import api, store
from ablations import trial as trial_module
from ablations.report import report
from ablations.report.__main__ import main as report_command
from ablations.status import TrialState, is_finished
from ablations.store import RESULT_FILE, UnsafePath, folder_lock, read_result, write_result
from ablations.suite import RunOptions
from tests.fakes import METRICS
from tests.helpers import REPO, alive, sweep
from tests.helpers import finished, notebook_trials

TRAINED = {"metrics": {**METRICS, "test/acc": 0.7}, "history": []}


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run_trial` trains nothing: its result is `TRAINED`."""
    monkeypatch.setattr(trial_module, "_train_and_test", lambda trial, options, paths: TRAINED)


# ---------------------------------------------------------------------------- 1. a trial is counted once
def test_1_a_copied_trial_folder_is_a_problem_not_another_seed(tmp_path):
    for t in notebook_trials(only=["pixel"], seeds=(0, 1)):
        finished(t, tmp_path, 0.5 + t.seed / 10)
    suite_dir = tmp_path / "notebook"
    shutil.copytree(suite_dir / "pixel/seed=0", suite_dir / "pixel/seed=0.bak")  # cp -a: a backup
    shutil.copytree(suite_dir / "pixel/seed=0", suite_dir / "pixel/seed=7")
    results, problems = report.load_results(suite_dir)
    assert sorted(r["seed"] for r in results) == [0, 1]
    assert len(problems) == 2 and all("holds a copy of the result of pixel/seed=0" in p for p in problems)
    assert report.build_report(suite_dir).rows[0].seeds == 2
    assert sorted(api.load_results(tmp_path).seed) == [0, 1]
    assert len(store.list_trials(suite_dir).results) == 2


# ---------------------------------------------------- 2. --force keeps the result, whatever the settings
def test_2_force_with_unchanged_settings_keeps_the_old_result_in_superseded(tmp_path, stand_in):
    [t] = notebook_trials(only=["pixel"])
    saved = finished(t, tmp_path).read_text()
    assert trial_module.run_trial(t, RunOptions(logdir=str(tmp_path), force=True)).state is TrialState.DONE
    kept = t.paths(tmp_path).superseded / t.settings_hash
    assert (kept / RESULT_FILE).read_text() == saved and (kept / "events.out.tfevents.1.host").exists()
    assert read_result(t.paths(tmp_path).folder)["metrics"]["test/acc"] == 0.7
    trial_module.run_trial(t, RunOptions(logdir=str(tmp_path), force=True))  # forced again: both copies kept
    assert sorted(p.name for p in t.paths(tmp_path).superseded.iterdir()) == [t.settings_hash, f"{t.settings_hash}.2"]


# --------------------------------------------- 3. other settings are refused under the trial's lock too
def test_3_a_concurrent_sweep_with_other_settings_gets_the_refusal_not_a_replacement(tmp_path, stand_in):
    """The up-front check of the sweep with --epochs 2 saw an empty folder; meanwhile a sweep with --epochs 1
    finished the trial. Under the trial's lock the second sweep finds that result and refuses."""
    [old] = notebook_trials(only=["pixel"], epochs=1)
    [new] = notebook_trials(only=["pixel"], epochs=2)
    saved = finished(old, tmp_path).read_text()
    status = trial_module.run_trial(new, RunOptions(logdir=str(tmp_path)))
    assert status.state is TrialState.FAILED and "pixel/seed=0 (epochs 1 there, 2 here)" in str(status.error)
    assert old.paths(tmp_path).result.read_text() == saved
    assert not old.paths(tmp_path).superseded.exists() and not old.paths(tmp_path).error.exists()


# --------------------------------------------------------------------- 4. no symlink is ever followed
def test_4_a_symlinked_trial_folder_is_refused_and_its_target_untouched(tmp_path, stand_in):
    [t] = notebook_trials(only=["pixel"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    (elsewhere / "events.out.tfevents.9.host").write_text("not the harness's either")
    folder = t.paths(tmp_path / "logs").folder
    folder.parent.mkdir(parents=True)
    folder.symlink_to(elsewhere)
    status = trial_module.run_trial(t, RunOptions(logdir=str(tmp_path / "logs")))
    assert status.state is TrialState.FAILED and "is a symlink" in str(status.error)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["events.out.tfevents.9.host", "precious.txt"]
    _, problems = report.load_results(tmp_path / "logs" / "notebook")
    assert problems == ["pixel/seed=0 is a symlink: not followed, not counted"]


def test_4_a_symlinked_lock_is_refused_and_its_target_not_truncated(tmp_path):
    target = tmp_path / "important.txt"
    target.write_text("do not truncate")
    folder = tmp_path / "trial"
    folder.mkdir()
    (folder / ".lock").symlink_to(target)
    with pytest.raises(UnsafePath, match="is a symlink"):
        with folder_lock(folder):
            pass
    assert target.read_text() == "do not truncate"


def test_4_a_symlinked_suite_folder_is_refused_before_anything_runs(cifar_dir, tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "notebook").symlink_to(tmp_path / "real")
    args = ["--data-dir", str(cifar_dir), "--logdir", str(tmp_path / "logs"), "--only", "pixel", "--seeds", "0"]
    status, _, err = sweep(capsys, *args)
    assert status == 2 and "notebook is a symlink" in err and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "real").iterdir()) == []


def test_4_a_lock_file_is_opened_without_truncation(tmp_path):
    with folder_lock(tmp_path):
        pass
    (tmp_path / ".lock").write_text("123 somewhere\n")
    with folder_lock(tmp_path) as locked:  # the holder rewrites it once it holds the lock, never before
        assert locked and (tmp_path / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"


# -------------------------------------------------------- 7. tamper evidence that cannot be removed silently
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seed", "0", "field 'seed' must be an integer >= 0"),
        ("metrics", {"test/acc": "high"}, "field 'metrics' must be a mapping of numbers"),
        ("settings_hash", None, "field 'settings_hash' must be a text"),
        ("history", "none", "field 'history' must be a list of mappings"),
    ],
)
def test_7_a_checksummed_result_with_a_broken_schema_is_one_line_not_a_crash(tmp_path, field, value, message):
    [t] = notebook_trials(only=["pixel"])
    path = finished(t, tmp_path)
    broken = {k: v for k, v in json.loads(path.read_text()).items() if k != "checksum"}
    write_result(path, {**broken, field: value})  # a valid checksum over a broken result
    with pytest.raises(ValueError, match=f"{path} {message}"):
        read_result(path.parent)
    assert not is_finished(t, tmp_path, warn=False)
    results, problems = report.load_results(tmp_path / "notebook")
    assert results == [] and message in problems[0] and "\n" not in problems[0]


def test_7_a_result_that_lost_its_checksum_is_not_counted(tmp_path):
    [t] = notebook_trials(only=["pixel"])
    path = finished(t, tmp_path)
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "checksum"}))
    assert not is_finished(t, tmp_path, warn=False)
    assert "has no field 'checksum'" in report.load_results(tmp_path / "notebook")[1][0]


# ------------------------------------------------------- 8. a retrain keeps the user's files and the damage
def test_8_a_retrain_keeps_the_users_files_and_the_damaged_result(tmp_path, stand_in):
    [t] = notebook_trials(only=["pixel"])
    folder = t.paths(tmp_path).folder
    folder.mkdir(parents=True)
    (folder / RESULT_FILE).write_text('{"metrics": {"test/a')  # damaged
    (folder / "notes.md").write_text("my notes")
    (folder / "events.out.tfevents.1.host").write_text("the last run's events")
    assert trial_module.run_trial(t, RunOptions(logdir=str(tmp_path))).state is TrialState.DONE
    assert (folder / "notes.md").read_text() == "my notes"
    assert (folder / "result.json.damaged").read_text() == '{"metrics": {"test/a'
    assert not (folder / "events.out.tfevents.1.host").exists()
    assert read_result(folder)["metrics"]["test/acc"] == 0.7


# ------------------------------------------------------------------------------- 9. a full disk up front
def test_9_a_full_disk_is_found_by_the_write_probe_before_anything_runs(cifar_dir, tmp_path, monkeypatch, capsys):
    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    logdir = tmp_path / "logs"
    status, _, err = sweep(capsys, "--data-dir", str(cifar_dir), "--logdir", str(logdir), "--only", "pixel")
    assert status == 2 and f"--logdir {logdir} is not writable: the disk is full" in err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


FULL_DISK_IN_A_THREAD = """
import errno, threading
from ablations.status import quiet_full_disk_in_threads
quiet_full_disk_in_threads()
def write_events():
    raise OSError(errno.ENOSPC, "No space left on device")
writer = threading.Thread(target=write_events)
writer.start()
writer.join()
print("done")
"""


def test_9_a_full_disk_in_a_trial_is_one_line_without_thread_tracebacks_or_empty_files(tmp_path, monkeypatch):
    done = subprocess.run([sys.executable, "-c", FULL_DISK_IN_A_THREAD], cwd=REPO, capture_output=True, text=True)
    assert done.stdout == "done\n" and done.stderr == ""  # TensorBoard's writer thread: no traceback

    def fill_the_disk(trial: Any, options: RunOptions, paths: Any) -> dict:
        (paths.folder / "events.out.tfevents.1.host").touch()  # what a full disk leaves: 0 bytes
        (paths.folder / "hparams.yaml").touch()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trial_module, "_train_and_test", fill_the_disk)
    [t] = notebook_trials(only=["pixel"])
    status = trial_module.run_trial(t, RunOptions(logdir=str(tmp_path)))
    assert status.state is TrialState.FAILED and "No space left on device" in str(status.error)
    assert sorted(p.name for p in t.paths(tmp_path).folder.iterdir()) == [".lock", "error.json"]


# --------------------------------------------------------- 10. a stopped lock holder, a read-only logdir
HOLD = (
    "import sys, time\nfrom ablations.store import folder_lock\n"
    "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"
)


def test_10_a_lock_held_by_a_stopped_process_is_named_with_its_pid_and_host(tmp_path, monkeypatch, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        os.kill(holder.pid, signal.SIGSTOP)
        monkeypatch.setattr(store, "LOCK_NOTE_S", 0.3)
        threading.Timer(1.5, holder.kill).start()  # then its holder dies and the lock is free
        with folder_lock(tmp_path, wait=True) as locked:
            assert locked
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"its lock is held by pid {holder.pid} on host {socket.gethostname()} (stopped)" in err


def test_10_a_read_only_logdir_still_shows_its_report(tmp_path, monkeypatch, capsys):
    for t in notebook_trials(only=["pixel", "baseline"], seeds=(0, 1)):
        finished(t, tmp_path, 0.4 + t.seed / 10 + t.order / 10)
    suite_dir = tmp_path / "notebook"
    real_access = os.access

    def read_only(path: Any, mode: int, **kwargs: Any) -> bool:
        return False if mode & os.W_OK and Path(path) == suite_dir else real_access(path, mode, **kwargs)

    def no_lock(folder: Path, wait: bool = False) -> Any:
        raise OSError(errno.EROFS, "Read-only file system", str(folder / ".lock"))

    monkeypatch.setattr(os, "access", read_only)
    monkeypatch.setattr(report, "folder_lock", no_lock)
    assert report_command([str(suite_dir)]) == 0
    out, err = capsys.readouterr()
    assert "| pixel | 2 |" in out and "is not writable: the table is shown" in err and "free some space" not in err
    assert not (suite_dir / "results.md").exists()


# ------------------------------------------------------------------------------------- 11. input checks
@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "4294967296"], "--seeds: 4294967296 must be a non-empty list of distinct integers from 0 to"),
        (["--split-seed", "99999999999999999999"], "--split-seed: 99999999999999999999 must be <= 4294967295"),
        (["--epoch", "2"], "unrecognized arguments: --epoch 2"),
        (["--seed", "3"], "unrecognized arguments: --seed 3"),
        (["--min-seeds", "4"], "--min-seeds applies only with --until-answered or --target-ci"),
        (["--data-dir", "/nonexistent/data"], "--data-dir /nonexistent/data is not an existing folder"),
        (["--model", "no.such.Net"], "model class_path 'no.such.Net': cannot import 'no' (it is not installed)"),
    ],
)
def test_11_bad_input_is_refused_before_torch_in_one_line_creating_nothing(args, message, tmp_path):
    logdir = tmp_path / "new" / "logs"
    code = (
        "import sys\nfrom ablations.run import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as stop:\n"
        "    print('torch' in sys.modules, stop.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--logdir", str(logdir), *args], cwd=REPO, capture_output=True, text=True
    )
    assert done.stdout == "False 2\n" and message in done.stderr and len(done.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- 12. without data
def test_12_without_data_the_message_says_what_to_do(tmp_path, monkeypatch, capsys):
    from lit_cifar import data

    def offline(self: Any) -> None:
        raise RuntimeError(f"CIFAR-10 not found in {tmp_path / 'empty'} and the download failed")

    monkeypatch.setattr(data.CIFAR10DataModule, "prepare_data", offline)
    (tmp_path / "empty").mkdir()
    args = ["--data-dir", str(tmp_path / "empty"), "--logdir", str(tmp_path / "logs"), "--only", "pixel"]
    status, _, err = sweep(capsys, *args, "--seeds", "0")
    assert status == 2 and "download failed. Give --data-dir FOLDER (or set LIT_CIFAR_DATA)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "logs").exists()


# ------------------------------------------------------------------ 13. no traceback from a stopped worker
SIGNAL_IN_A_CALLBACK = """
import os, signal, weakref
from ablations.signals import Interrupted, raise_if_interrupted, stop_on_sigterm
stop_on_sigterm()
class Model:
    pass
def collected(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # the handler runs here, inside the callback
        pass
model = Model()
ref = weakref.ref(model, collected)
del model
try:
    raise_if_interrupted()
except Interrupted as stop:
    print(stop)
"""


def test_13_sigterm_inside_a_weakref_callback_stops_the_worker_without_a_traceback():
    done = subprocess.run([sys.executable, "-c", SIGNAL_IN_A_CALLBACK], cwd=REPO, capture_output=True, text=True)
    assert done.stdout == "interrupted by SIGTERM\n" and done.stderr == ""


# ---------------------------------------------------------------------------------- 5. a local Ray cluster
LOCAL_RAY = """
import os, time
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
from ablations.engines.ray import _joined, descendants
with _joined(ray, None):
    token = get_authentication_mode() == AuthenticationMode.TOKEN
    print(token, *(pid for pid, _ in descendants(os.getpid())), flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_5_a_local_ray_requires_its_token_and_dies_with_a_killed_driver():
    pytest.importorskip("ray")
    driver = subprocess.Popen([sys.executable, "-c", LOCAL_RAY], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None
    token, *pids = driver.stdout.readline().split()
    driver.kill()  # kill -9: no cleanup of its own
    driver.wait()
    assert token == "True" and len(pids) >= 3  # GCS, raylet, agents
    deadline = time.monotonic() + 10  # Ray's own agents outlive a killed driver by a minute or two
    while any(alive(int(pid)) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if alive(int(pid))]
        time.sleep(0.2)
