"""What TensorBoard shows of a suite, torch-free: the tags, the HParams records, the event files, and
``python -m ablations.report.rebuild`` (`ablations.report.rebuild`), which rewrites a suite's events from its results.

One code path: a trial's scalars are built here from the same numbers its ``result.json`` holds (`epoch_scalars`
for each entry of its ``history``, `test_scalars` for its test metrics). A running trial writes them as the
numbers arrive (`ablations.monitor.TrialLogger`); a rebuild writes them from result.json (`trial_events`); both
give the same tags, steps and values.

**Scalars** are logged against the number of epochs trained (1, 2, ...); test metrics at the last epoch. Every
``train/*`` and ``val/*`` metric of an epoch is logged, plus copies of accuracy and cross-entropy under the groups
``accuracy/`` and ``cross_entropy/`` (`EPOCH_CURVES`): Time Series lists groups in natural sort order and opens the
first two, so it opens on them. `GAP` is train minus validation accuracy, per epoch.

**HParams**, written once per report (`write_suite_runs`, called by `ablations.report.report.write_report`), never
by a trial: one row per cell (a spec under one set of settings), TensorBoard's own session group: every seed of the
cell is a session of the group named `cell_group` (``03 pixel+bn 5c1e``), and TensorBoard averages their metrics
(expand the row for each seed). Each session record, with the trial's settings text, is a small event file
(``*.hparams``) in its trial's folder, beside the trial's scalars. The suite's ``_hparams`` run holds the
experiment record: the factors that vary first (TensorBoard ticks the first five), then ``spec``, then the columns
that do not vary, ``seeds`` (the cell's seeds as text, ``0, 1, 2``) among them; and the metrics (`METRICS`). A factor's
level is its label from result.json's ``levels`` where the result has them, else the spec's field, typed
(booleans as booleans, numbers as numbers, "off" as 0).

**The answer** (`ANSWER_TAG`, `verdict_markdown`): the suite's ``_report`` run holds the verdict table, read from
the verdict columns of the report's results.csv and effects.csv, so it says what the tables say, beside the whole
report and its charts; `open_hint` is what a sweep prints: the command that opens only that run (a suite of
hundreds of trials ticks no run in the Text and Images tabs, above 40 runs) and the Time Series URL that colours
a cell's seeds alike with smoothing off.

Everything here builds protocol buffers with TensorBoard's public API (``hparams_pb``, the plugins' metadata
helpers) and writes them with its ``EventFileWriter``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union
from urllib.parse import quote

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

HParamValue = Union[bool, int, float, str]
Step = tuple[int, summary_pb2.Summary]  # a summary and the step it is logged at

SEED, SPEC, SEEDS = "seed", "spec", "seeds"
SPEC_FIELD, SETTING = "spec/", "settings/"  # prefixes of the spec's fields and of the settings in a trial's text
FACTOR = "factor/"  # prefixes a factor's HParams column: TensorBoard sorts the varying columns by name, before spec
REPORT_RUN = "_report"  # the suite's run that holds the verdict table, the results table and the charts
SAMPLES_RUN = "_samples"  # the suite's run that holds one training image per class
HPARAMS_RUN = "_hparams"  # the suite's run that holds the HParams experiment record
SESSION_SUFFIX = ".hparams"  # ends the name of a trial's session record, written by the report
SAMPLES_TAG = "samples/one_training_image_per_class"
SAMPLES_TITLE = "CIFAR-10: one training image per class"
SETTINGS_TAG = "trial/settings"
ANSWER_TAG = "answer/verdicts"  # sorts before report/*: the Text tab shows it first
EPOCH_CURVES = {"acc": "accuracy", "ce": "cross_entropy"}  # metric -> the Time Series group listed first
GAP = "gap/train_val_acc"  # train accuracy minus validation accuracy, per epoch
CELL_RUNS = "(.*)/seed="  # Time Series colours runs by this regex's group: a cell's seeds alike
CELL_COLOURS = f"?runColorGroup=regex:{quote(CELL_RUNS, safe='')}&smoothing=0#timeseries"  # the query it reads
PORT = 6006  # tensorboard's default

# HParams metric columns: tag -> (display name, description); TensorBoard shows the first five.
METRICS: dict[str, tuple[str, str]] = {
    "test/acc": ("test accuracy", "final, over the whole test set"),
    "val/acc": ("validation accuracy", "after the last epoch"),
    "test/loss": ("test loss", "cross-entropy plus the penalty, as Keras reports it"),
    "test/ce": ("test cross-entropy", "without the penalty"),
    GAP: ("train − val accuracy", "after the last epoch: how much the spec overfits"),
}
OFF_AS_ZERO = {FACTOR + "max_norm": "0 = no cap"}
DESCRIPTIONS = {
    SEEDS: "the cell's seeds; its row's metrics are their mean (expand the row for each seed)",
    SPEC: "the spec's name",
}


# ------------------------------------------------------------------------------------------------ scalars
def _with_curves(values: Mapping[str, float]) -> dict[str, float]:
    """`values` plus their copies under the Time Series groups of `EPOCH_CURVES` (``accuracy/val``, ...)."""
    copies = {}
    for name, value in values.items():
        stage, _, metric = name.partition("/")
        if metric in EPOCH_CURVES:
            copies[f"{EPOCH_CURVES[metric]}/{stage}"] = value
    return {**values, **copies}


def epoch_scalars(epoch: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one epoch from its entry in result.json's ``history`` (``train/*`` and ``val/*``)."""
    values = {k: float(v) for k, v in epoch.items() if k.startswith(("train/", "val/"))}
    if "train/acc" in values and "val/acc" in values:
        values[GAP] = values["train/acc"] - values["val/acc"]
    return _with_curves(values)


def test_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of the test pass from a result's ``metrics``."""
    return _with_curves({k: float(v) for k, v in metrics.items() if k.startswith("test/")})


def scalar_summary(values: Mapping[str, float]) -> summary_pb2.Summary:
    """Scalars, one value per tag."""
    return summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]
    )


# ------------------------------------------------------------------------------------------------ hparams
def _typed(value: Any) -> HParamValue:
    """A value TensorBoard can type: ``None`` (off, unlimited) is 0; other values keep their Python type."""
    if value is None:
        return 0
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def result_settings(result: Mapping[str, Any]) -> dict[str, HParamValue]:
    """A trial's settings for its Text tab: spec name, seed, every spec field and hashed setting, typed."""
    values: dict[str, HParamValue] = {SPEC: str(result[SPEC]), SEED: int(result[SEED])}
    values.update({SPEC_FIELD + k: _typed(v) for k, v in sorted(result.get("spec_fields", {}).items())})
    values.update({SETTING + k: _typed(v) for k, v in sorted(result["settings"].items()) if k not in (SEED, SPEC)})
    return values


def factor_levels(result: Mapping[str, Any]) -> dict[str, HParamValue]:
    """A trial's factor columns: its ``levels`` labels where result.json has them, else its spec's fields and its
    setting factors' values (``factors``)."""
    levels = result.get("levels")
    if levels:
        return {FACTOR + str(k): str(v) for k, v in levels.items()}
    fields = {FACTOR + k: _typed(v) for k, v in sorted(result.get("spec_fields", {}).items())}
    return {**fields, **{FACTOR + k: _typed(v) for k, v in result.get("factors", {}).items()}}  # setting factors


def _cell(result: Mapping[str, Any]) -> tuple[str, str, str]:
    """What a cell's seeds share: suite, spec and the settings but the seed."""
    from ablations.store import settings_key

    return result["suite"], result[SPEC], settings_key(dict(result["settings"]))


def cell_group(result: Mapping[str, Any]) -> str:
    """The HParams group of a trial's cell, e.g. ``03 pixel+bn 5c1e``: the suite's third spec, its cell (the spec
    and any setting factor's level), and a digest of suite, spec and settings, so that the same cell under other
    settings (another folder of one logdir) is another group. The table cuts names after about 14 characters: the
    number and the cell's start come first."""
    digest = hashlib.sha256(repr(_cell(result)).encode()).hexdigest()[:4]
    return f"{result.get('order', 0) + 1:02d} {result.get('cell', result[SPEC])} {digest}"


def session_summaries(hparams: Mapping[str, HParamValue], group: str) -> list[summary_pb2.Summary]:
    """One session of the HParams table, in `group`: its start (values, group) and its end (finished)."""
    end = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
    )
    summaries = [
        hp.hparams_pb(dict(hparams), trial_id=group, start_time_secs=0),  # the same bytes in every report
        summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(
                    tag=hparams_metadata.SESSION_END_INFO_TAG,
                    metadata=hparams_metadata.create_summary_metadata(end),
                    tensor=hparams_metadata.NULL_TENSOR,
                )
            ]
        ),
    ]
    for summary in summaries:  # the same bytes for the same row, in every process (map order)
        data = summary.value[0].metadata.plugin_data
        data.content = plugin_data_pb2.HParamsPluginData.FromString(data.content).SerializeToString(deterministic=True)
    return summaries


def session_rows(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, HParamValue]]]:
    """Every result's session: its group (`cell_group`) and values (factors, spec, the cell's seeds)."""
    seeds: dict[tuple[str, str, str], list[int]] = {}
    for result in results:
        seeds.setdefault(_cell(result), []).append(int(result[SEED]))
    return [
        (
            cell_group(r),
            {**factor_levels(r), SPEC: str(r[SPEC]), SEEDS: ", ".join(map(str, sorted(seeds[_cell(r)])))},
        )
        for r in results
    ]


def settings_markdown(values: Mapping[str, Any]) -> str:
    """A trial's settings as a markdown table, for its Text tab."""
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in values.items())


def trial_events(result: Mapping[str, Any]) -> list[Step]:
    """Every scalar a trial writes, from its result.json, with its step: each epoch's scalars (step: epochs
    trained) and the test scalars (at the last epoch)."""
    history = result.get("history", [])
    steps: list[Step] = [(i + 1, scalar_summary(epoch_scalars(epoch))) for i, epoch in enumerate(history)]
    steps.append((len(history), scalar_summary(test_scalars(result["metrics"]))))
    return steps


def final_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The HParams metrics of one result (`METRICS`) that it has."""
    metrics = {k: float(v) for k, v in result["metrics"].items() if k in METRICS}
    if "train/acc" in result["metrics"] and "val/acc" in result["metrics"]:
        metrics[GAP] = float(result["metrics"]["train/acc"]) - float(result["metrics"]["val/acc"])
    return metrics


def _levels(values: Iterable[HParamValue]) -> list[HParamValue]:
    """The distinct values, sorted, of one TensorBoard type: integers mixed with floats become floats, other
    mixes text."""
    distinct = set(values)
    kinds = {type(v) for v in distinct}
    if kinds == {int, float}:
        distinct = {float(v) for v in distinct}
    elif len(kinds) > 1:  # e.g. results from code that typed a field differently: compare as text
        distinct = {str(v) for v in distinct}
    return sorted(distinct)


def hparam_infos(rows: Sequence[Mapping[str, HParamValue]]) -> list[api_pb2.HParamInfo]:
    """The HParams columns of a suite, each with its levels and `differs` set where the rows disagree. TensorBoard
    shows those that differ first, by name: the factors (`FACTOR`), then ``spec``; then those that do not, the
    cell's ``seeds`` among them."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    infos = []
    for name in names:
        levels = _levels(row[name] for row in rows if name in row)
        info = api_pb2.HParamInfo(
            name=name,
            display_name=name.removeprefix(FACTOR),
            differs=len(levels) > 1,
            description=OFF_AS_ZERO.get(name, DESCRIPTIONS.get(name, "")),
        )
        hp.Discrete(levels).update_hparam_info(info)
        infos.append(info)
    return infos


def experiment_summary(rows: Sequence[Mapping[str, HParamValue]], metrics: Iterable[str]) -> summary_pb2.Summary:
    """The suite's HParams experiment: its columns (`hparam_infos`) and the `metrics` among `METRICS` it has."""
    present = set(metrics)
    metric_infos = [
        hp.Metric(
            tag,
            display_name=METRICS[tag][0],
            description=METRICS[tag][1],
            dataset_type=hp.Metric.VALIDATION if tag.startswith("val/") else None,
        ).as_proto()
        for tag in METRICS
        if tag in present
    ]
    experiment = api_pb2.Experiment(hparam_infos=hparam_infos(rows), metric_infos=metric_infos)
    data = plugin_data_pb2.HParamsPluginData(experiment=experiment)
    return summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(
                tag=hparams_metadata.EXPERIMENT_TAG,
                metadata=hparams_metadata.create_summary_metadata(data),
                tensor=hparams_metadata.NULL_TENSOR,
            )
        ]
    )


# ------------------------------------------------------------------------------------------------ other tabs
def text_summary(tag: str, markdown: str) -> summary_pb2.Summary:
    """A Text-tab entry (markdown, tables included)."""
    tensor = tensor_pb2.TensorProto(
        dtype="DT_STRING",
        string_val=[markdown.encode()],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
    )
    return summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(
                tag=tag, metadata=text_metadata.create_summary_metadata(display_name=tag, description=""), tensor=tensor
            )
        ]
    )


def image_summary(tag: str, png: bytes) -> summary_pb2.Summary:
    """An Images-tab entry from PNG bytes, shown at their own size."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"image {tag!r} is not a PNG")
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])


Items = Iterable[Union[summary_pb2.Summary, Step]]
Clock = Callable[[int], float]  # the wall time of a step


def _steps(items: Items) -> list[Step]:
    """Summaries with their steps; a bare summary is at step 0."""
    return [item if isinstance(item, tuple) else (0, item) for item in items]


def write_events(run_dir: Path, summaries: Items, clock: Optional[Clock] = None, suffix: str = "") -> None:
    """Write `summaries` (bare ones at step 0) to a new event file in `run_dir`. `clock` gives each step's wall
    time (default: now); `suffix` ends the file's name."""
    writer = EventFileWriter(str(run_dir), filename_suffix=suffix)
    try:
        for step, summary in _steps(summaries):
            wall = clock(step) if clock is not None else time.time()
            writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
    finally:
        writer.close()


def event_files(run_dir: Path) -> list[Path]:
    """The TensorBoard event files directly in `run_dir`, in the order TensorBoard reads them."""
    return sorted(p for p in Path(run_dir).glob("*tfevents*") if p.is_file() and not p.name.endswith(".tmp"))


def read_steps(path: Path) -> list[Step]:
    """The summaries of one event file with their steps, as written (no migration)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    events = [event_pb2.Event.FromString(raw) for raw in RawEventFileLoader(str(path)).Load()]
    return [(event.step, event.summary) for event in events if event.HasField("summary")]


def holds(files: Sequence[Path], wanted: Sequence[Sequence[Step]]) -> bool:
    """True if `files` are exactly the event files `wanted` (in any order), wall times aside."""
    if len(files) != len(wanted):
        return False
    found = [read_steps(path) for path in files]
    return all(any(steps == list(file) for steps in found) for file in wanted) and all(
        any(steps == list(file) for file in wanted) for steps in found
    )


def write_run(run_dir: Path, summaries: Items, replace: bool, clock: Optional[Clock] = None) -> bool:
    """Write a whole run at once: into a temporary folder, then renamed to `run_dir`, so TensorBoard never sees
    half of it. An existing `run_dir` is replaced (`replace`; left as it is when it already holds exactly these
    summaries) or kept (returns False: another process wrote it)."""
    run_dir = Path(run_dir)
    steps = _steps(summaries)
    if replace and run_dir.is_dir() and holds(event_files(run_dir), [steps]):
        return True
    staging = run_dir.with_name(f".{run_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    write_events(staging, steps, clock)
    if replace:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, run_dir)
        return True
    except OSError:  # it exists, written by another trial of the suite meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return False


def write_sessions(folder: Path, summaries: Sequence[summary_pb2.Summary]) -> None:
    """Make `summaries` the session record (`SESSION_SUFFIX`) of the trial in `folder`: left as it is when it
    already holds them, else written anew and the old record removed."""
    old = sorted(Path(folder).glob(f"*tfevents*{SESSION_SUFFIX}"))
    steps = _steps(summaries)
    if holds(old, [steps]):
        return
    write_events(Path(folder), steps, suffix=SESSION_SUFFIX)
    for path in old:
        path.unlink()


def write_suite_runs(suite_dir: Path, results: Sequence[Mapping[str, Any]]) -> None:
    """Write the suite's HParams from the report's `results`: the experiment record (`HPARAMS_RUN`) and each
    trial's session with its settings text (`write_sessions`). The caller holds the suite's lock."""
    from ablations.store import folder_lock, list_trials

    suite_dir = Path(suite_dir)
    trials = [(folder, result) for folder, result in list_trials(suite_dir).results.items() if result in results]
    rows = session_rows([result for _, result in trials])
    for (folder, result), (group, values) in zip(trials, rows):
        settings = text_summary(SETTINGS_TAG, settings_markdown(result_settings(result)))
        with folder_lock(folder) as locked:
            if locked:  # else it is being trained again: the next report writes its session
                write_sessions(folder, [*session_summaries(values, group), settings])
    present = {tag for _, result in trials for tag in final_metrics(result)}
    write_run(suite_dir / HPARAMS_RUN, [experiment_summary([v for _, v in rows], present)], replace=True)


# ------------------------------------------------------------------------------------------------ the answer
VERDICT_COLUMNS = ("verdict", "verdict_low", "verdict_high", "margin")


def _verdict_rows(path: Path, name: str, label: Callable[[dict[str, str]], str]) -> list[str]:
    """The markdown rows of one report CSV's verdict columns (rows without a verdict, the reference, left out)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    if records and not set(VERDICT_COLUMNS) <= set(records[0]):
        return [f"| {name} | (no verdict columns: rebuild the report) | | |"]
    return [
        f"| {label(r)} | **{r['verdict']}** | {_interval(r['verdict_low'], r['verdict_high'])} "
        f"| ±{float(r['margin']):g} |"
        for r in records
        if r.get("verdict")
    ]


def _interval(low: str, high: str) -> str:
    """``[low, high]``, or "no interval" where the CSV has none (a cell of one seed)."""
    return f"[{float(low):+.4f}, {float(high):+.4f}]" if low and high else "no interval (one seed)"


def verdict_markdown(suite_dir: Path) -> str:
    """The suite's verdicts as a markdown table, read from the verdict columns of the report's results.csv (each
    spec against the reference) and effects.csv (each factorial effect): what the report's tables say."""
    suite_dir = Path(suite_dir)
    rows = _verdict_rows(suite_dir / "results.csv", "results.csv", lambda r: f"{r['spec']} − reference")
    rows += _verdict_rows(suite_dir / "effects.csv", "effects.csv", lambda r: f"effect of {r['effect']}")
    if not rows:
        return "No comparison has a verdict (one spec, or no results.csv)."
    return (
        "| comparison | verdict | interval (test accuracy) | margin |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n*equivalent*: the family-wise interval lies within ±margin; *better* / *worse*: it excludes 0; "
        "*open*: neither (see results.md for the smallest difference the seeds could detect)."
    )


def open_hint(suite_dir: Path) -> str:
    """What a sweep prints: how to open the suite's answer in TensorBoard (its ``_report`` run as a logdir of its
    own: the Text and Images tabs tick no run when more than 40 match), and its trials with a cell's seeds in one
    colour and smoothing off, and one HParams row per cell."""
    base = f"http://localhost:{PORT}/"
    return (
        f"TensorBoard, the answer (verdicts, tables, charts): tensorboard --logdir {Path(suite_dir) / REPORT_RUN}, "
        f"then {base}#text\n"
        f"TensorBoard, the trials: tensorboard --logdir {suite_dir}, then {base}{CELL_COLOURS} (a cell's seeds in "
        f"one colour) or {base}#hparams (one row per cell, its seeds averaged)"
    )
