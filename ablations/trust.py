"""Checks that keep a sweep's results trustworthy: nothing finished is lost, nothing is recorded as what did not run,
and the end of a sweep always says what finished, even when its report cannot be written.

- `refuse_other_settings`: a trial folder that holds a finished result of other settings (e.g. ``--epochs 1`` there,
  ``--epochs 2`` now) stops the run before anything trains, unless ``--force``; `ablations.status.claim` checks it
  again under the trial's lock. With ``--force`` any finished result, of these settings or others, is moved to
  ``superseded/<its settings hash>/`` (`ablations.store.TrialPaths.make_ready`), never deleted.
- `check_precision`: a precision Lightning would replace on this machine (``16-mixed`` on a CPU runs as
  ``bf16-mixed``) is refused, so that no result records a precision that did not run.
- `write_report_or_say_why`: a report that cannot be written (a full disk) is a message, not a traceback.
- `quiet_full_disk_in_threads`: a full disk in TensorBoard's writer threads is not a traceback per thread; the
  trial fails with it, in one line.

Imports neither torch nor Lightning (the Trainer to check is passed in).
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any, Optional

from ablations.status import clash_line, read_trial
from ablations.store import SUPERSEDED_DIR
from ablations.suite import Trial

SHOWN = 5  # trials named in a message; the rest are counted


def finished_with_other_settings(trials: list[Trial], logdir: Path | str) -> list[tuple[Trial, dict[str, Any]]]:
    """The trials whose folder holds a trusted, finished result of other settings, with that result."""
    clashes = []
    for trial in trials:
        try:
            old = read_trial(trial, logdir)
        except ValueError:  # cannot be trusted: rerun like a trial that never finished
            continue
        if old is not None and trial.changes(old):
            clashes.append((trial, old))
    return clashes


def refuse_other_settings(trials: list[Trial], logdir: Path | str, force: bool) -> None:
    """Raise ValueError, naming the trials and what differs, if any trial's folder holds a finished result of other
    settings and not `force` (the run would replace it). With `force` the run goes on and each trial moves the old
    result aside when it starts. `ablations.status.claim` checks again under each trial's lock."""
    clashes = finished_with_other_settings(trials, logdir)
    if not clashes or force:
        return
    shown = "; ".join(clash_line(trial, old) for trial, old in clashes[:SHOWN])
    more = f"; and {len(clashes) - SHOWN} more" if len(clashes) > SHOWN else ""
    raise ValueError(
        f"{len(clashes)} trial(s) in --logdir {logdir} already finished with other settings, model source or "
        "data, which "
        f"this run would replace: {shown}{more}. Give another --logdir to keep both, or --force to "
        f"rerun them here (each old result is kept in its trial's {SUPERSEDED_DIR}/<settings hash>/)"
    )


def check_precision(requested: str, trainer: Any) -> None:
    """Raise ValueError if the `trainer` built for `requested` precision would run another one (Lightning falls
    back from ``16-mixed`` to ``bf16-mixed`` on a CPU, with a warning only)."""
    ran = str(trainer.precision)
    if ran != requested:
        raise ValueError(
            f"--precision {requested}: on this accelerator Lightning would run {ran} instead, and the "
            f"results would say {requested}; pass --precision {ran} (or run on a GPU)"
        )


def disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _thread_failed(args: Any) -> None:
    """``threading.excepthook``: a full disk in a writer thread (TensorBoard's event writer) is said once, by the
    trial that fails with it, not with a traceback per thread; anything else goes to Python's own hook."""
    if isinstance(args.exc_value, OSError) and disk_full(args.exc_value):
        return
    threading.__excepthook__(args)


def quiet_full_disk_in_threads() -> None:
    """Install `_thread_failed` in this process (a sweep's, or a worker's that trains trials)."""
    threading.excepthook = _thread_failed


def report_problem(error: OSError, suite_dir: Path) -> str:
    """One line saying why the report of `suite_dir` could not be written."""
    full = disk_full(error)
    why = "the disk is full" if full else (error.strerror or str(error))
    then = "free some space and run" if full else "run"
    return (
        f"the report in {suite_dir} could not be written: {why} ({error.filename or suite_dir}). The trials' "
        f"results are kept; {then} `python -m ablations.report {suite_dir}`"
    )


def write_report_or_say_why(
    suite_dir: Path, reference: Optional[str], settings: Optional[str], margin: Optional[float] = None
) -> tuple[Optional[str], Optional[str], bool]:
    """(the report's table, None, False) when it was written; else (None, why not, whether that is an error): a
    full disk or an unwritable folder is one (the sweep exits 1), a folder with nothing to report is not."""
    from ablations.report import write_report

    try:
        kwargs = {} if margin is None else {"margin": margin}
        return write_report(suite_dir, reference=reference, settings=settings, **kwargs), None, False
    except OSError as error:
        return None, report_problem(error, suite_dir), True
    except ValueError as error:  # e.g. no finished trial at all: nothing to tabulate
        return None, f"no report: {error}", False
