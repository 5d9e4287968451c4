"""What the measuring scripts share (``benchmarks/bench.py``, ``benchmarks/gpucheck.py``): the machine's
description, synthetic data of CIFAR-10's layout, and the FLOPs of one training step.

Importing this module imports neither torch nor Lightning; the functions that need them import them when called.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from lit_cifar.runtime import allocator, cpu_model

SPEC = "pixel"  # the notebook's standard input pipeline, no extra regularizer
BATCH_SIZE = 128


def bf16_units() -> bool:
    """Whether the CPU has bf16 matrix instructions (AVX512_BF16 or AMX-BF16), from ``/proc/cpuinfo``."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine() -> dict[str, Any]:
    """The CPU, its cores and bf16 support, torch's threads, the allocator, the GPU and the library versions."""
    import lightning.pytorch as pl
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "bf16_units": bf16_units(),
        "torch_threads": torch.get_num_threads(),
        "allocator": allocator(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
    }


def synthetic_data_dir(root: Path, n_train: int, n_test: int) -> Path:
    """Random images in the binary layout under `root`, `n_train` split over the five training files; returns
    `root` (a ``data_dir``)."""
    import torch

    from lit_cifar.data import RECORD_BYTES
    from lit_cifar.layouts import BIN_LAYOUT, TEST_FILE, TRAIN_FILES

    folder = root / BIN_LAYOUT
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for name, n in [*((f, n_train // 5) for f in TRAIN_FILES), (TEST_FILE, n_test)]:
        records = torch.randint(0, 256, (n, RECORD_BYTES), dtype=torch.uint8, generator=generator)
        records[:, 0] %= 10
        (folder / f"{name}.bin").write_bytes(records.numpy().tobytes())
    return root


def flops_per_image(spec: str = SPEC) -> float:
    """FLOPs of one training step (forward and backward) per image, as Lightning's ``measure_flops`` (torch's
    ``FlopCounterMode``) counts them: matrix multiplies and convolutions, 2 per multiply-add."""
    import torch
    import torch.nn.functional as F
    from lightning.fabric.utilities.throughput import measure_flops

    from lit_cifar.layouts import IMAGE_SHAPE
    from lit_cifar.module import RegularizedClassifier

    model = RegularizedClassifier(spec)
    model.set_input_statistics(torch.zeros(IMAGE_SHAPE), torch.ones(IMAGE_SHAPE))
    images = torch.randint(0, 256, (BATCH_SIZE, *IMAGE_SHAPE), dtype=torch.uint8)
    labels = torch.zeros(BATCH_SIZE, dtype=torch.long)
    return measure_flops(model, lambda: model(images), lambda logits: F.cross_entropy(logits, labels)) / BATCH_SIZE
