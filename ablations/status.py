"""What became of a trial, torch-free: its `TrialState`, the one decision whether this process runs it (`claim`),
and the one failure record every engine writes (`record_failure`).

A `TrialStatus` holds a trial's name, its `TrialState` and, when it failed, why; the state is a `str` enum, so it
compares equal to its text (``status.state == "done"``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ablations.store import UnsafePath, folder_lock, read_result, write_json_atomic

if TYPE_CHECKING:
    from ablations.suite import RunOptions, Trial

__all__ = [
    "FAILURE_FIELDS",
    "OtherSettings",
    "TrialState",
    "TrialStatus",
    "already_done",
    "claim",
    "is_finished",
    "read_trial",
    "record_failure",
    "refusal",
    "split_finished",
]

# What every error.json holds besides `Trial.record`, whichever engine wrote it.
FAILURE_FIELDS = ("error", "traceback", "signal")


class TrialState(str, Enum):
    """A trial's state as its engine reports it; the values are the texts the statuses always used."""

    DONE = "done"  # trained and tested here: result.json written
    SKIPPED = "skipped"  # already finished (a result of exactly its settings), not rerun
    BUSY = "busy"  # another process holds its lock; retried after the others, waiting for it
    FAILED = "failed"  # error.json written; the sweep went on
    RUN = "run"  # the decision to train it here (`claim`), not a final state

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class TrialStatus:
    """One trial's outcome: its name, state and, for a failed trial, the reason."""

    trial: str
    state: TrialState
    error: Optional[str] = None

    @property
    def final(self) -> bool:
        """False for BUSY (retried) and RUN (a decision): the engine waits for a final state."""
        return self.state not in (TrialState.BUSY, TrialState.RUN)


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``epochs 1 -> 2, lr 0.001 -> 0.01``: the settings that differ between two hashed-settings dicts."""
    keys = sorted(set(old) | set(new))
    changed = [
        f"{k} {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} here" for k in keys if old.get(k) != new.get(k)
    ]
    return ", ".join(changed) or "the settings hash"


def clash_line(trial: Trial, old: dict[str, Any]) -> str:
    """``pixel/seed=0 (epochs 1 there, 2 here)``, ``pixel/seed=0 (model source changed)``: a trial whose folder
    holds a result of other settings, or of another model source or data."""
    changes = trial.changes(old)
    said = [differences(old.get("settings", {}), trial.hashed_settings())] if "settings" in changes else []
    said += [f"{what} changed" for what in changes if what != "settings"]
    return f"{trial.name} ({', '.join(said)})"


class OtherSettings(ValueError):
    """The trial's folder holds a finished result of other settings, and no ``--force``: not replaced."""


# (path, inode, mtime, size) -> the result read there, or the reason it cannot be trusted: before training a sweep
# reads and checksums each result.json once (`read_trial`); `claim` re-reads it under the trial's lock.
_READ: dict[tuple[str, int, int, int], Union[dict[str, Any], ValueError, None]] = {}


def read_trial(trial: Trial, logdir: Path | str, fresh: bool = False) -> Optional[dict[str, Any]]:
    """`read_result` of the trial's folder (None: no result; ValueError: one that cannot be trusted). Unless
    `fresh`, a file read before and unchanged since (same inode, modification time and size) is not read again."""
    paths = trial.paths(logdir)
    folder = paths.folder
    try:
        stat = os.stat(paths.result, follow_symlinks=False)
    except OSError:
        return read_result(folder)
    key = (str(folder), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if fresh or key not in _READ:
        try:
            _READ[key] = read_result(folder)
        except ValueError as error:
            _READ[key] = error
    found = _READ[key]
    if isinstance(found, ValueError):
        raise found
    return found


def is_finished(trial: Trial, logdir: Path | str, warn: bool = True) -> bool:
    """True if the trial has a trusted result.json for exactly its settings. One that cannot be trusted (e.g.
    truncated) counts as not finished, so the trial is rerun rather than silently counted; ``warn`` reports it on
    stderr."""
    try:
        result = read_trial(trial, logdir)
    except ValueError as error:
        if warn:
            print(f"warning: {error}; rerunning {trial.name} (it is kept as result.json.damaged)", file=sys.stderr)
        return False
    return result is not None and not trial.changes(result)


def already_done(trial: Trial, options: RunOptions, warn: bool = True) -> bool:
    """The "already finished?" check: a result of exactly its settings, and no ``--force``."""
    return not options.force and is_finished(trial, options.logdir, warn)


def split_finished(
    trials: Sequence[Trial], options: RunOptions, warn: bool = False
) -> tuple[dict[int, TrialStatus], list[int]]:
    """The SKIPPED statuses of the trials `already_done` (by index) and the indices of the others, so an engine
    starts nothing for a finished trial."""
    skipped = {
        i: TrialStatus(t.name, TrialState.SKIPPED) for i, t in enumerate(trials) if already_done(t, options, warn)
    }
    return skipped, [i for i in range(len(trials)) if i not in skipped]


@contextmanager
def claim(trial: Trial, options: RunOptions, wait: bool = False) -> Iterator[TrialState]:
    """Decide whether this process runs `trial`, the one place that does, under the trial's lock: BUSY if another
    process holds it (unless `wait`: then wait for it), SKIPPED if it holds a result of exactly its settings (re-read
    now: another sweep may have finished it meanwhile), else RUN, with the lock held while the block runs and the
    folder made ready (`ablations.store.TrialPaths.make_ready`: any finished result moved to ``superseded/``).

    Raises:
        OtherSettings: the folder holds a finished result of other settings and not ``--force`` (checked under the
            lock, so a concurrent sweep with other settings never replaces it).
        UnsafePath: the trial's folder, its cell's, its suite's or its lock is a symlink.
    """
    paths = trial.paths(options.logdir)
    paths.refuse_symlinks()
    with folder_lock(paths.folder, wait) as locked:
        if not locked:
            yield TrialState.BUSY
            return
        try:
            old = read_trial(trial, options.logdir, fresh=True)
        except ValueError:
            old = None  # make_ready keeps it as result.json.damaged, and the trial is rerun
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


def refusal(trial: Trial, error: ValueError) -> TrialStatus:
    """The FAILED status of a trial `claim` refused (`OtherSettings`, `UnsafePath`); nothing is written."""
    return TrialStatus(trial.name, TrialState.FAILED, str(error))


def record_failure(
    trial: Trial,
    logdir: Path | str,
    error: str,
    *,
    traceback: Optional[str] = None,
    signal: Optional[str] = None,
    record: Optional[Mapping[str, Any]] = None,
    held: bool = False,
    **extra: Any,
) -> TrialStatus:
    """Write `trial`'s error.json and return its FAILED status; every engine records a failure through this.

    error.json holds `record` (`Trial.record`, plus the environment when the trial got that far), `error` (the
    reason), `traceback`, `signal` (the name of the signal that ended the trial's process, else None) and `extra`
    (an engine's own, e.g. Ray's ``engine`` and ``attempts``). `held`: the caller holds the trial's lock (it was
    training it); otherwise the lock is taken without waiting, and nothing is written if another process holds it
    or the trial has a result. A write that fails (a full disk) is added to the reason instead of raised.
    """
    paths = trial.paths(logdir)
    content = {
        **(trial.record() if record is None else record),
        "error": error,
        "traceback": traceback,
        "signal": signal,
        **extra,
    }
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
