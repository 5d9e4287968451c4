"""`ablations.signals`: SIGTERM and SIGINT stop a sweep at once, in order, without a traceback, and its workers
with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablations.store import RESULT_FILE
from tests.helpers import DEADLINE_S, REPO, alive, children, results, wait_until
from tests.test_reliability import sweep_command
from tests.helpers import sweep_args


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "2"])
def test_sigterm_stops_the_sweep_and_exits_143(cifar_dir, tmp_path, parallel):
    """SIGTERM (a SLURM time limit, `kill`) mid-trial: no new trial starts, no half-written result, the finished
    trials are listed and the exit status is 143; with workers, none is left running."""
    command = sweep_command(cifar_dir, tmp_path, "--only", "pixel", "--seeds", "0,1,2,3", "--parallel", parallel)
    sweep = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )

    def started() -> list[str]:
        return sorted({p.parent.name for p in tmp_path.glob("notebook/pixel/*/events.out.tfevents.*")})

    wait_until(lambda: len(started()) == 2, "two trials to start", sweep)
    workers = children(sweep.pid)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 143, err[-2000:]
    finished = sorted(name.split("/", 1)[1] for name in results(tmp_path))
    assert f"interrupted by SIGTERM: {len(finished)} of 4 trials finished" in err
    assert all(name in err for name in finished)
    assert len(started()) <= len(finished) + int(parallel)  # at most the trials that were running; none after
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("error.json"))
    wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to end")


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


# ------------------------------------------------------------- 6. Ctrl-C on a parallel sweep stops it at once
@pytest.mark.slow
def test_ctrl_c_on_a_parallel_sweep_stops_it_at_once_without_a_traceback(cifar_dir, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it, while two workers train: exit 130 well within
    the grace period the workers get (no worker has to be killed), and no worker prints a traceback."""

    from ablations.engines.local import STOP_GRACE_S
    from tests.processes import alive, children, wait_until

    command = [
        sys.executable,
        "-m",
        "ablations.run",
        *sweep_args(cifar_dir, tmp_path, "--only", "pixel", "--seeds", "0,1,2", "--epochs", "50", "--parallel", "2"),
    ]
    sweep = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_until(
        lambda: len(list(tmp_path.glob("notebook/pixel/*/events.out.tfevents.*"))) == 2, "two trials to start", sweep
    )
    workers = children(sweep.pid)
    time.sleep(1.0)  # well inside training
    os.killpg(sweep.pid, signal.SIGINT)
    start = time.monotonic()
    _, err = sweep.communicate(timeout=300)
    took = time.monotonic() - start
    assert sweep.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Interrupted" not in err.replace("interrupted by SIGINT", ""), err[-3000:]
    assert "interrupted by SIGINT: 0 of 3 trials finished" in err
    assert took < STOP_GRACE_S / 2, f"{took:.0f} s to stop"
    wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to end")
    assert not list(tmp_path.rglob(RESULT_FILE)) and not list(tmp_path.rglob("*.tmp"))


def test_ctrl_c_stops_workers_at_once_even_if_a_thread_of_theirs_never_ends(tmp_path):
    """Workers whose trial left a non-daemon thread running (a writer, say) still end at once on Ctrl-C: the
    sweep exits 130 well within the workers' grace period, and no worker prints a traceback."""

    from ablations.engines.local import STOP_GRACE_S
    from tests.processes import alive, wait_until

    sweep = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", str(tmp_path), "2", "block_with_a_busy_thread"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started = lambda: {int(p.read_text()) for p in tmp_path.glob("fake/*/*/started-*") if p.read_text()}  # noqa
    wait_until(lambda: len(started()) == 2, "both workers started a trial", sweep)
    workers = started()
    os.killpg(sweep.pid, signal.SIGINT)
    start = time.monotonic()
    out, err = sweep.communicate(timeout=300)
    took = time.monotonic() - start
    assert sweep.returncode == 130 and "interrupted by SIGINT: finished []" in out, err[-3000:]
    assert took < STOP_GRACE_S / 2, f"{took:.0f} s to stop"
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to end")
