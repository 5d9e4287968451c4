"""``--pack K``: a sweep's trials run in packs, one pack at a time in this process (`PackExecutor`).

Each member's lock is held while its pack trains (`ablations.status.claim`); a member finished or running elsewhere
is left out, so a partly finished pack trains only the others, and members another sweep is running are retried at
the end, waiting for their locks. Which trials pack together and how a pack trains is `ablations.packs`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, ClassVar

from ablations.engines.base import Executor, Progress
from ablations.packs import make_packs
from ablations.signals import raise_if_interrupted
from ablations.status import TrialState, TrialStatus, claim, record_failure
from ablations.suite import RunOptions, Trial

__all__ = ["PackExecutor", "run_pack", "run_packed"]


def _record_pack(trials: Sequence[Trial], options: RunOptions) -> list[TrialStatus]:
    """Train the pack (its members' locks held) and write each member's result.json or error.json."""
    from ablations.packs import train_and_test_pack
    from ablations.store import write_result
    from ablations.trial import environment, release_memory

    for trial in trials:
        trial.paths(options.logdir).clear()
    names = [t.name for t in trials]
    shared = environment()
    records = [
        {**t.record(), "environment": {**shared, "pack": {"size": len(trials), "index": k, "members": names}}}
        for k, t in enumerate(trials)
    ]
    try:
        outcomes = train_and_test_pack(trials, options)
    except Exception as error:  # the whole pack failed: every member records it, the sweep goes on
        reason = f"{type(error).__name__}: {error}"
        outcomes = [{"error": reason, "traceback": traceback.format_exc()} for _ in trials]
    finally:
        release_memory()
    statuses = []
    for trial, record, outcome in zip(trials, records, outcomes):
        if "result" in outcome:
            write_result(trial.paths(options.logdir).result, {**record, **outcome["result"]})
            statuses.append(TrialStatus(trial.name, TrialState.DONE))
        else:
            statuses.append(
                record_failure(
                    trial,
                    options.logdir,
                    outcome["error"],
                    traceback=outcome.get("traceback"),
                    record=record,
                    held=True,
                )
            )
    return statuses


def run_pack(trials: Sequence[Trial], options: RunOptions, wait: bool = False) -> list[TrialStatus]:
    """Train the members of a pack that are neither finished nor running elsewhere, as one pack; never raises for
    a failing pack. Returns each member's status, as `ablations.trial.run_trial` does for one trial."""
    statuses: dict[str, TrialStatus] = {}
    with ExitStack() as locks:
        todo = []
        for trial in trials:
            state = locks.enter_context(claim(trial, options, wait))
            if state is TrialState.RUN:
                todo.append(trial)
            else:
                statuses[trial.name] = TrialStatus(trial.name, state)
        if todo:
            statuses.update((s.trial, s) for s in _record_pack(todo, options))
    return [statuses[t.name] for t in trials]


def run_packed(trials: Sequence[Trial], options: RunOptions, size: int, progress: Progress) -> list[TrialStatus]:
    """Run `trials` in packs of at most `size`, one pack at a time in this process; members another sweep is
    running are retried at the end, waiting for their locks. The statuses in trial order."""
    index = {t.name: i for i, t in enumerate(trials)}
    pending, wait = list(trials), False
    while pending:
        busy = []
        for pack in make_packs(pending, size):
            raise_if_interrupted()
            for trial in pack:
                progress.started(index[trial.name])
            print(f"pack of {len(pack)}: {', '.join(t.name for t in pack)}", file=sys.stderr)
            for trial, status in zip(pack, run_pack(pack, options, wait)):
                if not progress.finished(index[trial.name], status).final:
                    busy.append(trial)
        pending, wait = busy, True
    return progress.in_order()


class PackExecutor(Executor):
    """The local engine with packs: trials in packs of at most `size` members, one pack at a time."""

    name: ClassVar[str] = "packs"

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"pack size {size} must be >= 1")
        self.size = size

    def execute(self, trials: list[Trial], options: RunOptions) -> list[Any]:
        progress = Progress(trials, show=len(trials) > 1)
        try:
            return run_packed(trials, options, self.size, progress)
        finally:
            progress.close()
