"""The ablation harness end to end on synthetic data: dry runs, sweeps, resume, failures, shards, DDP, bad args."""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ablations.engines.base import Progress
from ablations.engines.local import bars
from ablations.status import TrialState, TrialStatus
from ablations.plan import make_plan
from ablations.run import build_parser, main, request_of
from ablations.store import ERROR_FILE, RESULT_FILE
from ablations.suite import RunOptions, TrainSettings, Trial
from ablations.trial import run_trial
import lit_cifar
from lit_cifar.runtime import cpu_model
from lit_cifar import RegularizationSpec
from tests.helpers import TINY, TINY_SETTINGS, sweep
from tests.helpers import results as result_files


def moved(args: list[str], **flags: str) -> list[str]:
    """`args` with the values of some flags replaced, e.g. moved(args, logdir=...)."""
    args = list(args)
    for flag, value in flags.items():
        args[args.index(f"--{flag.replace('_', '-')}") + 1] = value
    return args


@pytest.fixture
def swept_copy(swept, tmp_path):
    """A copy of the shared sweep's logdir that a test may change, and the sweep's arguments pointing at it."""
    logdir, args = swept
    shutil.copytree(logdir, tmp_path / "logs")
    return tmp_path / "logs", moved(args, logdir=str(tmp_path / "logs"))


@pytest.mark.parametrize(
    "suite, seeds, expected", [("notebook", "0", 9), ("notebook", "0,1,2", 27), ("full", "0", 96), ("full", "0,1", 192)]
)
def test_dry_run_prints_one_line_per_trial(capsys, suite, seeds, expected):
    status, out, _ = sweep(capsys, "--suite", suite, "--seeds", seeds, "--dry-run")
    lines = out.splitlines()
    assert status == 0
    assert len(lines) == expected == len(set(lines))
    seeds_and_states = [line.rsplit(" seed=", 1)[1].split("  ", 1) for line in lines]
    assert all(seed.isdigit() and state in ("to run", "finished") for seed, state in seeds_and_states)


def test_dry_run_lists_the_notebook_experiments_in_order(capsys):
    _, out, _ = sweep(capsys, "--seeds", "0", "--dry-run")
    assert [line.split()[0] for line in out.splitlines()] == [
        "baseline",
        "pixel",
        "pixel+bn",
        "pixel+l2=0.01",
        "pixel+l1=0.01",
        "pixel+l1=0.01+l2=0.01",
        "pixel+maxnorm=3",
        "pixel+dropout=0.25",
        "pixel+maxnorm=3+dropout=0.5",
    ]


def test_shards_cover_the_suite_exactly_once(capsys):
    _, everything, _ = sweep(capsys, "--suite", "full", "--seeds", "0,1", "--dry-run")
    parts = [
        sweep(capsys, "--suite", "full", "--seeds", "0,1", "--dry-run", "--shard", f"{k}/3")[1].splitlines()
        for k in (1, 2, 3)
    ]
    assert all(parts)
    assert sorted(sum(parts, [])) == sorted(everything.splitlines())


@pytest.fixture(scope="module")
def swept(tmp_path_factory, cifar_dir):
    """One 2-spec x 2-seed sweep with two worker processes, shared by the tests that inspect its output."""
    logdir = tmp_path_factory.mktemp("logs")
    args = [
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(logdir),
        "--only",
        "baseline",
        "pixel+dropout=0.25",
        "--seeds",
        "0,1",
        "--parallel",
        "2",
        *TINY,
    ]
    assert main(args) == 0
    return logdir, args


@pytest.mark.slow
def test_parallel_sweep_writes_results_and_report(swept):
    logdir, _ = swept
    results = result_files(logdir)
    assert sorted(results) == [
        "notebook/baseline/seed=0",
        "notebook/baseline/seed=1",
        "notebook/pixel+dropout=0.25/seed=0",
        "notebook/pixel+dropout=0.25/seed=1",
    ]
    for result in results.values():
        assert set(result["metrics"]) >= {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"}
        assert result["test_images"] == 200 and result["val_images"] == 100
        assert len(result["history"]) == 1 and result["train_images_per_s"] > 0
        assert result["settings"]["epochs"] == 1 and len(result["settings_hash"]) == 16
    for name in ("results.md", "results.csv", "results.png", "curves.png"):
        assert (logdir / "notebook" / name).stat().st_size > 0
    table = (logdir / "notebook" / "results.md").read_text()
    dropout = [r for k, r in results.items() if "dropout" in k]
    mean = sum(r["metrics"]["test/acc"] for r in dropout) / 2
    assert f"| pixel+dropout=0.25 | 2 | {mean:.4f} ± " in table
    assert "| baseline | 2 |" in table and "0.643" in table and "0.702" in table


@pytest.mark.slow
def test_tensorboard_hparams_carry_the_real_test_accuracy(swept):
    logdir, _ = swept
    run = logdir / "notebook" / "pixel+dropout=0.25" / "seed=0"
    result = json.loads((run / RESULT_FILE).read_text())
    events = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["factor/dropout"].number_value == 0.25 and hparams["spec"].string_value == "pixel+dropout=0.25"
    assert hparams["seeds"].string_value == "0, 1"
    record = EventAccumulator(str(logdir / "notebook" / "_hparams"), size_guidance={"tensors": 0})
    record.Reload()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        record.PluginTagToContent("hparams")["_hparams_/experiment"]
    ).experiment
    assert [m.name.tag for m in experiment.metric_infos] == [
        "test/acc",
        "val/acc",
        "test/loss",
        "test/ce",
        "gap/train_val_acc",
    ]
    assert "hp_metric" not in events.Tags()["scalars"]
    assert events.Scalars("test/acc")[-1].value == pytest.approx(result["metrics"]["test/acc"])
    assert len(events.Scalars("val/acc")) == 1 and len(events.Scalars("train/loss")) == 1
    assert events.Tags()["images"] == []  # one grid per suite, in its _samples run
    assert events.Tags()["histograms"] == ["weights/backbone.hidden"]


@pytest.mark.slow
def test_rerun_trains_nothing_and_force_retrains(swept_copy, capsys):
    logdir, args = swept_copy
    before = result_files(logdir)
    status, out, err = sweep(capsys, *args)
    assert status == 0 and "0 trained, 4 already done" in err
    assert result_files(logdir) == before
    status, _, err = sweep(capsys, *args[: -len(TINY) - 4], "--seeds", "0", "--parallel", "1", *TINY, "--force")
    assert status == 0 and "2 trained, 0 already done" in err


@pytest.mark.slow
def test_changed_settings_refuse_then_retrain_with_force_keeping_the_old_result(swept_copy, capsys):
    logdir, args = swept_copy
    changed = [
        *args[: -len(TINY)],
        "--only",
        "baseline",
        "--seeds",
        "0",
        "--epochs",
        "2",
        "--val-size",
        "100",
        "--batch-size",
        "64",
    ]
    old = result_files(logdir)["notebook/baseline/seed=0"]
    status, _, err = sweep(capsys, *changed)
    assert status == 2 and "already finished with other settings" in err and "epochs 1 there, 2 here" in err
    assert result_files(logdir)["notebook/baseline/seed=0"] == old
    status, _, err = sweep(capsys, *changed, "--force")
    assert status == 0 and "1 trained" in err
    assert len(result_files(logdir)["notebook/baseline/seed=0"]["history"]) == 2
    kept = logdir / "notebook/baseline/seed=0/superseded" / old["settings_hash"] / RESULT_FILE
    assert json.loads(kept.read_text()) == old


@pytest.mark.slow
def test_failing_trial_is_isolated_and_reported(tmp_path, cifar_dir, capsys):
    suite = tmp_path / "diverge.yaml"
    suite.write_text("name: diverge\nspecs: [baseline, l1=1e38]\nsettings: {seeds: [0]}\n")
    status, out, err = sweep(
        capsys, "--suite", str(suite), "--data-dir", str(cifar_dir), "--logdir", str(tmp_path / "logs"), *TINY
    )
    assert status == 1
    assert "FAILED l1=1e38/seed=0: NonFiniteLossError" in err
    error = json.loads((tmp_path / "logs/diverge/l1=1e38/seed=0" / ERROR_FILE).read_text())
    assert "train/loss became" in error["error"] and "Traceback" in error["traceback"]
    assert not (tmp_path / "logs/diverge/l1=1e38/seed=0" / RESULT_FILE).exists()
    assert (tmp_path / "logs/diverge/baseline/seed=0" / RESULT_FILE).exists()
    assert "| baseline | 1 |" in out and "failed l1=1e38/seed=0" in (tmp_path / "logs/diverge/results.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--only", "pixel+bn+l2=0.5"], "is not in suite 'notebook'"),
        (["--only", "pixle"], "unknown token 'pixle'"),
        (["--reference", "pixel+bn+l2=0.5"], "is not in suite 'notebook'"),
        (["--shard", "3/2"], "K must be between 1 and N"),
        (["--parallel", "0"], "--parallel: 0 must be >= 1"),
        (["--epochs", "-1"], "--epochs: -1 must be >= 1"),
        (["--seeds", "a,b"], "not a comma-separated list"),
        (["--strategy", "ddp", "--parallel", "2"], "trials run one at a time"),
        (["--margin", "-0.1"], "give a difference of accuracy in [0, 1)"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(capsys, args, message):
    status, _, err = sweep(capsys, *args, "--dry-run")
    assert status == 2
    assert message in err


def test_malformed_suite_yaml_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nspecs: [baseline\n")
    status, _, err = sweep(capsys, "--suite", str(bad), "--dry-run")
    assert status == 2 and f"malformed YAML in suite file {bad}" in err


@pytest.mark.slow
def test_results_record_code_version_and_thread_count(swept):
    logdir, _ = swept
    for result in result_files(logdir).values():
        environment = result["environment"]
        assert environment["code_version"] == lit_cifar.__version__ and "git_commit" in environment
        assert environment["cpu_threads"] == max(1, (os.cpu_count() or 1) // 2)  # --parallel 2: a share each
        assert environment["allocator"] == lit_cifar.tune_allocator()  # what the worker's trial ran with
        assert environment["device"] == cpu_model()  # the CPU named, not just "x86_64"


@pytest.mark.slow
def test_a_finished_sweep_reruns_without_its_data_but_not_with_a_missing_data_dir(
    swept_copy, capsys, tmp_path, monkeypatch
):
    """Without data (none at the default place) the finished trials still count and the report is shown; a
    --data-dir that does not exist is a mistyped path, refused in one line before anything runs."""
    logdir, args = swept_copy
    monkeypatch.setenv("LIT_CIFAR_DATA", str(tmp_path / "nothing"))
    i = args.index("--data-dir")
    status, out, err = sweep(capsys, *args[:i], *args[i + 2 :])
    assert status == 0 and "0 trained, 4 already done" in err and "| baseline | 2 |" in out
    status, _, err = sweep(capsys, *moved(args, data_dir=str(tmp_path / "gone")))
    assert status == 2 and f"--data-dir {tmp_path / 'gone'} is not an existing folder" in err


def test_an_empty_shard_has_nothing_to_do(capsys, tmp_path):
    status, _, err = sweep(capsys, "--only", "baseline", "--seeds", "0", "--shard", "2/3", "--logdir", str(tmp_path))
    assert status == 0 and "nothing to do: part 2/3 of the 1 trials is empty" in err
    assert not list(tmp_path.iterdir())


def test_a_sweep_shows_one_bar_naming_the_running_trials(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert bars(trials=1, parallel=1, rank=0) == (False, True)  # Lightning's per-epoch bar for a single trial
    assert bars(trials=2, parallel=1, rank=0) == bars(trials=2, parallel=2, rank=0) == (True, False)
    assert bars(trials=2, parallel=1, rank=1) == (False, False)
    many = make_plan(request_of(build_parser().parse_args(["--only", "pixel", "--seeds", "0,1", "--parallel", "2"])))
    progress = Progress(many.trials, show=True)
    progress.started(0)
    progress.started(1)
    progress.finished(0, TrialStatus("pixel/seed=0", TrialState.DONE))
    progress.close()
    last = capsys.readouterr().err.rstrip().split("\r")[-1]
    assert "1/2" in last and "running pixel/seed=1" in last and "seed=0" not in last


@pytest.mark.slow
def test_a_trial_does_not_warn_about_what_it_does_on_purpose(cifar_dir, tmp_path):
    """Metrics are logged once per epoch by design: no warning that an epoch has fewer steps than the log interval."""
    trial = Trial(
        "quiet",
        RegularizationSpec.parse("pixel"),
        0,
        TrainSettings(epochs=1, seeds=(0,), val_size=100, batch_size=64),
        order=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_trial(trial, RunOptions(data_dir=str(cifar_dir), logdir=str(tmp_path))).state == "done"
    assert not [w for w in caught if "log_every_n_steps" in str(w.message)]


def test_reference_names_the_suites_spec_in_canonical_form():
    plan = make_plan(
        request_of(build_parser().parse_args(["--reference", "dropout=0.25+pixel", "--accelerator", "cpu"]))
    )
    assert plan.reference == "pixel+dropout=0.25"
    assert make_plan(request_of(build_parser().parse_args(["--accelerator", "cpu"]))).reference is None


def test_the_margin_reaches_the_report_through_the_plan(tmp_path, monkeypatch):
    from ablations import status

    plan = make_plan(request_of(build_parser().parse_args(["--margin", "0.02", "--accelerator", "cpu"])))
    assert plan.request.margin == 0.02
    assert make_plan(request_of(build_parser().parse_args(["--accelerator", "cpu"]))).request.margin is None
    seen = {}
    monkeypatch.setattr("ablations.report.write_report", lambda suite_dir, **kwargs: seen.update(kwargs) or "")
    status.write_report_or_say_why(tmp_path, None, None, plan.request.margin)
    assert seen["margin"] == 0.02


def test_run_suite_plans_from_values_and_raises_only_its_documented_exceptions(tmp_path, cifar_dir, monkeypatch):
    import pandas as pd

    from ablations import trial as trial_module
    from ablations.api import SweepError, TrialsFailed, run_suite

    content = {
        "name": "deep",
        "settings": TINY_SETTINGS,
        "specs": ["baseline"],
        "factors": {"trainer.gradient_clip_val": [0]},
    }
    with pytest.raises(SweepError, match="unknown arguments \\['epoch'\\]"):
        run_suite(content, epoch=1)
    with pytest.raises(SweepError, match="model.init_args.NAME"):
        run_suite({**content, "factors": {"model.width": [1]}}, logdir=str(tmp_path / "logs"))

    def fail(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(trial_module, "_train_and_test", fail)
    with pytest.raises(TrialsFailed, match="boom") as failed:  # every trial failed: no NothingToReport
        run_suite(content, logdir=str(tmp_path / "logs"), data_dir=str(cifar_dir), accelerator="cpu")
    assert isinstance(failed.value.results, pd.DataFrame) and failed.value.results.empty
    assert [s.state for s in failed.value.statuses] == ["failed"]
