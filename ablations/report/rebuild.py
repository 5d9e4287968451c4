"""``python -m ablations.report.rebuild LOGDIR/SUITE ... [--data-dir DIR]`` (``lit-cifar-board``): rewrite a suite's
TensorBoard events from its result.json files: per trial the scalars a trial writes and its weight histograms; per
suite the report and the ``_samples`` run (drawn with ``--data-dir``, else kept). Safe while a sweep runs (a locked
trial is left alone) and idempotent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from tensorboard.compat.proto import summary_pb2

from ablations.report import board
from ablations.store import RESULT_FILE, folder_lock, list_trials, read_result


def rebuild_trial(folder: Path, result: Mapping[str, Any]) -> tuple[bool, int]:
    """Rewrite one trial's events (its lock held); returns whether it changed and its histograms' count."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    files = [path for path in board.event_files(folder) if not path.name.endswith(board.SESSION_SUFFIX)]
    events = [event for path in files for event in LegacyEventFileLoader(str(path)).Load()]
    histograms: list[board.Step] = []
    walls: dict[int, float] = {}  # step -> wall time of its histograms
    for event in events:
        for value in event.summary.value:
            if value.HasField("histo"):
                histograms.append((event.step, summary_pb2.Summary(value=[value])))
                walls[event.step] = event.wall_time
    histograms.sort(key=lambda s: s[0])
    wanted = [board.trial_events(result)] + ([histograms] if histograms else [])
    if board.holds(files, wanted):
        return False, len(histograms)
    start = min((e.wall_time for e in events), default=(folder / RESULT_FILE).stat().st_mtime)
    duration, epochs = float(result.get("wall_time_s") or 0.0), max(len(result.get("history", [])), 1)
    board.write_events(folder, wanted[0], clock=lambda step: start + duration * step / epochs, suffix=".trial")
    if histograms:
        board.write_events(folder, histograms, clock=lambda step: walls.get(step, start), suffix=".histograms")
    for path in files:
        path.unlink()
    return True, len(histograms)


def draw_samples(data_dir: Path, settings: Mapping[str, Any]) -> bytes:
    """The suite's sample grid from the data, as a trial of these settings sees its training split."""
    from ablations.report import plots
    from lit_cifar import CIFAR10DataModule

    split = {k: settings[k] for k in ("val_size", "split_seed", "limit_train") if k in settings}
    dm = CIFAR10DataModule(data_dir=str(data_dir), **split)
    dm.prepare_data()
    dm.setup("fit")
    images, names = dm.class_examples()
    return plots.samples_chart(images.cpu().numpy(), names, board.SAMPLES_TITLE)


def rebuild_suite(suite_dir: Path, data_dir: Optional[Path] = None) -> str:
    """Rebuild every finished trial of the suite, then its suite-level runs and report; returns what it did."""
    from ablations.report.report import write_report

    done: list[tuple[bool, int]] = []  # per trial rebuilt: whether it changed, its histograms
    left_alone: list[str] = []
    settings = None
    for folder in list_trials(suite_dir).results:  # the results that count; re-read under each one's lock
        name = folder.relative_to(suite_dir)
        with folder_lock(folder) as locked:
            if not locked:
                left_alone.append(f"{name} (running: its lock is held)")
                continue
            try:
                result = read_result(folder)
            except ValueError as error:
                left_alone.append(f"{name} ({error})")
                continue
            if result is None:  # removed since it was listed
                continue
            done.append(rebuild_trial(folder, result))
        settings = settings or result["settings"]
    run = suite_dir / board.SAMPLES_RUN
    if data_dir is not None and settings is not None:
        board.write_run(run, [board.image_summary(board.SAMPLES_TAG, draw_samples(data_dir, settings))], replace=True)
        samples = f"drawn from {data_dir}"
    elif run.is_dir() and board.event_files(run):
        samples = "kept the existing _samples run"
    else:
        samples = "none (no _samples run: pass --data-dir to draw it)"
    try:
        write_report(suite_dir)
        report = "written (results.md/.csv, charts, _report, _hparams, each trial's session record)"
    except ValueError as error:
        report = f"not written: {error}"
    rebuilt = sum(changed for changed, _ in done)
    lines = [
        f"{suite_dir}: {rebuilt} trials rebuilt, {len(done) - rebuilt} already current; weight histograms carried "
        f"over for {sum(bool(histograms) for _, histograms in done)}",
        f"  samples: {samples}",
        f"  report: {report}",
    ]
    return "\n".join(lines + [f"  left alone: {why}" for why in left_alone])


def _suite_dir(text: str) -> Path:
    path = Path(text)
    if not any(path.glob(f"*/seed=*/{RESULT_FILE}")):
        what = f"holds no <spec>/seed=<s>/{RESULT_FILE}" if path.is_dir() else "is not a folder"
        raise argparse.ArgumentTypeError(
            f"{text} {what}: give a suite's folder (the logdir's subfolder named after the suite), e.g. "
            "logs/replication/notebook"
        )
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.report.rebuild", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "suite_dirs", nargs="+", type=_suite_dir, metavar="SUITE_DIR", help="e.g. logs/replication/notebook"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="the CIFAR-10 folder the suite was trained on, to draw its _samples run (else an existing one is kept)",
    )
    args = parser.parse_args(argv)
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    for suite_dir in args.suite_dirs:
        print(rebuild_suite(suite_dir, args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
