"""``python -m ablations.report.rebuild``: a suite whose trials' events hold part of their scalars comes out with
every scalar of its result.json files, its weight histograms kept, and its report; running trials are left alone; bad
arguments exit 2. No training: the event files are written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from ablations.report import board
from ablations.report.rebuild import main
from ablations.store import RESULT_FILE, folder_lock, write_result

EPOCHS = 2
FIELDS = {
    "augment": False,
    "batchnorm": True,
    "dropout": 0.0,
    "l1": 0.0,
    "l2": 0.0,
    "max_norm": None,
    "normalize": "pixel",
}


def old_result(spec: str, seed: int, fields: dict, order: int) -> dict:
    """A result.json as the first full-scale sweep wrote it: no ``*/ce``, no diagnostics."""
    history = [
        {
            "epoch": e,
            "train/acc": 0.5 + 0.1 * e + seed / 100,
            "train/loss": 1.5 - 0.2 * e,
            "val/acc": 0.45 + 0.05 * e + seed / 100,
            "val/loss": 1.6 - 0.1 * e,
            "train/penalty": 0.0,
        }
        for e in range(EPOCHS)
    ]
    settings = {
        "batch_size": 128,
        "data_parallel": 1,
        "epochs": EPOCHS,
        "limit_train": None,
        "lr": 0.001,
        "lr_decay": 1e-06,
        "precision": "32-true",
        "seed": seed,
        "spec": spec,
        "split_seed": 0,
        "val_size": 5000,
    }
    metrics = {
        "test/acc": 0.5 + seed / 100 + order / 10,
        "test/loss": 1.4,
        **{k: v for k, v in history[-1].items() if k != "epoch"},
    }
    return {
        "suite": "notebook",
        "spec": spec,
        "spec_fields": fields,
        "seed": seed,
        "order": order,
        "notebook": 0.7,
        "settings": settings,
        "settings_hash": f"{order}{seed}".ljust(16, "0"),
        "metrics": metrics,
        "history": history,
        "wall_time_s": 60.0,
        "train_images": 45000,
        "val_images": 5000,
        "test_images": 10000,
    }


def write_old_trial(folder: Path, result: dict) -> None:
    folder.mkdir(parents=True)
    write_result(folder / RESULT_FILE, result)
    fit = [(e + 1, board.scalar_summary({"val/acc": h["val/acc"]})) for e, h in enumerate(result["history"])]
    histograms = [
        (
            e + 1,
            summary_pb2.Summary(
                value=[
                    summary_pb2.Summary.Value(
                        tag="weights/backbone.hidden",
                        histo=summary_pb2.HistogramProto(
                            min=-1, max=1, num=4, sum=0, sum_squares=2, bucket_limit=[0, 1], bucket=[2, 2]
                        ),
                    )
                ]
            ),
        )
        for e in range(EPOCHS)
    ]
    board.write_events(folder, [*fit, *histograms], clock=lambda step: 1000.0 + step)


@pytest.fixture
def old_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "logs" / "notebook"
    specs = [("pixel", {**FIELDS, "batchnorm": False}), ("pixel+bn", FIELDS)]
    for order, (spec, fields) in enumerate(specs):
        for seed in (0, 1):
            write_old_trial(suite / spec / f"seed={seed}", old_result(spec, seed, fields, order))
    return suite


def accumulate(run_dir: Path) -> EventAccumulator:
    run = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0, "histograms": 0})
    run.Reload()
    return run


def test_a_suite_is_rebuilt_from_its_results(old_suite: Path, capsys):
    assert main([str(old_suite)]) == 0
    out = capsys.readouterr().out
    assert "4 trials rebuilt" in out and "samples: none" in out
    trial = old_suite / "pixel+bn" / "seed=1"
    run = accumulate(trial)
    tags = run.Tags()
    assert [e.step for e in run.Scalars("val/acc")] == [1, 2] and [e.step for e in run.Scalars("test/acc")] == [2]
    assert [e.step for e in run.Scalars("accuracy/val")] == [1, 2]
    result = json.loads((trial / RESULT_FILE).read_text())
    assert run.Scalars(board.GAP)[-1].value == pytest.approx(
        result["metrics"]["train/acc"] - result["metrics"]["val/acc"]
    )
    assert [e.step for e in run.Histograms("weights/backbone.hidden")] == [1, 2]
    assert tags["images"] == []
    start = plugin_data_pb2.HParamsPluginData.FromString(
        run.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["spec"].string_value == "pixel+bn" and start.hparams["factor/batchnorm"].bool_value
    assert start.hparams["seeds"].string_value == "0, 1"  # the cell's seeds: one group, both seeds its sessions
    group = plugin_data_pb2.HParamsPluginData.FromString(
        accumulate(old_suite / "pixel+bn" / "seed=0").PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info.group_name
    assert start.group_name == group == board.cell_group(result)
    assert group.startswith("02 pixel+bn ")
    assert sorted(p.name.rsplit(".", 1)[-1] for p in trial.glob("*tfevents*")) == ["histograms", "hparams", "trial"]
    record = accumulate(old_suite / "_hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        record.PluginTagToContent("hparams")["_hparams_/experiment"]
    ).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["test/acc", "val/acc", "test/loss", board.GAP]
    assert (old_suite / "curves.png").exists() and (old_suite / "_report").is_dir()


def test_a_running_trial_is_left_alone(old_suite: Path, capsys):
    running = old_suite / "pixel" / "seed=0"
    before = {p.name: p.read_bytes() for p in running.iterdir() if p.name != ".lock"}
    with folder_lock(running) as locked:
        assert locked
        assert main([str(old_suite)]) == 0
    assert {p.name: p.read_bytes() for p in running.iterdir() if p.name != ".lock"} == before
    out = capsys.readouterr().out
    assert "3 trials rebuilt" in out and "pixel/seed=0 (running" in out


@pytest.mark.parametrize("args", [[], ["nowhere"], ["."], ["{suite}", "--data-dir", "nowhere"]])
def test_bad_arguments_exit_2(old_suite: Path, args: list[str], capsys):
    with pytest.raises(SystemExit) as exit_:
        main([a.format(suite=old_suite) for a in args])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err
