"""A third-party package as a user would write it: a small ResNet-style backbone and data modules, named by class
path in test suites (``tests.thirdparty.nets.TinyResNet``). Nothing in lit_cifar or ablations knows them."""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lit_cifar import CIFAR10DataModule


class Block(nn.Module):
    def __init__(self, width: int, batchnorm: bool) -> None:
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(width)) if batchnorm else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), norm(), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), norm()
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


class TinyResNet(nn.Module):
    """Stem, `blocks` residual blocks, global pooling, a hidden dense layer (the regularized one), logits.
    BatchNorm follows the spec's ``bn`` unless ``norm=False``; Dropout the spec's ``dropout``."""

    def __init__(
        self, spec, num_classes: int = 10, width: int = 8, blocks: int = 1, hidden: int = 16, norm: bool = True
    ) -> None:
        super().__init__()
        bn = spec.batchnorm and norm
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, stride=2), nn.ReLU())
        self.blocks = nn.Sequential(*(Block(width, bn) for _ in range(blocks)))
        self.hidden = nn.Linear(width, hidden)
        self.head = nn.Sequential(
            nn.ReLU(), *([nn.Dropout(spec.dropout)] if spec.dropout else []), nn.Linear(hidden, num_classes)
        )

    def regularized_layers(self) -> list[nn.Module]:
        return [self.hidden]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hidden(self.blocks(self.stem(x)).mean((2, 3))))


class FloatLabels(CIFAR10DataModule):
    """Breaks the batch contract: serves float labels."""

    def train_dataloader(self):
        return [(images, labels.float()) for images, labels in super().train_dataloader()]


class StatisticsOnly(pl.LightningDataModule):
    """A data module of one's own, no `CIFAR10DataModule`: random uint8 images and labels in memory, and only what
    `RegularizedClassifier` reads (`lit_cifar.data.NormalizingData`): `normalize`, and `mean`/`std` fitted on the
    training images in `setup`."""

    def __init__(self, normalize: str = "pixel", images: int = 64, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, 10, (images,), generator=generator)
        self.normalize, self.batch_size = normalize, batch_size
        self.mean: Optional[Tensor] = None
        self.std: Optional[Tensor] = None

    def setup(self, stage: str) -> None:
        if self.mean is None:
            x = self.images.double()
            dims = (0,) if self.normalize == "pixel" else (0, 2, 3)
            mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True, correction=0)
            if self.normalize == "none":
                mean, std = torch.zeros_like(mean), torch.ones_like(std)
            self.mean, self.std = mean.squeeze(0).float(), std.squeeze(0).float()

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.images, self.labels), self.batch_size)

    val_dataloader = test_dataloader = train_dataloader
