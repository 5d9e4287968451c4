"""Checks that keep a sweep's results trustworthy, torch-free: a finished result of other settings is never replaced
silently (`refuse_other_settings`), no result records a precision that did not run (`check_precision`), and a full
disk or an unwritable report is one line, not a traceback.
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


def refuse_other_settings(trials: list[Trial], logdir: Path | str, force: bool) -> None:
    """Raise ValueError naming the trials and what differs if a folder holds a finished result of other settings
    and not `force` (each trial then moves it to ``superseded/``); `ablations.status.claim` checks again."""
    clashes = []
    for trial in trials:
        try:
            old = read_trial(trial, logdir)
        except ValueError:  # cannot be trusted: rerun like a trial that never finished
            continue
        if old is not None and trial.changes(old):
            clashes.append(clash_line(trial, old))
    if not clashes or force:
        return
    more = f"; and {len(clashes) - SHOWN} more" if len(clashes) > SHOWN else ""
    raise ValueError(
        f"{len(clashes)} trial(s) in --logdir {logdir} already finished with other settings, model source or data, "
        f"which this run would replace: {'; '.join(clashes[:SHOWN])}{more}. Give another --logdir to keep both, or "
        f"--force to rerun them here (each old result is kept in its trial's {SUPERSEDED_DIR}/<settings hash>/)"
    )


def check_precision(requested: str, trainer: Any) -> None:
    """Raise ValueError if the `trainer` would run another precision (``16-mixed`` on a CPU runs ``bf16-mixed``)."""
    ran = str(trainer.precision)
    if ran != requested:
        raise ValueError(
            f"--precision {requested}: on this accelerator Lightning would run {ran} instead, and the "
            f"results would say {requested}; pass --precision {ran} (or run on a GPU)"
        )


def disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _thread_failed(args: Any) -> None:
    """``threading.excepthook``: a full disk in TensorBoard's writer thread is said once, by the failed trial."""
    if not (isinstance(args.exc_value, OSError) and disk_full(args.exc_value)):
        threading.__excepthook__(args)


def quiet_full_disk_in_threads() -> None:
    """Install `_thread_failed` in this process (a sweep's, or a worker's)."""
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
    """(table, None, False) if the report was written, else (None, why not, whether that is an error)."""
    from ablations.report import write_report

    try:
        kwargs = {} if margin is None else {"margin": margin}
        return write_report(suite_dir, reference=reference, settings=settings, **kwargs), None, False
    except OSError as error:
        return None, report_problem(error, suite_dir), True
    except ValueError as error:  # e.g. no finished trial at all: nothing to tabulate
        return None, f"no report: {error}", False
