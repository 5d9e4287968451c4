"""Packs: K trials of one architecture trained together as one batched model, each member still its own trial.

`PackedCNN` lays K `NotebookCNN`s side by side: the convolutions become one grouped convolution (``groups=K``), the
BatchNorm layers one BatchNorm over ``K x width`` channels (per-channel statistics, so per member), the dense layers
batched matrix multiplies over stacked ``(K, out, in)`` weights. `PackedClassifier` trains it under one Lightning
``Trainer`` with everything that makes each member its own trial:

* its initialization: every member is a `NotebookCNN` built as its single trial builds it, then stacked;
* its data order (its own seed's `epoch_permutation`, `PackBatches`), augmentation and dropout masks: each member
  draws them from its own random stream (`MemberRandomness`), in the order its single trial draws them from the
  global generator;
* its input normalization (per-member mean/std buffers), L1/L2 coefficients and max-norm cap;
* Keras's Adam and legacy decay: Adam is elementwise, so one Adam over the stacked tensors is K Adams, as long as
  the members share lr, decay and epsilon (checked).

The loss that is backpropagated is the sum of the members' losses: member k's parameters get exactly the gradient
of member k's own loss. Metrics are accumulated per member on the device and read once per epoch
(`PackedClassifier.epoch_values`); `ablations.packs` writes each member's logs and result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn

from lit_cifar.data import IMAGE_SHAPE, CIFAR10DataModule, EpochSampler, fit_normalization, random_crop_flip
from lit_cifar.models import BN_EPS, BN_MOMENTUM, NotebookCNN
from lit_cifar.module import RegularizedClassifier, make_adam
from lit_cifar.spec import RegularizationSpec

STAGES = ("train", "val", "test")
SHARED_HPARAMS = ("lr", "lr_decay", "adam_eps", "num_classes")  # what every member of a pack must share


def as_notebook_cnn(backbone: nn.Module) -> NotebookCNN:
    """`backbone`, which must be a `NotebookCNN` (no subclass: only its layers are known to the pack).

    Raises:
        ValueError: another network.
    """
    if type(backbone) is not NotebookCNN:
        raise ValueError(f"only NotebookCNN backbones can be packed, got {type(backbone).__name__}")
    return backbone


def _architecture(backbone: nn.Module) -> tuple:
    """What must agree for `NotebookCNN`s to be stacked: the type and every parameter's and buffer's shape, in order
    (dropout has no parameters, so members of any dropout rate stack)."""
    as_notebook_cnn(backbone)
    return tuple(tuple(t.shape) for t in [*backbone.parameters(), *backbone.buffers()])


def _bias(layer: nn.Module) -> Tensor:
    """The bias of one of a `NotebookCNN`'s convolutions or dense layers (all of them have one)."""
    bias = layer.bias
    if not isinstance(bias, Tensor):
        raise ValueError(f"{layer!r} has no bias: it is not a NotebookCNN layer")
    return bias


class PackedCNN(nn.Module):
    """K `NotebookCNN`s of one architecture as one network (see the module docstring); built from the members,
    whose values it copies (the members are left as they are).

    ``forward(x, masks)`` takes standardized images ``(K, B, 3, H, W)`` and dropout masks ``(K, B, hidden)`` (or
    None) and returns logits ``(K, B, classes)``.
    """

    def __init__(self, members: Sequence[NotebookCNN]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a pack needs at least one member")
        shapes = {_architecture(m) for m in members}
        if len(shapes) != 1:
            raise ValueError(
                "the members' networks differ in architecture (BatchNorm, width, classes): "
                "only trials of one architecture can be packed"
            )
        self.size = k = len(members)
        convs = [[layer for layer in m.features if isinstance(layer, nn.Conv2d)] for m in members]
        norms = [[layer for layer in m.features if isinstance(layer, nn.BatchNorm2d)] for m in members]
        self.convs = nn.ModuleList()
        for layer in range(len(convs[0])):
            first = convs[0][layer]
            size = cast("tuple[int, int]", first.kernel_size)
            conv = nn.Conv2d(first.in_channels * k, first.out_channels * k, size, groups=k)
            with torch.no_grad():
                conv.weight.copy_(torch.cat([c[layer].weight for c in convs]))
                _bias(conv).copy_(torch.cat([_bias(c[layer]) for c in convs]))
            self.convs.append(conv)
        self.norms = nn.ModuleList()
        for layer in range(len(norms[0])):
            bn = nn.BatchNorm2d(norms[0][layer].num_features * k, eps=BN_EPS, momentum=BN_MOMENTUM)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, name).copy_(torch.cat([getattr(n[layer], name) for n in norms]))
            self.norms.append(bn)
        linears = [[layer for layer in m.classifier if isinstance(layer, nn.Linear)][0] for m in members]
        self.hidden_weight = nn.Parameter(torch.stack([m.hidden.weight.detach() for m in members]))
        self.hidden_bias = nn.Parameter(torch.stack([_bias(m.hidden).detach() for m in members]))
        self.out_weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in linears]))
        self.out_bias = nn.Parameter(torch.stack([_bias(layer).detach() for layer in linears]))

    def forward(self, x: Tensor, masks: Optional[Tensor] = None) -> Tensor:
        k, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        for index, conv in enumerate(self.convs):
            h = F.relu(conv(h), inplace=True)
            if self.norms:
                h = self.norms[index](h)
        h = h.reshape(b, k, -1).transpose(0, 1)  # (K, B, features), each member's features in Flatten's order
        h = F.relu(torch.baddbmm(self.hidden_bias.unsqueeze(1), h, self.hidden_weight.transpose(1, 2)))
        if masks is not None:
            h = h * masks
        return torch.baddbmm(self.out_bias.unsqueeze(1), h, self.out_weight.transpose(1, 2))


def _device_rng(device: torch.device) -> tuple[Any, Any]:
    """Get and set functions of the default random generator of `device` (the one a single trial draws from)."""
    if device.type == "cuda":
        return (lambda: torch.cuda.get_rng_state(device)), (lambda s: torch.cuda.set_rng_state(s, device))
    if device.type == "cpu":
        return torch.get_rng_state, torch.set_rng_state
    raise ValueError(f"packs run on cpu or cuda devices, not {device.type}")


class MemberRandomness:
    """Each member's own random stream on the training device, continuing where its single trial's would be.

    A single trial draws its augmentation and dropout from the device's default generator, seeded by
    ``seed_everything(seed)`` and (on the CPU) advanced by building its network. `use(k, device)` swaps member k's
    saved state into that generator for the block and saves it back, so member k draws exactly the numbers its
    single trial draws, in the same order.

    Args:
        seeds: each member's seed.
        cpu_states: each member's CPU generator state after its network was built (``torch.get_rng_state()``).
    """

    def __init__(self, seeds: Sequence[int], cpu_states: Sequence[Tensor]) -> None:
        if len(seeds) != len(cpu_states):
            raise ValueError(f"{len(seeds)} seeds but {len(cpu_states)} generator states")
        self.seeds = list(seeds)
        self.states: dict[str, list[Tensor]] = {"cpu": [s.clone() for s in cpu_states]}

    def _states(self, device: torch.device) -> list[Tensor]:
        key = str(device)
        if key not in self.states:  # a GPU's generator: a single trial's is freshly seeded when training starts
            get, set_ = _device_rng(device)
            saved, fresh = get(), []
            for seed in self.seeds:
                torch.cuda.manual_seed(seed)
                fresh.append(get())
            set_(saved)
            self.states[key] = fresh
        return self.states[key]

    @contextmanager
    def use(self, k: int, device: torch.device) -> Iterator[None]:
        states = self._states(device)
        get, set_ = _device_rng(device)
        saved = get()
        set_(states[k])
        try:
            yield
        finally:
            states[k] = get()
            set_(saved)


class PackSampler:
    """The members' `EpochSampler`s, set to the same epoch together (Lightning calls `set_epoch`)."""

    def __init__(self, n: int, seeds: Sequence[int]) -> None:
        self.members = [EpochSampler(n, shuffle=True, seed=seed) for seed in seeds]

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.members:
            sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.members[0])


class PackBatches:
    """Training batches of a pack: ``(uint8 images (K, B, 3, 32, 32), labels (K, B))``, member k's batch cut in
    its own seed's order, exactly the batch its single trial trains on at that step."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        sampler: PackSampler,
        device: Optional[torch.device] = None,
    ) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler, self.device = sampler, device
        self.batch_sampler = None

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.device is not None and self.images.device != self.device:
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        orders = torch.stack([s.indices() for s in self.sampler.members]).to(self.labels.device)
        for start in range(0, orders.shape[1], self.batch_size):
            index = orders[:, start : start + self.batch_size]
            yield self.images[index], self.labels[index]


class PackDataModule(CIFAR10DataModule):
    """A `CIFAR10DataModule` serving a pack: per-member training batches (`PackBatches`), shared evaluation
    batches, and per-member normalization statistics (`member_statistics`). Augmentation is the model's job
    here (each member augments with its own random stream), so the data module itself never augments.

    Args:
        specs, seeds: the members' specs and seeds (their normalization, augmentation and data order).
        **kwargs: the split and batch arguments of `CIFAR10DataModule` (not ``normalize``, ``augment``,
            ``seed``).
    """

    def __init__(self, specs: Sequence[RegularizationSpec], seeds: Sequence[int], **kwargs: Any) -> None:
        if len(specs) != len(seeds) or not specs:
            raise ValueError(f"a pack needs one seed per spec, got {len(specs)} specs and {len(seeds)} seeds")
        super().__init__(normalize="none", augment=False, seed=0, **kwargs)
        self.specs, self.member_seeds = list(specs), list(seeds)

    def member_statistics(self) -> list[tuple[Tensor, Tensor]]:
        """Each member's mean and std (0-255 units), fitted on the training split as its normalization asks."""
        if self.train_images is None:
            raise RuntimeError("member_statistics() needs the data: call setup() first")
        fitted: dict[str, tuple[Tensor, Tensor]] = {}
        for spec in self.specs:
            if spec.normalize not in fitted:
                fitted[spec.normalize] = fit_normalization(self.train_images, spec.normalize)
        return [fitted[spec.normalize] for spec in self.specs]

    def train_dataloader(self) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            raise ValueError("packs train on one device: data-parallel packs are not supported")
        device = trainer.strategy.root_device if trainer is not None else None
        if self.train_images is None or self.train_labels is None:
            raise RuntimeError("train_dataloader() needs the data: call setup() first")
        return PackBatches(
            self.train_images,
            self.train_labels,
            self.batch_size,
            PackSampler(len(self.train_labels), self.member_seeds),
            device=device,
        )


class PackedClassifier(pl.LightningModule):
    """Trains a pack of `RegularizedClassifier` members as one `PackedCNN` (see the module docstring).

    Args:
        members: the members' classifiers, each built as its single trial builds it (``seed_everything(seed)``
            then ``RegularizedClassifier(spec, lr=..., lr_decay=...)``); their networks are copied into the pack.
        randomness: each member's random stream (`MemberRandomness`).

    Raises:
        ValueError: members of different architectures, or that do not share lr, lr_decay, adam_eps and
            num_classes, or with an injected optimizer.
    """

    # Buffers, declared for the type checker (nn.Module types its attributes as Tensor | Module).
    mean: Tensor
    std: Tensor
    l1: Tensor
    l2: Tensor
    alive: Tensor

    def __init__(self, members: Sequence[RegularizedClassifier], randomness: MemberRandomness) -> None:
        super().__init__()
        if not members:
            raise ValueError("a pack needs at least one member")
        for name in SHARED_HPARAMS:
            values = {m.hparams[name] for m in members}
            if len(values) != 1:
                raise ValueError(f"the members of a pack must share {name}, got {sorted(values)}")
        if any(m.optimizer_factory is not None for m in members):
            raise ValueError("packs train with the default Adam: members with an injected optimizer cannot be packed")
        first = members[0].hparams
        self.lr, self.lr_decay, self.adam_eps = first["lr"], first["lr_decay"], first["adam_eps"]
        self.specs = [m.spec for m in members]
        self.size = k = len(members)
        self.randomness = randomness
        self.network = PackedCNN([as_notebook_cnn(m.backbone) for m in members])
        self.register_buffer("mean", torch.zeros(k, *IMAGE_SHAPE))
        self.register_buffer("std", torch.ones(k, *IMAGE_SHAPE))
        self.register_buffer("l1", torch.tensor([s.l1 for s in self.specs]))
        self.register_buffer("l2", torch.tensor([s.l2 for s in self.specs]))
        self.register_buffer("alive", torch.ones(k, dtype=torch.bool))
        self._use_l1, self._use_l2 = any(s.l1 for s in self.specs), any(s.l2 for s in self.specs)
        self.train_images_seen = 0
        self._sums: dict[str, dict[str, Tensor]] = {}
        self._eval_penalty: Optional[Tensor] = None
        self.step_losses: Optional[Tensor] = None

    # ---------------------------------------------------------------------------------------- set-up
    @torch.no_grad()
    def set_input_statistics(self, statistics: Sequence[tuple[Tensor, Tensor]]) -> None:
        """Each member's (mean, std) in 0-255 units, per pixel or per channel (broadcast to the image)."""
        if len(statistics) != self.size:
            raise ValueError(f"{len(statistics)} statistics for a pack of {self.size}")
        for k, (mean, std) in enumerate(statistics):
            self.mean[k].copy_(mean.expand(IMAGE_SHAPE))
            self.std[k].copy_(std.expand(IMAGE_SHAPE))

    def mark_failed(self, k: int) -> None:
        """Member k diverged: its loss no longer counts (its numbers cannot disturb the others' anyway)."""
        self.alive[k] = False

    # ------------------------------------------------------------------------------------------ steps
    def _standardize(self, images: Tensor) -> Tensor:
        """``(K, B, 3, H, W)`` standardized images from ``(B, ...)`` shared or ``(K, B, ...)`` per-member ones."""
        x = images.to(self.mean.dtype)
        if x.dim() == 4:
            x = x.unsqueeze(0)
        return (x - self.mean[:, None]) / self.std[:, None]

    def forward(self, images: Tensor, masks: Optional[Tensor] = None) -> Tensor:
        """Logits ``(K, B, classes)`` of 0-255 images, shared ``(B, 3, H, W)`` or per member ``(K, B, ...)``."""
        return self.network(self._standardize(images), masks)

    def _augment_and_masks(self, images: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Each member's augmentation, then its dropout mask, drawn from its own random stream, as its single
        trial draws them (``random_crop_flip``, then ``F.dropout`` on the hidden layer's activations)."""
        b, device = images.shape[1], images.device
        augment = [spec.augment for spec in self.specs]
        rates = [spec.dropout for spec in self.specs]
        if any(augment):
            images = images.clone()
        masks = torch.ones(self.size, b, self.network.hidden_weight.shape[1], device=device) if any(rates) else None
        for k in range(self.size):
            if not (augment[k] or rates[k]):
                continue
            with self.randomness.use(k, device):
                if augment[k]:
                    images[k] = random_crop_flip(images[k])
                if rates[k] and masks is not None:  # masks exist whenever a member drops out
                    masks[k] = F.dropout(masks[k], rates[k], training=True)
        return images, masks

    def penalty(self) -> Tensor:
        """Each member's ``l1 * sum(|W|) + l2 * sum(W**2)`` over its hidden layer's weight, shape (K,)."""
        weight = self.network.hidden_weight
        total = torch.zeros(self.size, device=weight.device)
        if self._use_l1:
            total = total + self.l1 * weight.abs().flatten(1).sum(1)
        if self._use_l2:
            total = total + self.l2 * weight.square().flatten(1).sum(1)
        return total

    def _accumulate(self, stage: str, values: dict[str, Tensor]) -> None:
        sums = self._sums.setdefault(stage, {})
        for name, value in values.items():
            value = value.detach().double()
            sums[name] = sums[name] + value if name in sums else value

    def _step(self, images: Tensor, labels: Tensor, stage: str, masks: Optional[Tensor] = None) -> Tensor:
        logits = self(images, masks).float()
        k, b = logits.shape[:2]
        if labels.dim() == 1:
            labels = labels.expand(k, b)
        ce = F.cross_entropy(logits.reshape(k * b, -1), labels.reshape(-1), reduction="none").view(k, b).mean(1)
        penalty = self.penalty() if stage == "train" or self._eval_penalty is None else self._eval_penalty
        loss = ce + penalty
        correct = (logits.argmax(-1) == labels).sum(1)
        values = {
            "loss": loss * b,
            "ce": ce * b,
            "correct": correct,
            "images": torch.full((k,), b, device=logits.device),
        }
        if stage == "train":
            values.update(penalty=penalty, steps=torch.ones(k, device=logits.device))
        self._accumulate(stage, values)
        self.step_losses = loss.detach()  # each member's objective at this step, as its single trial's
        return torch.where(self.alive, loss, torch.zeros_like(loss)).sum()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        images, masks = self._augment_and_masks(images)
        self.train_images_seen += labels.shape[1]
        total = self._step(images, labels, "train", masks)
        return total

    def on_validation_epoch_start(self) -> None:
        self._eval_penalty = self.penalty().detach()
        self._sums.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._eval_penalty = self.penalty().detach()
        self._sums.pop("test", None)

    def on_train_epoch_start(self) -> None:
        self._sums.pop("train", None)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(*batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(*batch, "test")

    def epoch_values(self, stage: str) -> list[dict[str, float]]:
        """Each member's ``<stage>/<metric>`` values of the epoch so far, as its single trial logs them: loss, ce
        and acc per image; penalty and maxnorm_rescaled (train only) per step. One host sync."""
        sums = self._sums.get(stage)
        if not sums:
            return [{} for _ in range(self.size)]
        images = sums["images"]
        columns = {"loss": sums["loss"] / images, "acc": sums["correct"] / images, "ce": sums["ce"] / images}
        if stage == "train":
            columns["penalty"] = sums["penalty"] / sums["steps"]
            if "maxnorm_rescaled" in sums:
                columns["maxnorm_rescaled"] = sums["maxnorm_rescaled"] / sums["steps"]
        table = {name: column.float().tolist() for name, column in columns.items()}
        capped = [spec.max_norm is not None for spec in self.specs]
        return [
            {f"{stage}/{name}": values[k] for name, values in table.items() if name != "maxnorm_rescaled" or capped[k]}
            for k in range(self.size)
        ]

    # ------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = make_adam(self.parameters(), lr=self.lr, eps=self.adam_eps)
        decay = self.lr_decay
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + decay * step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if any(spec.max_norm is not None for spec in self.specs):
            self._accumulate("train", {"maxnorm_rescaled": self.apply_max_norm()})

    @torch.no_grad()
    def apply_max_norm(self) -> Tensor:
        """Each capped member's hidden weight rows rescaled to L2 norm ``<= max_norm`` with ``renorm_``, as its
        single trial does; returns the fraction of rows rescaled per member (0 for uncapped members)."""
        weight = self.network.hidden_weight
        rescaled = torch.zeros(self.size, device=weight.device)
        for k, spec in enumerate(self.specs):
            if spec.max_norm is None:
                continue
            norms = torch.linalg.vector_norm(weight[k], ord=2, dim=1)
            rescaled[k] = (norms > spec.max_norm).sum() / len(norms)
            weight[k].renorm_(p=2, dim=0, maxnorm=spec.max_norm)
        return rescaled
