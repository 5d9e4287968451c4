"""The local engine: a sweep's trials run in this process, one at a time, or in worker processes on this machine.

With ``parallel > 1`` each worker is a process of its own, pinned to a `WorkerSlot` (a GPU of its own through
``CUDA_VISIBLE_DEVICES``, and its share of the CPU threads). The main process hands a worker one trial at a time,
so nothing is queued inside a worker: a stopped sweep starts no new trial. A worker that dies (the OOM killer, a
segfault) has its trial recorded as failed, with the signal, and is replaced; workers die with the main process
(``PR_SET_PDEATHSIG``, even under ``kill -9``). SIGTERM and SIGINT raise `Interrupted` in the main process (see
`interrupts`), which stops the workers and leaves no half-written file.

This module imports neither torch nor Lightning: the code that trains is passed in as the ``run`` function.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any, Optional

from ablations.store import folder_lock, write_json_atomic
from ablations.suite import RunOptions, Trial

Runner = Callable[[Trial, RunOptions, bool], dict[str, Any]]  # run_trial(trial, options, wait) -> status
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_GRACE_S = 30.0  # how long stopped workers get to unwind before they are killed

try:
    LIBC: Optional[ctypes.CDLL] = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc: no prctl, workers rely on being stopped by the main process
    LIBC = None


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: stop now. A BaseException, so that no ``except Exception`` records it as the
    failure of the trial that was running."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


_received: list[int] = []  # the stop signals this process received


def _raise_interrupted(signum: int, frame: Any) -> None:
    signal.signal(signum, _exit_at_once)  # a second one while stopping ends the process without cleanup
    _received.append(signum)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise `Interrupted` if a stop signal arrived: the handler raises at once, but where Python swallows exceptions
    (a ``__del__`` that ran just then, a callback) only these checks at safe points stop the work."""
    if _received:
        raise Interrupted(_received[0])


def _exit_at_once(signum: int, frame: Any) -> None:
    os._exit(128 + signum)


@contextmanager
def interrupts() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGINT raise `Interrupted`; a second signal ends the
    process at once. Lightning keeps calling this handler from its own SIGTERM handler during ``fit``."""
    _received.clear()
    with _handling(_raise_interrupted):
        yield


@contextmanager
def _handling(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` for SIGTERM and SIGINT while the block runs; the previous handlers afterwards."""
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _note_signal(signum: int, frame: Any) -> None:
    signal.signal(signum, _exit_at_once)  # a second one while stopping ends the process without cleanup
    _received.append(signum)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGINT are only noted, and `raise_if_interrupted`
    raises `Interrupted` at the next safe point; a second signal ends the process at once. For code that waits
    inside C extensions (Ray's ``ray.wait``), where an exception raised by a signal handler turns into a
    ``SystemError``: wait with a timeout and call `raise_if_interrupted` between waits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _handling(_note_signal):
        yield


def die_with_parent(parent: int) -> None:
    """Have Linux send this process SIGTERM when its parent (pid `parent`) dies, even by SIGKILL; elsewhere a no-op."""
    if LIBC is None or not sys.platform.startswith("linux"):
        return
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def quiet_lightning() -> None:
    """Sweeps print their own progress: drop Lightning's per-Trainer banners and deprecation chatter."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


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
    if parallel < 1:
        raise ValueError(f"parallel={parallel} must be >= 1")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(g) for g in range(gpus)]
    ids = ids[:gpus]
    threads = max(1, cpus // parallel)
    return [WorkerSlot(ids[i % len(ids)] if ids else None, threads) for i in range(parallel)]


class Progress:
    """The statuses of a sweep's trials as they come in, and one terminal bar: trials done out of all, naming the
    trials running now."""

    def __init__(self, trials: list[Trial], show: bool) -> None:
        from tqdm import tqdm

        self.trials = trials
        self.statuses: dict[int, dict[str, Any]] = {}
        self._running: list[str] = []
        self._bar = tqdm(total=len(trials), desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True,
                         disable=not show)

    def started(self, index: int) -> None:
        self._running.append(self.trials[index].name)
        self._show()

    def finished(self, index: int, status: dict[str, Any]) -> None:
        """Record a trial's status (``busy`` ones are not final: they are retried)."""
        self._running.remove(self.trials[index].name)
        self._show(refresh=status["status"] == "busy")
        if status["status"] != "busy":
            self.statuses[index] = status
            self._bar.update()

    def _show(self, refresh: bool = True) -> None:
        self._bar.set_postfix_str(f"running {', '.join(self._running)}" if self._running else "", refresh=refresh)

    def close(self) -> None:
        self._bar.close()


def run_local(trials: list[Trial], options: RunOptions, run: Runner, progress: Progress,
              slots: Optional[list[WorkerSlot]] = None) -> list[dict[str, Any]]:
    """Run `trials` with `run`, in this process (no `slots`) or in one worker process per slot.

    Trials another sweep is running ("busy") are retried after the others, waiting for their lock: each ends up done
    here or there, never twice at once. Returns the statuses in trial order. `run` must be picklable (a module-level
    function, or a ``functools.partial`` of one) when there are slots.
    """
    queue = deque((index, False) for index in range(len(trials)))  # (trial, wait for its lock)
    if not slots:
        while queue:
            raise_if_interrupted()
            index, wait_for_lock = queue.popleft()
            progress.started(index)
            status = run(trials[index], options, wait_for_lock)
            progress.finished(index, status)
            if status["status"] == "busy":
                queue.append((index, True))
    else:
        with WorkerPool(slots[:len(trials)], run) as pool:
            pool.drain(queue, trials, options, progress)
    return [progress.statuses[index] for index in range(len(trials))]


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the block runs (in the main thread): a process started meanwhile inherits that, so a
    worker never sees a terminal's Ctrl-C, even while it is still importing; the main process stops it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Worker:
    """One worker process and the end of its pipe; `job` is the trial index it runs, if any."""

    def __init__(self, slot: WorkerSlot, run: Runner) -> None:
        context = get_context("spawn")  # a fresh interpreter: no CUDA state or threads inherited
        here, there = context.Pipe()
        self.slot, self.conn = slot, here
        self.job: Optional[int] = None
        self.process = context.Process(target=_serve, args=(slot, there, os.getpid(), run),
                                       name=f"trial-worker-{slot.cuda_visible_devices or 'cpu'}")
        with _sigint_ignored():
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
        """Run every queued trial; ``busy`` ones go back to the end of the queue, to be waited for."""
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
                status = self._collect(worker, trials[index], options)
                progress.finished(index, status)
                if status["status"] == "busy":
                    queue.append((index, True))

    def _collect(self, worker: _Worker, trial: Trial, options: RunOptions) -> dict[str, Any]:
        """The status the worker sent, or, if it died, a failure recorded for its trial; the worker is replaced."""
        try:
            status = worker.conn.recv()
            worker.job = None
            return status
        except (EOFError, OSError):
            pass
        worker.process.join()
        reason, signal_name = _death(worker.process.exitcode)
        _record_death(trial, options, reason, signal_name)
        worker.conn.close()
        self.workers[self.workers.index(worker)] = _Worker(worker.slot, self.run)
        return {"trial": trial.name, "status": "failed", "error": reason}

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


def _record_death(trial: Trial, options: RunOptions, reason: str, signal_name: Optional[str]) -> None:
    """Write the error.json the dead worker could not: the kernel released its lock, so we can take it."""
    paths = trial.paths(options.logdir)
    with folder_lock(paths.folder) as locked:
        if locked and not paths.result.exists():
            write_json_atomic(paths.error, {**trial.record(), "error": reason, "signal": signal_name,
                                            "traceback": None})


def _stop_worker(signum: int, frame: Any) -> None:
    """A worker's SIGTERM handler: stop the trial (`Interrupted`); a second SIGTERM ends the process at once."""
    signal.signal(signal.SIGTERM, _exit_at_once)
    _received.append(signum)
    raise Interrupted(signum)


def _serve(slot: WorkerSlot, conn: Connection, parent: int, run: Runner) -> None:
    """A worker process: pinned to `slot`, it runs the trials the main process sends until it sends None.

    SIGINT is ignored (inherited from `_Worker`): a terminal's Ctrl-C goes to the whole process group, and the main
    process answers it by sending each worker SIGTERM. On SIGTERM the trial stops and the worker ends at once
    (``os._exit``), with no traceback and without waiting for threads a library left running: nothing it would
    still write counts (results are written atomically, and the kernel releases the trial's lock).
    """
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)
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
