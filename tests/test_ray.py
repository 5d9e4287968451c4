"""The Ray engine (``--engine ray``): on a local Ray, the local engine's results, waiting for busy trials, resume
after a killed driver, retries after killed workers, stop signals; without one, the resources each
trial asks for and the flags that cannot work.

One local Ray instance (2 CPUs) serves the whole module; the in-process sweeps join it, the subprocess sweeps
connect to it by address. Workers are killed the way the OOM killer would: SIGKILL to the process that holds the
trial's lock (found in /proc/locks).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from ablations.engines import ray as ray_engine
from ablations.engines.ray import TrialResources, available_cpus
from ablations.run import main
from ablations.status import TrialState, TrialStatus
from ablations.store import ERROR_FILE, LOCK_FILE, RESULT_FILE, TrialPaths, folder_lock
from ablations.suite import RunOptions
from tests.helpers import REPO, numbers, results
from tests.helpers import sweep_args

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")

TINY = ["--epochs", "1", "--limit-train", "64", "--val-size", "32", "--batch-size", "32"]
TRIALS = ["--only", "pixel+dropout=0.25", "--seeds", "0,1,2"]  # dropout: the seed's RNG streams matter
ONE_CORE_EACH = ["--parallel", str(available_cpus())]  # each trial: 1 CPU and 1 torch thread, on any machine
SPEC = "pixel+dropout=0.25"
DEADLINE_S = 300  # only to end a broken test instead of hanging; no assertion depends on it


def sweep(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Run ``python -m ablations.run ARGS`` in-process; returns (exit status, stderr)."""
    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def lock_of(logdir: Path, seed: int, spec: str = SPEC) -> Path:
    return TrialPaths.of(logdir, "notebook", spec, seed).folder / LOCK_FILE


def flock_pids(lock: Path) -> tuple[set[int], set[int]]:
    """(pids holding, pids waiting for) an flock on `lock`, read from /proc/locks."""
    try:
        st = lock.stat()
    except FileNotFoundError:
        return set(), set()
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders, waiters = set(), set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        waiting = fields[1] == "->"
        fields = fields[2:] if waiting else fields[1:]
        if fields[0] == "FLOCK" and fields[4] == key:
            (waiters if waiting else holders).add(int(fields[3]))
    return holders, waiters


class LockKiller(threading.Thread):
    """SIGKILLs every new process (not this one) that takes one of some locks, up to a number of kills per lock."""

    def __init__(self, kills: dict[Path, int]) -> None:
        super().__init__(daemon=True)
        self.kills = kills
        self.killed: dict[Path, list[int]] = {lock: [] for lock in kills}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            for lock, allowed in self.kills.items():
                for pid in flock_pids(lock)[0] - {os.getpid(), *self.killed[lock]}:
                    if len(self.killed[lock]) < allowed:
                        os.kill(pid, signal.SIGKILL)
                        self.killed[lock].append(pid)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance with 2 CPUs for the module; yields its address."""
    import ray

    context = ray.init(
        address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cifar_dir):
    """The local engine's results for TRIALS, in this process with 1 torch thread (as each Ray task here)."""
    logdir = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--data-dir", str(cifar_dir), "--logdir", str(logdir), *TINY, *TRIALS, "--parallel", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    found = results(logdir)
    assert len(found) == 3 and all(r["environment"]["cpu_threads"] == 1 for r in found.values())
    return found


@needs_ray
@pytest.mark.slow
def test_ray_sweep_equals_the_local_engine_and_waits_for_a_busy_trial(
    ray_address, reference, cifar_dir, tmp_path, capsys
):
    """Bit-identical results; a trial another sweep holds is done last, once its lock is released."""
    busy = lock_of(tmp_path, seed=0)
    held, waited_for, over = threading.Event(), threading.Event(), threading.Event()

    def hold_until_waited_for() -> None:
        with folder_lock(busy.parent):
            held.set()
            while not over.wait(0.01):
                if flock_pids(busy)[1]:  # a Ray task waits for this lock: let it go
                    waited_for.set()
                    return

    holder = threading.Thread(target=hold_until_waited_for, daemon=True)
    holder.start()
    held.wait()
    status, err = sweep(
        capsys,
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(tmp_path),
        *TINY,
        *TRIALS,
        *ONE_CORE_EACH,
        "--engine",
        "ray",
    )
    over.set()
    holder.join()
    assert waited_for.is_set(), "no task waited for the busy trial"
    assert status == 0, err[-2000:]
    found = results(tmp_path)
    assert sorted(found) == sorted(reference)
    assert all(numbers(found[k]) == numbers(reference[k]) for k in reference)
    assert all(r["environment"]["cpu_threads"] == 1 for r in found.values())  # torch threads = the task's CPUs
    assert "3 trained, 0 already done, 0 failed" in err
    assert (tmp_path / "notebook" / "results.md").exists()


def wait_for(condition, what: str) -> None:
    """Poll `condition` until it holds; fail (not hang) if it never does."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < DEADLINE_S, f"gave up waiting for {what}"
        time.sleep(0.02)


@needs_ray
@pytest.mark.slow
def test_killed_driver_then_rerun_keeps_finished_trials(ray_address, reference, cifar_dir, tmp_path, capsys):
    """SIGKILL the driver once a trial has finished: the rerun keeps it and trains only the others."""
    command = [
        sys.executable,
        "-m",
        "ablations.run",
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(tmp_path),
        *TINY,
        *TRIALS,
        *ONE_CORE_EACH,
        "--engine",
        "ray",
        "--ray-address",
        ray_address,
    ]
    driver = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: results(tmp_path) or driver.poll() is not None, "the first result.json")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    kept = {path: path.read_bytes() for path in tmp_path.glob(f"*/*/*/{RESULT_FILE}")}
    assert 1 <= len(kept) < 3, "the driver finished before it was killed"
    status, err = sweep(
        capsys,
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(tmp_path),
        *TINY,
        *TRIALS,
        *ONE_CORE_EACH,
        "--engine",
        "ray",
    )
    assert status == 0, err[-2000:]
    assert f"{3 - len(kept)} trained, {len(kept)} already done, 0 failed" in err
    assert all(path.read_bytes() == data for path, data in kept.items())
    found = results(tmp_path)
    assert sorted(found) == sorted(reference)
    assert all(numbers(found[k]) == numbers(reference[k]) for k in reference)


@needs_ray
@pytest.mark.slow
def test_killed_worker_is_retried_then_recorded_failed(ray_address, cifar_dir, tmp_path, capsys):
    """--max-retries 1: a trial whose worker is killed once finishes on its retry; one whose worker is killed on
    both attempts ends failed, with an error.json saying so."""
    once, always = lock_of(tmp_path, 3, "pixel"), lock_of(tmp_path, 4, "pixel")
    killer = LockKiller({once: 1, always: 2})
    killer.start()
    try:
        status, err = sweep(
            capsys,
            "--data-dir",
            str(cifar_dir),
            "--logdir",
            str(tmp_path),
            *TINY,
            "--only",
            "pixel",
            "--seeds",
            "3,4",
            *ONE_CORE_EACH,
            "--engine",
            "ray",
            "--max-retries",
            "1",
        )
    finally:
        killer.done.set()
        killer.join()
    assert [len(killer.killed[once]), len(killer.killed[always])] == [1, 2]
    assert status == 1, err[-2000:]
    assert (once.parent / RESULT_FILE).exists() and not (once.parent / ERROR_FILE).exists()
    assert not (always.parent / RESULT_FILE).exists()
    error = json.loads((always.parent / ERROR_FILE).read_text())
    assert error["attempts"] == 2 and "worker running this trial died" in error["error"]
    assert "1 trained, 0 already done, 1 failed" in err
    assert "FAILED pixel/seed=4: the Ray worker running this trial died (WorkerCrashedError) in each of 2" in err
    assert err.count("retry 1 of 1") == 2


@pytest.mark.parametrize(
    "gpus, parallel, cpus, expected",
    [
        (0, 1, 16, TrialResources(gpus=0.0, cpus=16)),  # CPU: one trial with every core
        (0, 4, 16, TrialResources(gpus=0.0, cpus=4)),
        (4, 4, 16, TrialResources(gpus=1.0, cpus=4)),  # one trial per GPU
        (4, 2, 16, TrialResources(gpus=1.0, cpus=8)),  # fewer trials than GPUs: still one GPU each
        (4, 8, 16, TrialResources(gpus=0.5, cpus=2)),  # two trials per GPU
        (2, 6, 8, TrialResources(gpus=0.3333, cpus=1)),  # three per GPU, rounded down to Ray's 1e-4 granularity
    ],
)
def test_trial_resources_are_the_local_engines_shares(gpus, parallel, cpus, expected):
    assert TrialResources.share(gpus, parallel, cpus) == expected


def test_task_options_and_capacity():
    """Each task asks for its share, with Ray's own retries off (the engine retries lost workers itself)."""
    import types

    asked = {}
    stub = types.SimpleNamespace(
        remote=lambda f: types.SimpleNamespace(options=lambda **kw: asked.update(kw)),
        exceptions=types.SimpleNamespace(WorkerCrashedError=0, NodeDiedError=0, OutOfMemoryError=0),
    )
    packed = TrialResources(gpus=0.3333, cpus=1)
    ray_engine._RaySweep(stub, [], RunOptions(), packed, 0).progress.close()
    assert asked == {"num_gpus": 0.3333, "num_cpus": 1, "max_retries": 0, "retry_exceptions": False}
    gpu_node, cpu_node = {"CPU": 16.0, "GPU": 2.0}, {"CPU": 16.0}
    assert packed.capacity([gpu_node, gpu_node, cpu_node]) == 12  # 3 per GPU; the CPU node takes none
    assert TrialResources(gpus=0.0, cpus=2).capacity([gpu_node, cpu_node]) == 16
    assert TrialResources(gpus=0.0, cpus=3).capacity([{"CPU": 4.0}, {"CPU": 4.0}]) == 2  # per node, not 8 / 3
    assert TrialResources(gpus=1.0, cpus=2).fits_on(cpu_node) == 0
    assert TrialResources(gpus=1.0, cpus=2).capacity([cpu_node]) == 1  # no GPU node yet: one, for an autoscaler
    assert TrialResources(gpus=0.0, cpus=2.5).threads == 2


@needs_ray
def test_flags_set_the_resources_each_task_asks_for(monkeypatch, cifar_dir, tmp_path, capsys):
    """--parallel 8 on a machine with 4 GPUs and 16 cores: each Ray task asks for half a GPU and 2 CPUs."""
    calls = []
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.setattr(ray_engine, "available_cpus", lambda: 16)
    monkeypatch.setattr(ray_engine, "check_address", lambda address: None)  # no cluster is contacted

    def fake_engine(executor, trials, options):
        resources = executor.resources
        calls.append(
            {
                "address": executor.address,
                "gpus_per_trial": resources.gpus,
                "cpus_per_trial": resources.cpus,
                "max_retries": executor.max_retries,
            }
        )
        return [TrialStatus(t.name, TrialState.DONE) for t in trials]

    monkeypatch.setattr(ray_engine.RayExecutor, "execute", fake_engine)
    status, err = sweep(
        capsys,
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(tmp_path),
        *TINY,
        "--only",
        "pixel",
        "--seeds",
        "0",
        "--parallel",
        "8",
        "--engine",
        "ray",
        "--ray-address",
        "127.0.0.1:6379",
        "--max-retries",
        "5",
    )
    assert status == 0, err
    assert calls == [{"address": "127.0.0.1:6379", "gpus_per_trial": 0.5, "cpus_per_trial": 2, "max_retries": 5}]


@needs_ray
@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--strategy", "ddp", "--devices", "2"],
            "per-trial DDP (--strategy ddp, 2 devices per trial) is not supported",
        ),
        (["--max-retries", "-1"], "--max-retries: -1 must be >= 0"),
        (["--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
        (["--ray-address", "headnode"], "Ray address 'headnode' is not HOST:PORT or ray://HOST:PORT"),
    ],
)
def test_unsupported_ray_arguments_exit_2_before_any_trial(args, message, cifar_dir, tmp_path, capsys):
    status, err = sweep(
        capsys, "--data-dir", str(cifar_dir), "--logdir", str(tmp_path), *TINY, "--engine", "ray", *args
    )
    assert status == 2 and message in err
    assert not (tmp_path / "notebook").exists()


def test_engine_ray_without_ray_says_how_to_install_it(monkeypatch, cifar_dir, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    status, err = sweep(capsys, "--data-dir", str(cifar_dir), "--logdir", str(tmp_path), "--engine", "ray")
    assert status == 2 and 'pip install -e ".[ray]"' in err
    assert not (tmp_path / "notebook").exists()


def test_ray_tasks_request_the_resources_the_flags_imply():
    assert TrialResources.share(gpus=2, parallel=2, cpus=16) == TrialResources(gpus=1.0, cpus=8)
    assert TrialResources.share(gpus=2, parallel=4, cpus=16) == TrialResources(gpus=0.5, cpus=4)
    assert TrialResources.share(gpus=0, parallel=2, cpus=2) == TrialResources(gpus=0.0, cpus=1)


@pytest.fixture
def fake_ray(monkeypatch):
    """`ablations.engines.ray.RayExecutor.execute` replaced by a recorder that trains nothing (and `ray` by an empty
    module), with no cluster address contacted."""
    calls = []

    def execute(executor, trials, options):
        calls.append(
            {
                "trials": [t.name for t in trials],
                "logdir": options.logdir,
                "address": executor.address,
                "gpus_per_trial": executor.resources.gpus,
                "cpus_per_trial": executor.resources.cpus,
                "max_retries": executor.max_retries,
            }
        )
        return [TrialStatus(t.name, TrialState.FAILED, "not really run") for t in trials]

    from ablations.engines import ray as ray_engine

    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    monkeypatch.setattr(ray_engine.RayExecutor, "execute", execute)
    monkeypatch.setattr(ray_engine, "check_address", lambda address: None)  # no cluster is contacted
    return calls


def test_engine_ray_hands_the_trials_and_resources_to_its_executor(fake_ray, monkeypatch, tmp_path, cifar_dir, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    status = main(
        [
            "--engine",
            "ray",
            "--parallel",
            "2",
            "--max-retries",
            "5",
            "--only",
            "baseline",
            "--seeds",
            "0,1",
            "--logdir",
            str(tmp_path),
            "--data-dir",
            str(cifar_dir),
            "--accelerator",
            "cpu",
            *TINY,
        ]
    )
    assert status == 1 and "FAILED baseline/seed=1: not really run" in capsys.readouterr().err
    assert fake_ray == [
        {
            "trials": ["baseline/seed=0", "baseline/seed=1"],
            "logdir": str(tmp_path),
            "address": "ray://head:10001",
            "gpus_per_trial": 0.0,
            "cpus_per_trial": (os.cpu_count() or 1) / 2,
            "max_retries": 5,
        }
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "ddp"], "is not supported with it. Use --engine local"),
        (["--engine", "spark"], "invalid choice: 'spark'"),
        (["--max-retries", "-1"], "--max-retries: -1 must be >= 0"),
    ],
)
def test_engine_ray_flags_that_cannot_work_exit_2(fake_ray, args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["--engine", "ray", *args, "--logdir", str(tmp_path), "--dry-run"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err and not fake_ray


# --------------------------------------------------------------------- 3. Ray stops like the local engine
@needs_ray
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_stops_a_ray_sweep_like_the_local_engine(cifar_dir, tmp_path, signum):
    """SIGTERM to ``--engine ray --parallel 2`` while two trials train: exit 143, the running tasks are cancelled
    (their locks are free once the sweep has ended), no result is written after the signal, and the finished
    trials (none here) are listed."""
    import time

    from ablations.store import folder_lock
    from tests.processes import wait_until

    command = [
        sys.executable,
        "-m",
        "ablations.run",
        *sweep_args(
            cifar_dir,
            tmp_path,
            "--only",
            "pixel",
            "--seeds",
            "0,1,2",
            "--epochs",
            "40",
            "--engine",
            "ray",
            "--parallel",
            "2",
        ),
    ]
    sweep = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    running = lambda: sorted(p.parent for p in tmp_path.glob("notebook/pixel/*/events.out.tfevents.*"))  # noqa
    wait_until(lambda: len(running()) == 2, "two Ray tasks to train", sweep)
    sweep.send_signal(signum)
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 128 + signum, err[-3000:]
    assert "SystemError" not in err and "Traceback" not in err, err[-3000:]
    name = signal.Signals(signum).name
    assert f"interrupted by {name}: 0 of 3 trials finished" in err, err[-3000:]

    def unlocked(folder: Path) -> bool:
        with folder_lock(folder) as locked:
            return locked

    wait_until(lambda: all(unlocked(folder) for folder in running()), "the cancelled tasks to end")
    time.sleep(5.0)  # a task that went on would write its result now
    assert not list(tmp_path.rglob(RESULT_FILE)) and not list(tmp_path.rglob("*.tmp"))
