"""`RegularizedClassifier`: a LightningModule that trains a backbone under a `RegularizationSpec`, as Keras would."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_cifar.models import SeedCNN
from lit_cifar.spec import RegularizationSpec

STAGES = ("train", "val", "test")


def default_regularized_layers(backbone: nn.Module) -> list[nn.Module]:
    """The layers penalties and max-norm act on: those ``backbone.regularized_layers()`` names, or, if it names
    none, every ``nn.Linear`` except the last one in module order (the output layer)."""
    named = getattr(backbone, "regularized_layers", None)
    layers = list(named()) if callable(named) else []
    if layers:
        return layers
    return [m for m in backbone.modules() if isinstance(m, nn.Linear)][:-1]


def make_adam(params: Any, lr: float, eps: float) -> torch.optim.Adam:
    """Adam with the fused kernel where the parameters' device supports it, else the default implementation."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, eps=eps)


class RegularizedClassifier(pl.LightningModule):
    """Image classifier trained with the regularization a spec asks for, with the notebook's Keras semantics.

    * Loss: cross-entropy on logits + `penalty()`; every logged ``*/loss`` is this objective, as Keras reports it
      (``train/penalty`` is logged on its own, so the data term is ``loss - penalty``).
    * Optimizer: Adam(lr, eps=adam_eps) with Keras's legacy time decay: optimizer step ``t`` (from 0) uses
      ``lr / (1 + lr_decay * t)``.
    * Max-norm: after every optimizer step, each row of every regularized layer's weight (one unit's incoming
      weights; Keras ``MaxNorm(axis=0)`` on its (in, out) kernel) is rescaled to L2 norm ``<= max_norm``.
    * Logged once per epoch: ``train/loss``, ``train/penalty``, ``train/acc``, ``val/loss``, ``val/acc``,
      ``test/loss``, ``test/acc`` (accumulated on the device, no per-step host sync).

    Args:
        spec: a `RegularizationSpec`, its text form (``"pixel+bn+dropout=0.25"``) or its `to_dict()`.
        lr: Adam learning rate at step 0.
        lr_decay: Keras ``decay``: the rate at step t is ``lr / (1 + lr_decay * t)``.
        adam_eps: Adam epsilon (Keras's default 1e-7).
        backbone: the network; ``None`` builds ``SeedCNN(spec)``. Penalties and max-norm act on the layers its
            ``regularized_layers()`` returns, or, if it has none, on every ``nn.Linear`` but the last.
            A backbone is not saved in the hyperparameters: pass it again to ``load_from_checkpoint``.
        num_classes: number of classes (logits).
    """

    def __init__(self, spec: Union[RegularizationSpec, str, Mapping[str, Any]] = "baseline", lr: float = 1e-3,
                 lr_decay: float = 1e-6, adam_eps: float = 1e-7, backbone: Optional[nn.Module] = None,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.spec = RegularizationSpec.coerce(spec)
        # The spec is stored as a dict: TensorBoard shows each field (spec/l2, spec/dropout, ...), and
        # `load_from_checkpoint` passes it back to `spec`, which accepts that form.
        self.save_hyperparameters({"spec": self.spec.to_dict(), "lr": lr, "lr_decay": lr_decay,
                                   "adam_eps": adam_eps, "num_classes": num_classes})
        self.backbone = backbone if backbone is not None else SeedCNN(self.spec, num_classes=num_classes)
        self.regularized = default_regularized_layers(self.backbone)
        # nan_strategy="disable": a NaN loss must show in the logs, not be dropped from the mean.
        # Keyed "<stage>/<metric>" as logged ("train" alone would clash with nn.Module.train).
        self.epoch_metrics = nn.ModuleDict({"train/penalty": MeanMetric(nan_strategy="disable")})
        for stage in STAGES:
            self.epoch_metrics[f"{stage}/loss"] = MeanMetric(nan_strategy="disable")
            self.epoch_metrics[f"{stage}/acc"] = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def named_regularized_layers(self) -> list[tuple[str, nn.Module]]:
        """``(name, layer)`` of every layer penalties and max-norm act on, named as in ``named_modules()``."""
        ids = {id(layer) for layer in self.regularized}
        return [(name, layer) for name, layer in self.named_modules() if id(layer) in ids]

    def penalty(self) -> Tensor:
        """``l1 * sum(|W|) + l2 * sum(W**2)`` over the regularized layers' weights (not biases), as Keras adds
        ``kernel_regularizer`` losses: no 1/2 factor."""
        total = torch.zeros((), device=self.device)
        for layer in self.regularized:
            if self.spec.l1:
                total = total + self.spec.l1 * layer.weight.abs().sum()
            if self.spec.l2:
                total = total + self.spec.l2 * layer.weight.square().sum()
        return total

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        penalty = self.penalty() if stage == "train" else self._eval_penalty
        loss = F.cross_entropy(logits, labels) + penalty
        # One loss value per image, so the epoch mean is over images even with a short last batch (MeanMetric
        # ignores `weight` under nan_strategy="disable", which we need so that no step syncs with the host).
        updates = {f"{stage}/loss": (loss.detach().expand(len(labels)),), f"{stage}/acc": (logits.detach(), labels)}
        if stage == "train":
            updates["train/penalty"] = (penalty.detach(),)
        for name, args in updates.items():
            metric = self.epoch_metrics[name]
            metric.update(*args)
            self.log(name, metric, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._eval_penalty = self.penalty().detach()  # weights are fixed while evaluating: compute it once

    def on_test_epoch_start(self) -> None:
        self._eval_penalty = self.penalty().detach()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = make_adam(self.parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps)
        decay = self.hparams.lr_decay
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + decay * step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.spec.max_norm is not None:
            self.apply_max_norm()

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        """Rescale each row of each regularized weight to L2 norm ``<= max_norm`` (rows under it are untouched;
        Keras also multiplies those by ``norm / (norm + 1e-7)``, a relative change below 1e-7)."""
        for layer in self.regularized:
            layer.weight.renorm_(p=2, dim=0, maxnorm=self.spec.max_norm)
