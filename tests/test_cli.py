"""`python -m lit_cifar`: Lightning's CLI with the data module's normalization and augmentation linked to
``--model.spec``. Runs in-process, in a temporary working directory (logged runs write logs/lit_cifar/ there)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lit_cifar.__main__ import LitCifarCLI, main
from lit_cifar.data import CIFAR10DataModule
from lit_cifar.module import RegularizedClassifier
from lit_cifar.spec import RegularizationSpec

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def cli_args(command: str, spec: str, data_dir: Path, *extra: str) -> list[str]:
    """A one-batch run (``fast_dev_run`` unless `extra` says otherwise) on the synthetic data."""
    return [command, "--model.spec", spec, "--data.data_dir", str(data_dir), "--data.val_size", "100",
            "--data.batch_size", "64", "--trainer.fast_dev_run", "true", *QUIET, *extra]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Work in `tmp_path`, with a command line that holds only the program name (not pytest's arguments)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lit_cifar"])


@pytest.mark.parametrize(("spec", "normalize", "augment"), [
    ("pixel+bn", "pixel", False), ("channel+augment", "channel", True), ("baseline", "none", False),
    ("l2=0.01+augment", "none", True)])
def test_spec_sets_data_normalize_and_augment(cifar_dir: Path, spec: str, normalize: str, augment: bool) -> None:
    cli = LitCifarCLI(RegularizedClassifier, CIFAR10DataModule, run=False, seed_everything_default=0,
                      args=["--model.spec", spec, "--data.data_dir", str(cifar_dir), "--data.val_size", "100"])
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


@pytest.fixture(scope="module")
def fitted(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FitRun:
    """``fit`` for one step without fast_dev_run, so the default logger writes ./logs/lit_cifar/version_0 with
    config.yaml and a checkpoint. Training statistics come from a 64-image subset."""
    workdir = tmp_path_factory.mktemp("cli_fit")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr("sys.argv", ["lit_cifar"])
        cli = main(args=cli_args("fit", "channel+augment", cifar_dir, "--trainer.fast_dev_run", "false",
                                 "--trainer.max_steps", "1", "--trainer.log_every_n_steps", "1",
                                 "--data.limit_train", "64"))
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
    test = main(args=cli_args("test", "channel+augment", cifar_dir, "--trainer.fast_dev_run", "false",
                              "--ckpt_path", str(checkpoint)))
    assert test.trainer.state.finished and "test/acc" in test.trainer.callback_metrics
    assert torch.equal(test.datamodule.mean, fitted.cli.datamodule.mean)
    assert torch.equal(test.datamodule.std, fitted.cli.datamodule.std)


def test_test_subcommand_reports_test_metrics(cifar_dir: Path) -> None:
    cli = main(args=cli_args("test", "pixel", cifar_dir))
    assert cli.trainer.state.finished and cli.trainer.state.fn == "test"
    assert {"test/loss", "test/acc"} <= set(cli.trainer.callback_metrics)


def test_help_lists_the_spec_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args=["fit", "--help"])
    assert exit_.value.code == 0
    assert "--model.spec" in capsys.readouterr().out
