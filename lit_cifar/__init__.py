"""lit_cifar: CIFAR-10 regularization studies with PyTorch Lightning.

Public API (other projects import these names)::

    from lit_cifar import CIFAR10DataModule, RegularizationSpec, RegularizedClassifier, NotebookCNN
    from lit_cifar import CIFAR100DataModule  # the same, for CIFAR-100's official Python layout (100 classes)
    from lit_cifar import LitCifarCLI  # Lightning's CLI with the data linked to the model's spec
    from lit_cifar import tune_allocator  # call once per CPU training process: faster steps, same numbers

The names are imported on first use, so ``lit_cifar.spec`` (pure Python) can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "LitCifarCLI",
    "NotebookCNN",
    "RegularizationSpec",
    "RegularizedClassifier",
    "tune_allocator",
]
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

if TYPE_CHECKING:
    from lit_cifar.cli import LitCifarCLI
    from lit_cifar.data import CIFAR10DataModule, CIFAR100DataModule
    from lit_cifar.models import NotebookCNN
    from lit_cifar.module import RegularizedClassifier
    from lit_cifar.runtime import tune_allocator
    from lit_cifar.spec import RegularizationSpec


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lit_cifar' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
