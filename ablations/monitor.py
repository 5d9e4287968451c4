"""What a trial shows in TensorBoard and records while it trains: its `TrialLogger` (exactly the scalars a rebuild
from result.json writes, `ablations.report.board`) and the one callback, `TrialMonitor`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from ablations.report import board
from ablations.signals import raise_if_interrupted
from ablations.suite import Trial
from lit_cifar.data import attached_datamodule
from lit_cifar.models import BATCHNORMS

if TYPE_CHECKING:
    from lit_cifar.module import RegularizedClassifier


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrialLogger(TensorBoardLogger):
    """One trial's TensorBoard logger: the scalars result.json holds (`log_epoch`, `log_trial`) and hparams.yaml."""

    def __init__(self, save_dir: Path, trial: Trial) -> None:
        super().__init__(save_dir=str(save_dir), name="", version="", default_hp_metric=False)
        settings = trial.hashed_settings()
        self.hparams.update({"suite": trial.suite, "spec_name": settings.pop("spec"), **settings, **trial.levels()})

    def log_hyperparams(
        self, params: Any, metrics: Optional[dict[str, Any]] = None, step: Optional[int] = None
    ) -> None:
        """Keep the module's and data module's hyperparameters for ``hparams.yaml``."""
        self.hparams.update(params if isinstance(params, Mapping) else vars(params))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        """Nothing: `log_epoch` and `log_trial` write the same numbers, as result.json keeps them."""

    def _write(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.experiment.add_scalar(tag, value, global_step=step)
        self.experiment.flush()

    def log_epoch(self, epoch: Mapping[str, float], epochs_trained: int) -> None:
        """One epoch's scalars (its entry of result.json's ``history``), at step `epochs_trained`."""
        self._write(board.epoch_scalars(epoch), epochs_trained)

    def log_trial(self, metrics: Mapping[str, float], history: list[dict[str, float]]) -> None:
        """Write the test scalars at the last epoch, and close."""
        self._write(board.test_scalars(metrics), len(history))
        self.finalize("success")


@torch.no_grad()
def log_weight_histogram(writer: Any, tag: str, weight: torch.Tensor, step: int, bins: int = 64) -> None:
    """A TensorBoard histogram of `weight` in torch ops (``add_histogram`` copies it to float64 numpy)."""
    values = weight.detach().float().flatten()
    low, high = float(values.min()), float(values.max())
    counts = torch.histc(values, bins=bins, min=low, max=high if high > low else low + 1e-12)
    writer.add_histogram_raw(
        tag,
        min=low,
        max=high,
        num=values.numel(),
        sum=float(values.sum()),
        sum_squares=float(torch.dot(values, values)),
        bucket_limits=torch.linspace(low, high, bins + 1)[1:].tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )


class TrialMonitor(pl.Callback):
    """A trial's `history` (each epoch's ``train/*`` and ``val/*``; a non-finite loss raises `NonFiniteLossError`),
    `images` and `seconds` trained, regularized weights, BatchNorm drift on each epoch's first validation batch (means
    of ``|batch mean - running mean| / running std`` and ``batch std / running std``: near 0 and 1 the running
    statistics fit), one image per class once per suite, and a stop at the next batch after a stop signal."""

    def __init__(self, suite_dir: Path) -> None:
        self.history: list[dict[str, float]] = []
        self.images, self.seconds = 0, 0.0
        self.samples = Path(suite_dir) / board.SAMPLES_RUN
        self._epoch_start: Optional[float] = None
        self._batch: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks: list[Any] = []

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        dm: Any = attached_datamodule(trainer)
        if self.samples.exists() or not trainer.is_global_zero:
            return
        if not hasattr(dm, "class_examples") or len(dm.classes) > 10:  # a data module of your own, or too many
            return
        from ablations.report import plots  # matplotlib, in the one trial that draws the suite's samples

        images, names = dm.class_examples()
        png = plots.samples_chart(images.cpu().numpy(), names, board.SAMPLES_TITLE)
        board.write_run(self.samples, [board.image_summary(board.SAMPLES_TAG, png)], replace=False)

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        raise_if_interrupted()

    on_validation_batch_start = on_test_batch_start = on_train_batch_start

    def on_train_epoch_start(self, *args: Any) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, i: int) -> None:
        self.images += len(batch[1])

    def _stop_clock(self) -> None:
        if self._epoch_start is not None:
            self.seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._stop_clock()
        loss = float(trainer.callback_metrics.get("train/loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"train/loss became {loss} in epoch {trainer.current_epoch}: the trial "
                "diverged (too strong a penalty or learning rate?)"
            )
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        self.history.append({"epoch": trainer.current_epoch, **metrics})
        if not trainer.is_global_zero:
            return
        if isinstance(trainer.logger, TrialLogger):
            trainer.logger.log_epoch(self.history[-1], len(self.history))
        if isinstance(trainer.logger, TensorBoardLogger):
            for name, layer in cast("RegularizedClassifier", module).named_regularized_layers():
                weight = cast(torch.Tensor, layer.weight)
                log_weight_histogram(trainer.logger.experiment, f"weights/{name}", weight, trainer.current_epoch + 1)

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._stop_clock()  # validation inside fit: the training part of the epoch ends here
        self._batch = {}
        self._hooks = [
            layer.register_forward_hook(self._capture)
            for layer in module.modules()
            if isinstance(layer, BATCHNORMS) and layer.track_running_stats
        ]

    @torch.no_grad()
    def _capture(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if layer not in self._batch:
            channels = inputs[0].detach().transpose(0, 1).flatten(1).float()
            self._batch[layer] = (channels.mean(1), channels.var(1, unbiased=False))

    def on_validation_batch_end(self, *args: Any) -> None:
        for hook in self._hooks:  # one batch is enough
            hook.remove()
        self._hooks = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.on_validation_batch_end()
        if not self._batch or trainer.sanity_checking:
            return
        gaps, ratios = [], []
        for layer, (mean, var) in self._batch.items():
            eps = cast(float, layer.eps)
            running_std = (cast(torch.Tensor, layer.running_var).float() + eps).sqrt()
            gaps.append((mean - cast(torch.Tensor, layer.running_mean).float()).abs() / running_std)
            ratios.append((var + eps).sqrt() / running_std)
        module.log("val/bn_mean_gap", torch.cat(gaps).mean(), sync_dist=True)
        module.log("val/bn_std_ratio", torch.cat(ratios).mean(), sync_dist=True)
