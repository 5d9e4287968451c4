"""Rewrite a suite's TensorBoard events from its result.json files, in the current layout:

    python -m ablations.report.rebuild LOGDIR/SUITE [LOGDIR/SUITE ...] [--data-dir DIR]   # or: lit-cifar-board

For every finished trial (``<suite>/<cell>/seed=<s>/result.json``):

- one event file (``*.trial``) with what `ablations.report.board.trial_events` makes of result.json, the same as a trial
  of the current code writes while it trains: per-epoch scalars at steps 1..E, the test scalars at E;
- the weight histograms, which result.json does not hold, carried over from the old event files into one file
  (``*.histograms``); the old code logged them at steps 0..E-1, which become 1..E like the scalars;
- every other old event file is deleted (old scalars on the global-step axis, per-trial sample images, HParams
  records of the old layout); the session record (``*.hparams``) is the report's. ``hparams.yaml`` and result.json
  are not touched.

Per suite: the report (`ablations.report`: results.md/.csv, the charts, the ``_report`` run), the HParams
experiment record (``_hparams``) and each trial's session record and settings text; the spec-mean runs of older
code (``_by_spec``) are removed; and the ``_samples`` run: drawn from the data with
``--data-dir``; else an existing ``_samples`` run is kept; else the first old per-trial sample image moves into it;
else there is none (said on the output).

What cannot be rebuilt: numbers result.json never held (an old trial's ``*/ce``, ``val/bn_*`` or
``train/maxnorm_rescaled``), and the weight histograms of trials whose event files are gone.

Safe while a sweep runs on the suite: a trial whose lock is held (it is training) or that has no result.json is
left alone, and each trial is rebuilt under its lock. Idempotent: a run that already holds exactly what would be
written (wall times aside) is left untouched, so a second rebuild changes no file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import summary_pb2

from ablations.report import board
from ablations.store import RESULT_FILE, folder_lock, list_trials, read_result

OLD_SAMPLE_TAGS = ("data/one_training_image_per_class", board.SAMPLES_TAG)  # per-trial images of older code


@dataclass
class Outcome:
    """What a rebuild did to one suite."""

    rebuilt: int = 0
    unchanged: int = 0
    with_histograms: int = 0
    left_alone: list[str] = field(default_factory=list)
    samples: str = ""
    report: str = ""

    def summary(self, suite_dir: Path) -> str:
        lines = [
            f"{suite_dir}: {self.rebuilt} trials rebuilt, {self.unchanged} already current; weight histograms "
            f"carried over for {self.with_histograms}",
            f"  samples: {self.samples}",
            f"  report: {self.report}",
        ]
        lines += [f"  left alone: {why}" for why in self.left_alone]
        return "\n".join(lines)


@dataclass(frozen=True)
class OldEvents:
    """What a trial's existing event files hold that result.json does not."""

    start: Optional[float]  # the earliest wall time (None: no events)
    histograms: list[board.Step]
    wall_times: dict[int, float]  # histogram step -> its wall time
    sample_png: Optional[bytes]


def read_old_events(folder: Path, epochs: int) -> OldEvents:
    """The histograms (re-stepped to epochs trained), the first sample image and the earliest wall time of the
    event files in a trial's folder."""
    files = board.event_files(folder)
    if not files:
        return OldEvents(None, [], {}, None)
    start = min(e.wall_time for path in files for e in _raw_events(path))
    events = EventAccumulator(
        str(folder), size_guidance={"histograms": 0, "images": 1, "scalars": 1, "tensors": 1}, purge_orphaned_data=False
    )
    events.Reload()
    tags = events.Tags()
    histograms, walls = [], {}
    for tag in tags.get("histograms", []):
        points = events.Histograms(tag)
        shift = 1 if sorted(p.step for p in points) == list(range(epochs)) else 0  # 0-based by older code
        for point in points:
            h = point.histogram_value
            proto = summary_pb2.HistogramProto(
                min=h.min,
                max=h.max,
                num=h.num,
                sum=h.sum,
                sum_squares=h.sum_squares,
                bucket_limit=h.bucket_limit,
                bucket=h.bucket,
            )
            histograms.append(
                (point.step + shift, summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, histo=proto)]))
            )
            walls[point.step + shift] = point.wall_time
    png = next(
        (events.Images(tag)[0].encoded_image_string for tag in OLD_SAMPLE_TAGS if tag in tags.get("images", [])), None
    )
    return OldEvents(start, sorted(histograms, key=lambda s: s[0]), walls, png)


def _raw_events(path: Path) -> list[Any]:
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    return [event_pb2.Event.FromString(raw) for raw in RawEventFileLoader(str(path)).Load()]


def rebuild_trial(folder: Path, result: Mapping[str, Any]) -> tuple[bool, OldEvents]:
    """Rewrite one trial's events (see the module docstring); returns whether anything changed and what the
    old events held. The caller holds the trial's lock."""
    history = result.get("history", [])
    epochs = max(len(history), 1)
    old = read_old_events(folder, len(history))
    start = old.start if old.start is not None else (folder / RESULT_FILE).stat().st_mtime
    duration = float(result.get("wall_time_s") or 0.0)
    wanted = [board.trial_events(result)] + ([old.histograms] if old.histograms else [])
    files = [path for path in board.event_files(folder) if not path.name.endswith(board.SESSION_SUFFIX)]
    if board.holds(files, wanted):
        return False, old
    board.write_events(folder, wanted[0], clock=lambda step: start + duration * step / epochs, suffix=".trial")
    if old.histograms:
        board.write_events(
            folder, old.histograms, clock=lambda step: old.wall_times.get(step, start), suffix=".histograms"
        )
    for path in files:
        path.unlink()
    return True, old


def draw_samples(data_dir: Path, settings: Mapping[str, Any]) -> bytes:
    """The suite's sample grid from the data, as a trial of these settings sees its training split."""
    from ablations.report import plots
    from lit_cifar import CIFAR10DataModule

    dm = CIFAR10DataModule(
        data_dir=str(data_dir),
        val_size=settings.get("val_size", 5000),
        split_seed=settings.get("split_seed", 0),
        limit_train=settings.get("limit_train"),
    )
    dm.prepare_data()
    dm.setup("fit")
    images, names = dm.class_examples()
    return plots.samples_chart(images.cpu().numpy(), names, board.SAMPLES_TITLE)


def rebuild_suite(suite_dir: Path, data_dir: Optional[Path] = None) -> Outcome:
    """Rebuild every finished trial of the suite, then its suite-level runs and report."""
    from ablations.report import report

    outcome, settings, old_png = Outcome(), None, None
    for folder in list_trials(suite_dir).results:  # the results that count; re-read under each one's lock
        name = str(folder.relative_to(suite_dir))
        with folder_lock(folder) as locked:
            if not locked:
                outcome.left_alone.append(f"{name} (running: its lock is held)")
                continue
            try:
                result = read_result(folder)
            except ValueError as error:
                outcome.left_alone.append(f"{name} ({error})")
                continue
            if result is None:  # removed since it was listed
                continue
            changed, old = rebuild_trial(folder, result)
        settings = settings or result["settings"]
        old_png = old_png or old.sample_png
        outcome.rebuilt += changed
        outcome.unchanged += not changed
        outcome.with_histograms += bool(old.histograms)
    outcome.samples = _samples(suite_dir, data_dir, settings, old_png)
    shutil.rmtree(suite_dir / "_by_spec", ignore_errors=True)  # the spec-mean runs of older code
    try:
        report.write_report(suite_dir)
        outcome.report = "written (results.md/.csv, charts, _report, _hparams, each trial's session record)"
    except ValueError as error:
        outcome.report = f"not written: {error}"
    return outcome


def _samples(
    suite_dir: Path, data_dir: Optional[Path], settings: Optional[Mapping[str, Any]], old_png: Optional[bytes]
) -> str:
    run = suite_dir / board.SAMPLES_RUN
    if data_dir is not None and settings is not None:
        board.write_run(run, [board.image_summary(board.SAMPLES_TAG, draw_samples(data_dir, settings))], replace=True)
        return f"drawn from {data_dir}"
    if run.is_dir() and board.event_files(run):
        return "kept the existing _samples run"
    if old_png is not None:
        board.write_run(run, [board.image_summary(board.SAMPLES_TAG, old_png)], replace=True)
        return "moved an old trial's sample image into _samples"
    return "none (no _samples run, no old sample image: pass --data-dir to draw it)"


def _suite_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is not a folder: give a suite's folder, e.g. logs/replication/notebook"
        )
    if not any(path.glob(f"*/seed=*/{RESULT_FILE}")):
        raise argparse.ArgumentTypeError(
            f"{text} holds no <spec>/seed=<s>/{RESULT_FILE}: give a suite's folder "
            "(the logdir's subfolder named after the suite), e.g. logs/replication/"
            "notebook"
        )
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ablations.report.rebuild", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "suite_dirs",
        nargs="+",
        type=_suite_dir,
        metavar="SUITE_DIR",
        help="a suite's folder under a logdir, e.g. logs/replication/notebook",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="the CIFAR-10 folder the suite was trained on, to draw its _samples run (without it an "
        "existing _samples run is kept)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_dir is not None and not args.data_dir.is_dir():
        build_parser().error(f"--data-dir {args.data_dir} is not a folder")
    for suite_dir in args.suite_dirs:
        print(rebuild_suite(suite_dir, args.data_dir).summary(suite_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
