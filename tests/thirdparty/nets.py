"""A third-party package as a user would write it: a small ResNet-style backbone and data modules, named by class
path in test suites (``tests.thirdparty.nets.TinyResNet``). Nothing in lit_cifar or ablations knows them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_cifar import CIFAR10DataModule


class Block(nn.Module):
    def __init__(self, width: int, batchnorm: bool) -> None:
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(width)) if batchnorm else nn.Identity
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), norm(), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), norm())

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


class TinyResNet(nn.Module):
    """Stem, `blocks` residual blocks, global pooling, a hidden dense layer (the regularized one), logits.
    BatchNorm follows the spec's ``bn`` unless ``norm=False``; Dropout the spec's ``dropout``."""

    def __init__(self, spec, num_classes: int = 10, width: int = 8, blocks: int = 1, hidden: int = 16,
                 norm: bool = True) -> None:
        super().__init__()
        bn = spec.batchnorm and norm
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, stride=2), nn.ReLU())
        self.blocks = nn.Sequential(*(Block(width, bn) for _ in range(blocks)))
        self.hidden = nn.Linear(width, hidden)
        self.head = nn.Sequential(nn.ReLU(), *([nn.Dropout(spec.dropout)] if spec.dropout else []),
                                  nn.Linear(hidden, num_classes))

    def regularized_layers(self) -> list[nn.Module]:
        return [self.hidden]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hidden(self.blocks(self.stem(x)).mean((2, 3))))


class FloatBatches(CIFAR10DataModule):
    """Breaks the batch contract: serves float images scaled to [0, 1]."""

    def train_dataloader(self):
        return [(images.float() / 255, labels) for images, labels in super().train_dataloader()]
