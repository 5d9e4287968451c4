"""One training run under Lightning's own CLI.

    python -m lit_cifar fit --model.spec pixel+bn --data.data_dir DIR --trainer.max_epochs 5
    python -m lit_cifar test --model.spec pixel+bn --data.data_dir DIR --ckpt_path PATH

The data module's ``normalize`` and ``augment`` follow ``--model.spec``, so one spec describes the experiment.
Runs log to TensorBoard under ``logs/lit_cifar/version_N/`` (config, checkpoints and events).
"""

from __future__ import annotations

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from lit_cifar.data import CIFAR10DataModule
from lit_cifar.module import RegularizedClassifier
from lit_cifar.spec import RegularizationSpec


def as_spec(value: object) -> RegularizationSpec:
    """The spec jsonargparse hands a link: text, a spec, or (from a checkpoint's hyperparameters, where the spec
    is stored as a dict) a Namespace with ``init_args``."""
    if isinstance(value, Namespace):
        value = value.as_dict()
        value = value.get("init_args", value)
    return RegularizationSpec.coerce(value)


def spec_normalize(spec: object) -> str:
    return as_spec(spec).normalize


def spec_augment(spec: object) -> bool:
    return as_spec(spec).augment


class LitCifarCLI(LightningCLI):
    """LightningCLI whose data normalization and augmentation are linked to the model's spec."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.link_arguments("model.spec", "data.normalize", compute_fn=spec_normalize)
        parser.link_arguments("model.spec", "data.augment", compute_fn=spec_augment)
        parser.set_defaults({
            "trainer.use_distributed_sampler": False,  # the data module shards across ranks itself
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "logs", "name": "lit_cifar"}},  # beside the sweeps
        })


def main(args: list[str] | None = None) -> LitCifarCLI:
    return LitCifarCLI(RegularizedClassifier, CIFAR10DataModule, args=args, seed_everything_default=0,
                       save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
