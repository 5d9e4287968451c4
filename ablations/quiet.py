"""Lightning's log settings for sweeps, which print their own progress; torch-free."""

from __future__ import annotations

import logging
import warnings

# The loggers of Lightning's per-Trainer banners ("GPU available", the tips, "LOCAL_RANK ..."). Lightning resets
# "lightning.pytorch" to INFO when first imported but keeps its children's levels, so this works before or after.
BANNER_LOGGERS = (
    "lightning.pytorch",
    "lightning.fabric",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)


def quiet_lightning() -> None:
    """Drop Lightning's per-Trainer banners and deprecation chatter."""
    for name in BANNER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
