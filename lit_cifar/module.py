"""`RegularizedClassifier`: a LightningModule that trains a backbone under a `RegularizationSpec`, as Keras would,
standardizing raw images itself (`InputNormalization`), so that a checkpoint alone classifies them."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Optional, Union, cast

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable  # LightningCLI fills it from --model.optimizer
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from lit_cifar.data import DATA_STATE_KEYS, NormalizingData, attached_datamodule
from lit_cifar.models import (
    NotebookCNN,
    build_backbone,
    check_allowed,
    check_backbone,
    default_regularized_layers,
    recover_init_args,
    state_shapes,
)
from lit_cifar.spec import MAXNORM_RESCALED, Normalization, RegularizationSpec, check_number

STAGES = ("train", "val", "test")
PROGRESS_BAR = ("train/loss", "train/acc", "val/loss", "val/acc")
# How a model runs, not what it is: left out of the hyperparameters, so a checkpoint loads without them.
RUNTIME_ARGUMENTS = ["backbone", "optimizer", "compile", "predict_logits"]
RNG_KEY = "rng_states"
BACKBONE_KEY = "backbone"  # the checkpoint entry naming the backbone's class
# The class paths `load_from_checkpoint` allows while it builds a model from a checkpoint (None outside it).
_LOADING: ContextVar[Optional[frozenset[str]]] = ContextVar("lit_cifar_loading", default=None)


def rng_states() -> dict[str, Any]:
    """The states of torch's (CPU, and CUDA once initialized), NumPy's and Python's generators, as tensors and plain
    values (``weights_only=True`` loads them)."""
    kind, keys, *numbers = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    states = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), *numbers]}
    states["python"] = random.getstate()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what `rng_states` took (CUDA's only onto as many devices)."""
    torch.set_rng_state(states["torch"])
    kind, keys, *numbers = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *numbers))
    random.setstate(states["python"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def check_augment(spec: RegularizationSpec, datamodule: Any) -> None:
    """ValueError unless the data module's ``augment`` attribute (absent: False) is what `spec` asks."""
    augments = getattr(datamodule, "augment", None)
    if bool(augments) != spec.augment:
        advice = ": it cannot augment (give it an augment argument and attribute, True when it augments batches)"
        raise ValueError(
            f"spec {spec.name!r} {'asks' if spec.augment else 'does not ask'} for augment but data module "
            f"{type(datamodule).__name__} has augment={augments!r}{advice if augments is None else ''}"
        )


class InputNormalization(nn.Module):
    """``(x - mean) / std`` of images in 0-255 units with the training split's statistics, kept as buffers: per pixel
    (C, H, W) for ``"pixel"``, per channel (C, 1, 1) for ``"channel"``, 0 and 1 for ``"none"`` (any image). Images
    of another shape are a ValueError; until fitted, images pass through unstandardized, with a warning."""

    mean: Tensor
    std: Tensor

    def __init__(self, normalize: Normalization = "none") -> None:
        super().__init__()
        self.normalize = normalize
        self.fitted = normalize == "none"  # raw pixels: nothing to fit
        self.register_buffer("mean", torch.tensor(0.0 if self.fitted else math.nan))
        self.register_buffer("std", torch.tensor(1.0 if self.fitted else math.nan))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the saved statistics' shape (that of the images they were fitted on) before copying them in."""
        for name in ("mean", "std"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, Tensor) and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, dtype=self.mean.dtype, device=self.mean.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.fitted = bool(torch.isfinite(self.mean).all() and torch.isfinite(self.std).all())

    @torch.no_grad()
    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Use `mean` and `std` (0-255 units), shaped (C, H, W) for ``"pixel"``, (C, 1, 1) otherwise."""
        shape = tuple(mean.shape)
        pixel = self.normalize == "pixel"
        if shape != tuple(std.shape) or len(shape) != 3 or (not pixel and shape[1:] != (1, 1)) or min(shape) < 1:
            raise ValueError(
                f"normalize={self.normalize!r} needs mean and std of one shape {'(C, H, W)' if pixel else '(C, 1, 1)'}"
                f", got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        self.mean = mean.detach().to(self.mean.device, self.mean.dtype).clone()
        self.std = std.detach().to(self.std.device, self.std.dtype).clone()
        self.fitted = True

    def forward(self, images: Tensor) -> Tensor:
        x = images.to(self.mean.dtype)
        if not self.fitted:  # Python's default filter shows the warning once
            advice = "train with a NormalizingData data module (CIFAR10DataModule) or call set_input_statistics"
            message = f"normalize={self.normalize!r} statistics are not fitted: images pass through as they are; "
            warnings.warn(message + advice, RuntimeWarning, stacklevel=2)
            return x
        if self.mean.dim():  # "none" before any fit (0-dim) fits any image
            image = tuple(images.shape[1:])
            pixel = self.normalize == "pixel"
            if len(image) != 3 or (image != tuple(self.mean.shape) if pixel else image[0] != self.mean.shape[0]):
                raise ValueError(
                    f"images of shape {tuple(images.shape)} do not fit the normalize={self.normalize!r} statistics "
                    f"of shape {tuple(self.mean.shape)}: the model was fitted on (B, {self.mean.shape[0]}, ...) images"
                )
        return (x - self.mean) / self.std


class RegularizedClassifier(pl.LightningModule):
    """Image classifier trained with the regularization a spec asks for, with the notebook's Keras semantics.

    * ``model(images)``: logits of (B, C, H, W) images in 0-255 units, standardized with the training split's
      statistics (`set_input_statistics`, or a `NormalizingData` data module's; saved in checkpoints).
    * Loss: cross-entropy + `penalty()`, logged per epoch as ``*/loss`` (Keras's objective), ``*/ce``, ``*/acc``
      and ``train/penalty``. Max-norm after every step (`apply_max_norm`), its share logged as `MAXNORM_RESCALED`.
    * Optimizer: Adam(lr, eps=adam_eps), or `optimizer`; step ``t`` uses ``lr / (1 + lr_decay * t)``, as Keras.
    * Predict: class probabilities (logits with ``predict_logits=True``) of images or ``(images, anything)``.

    Args:
        spec: a `RegularizationSpec`, its text form (``"pixel+bn+dropout=0.25"``) or its `to_dict()`.
        lr: Adam learning rate at step 0 (finite, > 0).
        lr_decay: Keras ``decay`` (finite, >= 0).
        adam_eps: Adam epsilon (Keras's default 1e-7; finite, > 0).
        backbone: the network (``None``: ``NotebookCNN(spec)``), checked by `check_backbone`; a checkpoint rebuilds
            it where `lit_cifar.models.recover_init_args` finds its init args.
        num_classes: number of classes (logits); must match the data module's classes.
        optimizer: ``params -> Optimizer`` replacing Adam, e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``.
        compile: ``torch.compile`` the backbone in `configure_model`; checkpoints keep the plain parameter names.
        predict_logits: `predict_step` returns logits instead of probabilities.
        backbone_class_path: with `backbone` None, build the network by `build_backbone` (a checkpoint rebuilds it).
        backbone_init_args: the keyword arguments of that class.
    """

    def __init__(
        self,
        spec: Union[RegularizationSpec, str, Mapping[str, Any]] = "baseline",
        lr: float = 1e-3,
        lr_decay: float = 1e-6,
        adam_eps: float = 1e-7,
        backbone: Optional[nn.Module] = None,
        num_classes: int = 10,
        optimizer: Optional[OptimizerCallable] = None,
        compile: bool = False,
        predict_logits: bool = False,
        backbone_class_path: Optional[str] = None,
        backbone_init_args: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.spec = RegularizationSpec.coerce(spec)
        check_number("lr", lr, 0, above=True)
        check_number("lr_decay", lr_decay, 0)
        check_number("adam_eps", adam_eps, 0, above=True)
        check_number("num_classes", num_classes, 2, integer=True)
        spec = self.spec.to_dict()  # saved as plain data: TensorBoard shows each field, checkpoints load safely
        self.save_hyperparameters(ignore=RUNTIME_ARGUMENTS)
        self.optimizer_factory, self.compile_backbone, self.predict_logits = optimizer, compile, predict_logits
        self.input_norm = InputNormalization(self.spec.normalize)
        if backbone is None and backbone_class_path is not None:
            loading = _LOADING.get()
            if loading is not None:
                check_allowed(backbone_class_path, loading)
            backbone = build_backbone(backbone_class_path, backbone_init_args, self.spec, num_classes)
        elif backbone is not None and backbone_class_path is None:
            recovered = recover_init_args(backbone, self.spec, num_classes)
            if recovered is not None:
                self.hparams["backbone_class_path"], self.hparams["backbone_init_args"] = recovered
        self.backbone = backbone if backbone is not None else NotebookCNN(self.spec, num_classes=num_classes)
        self.regularized = default_regularized_layers(self.backbone)
        check_backbone(self.spec, self.backbone, self.regularized)
        # One metric per logged name; nan_strategy="disable": a NaN loss shows in the logs, not dropped.
        means = ["train/penalty", *(f"{stage}/{name}" for stage in STAGES for name in ("loss", "ce"))]
        means += [MAXNORM_RESCALED] if self.spec.max_norm is not None else []
        metrics: dict[str, Metric] = {name: MeanMetric(nan_strategy="disable") for name in means}
        metrics |= {f"{stage}/acc": MulticlassAccuracy(num_classes, average="micro") for stage in STAGES}
        self.epoch_metrics = nn.ModuleDict(metrics)

    def forward(self, images: Tensor) -> Tensor:
        """Logits of images in 0-255 units, standardized with the model's statistics."""
        return self.backbone(self.input_norm(images))

    def set_input_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Standardize inputs with `mean` and `std` (0-255 units), as ``CIFAR10DataModule.setup`` fits them."""
        self.input_norm.set_statistics(mean, std)

    def named_regularized_layers(self) -> list[tuple[str, nn.Module]]:
        """``(name, layer)`` of every layer penalties and max-norm act on, named as in ``named_modules()``."""
        ids = {id(layer) for layer in self.regularized}
        return [(name, layer) for name, layer in self.named_modules() if id(layer) in ids]

    def penalty(self) -> Tensor:
        """``l1 * sum(|W|) + l2 * sum(W**2)`` over the regularized weights, as Keras (no 1/2 factor, no biases)."""
        total = torch.zeros((), device=self.device)
        for layer in self.regularized:
            weight = cast(Tensor, layer.weight)
            if self.spec.l1:
                total = total + self.spec.l1 * weight.abs().sum()
            if self.spec.l2:
                total = total + self.spec.l2 * weight.square().sum()
        return total

    @torch.no_grad()
    def apply_max_norm(self) -> Tensor:
        """Rescale each row of each regularized weight to L2 norm ``<= max_norm`` (Keras also scales shorter rows by
        ``norm / (norm + 1e-7)``, below 1e-7); returns the fraction of rows rescaled, on the device (no host sync)."""
        rescaled, rows, cap = torch.zeros((), device=self.device), 0, self.spec.max_norm
        if cap is None:
            return rescaled
        for layer in self.regularized:
            weight = cast(Tensor, layer.weight)
            norms = torch.linalg.vector_norm(weight, ord=2, dim=tuple(range(1, weight.dim())))
            rescaled += (norms > cap).sum()
            rows += len(norms)
            weight.renorm_(p=2, dim=0, maxnorm=cap)
        return rescaled / max(rows, 1)

    def _datamodule(self) -> Optional[pl.LightningDataModule]:
        try:
            return attached_datamodule(self.trainer)
        except RuntimeError:  # not attached to a Trainer
            return None

    def setup(self, stage: str) -> None:
        classes, wanted = getattr(self._datamodule(), "classes", None), self.hparams["num_classes"]
        if classes is not None and len(classes) != wanted:
            raise ValueError(f"num_classes={wanted} but the data module has {len(classes)} classes")

    def configure_model(self) -> None:
        if self.compile_backbone and not getattr(self, "_compiled", False):
            self.backbone.compile()  # in place: parameter names (and checkpoints) stay those of the plain backbone
            self._compiled = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the generators' states (a resumed run draws the whole run's masks and crops) and the backbone class."""
        checkpoint[RNG_KEY] = rng_states()
        checkpoint[BACKBONE_KEY] = f"{type(self.backbone).__module__}.{type(self.backbone).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a backbone unlike the saved one, restore the generators, and give the data state to a data module
        of another class with our state keys (Lightning restores only the same class)."""
        saved, built = state_shapes(checkpoint["state_dict"], "backbone."), state_shapes(self.backbone.state_dict())
        if saved != built:
            saved_class = checkpoint[BACKBONE_KEY]
            differ = sorted(set(saved) ^ set(built)) or sorted(k for k in saved if saved[k] != built[k])
            raise ValueError(
                f"the checkpoint's backbone ({saved_class}) is not the {type(self.backbone).__name__} built here "
                f"(first difference: {differ[0]!r}): pass the backbone as trained, load_from_checkpoint(path, "
                f"backbone={saved_class.rpartition('.')[2]}(...)), or backbone_class_path={saved_class!r} with its "
                "backbone_init_args"
            )
        set_rng_states(checkpoint[RNG_KEY])
        data = next((v for v in checkpoint.values() if isinstance(v, dict) and DATA_STATE_KEYS <= v.keys()), None)
        dm = self._datamodule()
        if data is not None and isinstance(dm, NormalizingData) and type(dm).__qualname__ not in checkpoint:
            if DATA_STATE_KEYS <= dm.state_dict().keys():  # a data module of ours, under another class name
                dm.load_state_dict(data)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Union[str, Path], *args: Any, allowed_class_paths: Iterable[str] = (), **kwargs: Any
    ) -> RegularizedClassifier:
        """A model from a checkpoint read with ``weights_only=True`` (runs no code), importing a saved backbone class
        only where `lit_cifar.models.check_allowed` allows it (`allowed_class_paths`); else pass ``backbone=``."""
        if kwargs.setdefault("weights_only", True) is not True:
            raise ValueError(f"weights_only={kwargs['weights_only']!r}: our checkpoints load with True only")
        token = _LOADING.set(frozenset([*allowed_class_paths, *filter(None, [kwargs.get("backbone_class_path")])]))
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            _LOADING.reset(token)

    def on_validation_start(self) -> None:
        """An unfitted model takes a `NormalizingData`'s fitted statistics; a fitted one writes its own into it."""
        dm = self._datamodule()
        if not isinstance(dm, NormalizingData) or dm.mean is None or dm.std is None:
            return
        if dm.normalize != self.spec.normalize:
            raise ValueError(
                f"the data module's normalize={dm.normalize!r} does not match the model's spec {self.spec.name!r}: "
                f"build it with normalize={self.spec.normalize!r} (CIFAR10DataModule.from_spec(spec, ...) does)"
            )
        norm = self.input_norm
        if not norm.fitted or norm.mean.dim() == 0:  # unfitted, or "none" for any image
            self.set_input_statistics(dm.mean, dm.std)
        elif not (torch.equal(dm.mean, norm.mean.cpu()) and torch.equal(dm.std, norm.std.cpu())):
            dm.mean, dm.std = norm.mean.cpu().clone(), norm.std.cpu().clone()

    on_test_start = on_predict_start = on_validation_start

    def on_fit_start(self) -> None:
        dm = self._datamodule()
        if dm is not None:
            check_augment(self.spec, dm)
        self.on_validation_start()

    def _log(self, key: str, batch_size: int, *args: Tensor) -> None:
        metric = cast(Metric, self.epoch_metrics[key])
        metric.update(*args)
        self.log(key, metric, on_step=False, on_epoch=True, batch_size=batch_size, prog_bar=key in PROGRESS_BAR)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        ce = F.cross_entropy(logits, labels)
        penalty = self.penalty() if stage == "train" else self._eval_penalty
        loss = ce + penalty
        # One value per image: the epoch mean is over images (MeanMetric ignores `weight` under "disable").
        n = len(labels)
        self._log(f"{stage}/loss", n, loss.detach().expand(n))
        self._log(f"{stage}/acc", n, logits.detach(), labels)
        self._log(f"{stage}/ce", n, ce.detach().expand(n))
        if stage == "train":
            self._log("train/penalty", n, penalty.detach())
        return loss

    def on_validation_epoch_start(self) -> None:
        self._eval_penalty = self.penalty().detach()  # the weights are fixed while evaluating

    on_test_epoch_start = on_validation_epoch_start

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Union[Tensor, tuple[Tensor, ...]], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities (logits if ``predict_logits``) of a batch of images, or of ``(images, ...)``."""
        logits = self(batch if isinstance(batch, Tensor) else batch[0])
        return logits if self.predict_logits else logits.softmax(dim=1)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(self.parameters())
        else:
            lr, eps, fused = self.hparams["lr"], self.hparams["adam_eps"], True
            try:  # fused Adam unscales gradients itself: Lightning cannot clip them under mixed precision
                fused = not (str(self.trainer.precision).endswith("-mixed") and self.trainer.gradient_clip_val)
            except RuntimeError:  # not attached to a Trainer
                pass
            try:
                optimizer = torch.optim.Adam(self.parameters(), lr=lr, eps=eps, fused=fused)
            except (RuntimeError, ValueError):  # no fused kernel for the parameters' device
                optimizer = torch.optim.Adam(self.parameters(), lr=lr, eps=eps)
        decay = self.hparams["lr_decay"]
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + decay * step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.spec.max_norm is not None:
            self._log(MAXNORM_RESCALED, 1, self.apply_max_norm())
