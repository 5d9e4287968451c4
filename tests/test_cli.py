"""`python -m lit_cifar`: Lightning's CLI with the data module's normalization and augmentation linked to
``--model.spec``, checkpoints that carry the spec, and bad arguments that exit 2 with one line. Runs in-process, in
a temporary working directory (logged runs write logs/lit_cifar/ there)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lit_cifar import CIFAR10DataModule, LitCifarCLI, RegularizationSpec, RegularizedClassifier
from lit_cifar.cli import run_cli as main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def cli_args(command: str, spec: str, data_dir: Path, *extra: str) -> list[str]:
    """A one-batch run (``fast_dev_run`` unless `extra` says otherwise) on the synthetic data."""
    return [
        command,
        "--model.spec",
        spec,
        "--data.data_dir",
        str(data_dir),
        "--data.val_size",
        "100",
        "--data.batch_size",
        "64",
        "--trainer.fast_dev_run",
        "true",
        *QUIET,
        *extra,
    ]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Work in `tmp_path`, with a command line that holds only the program name (not pytest's arguments)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lit_cifar"])


@pytest.mark.parametrize(
    ("spec", "normalize", "augment"),
    [
        ("pixel+bn", "pixel", False),
        ("channel+augment", "channel", True),
        ("baseline", "none", False),
        ("l2=0.01+augment", "none", True),
    ],
)
def test_spec_sets_data_normalize_and_augment(cifar_dir: Path, spec: str, normalize: str, augment: bool) -> None:
    cli = LitCifarCLI(
        RegularizedClassifier,
        CIFAR10DataModule,
        run=False,
        seed_everything_default=0,
        args=["--model.spec", spec, "--data.data_dir", str(cifar_dir), "--data.val_size", "100"],
    )
    assert (cli.datamodule.normalize, cli.datamodule.augment) == (normalize, augment)
    assert cli.model.spec == RegularizationSpec.parse(spec)
    assert cli.config["trainer"]["use_distributed_sampler"] is False  # the data module shards by itself


def test_fit_runs_one_batch(cifar_dir: Path) -> None:
    cli = main(args=cli_args("fit", "pixel+bn", cifar_dir))
    assert cli.trainer.state.finished and cli.trainer.state.fn == "fit"
    assert cli.trainer.global_step == 1
    assert cli.datamodule.normalize == "pixel" and cli.datamodule.augment is False
    assert cli.datamodule.mean.shape == (3, 32, 32)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cli.model.modules()) == 3
    assert {"train/loss", "val/loss", "val/acc"} <= set(cli.trainer.callback_metrics)
    assert cli.config["fit"]["seed_everything"] == 0


@dataclass
class FitRun:
    cli: LitCifarCLI
    run_dir: Path


def test_optimizer_is_injected_from_the_command_line(cifar_dir: Path) -> None:
    cli = main(
        args=cli_args(
            "fit",
            "pixel",
            cifar_dir,
            "--model.optimizer",
            "torch.optim.SGD",
            "--model.optimizer.lr",
            "0.05",
            "--model.optimizer.momentum",
            "0.9",
        )
    )
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert cli.trainer.global_step == 1


@pytest.fixture(scope="module")
def fitted(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FitRun:
    """``fit`` for one step without fast_dev_run, so the default logger writes ./logs/lit_cifar/version_0 with
    config.yaml and a checkpoint. Training statistics come from a 64-image subset."""
    workdir = tmp_path_factory.mktemp("cli_fit")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr("sys.argv", ["lit_cifar"])
        cli = main(
            args=cli_args(
                "fit",
                "channel+augment",
                cifar_dir,
                "--trainer.fast_dev_run",
                "false",
                "--trainer.max_steps",
                "1",
                "--trainer.log_every_n_steps",
                "1",
                "--data.limit_train",
                "64",
            )
        )
    return FitRun(cli, workdir / "logs" / "lit_cifar" / "version_0")


def test_fit_links_channel_and_augment(fitted: FitRun) -> None:
    assert fitted.cli.trainer.state.finished and fitted.cli.trainer.global_step == 1
    assert fitted.cli.datamodule.normalize == "channel" and fitted.cli.datamodule.augment is True
    assert fitted.cli.datamodule.mean.shape == (3, 1, 1)


def test_fit_saves_config_and_checkpoint(fitted: FitRun, cifar_dir: Path) -> None:
    """The linked data.normalize and data.augment are not written: they are recomputed from model.spec."""
    config = yaml.safe_load((fitted.run_dir / "config.yaml").read_text())
    assert config["model"]["spec"] == "channel+augment"
    assert config["data"]["data_dir"] == str(cifar_dir) and config["data"]["limit_train"] == 64
    assert config["trainer"]["use_distributed_sampler"] is False
    assert len(list((fitted.run_dir / "checkpoints").glob("*.ckpt"))) == 1


def test_test_from_checkpoint_uses_training_statistics(fitted: FitRun, cifar_dir: Path) -> None:
    """The documented ``test --ckpt_path`` evaluates with the statistics fitted in training (on 64 images),
    not with those of its own data module (on 530)."""
    (checkpoint,) = (fitted.run_dir / "checkpoints").glob("*.ckpt")
    test = main(
        args=cli_args(
            "test", "channel+augment", cifar_dir, "--trainer.fast_dev_run", "false", "--ckpt_path", str(checkpoint)
        )
    )
    assert test.trainer.state.finished and "test/acc" in test.trainer.callback_metrics
    assert torch.equal(test.datamodule.mean, fitted.cli.datamodule.mean)
    assert torch.equal(test.datamodule.std, fitted.cli.datamodule.std)


def test_test_from_checkpoint_takes_the_checkpoints_spec(fitted: FitRun, cifar_dir: Path) -> None:
    """Without --model.spec the model and the linked data settings are the checkpoint's."""
    (checkpoint,) = (fitted.run_dir / "checkpoints").glob("*.ckpt")
    args = [
        arg
        for arg in cli_args("test", "channel+augment", cifar_dir, "--ckpt_path", str(checkpoint))
        if arg not in ("--model.spec", "channel+augment")
    ]
    test = main(args=args)
    assert test.model.spec == RegularizationSpec.parse("channel+augment")
    assert test.datamodule.normalize == "channel" and test.trainer.state.finished


def test_predict_writes_one_row_per_test_image(fitted: FitRun, cifar_dir: Path, tmp_path: Path) -> None:
    (checkpoint,) = (fitted.run_dir / "checkpoints").glob("*.ckpt")
    cli = main(
        args=cli_args(
            "predict", "channel+augment", cifar_dir, "--trainer.fast_dev_run", "false", "--ckpt_path", str(checkpoint)
        )
    )
    with open(Path(cli.trainer.log_dir) / "predictions.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "predicted", *cli.datamodule.classes]
    assert [int(row[0]) for row in rows[1:]] == list(range(200))
    probabilities = torch.tensor([[float(v) for v in row[2:]] for row in rows[1:]])
    torch.testing.assert_close(probabilities.sum(1), torch.ones(200))
    assert all(row[1] == cli.datamodule.classes[int(p.argmax())] for row, p in zip(rows[1:], probabilities))


def expect_usage_error(args: list[str], capsys: pytest.CaptureFixture, *words: str) -> None:
    """The CLI exits with status 2, one line on stderr holding `words`, and no run folder."""
    with pytest.raises(SystemExit) as exit_:
        main(args=args)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), lines
    assert not Path("logs").exists()


@pytest.mark.parametrize("command", ["test", "validate", "predict"])
def test_evaluating_without_a_checkpoint_is_an_error(
    cifar_dir: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    """It once tested a freshly initialized model, silently."""
    expect_usage_error(cli_args(command, "pixel", cifar_dir), capsys, "--ckpt_path")


def test_a_spec_other_than_the_checkpoints_is_an_error(
    fitted: FitRun, cifar_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """Refused, not silently replaced by the checkpoint's."""
    (checkpoint,) = (fitted.run_dir / "checkpoints").glob("*.ckpt")
    expect_usage_error(
        cli_args("test", "pixel+bn", cifar_dir, "--ckpt_path", str(checkpoint)), capsys, "pixel+bn", "channel+augment"
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--data.val_size", "-1"], ["val_size=-1"]),
        (["--data.split_seed", "-3"], ["split_seed=-3"]),
        (["--data.limit_train", "100000"], ["limit_train=100000"]),
        (["--data.data_dir", "nowhere", "--data.download", "false"], ["nowhere"]),
        (["--model.lr", "-1"], ["lr=-1"]),
        (["--ckpt_path", "missing.ckpt"], ["missing.ckpt"]),
    ],
)
def test_bad_values_exit_2_with_one_line_and_no_run_folder(
    cifar_dir: Path, capsys: pytest.CaptureFixture, extra: list[str], words: list[str]
) -> None:
    """They once exited 1 with a traceback, after the logger had made logs/lit_cifar/version_0."""
    expect_usage_error(
        cli_args("fit", "pixel", cifar_dir, "--trainer.fast_dev_run", "false", "--trainer.max_steps", "1", *extra),
        capsys,
        *words,
    )


def test_help_lists_the_spec_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args=["fit", "--help"])
    assert exit_.value.code == 0
    assert "--model.spec" in capsys.readouterr().out
