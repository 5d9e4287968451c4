"""A third-party lab's code, as it would use the library from the installed wheel (public API only, and nothing
from this repository's tests): 1x28x28 grayscale images, a residual backbone, and what the library must refuse.
Self-contained, so the wheel test copies it outside the repository as a module of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lit_cifar import RegularizationSpec
from lit_cifar.data import evaluation_sampler, fit_normalization

SHAPE = (1, 28, 28)


class GrayDigits(pl.LightningDataModule):
    """Ten classes of 1x28x28 uint8 images (a class's grey level plus noise), in memory: `train`, 64 validation and
    `test` images. It fits `mean`/`std` on its training split, counts each evaluation image once under DDP
    (`evaluation_sampler`) and cannot augment (no ``augment``)."""

    def __init__(
        self, normalize: str = "pixel", batch_size: int = 32, train: int = 192, test: int = 101, seed: int = 0
    ) -> None:
        super().__init__()
        self.normalize, self.batch_size, self.num_classes = normalize, batch_size, 10
        generator = torch.Generator().manual_seed(seed)
        n = train + 64 + test
        labels = torch.randperm(n, generator=generator) % 10
        levels = torch.linspace(20, 230, 10)[labels].view(n, 1, 1, 1)
        noise = 40 * torch.randn(n, *SHAPE, generator=generator)
        images = (levels + noise).clamp(0, 255).to(torch.uint8)
        self.train = (images[:train], labels[:train])
        self.val = (images[train : train + 64], labels[train : train + 64])
        self.test = (images[train + 64 :], labels[train + 64 :])
        self.mean: Optional[Tensor] = None
        self.std: Optional[Tensor] = None

    def setup(self, stage: str) -> None:
        if self.mean is None:
            self.mean, self.std = fit_normalization(self.train[0], self.normalize)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.train), self.batch_size, shuffle=True)

    def _evaluation(self, split: tuple[Tensor, Tensor]) -> DataLoader:
        sampler = evaluation_sampler(self.trainer, len(split[1]))
        return DataLoader(TensorDataset(*split), self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation(self.val)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation(self.test)


class NoStatistics(GrayDigits):
    """Forgets the statistics a standardizing spec needs."""

    def setup(self, stage: str) -> None:
        pass


class ResidualNet(nn.Module):
    """Stem, `depth` residual blocks, global pooling, a hidden dense layer (the regularized one) and logits;
    BatchNorm and Dropout as the spec asks."""

    def __init__(
        self, spec: RegularizationSpec, num_classes: int = 10, in_channels: int = 1, width: int = 8, depth: int = 1
    ) -> None:
        super().__init__()
        self.in_channels, self.width = in_channels, width
        norm = (lambda: nn.BatchNorm2d(width)) if spec.batchnorm else nn.Identity

        def block() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1), norm(), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), norm()
            )

        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, stride=2), nn.ReLU())
        self.body = block()
        self.more = nn.ModuleList(block() for _ in range(depth - 1))  # empty at depth 1: the same weights as before
        self.hidden = nn.Linear(width, 16)
        self.head = nn.Sequential(
            nn.ReLU(), *([nn.Dropout(spec.dropout)] if spec.dropout else []), nn.Linear(16, num_classes)
        )

    def regularized_layers(self) -> list[nn.Module]:
        return [self.hidden]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        for block in self.more:
            x = torch.relu(x + block(x))
        return self.head(self.hidden(x.mean((2, 3))))


class AlwaysNormalized(nn.Module):
    """BatchNorm whatever the spec: a mislabel of every spec without ``bn``, unless it says so."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.hidden, self.out = nn.Linear(4, 8), nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(self.features(x).flatten(1))))


class DeclaredNormalized(AlwaysNormalized):
    """The same network, declaring that its BatchNorm is fixed: it honours the spec's dropout only."""

    def honoured_techniques(self) -> set[str]:
        return {"dropout"}


class OwnModule(pl.LightningModule):
    """A LightningModule of one's own, with its own training step and optimizer: not a backbone."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CountTestImages(pl.Callback):
    """Counts the test images every rank sees, summed over ranks, and writes the total to `path`."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = Path(path), 0

    def on_test_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.count += len(batch[1])

    def on_test_end(self, trainer: pl.Trainer, module: Any) -> None:
        total = trainer.strategy.reduce(torch.tensor(float(self.count)), reduce_op="sum")
        if trainer.is_global_zero:
            self.path.write_text(str(int(total)))
