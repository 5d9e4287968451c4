"""What became of a trial, torch-free: its `TrialState`, the one decision whether this process runs it (`claim`),
and the one failure record every engine writes (`record_failure`).

A `TrialStatus` holds a trial's name, its `TrialState` and, when it failed, why; the state is a `str` enum, so it
compares equal to its text (``status.state == "done"``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ablations.store import folder_lock, read_result, write_json_atomic

if TYPE_CHECKING:
    from ablations.suite import RunOptions, Trial

__all__ = [
    "FAILURE_FIELDS",
    "TrialState",
    "TrialStatus",
    "already_done",
    "claim",
    "is_finished",
    "record_failure",
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


def is_finished(trial: Trial, logdir: Path | str, warn: bool = True) -> bool:
    """True if the trial has a readable result.json for exactly its settings. An unreadable (e.g. truncated)
    one counts as not finished, so the trial is rerun rather than silently counted; ``warn`` reports it on stderr."""
    try:
        result = read_result(trial.paths(logdir).folder)
    except ValueError as error:
        if warn:
            print(f"warning: {error}; rerunning {trial.name}", file=sys.stderr)
        return False
    return result is not None and result["settings_hash"] == trial.settings_hash


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
    """Decide whether this process runs `trial`, the one place that does: SKIPPED if `already_done` (checked before
    and again after taking the lock: another sweep may have finished it meanwhile), BUSY if another process holds
    its lock (unless `wait`: then wait for it), else RUN, with the trial's lock held while the block runs."""
    if already_done(trial, options):
        yield TrialState.SKIPPED
        return
    with folder_lock(trial.paths(options.logdir).folder, wait) as locked:
        if not locked:
            yield TrialState.BUSY
        elif already_done(trial, options):
            yield TrialState.SKIPPED
        else:
            yield TrialState.RUN


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
    return TrialStatus(trial.name, TrialState.FAILED, error)
