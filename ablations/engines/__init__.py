"""The engines, behind one `Executor`: `LocalExecutor` (``--engine local``: this process, worker processes, or DDP)
and `ablations.engines.ray.RayExecutor` (``--engine ray``). Importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ablations.engines.base import Executor, Progress
from ablations.engines.local import LocalExecutor
from ablations.rules import check, integer

if TYPE_CHECKING:
    from ablations.trial import Ranks

__all__ = ["ENGINES", "Executor", "LocalExecutor", "Progress", "make_executor"]

ENGINES = ("local", "ray")  # the values of --engine


def make_executor(
    engine: str = "local",
    *,
    parallel: int = 1,
    gpus: int = 0,
    ranks: Optional[Ranks] = None,
    ray_address: Optional[str] = None,
    max_retries: int = 2,
) -> Executor:
    """The `engine`'s executor: `parallel` trials at once over `gpus` GPUs (locally, or as each Ray task's share of
    a machine), `ranks` for a DDP sweep (local), `ray_address` and `max_retries` for Ray."""
    check("parallel", parallel, integer(1))
    check("gpus", gpus, integer(0))
    check("max_retries", max_retries, integer(0))
    if engine == "ray":
        from ablations.engines.ray import RayExecutor, TrialResources, available_cpus

        return RayExecutor(ray_address, TrialResources.share(gpus, parallel, available_cpus()), max_retries)
    if engine == "local":
        return LocalExecutor(parallel, gpus, ranks)
    raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
