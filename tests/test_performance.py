"""The fast training path gives the plain path's results; fused Adam falls back; the benchmark runs."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ablations import bench
from lit_cifar import CIFAR10DataModule, RegularizedClassifier
from lit_cifar.module import make_adam

SPEC = "pixel+bn+dropout=0.25+maxnorm=3+augment"  # every source of randomness and every hook


def fit_metrics(data_dir: Path, num_workers: int) -> dict[str, float]:
    pl.seed_everything(3, verbose=False)
    dm = CIFAR10DataModule.from_spec(SPEC, data_dir=str(data_dir), val_size=100, batch_size=64, limit_train=256,
                                     num_workers=num_workers, seed=3)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False)
    model = RegularizedClassifier(SPEC)
    trainer.fit(model, dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    tested = trainer.test(model, dm, verbose=False)[0]
    return {**metrics, **tested, "weight_sum": float(model.backbone.hidden.weight.detach().sum())}


def test_fast_path_trains_exactly_like_the_plain_dataloader_path(cifar_dir):
    fast, plain = fit_metrics(cifar_dir, num_workers=0), fit_metrics(cifar_dir, num_workers=1)
    assert set(fast) >= {"train/loss", "val/acc", "test/acc", "weight_sum"}
    assert fast == plain


def test_adam_is_fused_where_supported_and_falls_back_cleanly(monkeypatch):
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert make_adam(params, lr=1e-3, eps=1e-7).defaults["fused"] is True  # CPU supports it on torch >= 2.4
    original = torch.optim.Adam

    def no_fused(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    optimizer = make_adam(params, lr=1e-3, eps=1e-7)
    assert not optimizer.defaults.get("fused") and optimizer.defaults["eps"] == 1e-7


@pytest.mark.slow
def test_bench_quick_runs_every_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--data-dir", str(tmp_path / "no-data"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["data"] == "synthetic"
    assert set(report["images_per_s"]) == {"lightning", "pytorch_loop", "pytorch_loop_channels_last",
                                           "textbook_pipeline"}
    assert all(v > 0 for v in report["images_per_s"].values())
    assert report["fixed_cost"]["to_first_step_s"] > 0 and report["peak_rss_gb"] > 0.1
    assert set(report["sweep_trials_per_hour"]) == {"parallel=1", "parallel=2"}
    assert "| 1. Trainer.fit vs hand-written loop |" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_trial_runs_and_is_recorded(cifar_dir, tmp_path):
    """`--compile` (torch.compile of the network) trains and tests like any trial."""
    from ablations.run import main

    args = ["--data-dir", str(cifar_dir), "--logdir", str(tmp_path), "--only", "pixel", "--seeds", "0", "--epochs",
            "1", "--val-size", "100", "--batch-size", "64", "--compile"]
    assert main(args) == 0
    result = json.loads((tmp_path / "notebook/pixel/seed=0/result.json").read_text())
    assert result["metrics"]["test/acc"] > 0.1 and result["test_images"] == 200
