"""``python -m ablations.report.rebuild``: a suite written by older code (scalars on the global-step axis,
histograms at epochs 0..E-1, a sample image in every trial, HParams without the spec) comes out in today's layout;
running trials are left alone; bad arguments exit 2. No training: the old event files are written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp

from ablations.report import board, plots
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


def write_old_trial(folder: Path, result: dict, png: bytes) -> None:
    folder.mkdir(parents=True)
    write_result(folder / RESULT_FILE, result)
    fit = [
        (351 * (e + 1), board.scalar_summary({"val/acc": h["val/acc"], "epoch": float(e)}))
        for e, h in enumerate(result["history"])
    ]
    histograms = [
        (
            e,
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
    image = [(0, board.image_summary("data/one_training_image_per_class", png))]
    old_hparams = {"spec_name": result["spec"], "seed": float(result["seed"]), "batchnorm": 1.0}
    session = [(0, hp.hparams_pb(old_hparams, trial_id=str(folder), start_time_secs=1.0))]
    board.write_events(folder, [*fit, *histograms, *image], clock=lambda step: 1000.0 + step)
    board.write_events(
        folder,
        [(352 * EPOCHS, board.scalar_summary({"test/acc": result["metrics"]["test/acc"]})), *session],
        clock=lambda step: 2000.0,
    )


@pytest.fixture
def old_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "logs" / "notebook"
    png = plots.samples_chart(np.full((2, 3, 4, 4), 128, dtype=np.uint8), ["cat", "dog"], "old samples")
    specs = [("pixel", {**FIELDS, "batchnorm": False}), ("pixel+bn", FIELDS)]
    for order, (spec, fields) in enumerate(specs):
        for seed in (0, 1):
            write_old_trial(suite / spec / f"seed={seed}", old_result(spec, seed, fields, order), png)
    board.write_events(suite / "_by_spec" / "pixel", [board.scalar_summary({"test/acc": 0.5})])
    return suite


def accumulate(run_dir: Path) -> EventAccumulator:
    run = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0, "histograms": 0})
    run.Reload()
    return run


def test_an_old_suite_is_rebuilt_in_todays_layout(old_suite: Path, capsys):
    assert main([str(old_suite)]) == 0
    assert "4 trials rebuilt" in capsys.readouterr().out
    trial = old_suite / "pixel+bn" / "seed=1"
    run = accumulate(trial)
    tags = run.Tags()
    assert [e.step for e in run.Scalars("val/acc")] == [1, 2] and [e.step for e in run.Scalars("test/acc")] == [2]
    assert [e.step for e in run.Scalars("accuracy/val")] == [1, 2] and "epoch" not in tags["scalars"]
    result = json.loads((trial / RESULT_FILE).read_text())
    assert run.Scalars(board.GAP)[-1].value == pytest.approx(
        result["metrics"]["train/acc"] - result["metrics"]["val/acc"]
    )
    assert [e.step for e in run.Histograms("weights/backbone.hidden")] == [1, 2]  # were 0, 1
    assert tags["images"] == []
    start = plugin_data_pb2.HParamsPluginData.FromString(
        run.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["spec"].string_value == "pixel+bn" and start.hparams["factor/batchnorm"].bool_value
    assert start.hparams["seeds"].string_value == "0, 1"  # the cell's seeds: one group, both seeds its sessions
    group = plugin_data_pb2.HParamsPluginData.FromString(
        accumulate(old_suite / "pixel+bn" / "seed=0").PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info.group_name
    assert "spec_name" not in start.hparams and start.group_name == group == board.cell_group(result)
    assert group.startswith("02 pixel+bn ")
    assert sorted(p.name.rsplit(".", 1)[-1] for p in trial.glob("*tfevents*")) == ["histograms", "hparams", "trial"]
    samples = accumulate(old_suite / "_samples")
    assert samples.Tags()["images"] == [board.SAMPLES_TAG]  # the old per-trial image, once per suite
    record = accumulate(old_suite / "_hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        record.PluginTagToContent("hparams")["_hparams_/experiment"]
    ).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["test/acc", "val/acc", "test/loss", board.GAP]
    assert not (old_suite / "_by_spec").exists()  # the old spec-mean runs: TensorBoard groups the seeds itself
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
