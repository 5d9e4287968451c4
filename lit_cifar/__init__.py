"""lit_cifar: CIFAR-10 regularization studies with PyTorch Lightning.

Public API (other projects import these names)::

    from lit_cifar import CIFAR10DataModule, RegularizationSpec, RegularizedClassifier, SeedCNN
"""

from lit_cifar.data import CIFAR10DataModule
from lit_cifar.models import SeedCNN
from lit_cifar.module import RegularizedClassifier
from lit_cifar.spec import RegularizationSpec

__all__ = ["CIFAR10DataModule", "RegularizationSpec", "RegularizedClassifier", "SeedCNN"]
__version__ = "0.1.0"
