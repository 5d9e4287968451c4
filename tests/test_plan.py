"""`ablations.plan`: a sweep's plan made from plain values (`Request`), the same plan the command line makes from
its flags; the trial count without torch; the values' problems as ValueError."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from ablations.plan import Request, count_trials, make_plan, prepare
from ablations.run import build_parser, request_of
from tests.helpers import REPO

CPU = {"accelerator": "cpu"}
ARGV_CPU = ["--accelerator", "cpu"]


def test_every_request_field_is_a_flag_of_the_command_line():
    dests = {action.dest for action in build_parser()._actions}
    assert {f.name for f in dataclasses.fields(Request)} <= dests


def test_a_request_plans_what_the_same_flags_plan(tmp_path):
    values = {
        "only": ["pixel", "pixel+bn"],
        "seeds": [0, 1],
        "epochs": 1,
        "lr": 0.01,
        "logdir": str(tmp_path),
        "reference": "pixel+bn",
        **CPU,
    }
    from_values = make_plan(Request(**values))
    argv = ["--only", "pixel", "pixel+bn", "--seeds", "0,1", "--epochs", "1", "--lr", "0.01", "--logdir", str(tmp_path)]
    from_flags = make_plan(request_of(build_parser().parse_args([*argv, "--reference", "pixel+bn", *ARGV_CPU])))
    assert [t.name for t in from_values.trials] == [
        "pixel/seed=0",
        "pixel/seed=1",
        "pixel+bn/seed=0",
        "pixel+bn/seed=1",
    ]
    assert [t.settings_hash for t in from_values.trials] == [t.settings_hash for t in from_flags.trials]
    assert from_values == from_flags
    assert from_values.reference == "pixel+bn" and from_values.trials[0].settings.lr == 0.01
    assert (from_values.parallel, from_values.gpus, from_values.request.engine) == (1, 0, "local")


def test_shard_and_count_agree_with_the_plan():
    request = Request(seeds=[0, 1, 2], shard=(2, 4), **CPU)
    plan = make_plan(request)
    assert plan.unsharded == 27 and len(plan.trials) == 7 == count_trials(request)
    assert count_trials(Request(only=["baseline"], seeds=[0, 1])) == 2


def test_a_model_given_as_a_mapping_is_planned_like_its_json():
    model = {"class_path": "lit_cifar.models.NotebookCNN", "init_args": {}}
    as_mapping = make_plan(Request(only=["pixel"], seeds=[0], model=model, **CPU))
    argv = ["--only", "pixel", "--seeds", "0", "--model", json.dumps(model), *ARGV_CPU]
    as_json = make_plan(request_of(build_parser().parse_args(argv)))
    assert as_mapping.trials[0].settings_hash == as_json.trials[0].settings_hash


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "epochs=0 must be >= 1"),
        ({"only": ["pixle"]}, "unknown token 'pixle'"),
        ({"suite": "nosuch"}, "unknown suite 'nosuch'"),
        ({"strategy": "ddp", "parallel": 2}, "--parallel 2 with --strategy ddp"),
        ({"num_nodes": 2}, "--num-nodes 2 needs --strategy ddp"),
    ],
)
def test_bad_values_raise_value_error(values, message):
    with pytest.raises(ValueError, match=message):
        make_plan(Request(**{**CPU, **values}))


def test_prepare_refuses_a_logdir_that_is_a_file(tmp_path):
    logdir = tmp_path / "file"
    logdir.write_text("")
    with pytest.raises(ValueError, match="is not writable"):
        prepare(Request(only=["pixel"], seeds=[0], logdir=str(logdir), **CPU))


def test_counting_trials_imports_no_torch():
    code = (
        "import sys\nfrom ablations.plan import Request, count_trials\n"
        "n = count_trials(Request(suite='full', seeds=[0, 1]))\n"
        "print(n, sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[0] == "192 []", done.stdout + done.stderr


def test_a_dry_run_of_the_notebook_suite_on_its_data_imports_no_torch(cifar_dir, tmp_path):
    """Planning, the checks and the data fingerprint of a built-in dataset read files only: no torch, no Lightning."""
    code = (
        "import sys\nfrom ablations.run import main\nstatus = main(sys.argv[1:])\n"
        "print('status', status, 'heavy', sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    args = ["--dry-run", "--data-dir", str(cifar_dir), "--logdir", str(tmp_path), "--accelerator", "cpu"]
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "status 0 heavy []" in done.stdout, done.stdout[-500:] + done.stderr[-2000:]
