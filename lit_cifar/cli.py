"""`LitCifarCLI`: Lightning's CLI for one training run, with the data module linked to ``--model.spec``.

    python -m lit_cifar fit --model.spec pixel+bn --data.data_dir DIR --trainer.max_epochs 5
    python -m lit_cifar test --data.data_dir DIR --ckpt_path PATH
    python -m lit_cifar predict --data.data_dir DIR --ckpt_path PATH     # writes predictions.csv

Runs log to TensorBoard under ``logs/lit_cifar/version_N/`` (config, checkpoints, events, predictions).
"""

from __future__ import annotations

import csv
import inspect
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from jsonargparse import Namespace, lazy_instance
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lit_cifar.data import CIFAR10DataModule, attached_datamodule
from lit_cifar.models import check_allowed
from lit_cifar.module import RegularizedClassifier
from lit_cifar.runtime import tune_allocator
from lit_cifar.spec import RegularizationSpec

EVALUATIONS = ("validate", "test", "predict")  # subcommands that need a trained model: --ckpt_path


def as_spec(value: Any) -> RegularizationSpec:
    """The spec jsonargparse hands a link: text, a spec, or a checkpoint's dict as a Namespace."""
    if isinstance(value, Namespace):
        value = value.as_dict()
        value = value.get("init_args", value)
    return RegularizationSpec.coerce(value)


def exit_with_error(message: str) -> None:
    """Exit with status 2 and one line on stderr, as argparse does for bad arguments."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_checkpoint(path: Optional[str]) -> None:
    """Exit 2 with one line unless `path` (if given) holds a Lightning checkpoint whose backbone may be imported
    (memory-mapped: the check reads little of a large file)."""
    if not path:
        return
    if not Path(path).is_file():
        exit_with_error(f"--ckpt_path {path}: no such checkpoint file")
    advice = "give a .ckpt file written by Lightning, e.g. logs/lit_cifar/version_0/checkpoints/*.ckpt"
    if not zipfile.is_zipfile(path):
        exit_with_error(f"--ckpt_path {path} is not a checkpoint (not a file torch.save writes): {advice}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        exit_with_error(f"--ckpt_path {path} is not a checkpoint torch can read ({reason[:200]}): {advice}")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        exit_with_error(f"--ckpt_path {path} is not a Lightning checkpoint (no state_dict in it)")
    class_path = (checkpoint.get("hyper_parameters") or {}).get("backbone_class_path")
    if class_path:  # Lightning's CLI would build the model from it: importing runs the module's code
        try:
            check_allowed(class_path)
        except ValueError as error:
            exit_with_error(f"--ckpt_path {path}: {error}")


class PredictionWriter(pl.Callback):
    """Writes ``trainer.predict``'s outputs to ``predictions.csv`` (``predictions-rank<r>.csv`` per DDP rank) in the
    run's folder: per image its ``index`` (the batch's second element), ``predicted`` class and output per class."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []  # index, best class number, outputs

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = []

    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Tensor, batch: Any, *args: Any
    ) -> None:
        indices = batch[1].tolist() if isinstance(batch, (tuple, list)) else [""] * len(outputs)
        scores = outputs.float().cpu().tolist()
        self.rows += [[i, best, *row] for i, best, row in zip(indices, outputs.argmax(1).tolist(), scores)]

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        count = len(self.rows[0]) - 2 if self.rows else 0
        classes = list(getattr(attached_datamodule(trainer), "classes", None) or map(str, range(count)))
        name = f"predictions-rank{trainer.global_rank}.csv" if trainer.world_size > 1 else "predictions.csv"
        path = Path(trainer.log_dir or ".") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "predicted", *classes])
            writer.writerows([index, classes[best], *row] for index, best, *row in self.rows)
        print(f"predictions of {len(self.rows)} images written to {path}")


class LitCifarCLI(LightningCLI):
    """LightningCLI for `RegularizedClassifier` and `CIFAR10DataModule` whose ``normalize`` and ``augment`` follow
    ``--model.spec``, so one spec describes the experiment. ``validate``, ``test`` and ``predict`` need
    ``--ckpt_path``, whose hyperparameters (spec included: one that disagrees is an error) they use; ``predict``
    writes ``predictions.csv`` into the run's folder. Bad arguments or missing data exit 2 with one line, before
    any run folder exists."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("model.spec", "data.normalize", compute_fn=lambda spec: as_spec(spec).normalize)
        parser.link_arguments("model.spec", "data.augment", compute_fn=lambda spec: as_spec(spec).augment)
        parser.set_defaults(
            {
                "trainer.use_distributed_sampler": False,  # the data module shards across ranks itself
                "trainer.logger": lazy_instance(TensorBoardLogger, save_dir="logs", name="lit_cifar"),  # by the sweeps
            }
        )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, and remember a ``--model.spec`` given before a checkpoint's hyperparameters replace it."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_checkpoint(self.config[subcommand].get("ckpt_path"))
            if self.config[subcommand].get("weights_only") is None:  # --ckpt_path loads tensors and data only
                self.config[subcommand]["weights_only"] = True
        spec = as_spec((self.config[subcommand] if subcommand else self.config).model.spec)
        default = inspect.signature(RegularizedClassifier).parameters["spec"].default
        self.requested_spec = None if spec == as_spec(default) else spec

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        checkpoint = config.get("ckpt_path")
        if self.subcommand in EVALUATIONS and not checkpoint:
            exit_with_error(f"{self.subcommand} needs --ckpt_path: a model that was never trained measures nothing")
        saved = as_spec(config.model.spec)
        if checkpoint and self.requested_spec is not None and self.requested_spec != saved:
            exit_with_error(
                f"--model.spec {self.requested_spec} disagrees with the checkpoint's spec {saved} "
                f"({checkpoint}); leave --model.spec out to use the checkpoint's"
            )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            exit_with_error(str(error))

    def before_fit(self) -> None:
        """Load the data now, so a missing dataset or an impossible split exits 2 before any folder exists."""
        try:
            self.datamodule.prepare_data()
            self.datamodule.setup("fit")
        except ValueError as error:  # lit_cifar.data.DatasetError is one
            exit_with_error(str(error))

    before_validate = before_test = before_predict = before_fit


def run_cli(args: Optional[list[str]] = None) -> LitCifarCLI:
    """Run the CLI on `args` (``None``: ``sys.argv``); returns the finished `LitCifarCLI`."""
    tune_allocator()
    return LitCifarCLI(
        RegularizedClassifier,
        CIFAR10DataModule,
        args=args,
        seed_everything_default=0,
        trainer_defaults={"callbacks": [PredictionWriter()]},  # acts in predict runs only
        save_config_kwargs={"overwrite": True},
    )


def main(args: Optional[list[str]] = None) -> int:
    """The ``lit-cifar`` command and ``python -m lit_cifar``: 0 when the run finished (bad arguments exit 2)."""
    run_cli(args)
    return 0
