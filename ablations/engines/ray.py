"""``--engine ray``: each trial one Ray task (`TrialResources`) running `ablations.trial.run_trial`, so any engines
resume each other on one ``--logdir``. A lost worker or node is retried up to ``max_retries`` times, a trial's
exception recorded; a local Ray dies with the command (`reaper`). Ray and torch are imported when a sweep starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ablations.engines.base import Executor, Progress
from ablations.signals import deferred_interrupts, die_with_parent, quiet_lightning, raise_if_interrupted
from ablations.status import TrialState, TrialStatus, record_failure
from ablations.store import proc_stat

if TYPE_CHECKING:
    from ablations.suite import RunOptions, Trial

# Ray errors that mean the task's worker process or node is gone, not that the trial failed: these are retried.
WORKER_LOST_ERRORS = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
RESOURCE_UNITS = 10_000  # Ray counts resources in steps of 1/10,000: requests are rounded down to one


@dataclass(frozen=True)
class TrialResources:
    """What one trial's Ray task asks for: ``gpus`` (0 to 1: a fraction packs trials onto a GPU) and ``cpus``."""

    gpus: float = 0.0
    cpus: float = 1.0

    @classmethod
    def share(cls, gpus: int, parallel: int, cpus: int) -> TrialResources:
        """Each of `parallel` local workers' share: a GPU or ``1/k`` of one, and ``cpus // parallel`` cores."""
        gpu_share = math.floor(RESOURCE_UNITS / math.ceil(parallel / gpus)) / RESOURCE_UNITS if gpus else 0.0
        return cls(gpus=gpu_share, cpus=max(1, cpus // parallel))

    def fits_on(self, node: dict[str, float]) -> int:
        """How many such tasks a node (its resources in ``ray.nodes()``) runs at once."""
        needs = {"CPU": self.cpus, "GPU": self.gpus}
        return min(int(node.get(name, 0.0) / amount + 1e-9) for name, amount in needs.items() if amount > 0)

    def capacity(self, nodes: list[dict[str, float]]) -> int:
        """How many such tasks a cluster runs at once (at least 1: an autoscaler may add nodes)."""
        return max(1, sum(self.fits_on(node) for node in nodes))

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


def available_cpus() -> int:
    """The cores this process may run on (its affinity: a SLURM or taskset allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def check_supported(trials: list[Trial], options: RunOptions) -> None:
    """Raise ValueError for per-trial DDP, which the Ray engine does not do."""
    width = max([t.data_parallel for t in trials] + [options.num_nodes])
    if options.strategy not in ("auto", None) or width > 1:
        raise ValueError(
            f"--engine ray runs each trial on one device; per-trial DDP (--strategy {options.strategy}, "
            f"{width} devices per trial) is not supported with it. Use --engine local with --strategy "
            "ddp (one node, or launched by torchrun / SLURM), or drop --strategy to spread whole trials "
            "over the Ray cluster"
        )


def check_address(address: Optional[str]) -> None:
    """Raise ValueError if nothing listens at `address` (``ray.init`` would retry for minutes)."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=10.0).close()
    except OSError as error:
        raise ValueError(
            f"cannot reach the Ray cluster at {address} (--ray-address or $RAY_ADDRESS): {error.strerror or error}"
        ) from None


def import_ray() -> Any:
    """The ``ray`` module, or a ValueError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ValueError(
            f'--engine ray needs Ray ({error}): pip install -e ".[ray]" (the Ray release pyproject.toml names)'
        ) from None
    return ray


def _start_time(pid: int) -> Optional[int]:
    """When process `pid` started (None: gone); with the PID it names one process."""
    fields = proc_stat(pid)
    return int(fields[19]) if len(fields) > 19 else None


def descendants(pid: int) -> list[tuple[int, int]]:
    """(PID, start time) of every process below `pid`."""
    stats = {int(entry.name): proc_stat(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    found, parents = [], [pid]
    while parents:
        parent = parents.pop()
        for child, fields in stats.items():
            if len(fields) > 19 and int(fields[1]) == parent:
                found.append((child, int(fields[19])))
                parents.append(child)
    return found


def reaper(processes: list[tuple[int, int]]) -> Optional[subprocess.Popen]:
    """A process that SIGKILLs `processes` (PID, start time) when this one dies or stops it (Ray's agents would
    outlive a killed driver for minutes)."""
    if not processes:
        return None
    body = f"from ablations.engines.ray import _reap\n_reap({os.getpid()}, {processes!r})"
    return subprocess.Popen([sys.executable, "-c", body], stdin=subprocess.DEVNULL)


def _reap(parent: int, processes: list[tuple[int, int]]) -> None:
    """The reaper: on SIGTERM (its parent died, or the sweep ended), SIGKILL each listed process still alive."""

    def kill_all(signum: int, frame: Any) -> None:
        for pid, start in processes:
            if _start_time(pid) == start:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGTERM, kill_all)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the driver stops it in order
    die_with_parent(parent)
    while True:
        signal.pause()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _joined(ray: Any, address: Optional[str]) -> Iterator[bool]:
    """Be connected to Ray in the block (yields whether this call joined): the Ray already joined, the cluster at
    `address`, or a new local one (no dashboard, token auth: docs/cluster.md) watched by a `reaper`. ``ray.init``
    replaces the SIGTERM handler: the caller's is put back, else SIGTERM exits with 143 through the cleanup."""
    if ray.is_initialized():
        yield False
        return
    main = threading.current_thread() is threading.main_thread()  # only the main thread handles signals
    previous = signal.getsignal(signal.SIGTERM) if main else None
    local = address is None
    ray.init(
        address="local" if local else address,
        num_cpus=available_cpus() if local else None,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    reaping = reaper(descendants(os.getpid())) if local else None
    if main:
        signal.signal(signal.SIGTERM, previous if callable(previous) else _exit_on_sigterm)
    try:
        yield True
    finally:
        ray.shutdown()
        if reaping is not None:  # and anything a local Ray left behind goes with it
            reaping.terminate()
            reaping.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_task(trial: Trial, options: RunOptions, wait: bool, threads: int) -> TrialStatus:
    """A trial's Ray task: `run_trial`, with the task's CPU share as torch threads."""
    import torch

    from ablations.trial import run_trial

    quiet_lightning()
    torch.set_num_threads(threads)
    return run_trial(trial, options, wait)


class _RaySweep:
    """One sweep on Ray: submits trials as the cluster has room, collects statuses, retries lost workers."""

    def __init__(
        self, ray: Any, trials: list[Trial], options: RunOptions, resources: TrialResources, max_retries: int
    ) -> None:
        self.ray, self.trials, self.options, self.resources = ray, trials, options, resources
        self.max_retries = max_retries
        # Ray's own retries are off: the engine retries lost workers itself, and never a trial's exception
        self.remote = ray.remote(_run_task).options(
            num_gpus=resources.gpus, num_cpus=resources.cpus, max_retries=0, retry_exceptions=False
        )
        self.lost_errors = tuple(getattr(ray.exceptions, name) for name in WORKER_LOST_ERRORS)
        self.progress = Progress(trials, show=len(trials) > 1)
        self.attempts = [0] * len(trials)
        self.pending: deque[tuple[int, bool]] = deque()  # (trial index, wait for its lock)
        self.in_flight: dict[Any, tuple[int, bool]] = {}  # Ray object ref -> (trial index, wait)

    def run(self, cancel_on_exit: bool) -> None:
        """Run the trials, those busy in another sweep last. Stop signals raise between waits
        (inside ``ray.wait`` they would be a SystemError); then, on an error, or at the end if the caller's Ray
        outlives the sweep, running tasks are cancelled (not ``force``: it can crash the driver) and awaited."""
        self.pending.extend((i, False) for i in range(len(self.trials)))
        if self.trials and not any(self.resources.fits_on(node) for node in self._nodes()):
            self.progress.bar.write(
                f"warning: no node of the Ray cluster has the {self.resources.cpus} CPUs and "
                f"{self.resources.gpus} GPUs one trial asks for; the trials wait until one joins "
                "(or use --parallel to ask for a smaller share)",
                file=sys.stderr,
            )
        stopped = True
        try:
            with deferred_interrupts():
                while self.pending or self.in_flight:
                    raise_if_interrupted()
                    self._fill()
                    ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=0.5)  # then signals
                    for ref in ready:
                        self._collect(ref, *self.in_flight.pop(ref))
                stopped = False
        finally:
            refs = list(self.in_flight) if stopped or cancel_on_exit else []
            for ref in refs:
                self.ray.cancel(ref)
            if refs:
                self.ray.wait(refs, num_returns=len(refs), timeout=20.0)

    def _nodes(self) -> list[dict[str, float]]:
        return [node["Resources"] for node in self.ray.nodes() if node["Alive"]]

    def _fill(self) -> None:
        """Hand Ray as many pending trials as the cluster can run at once."""
        room = self.resources.capacity(self._nodes()) - len(self.in_flight)
        for _ in range(min(room, len(self.pending))):
            i, wait = self.pending.popleft()
            self.attempts[i] += 1
            self.in_flight[self.remote.remote(self.trials[i], self.options, wait, self.resources.threads)] = (i, wait)
            self.progress.started(i)

    def _collect(self, ref: Any, i: int, wait: bool) -> None:
        """Record the task's status; a lost worker's trial is handed out again, up to `max_retries` times."""
        text = None
        try:
            status = self.ray.get(ref)
        except self.lost_errors as error:
            if self.attempts[i] <= self.max_retries:  # its worker or node died: submit it again
                self.progress.bar.write(
                    f"Ray worker lost running {self.trials[i].name} ({type(error).__name__}); "
                    f"retry {self.attempts[i]} of {self.max_retries}",
                    file=sys.stderr,
                )
                self.progress.finished(i, TrialStatus(self.trials[i].name, TrialState.BUSY))  # not final
                self.pending.appendleft((i, wait))
                return
            reason = (
                f"the Ray worker running this trial died ({type(error).__name__}) in each of {self.attempts[i]} "
                f"attempts (1 + max_retries={self.max_retries})"
            )
        except self.ray.exceptions.RayError as error:  # e.g. the task could not import this package: no retry
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # Ray colours the task names
            reason = f"Ray task failed: {text.splitlines()[-1] if text else type(error).__name__}"
        else:
            if status.state is TrialState.BUSY:  # another sweep runs it: do the others first, then wait for it
                self.attempts[i] -= 1
                self.pending.append((i, True))
            self.progress.finished(i, status)
            return
        trial, logdir = self.trials[i], self.options.logdir
        failed = record_failure(trial, logdir, reason, traceback=text, engine="ray", attempts=self.attempts[i])
        self.progress.finished(i, failed)


@dataclass(frozen=True)
class RayExecutor(Executor):
    """``--engine ray``: each trial a Ray task asking for `resources` on the cluster at `address` (None: a local
    Ray), rerun up to `max_retries` times if its worker or node dies."""

    address: Optional[str]
    resources: TrialResources
    max_retries: int

    def execute(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        """Raises ValueError for a missing Ray (`ablations.plan.prepare` checked the trials fit the engine)."""
        from lit_cifar.layouts import default_data_dir

        ray = import_ray()
        # the same on any worker: absolute paths, no per-trial bar, the CPU when the task has no GPU
        no_gpu = self.resources.gpus == 0 and options.accelerator == "auto"
        options = replace(
            options,
            logdir=str(Path(options.logdir).resolve()),
            data_dir=str(Path(options.data_dir or default_data_dir()).resolve()),
            progress_bar=False,
            accelerator="cpu" if no_gpu else options.accelerator,
        )
        sweep = _RaySweep(ray, trials, options, self.resources, self.max_retries)
        try:
            with _joined(ray, self.address) as joined:
                sweep.run(cancel_on_exit=not joined)
        finally:
            sweep.progress.close()
        return sweep.progress.in_order()
