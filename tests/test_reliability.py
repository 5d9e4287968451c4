"""Reliability end to end: kill -9 and resume, concurrent sweeps, unreadable results, determinism, exact resume from
a checkpoint, bad input refused in one line before torch."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ablations.plan import make_plan
from ablations.run import build_parser, main, request_of
from ablations.store import LOCK_FILE, RESULT_FILE
from ablations.suite import RunOptions, TrainSettings, Trial, load_suite
from ablations.trial import run_trial
from lit_cifar import CIFAR10DataModule, RegularizationSpec, RegularizedClassifier
from tests.helpers import REPO, TINY, numbers, results, wait_until
from tests.synthetic import synthetic_parts, write_binary_layout, write_python_layout, write_synthetic_cifar
from tests.helpers import python


def sweep_command(data_dir: Path, logdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ablations.run", "--data-dir", str(data_dir), "--logdir", str(logdir), *TINY, *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cifar_dir):
    """An uninterrupted 3-trial sweep (dropout, so the RNG matters) to compare the other sweeps with."""
    logdir = tmp_path_factory.mktemp("reference")
    args = ["--only", "pixel+dropout=0.25", "--seeds", "0,1,2"]
    done = subprocess.run(sweep_command(cifar_dir, logdir, *args), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return logdir, args


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(reference, cifar_dir, tmp_path):
    """Determinism on CPU: the same command twice gives the same numbers in result.json, to the last bit."""
    logdir, args = reference
    again = subprocess.run(sweep_command(cifar_dir, tmp_path, *args), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    first, second = results(logdir), results(tmp_path)
    assert sorted(first) == sorted(second) and len(first) == 3
    assert all(numbers(first[k]) == numbers(second[k]) for k in first)
    assert len({json.dumps(r["metrics"]) for r in first.values()}) == 3  # the seeds do differ


@pytest.mark.slow
def test_kill_9_mid_trial_then_rerun_keeps_finished_trials(reference, cifar_dir, tmp_path):
    logdir, args = reference
    command = sweep_command(cifar_dir, tmp_path, *args, "--parallel", "1")
    sweep = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    second = tmp_path / "notebook/pixel+dropout=0.25/seed=1"
    wait_until(lambda: any(second.glob("events.out.tfevents.*")) and results(tmp_path), "trial 2 to start", sweep)
    os.killpg(sweep.pid, signal.SIGKILL)  # most likely while trial 2 trains; the checks hold wherever it lands
    sweep.wait()
    kept = {name: (tmp_path / name / RESULT_FILE).read_text() for name in results(tmp_path)}
    assert "notebook/pixel+dropout=0.25/seed=0" in kept
    assert not list(tmp_path.rglob("*.tmp"))  # the interrupted trial left no partial result

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{3 - len(kept)} trained, {len(kept)} already done" in rerun.stderr
    assert all((tmp_path / name / RESULT_FILE).read_text() == text for name, text in kept.items())  # not retrained
    resumed, uninterrupted = results(tmp_path), results(logdir)
    assert sorted(resumed) == sorted(uninterrupted)
    assert all(numbers(resumed[k]) == numbers(uninterrupted[k]) for k in resumed)

    def table(logdir: Path) -> list[str]:  # results.md without its last column, the wall time
        return [line.rsplit("|", 2)[0] for line in (logdir / "notebook/results.md").read_text().splitlines()]

    assert table(tmp_path) == table(logdir)


def test_a_trial_whose_result_cannot_be_written_fails_cleanly(tmp_path, monkeypatch):
    """Training finished but the disk is full: the trial is failed (not counted), and leaves no file behind."""

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("ablations.trial._train_and_test", lambda *args: {"metrics": {}})
    monkeypatch.setattr(os, "fsync", full_disk)
    trial = Trial("disk", RegularizationSpec.parse("pixel"), 0, TrainSettings(seeds=(0,)), order=0)
    status = run_trial(trial, RunOptions(logdir=str(tmp_path)))
    assert status.state == "failed" and "No space left on device" in str(status.error)
    assert [p.name for p in trial.paths(tmp_path).folder.iterdir()] == [LOCK_FILE]


@pytest.mark.slow
def test_concurrent_sweeps_run_each_trial_once(cifar_dir, tmp_path):
    command = sweep_command(cifar_dir, tmp_path, "--only", "baseline", "pixel", "--seeds", "0,1")
    sweeps = [
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [s.communicate(timeout=300) for s in sweeps]
    assert all(s.returncode == 0 for s in sweeps), [err[-2000:] for _, err in outputs]
    trained = [int(re.search(r"(\d+) trained, \d+ already done", err).group(1)) for _, err in outputs]
    assert sum(trained) == 4  # every trial trained exactly once, by one sweep or the other
    assert len(results(tmp_path)) == 4
    for out, _ in outputs:  # each sweep waited for the other's trials and reports the whole table
        assert "| baseline | 2 |" in out and "| pixel | 2 |" in out
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_unreadable_result_is_reported_and_rerun(reference, cifar_dir, tmp_path, damage):
    logdir, args = reference
    shutil.copytree(logdir, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "notebook/pixel+dropout=0.25/seed=1" / RESULT_FILE
    text = path.read_text()
    path.write_text({"truncate": text[: len(text) // 2], "garbage": "\x00\x01not json", "empty": ""}[damage])
    rerun = subprocess.run(sweep_command(cifar_dir, tmp_path, *args), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"unreadable {path}" in rerun.stderr and "1 trained, 2 already done" in rerun.stderr
    assert numbers(json.loads(path.read_text())) == numbers(results(logdir)["notebook/pixel+dropout=0.25/seed=1"])


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory) -> dict[str, Path]:
    """Data dirs with one problem each."""
    root = tmp_path_factory.mktemp("broken")
    missing = write_synthetic_cifar(root / "missing", layouts=("bin",))
    (missing / "cifar-10-batches-bin/data_batch_3.bin").unlink()
    truncated = write_synthetic_cifar(root / "truncated", layouts=("bin",))
    with open(truncated / "cifar-10-batches-bin/test_batch.bin", "r+b") as f:
        f.truncate(3073 * 10 - 7)
    (root / "a_file").write_text("not a folder")
    return {"missing": missing, "truncated": truncated, "file": root / "a_file", "absent": root / "absent"}


SUITE_FILES = {  # suite files with one problem each, named in BAD_CLI_INPUT as {name}
    "bad_yaml": "name: x\nspecs: [baseline\n",
    "bad_spec_yaml": "name: x\nspecs: [pixle]\n",
    "escaping_yaml": "name: ../../x\nspecs: [baseline]\n",
    "wordy_notebook_yaml": "name: x\nspecs: [{spec: pixel, notebook: high}]\n",
}

BAD_CLI_INPUT = [  # (arguments, what the message must say); every one exits 2 before any trial directory exists
    (["--only", "pixel+bogus"], "unknown token 'bogus'"),
    (["--only", "l2=abc"], "'abc' is not a number"),
    (["--only", "l2=-0.1"], "l2=-0.1 must be a finite number >= 0"),
    (["--only", "dropout=1"], "dropout=1.0 must be in [0, 1)"),
    (["--only", "maxnorm=0"], "max_norm=0.0 must be a finite number > 0"),
    (["--only", "pixel+channel"], "two normalizations"),
    (["--only", "bn+bn"], "repeated token 'bn'"),
    (["--only", "pixel+bn+l2=0.5"], "is not in suite 'notebook'"),
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--suite", "{bad_yaml}"], "malformed YAML in suite file"),
    (["--suite", "{bad_spec_yaml}"], "unknown token 'pixle'"),
    (["--data-dir", "{absent}"], "is not an existing folder"),
    (["--data-dir", "{file}"], "is not an existing folder"),
    (["--data-dir", "{missing}"], "missing CIFAR-10 file"),
    (["--data-dir", "{truncated}"], "truncated or corrupt CIFAR-10 file"),
    (["--logdir", "{file}/logs"], "is not writable"),
    (["--shard", "3/2"], "K must be between 1 and N"),
    (["--shard", "0/2"], "K must be between 1 and N"),
    (["--shard", "x"], "not of the form K/N"),
    (["--parallel", "0"], "--parallel: 0 must be >= 1"),
    (["--parallel", "-2"], "--parallel: -2 must be >= 1"),
    (["--devices", "0"], "--devices: 0 must be >= 1"),
    (["--epochs", "0"], "--epochs: 0 must be >= 1"),
    (["--epochs", "-3"], "--epochs: -3 must be >= 1"),
    (["--batch-size", "0"], "--batch-size: 0 must be >= 1"),
    (["--batch-size", "-64"], "--batch-size: -64 must be >= 1"),
    (["--limit-train", "100000"], "limit_train=100000 is larger than the training split"),
    (["--precision", "8-bit"], "precision='8-bit' is not one of"),
    (["--lr", "inf"], "--lr: inf must be a finite number > 0"),
    (["--lr", "nan"], "--lr: nan must be a finite number > 0"),
    (["--lr-decay", "inf"], "--lr-decay: inf must be a finite number >= 0"),
    (["--val-size", "0"], "--val-size: 0 must be >= 1: every trial reports its accuracy on held-out"),
    (["--val-size", "100000"], "val_size=100000 leaves no training images"),
    (
        ["--accelerator", "nonsense"],
        "--accelerator nonsense --devices 1 --strategy auto: You selected an invalid accelerator name",
    ),
    (["--strategy", "nonsense"], "--strategy: invalid choice: 'nonsense'"),
    (["--num-nodes", "2"], "--num-nodes 2 needs --strategy ddp"),
    (["--suite", "{escaping_yaml}"], "name '../../x' must be one folder name"),
    (["--suite", "{wordy_notebook_yaml}"], "notebook='high' for spec 'pixel' must be a number in [0, 1]"),
    pytest.param(
        ["--accelerator", "gpu"],
        "--accelerator gpu --devices 1 --strategy auto: ",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
    pytest.param(
        ["--devices", "4"],
        "--devices 4: without --strategy it is how many GPUs the trials are spread over",
        marks=pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="this machine has 4 GPUs"),
    ),
]


@pytest.mark.parametrize("args, message", BAD_CLI_INPUT, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_exits_2_with_a_message_and_writes_no_trial(args, message, broken_data, cifar_dir, tmp_path, capsys):
    suites = {}
    for name, text in SUITE_FILES.items():
        suites[name] = tmp_path / f"{name}.yaml"
        suites[name].write_text(text)
    places = {**{k: str(v) for k, v in broken_data.items()}, **{k: str(v) for k, v in suites.items()}}
    args = [a.format(**places) for a in args]
    logdir = tmp_path / "logs"
    defaults = ["--data-dir", str(cifar_dir), "--logdir", str(logdir), "--seeds", "0", "--val-size", "100"]
    with pytest.raises(SystemExit) as exit_:
        main(defaults + args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not [p for p in logdir.rglob("*") if p.is_dir()] if logdir.exists() else True


@pytest.mark.parametrize(
    "make",
    [
        lambda: RegularizationSpec.parse("l1=x"),
        lambda: RegularizationSpec(dropout=1.0),
        lambda: RegularizationSpec(normalize="zca"),
        lambda: RegularizedClassifier("pixel+pixel"),
        lambda: CIFAR10DataModule("x", batch_size=0),
        lambda: CIFAR10DataModule("x", limit_train=-1),
        lambda: CIFAR10DataModule("x", normalize="global"),
        lambda: TrainSettings(epochs=0),
        lambda: TrainSettings(seeds=()),
        lambda: load_suite("nope"),
    ],
    ids=[
        "spec-number",
        "dropout",
        "normalize",
        "module-spec",
        "batch-size",
        "limit-train",
        "dm-normalize",
        "epochs",
        "seeds",
        "suite",
    ],
)
def test_bad_input_from_the_api_is_a_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_data_errors_from_the_api_are_value_errors(broken_data):
    with pytest.raises(ValueError, match="truncated or corrupt CIFAR-10 file .*test_batch.bin"):
        CIFAR10DataModule(str(broken_data["truncated"]), val_size=100).setup()


@pytest.mark.slow
def test_a_finished_trial_leaves_no_model_in_memory(cifar_dir, tmp_path):
    """Long in-process sweeps must not accumulate models: Lightning's reference cycles are collected per trial."""
    import gc

    from ablations.suite import RunOptions, Trial
    from ablations.trial import run_trial

    gc.disable()  # only run_trial's own collection may free the cycles
    try:
        for seed in (0, 1):
            trial = Trial(
                "mem",
                RegularizationSpec.parse("pixel"),
                seed,
                TrainSettings(epochs=1, seeds=(seed,), val_size=100, batch_size=64),
                order=0,
            )
            assert run_trial(trial, RunOptions(data_dir=str(cifar_dir), logdir=str(tmp_path))).state == "done"
            assert not [o for o in gc.get_objects() if isinstance(o, RegularizedClassifier)]
    finally:
        gc.enable()


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
    plan = make_plan(request_of(build_parser().parse_args(["--suite", str(path), "--lr", text])))
    assert plan.trials[0].settings.lr == 0.001


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
