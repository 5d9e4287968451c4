"""What TensorBoard shows of a suite, torch-free: the tags, the HParams records, the event files, and
``python -m ablations.report.rebuild`` (`ablations.report.rebuild`), which rewrites a suite's events from its results.

One code path: a trial's events are built here from the same numbers its ``result.json`` holds (`epoch_scalars`
for each entry of its ``history``, `test_scalars` for its test metrics, `trial_records` for its HParams session
and settings text). A running trial writes them as the numbers arrive (`ablations.monitor.TrialLogger`); a rebuild
writes them from result.json (`trial_events`); both give the same tags, steps and values.

**Scalars** are logged against the number of epochs trained (1, 2, ...); test metrics at the last epoch. Every
``train/*`` and ``val/*`` metric of an epoch is logged, plus copies of accuracy and cross-entropy under the groups
``accuracy/`` and ``cross_entropy/`` (`EPOCH_CURVES`): Time Series lists groups in natural sort order and opens the
first two, so it opens on them. `GAP` is train minus validation accuracy, per epoch.

**HParams.** A suite's HParams view has two kinds of rows, told apart by the `ROW` column:

- ``trial``: one row per trial, its session record in the trial's own run: seed, spec name, every spec field, typed
  (booleans as booleans, numbers as numbers, "off" as 0), and the training settings; named ``03 s1 notebook`` (the
  suite's 3rd spec, seed 1), which the table shows whole;
- ``spec mean``: one row per spec (trials sharing every hyperparameter but the seed), in ``<suite>/_by_spec/<spec>``,
  with the metrics averaged over its seeds; named ``03 ×3 notebook`` (3 seeds).

TensorBoard (2.x) groups sessions only by an explicit group name, so the per-spec rows are sessions of their own;
unticking one value of ``row`` in the filter pane leaves one view. The suite's ``_hparams`` run holds the experiment
record: the columns (those marked *differs* first, then by name; TensorBoard ticks the first five) with their
levels, and the metrics (`METRICS`, the five TensorBoard shows). A training setting is a column only when it varies.

Everything here builds protocol buffers with TensorBoard's public API (``hparams_pb``, the plugins' metadata
helpers) and writes them with its ``EventFileWriter``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

HParamValue = Union[bool, int, float, str]
Step = tuple[int, summary_pb2.Summary]  # a summary and the step it is logged at

SEED, SPEC, ROW = "seed", "spec", "row"
TRIAL_ROW, SPEC_ROW = "trial", "spec mean"  # the values of ROW
SPEC_FIELD, SETTING = "spec/", "settings/"  # prefixes of the spec's fields and of the training settings
REPORT_RUN = "_report"  # the suite's run that holds the results table and the charts
SAMPLES_RUN = "_samples"  # the suite's run that holds one training image per class
HPARAMS_RUN = "_hparams"  # the suite's run that holds the HParams experiment record
BY_SPEC_RUN = "_by_spec"  # the suite's folder of per-spec runs: one HParams row per spec, metrics over seeds
SAMPLES_TAG = "samples/one_training_image_per_class"
SAMPLES_TITLE = "CIFAR-10: one training image per class"
SETTINGS_TAG = "trial/settings"
EPOCH_CURVES = {"acc": "accuracy", "ce": "cross_entropy"}  # metric -> the Time Series group listed first
GAP = "gap/train_val_acc"  # train accuracy minus validation accuracy, per epoch

# HParams metric columns: tag -> (display name, description); TensorBoard shows the first five.
METRICS: dict[str, tuple[str, str]] = {
    "test/acc": ("test accuracy", "final, over the whole test set"),
    "val/acc": ("validation accuracy", "after the last epoch"),
    "test/loss": ("test loss", "cross-entropy plus the penalty, as Keras reports it"),
    "test/ce": ("test cross-entropy", "without the penalty"),
    GAP: ("train − val accuracy", "after the last epoch: how much the spec overfits"),
}
OFF_AS_ZERO = {"spec/max_norm": "0 = no cap", "settings/limit_train": "0 = every training image"}
DESCRIPTIONS = {
    ROW: f"'{TRIAL_ROW}': one trial (one seed); '{SPEC_ROW}': a spec's metrics averaged over its seeds",
    SEED: "the trial's seed (empty in the spec-mean rows)",
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


def trial_hparams(spec_fields: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, HParamValue]:
    """A trial's HParams values from its spec's fields and its hashed settings (``spec`` name, ``seed``, ...)."""
    values: dict[str, HParamValue] = {ROW: TRIAL_ROW, SEED: int(settings[SEED]), SPEC: str(settings[SPEC])}
    values.update({SPEC_FIELD + name: _typed(value) for name, value in sorted(spec_fields.items())})
    values.update(
        {SETTING + name: _typed(value) for name, value in sorted(settings.items()) if name not in (SEED, SPEC)}
    )  # sorted: as result.json stores them
    return values


def result_hparams(result: Mapping[str, Any]) -> dict[str, HParamValue]:
    """`trial_hparams` of a result.json (``spec`` from the result where old settings lack it)."""
    settings = {SPEC: result[SPEC], SEED: result[SEED], **result["settings"]}
    return trial_hparams(result.get("spec_fields", {}), settings)


def trial_id(suite: str, order: int, seed: int) -> str:
    """The trial's name in the HParams table, e.g. ``03 s1 notebook`` (the suite's third spec, seed 1): distinct
    across the suites of one logdir, sorting in suite order, and short, because the table cuts it after about 14
    characters (the seed and spec columns beside it say the rest)."""
    return f"{order + 1:02d} s{seed} {suite}"


def spec_id(suite: str, order: int, seeds: int) -> str:
    """A spec-mean row's name, e.g. ``03 ×3 notebook`` (the suite's third spec, averaged over 3 seeds)."""
    return f"{order + 1:02d} ×{seeds} {suite}"


def session_summaries(hparams: Mapping[str, HParamValue], name: str, start: float = 0.0) -> list[summary_pb2.Summary]:
    """One HParams row: its session's start (values, name) and its end (finished)."""
    end = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=start)
    )
    summaries = [
        hp.hparams_pb(dict(hparams), trial_id=name, start_time_secs=start),
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


def settings_markdown(hparams: Mapping[str, Any]) -> str:
    """A trial's settings as a markdown table, for its Text tab."""
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in hparams.items())


def trial_records(result: Mapping[str, Any], start: float = 0.0) -> list[summary_pb2.Summary]:
    """A trial's HParams row and its settings text, from its result (or what it will be)."""
    hparams = result_hparams(result)
    name = trial_id(result["suite"], result.get("order", 0), result[SEED])
    return [*session_summaries(hparams, name, start), text_summary(SETTINGS_TAG, settings_markdown(hparams))]


def trial_events(result: Mapping[str, Any], start: float = 0.0) -> list[Step]:
    """Every summary of a trial's run from its result.json, with its step: the records (step 0), each epoch's
    scalars (step: epochs trained) and the test scalars (at the last epoch)."""
    history = result.get("history", [])
    steps: list[Step] = [(0, summary) for summary in trial_records(result, start)]
    steps += [(i + 1, scalar_summary(epoch_scalars(epoch))) for i, epoch in enumerate(history)]
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
    """The HParams columns of a suite: row kind, seed, spec and spec fields always, training settings where they
    vary; each with its levels and `differs` set where the rows disagree."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    infos = []
    for name in names:
        levels = _levels(row[name] for row in rows if name in row)
        if name.startswith(SETTING) and len(levels) < 2:
            continue
        bare = name.split("/", 1)[-1]
        info = api_pb2.HParamInfo(
            name=name,
            display_name=bare,
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


def spec_groups(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """The results grouped by every hyperparameter but the seed, in suite order, each group named by its run
    folder under `BY_SPEC_RUN` (the spec's name; with a suffix when one spec was trained with several settings)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for result in sorted(results, key=lambda r: (r.get("order", 0), r[SPEC], r[SEED])):
        key = repr(sorted((k, repr(v)) for k, v in result_hparams(result).items() if k != SEED))
        groups.setdefault(key, []).append(result)
    named, used = [], set()
    for runs in groups.values():
        name = runs[0][SPEC]
        while name in used:
            name += "~"
        used.add(name)
        named.append((name, runs))
    return named


def suite_runs(results: Sequence[Mapping[str, Any]]) -> dict[str, list[Step]]:
    """The suite-level HParams runs, by path under the suite folder: the experiment record (`HPARAMS_RUN`) and one
    spec-mean row per spec (`BY_SPEC_RUN`/<spec>) with its metrics averaged over its seeds (logged at the last
    epoch)."""
    rows = [result_hparams(r) for r in results]
    runs: dict[str, list[Step]] = {}
    for name, group in spec_groups(results):
        values = {k: v for k, v in result_hparams(group[0]).items() if k != SEED}
        values[ROW] = SPEC_ROW
        rows.append(values)
        metrics = [final_metrics(r) for r in group]
        means = {tag: statistics.fmean(m[tag] for m in metrics) for tag in METRICS if all(tag in m for m in metrics)}
        row_id = spec_id(group[0]["suite"], group[0].get("order", 0), len(group))
        epochs = len(group[0].get("history", []))
        runs[f"{BY_SPEC_RUN}/{name}"] = [
            *[(0, s) for s in session_summaries(values, row_id)],
            (epochs, scalar_summary(means)),
        ]
    present = {tag for r in results for tag in final_metrics(r)}
    return {HPARAMS_RUN: [(0, experiment_summary(rows, present))], **runs}


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


class RunWriter:
    """An event file that a running trial appends to as its numbers arrive (each write is flushed)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._writer: Optional[EventFileWriter] = None

    def write(self, summaries: Items) -> None:
        if self._writer is None:
            self._writer = EventFileWriter(str(self.run_dir))
        for step, summary in _steps(summaries):
            self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def suite_results(suite_dir: Path, skip: Optional[Path] = None) -> list[dict[str, Any]]:
    """Every result of the suite's trials that counts (`ablations.store.list_trials`), but the one in `skip`."""
    from ablations.store import list_trials

    skipped = Path(skip).resolve() if skip is not None else None
    return [r for folder, r in list_trials(suite_dir).results.items() if folder.resolve() != skipped]


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


def write_suite_runs(suite_dir: Path, results: Sequence[Mapping[str, Any]], clock: Optional[Clock] = None) -> None:
    """Write the suite's HParams experiment record and spec-mean rows (`suite_runs`) from `results`, and remove
    the spec-mean runs of specs no longer among them. The caller holds the suite's lock."""
    suite_dir = Path(suite_dir)
    runs = suite_runs(results)
    for path, steps in runs.items():
        write_run(suite_dir / path, steps, replace=True, clock=clock)
    by_spec = suite_dir / BY_SPEC_RUN
    if by_spec.is_dir():
        for stale in by_spec.iterdir():
            if stale.is_dir() and f"{BY_SPEC_RUN}/{stale.name}" not in runs and not stale.name.startswith("."):
                shutil.rmtree(stale)
