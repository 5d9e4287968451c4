"""What TensorBoard shows after a sweep: typed HParams with the varying columns first, per-epoch scalars with the
accuracy curves first, BatchNorm diagnostics, one sample grid per suite, and the report; read back from the event
files and, in one test, from a real `tensorboard` server over its HTTP API."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ablations.run import main
from ablations.store import RESULT_FILE

pytestmark = pytest.mark.slow  # every test reads one small sweep (four trials)

SPECS = ("pixel+bn", "pixel+maxnorm=3")  # the notebook suite's 3rd and 7th specs
EPOCHS = 2


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory, cifar_dir: Path) -> Path:
    """Two specs x two seeds x two epochs of the notebook suite, with its report; what the sweep printed is in
    `printed`."""
    logdir = tmp_path_factory.mktemp("board")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(
            [
                "--data-dir",
                str(cifar_dir),
                "--logdir",
                str(logdir),
                "--only",
                *SPECS,
                "--seeds",
                "0,1",
                "--epochs",
                str(EPOCHS),
                "--val-size",
                "100",
                "--batch-size",
                "64",
            ]
        )
    assert code == 0
    printed(logdir).write_text(out.getvalue())
    return logdir


def printed(logdir: Path) -> Path:
    return logdir.with_name(f"{logdir.name}.out")


def test_the_sweep_prints_how_to_open_its_answer_and_its_trials(logdir: Path):
    from ablations.report import board

    assert board.open_hint(logdir / "notebook") in printed(logdir).read_text()


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(
        str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0, "histograms": 0}
    )
    accumulator.Reload()
    return accumulator


def trial_dir(logdir: Path, spec: str, seed: int = 0) -> Path:
    return logdir / "notebook" / spec / f"seed={seed}"


def _session(run_dir: Path) -> plugin_data_pb2.SessionStartInfo:
    content = events(run_dir).PluginTagToContent("hparams")
    return plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info


def test_a_cell_is_one_session_group_of_typed_values(logdir: Path):
    start = _session(trial_dir(logdir, "pixel+bn", seed=1))
    values = start.hparams
    assert values["factor/batchnorm"].WhichOneof("kind") == "bool_value" and values["factor/batchnorm"].bool_value
    assert values["factor/max_norm"].number_value == 0.0  # off
    assert values["spec"].string_value == "pixel+bn" and values["seeds"].string_value == "0, 1"
    assert not {"seed", "row", "data_dir", "spec_name", "settings/epochs"} & set(values)  # settings: in the text
    groups = {spec: {_session(trial_dir(logdir, spec, seed)).group_name for seed in (0, 1)} for spec in SPECS}
    assert groups["pixel+bn"] == {start.group_name} and start.group_name.startswith("03 pixel+bn ")
    assert len(groups["pixel+maxnorm=3"]) == 1 and groups["pixel+maxnorm=3"] != groups["pixel+bn"]
    assert "trial/settings" in events(trial_dir(logdir, "pixel+bn", seed=1)).Tags()["tensors"]


def test_scalars_are_per_epoch_and_accuracy_comes_first(logdir: Path):
    run = events(trial_dir(logdir, "pixel+maxnorm=3"))
    scalars = run.Tags()["scalars"]
    assert [e.step for e in run.Scalars("val/acc")] == [1, 2] and [e.step for e in run.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in run.Scalars("test/acc")] == [EPOCHS]
    assert [e.value for e in run.Scalars("accuracy/val")] == [e.value for e in run.Scalars("val/acc")]
    assert {"accuracy/train", "accuracy/val", "accuracy/test"} <= set(scalars)
    assert "epoch" not in scalars and "hp_metric" not in scalars
    assert min(tag.split("/")[0] for tag in scalars) == "accuracy"  # Time Series opens the first groups by name
    assert [e.step for e in run.Histograms("weights/backbone.hidden")] == [1, 2]


def test_batchnorm_drift_is_logged_per_epoch_for_batchnorm_specs(logdir: Path):
    bn = events(trial_dir(logdir, "pixel+bn"))
    assert [e.step for e in bn.Scalars("val/bn_mean_gap")] == [1, 2]
    assert all(e.value > 0 for e in bn.Scalars("val/bn_std_ratio"))
    result = json.loads((trial_dir(logdir, "pixel+bn") / RESULT_FILE).read_text())
    assert all("val/bn_mean_gap" in epoch for epoch in result["history"])
    assert "val/bn_mean_gap" not in events(trial_dir(logdir, "pixel+maxnorm=3")).Tags()["scalars"]
    assert "BN: mean gap (running σ)" in (logdir / "notebook" / "results.md").read_text()


def test_one_sample_grid_per_suite(logdir: Path):
    assert events(logdir / "notebook" / "_samples").Tags()["images"] == ["samples/one_training_image_per_class"]
    assert all(not events(trial_dir(logdir, spec, seed)).Tags()["images"] for spec in SPECS for seed in (0, 1))


def test_hparams_yaml_holds_the_real_hyperparameters(logdir: Path):
    saved = yaml.safe_load((trial_dir(logdir, "pixel+bn") / "hparams.yaml").read_text())
    assert saved["spec"]["batchnorm"] is True and saved["spec_name"] == "pixel+bn" and saved["seed"] == 0
    assert saved["epochs"] == EPOCHS and saved["lr"] == 0.001 and saved["suite"] == "notebook"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    return json.loads(raw) if response.headers.get_content_type() == "application/json" else raw


def _serve(logdir: Path) -> tuple[subprocess.Popen, str]:
    """A real tensorboard on 127.0.0.1, once it serves every trial's test/acc."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data"
    deadline = time.monotonic() + 120  # a start-up limit, not a speed assertion
    while True:
        try:
            scalars = _get(f"{base}/plugin/scalars/tags")
            if sum("test/acc" in tags for tags in scalars.values()) == 2 * len(SPECS):  # seeds 0 and 1
                return server, base
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.terminate()
            pytest.fail("tensorboard did not serve the runs")
        time.sleep(0.5)


def _check_experiment(base: str) -> None:
    """The columns in TensorBoard's order: the factors that vary first (it ticks the first five), then spec and
    seeds, typed; then the five headline metrics, each once."""
    experiment = _get(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
    infos = experiment["hparamInfos"]
    names = [info["name"] for info in infos]
    assert names[:3] == ["factor/batchnorm", "factor/max_norm", "spec"]
    assert [info.get("differs", False) for info in infos] == [True] * 3 + [False] * (len(infos) - 3)
    assert [info["displayName"] for info in infos][:2] == ["batchnorm", "max_norm"] and "seeds" in names
    types = {info["name"]: info["type"] for info in infos}
    assert types["factor/max_norm"] == types["factor/l2"] == "DATA_TYPE_FLOAT64"
    assert types["spec"] == types["factor/normalize"] == types["seeds"] == "DATA_TYPE_STRING"
    assert types["factor/batchnorm"] == types["factor/augment"] == "DATA_TYPE_BOOL"
    assert not [n for n in names if n.startswith("settings/")]  # the settings are in the texts
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [
        "test/acc",
        "val/acc",
        "test/loss",
        "test/ce",
        "gap/train_val_acc",
    ]


def _check_sessions(base: str, logdir: Path) -> None:
    """One row per cell, TensorBoard's group of its seeds, its metrics their mean."""
    groups = _get(
        f"{base}/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [
                {"metric": {"tag": "test/acc"}},
                {"metric": {"tag": "gap/train_val_acc"}},
                {"hparam": "spec"},
                {"hparam": "seeds"},
                {"hparam": "factor/batchnorm"},
            ],
            "startIndex": 0,
            "sliceSize": 100,
        },
    )["sessionGroups"]
    assert sorted(g["hparams"]["spec"] for g in groups) == sorted(SPECS)
    for group in groups:
        assert group["hparams"]["seeds"] == "0, 1" and group["name"].split()[1] == group["hparams"]["spec"]
        results = [json.loads((logdir / s["name"] / RESULT_FILE).read_text()) for s in group["sessions"]]
        assert sorted(r["seed"] for r in results) == [0, 1] and {r["spec"] for r in results} == {
            group["hparams"]["spec"]
        }
        assert group["hparams"]["factor/batchnorm"] is results[0]["spec_fields"]["batchnorm"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert values["test/acc"] == pytest.approx(sum(r["metrics"]["test/acc"] for r in results) / 2)
        gap = sum(r["metrics"]["train/acc"] - r["metrics"]["val/acc"] for r in results) / 2
        assert values["gap/train_val_acc"] == pytest.approx(gap, abs=1e-6)


def test_tensorboard_serves_typed_hparams_epoch_scalars_and_images(logdir: Path):
    server, base = _serve(logdir)
    try:
        _check_experiment(base)
        _check_sessions(base, logdir)
        run = "notebook/pixel+bn/seed=0"
        points = _get(f"{base}/plugin/scalars/scalars?" + urlencode({"run": run, "tag": "val/acc"}))
        assert [point[1] for point in points] == [1, 2]  # [wall time, step, value]: the step is the epoch
        images = _get(f"{base}/plugin/images/tags")
        assert list(images["notebook/_samples"]) == ["samples/one_training_image_per_class"]
        assert {"report/test_accuracy", "report/val_accuracy"} <= set(images["notebook/_report"])
        listing = _get(
            f"{base}/plugin/images/images?" + urlencode({"run": "notebook/_report", "tag": "report/test_accuracy"})
        )
        png = _get(f"{base}/plugin/images/individualImage?{listing[0]['query']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        text = _get(f"{base}/plugin/text/text?" + urlencode({"run": "notebook/_report", "tag": "report/results"}))
        assert "95% CI" in text[0]["text"]
        answer = _get(f"{base}/plugin/text/text?" + urlencode({"run": "notebook/_report", "tag": "answer/verdicts"}))
        assert answer[0]["text"].startswith("<")  # rendered: the markdown of the report's verdict columns
        assert (logdir / "notebook" / "results.csv").is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _content(run_dir: Path) -> dict:
    """What TensorBoard shows of a trial's run: scalars (step, value), histogram steps, HParams row, text."""
    run = events(run_dir)
    tags = run.Tags()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        run.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    return {
        "scalars": {tag: [(e.step, e.value) for e in run.Scalars(tag)] for tag in tags["scalars"]},
        "histograms": {tag: [e.step for e in run.Histograms(tag)] for tag in tags["histograms"]},
        "images": tags["images"],
        "hparams": dict(start.hparams),
        "name": start.group_name,
        "text": run.Tensors("trial/settings")[0].tensor_proto.string_val[0],
    }


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_rebuild_writes_what_the_live_trials_wrote_and_a_second_changes_nothing(logdir: Path, tmp_path: Path):
    from ablations.report.rebuild import main as board

    copy = tmp_path / "copy"
    shutil.copytree(logdir, copy)
    trials = sorted(p.parent.relative_to(copy) for p in copy.glob(f"notebook/*/seed=*/{RESULT_FILE}"))
    live = {trial: _content(copy / trial) for trial in trials}
    assert board([str(copy / "notebook")]) == 0
    for trial in trials:
        assert _content(copy / trial) == live[trial]
        assert sorted(p.name.rsplit(".", 1)[-1] for p in (copy / trial).glob("*tfevents*")) == [
            "histograms",
            "hparams",
            "trial",
        ]
    first = _files(copy)
    assert board([str(copy / "notebook")]) == 0
    assert _files(copy) == first
