"""Bring your own question: a model named by class path (a test-only third-party package), CIFAR-100, training
settings as factors, the hash of model/data identity, load_results/run_suite, --save-model and --logger."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablations.store import write_result
from ablations.suite import expand_trials, load_suite
from tests.fakes import METRICS
from tests.helpers import NET, REPO, TINY_SETTINGS, suite_file, sweep, trials_of, wait_until
from tests.synthetic import write_synthetic_cifar100


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory) -> Path:
    return write_synthetic_cifar100(tmp_path_factory.mktemp("cifar100"))


# ------------------------------------------------------------------------------------------------- identity
def test_the_shipped_suites_keep_their_hashes_and_folders() -> None:
    """Computed before models, data and setting factors entered the hash: committed results keep resuming."""
    trials = {t.name: t.settings_hash for t in expand_trials(load_suite("notebook"), load_suite("notebook").settings)}
    assert trials["baseline/seed=0"] == "f04f8450e9f29925"
    assert trials["pixel+maxnorm=3+dropout=0.5/seed=2"] == "610efb7071feaca6"
    full = load_suite("full")
    assert expand_trials(full, full.settings)[5].name == "dropout=0.25/seed=2"
    assert expand_trials(full, full.settings)[5].settings_hash == "e222cef6e534eef8"


def test_the_hash_covers_the_model_and_data_only_when_they_are_not_the_defaults(tmp_path) -> None:
    def first(**content) -> str:
        suite = load_suite(str(suite_file(tmp_path, **content)))
        return expand_trials(suite, suite.settings)[0].settings_hash

    default = first()
    assert first(model={"class_path": "lit_cifar.NotebookCNN"}, data="cifar10") == default
    narrow, wide = (first(model={"class_path": NET, "init_args": {"width": w}}) for w in (4, 8))
    assert len({default, narrow, wide}) == 3
    assert first(data="cifar100") not in (default, narrow)
    assert first(settings={**TINY_SETTINGS, "optimizer": {"class_path": "torch.optim.SGD"}}) != default


def test_setting_factors_name_short_unique_folders_and_records(tmp_path) -> None:
    suite = load_suite(
        str(
            suite_file(
                tmp_path,
                factors={
                    "lr": [0.001, "1e-4"],
                    "optimizer": ["adam", {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}}],
                },
            )
        )
    )
    trials = expand_trials(suite, suite.settings)
    cells = [t.cell for t in trials]
    assert len(cells) == len(set(cells)) == 2 * 2 * 2
    assert "pixel,lr=0.0001,optimizer=SGD_momentum=0.9" in cells and "baseline,lr=0.001,optimizer=adam" in cells
    record = next(t for t in trials if t.cell == "pixel,lr=0.0001,optimizer=adam").record()
    assert record["factors"] == {"lr": 0.0001, "optimizer": "adam"} and record["settings"]["lr"] == 0.0001
    assert record["levels"] == {"lr": "0.0001", "optimizer": "adam"}  # a default level is its label, never null
    assert trials[0].paths(tmp_path).folder == tmp_path / "mine" / trials[0].cell / "seed=0"
    assert [t.cell for t in expand_trials(suite, suite.settings, only=["pixel"])] == [
        c for c in cells if c.startswith("pixel,")
    ]


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            {"model": {"class_path": "tests.thirdparty.nope.Net"}},
            "model tests.thirdparty.nope.Net init_args {}: module 'tests.thirdparty' has no attribute",
        ),
        (
            {"model": {"class_path": "tests.thirdparty.nets.Missing"}},
            "module 'tests.thirdparty.nets' has no attribute 'Missing'",
        ),
        (
            {"model": {"class_path": NET, "init_args": {"depth": 3}}},
            "Option 'depth' is not accepted; it takes: width, blocks, hidden, norm",
        ),
        (
            {"model": {"class_path": NET, "init_args": {"norm": False}}, "specs": ["pixel+bn"]},
            "cannot train spec pixel+bn: spec 'pixel+bn' asks for bn but backbone TinyResNet has no BatchNorm",
        ),
        ({"model": {"class_path": NET, "init_args": {"num_classes": 7}}}, "num_classes mismatch"),
        (
            {"data": {"class_path": "tests.thirdparty.nets.FloatLabels"}},
            "breaks the batch contract: labels must be int64",
        ),
        (
            {
                "settings": {
                    **TINY_SETTINGS,
                    "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"nesterov": 3, "lr": -1}},
                }
            },
            "optimizer torch.optim.SGD",
        ),
    ],
)
def test_what_cannot_train_exits_2_in_one_line_before_any_trial_folder(
    capsys, tmp_path, cifar_dir, content, expected
) -> None:
    logdir = tmp_path / "logs"
    status, _, err = sweep(
        capsys, "--suite", str(suite_file(tmp_path, **content)), "--data-dir", str(cifar_dir), "--logdir", str(logdir)
    )
    assert status == 2
    message = err.strip().splitlines()[-1]
    assert expected in message and message.startswith("python -m ablations.run: error: ")
    assert not (logdir / "mine").exists()


def test_a_flag_for_a_setting_factor_exits_2(capsys, tmp_path) -> None:
    status, _, err = sweep(
        capsys, "--suite", str(suite_file(tmp_path, factors={"lr": [0.1, 0.01]})), "--lr", "0.5", "--dry-run"
    )
    assert status == 2 and "--lr: a factor of suite 'mine'" in err


def test_cifar100_reads_its_official_layout(cifar100_dir) -> None:
    from lit_cifar import CIFAR100DataModule

    dm = CIFAR100DataModule(str(cifar100_dir), val_size=100, batch_size=50, download=False)
    assert dm.verify() == {"train": 600, "val": 100, "test": 200}
    dm.setup()
    assert dm.num_classes == 100 and dm.classes[3] == "fine3" and int(dm.train_labels.max()) == 99
    assert dm.mean.shape == (3, 32, 32)


def test_load_results_imports_no_torch(tmp_path) -> None:
    suite = load_suite(str(suite_file(tmp_path, factors={"lr": [0.01, 0.001]})))
    for trial in expand_trials(suite, suite.settings):
        trial.paths(tmp_path / "logs").folder.mkdir(parents=True)
        acc = 0.5 + trial.order / 10
        write_result(
            trial.paths(tmp_path / "logs").result,
            {**trial.record(), "metrics": {**METRICS, "test/acc": acc}, "history": [], "wall_time_s": 1.0},
        )
    code = (
        "import sys, ablations; df = ablations.load_results(sys.argv[1]); "
        "print(len(df), sorted(df.lr), 'torch' in sys.modules, 'lightning' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    assert done.stdout.split() == ["4", "[0.001,", "0.001,", "0.01,", "0.01]", "False", "False"]


# ------------------------------------------------------------------------------------------------- sweeps
@pytest.mark.slow
def test_a_class_path_model_lr_by_spec_factorial_end_to_end(capsys, tmp_path, cifar_dir, monkeypatch) -> None:
    """TinyResNet on synthetic CIFAR-10, spec x lr with two seeds, checkpoints and CSV logs: the report's table
    and effects treat lr as a factor, load_results gives its numbers, and each checkpoint predicts exactly as the
    model that was trained."""
    import torch

    import ablations
    from ablations import custom
    from lit_cifar import RegularizedClassifier

    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    predicted: dict[Path, torch.Tensor] = {}
    original = custom.save_model

    def save_and_remember(trainer, paths) -> None:
        original(trainer, paths)
        module = trainer.lightning_module.eval()
        with torch.no_grad():
            predicted[paths.checkpoint] = module(images.to(module.device)).cpu()

    monkeypatch.setattr(custom, "save_model", save_and_remember)
    path = suite_file(
        tmp_path,
        model={"class_path": NET, "init_args": {"width": 4}},
        specs=["pixel", "pixel+bn"],
        factors={"lr": [0.01, 0.001]},
        settings={**TINY_SETTINGS, "seeds": [0, 1]},
    )
    logdir = tmp_path / "logs"
    status, out, err = sweep(
        capsys,
        "--suite",
        str(path),
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(logdir),
        "--save-model",
        "--logger",
        "csv",
    )
    assert status == 0, err
    suite_dir = logdir / "mine"
    table = {row["spec"]: row for row in __import__("csv").DictReader((suite_dir / "results.csv").open())}
    assert set(table) == {"pixel,lr=0.01", "pixel,lr=0.001", "pixel+bn,lr=0.01", "pixel+bn,lr=0.001"}
    effects = (suite_dir / "effects.csv").read_text()
    assert "lr=0.01" in effects and "bn" in effects
    assert "different settings" not in (suite_dir / "results.md").read_text()
    frame = ablations.load_results(suite_dir)
    assert len(frame) == 8 and set(frame.lr) == {0.01, 0.001} and set(frame.model) == {NET}
    means = frame.groupby("cell").test_acc.mean()
    for cell, row in table.items():
        assert means[cell] == pytest.approx(float(row["test_acc"]), abs=1e-12)
    folder = suite_dir / "pixel+bn,lr=0.001" / "seed=1"
    hparams = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert hparams["lr"] == 0.001 and hparams["model"]["class_path"] == NET
    assert json.loads((folder / "result.json").read_text())["factors"] == {"lr": 0.001}
    assert "test/acc" in (folder / "csv" / "metrics.csv").read_text()
    assert len(predicted) == 8
    for checkpoint, expected in predicted.items():
        loaded = RegularizedClassifier.load_from_checkpoint(checkpoint, map_location="cpu", allowed_class_paths=[NET])
        loaded.eval()
        assert type(loaded.backbone).__name__ == "TinyResNet"
        with torch.no_grad():
            assert torch.equal(loaded(images), expected)
    again = ablations.run_suite(str(path), data_dir=str(cifar_dir), logdir=str(logdir))  # resumes: nothing trains
    assert again.equals(frame)


@pytest.mark.slow
def test_cifar100_sweep_with_a_class_path_model_resumes_after_a_kill(tmp_path, cifar100_dir) -> None:
    path = suite_file(
        tmp_path,
        name="c100",
        model={"class_path": NET, "init_args": {"width": 4}},
        data="cifar100",
        specs=["baseline", "pixel", "pixel+bn"],
    )
    logdir = tmp_path / "logs"
    command = [
        sys.executable,
        "-m",
        "ablations.run",
        "--suite",
        str(path),
        "--data-dir",
        str(cifar100_dir),
        "--logdir",
        str(logdir),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = logdir / "c100" / "baseline" / "seed=0" / "result.json"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(first.exists, "the first trial's result", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = first.read_text()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert first.read_text() == kept  # resumed: the finished trial was not retrained
    results = [json.loads(p.read_text()) for p in sorted((logdir / "c100").glob("*/seed=0/result.json"))]
    assert len(results) == 3
    assert all(r["settings"]["data"] == "cifar100" and r["settings"]["model"]["class_path"] == NET for r in results)
    assert "already done" in done.stderr


def test_the_dry_run_checks_every_cell_and_names_each_that_cannot_train(capsys, tmp_path) -> None:
    bad = suite_file(
        tmp_path,
        name="deep",
        model={"class_path": NET},
        specs=["baseline", "bn"],
        factors={"model.init_args.widht": [4, 8]},
    )
    status, out, err = sweep(capsys, "--suite", str(bad), "--dry-run", "--logdir", str(tmp_path / "logs"))
    assert status == 2 and out == ""
    assert "cell baseline,widht=4" in err and "cell bn,widht=8" in err and "it takes: width, blocks" in err
    missing = suite_file(
        tmp_path, name="deep", model={"class_path": "tests.thirdparty.nets.Missing"}, specs=["baseline"]
    )
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
        name="deep",
        specs=[],
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


@pytest.mark.slow
def test_the_dry_run_checks_a_data_module_of_ones_own_for_every_level_of_its_init_args(capsys, tmp_path) -> None:
    gray = {"model": {"class_path": "tests.thirdparty.gray.ResidualNet", "init_args": {"in_channels": 1}}}
    args = ("--dry-run", "--logdir", str(tmp_path / "logs"), "--accelerator", "cpu")
    good = suite_file(
        tmp_path,
        name="deep",
        **gray,
        data={"class_path": "tests.thirdparty.gray.GrayDigits"},
        specs=["baseline", "pixel"],
        factors={"data.init_args.train": [96, 128]},
    )
    status, out, err = sweep(capsys, "--suite", str(good), *args)
    assert status == 0, err
    assert out.splitlines()[:2] == ["baseline,train=96 seed=0  to run", "baseline,train=128 seed=0  to run"]
    bad = suite_file(
        tmp_path, name="deep", **gray, data={"class_path": "tests.thirdparty.gray.NoStatistics"}, specs=["pixel"]
    )
    status, out, err = sweep(capsys, "--suite", str(bad), *args)
    assert status == 2 and out == "" and "has no mean and std" in err


def test_the_dry_run_checks_a_data_module_of_ones_own_behind_a_builtin_level(capsys, tmp_path) -> None:
    """A `data` class swap whose first level is CIFAR-10: the later level of one's own is still checked."""
    mixed = suite_file(
        tmp_path,
        name="mixed",
        specs=["pixel"],
        factors={"data": ["cifar10", {"class_path": "tests.thirdparty.gray.NoStatistics"}]},
    )
    status, out, err = sweep(
        capsys, "--suite", str(mixed), "--dry-run", "--logdir", str(tmp_path / "logs"), "--accelerator", "cpu"
    )
    assert status == 2 and out == "" and "has no mean and std" in err, err


@pytest.mark.slow
def test_an_optimizer_init_arg_is_a_factor_and_a_trainer_argument_is_checked_against_the_trainer(
    capsys, tmp_path, cifar_dir
) -> None:
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}}
    trials = trials_of(
        suite_file(
            tmp_path,
            name="deep",
            optimizer=sgd,
            specs=["baseline"],
            factors={"optimizer.init_args.weight_decay": [0, 0.1]},
        )
    )
    assert [t.cell for t in trials] == ["baseline,weight_decay=0", "baseline,weight_decay=0.1"]
    assert trials[1].settings.optimizer.init_args == {"momentum": 0.9, "weight_decay": 0.1}
    typo = suite_file(tmp_path, name="deep", specs=["baseline"], factors={"trainer.gradient_clip_vall": [1]})
    status, _, err = sweep(capsys, "--suite", str(typo), "--dry-run", "--logdir", str(tmp_path / "logs"))
    assert status == 2 and "Option 'gradient_clip_vall' is not accepted; it takes:" in err
    assert "gradient_clip_val," in err and "max_epochs" not in err
    clipped = suite_file(tmp_path, name="deep", specs=["baseline"], trainer={"gradient_clip_val": 0.5})
    logdir = tmp_path / "logs"
    status, _, err = sweep(
        capsys, "--suite", str(clipped), "--data-dir", str(cifar_dir), "--logdir", str(logdir), "--accelerator", "cpu"
    )
    assert status == 0, err
    result = json.loads((logdir / "deep" / "baseline" / "seed=0" / "result.json").read_text())
    assert result["settings"]["trainer"] == {"gradient_clip_val": 0.5}
    hparams = yaml.safe_load((logdir / "deep" / "baseline" / "seed=0" / "hparams.yaml").read_text())
    assert hparams["trainer"] == {"gradient_clip_val": 0.5}


def test_init_args_of_the_wrong_type_are_refused_by_jsonargparse_naming_the_cell(capsys, tmp_path) -> None:
    bad = suite_file(
        tmp_path, model={"class_path": NET}, specs=["baseline"], factors={"model.init_args.width": [4, "four"]}
    )
    status, _, err = sweep(capsys, "--suite", str(bad), "--dry-run", "--logdir", str(tmp_path / "logs"))
    assert status == 2 and "cell baseline,width=four" in err and "Expected a <class 'int'>" in err
    assert "cell baseline,width=4" not in err


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


PLAIN_NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, spec, num_classes=10, width=4):
        super().__init__()
        bn = [nn.BatchNorm2d(width)] if spec.batchnorm else []
        self.features = nn.Sequential(nn.Conv2d(3, width, 3), *bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden, self.out = nn.Linear(width, 8), nn.Linear(8, num_classes)

    def forward(self, x):
        return self.out(self.hidden(self.features(x)).relu())
"""


def test_the_dry_run_of_a_plain_torch_backbone_imports_no_lightning(tmp_path) -> None:
    """A model of one's own is built and checked with torch alone: Lightning's import is left to what needs it."""
    (tmp_path / "plainnet.py").write_text(PLAIN_NET)
    path = suite_file(tmp_path, model={"class_path": "plainnet.Net"}, factors={"model.init_args.width": [4, 8]})
    code = (
        "import sys\nfrom ablations.run import main\nstatus = main(sys.argv[1:])\n"
        "print('status', status, 'lightning' in sys.modules)"
    )
    args = ["--suite", str(path), "--dry-run", "--logdir", str(tmp_path / "logs"), "--accelerator", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
    assert "status 0 False" in done.stdout, done.stdout[-1000:] + done.stderr[-2000:]
    assert done.stdout.count("to run") == 4
