"""The report's charts as PNG bytes, drawn on `matplotlib.figure.Figure` (no pyplot): differences from the
reference, validation curves, factorial effects and one training image per class. A spec has one colour in every
chart, a verdict one colour; every interval drawn is the one its verdict reads, beside the ``±margin`` band.
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
from matplotlib.ticker import MaxNLocator

VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue", "open": "0.45"}
QUALIFIED = "tab:purple"  # a main effect a resolved interaction qualifies: read its simple effects instead
PALETTE = tuple(f"C{i}" for i in range(10)) + ("#8c564b", "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39")
LINE_STYLES = ("-", "-.", ":", (0, (5, 1)))  # solid first; after every `len(PALETTE)` lines the next


def spec_colours(specs: Sequence[str]) -> dict[str, Any]:
    """One colour per spec, in the given order, used by every chart of a report."""
    return {spec: PALETTE[i % len(PALETTE)] for i, spec in enumerate(specs)}


@dataclass(frozen=True)
class Layout:
    """How big a chart is drawn: page-wide files, and TensorBoard cards (about 350 px wide) read without zooming."""

    width: float  # inches
    dpi: int
    wrap: int  # characters per line of titles
    font: float  # points
    legend_columns: int
    labels_above: bool  # names written above their rows (a narrow card) rather than on the left
    row: float  # inches per row of a dot-and-interval chart


PAGE = Layout(width=9.0, dpi=110, wrap=95, font=9.5, legend_columns=2, labels_above=False, row=0.3)
CARD = Layout(width=3.6, dpi=100, wrap=50, font=7.5, legend_columns=1, labels_above=True, row=0.36)


@dataclass(frozen=True)
class Row:
    """A dot-and-interval row: the estimate and the interval its verdict reads (nan: none, the `note` says why)."""

    label: str
    estimate: float
    low: float
    high: float
    verdict: Optional[str]  # a key of VERDICT_COLOURS; None for the reference itself
    colour: Any = None  # the spec's colour; None: the verdict's
    note: str = ""  # written after the verdict, e.g. the smallest detectable difference
    qualified_by: tuple[str, ...] = ()  # resolved interactions that qualify a main effect


@dataclass(frozen=True)
class Curve:
    """One spec in `curves_chart`: per epoch, its mean over seeds and (the band) its lowest and highest seed."""

    label: str
    values: Sequence[float]
    colour: Any
    same_as: Optional[str] = None  # another curve's label when the numbers are identical
    low: Sequence[float] = ()
    high: Sequence[float] = ()
    reference: bool = False  # drawn on top of every other curve, thicker


def _png(figure: Figure, layout: Layout) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=layout.dpi)
    return buffer.getvalue()


def _wrap(text: str, width: int) -> str:
    """`text` in lines of at most `width` characters, broken between its `` · `` parts where it can."""
    lines: list[str] = []
    for part in text.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines += textwrap.wrap(part, width, break_on_hyphens=False)
    return "\n".join(lines)


def _figure(layout: Layout, height: float, title: str, subtitle: str) -> Figure:
    """A figure `height` inches tall plus its title and subtitle."""
    text = _wrap(title, layout.wrap) + "\n" + _wrap(subtitle, layout.wrap)
    height += 0.2 + (text.count("\n") + 1) * (layout.font + 1.5) * 1.3 / 72
    figure = Figure(figsize=(layout.width, height), layout="constrained")
    figure.suptitle(text, fontsize=layout.font + 1.5, x=0.01, ha="left")
    return figure


def _fit_axis(values: Sequence[float], margin: float = 0.0) -> tuple[float, float]:
    """Limits around every finite value and ``±margin`` with 8% room on each side."""
    finite = [v for v in values if not math.isnan(v)] + [-margin, margin]
    pad = 0.08 * (max(finite) - min(finite) or 0.01)
    return min(finite) - pad, max(finite) + pad


def _interval_limits(rows: Sequence[Row], margin: float) -> tuple[float, float]:
    """x limits fitted to the rows; an interval past twice the largest estimate is cut at the axis (an arrow)."""
    reach = 2 * max([abs(r.estimate) for r in rows] + [margin, 0.01])
    low, high = _fit_axis([v for r in rows for v in (r.low, r.high, r.estimate) if abs(v) <= reach], margin)
    clipped = any(r.low < low or r.high > high for r in rows)  # False for nan
    return (max(low, -reach * 1.08), min(high, reach * 1.08)) if clipped else (low, high)


def _draw_rows(
    ax: Any, rows: Sequence[Row], limits: tuple[float, float], margin: float, layout: Layout, say: bool
) -> None:
    """`rows` top-down on `ax`, a dot and an interval each, over the ``±margin`` band; with `say`, the verdicts."""
    if margin > 0:
        ax.axvspan(-margin, margin, color=VERDICT_COLOURS["equivalent"], alpha=0.12, lw=0, zorder=0)
    ax.axvline(0, color="black", lw=0.8, zorder=1)
    ax.set_xlim(*limits)
    y = np.arange(len(rows))[::-1]
    for yy, row in zip(y, rows):
        verdict = "black" if row.verdict is None else VERDICT_COLOURS[row.verdict]
        colour = row.colour or (QUALIFIED if row.qualified_by else verdict)
        if not math.isnan(row.low):
            ax.plot([max(row.low, limits[0]), min(row.high, limits[1])], [yy, yy], color=colour, lw=2.5, zorder=2)
            for edge, marker in ((limits[0], "<"), (limits[1], ">")):
                if (row.low < edge) if marker == "<" else (row.high > edge):
                    ax.plot([edge], [yy], marker=marker, color=colour, markersize=6, clip_on=False, zorder=3)
        dot = {"facecolor": "white", "edgecolor": colour, "linewidth": 1.5} if row.qualified_by else {"color": colour}
        ax.scatter([row.estimate], [yy], s=26, zorder=3, **dot)
        if say:
            text = "reference" if row.verdict is None else row.verdict + (f" ({row.note})" if row.note else "")
            text = row.note if math.isnan(row.low) and row.verdict is not None else text
            if layout.labels_above:  # a narrow card: the name and the verdict above the row
                position = {"x": 0.01, "y": yy + 0.22, "s": f"{row.label}: {text}", "va": "bottom"}
            else:
                position = {"x": 1.01, "y": yy, "s": text, "va": "center"}
            ax.text(**position, transform=ax.get_yaxis_transform(), fontsize=layout.font - 1, color=verdict)
    ax.set_yticks(y, [] if say and layout.labels_above else [row.label for row in rows], fontsize=layout.font)
    ax.set_ylim(-0.6, len(rows) - 0.2)
    ax.tick_params(axis="x", labelsize=layout.font)
    ax.grid(axis="x", alpha=0.3)


def differences_chart(rows: Sequence[Row], margin: float, title: str, subtitle: str, layout: Layout = PAGE) -> bytes:
    """Per spec, in its colour, its difference from the reference and its verdict interval, the verdict beside."""
    figure = _figure(layout, 1.1 + layout.row * len(rows), title, subtitle)
    ax = figure.add_subplot()
    _draw_rows(ax, rows, _interval_limits(rows, margin), margin, layout, say=True)
    label = f"difference in test accuracy from the reference (line: verdict interval; band: ±{margin:g})"
    ax.set_xlabel(_wrap(label, int(layout.wrap * 0.7)), fontsize=layout.font)
    return _png(figure, layout)


def curves_chart(curves: Sequence[Curve], title: str, subtitle: str, layout: Layout = PAGE) -> bytes:
    """Validation accuracy per epoch: each spec's mean over seeds and their band; the reference thick, on top."""
    beside = layout is PAGE  # the legend, else below in two columns
    figure = _figure(layout, 5.0 if beside else 3.0 + 0.19 * math.ceil(len(curves) / 2), title, subtitle)
    ax = figure.add_subplot()
    for i, curve in enumerate(sorted(curves, key=lambda c: not c.reference)):  # the reference first, on top
        epochs = range(1, len(curve.values) + 1)
        duplicate, top = curve.same_as is not None, 10 if curve.reference else 2
        if len(curve.low) == len(curve.values) and not duplicate:
            ax.fill_between(epochs, curve.low, curve.high, color=curve.colour, alpha=0.13, lw=0, zorder=top - 1)
        label = (
            curve.label + (" (reference)" if curve.reference else "") + (f" (= {curve.same_as})" if duplicate else "")
        )
        ax.plot(
            epochs,
            curve.values,
            color=curve.colour,
            marker="o",
            markersize=7 if duplicate else 3.5,
            fillstyle="none" if duplicate else "full",
            lw=2.6 if curve.reference else 1.4,
            zorder=top,
            ls="--" if duplicate else LINE_STYLES[i // len(PALETTE) % len(LINE_STYLES)],
            label=label,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(*_fit_axis([v for c in curves for v in (*c.values, *c.low, *c.high)]))
    ax.set_xlabel("epochs trained", fontsize=layout.font)
    ax.set_ylabel("validation accuracy", fontsize=layout.font)
    ax.tick_params(labelsize=layout.font)
    ax.grid(alpha=0.3)
    place = {"loc": "outside right lower"} if beside else {"loc": "outside lower center", "ncol": 2}
    size = layout.font - (1 if beside else 1.5)
    figure.legend(*ax.get_legend_handles_labels(), frameon=False, fontsize=size, **place)
    return _png(figure, layout)


def effects_chart(
    rows: Sequence[Row], simple: Sequence[Row], margin: float, title: str, subtitle: str, layout: Layout = PAGE
) -> bytes:
    """The effects by verdict (a main effect a resolved interaction qualifies hollow), and below, in a panel of
    their own, the resolved interactions' simple effects."""
    heights = [len(rows)] + ([len(simple) + 1.5] if simple else [])
    figure = _figure(layout, 1.6 + layout.row * 0.8 * sum(heights), title, subtitle)
    axes = figure.subplots(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    limits = _interval_limits([*rows, *simple], margin)
    for ax, panel in zip(axes, (rows, simple)):
        _draw_rows(ax, panel, limits, margin, layout, say=False)
    if simple:
        text = "Simple effects of the resolved interactions: each factor without and with the other"
        axes[1].set_title(_wrap(text, int(layout.wrap * 0.7)), fontsize=layout.font, loc="left")
    label = f"change in test accuracy (dot: estimate; line: verdict interval; band: ±{margin:g})"
    axes[-1].set_xlabel(_wrap(label, int(layout.wrap * 0.7)), fontsize=layout.font)
    present = {r.verdict for r in [*rows, *simple] if not r.qualified_by}
    labels = {
        "better": "better: raises accuracy, averaged over the rest",
        "worse": "worse: lowers accuracy, averaged over the rest",
        "equivalent": f"equivalent: within ±{margin:g}",
        "open": "open: neither within the margin nor clear of 0",
    }
    handles = [
        Line2D([], [], color=VERDICT_COLOURS[k], marker="o", label=text) for k, text in labels.items() if k in present
    ]
    if any(r.qualified_by for r in rows):
        label = "depends on an interaction: see its simple effects"
        handles.append(Line2D([], [], color=QUALIFIED, marker="o", markerfacecolor="white", label=label))
    size = layout.font - 1
    figure.legend(handles=handles, loc="outside lower center", ncol=layout.legend_columns, fontsize=size, frameon=False)
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
