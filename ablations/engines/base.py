"""What every engine is: an `Executor` takes a sweep's trials and returns their statuses, in trial order.

`Executor.run` leaves out the trials that are already finished (no worker or task starts for them) and hands the
others to `Executor.execute`, the one method an engine implements. Whatever runs a trial, the trial's folder follows
one contract (`ablations.trial.run_trial`, `ablations.status.claim`): results written atomically under the trial's
``flock``, failures by `ablations.status.record_failure`, so every engine resumes every other on one logdir.

`Progress` is the sweep's one bar and the statuses as they come in, for an engine that hands trials out one at a
time (local workers, Ray tasks).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from typing import ClassVar

from ablations.status import TrialStatus, split_finished
from ablations.suite import RunOptions, Trial

__all__ = ["Executor", "Progress"]


class Executor(ABC):
    """Runs a sweep's trials somewhere: in this process, worker processes, Ray tasks, packs.

    A third engine (a SLURM executor, say) is one new subclass: set `name` and implement `execute`, which gets the
    trials still to run and returns one final `TrialStatus` each (DONE, SKIPPED or FAILED, never BUSY: a trial
    another sweep holds is retried, waiting for its lock), in their order; then let `ablations.engines.make_executor`
    choose it. Its trials should run `ablations.trial.run_trial` (or keep its folder contract) wherever they run,
    and its failures be written with `ablations.status.record_failure`. It must stop when `Interrupted` is raised
    (`ablations.signals`), leaving no running trial behind.
    """

    name: ClassVar[str] = "engine"
    skip_finished: bool = True  # False under DDP: every rank goes through run_trial, where rank 0 decides

    def run(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        """The status of each of `trials`, in order: SKIPPED for the finished ones (unless ``options.force``),
        what `execute` reports for the others."""
        skipped, todo = split_finished(trials, options) if self.skip_finished else ({}, list(range(len(trials))))
        statuses = dict(skipped)
        if todo:
            ran = self.execute([trials[i] for i in todo], options)
            statuses.update(zip(todo, ran))
        return [statuses[i] for i in range(len(trials))]

    @abstractmethod
    def execute(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        """Run `trials` (none of them known to be finished); their final `TrialStatus`, in trial order."""


class Progress:
    """The statuses of a sweep's trials as they come in, and one terminal bar: trials done out of all, naming the
    trials running now."""

    def __init__(self, trials: list[Trial], show: bool) -> None:
        from tqdm import tqdm

        self.trials = trials
        self.statuses: dict[int, TrialStatus] = {}
        self._running: list[str] = []
        self._bar = tqdm(
            total=len(trials), desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True, disable=not show
        )

    def started(self, index: int) -> None:
        self._running.append(self.trials[index].name)
        self._show()

    def stopped(self, index: int) -> None:
        """A started trial that will be handed out again (its worker was lost)."""
        self._running.remove(self.trials[index].name)
        self._show()

    def finished(self, index: int, status: TrialStatus) -> TrialStatus:
        """Record a trial's status (BUSY ones are not final: they are retried; a trial that never started, e.g.
        one found finished, is recorded too) and return it."""
        if self.trials[index].name in self._running:
            self._running.remove(self.trials[index].name)
        self._show(refresh=not status.final)
        if status.final:
            self.statuses[index] = status
            self._bar.update()
        return status

    def note(self, text: str) -> None:
        """A line on stderr above the bar."""
        self._bar.write(text, file=sys.stderr)

    def _show(self, refresh: bool = True) -> None:
        self._bar.set_postfix_str(f"running {', '.join(self._running)}" if self._running else "", refresh=refresh)

    def close(self) -> None:
        self._bar.close()

    def in_order(self) -> list[TrialStatus]:
        """The final statuses, in trial order (every trial must have one)."""
        return [self.statuses[index] for index in range(len(self.trials))]
