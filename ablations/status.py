"""What became of a trial, torch-free: its `TrialState`, `claim` (whether this process runs it, under its lock), the
one failure record (`record_failure`), and the checks that keep results trustworthy: no result of other settings
replaced silently, no precision recorded that did not run, a full disk or unwritable report said in one line.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ablations.store import SUPERSEDED_DIR, UnsafePath, folder_lock, read_result, write_json_atomic

if TYPE_CHECKING:
    from ablations.suite import RunOptions, Trial


class TrialState(str, Enum):
    """A trial's state as its engine reports it; a `str`, equal to its text."""

    DONE = "done"  # trained and tested here: result.json written
    SKIPPED = "skipped"  # already finished with exactly its settings, not rerun
    BUSY = "busy"  # another process holds its lock (or its Ray worker was lost): handed out again
    FAILED = "failed"  # error.json written (or nothing, when `claim` refused it); the sweep went on
    RUN = "run"  # the decision to train it here (`claim`), not a final state

    def __str__(self) -> str:  # format() and f-strings use it too
        return self.value


@dataclass(frozen=True)
class TrialStatus:
    """One trial's outcome: its name, state and, for a failed trial, the reason."""

    trial: str
    state: TrialState
    error: Optional[str] = None

    @property
    def final(self) -> bool:
        """False for BUSY (retried) and RUN (a decision)."""
        return self.state not in (TrialState.BUSY, TrialState.RUN)


def clash_line(trial: Trial, old: dict[str, Any]) -> str:
    """``pixel/seed=0 (epochs 1 there, 2 here)``: a trial whose folder holds a result of other settings."""
    changes = trial.changes(old)
    there, here = old.get("settings", {}), trial.hashed_settings()
    keys = sorted(k for k in set(there) | set(here) if there.get(k) != here.get(k))
    differ = ", ".join(f"{k} {json.dumps(there.get(k))} there, {json.dumps(here.get(k))} here" for k in keys)
    said = [differ or "the settings hash"] if "settings" in changes else []
    said += [f"{what} changed" for what in changes if what != "settings"]
    return f"{trial.name} ({', '.join(said)})"


class OtherSettings(ValueError):
    """The trial's folder holds a finished result of other settings, and no ``--force``: not replaced."""


# (folder, inode, mtime, size) -> the result read there, or why it cannot be trusted
_READ: dict[tuple[str, int, int, int], Union[dict[str, Any], ValueError, None]] = {}


def read_trial(trial: Trial, logdir: Path | str, fresh: bool = False, warn: bool = False) -> Optional[dict[str, Any]]:
    """The trial's trusted result (`read_result`), not read again unless `fresh` or changed (inode, mtime, size); None
    if absent or untrusted (the trial is rerun, that file kept as result.json.damaged; `warn` says so)."""
    paths = trial.paths(logdir)
    try:
        stat = os.stat(paths.result, follow_symlinks=False)
    except OSError:
        return None
    key = (str(paths.folder), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if fresh or key not in _READ:
        try:
            _READ[key] = read_result(paths.folder)
        except ValueError as error:
            _READ[key] = error
    found = _READ[key]
    if not isinstance(found, ValueError):
        return found
    if warn:
        print(f"warning: {found}; rerunning {trial.name} (it is kept as result.json.damaged)", file=sys.stderr)
    return None


def is_finished(trial: Trial, logdir: Path | str, warn: bool = True) -> bool:
    """True if the trial has a trusted result of exactly its settings; `warn` of an untrusted one (rerun)."""
    result = read_trial(trial, logdir, warn=warn)
    return result is not None and not trial.changes(result)


@contextmanager
def claim(trial: Trial, options: RunOptions, wait: bool = False) -> Iterator[TrialState]:
    """Decide under the trial's lock whether this process runs it: BUSY if another process holds it (unless
    `wait`), SKIPPED if it has a result of exactly its settings (re-read now), else RUN with the folder made ready.
    Raises `OtherSettings` for a result of other settings without ``--force``, `UnsafePath` for a symlink."""
    paths = trial.paths(options.logdir)
    paths.refuse_symlinks()
    with folder_lock(paths.folder, wait) as locked:
        if not locked:
            yield TrialState.BUSY
            return
        old = read_trial(trial, options.logdir, fresh=True)
        if old is not None and not options.force:
            if not trial.changes(old):
                yield TrialState.SKIPPED
                return
            raise OtherSettings(
                f"{clash_line(trial, old)}: another run left a result of other settings here; not replaced "
                "without --force"
            )
        paths.make_ready(old)
        yield TrialState.RUN


def record_failure(
    trial: Trial,
    logdir: Path | str,
    error: str,
    *,
    record: Optional[Mapping[str, Any]] = None,
    held: bool = False,
    **extra: Any,
) -> TrialStatus:
    """Write `trial`'s error.json (`record` or `Trial.record`, the reason, ``traceback`` and ``signal`` or None, and
    `extra`) unless another process holds the trial (not `held`) or it has a result; a failed write is said too."""
    paths = trial.paths(logdir)
    content = {**(record or trial.record()), "error": error, "traceback": None, "signal": None, **extra}
    try:
        if held:
            write_json_atomic(paths.error, content)
        else:
            with folder_lock(paths.folder) as locked:
                if locked and not paths.result.exists():
                    write_json_atomic(paths.error, content)
    except OSError as write_error:
        error += f" (and {paths.error} could not be written: {write_error.strerror})"
    except UnsafePath as unsafe:
        error += f" (and {paths.error} was not written: {unsafe})"
    return TrialStatus(trial.name, TrialState.FAILED, error)


SHOWN = 5  # trials named in a message; the rest are counted


def refuse_other_settings(trials: list[Trial], logdir: Path | str, force: bool) -> None:
    """Raise ValueError naming the trials and what differs if a folder holds a result of other settings and not
    `force` (each trial then moves it to ``superseded/``); `claim` checks again."""
    olds = [(trial, read_trial(trial, logdir)) for trial in trials]
    clashes = [clash_line(trial, old) for trial, old in olds if old is not None and trial.changes(old)]
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
    """Whether `error` says the disk or the quota is full."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def quiet_full_disk_in_threads() -> None:
    """A full disk in TensorBoard's writer thread goes unsaid in this process: the failed trial says it once."""

    def hook(args: Any) -> None:
        if not (isinstance(args.exc_value, OSError) and disk_full(args.exc_value)):
            threading.__excepthook__(args)

    threading.excepthook = hook


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
