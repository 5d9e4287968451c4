"""What the report writes for TensorBoard, without training: one HParams session group per cell with the varying
factors first, written once per report and never by a finishing trial; the verdict table from the report's CSVs;
the URL a sweep prints. Read back with TensorBoard's own `EventAccumulator`."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ablations.report import board, report
from tests.helpers import finished, notebook_trials


def accumulate(run_dir: Path) -> EventAccumulator:
    run = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    run.Reload()
    return run


def hparams(run_dir: Path) -> plugin_data_pb2.HParamsPluginData:
    content = accumulate(run_dir).PluginTagToContent("hparams")
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(data) for tag, data in content.items()}


def sessions(suite_dir: Path) -> dict[str, plugin_data_pb2.SessionStartInfo]:
    """Each trial's session start, by its folder under the suite."""
    return {
        str(folder.relative_to(suite_dir)): hparams(folder)["_hparams_/session_start_info"].session_start_info
        for folder in sorted(suite_dir.glob("*/seed=*"))
    }


def test_the_report_writes_one_session_group_per_cell_once(tmp_path: Path):
    for trial in notebook_trials(only=["pixel", "pixel+bn"], seeds=(0, 1, 2)):
        finished(trial, tmp_path, 0.5 + trial.seed / 100, events=False)
    suite = tmp_path / "notebook"
    report.write_report(suite)
    starts = sessions(suite)
    groups = {name.split("/")[0]: set() for name in starts}
    for name, start in starts.items():
        groups[name.split("/")[0]].add(start.group_name)
        assert start.hparams["seeds"].string_value == "0, 1, 2"  # reads as the seeds, not 0.0000
        assert "seed" not in start.hparams
    assert all(len(names) == 1 for names in groups.values()) and groups["pixel"] != groups["pixel+bn"]
    assert {"02 pixel", "03 pixel+bn"} == {next(iter(g)).rsplit(" ", 1)[0] for g in groups.values()}
    experiment = hparams(suite / board.HPARAMS_RUN)["_hparams_/experiment"].experiment
    shown = sorted(experiment.hparam_infos, key=lambda i: (not i.differs, i.name))  # TensorBoard's order
    assert [info.name for info in shown][:2] == ["factor/batchnorm", "spec"]  # the varying factor first
    assert [info.differs for info in shown] == [True, True] + [False] * (len(shown) - 2)
    assert [info.display_name for info in shown][:3] == ["batchnorm", "spec", "augment"]
    assert "seeds" in [info.name for info in shown]
    records = {p: p.read_bytes() for p in suite.glob(f"*/seed=*/*{board.SESSION_SUFFIX}")}
    assert len(records) == 6
    report.write_report(suite)  # a second report with the same results rewrites no session
    assert {p: p.read_bytes() for p in suite.glob(f"*/seed=*/*{board.SESSION_SUFFIX}")} == records


def test_a_finishing_trial_writes_its_scalars_and_no_hparams(tmp_path: Path):
    from ablations.monitor import TrialLogger

    [trial] = notebook_trials(only=["pixel"])
    folder = trial.paths(tmp_path).folder
    logger = TrialLogger(folder, trial)
    history = [{"epoch": 0, "train/acc": 0.6, "val/acc": 0.5}, {"epoch": 1, "train/acc": 0.7, "val/acc": 0.55}]
    for epoch, values in enumerate(history, start=1):
        logger.log_epoch(values, epoch)
    logger.log_trial({"test/acc": 0.52, "test/loss": 1.3}, history)
    assert [p.name for p in (tmp_path / "notebook").iterdir()] == ["pixel"]  # no suite run
    run = accumulate(folder)
    assert [e.step for e in run.Scalars("accuracy/val")] == [1, 2] and [e.step for e in run.Scalars("test/acc")] == [2]
    assert not run.Tags()["tensors"]  # no HParams record nor text: the session is the report's
    with pytest.raises(KeyError, match="hparams"):
        run.PluginTagToContent("hparams")


def test_levels_label_the_factor_columns_else_the_spec_fields():
    result = {"spec_fields": {"batchnorm": True, "max_norm": None}}
    assert board.factor_levels(result) == {"factor/batchnorm": True, "factor/max_norm": 0}
    with_lr = {**result, "factors": {"lr": 0.001}}  # a setting factor, before result.json had levels
    assert board.factor_levels(with_lr) == {"factor/batchnorm": True, "factor/max_norm": 0, "factor/lr": 0.001}
    labelled = {**result, "levels": {"bn": "on", "lr": "0.01"}}
    assert board.factor_levels(labelled) == {"factor/bn": "on", "factor/lr": "0.01"}


def test_the_printed_urls_open_the_answer_and_colour_a_cells_seeds_alike_with_smoothing_off(tmp_path: Path):
    hint = board.open_hint(tmp_path / "notebook")
    answer, trials = hint.splitlines()
    summary = tmp_path / "notebook" / board.REPORT_RUN  # one run: ticked, however many trials the suite has
    assert f"tensorboard --logdir {summary}, then http://localhost:6006/#text" in answer
    assert f"tensorboard --logdir {tmp_path / 'notebook'}, then" in trials
    url = urlsplit(re.findall(r"http://localhost:6006/\S+", trials)[0])
    assert url.fragment == "timeseries"
    params = dict(parse_qsl(url.query))  # TensorBoard's Time Series reads these query parameters
    assert params["smoothing"] == "0" and params["runColorGroup"].startswith("regex:")
    regex = params["runColorGroup"].removeprefix("regex:")
    cell = [re.search(regex, f"notebook/pixel+bn/seed={seed}").groups() for seed in (0, 1, 2)]
    assert cell[0] == cell[1] == cell[2] != re.search(regex, "notebook/pixel/seed=0").groups()


def test_tensorboard_answers_with_the_report_verdict_sections(tmp_path: Path):
    for trial in notebook_trials(only=["pixel", "pixel+bn"], seeds=(0, 1, 2)):
        finished(trial, tmp_path, 0.5 + trial.seed / 100 + (trial.spec == "pixel+bn") / 10, events=False)
    suite = tmp_path / "notebook"
    report.write_report(suite)
    answer = accumulate(suite / board.REPORT_RUN).Tensors(board.ANSWER_TAG)[0].tensor_proto.string_val[0].decode()
    results = (suite / "results.md").read_text()
    assert answer.startswith("## Each spec against `pixel`") and "| pixel+bn |" in answer
    assert answer in results  # the same markdown as results.md's section, not a second rendering
