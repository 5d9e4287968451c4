"""What TensorBoard shows of a suite, built with TensorBoard's public summary API and its ``EventFileWriter``:
each trial's scalars from its result.json (`trial_events`, the same tags and steps as a running trial writes),
the suite's HParams (`write_suite_runs`: a trial's session in its cell's group, so TensorBoard averages a cell's
seeds in one row) and the ``_report`` run; `open_hint` says how to open them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union
from urllib.parse import quote

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter

HParamValue = Union[bool, int, float, str]
Step = tuple[int, summary_pb2.Summary]  # a summary and the step it is logged at

SEED, SPEC, SEEDS = "seed", "spec", "seeds"
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
CELL_COLOURS = f"?runColorGroup=regex:{quote('(.*)/seed=', safe='')}&smoothing=0#timeseries"  # a cell's seeds alike
PORT = 6006  # tensorboard's default
METRICS: dict[str, tuple[str, str]] = {  # HParams metric columns: tag -> (name, description)
    "test/acc": ("test accuracy", "final, over the whole test set"),
    "val/acc": ("validation accuracy", "after the last epoch"),
    "test/loss": ("test loss", "cross-entropy plus the penalty, as Keras reports it"),
    "test/ce": ("test cross-entropy", "without the penalty"),
    GAP: ("train − val accuracy", "after the last epoch: how much the spec overfits"),
}
DESCRIPTIONS = {
    SEEDS: "the cell's seeds; its row's metrics are their mean (expand the row for each seed)",
    SPEC: "the spec's name",
    FACTOR + "max_norm": "0 = no cap",
}


def _with_curves(values: dict[str, float]) -> dict[str, float]:
    """`values` plus their copies under the Time Series groups of `EPOCH_CURVES` (``accuracy/val``, ...)."""
    copies = {}
    for name, value in values.items():
        stage, _, metric = name.partition("/")
        if metric in EPOCH_CURVES:
            copies[f"{EPOCH_CURVES[metric]}/{stage}"] = value
    return {**values, **copies}


def epoch_scalars(epoch: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one epoch from its entry in result.json's ``history`` (``train/*``, ``val/*``, `GAP`)."""
    values = {k: float(v) for k, v in epoch.items() if k.startswith(("train/", "val/"))}
    if "train/acc" in values and "val/acc" in values:
        values[GAP] = values["train/acc"] - values["val/acc"]
    return _with_curves(values)


def test_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of the test pass from a result's ``metrics``."""
    return _with_curves({k: float(v) for k, v in metrics.items() if k.startswith("test/")})


def scalar_summary(values: Mapping[str, float]) -> summary_pb2.Summary:
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()])


def trial_events(result: Mapping[str, Any]) -> list[Step]:
    """Every scalar of a trial's result.json: each epoch's at its epochs trained, the test's at the last."""
    history = result.get("history", [])
    steps: list[Step] = [(i + 1, scalar_summary(epoch_scalars(epoch))) for i, epoch in enumerate(history)]
    return [*steps, (len(history), scalar_summary(test_scalars(result["metrics"])))]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table (every report table and Text-tab table): the first column left-aligned, the others right."""
    lines = ["| " + " | ".join(map(str, line)) + " |" for line in [header, *rows]]
    return "\n".join([lines[0], "|---|" + "---:|" * (len(header) - 1), *lines[1:]])


def image_summary(tag: str, png: bytes) -> summary_pb2.Summary:
    """An Images-tab entry from PNG bytes, shown at their own size."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"image {tag!r} is not a PNG")
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])


# ------------------------------------------------------------------------------------------------ hparams
def _typed(value: Any) -> HParamValue:
    """A value TensorBoard can type: ``None`` (off, unlimited) is 0; other values keep their Python type."""
    return 0 if value is None else value if isinstance(value, (bool, int, float, str)) else str(value)


def factor_levels(result: Mapping[str, Any]) -> dict[str, HParamValue]:
    """A trial's factor columns: its ``levels`` labels, else its spec fields and setting factors' values."""
    if result.get("levels"):
        return {FACTOR + str(k): str(v) for k, v in result["levels"].items()}
    values = {**dict(sorted(result.get("spec_fields", {}).items())), **result.get("factors", {})}
    return {FACTOR + k: _typed(v) for k, v in values.items()}


def _cell(result: Mapping[str, Any]) -> tuple[str, str, str]:
    """What a cell's seeds share: suite, spec and the settings but the seed."""
    from ablations.store import settings_key

    return result["suite"], result[SPEC], settings_key(dict(result["settings"]))


def cell_group(result: Mapping[str, Any]) -> str:
    """The HParams group of a trial's cell, e.g. ``03 pixel+bn 5c1e``: its place, its cell, a digest of suite, spec
    and settings (the table cuts names after about 14 characters)."""
    digest = hashlib.sha256(repr(_cell(result)).encode()).hexdigest()[:4]
    return f"{result.get('order', 0) + 1:02d} {result.get('cell', result[SPEC])} {digest}"


def session_summaries(hparams: Mapping[str, HParamValue], group: str) -> list[summary_pb2.Summary]:
    """One session of the HParams table, in `group`: its start and end, the same bytes in every process."""
    end = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
    )
    summaries = [
        hp.hparams_pb(dict(hparams), trial_id=group, start_time_secs=0),
        _plugin_summary(hparams_metadata.SESSION_END_INFO_TAG, end),
    ]
    for summary in summaries:  # map order differs between processes: serialize deterministically
        data = summary.value[0].metadata.plugin_data
        data.content = plugin_data_pb2.HParamsPluginData.FromString(data.content).SerializeToString(deterministic=True)
    return summaries


def _plugin_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    metadata = hparams_metadata.create_summary_metadata(data)
    return summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=hparams_metadata.NULL_TENSOR)]
    )


def experiment_summary(rows: Sequence[Mapping[str, HParamValue]], metrics: Iterable[str]) -> summary_pb2.Summary:
    """The suite's HParams experiment: a column per name in `rows` (`differs` where they disagree: listed first),
    and the `METRICS` among `metrics`."""
    infos = []
    for name in dict.fromkeys(name for row in rows for name in row):
        levels = {row[name] for row in rows if name in row}
        kinds = {type(v) for v in levels}
        if kinds == {int, float}:
            levels = {float(v) for v in levels}
        elif len(kinds) > 1:  # e.g. results from code that typed a field differently: compare as text
            levels = {str(v) for v in levels}
        info = api_pb2.HParamInfo(
            name=name,
            display_name=name.removeprefix(FACTOR),
            differs=len(levels) > 1,
            description=DESCRIPTIONS.get(name, ""),
        )
        hp.Discrete(sorted(levels)).update_hparam_info(info)
        infos.append(info)
    metric_infos = [
        hp.Metric(
            tag,
            display_name=name,
            description=text,
            dataset_type=hp.Metric.VALIDATION if tag.startswith("val/") else None,
        ).as_proto()
        for tag, (name, text) in METRICS.items()
        if tag in set(metrics)
    ]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    return _plugin_summary(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


# ------------------------------------------------------------------------------------------------ event files
Items = Iterable[Union[summary_pb2.Summary, Step]]


def _steps(items: Items) -> list[Step]:
    """Summaries with their steps; a bare summary is at step 0."""
    return [item if isinstance(item, tuple) else (0, item) for item in items]


def write_events(
    run_dir: Path, summaries: Items, clock: Optional[Callable[[int], float]] = None, suffix: str = ""
) -> None:
    """Write `summaries` to a new event file in `run_dir`; `clock` gives each step's wall time (default: now)."""
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


def holds(files: Sequence[Path], wanted: Sequence[Sequence[Step]]) -> bool:
    """True if `files` are exactly the event files `wanted` (in any order), wall times aside."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    events = [LegacyEventFileLoader(str(path)).Load() for path in files]
    found = [[(event.step, event.summary) for event in file if event.HasField("summary")] for file in events]
    wanted = [list(file) for file in wanted]
    return len(found) == len(wanted) and all(f in wanted for f in found) and all(w in found for w in wanted)


def write_run(run_dir: Path, summaries: Items, replace: bool) -> bool:
    """Write a whole run at once (a temporary folder renamed to `run_dir`). An existing `run_dir` is replaced
    (`replace`, unless it holds these summaries already) or kept (returns False: another process wrote it)."""
    run_dir = Path(run_dir)
    steps = _steps(summaries)
    if replace and run_dir.is_dir() and holds(event_files(run_dir), [steps]):
        return True
    staging = run_dir.with_name(f".{run_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    write_events(staging, steps)
    if replace:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, run_dir)
        return True
    except OSError:  # it exists, written by another trial of the suite meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return False


def write_suite_runs(suite_dir: Path, results: Sequence[Mapping[str, Any]]) -> None:
    """Each trial's session record (``*.hparams``, with its settings as text) and the experiment record
    (`HPARAMS_RUN`) of the report's `results`; the caller holds the suite's lock."""
    from ablations.store import folder_lock, list_trials

    trials = [(folder, result) for folder, result in list_trials(suite_dir).results.items() if result in results]
    seeds: dict[tuple[str, str, str], list[int]] = {}
    for _, result in trials:
        seeds.setdefault(_cell(result), []).append(int(result[SEED]))
    rows = []
    for folder, r in trials:
        row = {**factor_levels(r), SPEC: str(r[SPEC]), SEEDS: ", ".join(map(str, sorted(seeds[_cell(r)])))}
        settings = {
            SPEC: r[SPEC],
            SEED: r[SEED],
            **{f"spec/{k}": _typed(v) for k, v in sorted(r.get("spec_fields", {}).items())},
        }
        settings.update({f"settings/{k}": _typed(v) for k, v in sorted(r["settings"].items()) if k not in (SEED, SPEC)})
        text = markdown_table(["setting", "value"], settings.items())
        steps = _steps([*session_summaries(row, cell_group(r)), text_pb(SETTINGS_TAG, text)])
        rows.append(row)
        with folder_lock(folder) as locked:
            old = sorted(Path(folder).glob(f"*tfevents*{SESSION_SUFFIX}"))
            if locked and not holds(old, [steps]):  # a trial being trained again gets its session next report
                write_events(Path(folder), steps, suffix=SESSION_SUFFIX)
                for path in old:
                    path.unlink()
    metrics = {k for _, r in trials for k in r["metrics"] if k in METRICS}
    metrics |= {GAP} if any({"train/acc", "val/acc"} <= set(r["metrics"]) for _, r in trials) else set()
    write_run(Path(suite_dir) / HPARAMS_RUN, [experiment_summary(rows, metrics)], replace=True)


# ------------------------------------------------------------------------------------------------ the answer
def open_hint(suite_dir: Path) -> str:
    """How to open the suite's answer (``_report`` as its own logdir) and its trials (a cell's seeds alike)."""
    base = f"http://localhost:{PORT}/"
    return (
        f"TensorBoard, the answer (verdicts, tables, charts): tensorboard --logdir {Path(suite_dir) / REPORT_RUN}, "
        f"then {base}#text\n"
        f"TensorBoard, the trials: tensorboard --logdir {suite_dir}, then {base}{CELL_COLOURS} (a cell's seeds in "
        f"one colour) or {base}#hparams (one row per cell, its seeds averaged)"
    )
