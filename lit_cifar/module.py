"""`RegularizedClassifier`: a LightningModule that trains a backbone under a `RegularizationSpec`, as Keras would.

Batches are ``(images, labels)`` with images in 0-255 units, uint8 as `lit_cifar.CIFAR10DataModule` serves them.
The model standardizes them itself (`InputNormalization`), with the training split's statistics kept as buffers, so
a checkpoint alone is enough to classify raw images. It takes those statistics from any data module with the
members of `lit_cifar.data.NormalizingData`, and knows no data module class.
"""

from __future__ import annotations

import math
import numbers
import random
import warnings
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Optional, Union, cast

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from lit_cifar.data import DATA_STATE_KEYS, NormalizingData, attached_datamodule
from lit_cifar.models import NotebookCNN, build_backbone, check_allowed, recover_init_args
from lit_cifar.spec import MAXNORM_RESCALED, Normalization, RegularizationSpec

# A function from the model's parameters to an optimizer: Lightning's `lightning.pytorch.cli.OptimizerCallable`,
# so LightningCLI fills it from ``--model.optimizer torch.optim.SGD --model.optimizer.lr 0.1``.
OptimizerCallable = Callable[[Iterable], Optimizer]

STAGES = ("train", "val", "test")
PROGRESS_BAR = ("train/loss", "train/acc", "val/loss", "val/acc")  # the logged metrics the progress bar shows
# Layer types that implement what the spec's `bn` and `dropout` ask for, in any backbone.
BATCHNORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
# Constructor arguments that are how a model runs, not what it is: left out of the saved hyperparameters, so a
# checkpoint loads without them and LightningCLI's --ckpt_path does not override them.
RUNTIME_ARGUMENTS = ["backbone", "optimizer", "compile", "predict_logits"]
RNG_KEY = "rng_states"  # the checkpoint entry with the random generators' states (see `rng_states`)
BACKBONE_KEY = "backbone"  # the checkpoint entry naming the backbone's class (see `on_save_checkpoint`)
# The class paths `RegularizedClassifier.load_from_checkpoint` allows while it builds a model from a checkpoint's
# hyperparameters (None outside it: a class path you pass yourself is yours to import).
_LOADING: ContextVar[Optional[frozenset[str]]] = ContextVar("lit_cifar_loading", default=None)


def rng_states() -> dict[str, Any]:
    """The states of every random generator training draws from: torch's (CPU, and CUDA once initialized; dropout
    and augmentation use them), NumPy's and Python's, as tensors and plain values (a checkpoint with them still
    loads with ``torch.load(weights_only=True)``)."""
    # NumPy's legacy state, the tuple get_state() returns by default: (kind, keys, position, has_gauss, cached).
    kind, keys, position, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    version, python_state, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what `rng_states` took (a CUDA state only where this process has as many CUDA devices)."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def default_regularized_layers(backbone: nn.Module) -> list[nn.Module]:
    """The layers penalties and max-norm act on: those ``backbone.regularized_layers()`` names, or, if it has no
    such method, every ``nn.Linear`` except the last one in module order (the output layer)."""
    named = getattr(backbone, "regularized_layers", None)
    if callable(named):
        return list(named())
    linears: list[nn.Module] = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
    return linears[:-1]


def kernel(layer: nn.Module) -> Tensor:
    """The weight of a regularized layer (`check_backbone` made sure every one has a weight parameter)."""
    return cast(Tensor, layer.weight)


LAYER_TECHNIQUES = ("bn", "dropout")  # the spec's techniques a backbone implements with layers of its own


def honoured_techniques(backbone: nn.Module) -> frozenset[str]:
    """The layer techniques (``"bn"``, ``"dropout"``) whose layers `backbone` builds from the spec: those its
    ``honoured_techniques()`` method names, or both if it has none.

    Layers of a technique the backbone does not honour are a fixed part of its architecture: present whatever the
    spec asks, they are not checked against it, and a spec that asks for that technique is refused.

    Raises:
        ValueError: the method names something other than ``"bn"`` or ``"dropout"``.
    """
    declared = getattr(backbone, "honoured_techniques", None)
    if not callable(declared):
        return frozenset(LAYER_TECHNIQUES)
    named = frozenset(declared())
    unknown = sorted(named - set(LAYER_TECHNIQUES))
    if unknown:
        raise ValueError(
            f"backbone {type(backbone).__name__}.honoured_techniques() names {unknown}: it may name only "
            f"{', '.join(LAYER_TECHNIQUES)}"
        )
    return named


def check_backbone(spec: RegularizationSpec, backbone: nn.Module, regularized: list[nn.Module]) -> None:
    """Refuse a spec that `backbone` cannot honour, or does not train as labelled, so that no technique is silently
    ignored or silently added.

    Raises:
        ValueError: the spec asks for l1, l2 or max-norm and no layer is regularized; the backbone is a
            LightningModule; for a technique it honours (`honoured_techniques`): the spec asks for ``bn`` and the
            backbone has no BatchNorm layer, or does not ask and it has one; asks for ``dropout=P`` and the
            backbone has no Dropout layer of probability P (or others), or does not ask and it has Dropout with
            p > 0; for a technique it does not honour: the spec asks for it.
        TypeError: a regularized layer has no ``weight`` parameter.
    """
    name = type(backbone).__name__
    if isinstance(backbone, pl.LightningModule):
        raise ValueError(
            f"{name} is a LightningModule: give a plain torch.nn.Module backbone (docs/own-model.md, the backbone "
            "contract); RegularizedClassifier trains it, your own training_step is not run"
        )
    if (spec.l1 or spec.l2 or spec.max_norm is not None) and not regularized:
        raise ValueError(
            f"spec {spec.name!r} asks for l1/l2/max-norm but backbone {name} has no regularized layer: "
            "give it a regularized_layers() method that returns the layers to constrain"
        )
    for layer in regularized:
        if not isinstance(getattr(layer, "weight", None), nn.Parameter):
            raise TypeError(f"regularized layer {layer!r} of backbone {name} has no weight parameter")
    honoured = honoured_techniques(backbone)
    for technique, asked in (("bn", spec.batchnorm), ("dropout", bool(spec.dropout))):
        if asked and technique not in honoured:
            raise ValueError(
                f"spec {spec.name!r} asks for {technique} but backbone {name} does not honour it "
                f"(its honoured_techniques() are {sorted(honoured)})"
            )
    advice = "build the backbone from the spec, or declare honoured_techniques() (docs/own-model.md)"
    if "bn" in honoured:
        has_bn = any(isinstance(m, BATCHNORMS) for m in backbone.modules())
        if spec.batchnorm and not has_bn:
            raise ValueError(f"spec {spec.name!r} asks for bn but backbone {name} has no BatchNorm layer")
        if has_bn and not spec.batchnorm:
            raise ValueError(
                f"spec {spec.name!r} does not ask for bn but backbone {name} has BatchNorm layers: {advice}"
            )
    if "dropout" in honoured:
        rates = sorted({m.p for m in backbone.modules() if isinstance(m, DROPOUTS) and m.p > 0})
        if spec.dropout and rates != [spec.dropout]:
            raise ValueError(
                f"spec {spec.name!r} asks for dropout={spec.dropout} but backbone {name} has Dropout "
                f"layers with p in {rates}: build the backbone from the spec"
            )
        if rates and not spec.dropout:
            raise ValueError(
                f"spec {spec.name!r} does not ask for dropout but backbone {name} has Dropout layers with p in "
                f"{rates}: {advice}"
            )


def check_augment(spec: RegularizationSpec, datamodule: Any) -> None:
    """Training must augment exactly when `spec` asks. The data module augments (the model cannot), and says so with
    an ``augment`` attribute, True when it augments its training batches (as `CIFAR10DataModule` does); one without
    that attribute does not augment.

    Raises:
        ValueError: naming the spec and the data module's ``augment``.
    """
    augments = getattr(datamodule, "augment", None)
    if bool(augments) != spec.augment:
        advice = (
            ": it cannot augment (give it an augment argument and attribute, True when it augments training batches)"
            if augments is None
            else ""
        )
        raise ValueError(
            f"spec {spec.name!r} {'asks' if spec.augment else 'does not ask'} for augment but data module "
            f"{type(datamodule).__name__} has augment={augments!r}{advice}"
        )


def check_number(name: str, value: Any, low: float, inclusive: bool) -> None:
    """`value` must be a finite number above `low` (or equal to it when `inclusive`); names `name` otherwise."""
    bound = f"{'>=' if inclusive else '>'} {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a number {bound}")
    number = float(value)
    if not (math.isfinite(number) and (number >= low if inclusive else number > low)):
        raise ValueError(f"{name}={value!r} must be a finite number {bound}")


def make_adam(params: Any, lr: float, eps: float, fused: bool = True) -> torch.optim.Adam:
    """Adam with the fused kernel if `fused` and the parameters' device supports it, else the default one."""
    params = list(params)
    if fused:
        try:
            return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr, eps=eps)


class InputNormalization(nn.Module):
    """``(x - mean) / std`` of images in 0-255 units, with statistics fitted on the training split.

    The statistics are buffers, so they travel in the model's ``state_dict`` and checkpoints: per pixel (C, H, W)
    for ``"pixel"``, per channel (C, 1, 1) for ``"channel"``, fixed at 0 and 1 for ``"none"`` (any image). Their
    shape comes from the images they were fitted on (`set_statistics`, or a loaded ``state_dict``); images of
    another shape are a ValueError naming both. Until they are fitted, images pass through unstandardized, with a
    warning.
    """

    mean: Tensor  # buffers, declared for the type checker (nn.Module types its attributes as Tensor | Module)
    std: Tensor

    def __init__(self, normalize: Normalization = "none") -> None:
        super().__init__()
        self.normalize = normalize
        fixed = normalize == "none"  # raw pixels: mean 0 and std 1, nothing to fit
        self.register_buffer("mean", torch.tensor(0.0 if fixed else math.nan))  # NaN: not fitted yet
        self.register_buffer("std", torch.tensor(1.0 if fixed else math.nan))
        self.fitted = fixed
        self._warned = False
        self.register_load_state_dict_post_hook(InputNormalization._after_load)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the saved statistics' shape (the images they were fitted on) before copying them in."""
        for name in ("mean", "std"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, Tensor) and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, dtype=self.mean.dtype, device=self.mean.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _after_load(module: InputNormalization, incompatible_keys: Any) -> None:
        module.fitted = bool(torch.isfinite(module.mean).all() and torch.isfinite(module.std).all())

    @torch.no_grad()
    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Use `mean` and `std` (0-255 units), e.g. a `NormalizingData`'s ``mean``/``std``: shaped (C, H, W) as one
        image for ``"pixel"``, (C, 1, 1) for ``"channel"`` and ``"none"``."""
        shape = tuple(mean.shape)
        expected = "(C, H, W)" if self.normalize == "pixel" else "(C, 1, 1)"
        if (
            shape != tuple(std.shape)
            or len(shape) != 3
            or (self.normalize != "pixel" and shape[1:] != (1, 1))
            or min(shape) < 1
        ):
            raise ValueError(
                f"normalize={self.normalize!r} needs mean and std of one shape {expected}, "
                f"got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        self.mean = mean.detach().to(self.mean.device, self.mean.dtype).clone()
        self.std = std.detach().to(self.std.device, self.std.dtype).clone()
        self.fitted = True

    def forward(self, images: Tensor) -> Tensor:
        x = images.to(self.mean.dtype)
        if self.fitted:
            self._check_shape(images)
            return (x - self.mean) / self.std
        if not self._warned:
            warnings.warn(
                f"normalize={self.normalize!r} statistics are not fitted: images pass through "
                "unstandardized. Train with a data module that fits them (lit_cifar.data.NormalizingData, "
                "e.g. CIFAR10DataModule) or call set_input_statistics(mean, std).",
                RuntimeWarning,
                stacklevel=2,
            )
            self._warned = True
        return x

    def _check_shape(self, images: Tensor) -> None:
        """Images must be (B, C, H, W) that the statistics describe; broadcasting one channel to three would
        standardize them with another image's statistics."""
        if self.mean.dim() == 0:  # "none" before any fit: 0 and 1 fit any image
            return
        image = tuple(images.shape[1:])
        fits = len(image) == 3 and (
            image == tuple(self.mean.shape) if self.normalize == "pixel" else image[0] == self.mean.shape[0]
        )
        if not fits:
            raise ValueError(
                f"images of shape {tuple(images.shape)} do not fit the normalize={self.normalize!r} statistics of "
                f"shape {tuple(self.mean.shape)}: the model was fitted on (B, {self.mean.shape[0]}, ...) images"
            )


class RegularizedClassifier(pl.LightningModule):
    """Image classifier trained with the regularization a spec asks for, with the notebook's Keras semantics.

    * Inputs: ``(images, labels)`` batches, images (B, C, H, W) in 0-255 units ((B, 3, 32, 32) uint8 from
      `CIFAR10DataModule`; any channel count and size, uint8 or float, from a data module of yours).
      ``model(images)`` standardizes them with the training split's statistics (taken from a `NormalizingData`
      data module when fitting starts and saved in checkpoints; see `set_input_statistics`) and returns logits.
    * Loss: cross-entropy on logits + `penalty()`; every logged ``*/loss`` is this objective, as Keras reports it,
      and ``*/ce`` the cross-entropy alone (``train/penalty`` is logged on its own).
    * Optimizer: Adam(lr, eps=adam_eps) (fused where it is safe), or the `optimizer` you inject, with Keras's
      legacy time decay: optimizer step ``t`` (from 0) uses ``lr / (1 + lr_decay * t)``.
    * Max-norm: after every optimizer step, each row of every regularized layer's weight (one unit's incoming
      weights; Keras ``MaxNorm(axis=0)`` on its (in, out) kernel) is rescaled to L2 norm ``<= max_norm``;
      ``train/maxnorm_rescaled`` is the fraction of rows rescaled, averaged over the epoch's steps.
    * Logged once per epoch: ``{train,val,test}/{loss,ce,acc}`` and ``train/penalty`` (accumulated on the device,
      no per-step host sync); loss and accuracy of train and val on the progress bar.
    * Predict: `predict_step` returns class probabilities (logits with ``predict_logits=True``) for batches of
      images or of ``(images, anything)``.

    Args:
        spec: a `RegularizationSpec`, its text form (``"pixel+bn+dropout=0.25"``) or its `to_dict()`.
        lr: Adam learning rate at step 0 (finite, > 0).
        lr_decay: Keras ``decay`` (finite, >= 0): the rate at step t is ``lr / (1 + lr_decay * t)``.
        adam_eps: Adam epsilon (Keras's default 1e-7; finite, > 0).
        backbone: the network; ``None`` builds ``NotebookCNN(spec)``. Penalties and max-norm act on the layers its
            ``regularized_layers()`` returns, or, if it has no such method, on every ``nn.Linear`` but the last.
            A spec it cannot honour, or would train under another label, and a LightningModule are a ValueError
            (see `check_backbone`). Its class path and init args are saved in the hyperparameters where they can
            be recovered (`lit_cifar.models.recover_init_args`), so ``load_from_checkpoint(path)`` rebuilds it;
            else pass it again to ``load_from_checkpoint``.
        num_classes: number of classes (logits); must match the data module's classes.
        optimizer: a callable ``params -> Optimizer`` replacing the default Adam (``lr`` and ``adam_eps`` then go
            unused; the ``lr_decay`` schedule still applies), e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``.
        compile: ``torch.compile`` the backbone in `configure_model` (same math, other kernels); checkpoints
            keep the uncompiled parameter names.
        predict_logits: `predict_step` returns logits instead of probabilities.
        backbone_class_path: with `backbone` None, build the backbone as ``build_backbone(class_path,
            init_args, spec, num_classes)``. Saved in the hyperparameters, so ``load_from_checkpoint(path)``
            rebuilds the same network without being handed it.
        backbone_init_args: the keyword arguments of that class (with `backbone_class_path`).
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
        for name, value, low, inclusive in (
            ("lr", lr, 0, False),
            ("lr_decay", lr_decay, 0, True),
            ("adam_eps", adam_eps, 0, False),
            ("num_classes", num_classes, 2, True),
        ):
            check_number(name, value, low, inclusive)
        if not isinstance(num_classes, int):
            raise TypeError(f"num_classes={num_classes!r} must be an integer >= 2")
        spec = self.spec.to_dict()  # saved as plain data: TensorBoard shows each field, checkpoints load safely
        self.save_hyperparameters(ignore=RUNTIME_ARGUMENTS)
        self.optimizer_factory, self.compile_backbone, self.predict_logits = optimizer, compile, predict_logits
        self.input_norm = InputNormalization(self.spec.normalize)
        if isinstance(backbone, pl.LightningModule):
            check_backbone(self.spec, backbone, [])  # refused before anything else looks at it
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
        self.epoch_metrics = self._make_metrics(num_classes)

    def _make_metrics(self, num_classes: int) -> nn.ModuleDict:
        """One metric per logged name, keyed "<stage>/<metric>" ("train" alone would clash with nn.Module.train).
        nan_strategy="disable": a NaN loss must show in the logs, not be dropped from the mean."""
        metrics = nn.ModuleDict({"train/penalty": MeanMetric(nan_strategy="disable")})
        for stage in STAGES:
            metrics[f"{stage}/loss"] = MeanMetric(nan_strategy="disable")
            metrics[f"{stage}/acc"] = MulticlassAccuracy(num_classes, average="micro")
            metrics[f"{stage}/ce"] = MeanMetric(nan_strategy="disable")
        if self.spec.max_norm is not None:
            metrics[MAXNORM_RESCALED] = MeanMetric(nan_strategy="disable")
        return metrics

    # ------------------------------------------------------------------------------------------- the network
    def forward(self, images: Tensor) -> Tensor:
        """Logits of images in 0-255 units (uint8 or float), standardized with the model's statistics."""
        return self.backbone(self.input_norm(images))

    def set_input_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Standardize inputs with `mean` and `std` (0-255 units), as ``CIFAR10DataModule.setup`` fits them."""
        self.input_norm.set_statistics(mean, std)

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
                total = total + self.spec.l1 * kernel(layer).abs().sum()
            if self.spec.l2:
                total = total + self.spec.l2 * kernel(layer).square().sum()
        return total

    # -------------------------------------------------------------------------------------- data and set-up
    def _datamodule(self) -> Optional[pl.LightningDataModule]:
        """The data module of the Trainer this model is attached to, if any."""
        try:
            return attached_datamodule(self.trainer)
        except RuntimeError:  # not attached to a Trainer (e.g. inside load_from_checkpoint)
            return None

    def setup(self, stage: str) -> None:
        classes = getattr(self._datamodule(), "classes", None)
        if classes is not None and len(classes) != self.hparams["num_classes"]:
            raise ValueError(
                f"num_classes={self.hparams['num_classes']} but the data module has {len(classes)} classes"
            )

    def configure_model(self) -> None:
        if self.compile_backbone and not getattr(self, "_compiled", False):
            self.backbone.compile()  # in place: parameter names (and checkpoints) stay those of the plain backbone
            self._compiled = True

    @staticmethod
    def saved_data_state(checkpoint: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The data state (`CIFAR10DataModule.state_dict`, keys `DATA_STATE_KEYS`) a checkpoint holds, whatever the
        data module's class name."""
        for value in checkpoint.values():
            if isinstance(value, dict) and DATA_STATE_KEYS <= value.keys():
                return value
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the random generators' states (`rng_states`), so that resuming from this checkpoint draws the same
        dropout masks and augmentations as the run that wrote it would have."""
        checkpoint[RNG_KEY] = rng_states()
        checkpoint[BACKBONE_KEY] = f"{type(self.backbone).__module__}.{type(self.backbone).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the random generators' states when the checkpoint has them (`on_save_checkpoint`). Give a data
        module of another class than the one saved (e.g. your subclass) whose own state has the same keys the
        checkpoint's data state (Lightning restores it only into a class of the same name). A backbone that does
        not match the checkpoint's weights is refused first (`_check_saved_backbone`)."""
        self._check_saved_backbone(checkpoint)
        if checkpoint.get(RNG_KEY) is not None:
            set_rng_states(checkpoint[RNG_KEY])
        data = self.saved_data_state(checkpoint)
        dm = self._datamodule()
        if data is not None and dm is not None and self._takes_data_state(dm, checkpoint):
            dm.load_state_dict(data)

    def _check_saved_backbone(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, naming what to pass, a checkpoint whose backbone weights are not those of this model's backbone
        (its class path and init args were not recoverable, or another backbone was given), instead of a raw
        state-dict error."""
        saved = {
            name[len("backbone.") :]: tuple(value.shape)
            for name, value in checkpoint.get("state_dict", {}).items()
            if name.startswith("backbone.")
        }
        built = {name: tuple(value.shape) for name, value in self.backbone.state_dict().items()}
        if not saved or saved == built:
            return
        saved_class = checkpoint.get(BACKBONE_KEY) or "a backbone of its own"
        differ = sorted(set(saved) ^ set(built)) or sorted(k for k in saved if saved[k] != built[k])
        raise ValueError(
            f"the checkpoint's backbone ({saved_class}) is not the {type(self.backbone).__name__} built here "
            f"(first difference: {differ[0]!r}): pass the backbone as trained, load_from_checkpoint(path, "
            f"backbone={saved_class.rpartition('.')[2]}(...)), or backbone_class_path={saved_class!r} with its "
            "backbone_init_args"
        )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Union[str, Path],
        map_location: Any = None,
        hparams_file: Optional[Union[str, Path]] = None,
        strict: Optional[bool] = None,
        weights_only: Optional[bool] = True,
        allowed_class_paths: Iterable[str] = (),
        **kwargs: Any,
    ) -> RegularizedClassifier:
        """A model from a checkpoint, read with ``weights_only=True`` (tensors and plain data only: loading runs no
        code). A backbone class path saved in its hyperparameters is imported only when it is lit_cifar's own, in
        `allowed_class_paths` (class paths or module prefixes) or ``$LIT_CIFAR_ALLOWED_BACKBONES``, or you pass it as
        ``backbone_class_path``; else pass ``backbone=``. Other keyword arguments override the hyperparameters.

        Raises:
            ValueError: ``weights_only`` is not True; a class path that is not allowed; a backbone that does not
                match the checkpoint's weights (naming what to pass).
        """
        if weights_only is not True:
            raise ValueError(f"weights_only={weights_only!r}: RegularizedClassifier checkpoints load with True only")
        allowed = frozenset(
            [*allowed_class_paths, *([kwargs["backbone_class_path"]] if kwargs.get("backbone_class_path") else [])]
        )
        token = _LOADING.set(allowed)
        try:
            return super().load_from_checkpoint(
                checkpoint_path, map_location, hparams_file, strict, weights_only=True, **kwargs
            )
        finally:
            _LOADING.reset(token)

    @staticmethod
    def _takes_data_state(dm: pl.LightningDataModule, checkpoint: dict[str, Any]) -> bool:
        """Whether `dm` gets the checkpoint's data state from the model: it keeps its statistics and split as
        `CIFAR10DataModule` does (its own state has those keys), and Lightning does not restore it (the checkpoint
        was saved under another class name)."""
        return (
            isinstance(dm, NormalizingData)
            and DATA_STATE_KEYS <= dm.state_dict().keys()
            and type(dm).__qualname__ not in checkpoint
        )

    def _sync_input_statistics(self) -> None:
        """An unfitted model takes the data module's statistics; a fitted one (trained, or loaded from a
        checkpoint) gives its own to the data module, so its ``mean``/``std`` describe the model. Only a data module
        with the members of `NormalizingData` and fitted statistics is read."""
        dm = self._datamodule()
        if not isinstance(dm, NormalizingData) or dm.mean is None or dm.std is None:
            return
        if dm.normalize != self.spec.normalize:
            raise ValueError(
                f"the data module's normalize={dm.normalize!r} does not match the model's spec "
                f"{self.spec.name!r} (normalize={self.spec.normalize!r}): build it with "
                f"normalize={self.spec.normalize!r} (CIFAR10DataModule.from_spec(spec, ...) does)"
            )
        if not self.input_norm.fitted or self.input_norm.mean.dim() == 0:  # unfitted, or "none" for any image
            self.set_input_statistics(dm.mean, dm.std)
        elif not (torch.equal(dm.mean, self.input_norm.mean.cpu()) and torch.equal(dm.std, self.input_norm.std.cpu())):
            dm.mean, dm.std = self.input_norm.mean.cpu().clone(), self.input_norm.std.cpu().clone()

    def on_fit_start(self) -> None:
        dm = self._datamodule()
        if dm is not None:
            check_augment(self.spec, dm)
        self._sync_input_statistics()

    def on_validation_start(self) -> None:
        self._sync_input_statistics()

    def on_test_start(self) -> None:
        self._sync_input_statistics()

    def on_predict_start(self) -> None:
        self._sync_input_statistics()

    # ------------------------------------------------------------------------------------------------ steps
    def _log_metrics(self, stage: str, batch_size: int, updates: dict[str, tuple[Tensor, ...]]) -> None:
        for name, args in updates.items():
            key = f"{stage}/{name}"
            metric = cast(Metric, self.epoch_metrics[key])
            metric.update(*args)
            self.log(key, metric, on_step=False, on_epoch=True, batch_size=batch_size, prog_bar=key in PROGRESS_BAR)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        ce = F.cross_entropy(logits, labels)
        penalty = self.penalty() if stage == "train" else self._eval_penalty
        loss = ce + penalty
        # One value per image, so the epoch mean is over images even with a short last batch (MeanMetric ignores
        # `weight` under nan_strategy="disable", which we need so that no step syncs with the host).
        n = len(labels)
        updates = {"loss": (loss.detach().expand(n),), "acc": (logits.detach(), labels), "ce": (ce.detach().expand(n),)}
        if stage == "train":
            updates["penalty"] = (penalty.detach(),)
        self._log_metrics(stage, n, updates)
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

    def predict_step(self, batch: Union[Tensor, tuple[Tensor, ...]], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities (logits if ``predict_logits``) of a batch of images, or of ``(images, ...)``."""
        images = batch if isinstance(batch, Tensor) else batch[0]
        logits = self(images)
        return logits if self.predict_logits else logits.softmax(dim=1)

    # -------------------------------------------------------------------------------------------- optimizer
    def _fused_is_safe(self) -> bool:
        """Fused Adam unscales gradients itself, so Lightning cannot clip them under mixed precision."""
        try:
            trainer = self.trainer
        except RuntimeError:
            return True
        return not (str(trainer.precision).endswith("-mixed") and trainer.gradient_clip_val)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(self.parameters())
        else:
            optimizer = make_adam(
                self.parameters(), lr=self.hparams["lr"], eps=self.hparams["adam_eps"], fused=self._fused_is_safe()
            )
        decay = self.hparams["lr_decay"]
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + decay * step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.spec.max_norm is not None:
            rescaled = self.apply_max_norm()
            self._log_metrics("train", 1, {"maxnorm_rescaled": (rescaled,)})

    @torch.no_grad()
    def apply_max_norm(self) -> Tensor:
        """Rescale each row of each regularized weight to L2 norm ``<= max_norm`` (rows under it are untouched;
        Keras also multiplies those by ``norm / (norm + 1e-7)``, a relative change below 1e-7).

        Returns the fraction of rows rescaled, as a tensor on the weights' device (no host sync). The row norms
        are those ``renorm_`` compares with the bound; ``renorm_`` itself does the rescaling, unchanged.
        """
        rescaled, rows = torch.zeros((), device=self.device), 0
        cap = self.spec.max_norm
        if cap is None:  # a spec without max-norm: no row to rescale
            return rescaled
        for layer in self.regularized:
            weight = kernel(layer)
            norms = torch.linalg.vector_norm(weight, ord=2, dim=tuple(range(1, weight.dim())))
            rescaled += (norms > cap).sum()
            rows += len(norms)
            weight.renorm_(p=2, dim=0, maxnorm=cap)
        return rescaled / max(rows, 1)
