"""`RegularizedClassifier`: Keras-style penalties, max-norm, learning-rate decay, logging and checkpoints."""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import lit_cifar.data
from lit_cifar.data import CIFAR10DataModule
from lit_cifar.models import NotebookCNN
from lit_cifar.module import RegularizedClassifier
from lit_cifar.spec import RegularizationSpec
from tests.helpers import quiet_trainer

METRICS_FIT = ("train/loss", "train/ce", "train/penalty", "train/acc", "val/loss", "val/ce", "val/acc")
METRICS_TEST = ("test/loss", "test/ce", "test/acc")


def make_datamodule(data_dir: Path, spec: str = "baseline", **kwargs: Any) -> CIFAR10DataModule:
    """A data module for `spec` (its normalization and augmentation) on the synthetic data."""
    options = {"val_size": 100, "batch_size": 32, "download": False, **kwargs}
    return CIFAR10DataModule.from_spec(spec, data_dir=str(data_dir), **options)


def small_mlp() -> nn.Sequential:
    """A backbone without `regularized_layers()`: penalties fall on its first two Linear layers."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10)
    )


def fill_biases(module: nn.Module, value: float = 1.0) -> None:
    """Nonzero biases, so a penalty that wrongly includes them shows."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                layer.bias.fill_(value)


# --------------------------------------------------------------------------------------------------- penalty
@pytest.mark.parametrize(
    ("spec", "l1", "l2"), [("l1=0.001", 0.001, 0.0), ("l2=0.01", 0.0, 0.01), ("l1=0.001+l2=0.01", 0.001, 0.01)]
)
def test_penalty_is_keras_l1_l2_of_hidden_kernel_only(spec: str, l1: float, l2: float) -> None:
    torch.manual_seed(0)
    module = RegularizedClassifier(spec, backbone=NotebookCNN(spec, width=4, hidden_units=16))
    fill_biases(module)
    weight = module.backbone.hidden.weight.detach().double()
    expected = l1 * weight.abs().sum() + l2 * weight.square().sum()
    assert module.penalty().item() == pytest.approx(expected.item(), rel=1e-5)
    everything = sum(l1 * p.double().abs().sum() + l2 * p.double().square().sum() for p in module.parameters())
    assert module.penalty().item() != pytest.approx(everything.item(), rel=1e-3)


def test_penalty_is_zero_for_baseline() -> None:
    module = RegularizedClassifier("baseline", backbone=small_mlp())
    assert module.penalty().item() == 0.0


def test_penalty_gradient_reaches_only_regularized_weights() -> None:
    module = RegularizedClassifier("l2=0.1", backbone=small_mlp())
    module.penalty().backward()
    linears = [m for m in module.backbone if isinstance(m, nn.Linear)]
    for layer in linears[:2]:
        torch.testing.assert_close(layer.weight.grad, 0.2 * layer.weight.detach())
        assert layer.bias.grad is None
    assert linears[2].weight.grad is None


def test_training_loss_is_cross_entropy_plus_penalty() -> None:
    torch.manual_seed(0)
    module = RegularizedClassifier("l1=0.001+l2=0.01", backbone=small_mlp())
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = module.training_step((images, labels), 0)
    expected = F.cross_entropy(module(images), labels) + module.penalty()
    assert module.penalty().item() > 0.01
    torch.testing.assert_close(loss, expected)


# ------------------------------------------------------------------------------------------- regularized layers
def test_default_regularized_layers_are_all_linears_but_the_last() -> None:
    backbone = small_mlp()
    module = RegularizedClassifier("l1=0.001+l2=0.01", backbone=backbone)
    assert [id(m) for m in module.regularized] == [id(backbone[1]), id(backbone[3])]
    fill_biases(backbone)
    expected = sum(0.001 * backbone[i].weight.abs().sum() + 0.01 * backbone[i].weight.square().sum() for i in (1, 3))
    torch.testing.assert_close(module.penalty(), expected)


class TwoHeads(nn.Module):
    """A backbone that names its own regularized layer (the second of three Linear layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second, self.out = nn.Linear(3072, 8), nn.Linear(8, 8), nn.Linear(8, 10)

    def regularized_layers(self) -> list[nn.Module]:
        return [self.second]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.second(torch.relu(self.first(x.flatten(1))))))


def test_backbone_regularized_layers_are_used() -> None:
    backbone = TwoHeads()
    module = RegularizedClassifier("l2=0.5", backbone=backbone)
    assert len(module.regularized) == 1 and module.regularized[0] is backbone.second
    torch.testing.assert_close(module.penalty(), 0.5 * backbone.second.weight.square().sum())


def test_notebook_cnn_regularizes_its_hidden_layer() -> None:
    module = RegularizedClassifier("l2=0.01")
    assert isinstance(module.backbone, NotebookCNN)
    assert len(module.regularized) == 1 and module.regularized[0] is module.backbone.hidden


def test_apply_max_norm_clips_only_long_rows_of_regularized_layers() -> None:
    """Returns the fraction of rows it rescaled: 15 of the first layer's 16 rows and all 12 of the second's."""
    backbone = small_mlp()
    module = RegularizedClassifier("maxnorm=2", backbone=backbone)
    with torch.no_grad():
        for layer in (backbone[1], backbone[3], backbone[5]):
            layer.weight.fill_(1.0)
        backbone[1].weight[0] = 0.01  # a row well under the limit
    short_row = backbone[1].weight[0].clone()
    assert module.apply_max_norm().item() == pytest.approx(27 / 28)
    for layer in (backbone[1], backbone[3]):
        norms = layer.weight.norm(dim=1)
        torch.testing.assert_close(norms[1:], torch.full_like(norms[1:], 2.0))
    assert torch.equal(backbone[1].weight[0], short_row)
    assert (backbone[5].weight == 1.0).all()  # the output layer is not constrained


# --------------------------------------------------------------------------------------------- optimization
def test_optimizer_is_adam_with_keras_epsilon() -> None:
    module = RegularizedClassifier("baseline", lr=0.003, backbone=small_mlp())
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert group["eps"] == 1e-7 and group["lr"] == 0.003 and group["weight_decay"] == 0
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in module.parameters()}
    assert config["lr_scheduler"]["interval"] == "step"


class LrRecorder(Callback):
    """Records the learning rate each training step runs with."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_learning_rate_decays_per_step_like_keras(cifar_dir: Path) -> None:
    steps, lr, decay = 5, 0.01, 0.1
    module = RegularizedClassifier("baseline", lr=lr, lr_decay=decay, backbone=small_mlp())
    recorder = LrRecorder()
    trainer = quiet_trainer(limit_train_batches=steps, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(module, make_datamodule(cifar_dir, batch_size=16))
    assert trainer.global_step == steps
    assert recorder.rates == pytest.approx([lr / (1 + decay * t) for t in range(steps)], rel=1e-6)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr / (1 + decay * steps), rel=1e-6)


def test_max_norm_constrains_hidden_rows_after_each_step(cifar_dir: Path) -> None:
    """Rows of norm ~7 are brought to norm 3 after one training step; rows of norm ~1.5 are left alone
    (the learning rate is tiny so that Adam itself hardly moves them)."""
    torch.manual_seed(0)
    module = RegularizedClassifier("pixel+maxnorm=3", lr=1e-9)
    hidden = module.backbone.hidden
    with torch.no_grad():
        hidden.weight[:512] = 0.05  # norm 0.05 * sqrt(21632) = 7.35
        hidden.weight[512:] = 0.01  # norm 1.47
    before = hidden.weight.detach().norm(dim=1)
    assert (before[:512] > 3).all() and (before[512:] < 3).all()
    short_rows = hidden.weight[512:].detach().clone()

    trainer = quiet_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, make_datamodule(cifar_dir, "pixel+maxnorm=3", batch_size=8))

    assert trainer.global_step == 1
    assert trainer.callback_metrics["train/maxnorm_rescaled"].item() == 0.5  # the 512 long rows of 1024
    after = hidden.weight.detach().norm(dim=1)
    assert (after <= 3 + 1e-5).all()
    torch.testing.assert_close(after[:512], torch.full((512,), 3.0), rtol=1e-4, atol=0)
    torch.testing.assert_close(hidden.weight[512:].detach(), short_rows, rtol=0, atol=1e-6)


def test_hparams_store_spec_as_dict() -> None:
    spec = RegularizationSpec.parse("pixel+bn+l2=0.01+maxnorm=3+dropout=0.5")
    module = RegularizedClassifier(spec, lr=0.002, backbone=NotebookCNN(spec, width=4, hidden_units=16))
    assert module.hparams["spec"] == spec.to_dict() and isinstance(module.hparams["spec"], dict)
    assert module.hparams["lr"] == 0.002 and module.hparams["adam_eps"] == 1e-7
    assert "backbone" not in module.hparams
    assert (
        RegularizedClassifier(module.hparams["spec"], backbone=NotebookCNN(spec, width=4, hidden_units=16)).spec == spec
    )


def test_hparams_are_the_constructor_arguments_but_the_runtime_ones() -> None:
    """Lightning's standard ``save_hyperparameters(ignore=[...])``: every argument that defines the model, none of
    those that say how it runs (a backbone, an optimizer, compile, predict_logits)."""
    module = RegularizedClassifier(
        "l2=0.01",
        lr_decay=0.0,
        backbone=small_mlp(),
        compile=True,
        predict_logits=True,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    assert dict(module.hparams) == {
        "spec": RegularizationSpec(l2=0.01).to_dict(),
        "lr": 1e-3,
        "lr_decay": 0.0,
        "adam_eps": 1e-7,
        "num_classes": 10,
        "backbone_class_path": None,
        "backbone_init_args": None,
    }


# ------------------------------------------------------------------------------------ data in the training loop
def frozen(params: Any) -> torch.optim.Optimizer:
    """An injected optimizer that never moves the weights."""
    return torch.optim.SGD(params, lr=0.0)


@torch.no_grad()
def evaluate_by_hand(module: RegularizedClassifier, datamodule: CIFAR10DataModule, split: str) -> tuple[float, float]:
    """Mean cross-entropy over the whole split plus the penalty, and the accuracy, in one batch of raw images
    (the model standardizes them). Leaves the module in the mode it found it in."""
    training = module.training
    module.eval()
    images, labels = getattr(datamodule, f"{split}_images"), getattr(datamodule, f"{split}_labels")
    logits = module(images)
    module.train(training)
    loss = F.cross_entropy(logits, labels) + module.penalty()
    return loss.item(), (logits.argmax(1) == labels).float().mean().item()


def test_val_metrics_cover_the_val_split_once_after_sanity_check(cifar_dir: Path) -> None:
    """With a learning rate of 0 the weights never change, so epoch-end val metrics must equal one pass over the
    100 val images (4 full batches), unpolluted by the 2 sanity-check batches."""
    torch.manual_seed(0)
    module = RegularizedClassifier("pixel+l2=0.01", backbone=small_mlp(), optimizer=frozen)
    datamodule = make_datamodule(cifar_dir, "pixel+l2=0.01", batch_size=25)
    trainer = quiet_trainer(limit_train_batches=1, num_sanity_val_steps=2)
    trainer.fit(module, datamodule)
    loss, accuracy = evaluate_by_hand(module, datamodule, "val")
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(loss, rel=1e-5)
    assert trainer.callback_metrics["val/acc"].item() == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize("split", ["val", "test"])
def test_logged_loss_is_the_mean_over_images_with_a_short_last_batch(cifar_dir: Path, split: str) -> None:
    """100 val / 200 test images in batches of 32: the last batch holds 4 / 8 images and must weigh that much."""
    torch.manual_seed(0)
    module = RegularizedClassifier("pixel+l2=0.01", backbone=small_mlp())
    datamodule = make_datamodule(cifar_dir, "pixel+l2=0.01", batch_size=32)
    datamodule.setup("fit")
    module.set_input_statistics(datamodule.mean, datamodule.std)
    run = quiet_trainer().validate if split == "val" else quiet_trainer().test
    (logged,) = run(module, datamodule, verbose=False)
    loss, accuracy = evaluate_by_hand(module, datamodule, split)
    assert logged[f"{split}/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert logged[f"{split}/loss"] == pytest.approx(loss, rel=1e-5)


class BatchRecorder(Callback):
    """Records the labels of every training batch, per epoch."""

    def __init__(self) -> None:
        self.labels: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.labels.setdefault(trainer.current_epoch, []).append(batch[1].clone())


def record_training_order(cifar_dir: Path, seed: int) -> dict[int, torch.Tensor]:
    """The training labels of 2 epochs, in the order batches came, after ``seed_everything(seed)``."""
    pl.seed_everything(seed, verbose=False)
    recorder = BatchRecorder()
    module = RegularizedClassifier("baseline", backbone=small_mlp())
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(module, make_datamodule(cifar_dir, batch_size=128))
    return {epoch: torch.cat(batches) for epoch, batches in recorder.labels.items()}


def test_training_order_is_new_each_epoch_and_follows_the_seed(cifar_dir: Path) -> None:
    first, again = record_training_order(cifar_dir, seed=3), record_training_order(cifar_dir, seed=3)
    assert sorted(first) == [0, 1] and len(first[0]) == len(first[1]) == 530  # every training image, each epoch
    assert torch.equal(torch.sort(first[0]).values, torch.sort(first[1]).values)
    assert not torch.equal(first[0], first[1])  # Lightning's set_epoch reshuffles
    assert all(torch.equal(first[e], again[e]) for e in (0, 1))


def test_only_training_batches_are_augmented(cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = lit_cifar.data.random_crop_flip

    def counting_crop_flip(images: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(tuple(images.shape))
        return original(images, *args, **kwargs)

    monkeypatch.setattr(lit_cifar.data, "random_crop_flip", counting_crop_flip)
    module = RegularizedClassifier("augment", backbone=small_mlp())
    trainer = quiet_trainer(limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=1)
    datamodule = make_datamodule(cifar_dir, "augment", batch_size=16)
    trainer.fit(module, datamodule)
    assert calls == [(16, 3, 32, 32)] * 2
    trainer.validate(module, datamodule, verbose=False)
    trainer.test(module, datamodule, verbose=False)
    assert len(calls) == 2


# ----------------------------------------------------------------------------------------- one real training
@dataclass
class TrainedRun:
    module: RegularizedClassifier
    datamodule: CIFAR10DataModule
    fit_metrics: dict[str, float]
    test_metrics: dict[str, float]
    log_dir: Path
    checkpoint: Path
    progress_bar: dict[str, float]


SPEC = "pixel+l2=0.0001"


@pytest.fixture(scope="module")
def trained(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """NotebookCNN fitted for 2 short epochs (14 steps) on the synthetic data, then tested; logs and checkpoint
    in a temporary folder. Batches of 50 divide the val and test splits (the short last batch is tested above)."""
    root = tmp_path_factory.mktemp("run")
    pl.seed_everything(0, verbose=False)
    module = RegularizedClassifier(SPEC)
    datamodule = make_datamodule(cifar_dir, SPEC, batch_size=50, limit_train=320)
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints")
    trainer = quiet_trainer(
        max_epochs=2,
        logger=TensorBoardLogger(root, name="tb"),
        enable_checkpointing=True,
        callbacks=[checkpoints],
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule)
    fit_metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    progress_bar = {name: float(value) for name, value in trainer.progress_bar_metrics.items()}
    (test_metrics,) = trainer.test(module, datamodule, verbose=False)
    return TrainedRun(
        module,
        datamodule,
        fit_metrics,
        test_metrics,
        Path(trainer.logger.log_dir),
        Path(checkpoints.best_model_path),
        progress_bar,
    )


def test_fit_logs_train_and_val_metrics(trained: TrainedRun) -> None:
    metrics = trained.fit_metrics
    assert set(METRICS_FIT) <= set(metrics)
    assert metrics["train/penalty"] > 0  # l2 on the hidden layer
    assert metrics["train/loss"] > metrics["train/penalty"]  # the objective includes the penalty
    for stage in ("train", "val"):
        assert 0 <= metrics[f"{stage}/acc"] <= 1 and metrics[f"{stage}/loss"] > 0


def test_test_returns_loss_and_accuracy_above_chance(trained: TrainedRun) -> None:
    """The synthetic classes differ by colour: 2 short epochs are far above chance (10%)."""
    assert set(trained.test_metrics) == set(METRICS_TEST)
    assert trained.test_metrics["test/acc"] > 0.4  # measured 0.80-1.0 over seeds 0-5
    assert 0 < trained.test_metrics["test/loss"] < 2.0


def test_test_loss_is_mean_cross_entropy_plus_penalty(trained: TrainedRun) -> None:
    loss, accuracy = evaluate_by_hand(trained.module, trained.datamodule, "test")
    assert trained.test_metrics["test/loss"] == pytest.approx(loss, rel=1e-4)
    assert trained.test_metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)


def test_tensorboard_event_file_has_every_metric(trained: TrainedRun) -> None:
    events = EventAccumulator(str(trained.log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(METRICS_FIT + METRICS_TEST) <= tags
    assert len(events.Scalars("val/acc")) == 2  # once per epoch
    assert events.Scalars("test/acc")[-1].value == pytest.approx(trained.test_metrics["test/acc"])


def test_checkpoint_restores_spec_and_weights(trained: TrainedRun) -> None:
    restored = RegularizedClassifier.load_from_checkpoint(trained.checkpoint, map_location="cpu")
    assert restored.spec == RegularizationSpec.parse(SPEC)
    expected = trained.module.state_dict()
    weights = restored.state_dict()
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name


def test_checkpoint_restores_normalization_statistics(trained: TrainedRun, cifar_dir: Path) -> None:
    checkpoint = torch.load(trained.checkpoint, weights_only=False, map_location="cpu")
    assert checkpoint["hyper_parameters"]["spec"] == RegularizationSpec.parse(SPEC).to_dict()
    state = checkpoint["CIFAR10DataModule"]  # Lightning keys the data module's state by its class __qualname__
    fresh = make_datamodule(cifar_dir, SPEC)
    fresh.load_state_dict(state)
    assert fresh.normalize == "pixel"
    assert torch.equal(fresh.mean, trained.datamodule.mean) and torch.equal(fresh.std, trained.datamodule.std)


def test_restored_statistics_survive_setup(trained: TrainedRun, cifar_dir: Path) -> None:
    """A data module on another training subset would fit other statistics; restored ones must win."""
    refit = make_datamodule(cifar_dir, SPEC, limit_train=50)
    refit.setup("fit")
    assert not torch.equal(refit.mean, trained.datamodule.mean)

    restored = make_datamodule(cifar_dir, SPEC, limit_train=50)
    restored.load_state_dict(trained.datamodule.state_dict())
    restored.setup("test")
    assert torch.equal(restored.mean, trained.datamodule.mean) and torch.equal(restored.std, trained.datamodule.std)


def test_test_loss_is_cross_entropy_plus_penalty_and_ce_is_logged_apart(trained: TrainedRun) -> None:
    metrics = trained.test_metrics
    assert metrics["test/loss"] == pytest.approx(metrics["test/ce"] + trained.module.penalty().item(), rel=1e-5)
    fit = trained.fit_metrics
    assert fit["train/loss"] == pytest.approx(fit["train/ce"] + fit["train/penalty"], rel=1e-3)
    assert "train/maxnorm_rescaled" not in fit  # no max-norm in this spec


def test_progress_bar_shows_the_main_metrics(trained: TrainedRun) -> None:
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(trained.progress_bar)


def test_model_keeps_the_training_statistics(trained: TrainedRun) -> None:
    assert torch.equal(trained.module.input_norm.mean, trained.datamodule.mean)
    assert torch.equal(trained.module.input_norm.std, trained.datamodule.std)


def test_checkpoint_alone_predicts_on_raw_images(trained: TrainedRun) -> None:
    """No data module: the loaded model standardizes uint8 images with the statistics it was trained with."""
    restored = RegularizedClassifier.load_from_checkpoint(trained.checkpoint, map_location="cpu").eval()
    images = trained.datamodule.test_images[:16]
    expected = evaluate_logits(trained.module, images)
    assert torch.equal(restored(images), expected)
    probabilities = restored.predict_step(images, 0)
    torch.testing.assert_close(probabilities, expected.softmax(1))
    restored.predict_logits = True
    assert torch.equal(restored.predict_step((images, torch.arange(16)), 0), expected)


@torch.no_grad()
def evaluate_logits(module: RegularizedClassifier, images: torch.Tensor) -> torch.Tensor:
    training = module.training
    logits = module.eval()(images)
    module.train(training)
    return logits


def test_trainer_predict_gives_test_probabilities(trained: TrainedRun, cifar_dir: Path) -> None:
    """``trainer.predict(model, dm)`` once raised "predict_dataloader must be implemented"."""
    dm = make_datamodule(cifar_dir, SPEC, batch_size=64)
    restored = RegularizedClassifier.load_from_checkpoint(trained.checkpoint, map_location="cpu")  # fixture untouched
    batches = quiet_trainer().predict(restored, dm)
    probabilities = torch.cat(batches)
    assert probabilities.shape == (200, 10)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(200))
    torch.testing.assert_close(probabilities, evaluate_logits(trained.module, dm.test_images).softmax(1))


class Subclassed(CIFAR10DataModule):
    """A subclass, as a user writes for custom augmentation: Lightning keys the data state by class name."""


def test_a_subclassed_data_module_gets_the_checkpoint_state(trained: TrainedRun, cifar_dir: Path) -> None:
    """Its statistics and split: Lightning alone would restore them only into a class named CIFAR10DataModule."""
    dm = Subclassed.from_spec(
        SPEC, data_dir=str(cifar_dir), val_size=100, batch_size=50, limit_train=50, download=False
    )
    model = RegularizedClassifier(SPEC)
    (tested,) = quiet_trainer().test(model, dm, ckpt_path=trained.checkpoint, verbose=False)
    assert torch.equal(dm.mean, trained.datamodule.mean) and dm.limit_train == 320
    assert tested["test/acc"] == pytest.approx(trained.test_metrics["test/acc"], abs=1e-6)


def test_a_data_module_with_another_normalization_is_refused(trained: TrainedRun, cifar_dir: Path) -> None:
    with pytest.raises(ValueError, match="normalize"):
        quiet_trainer().test(
            RegularizedClassifier(SPEC),
            make_datamodule(cifar_dir, "channel"),
            ckpt_path=trained.checkpoint,
            verbose=False,
        )


def test_unfitted_statistics_warn_and_pass_images_through() -> None:
    module = RegularizedClassifier("pixel", backbone=small_mlp()).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with pytest.warns(RuntimeWarning, match="not fitted"):
        logits = module(images)
    torch.testing.assert_close(logits, module.backbone(images.float()))


# ------------------------------------------------------------------------------------- argument validation
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"lr": -1}, ValueError),
        ({"lr": 0}, ValueError),
        ({"lr": float("nan")}, ValueError),
        ({"lr": "0.1"}, TypeError),
        ({"lr_decay": -1}, ValueError),
        ({"lr_decay": float("inf")}, ValueError),
        ({"adam_eps": -1}, ValueError),
        ({"adam_eps": 0}, ValueError),
        ({"num_classes": 1}, ValueError),
        ({"num_classes": 10.0}, TypeError),
        ({"num_classes": True}, TypeError),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, error: type) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        RegularizedClassifier("baseline", backbone=small_mlp(), **kwargs)


def test_num_classes_must_match_the_data(cifar_dir: Path) -> None:
    module = RegularizedClassifier("baseline", backbone=small_mlp(), num_classes=5)
    with pytest.raises(ValueError, match="num_classes=5"):
        quiet_trainer(limit_train_batches=1).fit(module, make_datamodule(cifar_dir))


# ----------------------------------------------------------------------------------------- custom backbones
class NoHidden(nn.Module):
    """A backbone with a single Linear layer (the output): nothing to regularize by default."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


class NamesNone(TwoHeads):
    def regularized_layers(self) -> list[nn.Module]:
        return []


@pytest.mark.parametrize(
    ("spec", "backbone", "message"),
    [
        ("l2=0.01", NoHidden, "no regularized layer"),
        ("maxnorm=3", NoHidden, "no regularized layer"),
        ("l1=0.01", NamesNone, "no regularized layer"),
        ("bn", small_mlp, "no BatchNorm"),
        ("dropout=0.5", small_mlp, "dropout=0.5"),
        ("dropout=0.5", lambda: nn.Sequential(small_mlp(), nn.Dropout(0.25)), r"\[0.25\]"),
    ],
)
def test_a_spec_the_backbone_cannot_honour_is_an_error(spec: str, backbone: Any, message: str) -> None:
    """Refused, not silently ignored (``train/penalty`` 0, no BatchNorm, no Dropout)."""
    with pytest.raises(ValueError, match=message):
        RegularizedClassifier(spec, backbone=backbone())


def test_a_backbone_that_honours_the_spec_is_accepted() -> None:
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(3600, 8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(8, 10),
    )
    module = RegularizedClassifier("pixel+bn+l2=0.01+maxnorm=3+dropout=0.5", backbone=backbone)
    assert [layer for _, layer in module.named_regularized_layers()] == [backbone[4]]


# ------------------------------------------------------------------------------------------------ optimizers
def test_an_injected_optimizer_is_used_with_the_keras_decay() -> None:
    module = RegularizedClassifier(
        "baseline",
        lr_decay=0.5,
        backbone=small_mlp(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD) and config["optimizer"].defaults["momentum"] == 0.9
    config["optimizer"].step()
    config["lr_scheduler"]["scheduler"].step()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.1 / 1.5)


def test_bf16_mixed_with_gradient_clipping_trains(cifar_dir: Path) -> None:
    """Fused Adam unscales gradients itself, which Lightning's mixed precision refuses to clip: the default Adam
    is not fused there."""
    module = RegularizedClassifier("pixel", backbone=small_mlp())
    trainer = quiet_trainer(limit_train_batches=2, limit_val_batches=1, precision="bf16-mixed", gradient_clip_val=0.5)
    trainer.fit(module, make_datamodule(cifar_dir, "pixel", batch_size=16))
    assert trainer.global_step == 2 and not trainer.optimizers[0].defaults.get("fused")
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.slow
def test_compile_keeps_plain_parameter_names(cifar_dir: Path, tmp_path: Path) -> None:
    """A compiled model's checkpoint loads into an uncompiled one (no ``backbone._orig_mod.`` keys)."""
    torch.manual_seed(0)
    module = RegularizedClassifier("pixel", backbone=small_mlp(), compile=True)
    trainer = quiet_trainer(limit_train_batches=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, make_datamodule(cifar_dir, "pixel", batch_size=16))
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    plain = RegularizedClassifier.load_from_checkpoint(tmp_path / "compiled.ckpt", backbone=small_mlp())
    assert not any("_orig_mod" in key for key in module.state_dict())
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(evaluate_logits(plain, images), evaluate_logits(module, images))


# ------------------------------------------------------------------------------ a data module of one's own
def test_the_library_data_modules_and_one_of_your_own_are_normalizing_data(tmp_path: Path) -> None:
    from lit_cifar.data import CIFAR100DataModule, NormalizingData
    from tests.thirdparty.nets import StatisticsOnly

    for dm in (
        CIFAR10DataModule(str(tmp_path), download=False),
        CIFAR100DataModule(str(tmp_path), download=False),
        StatisticsOnly(),
    ):
        assert isinstance(dm, NormalizingData), type(dm).__name__
    assert not isinstance(pl.LightningDataModule(), NormalizingData)


def test_a_data_module_with_only_the_protocol_members_trains_the_model() -> None:
    """Fitting takes its statistics; testing with a fitted model on another one writes the model's back into it; a
    data module with another `normalize` is refused."""
    from tests.thirdparty.nets import StatisticsOnly, TinyResNet

    spec = RegularizationSpec.parse("pixel+bn")
    dm = StatisticsOnly("pixel")
    model = RegularizedClassifier(spec, backbone=TinyResNet(spec))
    quiet_trainer(limit_val_batches=1).fit(model, dm)
    assert model.input_norm.fitted and torch.equal(model.input_norm.mean, dm.mean)
    assert torch.equal(model.input_norm.std, dm.std) and dm.mean is not None and dm.mean.shape == (3, 32, 32)
    other = StatisticsOnly("pixel", seed=1)
    (tested,) = quiet_trainer().test(model, other, verbose=False)
    assert 0 <= tested["test/acc"] <= 1
    assert torch.equal(other.mean, model.input_norm.mean) and torch.equal(other.std, model.input_norm.std)
    with pytest.raises(ValueError, match="normalize='channel'"):
        quiet_trainer().test(model, StatisticsOnly("channel"), verbose=False)


# ------------------------------------------------------------------------------ optimizer and compile
def test_adam_is_fused_where_supported_and_falls_back_cleanly(monkeypatch):
    """Fused where the device has the kernel, never when Lightning must clip mixed-precision gradients."""
    model = RegularizedClassifier(backbone=small_mlp())
    cpu_has_fused_adam = torch.__version__ >= (2, 4)  # pyproject allows torch >= 2.3, whose CPU Adam is not fused
    assert bool(model.configure_optimizers()["optimizer"].defaults.get("fused")) is cpu_has_fused_adam
    model.trainer = quiet_trainer(precision="bf16-mixed", gradient_clip_val=1.0)
    assert not model.configure_optimizers()["optimizer"].defaults.get("fused")
    original = torch.optim.Adam

    def no_fused(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    optimizer = RegularizedClassifier(backbone=small_mlp()).configure_optimizers()["optimizer"]
    assert not optimizer.defaults.get("fused") and optimizer.defaults["eps"] == 1e-7


@pytest.mark.slow
def test_compiled_trial_runs_and_is_recorded(cifar_dir, tmp_path):
    """`--compile` (torch.compile of the network) trains and tests like any trial."""
    from ablations.run import main

    args = [
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(tmp_path),
        "--only",
        "pixel",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--val-size",
        "100",
        "--batch-size",
        "64",
        "--compile",
    ]
    assert main(args) == 0
    result = json.loads((tmp_path / "notebook/pixel/seed=0/result.json").read_text())
    assert result["metrics"]["test/acc"] > 0.1 and result["test_images"] == 200
