"""lit_cifar: CIFAR-10 regularization studies with PyTorch Lightning. The public names (`_HOMES`) are imported on
first use, so the torch-free modules (``lit_cifar.spec``, ``lit_cifar.layouts``) load without torch."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_HOMES = {
    "CIFAR10DataModule": "lit_cifar.data",
    "CIFAR100DataModule": "lit_cifar.data",
    "NotebookCNN": "lit_cifar.models",
    "LitCifarCLI": "lit_cifar.cli",
    "RegularizedClassifier": "lit_cifar.module",
    "RegularizationSpec": "lit_cifar.spec",
    "tune_allocator": "lit_cifar.runtime",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lit_cifar' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
