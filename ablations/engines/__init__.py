"""The engines: where a sweep's trials run, each behind one interface, `Executor` (``run(trials, options)`` ->
one `ablations.status.TrialStatus` per trial).

- `LocalExecutor` (``--engine local``, the default): this process, or ``--parallel`` worker processes; DDP sweeps.
- `RayExecutor` (``--engine ray``): Ray tasks, on this machine or a Ray cluster.
- `PackExecutor` (``--pack K``): packs of trials trained as one batched model, in this process.

`make_executor` picks one from what a plan asks for. Importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ablations.engines.base import Executor, Progress
from ablations.engines.local import LocalExecutor
from ablations.engines.packs import PackExecutor
from ablations.engines.ray import RayExecutor

if TYPE_CHECKING:
    from ablations.trial import Ranks

__all__ = ["ENGINES", "Executor", "LocalExecutor", "PackExecutor", "Progress", "RayExecutor", "make_executor"]

ENGINES = ("local", "ray")  # the values of --engine


def make_executor(
    engine: str = "local",
    *,
    parallel: int = 1,
    gpus: int = 0,
    pack_size: int = 1,
    ranks: Optional[Ranks] = None,
    ray_address: Optional[str] = None,
    max_retries: int = 2,
) -> Executor:
    """The executor of a plan: packs when `pack_size` > 1 (local engine only, checked when the plan is made), else
    the `engine`'s: `parallel` trials at once spread over `gpus` GPUs (locally, or as each Ray task's share of a
    machine), `ranks` for a DDP sweep (local), `ray_address` and `max_retries` for Ray."""
    if pack_size > 1:
        return PackExecutor(pack_size)
    if engine == "ray":
        return RayExecutor.sharing(parallel, gpus, address=ray_address, max_retries=max_retries)
    if engine == "local":
        return LocalExecutor(parallel, gpus, ranks)
    raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
