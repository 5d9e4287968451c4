"""Bring your own question: a model named by class path (a test-only third-party package), CIFAR-100, training
settings as factors, the hash of model/data identity, load_results/run_suite, --save-model and --logger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablations.store import write_result
from ablations.suite import expand_trials, load_suite
from tests.fakes import METRICS
from tests.helpers import REPO, sweep, wait_until
from tests.synthetic import write_synthetic_cifar100

NET = "tests.thirdparty.nets.TinyResNet"
TINY = {"epochs": 1, "batch_size": 32, "val_size": 64, "limit_train": 64, "seeds": [0]}


def suite_file(tmp_path: Path, name: str = "mine", **content) -> Path:
    data = {"name": name, "settings": TINY, "specs": ["baseline", "pixel"], **content}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


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
    assert first(settings={**TINY, "optimizer": {"class_path": "torch.optim.SGD"}}) != default


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
                    **TINY,
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
        settings={**TINY, "seeds": [0, 1]},
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
