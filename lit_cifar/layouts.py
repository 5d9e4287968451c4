"""Where the CIFAR datasets lie on disk, torch-free: their official layouts and files, and the default data
folder (``$LIT_CIFAR_DATA``, else ``./data``), so a sweep plans, fingerprints its data and dry-runs without torch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DATA_ENV = "LIT_CIFAR_DATA"
IMAGE_SHAPE = (3, 32, 32)

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
PY_LAYOUT = "cifar-10-batches-py"  # the Python pickles that torchvision downloads
BIN_LAYOUT = "cifar-10-batches-bin"  # the "binary version": records of 1 label byte + 3072 pixel bytes


@dataclass(frozen=True)
class CifarFormat:
    """How one CIFAR dataset lies on disk: its official layouts, files, label key, classes and download."""

    name: str  # as messages name it, e.g. "CIFAR-10"
    layouts: tuple[str, ...]  # folder names under data_dir, in the order they are looked for
    train_files: tuple[str, ...]
    test_file: str
    num_classes: int
    url: str
    torchvision: str  # the torchvision.datasets class that downloads and checksum-verifies the archive


CIFAR10 = CifarFormat("CIFAR-10", (PY_LAYOUT, BIN_LAYOUT), TRAIN_FILES, TEST_FILE, 10, OFFICIAL_URL, "CIFAR10")
CIFAR100_LAYOUT = "cifar-100-python"  # the official Python version: train, test and meta pickles, fine labels
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100 = CifarFormat("CIFAR-100", (CIFAR100_LAYOUT,), ("train",), "test", 100, CIFAR100_URL, "CIFAR100")


def default_data_dir() -> Path:
    """``$LIT_CIFAR_DATA`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_ENV, "data"))


def find_layout(data_dir: Path, fmt: CifarFormat = CIFAR10) -> Optional[Path]:
    """The folder of the first official layout of `fmt` present in `data_dir` (pickles first), or None."""
    for layout in fmt.layouts:
        if (data_dir / layout).is_dir():
            return data_dir / layout
    return None
