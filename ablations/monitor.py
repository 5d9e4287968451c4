"""What a trial shows in TensorBoard and records about itself while it trains.

`TrialLogger` writes the HParams entry once, at the end, with the real final metrics; `TrialMonitor` keeps the
per-epoch history, stops a diverging trial, measures training throughput and logs the sample images and weight
histograms.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.logger import _flatten_dict, _sanitize_params
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams as hparams_summary

HPARAM_METRICS = ("val/acc", "test/acc", "test/loss")  # the metrics TensorBoard's HParams tab lists per trial


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial stops, with the epoch in the message."""


class TrialLogger(TensorBoardLogger):
    """TensorBoard logger that writes the HParams entry once, at the end, with the trial's real final metrics.

    Lightning calls `log_hyperparams` when fitting starts, before any metric exists; the parameters are kept until
    `log_final_hparams`, so the HParams tab shows real ``val/acc``, ``test/acc`` and ``test/loss`` rather than
    Lightning's ``hp_metric`` placeholder. Their values are read from the scalars of the same names.
    """

    def __init__(self, save_dir: Path) -> None:
        super().__init__(save_dir=str(save_dir), name="", version="", default_hp_metric=False)
        self._pending: dict[str, Any] = {}

    def log_hyperparams(self, params: Any, metrics: Optional[dict[str, Any]] = None) -> None:
        self._pending.update(_flatten_dict(dict(params)))

    def log_final_hparams(self, params: dict[str, Any]) -> None:
        self._pending.update(_flatten_dict(params))
        values = _sanitize_params(dict(self._pending))
        values = {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}
        writer = self.experiment._get_file_writer()
        for summary in hparams_summary(values, {name: 0.0 for name in HPARAM_METRICS}):
            writer.add_summary(summary)
        self.hparams.update(values)
        self.finalize("success")  # flush and close the event file (the test pass had reopened it), hparams.yaml


@torch.no_grad()
def log_weight_histogram(writer: Any, tag: str, weight: torch.Tensor, step: int, bins: int = 64) -> None:
    """A TensorBoard histogram of `weight` computed with torch ops on its device.

    ``SummaryWriter.add_histogram`` converts a weight to float64 numpy first: for the 22M-entry hidden layer that
    alone is 177 MB, several times over; this keeps a trial's peak memory down.
    """
    values = weight.detach().float().flatten()
    low, high = float(values.min()), float(values.max())
    counts = torch.histc(values, bins=bins, min=low, max=high if high > low else low + 1e-12)
    limits = torch.linspace(low, high, bins + 1)[1:]
    writer.add_histogram_raw(tag, min=low, max=high, num=values.numel(), sum=float(values.sum()),
                             sum_squares=float(torch.dot(values, values)), bucket_limits=limits.tolist(),
                             bucket_counts=counts.tolist(), global_step=step)


class TrialMonitor(pl.Callback):
    """Per-epoch history, NaN/inf loss check, training throughput, and the TensorBoard extras of a trial."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_images = 0
        self._epoch_start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            from torchvision.utils import make_grid

            images, _ = dm.class_examples()
            grid = make_grid(images, nrow=5, padding=2)
            trainer.logger.experiment.add_image("data/one_training_image_per_class", grid, 0)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.train_images += len(batch[1])

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.training:  # validation inside fit: the training part of the epoch ends here
            self.train_seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._epoch_start is not None:  # no validation ran this epoch
            self.train_seconds += time.perf_counter() - self._epoch_start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        loss = metrics.get("train/loss", 0.0)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"train/loss became {loss} in epoch {trainer.current_epoch}: the trial "
                                     "diverged (too strong a penalty or learning rate?)")
        self.history.append({"epoch": trainer.current_epoch, **metrics})
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            for name, layer in module.named_regularized_layers():
                log_weight_histogram(trainer.logger.experiment, f"weights/{name}", layer.weight,
                                     trainer.current_epoch)
