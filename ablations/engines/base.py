"""What every engine is: an `Executor` takes a sweep's trials and returns their statuses in trial order, and
`Progress`, the sweep's one bar.

Whatever runs a trial keeps its folder's contract (`ablations.trial.run_trial`, `ablations.status.claim`,
`ablations.status.record_failure`), so every engine resumes every other on one logdir.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod

from ablations.status import TrialStatus, split_finished
from ablations.suite import RunOptions, Trial


class Executor(ABC):
    """Runs a sweep's trials somewhere. A new engine (SLURM, say) is one subclass implementing `execute`, chosen by
    `ablations.engines.make_executor`; its trials run `ablations.trial.run_trial` wherever they run, and it stops
    when `ablations.signals.Interrupted` is raised, leaving no running trial behind."""

    skip_finished: bool = True  # False under DDP: every rank goes through run_trial, where rank 0 decides

    def run(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        """The status of each of `trials`, in order: SKIPPED for the finished ones (unless ``options.force``; no
        worker or task starts for them), what `execute` reports for the others."""
        skipped, todo = split_finished(trials, options) if self.skip_finished else ({}, list(range(len(trials))))
        statuses = dict(skipped)
        if todo:
            statuses.update(zip(todo, self.execute([trials[i] for i in todo], options)))
        return [statuses[i] for i in range(len(trials))]

    @abstractmethod
    def execute(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        """Run `trials`; one final `TrialStatus` each (DONE, SKIPPED or FAILED, never BUSY: a trial another sweep
        holds is retried, waiting for its lock), in trial order."""


class Progress:
    """The statuses of a sweep's trials as they come in, and one terminal bar: trials done out of all, naming the
    trials running now."""

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

    def stopped(self, index: int) -> None:
        """A started trial that will be handed out again (its worker was lost)."""
        self.running.remove(self.trials[index].name)
        self._show()

    def finished(self, index: int, status: TrialStatus) -> TrialStatus:
        """Record a trial's status (BUSY is not final: it is retried) and return it."""
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
