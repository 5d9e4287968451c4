"""The local engine: a sweep's trials run in this process, one at a time, or in worker processes on this machine.

With ``parallel > 1`` each worker is a process of its own, pinned to a `WorkerSlot` (a GPU of its own through
``CUDA_VISIBLE_DEVICES``, and its share of the CPU threads). The main process hands a worker one trial at a time,
so nothing is queued inside a worker: a stopped sweep starts no new trial. A worker that dies (the OOM killer, a
segfault) has its trial recorded as failed, with the signal, and is replaced; workers die with the main process
(``PR_SET_PDEATHSIG``, even under ``kill -9``). SIGTERM and SIGINT raise `Interrupted` in the main process (see
`ablations.signals.interrupts`), which stops the workers and leaves no half-written file. `LocalExecutor` is
this engine behind the `ablations.engines.Executor` interface.

This module imports neither torch nor Lightning: the code that trains is passed in as the ``run`` function.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from ablations.engines.base import Executor, Progress
from ablations.quiet import quiet_lightning
from ablations.rules import check, integer
from ablations.signals import Interrupted, die_with_parent, ignoring_sigint, raise_if_interrupted, stop_on_sigterm
from ablations.status import TrialStatus, record_failure
from ablations.suite import RunOptions, Trial

if TYPE_CHECKING:
    from ablations.trial import Ranks

__all__ = ["LocalExecutor", "WorkerPool", "WorkerSlot", "bars", "run_local", "worker_slots"]

Runner = Callable[[Trial, RunOptions, bool], Any]  # run_trial(trial, options, wait) -> its status
STOP_GRACE_S = 30.0  # how long stopped workers get to unwind before they are killed


@dataclass(frozen=True)
class WorkerSlot:
    """What one worker process may use: the GPU it sees (``None``: no GPU) and its torch threads."""

    cuda_visible_devices: Optional[str]
    threads: int

    def apply(self) -> None:
        """Pin this process to the slot; call before CUDA is first used."""
        if self.cuda_visible_devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        os.environ["OMP_NUM_THREADS"] = str(self.threads)  # honoured by a torch imported later
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(self.threads)


def worker_slots(parallel: int, gpus: int, cpus: int, visible: Optional[str] = None) -> list[WorkerSlot]:
    """The slots of `parallel` workers: worker i sees GPU ``i % gpus`` (with more workers than GPUs, several share
    one), numbered as the parent sees them (`visible`: its ``CUDA_VISIBLE_DEVICES``, e.g. set by SLURM), and gets
    ``cpus // parallel`` torch threads (at least 1)."""
    check("parallel", parallel, integer(1))
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(g) for g in range(gpus)]
    ids = ids[:gpus]
    threads = max(1, cpus // parallel)
    return [WorkerSlot(ids[i % len(ids)] if ids else None, threads) for i in range(parallel)]


def bars(trials: int, parallel: int, rank: int) -> tuple[bool, bool]:
    """Which progress bar shows, one at most: the sweep's (trials done, naming the running ones) when several trials
    train, Lightning's per-epoch bar when a single trial trains in this process; on rank 0, on a terminal only for
    Lightning's."""
    if rank != 0:
        return False, False
    return trials > 1, trials == 1 and parallel == 1 and sys.stderr.isatty()


class LocalExecutor(Executor):
    """The local engine: `parallel` trials at a time, in this process (1) or in worker processes (one per
    `WorkerSlot`, spread over `gpus` GPUs and this machine's cores); under DDP (`ranks`), one trial at a time on
    every rank, rank 0 deciding for all. `run` is what trains a trial (default `ablations.trial.run_trial`)."""

    name: ClassVar[str] = "local"

    def __init__(
        self, parallel: int = 1, gpus: int = 0, ranks: Optional[Ranks] = None, run: Optional[Runner] = None
    ) -> None:
        self.parallel, self.gpus, self.ranks, self.runner = parallel, gpus, ranks, run
        self.skip_finished = ranks is None

    def slots(self) -> Optional[list[WorkerSlot]]:
        """One slot per worker process, or None to run the trials in this process."""
        if self.parallel <= 1:
            return None
        return worker_slots(self.parallel, self.gpus, os.cpu_count() or 1, os.environ.get("CUDA_VISIBLE_DEVICES"))

    def execute(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        from ablations.trial import run_trial

        run: Callable[..., Any] = self.runner or run_trial
        if self.ranks is not None:
            run = functools.partial(run, ranks=self.ranks)
        sweep_bar, trial_bar = bars(len(trials), self.parallel, self.ranks.rank if self.ranks else 0)
        progress = Progress(trials, show=sweep_bar)
        try:
            return run_local(trials, replace(options, progress_bar=trial_bar), run, progress, self.slots())
        finally:
            progress.close()


def run_local(
    trials: list[Trial], options: RunOptions, run: Runner, progress: Progress, slots: Optional[list[WorkerSlot]] = None
) -> list[TrialStatus]:
    """Run `trials` with `run`, in this process (no `slots`) or in one worker process per slot.

    Trials another sweep is running (BUSY) are retried after the others, waiting for their lock: each ends up done
    here or there, never twice at once. Returns the statuses in trial order. `run` must be picklable (a module-level
    function, or a ``functools.partial`` of one) when there are slots.
    """
    queue = deque((index, False) for index in range(len(trials)))  # (trial, wait for its lock)
    if not slots:
        while queue:
            raise_if_interrupted()
            index, wait_for_lock = queue.popleft()
            progress.started(index)
            if not progress.finished(index, run(trials[index], options, wait_for_lock)).final:
                queue.append((index, True))
    else:
        with WorkerPool(slots[: len(trials)], run) as pool:
            pool.drain(queue, trials, options, progress)
    return progress.in_order()


class _Worker:
    """One worker process and the end of its pipe; `job` is the trial index it runs, if any."""

    def __init__(self, slot: WorkerSlot, run: Runner) -> None:
        context = get_context("spawn")  # a fresh interpreter: no CUDA state or threads inherited
        here, there = context.Pipe()
        self.slot, self.conn = slot, here
        self.job: Optional[int] = None
        self.process = context.Process(
            target=_serve,
            args=(slot, there, os.getpid(), run),
            name=f"trial-worker-{slot.cuda_visible_devices or 'cpu'}",
        )
        with ignoring_sigint():
            self.process.start()
        there.close()


class WorkerPool:
    """Worker processes, one per slot, each running one trial at a time; a dead worker is replaced."""

    def __init__(self, slots: list[WorkerSlot], run: Runner) -> None:
        self.run = run
        self.workers = [_Worker(slot, run) for slot in slots]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop(graceful=exc[0] is None)

    def drain(self, queue: deque, trials: list[Trial], options: RunOptions, progress: Progress) -> None:
        """Run every queued trial; BUSY ones go back to the end of the queue, to be waited for."""
        while queue or any(w.job is not None for w in self.workers):
            raise_if_interrupted()
            for worker in self.workers:
                if worker.job is None and queue:
                    worker.job, wait_for_lock = queue.popleft()
                    worker.conn.send((trials[worker.job], options, wait_for_lock))
                    progress.started(worker.job)
            busy = [w for w in self.workers if w.job is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=1.0))
            for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
                index = worker.job
                assert index is not None  # busy workers have a job
                if not progress.finished(index, self._collect(worker, trials[index], options)).final:
                    queue.append((index, True))

    def _collect(self, worker: _Worker, trial: Trial, options: RunOptions) -> Any:
        """The status the worker sent, or, if it died, a failure recorded for its trial; the worker is replaced."""
        try:
            status = worker.conn.recv()
            worker.job = None
            return status
        except (EOFError, OSError):
            pass
        worker.process.join()
        reason, signal_name = _death(worker.process.exitcode)
        # the kernel released the dead worker's lock: record_failure takes it and writes what the worker could not
        status = record_failure(trial, options.logdir, reason, signal=signal_name)
        worker.conn.close()
        self.workers[self.workers.index(worker)] = _Worker(worker.slot, self.run)
        return status

    def stop(self, graceful: bool) -> None:
        """Graceful: tell each worker to finish. Otherwise (interrupted): SIGTERM each, which stops its trial at
        once; either way, wait for them and kill any that do not end within `STOP_GRACE_S`."""
        for worker in self.workers:
            try:
                if graceful:
                    worker.conn.send(None)
                elif worker.process.is_alive():
                    worker.process.terminate()
            except OSError:  # it has just died: nothing to stop
                pass
        for worker in self.workers:
            worker.process.join(STOP_GRACE_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


def _death(exitcode: Optional[int]) -> tuple[str, Optional[str]]:
    """Why a worker process ended, and the name of the signal that ended it (if one did)."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the worker process running this trial was killed by {name}{hint}", name
    return f"the worker process running this trial exited with status {exitcode}", None


def _serve(slot: WorkerSlot, conn: Connection, parent: int, run: Runner) -> None:
    """A worker process: pinned to `slot`, it runs the trials the main process sends until it sends None.

    SIGINT is ignored (inherited from `_Worker`): a terminal's Ctrl-C goes to the whole process group, and the main
    process answers it by sending each worker SIGTERM. On SIGTERM the trial stops and the worker ends at once
    (``os._exit``), with no traceback and without waiting for threads a library left running: nothing it would
    still write counts (results are written atomically, and the kernel releases the trial's lock).
    """
    die_with_parent(parent)
    stop_on_sigterm()
    try:
        slot.apply()
        quiet_lightning()
        while (job := conn.recv()) is not None:
            raise_if_interrupted()
            conn.send(run(*job))
    except Interrupted as stop:
        _exit_now(stop.exit_status)
    except EOFError:  # the main process is gone
        _exit_now(1)


def _exit_now(status: int) -> None:
    """End this worker process with `status` now: flush what it printed, skip the interpreter's shutdown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
