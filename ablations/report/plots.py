"""The report's charts as PNG bytes, drawn on `matplotlib.figure.Figure` objects (no pyplot, no backend switch).

- `results_chart`: test accuracy per spec (mean and 95% CI, every seed a dot), coloured by the comparison with the
  reference spec, the notebook's figures marked;
- `curves_chart`: validation accuracy per epoch, per spec its mean over seeds and their range as a band, the
  reference spec on top;
- `effects_chart`: the main effects and two-factor interactions of a factorial suite with their CIs;
- `samples_chart`: one training image per class, named.

Accuracy axes start at 0; legends sit inside the axes; titles name the suite as a suite and carry the settings.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

# Bar colours: how a spec compares with the reference spec (one table, also read by the legend).
VERDICTS = {
    "reference": ("tab:blue", "reference spec"),
    "better": ("tab:green", "resolved: above the reference"),
    "worse": ("tab:red", "resolved: below the reference"),
    "unresolved": ("0.6", "not resolved from the reference"),
}
LINE_STYLES = ("-", "-.", ":", (0, (5, 1)))  # solid first; after every 10 lines (the colour cycle) the next


@dataclass(frozen=True)
class Layout:
    """How big a chart is drawn: the files are page-wide; TensorBoard shows images in cards about 350 px wide, so
    its copies are drawn at that width, to be read without zooming."""

    width: float  # inches
    dpi: int
    wrap: int  # characters per line of titles and axis labels
    font: float  # points
    legend_columns: int
    labels_above: bool  # spec names above their bars (narrow charts) rather than on the left
    row: float  # inches per bar


PAGE = Layout(width=9.0, dpi=110, wrap=95, font=9.5, legend_columns=2, labels_above=False, row=0.32)
CARD = Layout(width=3.6, dpi=100, wrap=50, font=7.5, legend_columns=1, labels_above=True, row=0.38)


@dataclass(frozen=True)
class Bar:
    """One spec in `results_chart`."""

    label: str
    values: Sequence[float]  # one per seed
    mean: float
    low: float  # CI bounds (nan when unknown)
    high: float
    verdict: str  # a key of VERDICTS
    notebook: Optional[float] = None


@dataclass(frozen=True)
class Curve:
    """One spec in `curves_chart`."""

    label: str
    values: Sequence[float]  # per epoch, mean over seeds
    same_as: Optional[str] = None  # another curve's label when the numbers are identical
    low: Sequence[float] = ()  # per epoch, the lowest and highest seed (the band); empty: no band
    high: Sequence[float] = ()
    reference: bool = False  # drawn on top of every other curve, in black


@dataclass(frozen=True)
class EffectRow:
    """One effect in `effects_chart`."""

    label: str
    estimate: float
    low: float
    high: float
    resolved: bool


def _png(figure: Figure, layout: Layout) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=layout.dpi)
    return buffer.getvalue()


SEPARATORS = (" · ", ": ")  # where a title may break: between its parts, never inside one


def _split_after(text: str, separator: str) -> list[str]:
    pieces = text.split(separator)
    return [piece + separator for piece in pieces[:-1]] + pieces[-1:]


def _wrap(text: str, layout: Layout) -> str:
    """`text` in lines of at most `layout.wrap` characters, broken after a separator (`SEPARATORS`) where
    possible, inside a part only when that part alone is too long."""
    parts = [text]
    for separator in SEPARATORS:  # the first separator first; the next only inside parts still too long
        parts = [
            piece
            for part in parts
            for piece in (_split_after(part, separator) if len(part.rstrip()) > layout.wrap else [part])
        ]
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(part.rstrip()) <= layout.wrap:
            lines[-1] += part
        elif len(part.rstrip()) <= layout.wrap:
            lines.append(part)
        else:
            lines += [line + " " for line in textwrap.wrap(part, layout.wrap, break_on_hyphens=False)]
    return "\n".join(line.rstrip().removesuffix(" ·") for line in lines)


def _figure(layout: Layout, height: float) -> Figure:
    """A figure `height` inches tall plus room for a title of up to three lines at this width."""
    return Figure(figsize=(layout.width, height + (1.0 if layout is CARD else 0.6)), layout="constrained")


def _title(figure: Figure, title: str, subtitle: str, layout: Layout) -> None:
    figure.suptitle(
        _wrap(title, layout) + "\n" + _wrap(subtitle, layout), fontsize=layout.font + 1.5, x=0.01, ha="left"
    )


def _draw_bars(ax: Any, bars: Sequence[Bar], layout: Layout) -> None:
    y = np.arange(len(bars))[::-1] - (0.15 if layout.labels_above else 0.0)
    for yy, bar in zip(y, bars):
        ax.barh(yy, bar.mean, color=VERDICTS[bar.verdict][0], alpha=0.75, height=0.45 if layout.labels_above else 0.7)
        if not math.isnan(bar.low):
            ax.errorbar(
                bar.mean, yy, xerr=[[bar.mean - bar.low], [bar.high - bar.mean]], color="black", capsize=3, lw=1
            )
        ax.scatter(bar.values, [yy] * len(bar.values), s=10, color="black", zorder=3)
        if bar.notebook is not None:
            ax.scatter([bar.notebook], [yy], marker="|", s=250, color="tab:purple", zorder=4)
    labels = [f"{bar.label}  {bar.mean:.3f}" for bar in bars]
    if not layout.labels_above:
        ax.set_yticks(y, labels, fontsize=layout.font)
        return
    ax.set_yticks([])
    for yy, label in zip(y, labels):
        ax.text(0.005, yy + 0.25, label, fontsize=layout.font, va="bottom")


def _verdict_legend(bars: Sequence[Bar]) -> list[Any]:
    handles: list[Any] = [
        Patch(color=VERDICTS[key][0], alpha=0.75, label=VERDICTS[key][1])
        for key in VERDICTS
        if any(bar.verdict == key for bar in bars)
    ]
    if any(bar.notebook is not None for bar in bars):
        handles.append(
            Line2D([], [], marker="|", ls="", markersize=14, color="tab:purple", label="notebook (one run, all data)")
        )
    return handles


def results_chart(bars: Sequence[Bar], title: str, subtitle: str, layout: Layout = PAGE) -> bytes:
    """Horizontal bars of test accuracy from 0, with CIs, seed dots and the notebook's figures; the legend sits in
    an empty band under the bars."""
    handles = _verdict_legend(bars)
    band = 0.2 + 0.55 * math.ceil(len(handles) / layout.legend_columns)  # in bar rows
    figure = _figure(layout, 0.9 + layout.row * (len(bars) + band))
    ax = figure.add_subplot()
    _draw_bars(ax, bars, layout)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5 - band, len(bars) - 0.5)
    ax.set_xlabel("test accuracy (bar: mean; whisker: 95% CI; dots: seeds)", fontsize=layout.font)
    ax.tick_params(axis="x", labelsize=layout.font)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=handles, loc="lower right", ncol=layout.legend_columns, fontsize=layout.font - 1, framealpha=0.9)
    _title(figure, title, subtitle, layout)
    return _png(figure, layout)


MAX_CURVES = 10  # more lines than this cannot be told apart


def _legible(curves: Sequence[Curve], subtitle: str) -> tuple[list[Curve], str]:
    """At most `MAX_CURVES` curves, in their order: the reference and those highest and lowest at the last epoch;
    the subtitle says which when some are left out."""
    if len(curves) <= MAX_CURVES:
        return list(curves), subtitle
    reference = [c for c in curves if c.reference][:1]
    others = sorted((c for c in curves if not c.reference), key=lambda c: c.values[-1] if c.values else 0.0)
    low = (MAX_CURVES - len(reference)) // 2
    high = MAX_CURVES - len(reference) - low
    kept = {id(c) for c in [*reference, *others[:low], *others[-high:]]}
    note = (
        f"{MAX_CURVES} of {len(curves)} specs: "
        + ("the reference, " if reference else "")
        + f"the {high} highest and {low} lowest at the last epoch"
    )
    return [c for c in curves if id(c) in kept], f"{subtitle} · {note}"


def curves_chart(curves: Sequence[Curve], title: str, subtitle: str, layout: Layout = PAGE) -> bytes:
    """Validation accuracy per epoch from 0: per spec its mean over seeds as a line and the range of its seeds as
    a band; the reference spec in black on top of all; a spec identical to another dashed with open markers."""
    curves, subtitle = _legible(curves, subtitle)
    beside = layout is PAGE  # the legend, else below in two columns
    figure = _figure(layout, 5.0 if beside else 3.0 + 0.19 * math.ceil(len(curves) / 2))
    ax = figure.add_subplot()
    others = [c for c in curves if not c.reference]
    for i, curve in enumerate([*others, *[c for c in curves if c.reference]]):
        epochs = range(1, len(curve.values) + 1)
        duplicate = curve.same_as is not None
        colour = "black" if curve.reference else f"C{i % 10}"
        top = 10 if curve.reference else 2
        if len(curve.low) == len(curve.values) and not duplicate:
            ax.fill_between(
                epochs,
                curve.low,
                curve.high,
                color=colour,
                alpha=0.12 if curve.reference else 0.15,
                lw=0,
                zorder=top - 1,
            )
        label = (
            curve.label + (" (reference)" if curve.reference else "") + (f" (= {curve.same_as})" if duplicate else "")
        )
        ax.plot(
            epochs,
            curve.values,
            color=colour,
            marker="o",
            markersize=7 if duplicate else 3.5,
            fillstyle="none" if duplicate else "full",
            lw=2.6 if curve.reference else 1.4,
            zorder=top,
            ls="--" if duplicate else LINE_STYLES[i // 10 % len(LINE_STYLES)],
            label=label,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1)
    ax.set_xlabel("epochs trained", fontsize=layout.font)
    ax.set_ylabel("validation accuracy", fontsize=layout.font)
    ax.tick_params(labelsize=layout.font)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: not labels[k].endswith("(reference)"))  # reference first
    place = {"loc": "outside right lower"} if beside else {"loc": "outside lower center", "ncol": 2}
    figure.legend(
        [handles[k] for k in order],
        [labels[k] for k in order],
        frameon=False,  # never on a curve
        fontsize=layout.font - (1 if layout is PAGE else 1.5),
        **place,
    )
    _title(figure, title, subtitle, layout)
    return _png(figure, layout)


def effects_chart(rows: Sequence[EffectRow], title: str, subtitle: str, layout: Layout = PAGE) -> bytes:
    """Each effect as a dot with its CI line around a zero line; resolved effects in colour."""
    figure = _figure(layout, 1.4 + 0.22 * len(rows))
    ax = figure.add_subplot()
    y = np.arange(len(rows))[::-1]
    for yy, row in zip(y, rows):
        colour = ("tab:green" if row.estimate > 0 else "tab:red") if row.resolved else "0.5"
        if not math.isnan(row.low):
            ax.plot([row.low, row.high], [yy, yy], color=colour, lw=2)
        ax.scatter([row.estimate], [yy], color=colour, zorder=3, s=18)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [row.label for row in rows], fontsize=layout.font)
    ax.tick_params(axis="x", labelsize=layout.font)
    ax.set_xlabel(_wrap("change in test accuracy (dot: estimate; line: 95% CI)", layout), fontsize=layout.font)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        handles=[
            Line2D([], [], color="tab:green", marker="o", label="resolved, raises accuracy"),
            Line2D([], [], color="tab:red", marker="o", label="resolved, lowers accuracy"),
            Line2D([], [], color="0.5", marker="o", label="not resolved (Holm-corrected)"),
        ],
        loc="best",
        fontsize=layout.font - 1,
        framealpha=0.9,
    )
    _title(figure, title, subtitle, layout)
    return _png(figure, layout)


def samples_chart(images: np.ndarray, names: Sequence[str], title: str) -> bytes:
    """A grid of uint8 images (N, 3, H, W), each titled with its class name, card-sized."""
    columns = min(5, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(CARD.width, 0.85 * rows + 0.3), layout="constrained")
    for i, (image, name) in enumerate(zip(images, names)):
        ax = figure.add_subplot(rows, columns, i + 1)
        ax.imshow(np.transpose(image, (1, 2, 0)), interpolation="nearest")
        ax.set_title(name, fontsize=CARD.font)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=CARD.font + 1)
    return _png(figure, CARD)
