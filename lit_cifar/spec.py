"""`RegularizationSpec`: which regularization techniques one training run uses.

A spec is a frozen dataclass with one field per technique, and it has a canonical text form: tokens joined by
``+`` in a fixed order, e.g. ``pixel+bn+l2=0.01+dropout=0.25``. ``baseline`` is the spec with everything off.
The text form names run directories, TensorBoard runs and result rows, so ``parse(str(spec)) == spec`` always.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Union

Normalization = Literal["none", "pixel", "channel"]
NORMALIZATIONS: tuple[str, ...] = ("none", "pixel", "channel")

# The tokens `parse` accepts, in canonical order. `str(spec)` writes them in this order.
VALID_TOKENS = ("baseline", "pixel", "channel", "bn", "l1=<float>=0>", "l2=<float>=0>", "maxnorm=<float>0>",
                "dropout=<float in [0,1)>", "augment")


def _number(value: float) -> str:
    """Shortest text that parses back to exactly `value`: 3.0 -> '3', 0.01 -> '0.01', 1e16 -> '1e16'.

    The exponent's ``+`` is dropped because ``+`` joins tokens.
    """
    text = repr(value).replace("e+", "e")
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class RegularizationSpec:
    """The regularization techniques of one run; every field off is the notebook's baseline.

    Attributes:
        normalize: input standardization fitted on the training split only: ``"none"`` feeds raw 0-255 pixels,
            ``"pixel"`` subtracts the per-pixel mean and divides by the per-pixel std (a 3x32x32 mean and std,
            as the notebook's ``np.mean(X_train, axis=0)``), ``"channel"`` uses one mean and std per color channel.
        batchnorm: a BatchNorm layer after each convolution's ReLU.
        l1: adds ``l1 * sum(|W|)`` over the regularized layers' kernels to the loss (Keras ``l1``).
        l2: adds ``l2 * sum(W**2)`` over the regularized layers' kernels to the loss (Keras ``l2``; no 1/2 factor,
            not Adam weight decay).
        max_norm: after every optimizer step, each unit's incoming weight vector is rescaled to L2 norm
            ``<= max_norm`` (Keras ``MaxNorm``); ``None`` is off.
        dropout: drop probability of the Dropout layer after the hidden dense layer; 0 is no Dropout layer.
        augment: random crop with 4-pixel zero padding plus horizontal flip, on training batches only.
    """

    normalize: Normalization = "none"
    batchnorm: bool = False
    l1: float = 0.0
    l2: float = 0.0
    max_norm: float | None = None
    dropout: float = 0.0
    augment: bool = False

    def __post_init__(self) -> None:
        # Store numbers as floats so that `l2=1` and `l2=1.0` are one spec with one name.
        for name in ("l1", "l2", "dropout"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.max_norm is not None:
            object.__setattr__(self, "max_norm", float(self.max_norm))
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={self.normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
        for name in ("l1", "l2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value} must be a finite number >= 0")
        if self.max_norm is not None and not (math.isfinite(self.max_norm) and self.max_norm > 0):
            raise ValueError(f"max_norm={self.max_norm} must be a finite number > 0 (or None for off)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")

    @classmethod
    def parse(cls, text: str) -> RegularizationSpec:
        """Read a ``+``-joined spec such as ``pixel+bn+l2=0.01``; ``baseline`` alone is everything off.

        Raises:
            ValueError: naming the bad token and listing the valid ones, for an unknown token, a number that does
                not parse or is out of range, two normalizations, or a repeated token.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty spec {text!r}; valid tokens: {' '.join(VALID_TOKENS)}")
        tokens = [token.strip() for token in text.strip().split("+")]
        if tokens == ["baseline"]:
            return cls()
        values: dict[str, Any] = {}
        seen: set[str] = set()
        for token in tokens:
            key, has_value, raw = token.partition("=")
            if key in seen:
                raise ValueError(f"repeated token {key!r} in spec {text!r}")
            seen.add(key)
            if key in ("pixel", "channel", "bn", "augment", "baseline") and not has_value:
                if key == "baseline":
                    raise ValueError(f"'baseline' cannot be combined with other tokens in spec {text!r}")
                if key in ("pixel", "channel"):
                    if "normalize" in values:
                        raise ValueError(f"two normalizations ({values['normalize']!r} and {key!r}) in spec "
                                         f"{text!r}; choose one of pixel, channel")
                    values["normalize"] = key
                else:
                    values["batchnorm" if key == "bn" else "augment"] = True
            elif key in ("l1", "l2", "maxnorm", "dropout") and has_value:
                try:
                    number = float(raw)
                except ValueError:
                    raise ValueError(f"token {token!r} in spec {text!r}: {raw!r} is not a number") from None
                values["max_norm" if key == "maxnorm" else key] = number
            else:
                raise ValueError(f"unknown token {token!r} in spec {text!r}; valid tokens: {' '.join(VALID_TOKENS)}")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"spec {text!r}: {error}") from None

    @classmethod
    def coerce(cls, spec: Union[RegularizationSpec, str, Mapping[str, Any]]) -> RegularizationSpec:
        """Accept a spec, its text form, or its `to_dict()` form (as checkpoints store it)."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls.parse(spec)
        if isinstance(spec, Mapping):
            unknown = set(spec) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"unknown spec fields {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
            return cls(**spec)
        raise TypeError(f"expected a RegularizationSpec, its text form or a dict, got {type(spec).__name__}")

    def __str__(self) -> str:
        tokens = []
        if self.normalize != "none":
            tokens.append(self.normalize)
        if self.batchnorm:
            tokens.append("bn")
        if self.l1:
            tokens.append(f"l1={_number(self.l1)}")
        if self.l2:
            tokens.append(f"l2={_number(self.l2)}")
        if self.max_norm is not None:
            tokens.append(f"maxnorm={_number(self.max_norm)}")
        if self.dropout:
            tokens.append(f"dropout={_number(self.dropout)}")
        if self.augment:
            tokens.append("augment")
        return "+".join(tokens) or "baseline"

    @property
    def name(self) -> str:
        """The canonical text form, as `str(spec)`."""
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        """Flat hyperparameters, one key per field (``max_norm`` is ``None`` when off)."""
        return asdict(self)
