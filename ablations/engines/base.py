"""What every engine is: an `Executor` takes a sweep's trials and returns their statuses in trial order (its trials
run `ablations.trial.run_trial`, so every engine resumes every other on one logdir); `Progress`, the one bar.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod

from ablations.status import TrialState, TrialStatus, is_finished
from ablations.suite import RunOptions, Trial


class Executor(ABC):
    """Runs a sweep's trials somewhere: a new engine implements `execute` (stopping on `Interrupted`)."""

    skip_finished: bool = True  # False under DDP: every rank goes through run_trial, where rank 0 decides

    def run(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        """The status of each of `trials`, in order: finished ones SKIPPED (none with ``--force``), the others run."""
        skip = self.skip_finished and not options.force
        done = [skip and is_finished(t, options.logdir, warn=False) for t in trials]
        todo = [t for t, d in zip(trials, done) if not d]
        ran = iter(self.execute(todo, options) if todo else [])
        return [TrialStatus(t.name, TrialState.SKIPPED) if d else next(ran) for t, d in zip(trials, done)]

    @abstractmethod
    def execute(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        """Run `trials`; one final `TrialStatus` each (never BUSY), in trial order."""


class Progress:
    """The statuses of a sweep's trials as they come in, and its one bar (naming the trials running now)."""

    def __init__(self, trials: list[Trial], show: bool) -> None:
        from tqdm import tqdm

        self.trials = trials
        self.statuses: dict[int, TrialStatus] = {}
        self.running: list[str] = []
        self.bar = tqdm(
            total=len(trials), desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True, disable=not show
        )

    def started(self, index: int) -> None:
        self.running.append(self.trials[index].name)
        self._show()

    def finished(self, index: int, status: TrialStatus) -> TrialStatus:
        """Record a trial's status (BUSY is not final: the trial is handed out again) and return it."""
        if self.trials[index].name in self.running:
            self.running.remove(self.trials[index].name)
        self._show(refresh=not status.final)
        if status.final:
            self.statuses[index] = status
            self.bar.update()
        return status

    def _show(self, refresh: bool = True) -> None:
        self.bar.set_postfix_str(f"running {', '.join(self.running)}" if self.running else "", refresh=refresh)

    def close(self) -> None:
        self.bar.close()

    def in_order(self) -> list[TrialStatus]:
        """The final statuses, in trial order (every trial must have one)."""
        return [self.statuses[index] for index in range(len(self.trials))]
