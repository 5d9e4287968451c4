"""`RegularizationSpec`: the regularization techniques of one training run, a frozen dataclass with a canonical
text form (tokens joined by ``+`` in a fixed order, e.g. ``pixel+bn+l2=0.01``; ``baseline``: everything off) that
names run folders and result rows, so ``parse(str(spec)) == spec`` always."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Literal, Optional, Union

Normalization = Literal["none", "pixel", "channel"]
BASELINE = "baseline"  # the text of the spec with everything off; it cannot be combined with other tokens
MAXNORM_RESCALED = "train/maxnorm_rescaled"  # the logged fraction of rows the max-norm cap rescaled


@dataclass(frozen=True)
class Token:
    """One spec token: a flag (``pixel``, ``bn``) sets `field` to `flag`; a numeric token (``l2=X``) has no flag
    and sets `field` to X, which must satisfy `accepts` (`number` says so in words)."""

    text: str
    field: str
    flag: Any = None
    number: str = ""
    accepts: Callable[[float], bool] = bool

    @property
    def numeric(self) -> bool:
        return self.flag is None

    def usage(self) -> str:
        """How the token is written, as the valid-token message lists it."""
        return f"{self.text}=<{self.number}>" if self.numeric else self.text


def _non_negative(x: float) -> bool:
    return math.isfinite(x) and x >= 0


# Every token, in the order `str(spec)` writes them: parsing, printing, messages and ranges come from this table.
TOKENS: tuple[Token, ...] = (
    Token("pixel", "normalize", flag="pixel"),
    Token("channel", "normalize", flag="channel"),
    Token("bn", "batchnorm", flag=True),
    Token("l1", "l1", number="a finite number >= 0", accepts=_non_negative),
    Token("l2", "l2", number="a finite number >= 0", accepts=_non_negative),
    Token("maxnorm", "max_norm", number="a finite number > 0", accepts=lambda x: math.isfinite(x) and x > 0),
    Token("dropout", "dropout", number="in [0, 1)", accepts=lambda x: 0 <= x < 1),
    Token("augment", "augment", flag=True),
)
TOKENS_BY_TEXT: dict[str, Token] = {token.text: token for token in TOKENS}
VALID_TOKENS: tuple[str, ...] = (BASELINE, *(token.usage() for token in TOKENS))
NORMALIZATIONS: tuple[str, ...] = ("none", *(t.flag for t in TOKENS if t.field == "normalize"))


def number_text(value: float) -> str:
    """Shortest text that parses back to exactly `value`: 3.0 -> '3', 1e16 -> '1e16' (no ``+``: it joins tokens)."""
    text = repr(value).replace("e+", "e")
    return text[:-2] if text.endswith(".0") else text


def check_number(
    name: str, value: Any, low: float, *, above: bool = False, integer: bool = False, optional: bool = False
) -> None:
    """Check a numeric argument: a finite number (an int if `integer`) >= `low` (> if `above`), or None if `optional`;
    TypeError for another type, ValueError out of range, both naming `name`."""
    if optional and value is None:
        return
    kind = "an integer" if integer else "a finite number"
    wanted = f"{kind} {'>' if above else '>='} {low}{' or None' if optional else ''}"
    if isinstance(value, bool) or not isinstance(value, int if integer else numbers.Real):
        raise TypeError(f"{name}={value!r} must be {wanted}")
    number = float(value)
    if not (math.isfinite(number) and (number > low if above else number >= low)):
        raise ValueError(f"{name}={value!r} must be {wanted}")


@dataclass(frozen=True)
class RegularizationSpec:
    """The regularization techniques of one run; every field off is the notebook's baseline.

    Attributes:
        normalize: input standardization fitted on the training split: ``"none"`` (raw 0-255 pixels), ``"pixel"``
            (per-pixel mean and std, as the notebook's ``np.mean(X_train, axis=0)``) or ``"channel"``.
        batchnorm: a BatchNorm layer after each convolution's ReLU.
        l1: adds ``l1 * sum(|W|)`` over the regularized layers' kernels to the loss (Keras ``l1``).
        l2: adds ``l2 * sum(W**2)`` over those kernels to the loss (Keras ``l2``; not Adam weight decay).
        max_norm: after every step, rescale each unit's incoming weights to L2 norm ``<= max_norm`` (Keras
            ``MaxNorm``); ``None`` is off.
        dropout: drop probability of the Dropout layer after the hidden dense layer; 0 is no Dropout layer.
        augment: random crop with 4-pixel zero padding plus horizontal flip, on training batches only.

    A field of the wrong type (``l2="0.1"``) is a TypeError, a value out of range (``dropout=1``) a ValueError.
    """

    normalize: Normalization = "none"
    batchnorm: bool = False
    l1: float = 0.0
    l2: float = 0.0
    max_norm: Optional[float] = None
    dropout: float = 0.0
    augment: bool = False

    def __post_init__(self) -> None:
        for token in TOKENS:
            name, value, off = token.field, getattr(self, token.field), _OFF[token.field]
            if not token.numeric:  # a flag's field holds its default or a value a token sets
                allowed = (off, *(t.flag for t in TOKENS if t.field == name))
                if type(value) is not type(off):
                    raise TypeError(
                        f"{name}={value!r} must be a {type(off).__name__}: one of {', '.join(map(repr, allowed))}"
                    )
                if value not in allowed:
                    raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")
            elif not (value is None and off is None):  # stored as a float: l2=1 and l2=1.0 are one spec
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise TypeError(f"{name}={value!r} must be a number, {token.number}")
                if float(value) != off and not token.accepts(float(value)):
                    raise ValueError(f"{name}={float(value)} must be {token.number}")
                object.__setattr__(self, name, float(value))

    @classmethod
    def parse(cls, text: str) -> RegularizationSpec:
        """Read a ``+``-joined spec such as ``pixel+bn+l2=0.01``; ``baseline`` alone is everything off. ValueError
        naming the bad token for an unknown token, a bad number or two tokens for one field (``pixel+channel``)."""
        valid = f"valid tokens: {' '.join(VALID_TOKENS)}"
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty spec {text!r}; {valid}")
        tokens = [token.strip() for token in text.strip().split("+")]
        if tokens == [BASELINE]:
            return cls()
        values: dict[str, Any] = {}
        set_by: dict[str, str] = {}  # field: the token that set it
        for token in tokens:
            key, has_value, raw = token.partition("=")
            if key == BASELINE and not has_value:
                raise ValueError(f"'baseline' cannot be combined with other tokens in spec {text!r}")
            known = TOKENS_BY_TEXT.get(key)
            if known is None or bool(has_value) != known.numeric:
                raise ValueError(f"unknown token {token!r} in spec {text!r}; {valid}")
            if known.field in set_by:
                previous = set_by[known.field]
                if previous.partition("=")[0] == key:
                    raise ValueError(f"repeated token {key!r} in spec {text!r}")
                raise ValueError(f"two normalizations ({previous!r} and {token!r}) in spec {text!r}; choose one")
            try:
                values[known.field] = float(raw) if known.numeric else known.flag
            except ValueError:
                raise ValueError(f"token {token!r} in spec {text!r}: {raw!r} is not a number; {valid}") from None
            set_by[known.field] = token
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
        for token in TOKENS:
            value = getattr(self, token.field)
            if token.numeric and value != _OFF[token.field]:
                tokens.append(f"{token.text}={number_text(value)}")
            elif not token.numeric and value == token.flag:
                tokens.append(token.text)
        return "+".join(tokens) or BASELINE

    @property
    def name(self) -> str:
        """The canonical text form, as `str(spec)`."""
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        """Flat hyperparameters, one key per field (``max_norm`` is ``None`` when off)."""
        return asdict(self)


_OFF: dict[str, Any] = {f.name: f.default for f in fields(RegularizationSpec)}  # every field's "off" value
