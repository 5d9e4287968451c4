from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import write_synthetic_cifar


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with a synthetic CIFAR-10 in the binary layout (630 train, 200 test images)."""
    return write_synthetic_cifar(tmp_path_factory.mktemp("cifar"), layouts=("bin",))


@pytest.fixture(scope="session")
def cifar_py_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same synthetic images as `cifar_dir`, in torchvision's pickle layout."""
    return write_synthetic_cifar(tmp_path_factory.mktemp("cifar_py"), layouts=("py",))
