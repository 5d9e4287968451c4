"""Issue 30: any key of the config tree is a factor, every level has one label, and no result is reused after the
user's model source or the data changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ablations.suite import SuiteError, expand_trials, load_suite
from tests.fakes import METRICS
from tests.helpers import REPO, sweep

NET = "tests.thirdparty.nets.TinyResNet"
TINY = {"epochs": 1, "batch_size": 32, "val_size": 64, "limit_train": 64, "seeds": [0]}


def suite_file(tmp_path: Path, **content) -> Path:
    path = tmp_path / "deep.yaml"
    path.write_text(yaml.safe_dump({"name": "deep", "settings": TINY, **content}))
    return path


def trials_of(path: Path) -> list:
    suite = load_suite(str(path))
    return expand_trials(suite, suite.settings)


def test_a_key_of_the_tree_a_trainer_argument_and_a_class_swap_are_factors(tmp_path) -> None:
    path = suite_file(
        tmp_path,
        model={"class_path": NET, "init_args": {"width": 4}},
        specs=["baseline"],
        factors={"model.init_args.blocks": [1, 2], "trainer.gradient_clip_val": [0, 1.0]},
    )
    trials = trials_of(path)
    assert [t.cell for t in trials] == [
        "baseline,blocks=1,gradient_clip_val=0",
        "baseline,blocks=1,gradient_clip_val=1",
        "baseline,blocks=2,gradient_clip_val=0",
        "baseline,blocks=2,gradient_clip_val=1",
    ]
    last = trials[-1].record()
    assert last["settings"]["model"] == {"class_path": NET, "init_args": {"blocks": 2, "width": 4}}
    assert last["settings"]["trainer"] == {"gradient_clip_val": 1.0}
    assert last["levels"] == {"blocks": "2", "gradient_clip_val": "1"}
    assert last["factors"] == {"model.init_args.blocks": 2, "trainer.gradient_clip_val": 1.0}
    assert len({t.settings_hash for t in trials}) == 4

    swap = trials_of(
        suite_file(tmp_path, specs=["baseline"], factors={"model": ["lit_cifar.NotebookCNN", {"class_path": NET}]})
    )
    assert [t.cell for t in swap] == ["baseline,model=NotebookCNN", "baseline,model=TinyResNet"]
    assert "model" not in swap[0].hashed_settings()  # the default model keeps the hash it always had
    assert [t.levels() for t in swap] == [{"model": "NotebookCNN"}, {"model": "TinyResNet"}]


def test_spec_factor_levels_are_labelled_and_the_shipped_suites_keep_their_hashes() -> None:
    full = load_suite("full")
    trials = expand_trials(full, full.settings)
    assert trials[5].name == "dropout=0.25/seed=2" and trials[5].settings_hash == "e222cef6e534eef8"
    assert trials[5].levels()["dropout"] == "dropout=0.25" and trials[5].levels()["batchnorm"] == "baseline"
    assert trials[5].record()["levels"] == trials[5].levels()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"trainer": {"max_epochs": 3}}, "trainer.max_epochs is set by the epochs setting"),
        ({"factors": {"trainer.precision": ["bf16-mixed"]}}, "is set by the precision setting"),
        ({"factors": {"model.width": [1, 2]}}, "model.init_args.NAME"),
        ({"factors": {"data.init_args.size": [1]}}, "needs data: {class_path: ...}"),
        ({"factors": {"model.init_args.width": [4], "trainer.width": [1]}}, "share the short name width"),
    ],
)
def test_a_key_the_tree_cannot_take_is_refused_naming_what_to_use(tmp_path, content, message) -> None:
    with pytest.raises(SuiteError, match=message.replace("{", r"\{").replace(".", r"\.")):
        load_suite(str(suite_file(tmp_path, specs=["baseline"], **content)))


def test_the_dry_run_checks_every_cell_and_names_each_that_cannot_train(capsys, tmp_path) -> None:
    bad = suite_file(
        tmp_path,
        model={"class_path": NET},
        specs=["baseline", "bn"],
        factors={"model.init_args.widht": [4, 8]},
    )
    status, out, err = sweep(capsys, "--suite", str(bad), "--dry-run", "--logdir", str(tmp_path / "logs"))
    assert status == 2 and out == ""
    assert "cell baseline,widht=4" in err and "cell bn,widht=8" in err and "it takes: width, blocks" in err
    missing = suite_file(tmp_path, model={"class_path": "tests.thirdparty.nets.Missing"}, specs=["baseline"])
    status, _, err = sweep(capsys, "--suite", str(missing), "--dry-run", "--logdir", str(tmp_path / "logs"))
    assert (
        status == 2
        and "tests.thirdparty.nets.Missing init_args {}: module 'tests.thirdparty.nets' has no attribute 'Missing'"
        in err
    )
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_a_lab_asks_depth_by_bn_by_optimizer_and_a_changed_forward_or_data_is_refused(
    capsys, tmp_path, cifar_dir, cifar_py_dir, monkeypatch
) -> None:
    """A package of one's own (outside the repository) with a residual backbone: one suite of depth x bn x
    optimizer gives one table, one effects model naming depth, a DataFrame that groups by every factor, and a rerun
    after its forward or its data changed exits 2 until --force."""
    import ablations

    package = tmp_path / "lab" / "labnets"
    package.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "thirdparty" / "nets.py", package / "__init__.py")
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    path = suite_file(
        tmp_path,
        model={"class_path": "labnets.TinyResNet", "init_args": {"width": 4}},
        factors={"model.init_args.blocks": [1, 2], "bn": ["baseline", "bn"], "optimizer": ["adam", "torch.optim.SGD"]},
    )
    logdir = tmp_path / "logs"
    run = ("--suite", str(path), "--data-dir", str(cifar_dir), "--logdir", str(logdir), "--accelerator", "cpu")
    status, _, err = sweep(capsys, *run)
    assert status == 0, err
    suite_dir = logdir / "deep"
    frame = ablations.load_results(suite_dir)
    assert len(frame) == 8 and frame.groupby("optimizer").size().to_dict() == {"SGD": 4, "adam": 4}
    assert frame.groupby("blocks").size().to_dict() == {1: 4, 2: 4} and frame.groupby("bn").size().sum() == 8
    assert len((suite_dir / "results.csv").read_text().splitlines()) == 1 + 8  # one table of every cell
    effects = (suite_dir / "effects.csv").read_text()
    assert "blocks" in effects and "optimizer" in effects
    result = json.loads((suite_dir / "bn,blocks=2,optimizer=adam" / "seed=0" / "result.json").read_text())
    assert result["levels"] == {"bn": "bn", "blocks": "2", "optimizer": "adam"}
    assert set(result["fingerprints"]) == {"model source", "data"}

    source = package / "__init__.py"
    source.write_text(source.read_text().replace("torch.relu(x + self.body(x))", "torch.relu(self.body(x) + x)"))
    status, out, _ = sweep(capsys, *run, "--dry-run")
    assert status == 0 and out.count("finished with other model source") == 8
    status, _, err = sweep(capsys, *run)
    assert status == 2 and "(model source changed)" in err and "--force" in err

    source.write_text(source.read_text().replace("torch.relu(self.body(x) + x)", "torch.relu(x + self.body(x))"))
    other_data = [*run[:3], str(cifar_py_dir), *run[4:]]
    status, _, err = sweep(capsys, *other_data)
    assert status == 2 and "(data changed)" in err
    status, _, err = sweep(capsys, *run)  # the model and data it was trained on: all finished
    assert status == 0 and "0 trained, 8 already done" in err


def test_run_suite_plans_from_values_and_raises_only_its_documented_exceptions(tmp_path, cifar_dir, monkeypatch):
    import pandas as pd

    from ablations import trial as trial_module
    from ablations.api import SweepError, TrialsFailed, run_suite

    content = {"name": "deep", "settings": TINY, "specs": ["baseline"], "factors": {"trainer.gradient_clip_val": [0]}}
    with pytest.raises(SweepError, match="unknown arguments \\['epoch'\\]"):
        run_suite(content, epoch=1)
    with pytest.raises(SweepError, match="model.init_args.NAME"):
        run_suite({**content, "factors": {"model.width": [1]}}, logdir=str(tmp_path / "logs"))

    def fail(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(trial_module, "_train_and_test", fail)
    with pytest.raises(TrialsFailed, match="boom") as failed:  # every trial failed: no NothingToReport
        run_suite(content, logdir=str(tmp_path / "logs"), data_dir=str(cifar_dir), accelerator="cpu")
    assert isinstance(failed.value.results, pd.DataFrame) and failed.value.results.empty
    assert [s.state for s in failed.value.statuses] == ["failed"]


@pytest.mark.slow
def test_the_dry_run_checks_a_data_module_of_ones_own_for_every_level_of_its_init_args(capsys, tmp_path) -> None:
    gray = {"model": {"class_path": "tests.thirdparty.gray.ResidualNet", "init_args": {"in_channels": 1}}}
    args = ("--dry-run", "--logdir", str(tmp_path / "logs"), "--accelerator", "cpu")
    good = suite_file(
        tmp_path,
        **gray,
        data={"class_path": "tests.thirdparty.gray.GrayDigits"},
        specs=["baseline", "pixel"],
        factors={"data.init_args.train": [96, 128]},
    )
    status, out, err = sweep(capsys, "--suite", str(good), *args)
    assert status == 0, err
    assert out.splitlines()[:2] == ["baseline,train=96 seed=0  to run", "baseline,train=128 seed=0  to run"]
    bad = suite_file(tmp_path, **gray, data={"class_path": "tests.thirdparty.gray.NoStatistics"}, specs=["pixel"])
    status, out, err = sweep(capsys, "--suite", str(bad), *args)
    assert status == 2 and out == "" and "has no mean and std" in err


def test_the_committed_replication_resumes_and_refuses_other_data(capsys, tmp_path, monkeypatch) -> None:
    """Its results record the fingerprint of the data they were trained on (scripts/migrate_logs.py): without
    data they still count as finished; a --data-dir of other data (here a CIFAR-100 folder) makes them stale."""
    monkeypatch.setenv("LIT_CIFAR_DATA", str(tmp_path / "nothing"))
    logdir = str(REPO / "logs" / "replication")
    args = ("--suite", "notebook", "--seeds", "0,1,2", "--logdir", logdir, "--dry-run")
    status, out, _ = sweep(capsys, *args)
    assert status == 0 and out.count("  finished\n") == 27
    (tmp_path / "c100" / "cifar-100-python").mkdir(parents=True)
    status, out, _ = sweep(capsys, *args, "--data-dir", str(tmp_path / "c100"))
    assert status == 0 and out.count("  finished with other data\n") == 27


@pytest.mark.slow
def test_an_optimizer_init_arg_is_a_factor_and_a_trainer_argument_is_checked_against_the_trainer(
    capsys, tmp_path, cifar_dir
) -> None:
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}}
    trials = trials_of(
        suite_file(tmp_path, optimizer=sgd, specs=["baseline"], factors={"optimizer.init_args.weight_decay": [0, 0.1]})
    )
    assert [t.cell for t in trials] == ["baseline,weight_decay=0", "baseline,weight_decay=0.1"]
    assert trials[1].settings.optimizer.init_args == {"momentum": 0.9, "weight_decay": 0.1}
    typo = suite_file(tmp_path, specs=["baseline"], factors={"trainer.gradient_clip_vall": [1]})
    status, _, err = sweep(capsys, "--suite", str(typo), "--dry-run", "--logdir", str(tmp_path / "logs"))
    assert status == 2 and "Option 'gradient_clip_vall' is not accepted; it takes:" in err
    assert "gradient_clip_val," in err and "max_epochs" not in err
    clipped = suite_file(tmp_path, specs=["baseline"], trainer={"gradient_clip_val": 0.5})
    logdir = tmp_path / "logs"
    status, _, err = sweep(
        capsys, "--suite", str(clipped), "--data-dir", str(cifar_dir), "--logdir", str(logdir), "--accelerator", "cpu"
    )
    assert status == 0, err
    result = json.loads((logdir / "deep" / "baseline" / "seed=0" / "result.json").read_text())
    assert result["settings"]["trainer"] == {"gradient_clip_val": 0.5}
    hparams = yaml.safe_load((logdir / "deep" / "baseline" / "seed=0" / "hparams.yaml").read_text())
    assert hparams["trainer"] == {"gradient_clip_val": 0.5}


def test_the_migration_adds_levels_and_the_data_fingerprint_once(tmp_path, cifar_dir) -> None:
    import importlib.util

    from ablations.custom import builtin_fingerprint
    from ablations.store import read_result

    spec = importlib.util.spec_from_file_location("migrate_logs", REPO / "scripts" / "migrate_logs.py")
    migrate_logs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migrate_logs)
    full = load_suite("full")
    trial = expand_trials(full, full.settings)[5]
    old = {k: v for k, v in trial.record().items() if k != "levels"}  # as written before levels existed
    folder = trial.paths(tmp_path / "logs").folder
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({**old, "metrics": METRICS, "history": []}))
    assert migrate_logs.main(["--data-dir", str(cifar_dir), str(tmp_path / "logs")]) == 0
    result = read_result(folder)  # checksummed
    assert result["levels"] == trial.levels() and result["levels"]["dropout"] == "dropout=0.25"
    assert result["fingerprints"] == {"data": builtin_fingerprint("cifar10", cifar_dir, tmp_path)}
    before = (folder / "result.json").read_text()
    assert migrate_logs.migrate(tmp_path / "logs", cifar_dir)[:2] == (0, 1)  # idempotent
    assert (folder / "result.json").read_text() == before


def test_init_args_of_the_wrong_type_are_refused_by_jsonargparse_naming_the_cell(capsys, tmp_path) -> None:
    bad = suite_file(
        tmp_path, model={"class_path": NET}, specs=["baseline"], factors={"model.init_args.width": [4, "four"]}
    )
    status, _, err = sweep(capsys, "--suite", str(bad), "--dry-run", "--logdir", str(tmp_path / "logs"))
    assert status == 2 and "cell baseline,width=four" in err and "Expected a <class 'int'>" in err
    assert "cell baseline,width=4" not in err


def test_every_committed_result_keeps_the_hash_its_suite_gives_it_now() -> None:
    """A refactor of the config layer cannot silently change identity: each committed factorial result's settings
    and hash are what its suite, read today, gives its cell."""
    from ablations.store import read_result

    full = load_suite("full")
    trials = {t.name: t for t in expand_trials(full, full.settings.override(limit_train=10000, seeds=(0,)))}
    folders = sorted((REPO / "logs" / "factorial" / "full").glob("*/seed=0"))
    assert len(folders) == len(trials) == 96
    for folder in folders:
        result = read_result(folder)
        trial = trials[f"{folder.parent.name}/seed=0"]
        assert (result["settings"], result["settings_hash"]) == (trial.hashed_settings(), trial.settings_hash)
        assert result["levels"] == trial.levels()
