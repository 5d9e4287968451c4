"""Small synthetic CIFAR-10 copies in both official layouts, written by the real formats' rules.

Images are class-dependent (a per-class colour plus noise), so a model can learn them in one epoch.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from lit_cifar.layouts import BIN_LAYOUT, CLASSES, PY_LAYOUT, TEST_FILE, TRAIN_FILES


def synthetic_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 images (n, 3072), rows R then G then B planes, and labels cycling 0-9 in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.uint8)
    colours = np.random.default_rng(1234).integers(30, 226, size=(len(CLASSES), 3, 1))
    noise = rng.normal(0, 40, size=(n, 3, 1024))
    images = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
    return images.reshape(n, 3072), labels


def write_python_layout(root: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder = root / PY_LAYOUT
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in parts.items():
        with open(folder / name, "wb") as f:
            pickle.dump(
                {"batch_label": name, "labels": labels.tolist(), "data": images, "filenames": ["x.png"] * len(labels)},
                f,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES)}, f)
    return folder


def write_binary_layout(root: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder = root / BIN_LAYOUT
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in parts.items():
        records = np.concatenate([labels[:, None], images], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


def synthetic_parts(per_train_file: int = 120, n_test: int = 200, seed: int = 0) -> dict:
    """Five training files of `per_train_file` records (sizes differ by file) and one test file."""
    parts = {name: synthetic_arrays(per_train_file + 3 * i, seed + i) for i, name in enumerate(TRAIN_FILES)}
    parts[TEST_FILE] = synthetic_arrays(n_test, seed + 100)
    return parts


def write_synthetic_cifar(root: Path, layouts: tuple[str, ...] = ("py", "bin"), **kwargs) -> Path:
    """Write the same synthetic images in the asked layouts under `root`; returns `root`."""
    parts = synthetic_parts(**kwargs)
    if "py" in layouts:
        write_python_layout(root, parts)
    if "bin" in layouts:
        write_binary_layout(root, parts)
    return root


def write_synthetic_cifar100(root: Path, n_train: int = 700, n_test: int = 200, seed: int = 0) -> Path:
    """A synthetic CIFAR-100 in its official Python layout: ``cifar-100-python/{train,test,meta}`` with 100 fine
    classes (and 20 coarse ones); class-dependent colours as in `synthetic_arrays`. Returns `root`."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    colours = np.random.default_rng(4321).integers(0, 256, size=(100, 3, 1))
    for name, n, part_seed in (("train", n_train, seed), ("test", n_test, seed + 100)):
        rng = np.random.default_rng(part_seed)
        labels = rng.permutation(np.arange(n) % 100)
        images = np.clip(colours[labels] + rng.normal(0, 20, size=(n, 3, 1024)), 0, 255).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "filenames": ["x.png"] * n,
                    "batch_label": name,
                    "fine_labels": labels.tolist(),
                    "coarse_labels": (labels // 5).tolist(),
                    "data": images.reshape(n, 3072),
                },
                f,
            )
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            },
            f,
        )
    return root
