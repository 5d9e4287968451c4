"""Trust: nothing lost, nothing mixed, nothing misrecorded; errors in a second; exact resume; provenance; stops.

Results are written by hand (`finished`) wherever training adds nothing to what is tested; trials that do train use
the tiny synthetic CIFAR-10 of `tests.conftest`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ablations import trial as trial_module
from ablations.status import TrialState, TrialStatus, is_finished
from ablations.report import report
from ablations.report.__main__ import main as report_command
from ablations.run import build_parser, main, make_plan, summarize
from ablations.store import RESULT_FILE, SUPERSEDED_DIR, read_result, write_result
from ablations.suite import RunOptions, Trial, expand_trials, load_suite
from tests.fakes import METRICS
from tests.synthetic import synthetic_parts, write_binary_layout, write_python_layout

REPO = Path(__file__).resolve().parents[1]
TINY = ["--val-size", "100", "--batch-size", "64", "--limit-train", "64"]
TINY_SETTINGS = {"val_size": 100, "batch_size": 64, "limit_train": 64}


# ------------------------------------------------------------------------------------------------ helpers
def notebook_trials(*, only: list[str], seeds: tuple[int, ...] = (0,), **settings: Any) -> list[Trial]:
    suite = load_suite("notebook")
    return expand_trials(suite, suite.settings.override(seeds=seeds, **{**TINY_SETTINGS, **settings}), only=only)


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


def test_an_edited_result_is_not_counted_and_its_trial_reruns(tmp_path, capsys):
    [t] = notebook_trials(only=["pixel"])
    path = finished(t, tmp_path, 0.5)
    assert is_finished(t, tmp_path)
    edited = json.loads(path.read_text())
    edited["metrics"]["test/acc"] = 0.99
    path.write_text(json.dumps(edited, indent=2, sort_keys=True))
    with pytest.raises(ValueError, match="does not match its checksum"):
        read_result(path.parent)
    assert not is_finished(t, tmp_path)
    assert (
        "does not match its checksum: it was changed after the trial wrote it; rerunning pixel/seed=0"
        in capsys.readouterr().err
    )
    results, problems = report.load_results(tmp_path / "notebook")
    assert results == [] and "does not match its checksum" in problems[0]


def test_a_result_without_a_checksum_is_a_problem_not_a_legacy_pass(tmp_path):
    [t] = notebook_trials(only=["pixel"])
    path = finished(t, tmp_path)
    stripped = json.loads(path.read_text())
    del stripped["checksum"]
    stripped["metrics"]["test/acc"] = 0.99
    path.write_text(json.dumps(stripped))
    with pytest.raises(ValueError, match="has no field 'checksum'"):
        read_result(path.parent)
    assert not is_finished(t, tmp_path, warn=False)
    results, problems = report.load_results(tmp_path / "notebook")
    assert results == [] and "has no field 'checksum'" in problems[0]


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
    plan = make_plan(build_parser().parse_args(sweep_args(cifar_dir, tmp_path, "--only", "pixel", "--seeds", "0,1")))
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


# ------------------------------------------------------------------------------- 8. errors in a second, clearly
NO_TORCH = (
    "import sys\nfrom ablations.run import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as stop:\n"
    "    heavy = sorted(m for m in ('torch', 'lightning') if m in sys.modules)\n"
    "    print('imported', heavy, 'exit', stop.code)\n"
)


@pytest.mark.parametrize(
    "args, exit_code, message",
    [
        (["--help"], 0, "usage: python -m ablations.run"),
        (["--epochs", "x"], 2, "argument --epochs: 'x' is not an integer"),
        (["--lr", "-1"], 2, "argument --lr: -1 must be a finite number > 0"),
        (["--only", "pixle"], 2, "unknown token 'pixle'"),
        (["--suite", "nosuch"], 2, "unknown suite 'nosuch'"),
        (["--bogus"], 2, "unrecognized arguments: --bogus"),
    ],
)
def test_arguments_are_checked_before_torch_is_imported(args, exit_code, message):
    done = python(NO_TORCH, *args)
    assert f"imported [] exit {exit_code}" in done.stdout, done.stdout + done.stderr
    assert message in done.stdout + done.stderr
    if exit_code:
        assert "usage:" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_binary_suite_file_is_named_as_such(tmp_path, capsys):
    binary = tmp_path / "suite.bin"
    binary.write_bytes(b"\x92\x00\xff" * 100)
    with pytest.raises(SystemExit) as stop:
        main(["--suite", str(binary), "--dry-run"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"suite file {binary} is not a YAML text file (byte 0x92 at offset 0" in err


@pytest.mark.parametrize("text", ["1e-3", "0.001", "1.0e-3"])
def test_a_suite_file_accepts_the_numbers_a_flag_accepts(tmp_path, text):
    path = tmp_path / "mine.yaml"
    path.write_text(f"name: mine\nsettings: {{lr: {text}, lr_decay: 1e-6}}\nspecs: [pixel]\n")
    suite = load_suite(str(path))
    assert suite.settings.lr == 0.001 and suite.settings.lr_decay == 1e-6
    assert make_plan(build_parser().parse_args(["--suite", str(path), "--lr", text])).trials[0].settings.lr == 0.001


def test_a_suite_file_still_refuses_what_is_not_a_number(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nsettings: {lr: fast}\nspecs: [pixel]\n")
    with pytest.raises(ValueError, match="lr='fast' must be a finite number > 0"):
        load_suite(str(path))


def test_predict_with_a_file_that_is_not_a_checkpoint_is_one_line(cifar_dir, tmp_path):
    junk = tmp_path / "model.ckpt"
    junk.write_bytes(os.urandom(4096))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_cifar",
            "predict",
            "--ckpt_path",
            str(junk),
            "--data.data_dir",
            str(cifar_dir),
            "--trainer.logger",
            "false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"error: --ckpt_path {junk} is not a checkpoint (not a file torch.save writes): "
        "give a .ckpt file written by Lightning, e.g. "
        "logs/lit_cifar/version_0/checkpoints/*.ckpt"
    )


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_a_label_outside_0_9_fails_the_data_check_naming_the_file(tmp_path, layout):
    from lit_cifar import CIFAR10DataModule
    from lit_cifar.data import DatasetError

    parts = synthetic_parts(per_train_file=20, n_test=20)
    images, labels = parts["data_batch_3"]
    labels = labels.copy()
    labels[7] = 99
    parts["data_batch_3"] = images, labels
    folder = (write_binary_layout if layout == "bin" else write_python_layout)(tmp_path, parts)
    name = "data_batch_3.bin" if layout == "bin" else "data_batch_3"
    dm = CIFAR10DataModule(str(tmp_path), val_size=10, download=False)
    with pytest.raises(DatasetError, match=f"corrupt CIFAR-10 file {folder / name}: record 7 has label 99"):
        dm.verify()


# -------------------------------------------------------------------- 9. resuming from a checkpoint is exact
def small_backbone() -> Any:
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 32), nn.ReLU(), nn.Dropout(0.25), nn.Linear(32, 10))


def fit(cifar_dir: Path, folder: Path, epochs: int, seed: int, ckpt_path: Any = None) -> dict[str, Any]:
    """Train the small network with dropout and augmentation, checkpointing every epoch; its final weights."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_cifar import CIFAR10DataModule, RegularizedClassifier

    pl.seed_everything(seed, verbose=False)
    spec = "pixel+dropout=0.25+augment"
    dm = CIFAR10DataModule.from_spec(
        spec, data_dir=str(cifar_dir), val_size=32, batch_size=16, limit_train=64, download=False
    )
    model = RegularizedClassifier(spec, backbone=small_backbone())
    checkpoints = ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resuming_with_dropout_and_augmentation_equals_the_uninterrupted_run(cifar_dir, tmp_path):
    import torch

    uninterrupted = fit(cifar_dir, tmp_path / "a", epochs=3, seed=0)
    # a fresh start elsewhere: another global seed, so only the checkpoint can make the draws the same
    resumed = fit(cifar_dir, tmp_path / "b", epochs=3, seed=12345, ckpt_path=tmp_path / "a" / "epoch=0.ckpt")
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted), max(
        float((uninterrupted[k].float() - resumed[k].float()).abs().max()) for k in uninterrupted
    )
    checkpoint = torch.load(tmp_path / "a" / "epoch=0.ckpt", weights_only=True)  # still loads safely
    assert {"torch", "numpy", "python"} <= checkpoint["rng_states"].keys()


# ------------------------------------------------------------------------ 10. provenance outside a git checkout
PROVENANCE = "import json; from ablations.store import code_provenance; print(json.dumps(code_provenance()))"


def provenance_of_a_copy(root: Path, change: str = "") -> dict[str, Any]:
    """code_provenance() of a copy of the packages in `root` (no git there), with `change` appended to a module."""
    for package in ("lit_cifar", "ablations"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(root / "ablations" / "stats.py", "a") as f:
        f.write(change)
    done = subprocess.run(
        [sys.executable, "-c", PROVENANCE],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_two_installs_of_one_version_with_different_code_are_told_apart(tmp_path):
    same = provenance_of_a_copy(tmp_path / "a")
    again = provenance_of_a_copy(tmp_path / "b")
    changed = provenance_of_a_copy(tmp_path / "c", change="\n# a local change\n")
    assert same["git_commit"] is None and same["code_version"] == changed["code_version"]
    assert {"code_version", "git_commit", "git_dirty"} <= same.keys()
    assert len(same["source_sha256"]) == 64
    assert same["source_sha256"] == again["source_sha256"] != changed["source_sha256"]


# ------------------------------------------------------------- 6. Ctrl-C on a parallel sweep stops it at once
@pytest.mark.slow
def test_ctrl_c_on_a_parallel_sweep_stops_it_at_once_without_a_traceback(cifar_dir, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it, while two workers train: exit 130 well within
    the grace period the workers get (no worker has to be killed), and no worker prints a traceback."""
    import time

    from ablations.engines.local import STOP_GRACE_S
    from tests.processes import alive, children, wait_until

    command = [
        sys.executable,
        "-m",
        "ablations.run",
        *sweep_args(cifar_dir, tmp_path, "--only", "pixel", "--seeds", "0,1,2", "--epochs", "50", "--parallel", "2"),
    ]
    sweep = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_until(
        lambda: len(list(tmp_path.glob("notebook/pixel/*/events.out.tfevents.*"))) == 2, "two trials to start", sweep
    )
    workers = children(sweep.pid)
    time.sleep(1.0)  # well inside training
    os.killpg(sweep.pid, signal.SIGINT)
    start = time.monotonic()
    _, err = sweep.communicate(timeout=300)
    took = time.monotonic() - start
    assert sweep.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Interrupted" not in err.replace("interrupted by SIGINT", ""), err[-3000:]
    assert "interrupted by SIGINT: 0 of 3 trials finished" in err
    assert took < STOP_GRACE_S / 2, f"{took:.0f} s to stop"
    wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to end")
    assert not list(tmp_path.rglob(RESULT_FILE)) and not list(tmp_path.rglob("*.tmp"))


def test_ctrl_c_stops_workers_at_once_even_if_a_thread_of_theirs_never_ends(tmp_path):
    """Workers whose trial left a non-daemon thread running (a writer, say) still end at once on Ctrl-C: the
    sweep exits 130 well within the workers' grace period, and no worker prints a traceback."""
    import time

    from ablations.engines.local import STOP_GRACE_S
    from tests.processes import alive, wait_until

    sweep = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", str(tmp_path), "2", "block_with_a_busy_thread"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started = lambda: {int(p.read_text()) for p in tmp_path.glob("fake/*/*/started-*") if p.read_text()}  # noqa
    wait_until(lambda: len(started()) == 2, "both workers started a trial", sweep)
    workers = started()
    os.killpg(sweep.pid, signal.SIGINT)
    start = time.monotonic()
    out, err = sweep.communicate(timeout=300)
    took = time.monotonic() - start
    assert sweep.returncode == 130 and "interrupted by SIGINT: finished []" in out, err[-3000:]
    assert took < STOP_GRACE_S / 2, f"{took:.0f} s to stop"
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to end")


# --------------------------------------------------------------------- 3. Ray stops like the local engine
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_stops_a_ray_sweep_like_the_local_engine(cifar_dir, tmp_path, signum):
    """SIGTERM to ``--engine ray --parallel 2`` while two trials train: exit 143, the running tasks are cancelled
    (their locks are free once the sweep has ended), no result is written after the signal, and the finished
    trials (none here) are listed."""
    import time

    from ablations.store import folder_lock
    from tests.processes import wait_until

    command = [
        sys.executable,
        "-m",
        "ablations.run",
        *sweep_args(
            cifar_dir,
            tmp_path,
            "--only",
            "pixel",
            "--seeds",
            "0,1,2",
            "--epochs",
            "40",
            "--engine",
            "ray",
            "--parallel",
            "2",
        ),
    ]
    sweep = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    running = lambda: sorted(p.parent for p in tmp_path.glob("notebook/pixel/*/events.out.tfevents.*"))  # noqa
    wait_until(lambda: len(running()) == 2, "two Ray tasks to train", sweep)
    sweep.send_signal(signum)
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 128 + signum, err[-3000:]
    assert "SystemError" not in err and "Traceback" not in err, err[-3000:]
    name = signal.Signals(signum).name
    assert f"interrupted by {name}: 0 of 3 trials finished" in err, err[-3000:]

    def unlocked(folder: Path) -> bool:
        with folder_lock(folder) as locked:
            return locked

    wait_until(lambda: all(unlocked(folder) for folder in running()), "the cancelled tasks to end")
    time.sleep(5.0)  # a task that went on would write its result now
    assert not list(tmp_path.rglob(RESULT_FILE)) and not list(tmp_path.rglob("*.tmp"))


# --------------------------------------------------------- 4. a node lost mid-trial on a multi-node Ray cluster
@pytest.mark.slow
def test_a_node_lost_mid_trial_is_retried_and_the_sweep_equals_a_local_one(cifar_dir, tmp_path, capfd):
    """A head and a second node (`ray.cluster_utils.Cluster`, one CPU each), two trials, one per node; the second
    node is removed while both train. The sweep finishes, the lost trial is retried (on the head), both results
    equal the local engine's, and the folder of the trial that was not lost is left as it was."""
    import logging
    import threading

    import ray
    import torch
    from ray.cluster_utils import Cluster

    from ablations.engines.ray import run_trials_ray
    from ablations.trial import run_trial
    from tests.processes import wait_until

    trials = notebook_trials(only=["pixel+dropout=0.25"], seeds=(0, 1), epochs=20)
    local, remote = tmp_path / "local", tmp_path / "ray"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task (one CPU)
    try:
        assert all(
            run_trial(t, RunOptions(data_dir=str(cifar_dir), logdir=str(local), accelerator="cpu")).state == "done"
            for t in trials
        )
    finally:
        torch.set_num_threads(threads)

    quick_failure_detection = {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_failure_threshold": 2,
    }
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": quick_failure_detection})
    try:
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        statuses: list = []
        options = RunOptions(data_dir=str(cifar_dir), logdir=str(remote), accelerator="cpu")
        sweep = threading.Thread(
            target=lambda: statuses.extend(
                run_trials_ray(
                    trials, options, address=cluster.address, gpus_per_trial=0, cpus_per_trial=1, max_retries=2
                )
            )
        )
        sweep.start()
        folders = [t.paths(remote).folder for t in trials]
        events = lambda folder: {p.name for p in folder.glob("events.out.tfevents.*")}  # noqa: E731
        wait_until(lambda: all(events(f) for f in folders), "both trials to train, one on each node")
        before = {folder: events(folder) for folder in folders}
        cluster.remove_node(second, allow_graceful=False)
        sweep.join(timeout=600)
        assert not sweep.is_alive(), "the sweep did not finish"
    finally:
        ray.shutdown()
        cluster.shutdown()
    err = capfd.readouterr().err
    assert [s.state for s in statuses] == ["done", "done"], statuses
    assert "Ray worker lost running pixel+dropout=0.25/seed=" in err and "retry 1 of 2" in err, err[-3000:]
    kept = [folder for folder in folders if before[folder] <= events(folder)]
    retried = [folder for folder in folders if not before[folder] & events(folder)]
    assert len(kept) == 1 and len(retried) == 1, (before, {f: events(f) for f in folders})
    for t in trials:
        ours, theirs = read_result(t.paths(remote).folder), read_result(t.paths(local).folder)
        assert (ours["metrics"], ours["history"], ours["settings_hash"]) == (
            theirs["metrics"],
            theirs["history"],
            theirs["settings_hash"],
        )
