"""``--engine ray``: run a sweep's trials as Ray tasks, on a local Ray instance or on a Ray cluster.

Each trial is one Ray task that asks for the trial's share of a machine (`TrialResources`: a GPU, or a fraction of
one to pack several trials per GPU, and CPU cores, which the task also gives torch as threads) and calls
`ablations.trial.run_trial`. The trial folders therefore follow the local engine's contract (``result.json`` /
``error.json`` written atomically, the trial's ``flock``, the settings hash): local, Ray and job-array (``--shard``)
runs on one shared ``--logdir`` resume each other, and a trial that another sweep is running is waited for.

- **Worker loss.** A task whose Ray worker or node dies (a kill, the OOM killer, a lost node) is submitted again, up
  to ``max_retries`` times, then recorded as failed with an ``error.json`` saying so. An exception inside a trial is
  not retried: `run_trial` records it, as it does locally.
- **Driver loss.** Ray ends a job's tasks when its driver dies, and a killed trial leaves no result (results are
  written atomically): rerunning the command keeps every finished trial and runs the others.
- **Per-trial DDP** (one trial over several devices or nodes) is not supported by this engine; `check_supported`
  rejects it before anything starts. Use the local engine with ``--strategy ddp`` (one node, or torchrun / SLURM).

Ray is an optional dependency (``pip install -e ".[ray]"``). This module imports Ray and torch only when a sweep
starts, so importing it is cheap.
"""

from __future__ import annotations

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from ablations.engines.base import Executor, Progress
from ablations.rules import check, finite, integer
from ablations.signals import deferred_interrupts, raise_if_interrupted
from ablations.status import TrialState, TrialStatus, record_failure

if TYPE_CHECKING:
    from ablations.suite import RunOptions, Trial

# Ray errors that mean the task's worker process or node is gone, not that the trial failed: these are retried.
WORKER_LOST_ERRORS = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task names in its error texts
RESOURCE_UNITS = 10_000  # Ray counts resources in steps of 1/10,000: requests are rounded down to one
POLL_S = 0.5  # how often the driver looks for a stop signal while it waits for tasks
CANCEL_WAIT_S = 20.0  # how long a stopped sweep waits for its cancelled tasks to end


@dataclass(frozen=True)
class TrialResources:
    """What one trial's Ray task asks for: ``gpus`` (0, a fraction to pack trials onto a GPU, or 1) and ``cpus``."""

    gpus: float = 0.0
    cpus: float = 1.0

    def __post_init__(self) -> None:
        hint = ": a trial trains on one device (or a fraction of one) under --engine ray; DDP is not supported"
        check("gpus per trial", self.gpus, finite(0, inclusive=True, high=1), hint)
        check("cpus per trial", self.cpus, finite(0))

    @classmethod
    def share(cls, gpus: int, parallel: int, cpus: int) -> TrialResources:
        """The share of a machine with `gpus` GPUs and `cpus` cores that the local engine gives each of its
        `parallel` workers: a GPU each, or ``1/k`` of one when `parallel` packs k trials per GPU; ``cpus //
        parallel`` cores (at least one)."""
        check("gpus", gpus, integer(0))
        check("parallel", parallel, integer(1))
        check("cpus", cpus, integer(1))
        trials_per_gpu = math.ceil(parallel / gpus) if gpus else 0
        gpu_share = math.floor(RESOURCE_UNITS / trials_per_gpu) / RESOURCE_UNITS if gpus else 0.0
        return cls(gpus=gpu_share, cpus=max(1, cpus // parallel))

    @property
    def threads(self) -> int:
        """The torch threads a trial uses: its whole CPU cores."""
        return max(1, int(self.cpus))

    def task_options(self) -> dict[str, Any]:
        """Keyword arguments of ``ray.remote(...).options``. Ray's own retries are off: the engine retries lost
        workers itself, counting attempts, and never retries a trial's exception."""
        return {"num_gpus": self.gpus, "num_cpus": self.cpus, "max_retries": 0, "retry_exceptions": False}

    def fits_on(self, node: dict[str, float]) -> int:
        """How many such tasks a node with the resources `node` (from ``ray.nodes()``) runs at once."""
        needs = {"CPU": self.cpus, "GPU": self.gpus}
        return min(int(node.get(name, 0.0) / amount + 1e-9) for name, amount in needs.items() if amount > 0)

    def capacity(self, nodes: list[dict[str, float]]) -> int:
        """How many such tasks a cluster of `nodes` runs at once (at least 1: an autoscaler may add nodes)."""
        return max(1, sum(self.fits_on(node) for node in nodes))


def available_cpus() -> int:
    """The cores this process may run on (its affinity: a SLURM or taskset allocation, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def check_supported(trials: list[Trial], options: RunOptions) -> None:
    """Raise ValueError if these trials need what the Ray engine does not do: per-trial DDP."""
    width = max([t.data_parallel for t in trials] + [options.num_nodes])
    if options.strategy not in ("auto", None) or width > 1:
        raise ValueError(
            f"--engine ray runs each trial on one device; per-trial DDP (--strategy {options.strategy}, "
            f"{width} devices per trial) is not supported with it. Use --engine local with --strategy "
            "ddp (one node, or launched by torchrun / SLURM), or drop --strategy to spread whole trials "
            "over the Ray cluster"
        )


def check_address(address: Optional[str], timeout_s: float = 10.0) -> None:
    """Raise ValueError, naming `address`, if nothing listens there (``ray.init`` would retry for minutes).
    None (a local Ray) and ``auto`` (the cluster this machine is part of) are not probed."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
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


def _portable(options: RunOptions, resources: TrialResources) -> RunOptions:
    """Options that mean the same on any Ray worker: absolute paths (a worker's working directory is not the
    driver's), no per-trial progress bar (workers have no terminal), and the CPU when the task has no GPU."""
    from lit_cifar.layouts import default_data_dir

    data_dir = Path(options.data_dir) if options.data_dir is not None else default_data_dir()
    accelerator = "cpu" if resources.gpus == 0 and options.accelerator == "auto" else options.accelerator
    return replace(
        options,
        logdir=str(Path(options.logdir).resolve()),
        data_dir=str(Path(data_dir).resolve()),
        progress_bar=False,
        accelerator=accelerator,
    )


def _connect(ray: Any, address: Optional[str]) -> tuple[bool, Optional[subprocess.Popen]]:
    """Join Ray: the instance this process already joined, the cluster at `address`, or a new local instance with
    the cores this process may use. Returns whether this call joined it (and so must leave it), and the `reaper`
    of a local instance it started (whose processes then die with this one, even by ``kill -9``).

    A local instance has no dashboard, and Ray (>= 2.59, the floor) requires its token (``~/.ray/auth_token``) on
    every RPC unless ``RAY_AUTH_MODE=disabled``. Its core processes still listen on all interfaces: Ray has no
    option to bind them to 127.0.0.1 (it replaces a loopback ``_node_ip_address`` by the machine's address), as
    docs/cluster.md says.
    """
    if ray.is_initialized():
        return False, None
    import logging

    local = address is None
    ray.init(
        address="local" if local else address,
        num_cpus=available_cpus() if local else None,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    return True, reaper(descendants(os.getpid())) if local else None


def _start_time(pid: int) -> Optional[int]:
    """When process `pid` started (clock ticks since boot, from /proc), None if it is gone: a PID and its start time
    name one process, even after the PID is reused."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[tuple[int, int]]:
    """(PID, start time) of every process below `pid` (a local Ray's GCS, raylet, agents and workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        start = _start_time(child)
        if start is not None:
            found.append((child, start))
        todo += parents.get(child, [])
    return found


def reaper(processes: list[tuple[int, int]]) -> Optional[subprocess.Popen]:
    """A process that kills `processes` (PID, start time) when this one dies, by any signal (``PR_SET_PDEATHSIG``)
    or when it is stopped (`_joined`): Ray's agents otherwise outlive a killed driver for a minute or two. None
    where /proc is missing (not Linux)."""
    if not processes:
        return None
    listed = [f"{pid}:{start}" for pid, start in processes]
    body = "import sys\nfrom ablations.engines.ray import _reap\n_reap(int(sys.argv[1]), sys.argv[2:])"
    return subprocess.Popen([sys.executable, "-c", body, str(os.getpid()), *listed], stdin=subprocess.DEVNULL)


def _reap(parent: int, listed: list[str]) -> None:
    """The reaper's body: wait for SIGTERM (its parent died, or `_joined` asks), then SIGKILL each listed process
    that is still the same process."""
    from ablations.signals import die_with_parent

    processes = [tuple(int(part) for part in item.split(":")) for item in listed]

    def kill_all(signum: int, frame: Any) -> None:
        for pid, start in processes:
            if _start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
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
    """Be connected to Ray (`_connect`) while the block runs, which gets whether this call joined it; leave it
    (shutting down a local Ray, ending the job and its tasks on a cluster) afterwards.

    ``ray.init`` replaces the SIGTERM handler (Ray's exits with status 15, and its C++ handler can abort with a stack
    dump): keep the caller's Python handler if it had one, else exit with status 143 through the sweep's cleanup
    (tasks cancelled, a local Ray shut down); the original handler is put back at the end.
    """
    main = threading.current_thread() is threading.main_thread()  # only the main thread handles signals
    previous = signal.getsignal(signal.SIGTERM) if main else None
    joined, reaping = _connect(ray, address)
    if main:
        signal.signal(signal.SIGTERM, previous if callable(previous) else _exit_on_sigterm)
    try:
        yield joined
    finally:
        if joined:
            ray.shutdown()
        if reaping is not None:  # and anything a local Ray left behind goes with it
            reaping.terminate()
            reaping.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_task(trial: Trial, options: RunOptions, wait: bool, threads: int) -> TrialStatus:
    """The body of a trial's Ray task, on a worker: `run_trial` with the task's CPU share as torch threads."""
    import torch

    from ablations.quiet import quiet_lightning
    from ablations.trial import run_trial

    quiet_lightning()
    torch.set_num_threads(threads)
    return run_trial(trial, options, wait)


class _RaySweep:
    """One sweep on Ray: submits trials as the cluster has room, collects their statuses, retries lost workers."""

    def __init__(
        self, ray: Any, trials: list[Trial], options: RunOptions, resources: TrialResources, max_retries: int
    ) -> None:
        self.ray, self.trials, self.options, self.resources = ray, trials, options, resources
        self.max_retries = max_retries
        self.remote = ray.remote(_run_task).options(**resources.task_options())
        self.lost_errors = tuple(getattr(ray.exceptions, name) for name in WORKER_LOST_ERRORS)
        self.progress = Progress(trials, show=len(trials) > 1)
        self.attempts = [0] * len(trials)
        self.pending: deque[tuple[int, bool]] = deque()  # (trial index, wait for its lock)
        self.in_flight: dict[Any, tuple[int, bool]] = {}  # Ray object ref -> (trial index, wait)

    def run(self, todo: list[int], cancel_on_exit: bool) -> None:
        """Run the trials at indices `todo`; trials busy in another sweep are retried last, waiting for them.

        SIGTERM and SIGINT are noted while Ray waits (`ablations.signals.deferred_interrupts`: an exception raised
        inside ``ray.wait`` would become a SystemError) and raise `Interrupted` between waits. If interrupted (or
        on any error), nothing more is handed to Ray, the running tasks are cancelled and waited for (up to
        `CANCEL_WAIT_S`), so that none writes a result after the sweep has stopped. Cancelling raises
        KeyboardInterrupt in the task, which stops the trial before it tests or writes anything; ``force=True`` is
        not used: in Ray 2.60 it can crash the driver when the task is finishing at that moment. `cancel_on_exit`
        False (the caller ends its own Ray, which ends the tasks) skips this when the sweep ends normally.
        """
        self.pending.extend((i, False) for i in todo)
        if todo and not any(self.resources.fits_on(node) for node in self._nodes()):
            self.progress.note(
                f"warning: no node of the Ray cluster has the {self.resources.cpus} CPUs and "
                f"{self.resources.gpus} GPUs one trial asks for; the trials wait until one joins "
                "(or use --parallel to ask for a smaller share)"
            )
        stopped = True
        try:
            with deferred_interrupts():
                while self.pending or self.in_flight:
                    raise_if_interrupted()
                    self._fill()
                    ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=POLL_S)
                    for ref in ready:
                        self._collect(ref, *self.in_flight.pop(ref))
                stopped = False
        finally:
            if stopped or cancel_on_exit:
                self._cancel()

    def _cancel(self) -> None:
        """Cancel every task still running and wait for them to end (each stops at its next batch)."""
        refs = list(self.in_flight)
        for ref in refs:
            self.ray.cancel(ref)
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)

    def _nodes(self) -> list[dict[str, float]]:
        return [node["Resources"] for node in self.ray.nodes() if node["Alive"]]

    def _fill(self) -> None:
        """Hand Ray as many pending trials as the cluster can run at once, so the bar names the running ones (on a
        cluster shared with other jobs, some of them may still wait in Ray's queue)."""
        room = self.resources.capacity(self._nodes()) - len(self.in_flight)
        for _ in range(min(room, len(self.pending))):
            i, wait = self.pending.popleft()
            self.attempts[i] += 1
            self.in_flight[self.remote.remote(self.trials[i], self.options, wait, self.resources.threads)] = (i, wait)
            self.progress.started(i)

    def _collect(self, ref: Any, i: int, wait: bool) -> None:
        try:
            status = self.ray.get(ref)
        except self.lost_errors as error:
            self._lost(i, wait, error)
        except self.ray.exceptions.RayError as error:  # e.g. the task could not import this package: no retry
            text = ANSI_ESCAPE.sub("", str(error)).strip()
            self._fail(i, f"Ray task failed: {text.splitlines()[-1] if text else type(error).__name__}", text)
        else:
            if status.state is TrialState.BUSY:  # another sweep runs it: do the others first, then wait for it
                self.attempts[i] -= 1
                self.pending.append((i, True))
            self.progress.finished(i, status)

    def _lost(self, i: int, wait: bool, error: Exception) -> None:
        """A trial's worker or node died: submit it again, or record it failed once `max_retries` are spent."""
        name, attempts = self.trials[i].name, self.attempts[i]
        if attempts <= self.max_retries:
            self.progress.note(
                f"Ray worker lost running {name} ({type(error).__name__}); retry {attempts} of {self.max_retries}"
            )
            self.progress.stopped(i)
            self.pending.appendleft((i, wait))
            return
        self._fail(
            i,
            f"the Ray worker running this trial died ({type(error).__name__}) in each of {attempts} "
            f"attempts (1 + max_retries={self.max_retries})",
        )

    def _fail(self, i: int, reason: str, traceback: Optional[str] = None) -> None:
        """Record trial `i` as failed (`record_failure`: the local engine's error.json, plus the engine and the
        attempts), unless another sweep now holds it."""
        self.progress.finished(
            i,
            record_failure(
                self.trials[i],
                self.options.logdir,
                reason,
                traceback=traceback,
                engine="ray",
                attempts=self.attempts[i],
            ),
        )


def run_trials_ray(
    trials: list[Trial],
    options: RunOptions,
    *,
    address: str | None,
    gpus_per_trial: float,
    cpus_per_trial: float,
    max_retries: int,
) -> list[TrialStatus]:
    """Run `trials` as Ray tasks; returns, in trial order, `run_trial`'s statuses (DONE, SKIPPED or FAILED).

    `address`: a Ray cluster (``host:port`` or ``ray://host:port``), or None for a local instance with the cores
    this process may use (`available_cpus`); a process that already joined Ray keeps its instance. Each task asks
    for `gpus_per_trial` GPUs (0 to 1; fractions pack trials onto a GPU) and `cpus_per_trial` CPUs (also its torch
    threads). A trial whose worker or node dies is run again up to `max_retries` times. `trials` are those not known
    to be finished (`Executor.run` leaves the others out; one that finished meanwhile is skipped by its task).
    Raises ValueError, before anything runs, for per-trial DDP, bad resources or a missing Ray.
    """
    check("max_retries", max_retries, integer(0))
    resources = TrialResources(gpus=gpus_per_trial, cpus=cpus_per_trial)
    check_supported(trials, options)
    ray = import_ray()
    options = _portable(options, resources)
    sweep = _RaySweep(ray, trials, options, resources, max_retries)
    try:
        with _joined(ray, address) if trials else nullcontext(False) as joined:
            sweep.run(list(range(len(trials))), cancel_on_exit=not joined)
    finally:
        sweep.progress.close()
    return sweep.progress.in_order()


class RayExecutor(Executor):
    """``--engine ray``: each trial a Ray task asking for `gpus_per_trial` GPUs and `cpus_per_trial` CPUs, on the
    Ray cluster at `address` (None: a local Ray); a trial whose worker or node dies is rerun up to `max_retries`
    times (`run_trials_ray`)."""

    name: ClassVar[str] = "ray"

    def __init__(
        self, *, address: Optional[str], gpus_per_trial: float, cpus_per_trial: float, max_retries: int
    ) -> None:
        self.address, self.max_retries = address, max_retries
        self.gpus_per_trial, self.cpus_per_trial = gpus_per_trial, cpus_per_trial

    @classmethod
    def sharing(cls, parallel: int, gpus: int, *, address: Optional[str], max_retries: int) -> RayExecutor:
        """Tasks that each ask for the share of a machine the local engine gives each of its `parallel` workers
        (`TrialResources.share`, of this process's cores)."""
        share = TrialResources.share(gpus, parallel, available_cpus())
        return cls(address=address, gpus_per_trial=share.gpus, cpus_per_trial=share.cpus, max_retries=max_retries)

    def execute(self, trials: list[Trial], options: RunOptions) -> list[TrialStatus]:
        return run_trials_ray(
            trials,
            options,
            address=self.address,
            gpus_per_trial=self.gpus_per_trial,
            cpus_per_trial=self.cpus_per_trial,
            max_retries=self.max_retries,
        )
