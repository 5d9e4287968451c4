"""What a trial shows in TensorBoard and records about itself while it trains: its logger, and Lightning callbacks
that do one job each, assembled by `TrialMonitor`.

- `TrialLogger`: scalars against the number of epochs trained, accuracy and cross-entropy also under the groups
  Time Series opens first, ``hparams.yaml`` with the real hyperparameters, and at the end the trial's HParams
  record and settings text (`ablations.board` says what TensorBoard makes of them).
- `EpochHistory`: the metrics of every epoch, for result.json. `StopOnNonFiniteLoss`: stops a diverging trial.
- `Throughput`: training images per second. `WeightHistograms`: the regularized layers' weights per epoch.
- `BatchNormDrift`: how far BatchNorm's running statistics are from a real batch's, per epoch.
- `SuiteSamples`: one training image per class, once per suite.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from ablations import board, plots
from ablations.suite import Trial

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial stops, with the epoch in the message."""


def settings_markdown(hparams: Mapping[str, Any]) -> str:
    """A trial's settings as a markdown table, for its Text tab."""
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in hparams.items())


class TrialLogger(TensorBoardLogger):
    """TensorBoard logger of one trial (see the module docstring).

    Every scalar's step is the number of epochs trained when it was logged: Lightning reports ``epoch`` as the
    epoch in progress during fitting and as the number of finished epochs when testing.
    """

    def __init__(self, save_dir: Path, trial: Trial) -> None:
        super().__init__(save_dir=str(save_dir), name="", version="", default_hp_metric=False)
        self.trial = trial
        settings = trial.hashed_settings()
        self.hparams.update({"suite": trial.suite, "spec_name": settings.pop("spec"), **settings})

    def log_hyperparams(self, params: Any, metrics: Optional[dict[str, Any]] = None, step: Optional[int] = None
                        ) -> None:
        """Keep the module's and data module's hyperparameters for ``hparams.yaml``; the HParams record is written
        by `log_trial`, once every setting is known."""
        self.hparams.update(params if isinstance(params, Mapping) else vars(params))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        if epoch is not None:
            testing = all(name.startswith("test/") for name in metrics)
            step = int(epoch) if testing else int(epoch) + 1
        copies = {}
        for name, value in metrics.items():
            stage, _, metric = name.partition("/")
            if metric in board.EPOCH_CURVES:
                copies[f"{board.EPOCH_CURVES[metric]}/{stage}"] = value
        super().log_metrics({**metrics, **copies}, step)

    def log_trial(self) -> None:
        """Close the event file (the test pass reopened it) and write the trial's HParams record and settings."""
        self.finalize("success")
        trial = self.trial
        hparams = board.trial_hparams(trial.spec.to_dict(), trial.hashed_settings())
        board.write_events(Path(self.log_dir), [
            board.session_summary(hparams, board.trial_id(trial.suite, trial.order, trial.seed)),
            board.text_summary("trial/settings", settings_markdown(hparams))])


class EpochHistory(pl.Callback):
    """The ``train/*`` and ``val/*`` metrics of every epoch, as result.json's ``history`` holds them."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        self.epochs.append({"epoch": trainer.current_epoch, **metrics})


class StopOnNonFiniteLoss(pl.Callback):
    """Raises `NonFiniteLossError` at the end of an epoch whose training loss is NaN or infinite."""

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loss = float(trainer.callback_metrics.get("train/loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"train/loss became {loss} in epoch {trainer.current_epoch}: the trial "
                                     "diverged (too strong a penalty or learning rate?)")


class Throughput(pl.Callback):
    """Training images and seconds spent training (validation excluded), per process."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self._epoch_start: Optional[float] = None

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.images += len(batch[1])

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._stop()  # validation inside fit: the training part of the epoch ends here

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._stop()  # no validation ran this epoch

    def _stop(self) -> None:
        if self._epoch_start is not None:
            self.seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None


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


class WeightHistograms(pl.Callback):
    """The regularized layers' weights after every epoch (step: epochs trained), where L1 piles them at zero and
    max-norm caps their spread."""

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            for name, layer in module.named_regularized_layers():
                log_weight_histogram(trainer.logger.experiment, f"weights/{name}", layer.weight,
                                     trainer.current_epoch + 1)


class BatchNormDrift(pl.Callback):
    """How far each BatchNorm layer's running statistics, which evaluation normalizes with, are from the
    statistics of a real batch, at every epoch's end.

    On the first validation batch of each epoch, forward hooks take every BatchNorm input's per-channel mean and
    std; the callback logs ``val/bn_mean_gap``, the mean over channels (of every layer) of
    ``|batch mean - running mean| / running std``, and ``val/bn_std_ratio``, of ``batch std / running std``. Near
    0 and 1 the running statistics describe the data; far from them, evaluation sees badly normalized inputs.
    """

    def __init__(self) -> None:
        self._batch: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks: list[Any] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._batch = {}
        self._hooks = [layer.register_forward_hook(self._capture) for layer in module.modules()
                       if isinstance(layer, BATCHNORMS) and layer.track_running_stats]

    @torch.no_grad()
    def _capture(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if layer not in self._batch:
            channels = inputs[0].detach().transpose(0, 1).flatten(1).float()
            self._batch[layer] = (channels.mean(1), channels.var(1, unbiased=False))

    def on_validation_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._remove_hooks()  # one batch is enough

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._remove_hooks()
        if not self._batch or trainer.sanity_checking:
            return
        gaps, ratios = zip(*(self.channel_drift(layer, *batch) for layer, batch in self._batch.items()))
        module.log("val/bn_mean_gap", torch.cat(gaps).mean(), sync_dist=True)
        module.log("val/bn_std_ratio", torch.cat(ratios).mean(), sync_dist=True)

    @staticmethod
    def channel_drift(layer: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel of `layer`: ``|batch mean - running mean| / running std`` and ``batch std / running std``
        for a batch's per-channel `mean` and `var`."""
        running_std = (layer.running_var.float() + layer.eps).sqrt()
        return (mean - layer.running_mean.float()).abs() / running_std, (var + layer.eps).sqrt() / running_std

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


class SuiteSamples(pl.Callback):
    """One training image per class, named, for the whole suite: the first trial to start writes the suite's
    ``_samples`` run (atomically); the others find it there."""

    def __init__(self, suite_dir: Path) -> None:
        self.run_dir = Path(suite_dir) / board.SAMPLES_RUN

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.run_dir.exists():
            return
        images, names = trainer.datamodule.class_examples()
        png = plots.samples_chart(images.cpu().numpy(), names, "CIFAR-10: one training image per class")
        board.write_run(self.run_dir, [board.image_summary("samples/one_training_image_per_class", png)],
                        replace=False)


class TrialMonitor:
    """A trial's callbacks (pass ``callbacks=monitor.callbacks`` to the Trainer) and what they measured."""

    def __init__(self, suite_dir: Optional[Path] = None) -> None:
        self._history = EpochHistory()
        self._throughput = Throughput()
        self.callbacks: list[pl.Callback] = [StopOnNonFiniteLoss(), self._history, self._throughput,
                                             WeightHistograms(), BatchNormDrift()]
        if suite_dir is not None:
            self.callbacks.append(SuiteSamples(suite_dir))

    @property
    def history(self) -> list[dict[str, float]]:
        return self._history.epochs

    @property
    def train_images(self) -> int:
        return self._throughput.images

    @property
    def train_seconds(self) -> float:
        return self._throughput.seconds
