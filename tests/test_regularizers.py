"""Each regularizer trains to the committed numbers in tests/regularizer_pins.json, on any x86 CPU.

A short fp32 trial per regularizer (`pinned_trial`: a narrow `NotebookCNN`, 256 synthetic images, 2 epochs) is
compared with the pins within `RTOL` (relative) and `FRACTION_ATOL` (absolute, for accuracies and the max-norm
rescaled fraction). Other kernels sum in other orders: with 1 or 2 threads and oneDNN off the numbers moved by at
most 2.4e-4 relative and no image flipped; a changed regularizer (penalty scaled, dropout moved, BatchNorm momentum,
max-norm on the other axis) moves them by percents. Regenerate the pins,
after a change meant to alter the numbers, with ``PYTHONPATH=. python -m tests.test_regularizers``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_cifar import CIFAR10DataModule, NotebookCNN, RegularizedClassifier
from tests.helpers import quiet_trainer
from tests.synthetic import write_synthetic_cifar

PINS = Path(__file__).with_name("regularizer_pins.json")
SPECS = (
    "baseline",
    "pixel",
    "channel",
    "bn",
    "l1=0.001",
    "l2=0.01",
    "maxnorm=1.5",
    "dropout=0.5",
    "augment",
    "pixel+bn+l2=0.001+maxnorm=1.5+dropout=0.25+augment",
)
RTOL = 1e-3  # relative, for losses, penalties, weight norms and running statistics
FRACTION_ATOL = 0.021  # accuracies and the rescaled fraction: two of 100 images (or rows) may flip between CPUs


def pinned_trial(data_dir: Path, spec: str) -> dict[str, float]:
    """Two epochs of 256 synthetic images with a narrow NotebookCNN (8 channels, 64 hidden units), in fp32."""
    pl.seed_everything(7, verbose=False)
    dm = CIFAR10DataModule.from_spec(
        spec, data_dir=str(data_dir), val_size=100, batch_size=64, limit_train=256, download=False, seed=7
    )
    model = RegularizedClassifier(spec, lr=3e-3, backbone=NotebookCNN(spec, width=8, hidden_units=64))
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, datamodule=dm)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    state = model.backbone.state_dict()
    hidden = model.backbone.hidden.weight.detach().double()
    metrics["hidden_row_norm_max"] = float(hidden.norm(dim=1).max())
    metrics["param_abs_sum"] = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
    metrics["buffer_sum"] = float(sum(v.double().sum() for k, v in state.items() if "running" in k))
    return dict(sorted(metrics.items()))


@pytest.mark.parametrize("spec", SPECS)
def test_each_regularizer_trains_to_its_pinned_numbers(cifar_dir: Path, spec: str) -> None:
    pinned = json.loads(PINS.read_text())["trials"][spec]
    metrics = pinned_trial(cifar_dir, spec)
    assert metrics.keys() == pinned.keys()
    for key, expected in pinned.items():
        fraction = key.endswith(("/acc", "/maxnorm_rescaled"))
        tolerance = {"abs": FRACTION_ATOL} if fraction else {"rel": RTOL, "abs": 1e-9}
        assert metrics[key] == pytest.approx(expected, **tolerance), f"{spec}: {key}"


def write_pins() -> None:
    """Run every pinned trial on the synthetic data of `tests/conftest.py`'s `cifar_dir` and write the pins."""
    with tempfile.TemporaryDirectory() as folder:
        data_dir = write_synthetic_cifar(Path(folder), layouts=("bin",))
        trials = {spec: pinned_trial(data_dir, spec) for spec in SPECS}
    made_by = f"PYTHONPATH=. python -m tests.test_regularizers (torch {torch.__version__})"
    PINS.write_text(json.dumps({"made_by": made_by, "trials": trials}, indent=1) + "\n")


if __name__ == "__main__":
    write_pins()
