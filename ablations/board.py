"""What TensorBoard shows of a suite, torch-free: the HParams columns, the summaries, and the event files.

**HParams.** Each trial's run holds a session record (`session_summary`): its seed, its spec's name and every spec
field, typed (booleans as booleans, numbers as numbers, "off" as 0), and its training settings. The suite's
``_report`` run holds the experiment record (`experiment_summary`), written once per report: the columns in order,
each with its levels, and the metrics. TensorBoard (2.x) sorts the columns with those marked *differs* first,
then by name, and ticks the first five; it shows the first five metrics. So the seed and the spec, whose names
sort first, and the spec fields that vary in the suite are ticked; constant fields follow unticked, and a training
setting is a column only when it varies (constant settings are in the report's text). The metrics are
``test/acc``, ``val/acc``, ``test/ce`` (where logged) and ``test/loss``, read from each trial's scalars.

**Time Series** lists tags grouped by their prefix (before the first ``/``), groups in natural sort order, and
opens the first two: `EPOCH_CURVES` names the groups (``accuracy``, ``cross_entropy``) under which every trial
logs a copy of its accuracy and cross-entropy curves, so they come first.

Everything here builds protocol buffers with TensorBoard's public API (``hparams_pb``, the plugins' metadata
helpers) and writes them with its ``EventFileWriter``; nothing imports torch.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

HParamValue = Union[bool, int, float, str]

SEED, SPEC = "seed", "spec"
SPEC_FIELD, SETTING = "spec/", "settings/"  # prefixes of the spec's fields and of the training settings
REPORT_RUN = "_report"  # the suite's run that holds the results table, the charts and the experiment record
SAMPLES_RUN = "_samples"  # the suite's run that holds one training image per class
EPOCH_CURVES = {"acc": "accuracy", "ce": "cross_entropy"}  # metric -> the Time Series group listed first

# Metrics shown per trial in HParams: tag -> (display name, description). The first five are ticked.
METRICS: dict[str, tuple[str, str]] = {
    "test/acc": ("test accuracy", "final, over the whole test set"),
    "val/acc": ("validation accuracy", "after the last epoch"),
    "test/ce": ("test cross-entropy", "without the penalty"),
    "test/loss": ("test loss", "cross-entropy plus the penalty, as Keras reports it"),
}
OFF_AS_ZERO = {"spec/max_norm": "0 = no cap", "settings/limit_train": "0 = every training image"}


def _typed(value: Any) -> HParamValue:
    """A value TensorBoard can type: ``None`` (off, unlimited) is 0; other values keep their Python type."""
    if value is None:
        return 0
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def trial_hparams(spec_fields: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, HParamValue]:
    """A trial's HParams values from its spec's fields and its hashed settings (``spec`` name, ``seed``, ...)."""
    values: dict[str, HParamValue] = {SEED: int(settings[SEED]), SPEC: str(settings[SPEC])}
    values.update({SPEC_FIELD + name: _typed(value) for name, value in spec_fields.items()})
    values.update({SETTING + name: _typed(value) for name, value in settings.items() if name not in (SEED, SPEC)})
    return values


def trial_id(suite: str, order: int, seed: int) -> str:
    """The trial's name in the HParams table, e.g. ``03 s1 notebook`` (the suite's third spec, seed 1): distinct
    across the suites of one logdir, sorting in suite order, and short, because the table cuts it after about 14
    characters (the seed and spec columns beside it say the rest)."""
    return f"{order + 1:02d} s{seed} {suite}"


def session_summary(hparams: Mapping[str, HParamValue], trial: str) -> summary_pb2.Summary:
    """One trial's HParams record (TensorBoard's ``hparams_pb``)."""
    return hp.hparams_pb(dict(hparams), trial_id=trial)


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


def hparam_infos(trials: Sequence[Mapping[str, HParamValue]]) -> list[api_pb2.HParamInfo]:
    """The HParams columns of a suite: seed, spec and spec fields always, training settings where they vary;
    each with its levels and `differs` set where the trials disagree."""
    names = list(dict.fromkeys(name for trial in trials for name in trial))
    infos = []
    for name in names:
        levels = _levels(trial[name] for trial in trials if name in trial)
        if name.startswith(SETTING) and len(levels) < 2:
            continue
        bare = name.split("/", 1)[-1]
        info = api_pb2.HParamInfo(name=name, display_name=bare, description=OFF_AS_ZERO.get(name, ""),
                                  differs=len(levels) > 1)
        hp.Discrete(levels).update_hparam_info(info)
        infos.append(info)
    return infos


def experiment_summary(trials: Sequence[Mapping[str, HParamValue]], metrics: Iterable[str]) -> summary_pb2.Summary:
    """The suite's HParams experiment: its columns (`hparam_infos`) and the `metrics` among `METRICS` it has."""
    metric_infos = [hp.Metric(tag, display_name=METRICS[tag][0], description=METRICS[tag][1],
                              dataset_type=hp.Metric.VALIDATION if tag.startswith("val/") else None).as_proto()
                    for tag in METRICS if tag in set(metrics)]
    experiment = api_pb2.Experiment(hparam_infos=hparam_infos(trials), metric_infos=metric_infos,
                                    time_created_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(experiment=experiment)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=hparams_metadata.EXPERIMENT_TAG, metadata=hparams_metadata.create_summary_metadata(data),
        tensor=hparams_metadata.NULL_TENSOR)])


def text_summary(tag: str, markdown: str) -> summary_pb2.Summary:
    """A Text-tab entry (markdown, tables included)."""
    tensor = tensor_pb2.TensorProto(dtype="DT_STRING", string_val=[markdown.encode()],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, metadata=text_metadata.create_summary_metadata(display_name=tag, description=""), tensor=tensor)])


def image_summary(tag: str, png: bytes) -> summary_pb2.Summary:
    """An Images-tab entry from PNG bytes, shown at their own size."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"image {tag!r} is not a PNG")
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])


def write_events(run_dir: Path, summaries: Iterable[summary_pb2.Summary], step: int = 0) -> None:
    """Write `summaries` to a new event file in `run_dir`, all at `step`."""
    writer = EventFileWriter(str(run_dir))
    try:
        for summary in summaries:
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    finally:
        writer.close()


def write_run(run_dir: Path, summaries: Sequence[summary_pb2.Summary], replace: bool) -> bool:
    """Write a whole run at once: into a temporary folder, then renamed to `run_dir`, so TensorBoard never sees
    half of it. An existing `run_dir` is replaced (`replace`) or kept (returns False: another process wrote it)."""
    run_dir = Path(run_dir)
    staging = run_dir.with_name(f".{run_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    write_events(staging, summaries)
    if replace:
        shutil.rmtree(run_dir, ignore_errors=True)
    try:
        os.rename(staging, run_dir)
        return True
    except OSError:  # it exists, written by another trial of the suite meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return False
