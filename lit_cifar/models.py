"""`NotebookCNN`: the notebook's network, built from a `RegularizationSpec`, with Keras's default initialization;
backbones by class path and the contract a backbone keeps (`check_backbone`), all without importing Lightning."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lit_cifar.spec import RegularizationSpec


# The layer types that implement the spec's `bn` and `dropout` in any backbone.
BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)
DROPOUTS = (nn.modules.dropout._DropoutNd,)
LAYER_TECHNIQUES = ("bn", "dropout")  # the spec's techniques a backbone implements with layers of its own


def _is_lightning_module(cls: type) -> bool:
    """Whether `cls` is a LightningModule; without importing Lightning, which such a class has imported already."""
    pl = sys.modules.get("lightning.pytorch")
    return pl is not None and issubclass(cls, pl.LightningModule)


class NotebookCNN(nn.Module):
    """The notebook's CNN: ``Conv(3x3, 32, no padding)-ReLU-[BN]`` x3 -> Flatten (26*26*32) -> Linear(21,632, 1024)
    -> ReLU -> [Dropout(p)] -> Linear(1024, 10).

    BatchNorm follows each convolution's ReLU (the notebook's BN cell also dropped the first ReLU: we change one
    factor at a time). Penalties and max-norm act on `hidden`, as the notebook's. Keras's initialization.
    """

    def __init__(
        self,
        spec: RegularizationSpec | str = RegularizationSpec(),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 32,
        hidden_units: int = 1024,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        spec = RegularizationSpec.coerce(spec)
        self.in_channels, self.width, self.hidden_units, self.image_size = in_channels, width, hidden_units, image_size
        layers: list[nn.Module] = []
        for channels in (in_channels, width, width):
            layers += [nn.Conv2d(channels, width, kernel_size=3), nn.ReLU(inplace=True)]
            if spec.batchnorm:  # Keras's momentum 0.99 keeps 99% of the old average: PyTorch's weighs the new 1%
                layers.append(nn.BatchNorm2d(width, eps=1e-3, momentum=0.01))
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = image_size - 3 * 2
        self.hidden = nn.Linear(width * side * side, hidden_units)
        self.classifier = nn.Sequential(
            nn.ReLU(inplace=True),
            *([nn.Dropout(spec.dropout)] if spec.dropout else []),
            nn.Linear(hidden_units, num_classes),
        )
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight)  # fans as Keras: in/out channels x kernel area
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def regularized_layers(self) -> list[nn.Module]:
        """The layers whose kernels penalties and max-norm act on: the hidden dense layer."""
        return [self.hidden]

    def forward(self, x: Tensor) -> Tensor:
        side = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, side, side):
            raise ValueError(
                f"NotebookCNN takes (B, {self.in_channels}, {side}, {side}) images (its dense layer is sized for "
                f"them), got {tuple(x.shape)}: build it with in_channels and image_size of your images"
            )
        return self.classifier(self.hidden(self.features(x)))


def resolve_class(class_path: str, what: str = "class") -> type:
    """The class of a dotted path (``package.module.Class``); ValueError saying why it does not resolve."""
    if not isinstance(class_path, str) or "." not in class_path.strip("."):
        raise ValueError(f"{what} class_path {class_path!r} must be a dotted path, e.g. mypkg.nets.ResNet18")
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{what} class_path {class_path!r}: cannot import {module_name!r} ({error})") from None
    found = getattr(module, name, None)
    if not isinstance(found, type):
        raise ValueError(f"{what} class_path {class_path!r}: module {module_name!r} has no class {name!r}")
    return found


def build_backbone(
    class_path: str,
    init_args: Optional[dict] = None,
    spec: RegularizationSpec | str = "baseline",
    num_classes: int = 10,
) -> nn.Module:
    """``class_path(**init_args)``, given `spec` and `num_classes` too where it takes them (as `NotebookCNN`);
    ValueError for a class path that does not resolve to a plain ``nn.Module``, or init args it refuses."""
    cls = resolve_class(class_path, "model")
    if not issubclass(cls, nn.Module):
        raise ValueError(f"model class_path {class_path!r} is not a torch.nn.Module")
    if _is_lightning_module(cls):
        raise ValueError(
            f"model {class_path} is a LightningModule: give a plain torch.nn.Module backbone (docs/own-model.md, "
            "the backbone contract); training your own LightningModule is not supported"
        )
    parameters = inspect.signature(cls).parameters
    defaults = {"spec": RegularizationSpec.coerce(spec), "num_classes": num_classes}
    kwargs = {**{name: value for name, value in defaults.items() if name in parameters}, **(init_args or {})}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        allowed = ", ".join(n for n in parameters if n not in ("spec", "num_classes"))
        raise ValueError(
            f"model {class_path} init_args {init_args or {}}: {type(error).__name__}: {error}; it takes: {allowed}"
        ) from None


ALLOWED_ENV = "LIT_CIFAR_ALLOWED_BACKBONES"  # comma-separated class paths or module prefixes


def check_allowed(class_path: str, allowed: Iterable[str] = ()) -> None:
    """ValueError, saying how to allow it, for a checkpoint's backbone class path (importing runs code) unless it is
    lit_cifar's or `allowed` or ``$LIT_CIFAR_ALLOWED_BACKBONES`` names it or a module above it."""
    entries = [e.strip() for e in [*allowed, *os.environ.get(ALLOWED_ENV, "").split(","), "lit_cifar"]]
    if any(e and (class_path == e or class_path.startswith(e + ".")) for e in entries):
        return
    raise ValueError(
        f"the checkpoint's backbone class path {class_path!r} is not allowed: importing it runs its module's code. "
        f"Allow it with allowed_class_paths=[{class_path!r}] or ${ALLOWED_ENV}={class_path} if you trust it"
    )


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def recover_init_args(
    backbone: nn.Module, spec: RegularizationSpec | str = "baseline", num_classes: int = 10
) -> Optional[tuple[str, dict[str, Any]]]:
    """``(class_path, init_args)`` that `build_backbone` rebuilds `backbone` from, or None: each constructor argument
    but ``spec`` and ``num_classes`` is the instance's attribute of that name if plain data, else its default, and
    the network they build (on the meta device: no memory) must have the instance's tensor names and shapes."""
    cls = type(backbone)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    class_path = f"{cls.__module__}.{cls.__qualname__}"
    init_args: dict[str, Any] = {}
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for parameter in inspect.signature(cls).parameters.values():
        if parameter.name in ("spec", "num_classes") or parameter.kind in variadic:
            continue
        value = getattr(backbone, parameter.name, inspect.Parameter.empty)
        if not isinstance(value, nn.Module) and value is not inspect.Parameter.empty and _plain(value):
            init_args[parameter.name] = list(value) if isinstance(value, tuple) else value
        elif parameter.default is inspect.Parameter.empty:
            return None
    try:
        with torch.device("meta"):
            rebuilt = build_backbone(class_path, init_args, spec, num_classes)
    except Exception:  # noqa: BLE001 - whatever the constructor raises, the instance cannot be rebuilt from these
        return None
    same = state_shapes(rebuilt.state_dict()) == state_shapes(backbone.state_dict())
    return (class_path, init_args) if same else None


def state_shapes(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """The shapes of a state dict's tensors named `prefix`..., by the rest of their name: what must agree for one
    network's weights to load into another."""
    return {name[len(prefix) :]: tuple(value.shape) for name, value in state.items() if name.startswith(prefix)}


def default_regularized_layers(backbone: nn.Module) -> list[nn.Module]:
    """The layers penalties and max-norm act on: ``backbone.regularized_layers()``, else every Linear but the last."""
    named = getattr(backbone, "regularized_layers", None)
    if callable(named):
        return list(named())
    linears: list[nn.Module] = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
    return linears[:-1]


def check_backbone(spec: RegularizationSpec, backbone: nn.Module, regularized: list[nn.Module]) -> None:
    """ValueError (TypeError for a regularized layer without a weight) for a backbone that cannot honour `spec`: a
    LightningModule, no regularized layer for l1/l2/max-norm, BatchNorm or Dropout layers missing, extra or of
    another p, except for techniques its ``honoured_techniques()`` leaves out (a fixed part of it)."""
    name = type(backbone).__name__
    if _is_lightning_module(type(backbone)):
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
    declared = getattr(backbone, "honoured_techniques", None)  # techniques whose layers it builds from the spec
    honoured = frozenset(declared() if callable(declared) else LAYER_TECHNIQUES)
    if not honoured <= set(LAYER_TECHNIQUES):
        raise ValueError(
            f"backbone {name}.honoured_techniques() names {sorted(honoured - set(LAYER_TECHNIQUES))}: it may name "
            f"only {', '.join(LAYER_TECHNIQUES)}"
        )
    rates = sorted({m.p for m in backbone.modules() if isinstance(m, DROPOUTS) and m.p > 0})
    has_bn = any(isinstance(m, BATCHNORMS) for m in backbone.modules())
    layers = {  # technique: (what the spec asks, what the backbone has, the spec's word, the backbone's layers)
        "bn": (spec.batchnorm, has_bn, "bn", "BatchNorm layers" if has_bn else "no BatchNorm layer"),
        "dropout": (
            [spec.dropout] if spec.dropout else [],
            rates,
            f"dropout={spec.dropout}" if spec.dropout else "dropout",
            f"Dropout layers with p in {rates}" if rates else "no Dropout layer",
        ),
    }
    for technique, (asked, present, word, has) in layers.items():
        if asked and technique not in honoured:
            raise ValueError(
                f"spec {spec.name!r} asks for {technique} but backbone {name} does not honour it "
                f"(its honoured_techniques() are {sorted(honoured)})"
            )
        if technique in honoured and asked != present:
            raise ValueError(
                f"spec {spec.name!r} {'asks' if asked else 'does not ask'} for {word} but backbone {name} has "
                f"{has}: build the backbone from the spec, or declare honoured_techniques() (docs/own-model.md)"
            )
