"""Lightning's log settings for sweeps, which print their own progress; torch-free."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_lightning"]

# The loggers of Lightning's per-Trainer banners ("GPU available", "TPU available", the tips, "LOCAL_RANK ...").
# Children of "lightning.pytorch", whose level Lightning resets to INFO when it is first imported: theirs it keeps,
# so this works before or after that import.
BANNER_LOGGERS = (
    "lightning.pytorch",
    "lightning.fabric",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)


def quiet_lightning() -> None:
    """Sweeps print their own progress: drop Lightning's per-Trainer banners and deprecation chatter."""
    for name in BANNER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
