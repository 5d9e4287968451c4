"""lit_cifar used as a third-party Lightning project would use it: only the public API (``from lit_cifar import``),
a backbone of its own, Lightning's standard callbacks, loggers, CLI, precision and DDP.

The synthetic data (conftest's `cifar_dir`) is tiny; the slow tests start processes or a second training.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_cifar import CIFAR10DataModule, RegularizedClassifier
from tests.thirdparty.gray import CountTestImages

SPEC = "pixel+bn+l2=0.001+maxnorm=2"


class Block(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with BatchNorm and an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """A small ResNet whose only Linear layer is its output: nothing for a penalty to act on by default."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width), nn.MaxPool2d(2), Block(width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class RegularizedResNet(TinyResNet):
    """The same network, naming the convolutions penalties and max-norm act on."""

    def regularized_layers(self) -> list[nn.Module]:
        return [self.blocks[0].conv1, self.blocks[0].conv2, self.blocks[2].conv1, self.blocks[2].conv2]


class NoisyCIFAR(CIFAR10DataModule):
    """A subclass with its own augmentation, as the data module documents: noise on training batches, on the
    device, in 0-255 units (the model standardizes)."""

    calls = 0

    def preprocess(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if not train:
            return images
        NoisyCIFAR.calls += 1
        return (images.float() + 8 * torch.randn(images.shape, device=images.device)).clamp(0, 255)


def datamodule(data_dir: Path, spec: str = SPEC, cls: type = CIFAR10DataModule, **kwargs: Any) -> CIFAR10DataModule:
    options = {"val_size": 100, "batch_size": 64, "limit_train": 256, "download": False, **kwargs}
    return cls.from_spec(spec, data_dir=str(data_dir), **options)


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**options, **kwargs})


# ------------------------------------------------------------------------------------------ custom backbones
def test_a_backbone_without_regularized_layers_refuses_a_penalty() -> None:
    with pytest.raises(ValueError, match="regularized_layers"):
        RegularizedClassifier("pixel+l2=0.01", backbone=TinyResNet())


def test_a_backbone_without_regularized_layers_trains_an_unpenalized_spec(cifar_dir: Path) -> None:
    model = RegularizedClassifier("pixel+bn", backbone=TinyResNet())
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=datamodule(cifar_dir, "pixel+bn"))
    assert trainer.global_step == 2 and trainer.callback_metrics["train/penalty"] == 0


@dataclass
class Fitted:
    model: RegularizedClassifier
    metrics: dict[str, float]  # the fit's final metrics
    checkpoints: ModelCheckpoint
    stopper: EarlyStopping
    loggers: tuple[TensorBoardLogger, CSVLogger]
    final: Path  # a checkpoint of the model as fitted (ModelCheckpoint's last.ckpt is the last top-k save)
    images: torch.Tensor  # raw uint8 test images
    predictions: torch.Tensor  # the in-memory model's probabilities for them


@pytest.fixture(scope="module")
def fitted(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    """RegularizedResNet under SPEC, fitted on a NoisyCIFAR with checkpoints and early stopping on val/acc and
    two loggers; then its predictions on raw test images, taken before anything else touches the model."""
    root = tmp_path_factory.mktemp("reuse")
    pl.seed_everything(0, verbose=False)
    model = RegularizedClassifier(SPEC, backbone=RegularizedResNet(), lr=3e-3)
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/acc", mode="max", save_last=True)
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=5)
    loggers = (TensorBoardLogger(root, name="tb"), CSVLogger(root, name="csv"))
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=list(loggers),
        log_every_n_steps=1,
        callbacks=[checkpoints, stopper],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    dm = datamodule(cifar_dir, cls=NoisyCIFAR, limit_train=128)
    trainer.fit(model, datamodule=dm)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    trainer.save_checkpoint(root / "final.ckpt")
    images = dm.test_images[:50]
    loader = DataLoader(TensorDataset(images), batch_size=20)
    predictions = torch.cat(quiet_trainer().predict(model, dataloaders=loader))
    return Fitted(model, metrics, checkpoints, stopper, loggers, root / "final.ckpt", images, predictions)


def test_the_spec_acts_on_the_named_layers(fitted: Fitted) -> None:
    metrics = fitted.metrics
    assert metrics["train/penalty"] > 0 and 0 <= metrics["train/maxnorm_rescaled"] <= 1
    for _, layer in fitted.model.named_regularized_layers():
        norms = layer.weight.detach().flatten(1).norm(dim=1)
        assert (norms <= 2 + 1e-5).all()
    assert NoisyCIFAR.calls > 0  # the subclass's augmentation ran


def test_checkpoint_and_early_stopping_follow_val_acc(fitted: Fitted) -> None:
    assert Path(fitted.checkpoints.best_model_path).is_file() and Path(fitted.checkpoints.last_model_path).is_file()
    assert 0 <= float(fitted.checkpoints.best_model_score) <= 1
    assert fitted.stopper.best_score == fitted.checkpoints.best_model_score


def test_tensorboard_and_csv_loggers_both_record(fitted: Fitted) -> None:
    tensorboard, csv_logger = fitted.loggers
    events = EventAccumulator(tensorboard.log_dir)
    events.Reload()
    assert {"val/acc", "train/ce", "train/penalty"} <= set(events.Tags()["scalars"])
    with open(Path(csv_logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"val/acc", "val/ce", "train/loss"} <= set(rows[0])
    assert len([row for row in rows if row["val/acc"]]) == 3  # one validation per epoch


def test_a_checkpoint_alone_predicts_raw_images_as_the_model_in_memory(fitted: Fitted) -> None:
    loaded = RegularizedClassifier.load_from_checkpoint(fitted.final, backbone=RegularizedResNet())
    loader = DataLoader(TensorDataset(fitted.images), batch_size=20)
    predictions = torch.cat(quiet_trainer().predict(loaded, dataloaders=loader))
    assert torch.equal(predictions, fitted.predictions)
    torch.testing.assert_close(predictions.sum(1), torch.ones(len(predictions)))


@pytest.mark.slow  # bf16 convolutions on a CPU
def test_bf16_mixed_with_gradient_clipping(cifar_dir: Path) -> None:
    model = RegularizedClassifier(SPEC, backbone=RegularizedResNet())
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, precision="bf16-mixed", gradient_clip_val=1.0
    )
    trainer.fit(model, datamodule=datamodule(cifar_dir))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


# --------------------------------------------------------------------------------------- Lightning's own CLI
@pytest.mark.slow
def test_generic_lightning_cli_fits_then_tests_from_the_checkpoint(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LightningCLI(subclass_mode_model=True)`` with ``class_path: lit_cifar.RegularizedClassifier``: the
    checkpoint's hyperparameters parse back (they once failed to)."""
    monkeypatch.setattr("sys.argv", ["project"])
    common = [
        "--model",
        "lit_cifar.RegularizedClassifier",
        "--data.data_dir",
        str(cifar_dir),
        "--data.normalize",
        "pixel",
        "--data.val_size",
        "100",
        "--data.batch_size",
        "64",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    fit = LightningCLI(
        datamodule_class=CIFAR10DataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=[
            "fit",
            *common,
            "--model.spec",
            "pixel+l2=0.001",
            "--data.limit_train",
            "128",
            "--trainer.max_epochs",
            "1",
        ],
    )
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    test = LightningCLI(
        datamodule_class=CIFAR10DataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=["test", *common, "--ckpt_path", str(checkpoint)],
    )
    assert test.model.spec == fit.model.spec and test.model.spec.l2 == 0.001
    assert "test/acc" in test.trainer.callback_metrics


# ------------------------------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_two_process_ddp_counts_each_test_image_once(cifar_dir: Path, tmp_path: Path) -> None:
    """With worker processes and Lightning's default ``use_distributed_sampler=True`` each rank once evaluated
    half of its half."""
    torch.manual_seed(0)
    model = RegularizedClassifier("pixel+bn", backbone=TinyResNet())
    (alone,) = quiet_trainer().test(model, datamodule=datamodule(cifar_dir, "pixel"), verbose=False)
    counted = tmp_path / "count"
    trainer = quiet_trainer(devices=2, strategy="ddp_spawn", callbacks=[CountTestImages(counted)])
    (together,) = trainer.test(model, datamodule=datamodule(cifar_dir, "pixel", num_workers=1), verbose=False)
    assert int(counted.read_text()) == 200
    assert together["test/acc"] == pytest.approx(alone["test/acc"], abs=1e-6)
    assert together["test/loss"] == pytest.approx(alone["test/loss"], rel=1e-5)
