"""Torch-free stand-ins for `ablations.trial.run_trial`, for testing the local engine's processes quickly.

Worker processes import this module, so it imports nothing heavy. Each runner leaves a ``started-<seed>`` file
(holding its pid) in the trial's folder, which tests synchronise on.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from ablations.status import TrialState, TrialStatus
from ablations.store import folder_lock, write_result
from ablations.suite import RunOptions, Trial


METRICS = {"train/acc": 0.6, "val/acc": 0.5, "test/acc": 0.5}  # what every result.json holds at least


def _start(trial: Trial, options: RunOptions) -> Path:
    folder = trial.paths(options.logdir).folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"started-{trial.seed}").write_text(str(os.getpid()))
    return folder


def finish(trial: Trial, options: RunOptions, wait: bool) -> TrialStatus:
    """Write a result at once, under the trial's lock."""
    _start(trial, options)
    paths = trial.paths(options.logdir)
    with folder_lock(paths.folder, wait) as locked:
        if not locked:
            return TrialStatus(trial.name, TrialState.BUSY)
        write_result(
            paths.result,
            {
                **trial.record(),
                "metrics": METRICS,
                "history": [],
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            },
        )
    return TrialStatus(trial.name, TrialState.DONE)


def die_on_seed_1(trial: Trial, options: RunOptions, wait: bool) -> TrialStatus:
    """Like `finish`, but the process running seed 1 is killed with SIGKILL, as the OOM killer would."""
    if trial.seed == 1:
        _start(trial, options)
        os.kill(os.getpid(), signal.SIGKILL)
    return finish(trial, options, wait)


def block(trial: Trial, options: RunOptions, wait: bool) -> TrialStatus:
    """Hold the trial's lock and never finish (until a signal stops the process)."""
    paths = trial.paths(options.logdir)
    with folder_lock(paths.folder, wait):
        _start(trial, options)
        while True:
            time.sleep(3600)


def block_with_a_busy_thread(trial: Trial, options: RunOptions, wait: bool) -> TrialStatus:
    """Like `block`, with a non-daemon thread that never ends running beside it, as a library's writer thread may:
    a worker that leaves through the interpreter's normal shutdown would wait for it forever."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,), name="busy-writer").start()
    return block(trial, options, wait)


if __name__ == "__main__":
    # python -m tests.fakes LOGDIR PARALLEL [RUNNER]: three trials in PARALLEL workers that block (RUNNER: a function
    # of this module, default `block`), stopped by signals as `python -m ablations.run` is (exit 128 + signal,
    # naming the finished trials).
    from ablations.engines.base import Progress
    from ablations.engines.local import run_local, worker_slots
    from ablations.signals import Interrupted, interrupts
    from lit_cifar.spec import RegularizationSpec
    from ablations.suite import TrainSettings

    logdir, parallel = sys.argv[1], int(sys.argv[2])
    runner = globals()[sys.argv[3]] if len(sys.argv) > 3 else block
    trials = [Trial("fake", RegularizationSpec(), seed, TrainSettings(seeds=(seed,)), 0) for seed in range(3)]
    progress = Progress(trials, show=False)
    try:
        with interrupts():
            run_local(trials, RunOptions(logdir=logdir), runner, progress, worker_slots(parallel, 0, parallel))
    except Interrupted as stop:
        print(f"{stop}: finished {sorted(progress.statuses)}", flush=True)
        sys.exit(stop.exit_status)
