"""The local engine: a sweep's trials in this process, or in spawned workers handed one trial at a time, each with
its `WorkerSlot`. A dead worker's trial is recorded as failed with its signal, and the worker replaced; workers die
with the main process, even under ``kill -9``. Imports neither torch nor Lightning.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Optional, cast

from ablations.engines.base import Executor, Progress
from ablations.signals import Interrupted, die_with_parent, ignoring_sigint, raise_if_interrupted, stop_on_sigterm
from ablations.signals import quiet_lightning
from ablations.status import TrialStatus, record_failure
from ablations.suite import RunOptions, Trial

if TYPE_CHECKING:
    from ablations.trial import Ranks

Runner = Callable[[Trial, RunOptions, bool], Any]  # run_trial(trial, options, wait) -> its status
STOP_GRACE_S = 30.0  # how long stopped workers get to unwind before they are killed


@dataclass(frozen=True)
class WorkerSlot:
    """What one worker process may use: the GPU it sees (None: none) and its torch threads."""

    cuda_visible_devices: Optional[str]
    threads: int


def worker_slots(parallel: int, gpus: int, cpus: int, visible: Optional[str] = None) -> list[WorkerSlot]:
    """Worker i sees GPU ``i % gpus`` (of the parent's `visible`, e.g. SLURM's) and ``cpus // parallel`` threads."""
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(g) for g in range(gpus)]
    ids = ids[:gpus]
    return [WorkerSlot(ids[i % len(ids)] if ids else None, max(1, cpus // parallel)) for i in range(parallel)]


def bars(trials: int, parallel: int, rank: int) -> tuple[bool, bool]:
    """(the sweep's bar, Lightning's): one at most, on rank 0; Lightning's for one trial here on a terminal."""
    first = rank == 0
    return first and trials > 1, first and trials == 1 and parallel == 1 and sys.stderr.isatty()


class LocalExecutor(Executor):
    """`parallel` trials at a time over `gpus` GPUs, here or in worker processes; one at a time under DDP (`ranks`)."""

    def __init__(self, parallel: int = 1, gpus: int = 0, ranks: Optional[Ranks] = None) -> None:
        self.parallel, self.gpus, self.ranks = parallel, gpus, ranks
        self.skip_finished = ranks is None

    def execute(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        from ablations.trial import run_trial

        run: Runner = run_trial if self.ranks is None else functools.partial(run_trial, ranks=self.ranks)
        sweep_bar, trial_bar = bars(len(trials), self.parallel, self.ranks.rank if self.ranks else 0)
        slots = None
        if self.parallel > 1:
            cpus, visible = os.cpu_count() or 1, os.environ.get("CUDA_VISIBLE_DEVICES")
            slots = worker_slots(self.parallel, self.gpus, cpus, visible)
        progress = Progress(trials, show=sweep_bar)
        try:
            return run_local(trials, replace(options, progress_bar=trial_bar), run, progress, slots)
        finally:
            progress.close()


def run_local(
    trials: list[Trial], options: RunOptions, run: Runner, progress: Progress, slots: Optional[list[WorkerSlot]] = None
) -> list[TrialStatus]:
    """The statuses of `trials`, in order, run by `run` here or by one (picklable) in a worker per slot; BUSY ones
    are retried last, waiting for their lock."""
    queue = deque((index, False) for index in range(len(trials)))  # (trial, wait for its lock)
    if not slots:
        while queue:
            raise_if_interrupted()
            index, wait_for_lock = queue.popleft()
            progress.started(index)
            if not progress.finished(index, run(trials[index], options, wait_for_lock)).final:
                queue.append((index, True))
        return progress.in_order()
    workers = [_Worker(slot, run) for slot in slots[: len(trials)]]
    graceful = False
    try:
        while queue or any(w.job is not None for w in workers):
            raise_if_interrupted()
            for worker in workers:
                if worker.job is None and queue:
                    worker.job, wait_for_lock = queue.popleft()
                    worker.conn.send((trials[worker.job], options, wait_for_lock))
                    progress.started(worker.job)
            busy = [w for w in workers if w.job is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=1.0))
            for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
                job = cast(int, worker.job)
                status = worker.collect(trials[job], options.logdir)
                if worker.job is not None:  # it died: a new worker takes its place
                    workers[workers.index(worker)] = _Worker(worker.slot, run)
                if not progress.finished(job, status).final:
                    queue.append((job, True))
        graceful = True
    finally:
        _stop(workers, graceful)
    return progress.in_order()


class _Worker:
    """One worker process and its pipe; `job` is the trial it runs, if any."""

    def __init__(self, slot: WorkerSlot, run: Runner) -> None:
        context = get_context("spawn")  # a fresh interpreter: no CUDA state or threads inherited
        self.conn, there = context.Pipe()
        self.slot = slot
        self.job: Optional[int] = None
        name = f"trial-worker-{slot.cuda_visible_devices or 'cpu'}"
        self.process = context.Process(target=_serve, args=(slot, there, os.getpid(), run), name=name)
        with ignoring_sigint():
            self.process.start()
        there.close()

    def collect(self, trial: Trial, logdir: str) -> TrialStatus:
        """The status the worker sent or, if it died, its trial's failure, recorded (the kernel released its lock)."""
        try:
            status, self.job = self.conn.recv(), None
            return status
        except (EOFError, OSError):
            self.process.join()
            self.conn.close()
        code = self.process.exitcode
        name = signal.Signals(-code).name if code is not None and code < 0 else None
        hint = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        how = f"was killed by {name}{hint}" if name else f"exited with status {code}"
        return record_failure(trial, logdir, f"the worker process running this trial {how}", signal=name)


def _stop(workers: list[_Worker], graceful: bool) -> None:
    """Tell each worker to finish, or (not `graceful`) SIGTERM it; kill any not ended after `STOP_GRACE_S`."""
    for worker in workers:
        with contextlib.suppress(OSError):  # it has just died: nothing to stop
            if graceful:
                worker.conn.send(None)
            elif worker.process.is_alive():
                worker.process.terminate()
    for worker in workers:
        worker.process.join(STOP_GRACE_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


def _serve(slot: WorkerSlot, conn: Connection, parent: int, run: Runner) -> None:
    """A worker: runs the trials sent until None; on SIGTERM ``os._exit`` (results are atomic, locks the kernel's)."""
    die_with_parent(parent)
    stop_on_sigterm()
    try:
        if slot.cuda_visible_devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = slot.cuda_visible_devices
        os.environ["OMP_NUM_THREADS"] = str(slot.threads)  # for a torch imported later
        if "torch" in sys.modules:  # unpickling `run` may have imported it
            sys.modules["torch"].set_num_threads(slot.threads)
        quiet_lightning()
        while (job := conn.recv()) is not None:
            raise_if_interrupted()
            conn.send(run(*job))
        return
    except Interrupted as stop:
        status = stop.exit_status
    except EOFError:  # the main process is gone
        status = 1
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)
