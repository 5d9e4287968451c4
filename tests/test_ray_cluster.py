"""The Ray engine on a multi-node cluster (Ray's own simulator, `ray.cluster_utils.Cluster`): a node lost mid-trial.

A module of its own: the test joins the cluster in this process, which `tests/test_ray.py`'s local Ray holds.
"""

from __future__ import annotations

import pytest

from ablations.engines.ray import RayExecutor, TrialResources
from ablations.store import read_result
from ablations.suite import RunOptions
from ablations.trial import run_trial
from tests.helpers import notebook_trials

pytest.importorskip("ray")  # the `ray` extra


# --------------------------------------------------------- 4. a node lost mid-trial on a multi-node Ray cluster
@pytest.mark.slow
def test_a_node_lost_mid_trial_is_retried_and_the_sweep_equals_a_local_one(cifar_dir, tmp_path, capfd):
    """A head and a second node (`ray.cluster_utils.Cluster`, one CPU each), two trials, one per node; the second
    node is removed while both train. The sweep finishes, the lost trial is retried (on the head), both results
    equal the local engine's, and the folder of the trial that was not lost is left as it was."""
    import logging
    import threading

    import ray
    import torch
    from ray.cluster_utils import Cluster

    from tests.processes import wait_until

    trials = notebook_trials(only=["pixel+dropout=0.25"], seeds=(0, 1), epochs=20)
    local, remote = tmp_path / "local", tmp_path / "ray"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task (one CPU)
    try:
        assert all(
            run_trial(t, RunOptions(data_dir=str(cifar_dir), logdir=str(local), accelerator="cpu")).state == "done"
            for t in trials
        )
    finally:
        torch.set_num_threads(threads)

    quick_failure_detection = {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_failure_threshold": 2,
    }
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": quick_failure_detection})
    try:
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        statuses: list = []
        options = RunOptions(data_dir=str(cifar_dir), logdir=str(remote), accelerator="cpu")
        sweep = threading.Thread(
            target=lambda: statuses.extend(
                RayExecutor(cluster.address, TrialResources(gpus=0, cpus=1), max_retries=2).execute(trials, options)
            )
        )
        sweep.start()
        folders = [t.paths(remote).folder for t in trials]
        events = lambda folder: {p.name for p in folder.glob("events.out.tfevents.*")}  # noqa: E731
        wait_until(lambda: all(events(f) for f in folders), "both trials to train, one on each node")
        before = {folder: events(folder) for folder in folders}
        cluster.remove_node(second, allow_graceful=False)
        sweep.join(timeout=600)
        assert not sweep.is_alive(), "the sweep did not finish"
    finally:
        ray.shutdown()
        cluster.shutdown()
    err = capfd.readouterr().err
    assert [s.state for s in statuses] == ["done", "done"], statuses
    assert "Ray worker lost running pixel+dropout=0.25/seed=" in err and "retry 1 of 2" in err, err[-3000:]
    kept = [folder for folder in folders if before[folder] <= events(folder)]
    retried = [folder for folder in folders if not before[folder] & events(folder)]
    assert len(kept) == 1 and len(retried) == 1, (before, {f: events(f) for f in folders})
    for t in trials:
        ours, theirs = read_result(t.paths(remote).folder), read_result(t.paths(local).folder)
        assert (ours["metrics"], ours["history"], ours["settings_hash"]) == (
            theirs["metrics"],
            theirs["history"],
            theirs["settings_hash"],
        )
