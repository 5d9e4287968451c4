"""Scaling out: worker slots, worker death, signals and parent death, the Ray seam, DDP sweeps and their resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ablations.status import TrialState, TrialStatus
from ablations.engines.base import Progress
from ablations.engines.local import run_local, worker_slots
from ablations.engines.ray import TrialResources
from ablations.run import main
from ablations.store import ERROR_FILE, RESULT_FILE
from ablations.suite import RunOptions, TrainSettings, Trial
from lit_cifar.spec import RegularizationSpec
from tests import fakes
from tests.helpers import DEADLINE_S, REPO, TINY, alive, results, wait_until


def fake_trials(n: int = 3) -> list[Trial]:
    return [Trial("fake", RegularizationSpec(), seed, TrainSettings(seeds=(seed,)), 0) for seed in range(n)]


# ------------------------------------------------------------------------------------------- slots, Ray seam
def test_each_local_worker_gets_its_own_gpu_slot_and_thread_share():
    assert [(s.cuda_visible_devices, s.threads) for s in worker_slots(4, gpus=4, cpus=16)] == [
        ("0", 4),
        ("1", 4),
        ("2", 4),
        ("3", 4),
    ]
    assert [s.cuda_visible_devices for s in worker_slots(4, gpus=2, cpus=16)] == ["0", "1", "0", "1"]  # packed
    # GPUs numbered as the parent sees them (e.g. SLURM set CUDA_VISIBLE_DEVICES=3,5)
    assert [s.cuda_visible_devices for s in worker_slots(2, gpus=2, cpus=2, visible="3,5")] == ["3", "5"]
    assert [(s.cuda_visible_devices, s.threads) for s in worker_slots(3, gpus=0, cpus=2)] == [(None, 1)] * 3


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


def test_engine_ray_without_ray_installed_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(SystemExit) as exit_:
        main(["--engine", "ray", "--dry-run"])
    assert exit_.value.code == 2 and 'pip install -e ".[ray]"' in capsys.readouterr().err


# ------------------------------------------------------------------------------------ local worker processes
def test_workers_run_in_their_slots(tmp_path):
    options = RunOptions(logdir=str(tmp_path))
    statuses = run_local(
        fake_trials(),
        options,
        fakes.finish,
        Progress(fake_trials(), show=False),
        worker_slots(2, gpus=2, cpus=4, visible="6,7"),
    )
    assert [s.state for s in statuses] == ["done"] * 3
    seen = [json.loads(p.read_text()) for p in tmp_path.glob(f"fake/*/*/{RESULT_FILE}")]
    assert {r["cuda"] for r in seen} == {"6", "7"} and {r["threads"] for r in seen} == {"2"}


def test_a_killed_worker_fails_its_trial_and_the_sweep_goes_on(tmp_path):
    """The OOM killer or a segfault ends a worker: its trial is failed with the signal, a new worker takes over."""
    options = RunOptions(logdir=str(tmp_path))
    statuses = run_local(
        fake_trials(4),
        options,
        fakes.die_on_seed_1,
        Progress(fake_trials(4), show=False),
        worker_slots(2, gpus=0, cpus=2),
    )
    assert [s.state for s in statuses] == ["done", "failed", "done", "done"]
    assert "killed by SIGKILL" in str(statuses[1].error)
    error = json.loads((tmp_path / "fake/baseline/seed=1" / ERROR_FILE).read_text())
    assert error["signal"] == "SIGKILL" and error["settings_hash"] == fake_trials()[1].settings_hash
    assert not (tmp_path / "fake/baseline/seed=1" / RESULT_FILE).exists()


def started(logdir: Path) -> dict[int, int]:
    """{seed: pid of the worker} of every fake trial that started."""
    return {int(p.name.split("-")[1]): int(p.read_text()) for p in logdir.glob("fake/*/*/started-*") if p.read_text()}


@pytest.mark.parametrize(
    "how, status",
    [("SIGTERM to the main process", 143), ("Ctrl-C (SIGINT to the group)", 130), ("SIGKILL to the main process", -9)],
)
def test_stopping_the_main_process_stops_its_workers_and_starts_no_new_trial(tmp_path, how, status):
    """Two workers each block in a trial; a third trial waits. However the main process is stopped, the workers end
    (with it, or with their parent under kill -9) and the waiting trial never starts."""
    sweep = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", str(tmp_path), "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_until(lambda: len(started(tmp_path)) == 2, "both workers started a trial", sweep)
    workers = started(tmp_path)
    if how.startswith("Ctrl-C"):
        os.killpg(sweep.pid, signal.SIGINT)
    else:
        sweep.send_signal(signal.SIGTERM if "SIGTERM" in how else signal.SIGKILL)
    out, _ = sweep.communicate(timeout=DEADLINE_S)
    assert sweep.returncode == status
    if status > 0:
        assert f"interrupted by {'SIGTERM' if status == 143 else 'SIGINT'}: finished []" in out
    wait_until(lambda: not any(alive(pid) for pid in workers.values()), "the workers to end")
    assert sorted(started(tmp_path)) == [0, 1]  # the third trial never started
    assert not list(tmp_path.rglob(RESULT_FILE)) and not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------- DDP sweeps
def ddp_command(data_dir: Path, logdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ablations.run",
        "--data-dir",
        str(data_dir),
        "--logdir",
        str(logdir),
        "--only",
        "pixel+bn",
        "--seeds",
        "0,1,2",
        "--accelerator",
        "cpu",
        "--strategy",
        "ddp",
        "--devices",
        "2",
        *TINY,
    ]


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, cifar_dir):
    """An uninterrupted 2-rank (gloo, CPU) sweep of 3 trials."""
    logdir = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(
        ddp_command(cifar_dir, logdir), cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S * 2
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return results(logdir)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_counts_the_test_set_once(ddp_reference):
    result = ddp_reference["notebook/pixel+bn/seed=0"]
    assert result["world_size"] == 2 and result["settings"]["data_parallel"] == 2
    assert result["test_images"] == 200
    # test/acc is a multiple of 1/200: all 200 test images counted once across the two ranks, none twice
    assert result["metrics"]["test/acc"] * 200 == pytest.approx(round(result["metrics"]["test/acc"] * 200), abs=1e-3)


@pytest.mark.slow
def test_ddp_sweep_killed_after_its_first_trial_resumes_to_the_same_results(ddp_reference, cifar_dir, tmp_path):
    """Every rank takes rank 0's decision: on resume all ranks skip the finished trial and train the same ones."""
    command = ddp_command(cifar_dir, tmp_path)
    sweep = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_until(lambda: bool(results(tmp_path)), "the first result.json", sweep)
    os.killpg(sweep.pid, signal.SIGKILL)  # rank 0 and the rank it launched
    sweep.wait()
    kept = {name: result["metrics"] for name, result in results(tmp_path).items()}
    assert "notebook/pixel+bn/seed=0" in kept and len(kept) < 3
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S * 2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{3 - len(kept)} trained, {len(kept)} already done" in rerun.stderr
    resumed = results(tmp_path)
    assert sorted(resumed) == sorted(ddp_reference)
    for name, result in resumed.items():
        assert (result["metrics"], result["history"]) == (
            ddp_reference[name]["metrics"],
            ddp_reference[name]["history"],
        ), name
        assert result["world_size"] == 2
