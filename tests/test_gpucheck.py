"""benchmarks/gpucheck.py: the sweeps it times for the GPUs it finds, its refusal of a machine without one, and a
tiny run on CPU."""

from __future__ import annotations

import subprocess
import sys

import gpucheck
import pytest

from tests.helpers import REPO


def test_gpucheck_plans_trial_parallel_and_ddp_runs_for_the_gpus_it_finds():
    planned = {row.name: (row.flags, row.trials, row.world_size) for row in gpucheck.rows(gpus=4, tiny=False)}
    assert planned == {
        "one at a time": (("--parallel", "1"), 9, 1),
        "one per GPU": (("--parallel", "4"), 9, 1),
        "two per GPU": (("--parallel", "8"), 9, 1),
        "DDP, 2 GPUs": (("--only", "pixel", "--strategy", "ddp", "--devices", "2"), 1, 2),
    }


@pytest.mark.slow
def test_gpucheck_runs_tiny_on_cpu(capsys):
    assert gpucheck.main(["--tiny", "--accelerator", "cpu"]) == 0
    table = capsys.readouterr().out
    for row in (
        "| one at a time | `--only baseline pixel --parallel 1` | 2 |",
        "| two at a time | `--only baseline pixel --parallel 2` | 2 |",
        "| DDP, 2 processes |",
    ):
        assert row in table
    assert "NO:" not in table


def test_gpucheck_refuses_a_machine_without_a_gpu_in_one_line():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpucheck.py"), "--accelerator", "cpu"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no GPU here" in done.stderr and "--tiny" in done.stderr
