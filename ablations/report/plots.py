"""The report's charts as PNG bytes, drawn on `matplotlib.figure.Figure` objects (no pyplot, no backend switch).

- `differences_chart`: each spec's difference in test accuracy from the reference spec with the interval its
  verdict reads (simultaneous over the comparisons), the ``±margin`` band and the verdict written beside it;
- `curves_chart`: validation accuracy per epoch, per spec its mean over seeds and their range as a band;
- `effects_chart`: the main effects and two-factor interactions of a factorial suite with their simultaneous
  intervals and verdicts, and below them the simple effects of each resolved interaction;
- `samples_chart`: one training image per class, named.

A spec has one colour in every chart (`spec_colours`); a verdict one colour (`VERDICT_COLOURS`). Axes are fitted to
the data; legends sit inside the figure; titles name the suite and carry the settings.
"""

from __future__ import annotations

import dataclasses
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
    """How big a chart is drawn: the files are page-wide; TensorBoard shows images in cards about 350 px wide, so
    its copies are drawn at that width, to be read without zooming."""

    width: float  # inches
    dpi: int
    wrap: int  # characters per line of titles and axis labels
    font: float  # points
    legend_columns: int
    labels_above: bool  # names written above their rows (a narrow card) rather than on the left
    row: float  # inches per row of a dot-and-interval chart


PAGE = Layout(width=9.0, dpi=110, wrap=95, font=9.5, legend_columns=2, labels_above=False, row=0.3)
CARD = Layout(width=3.6, dpi=100, wrap=50, font=7.5, legend_columns=1, labels_above=True, row=0.36)


@dataclass(frozen=True)
class Difference:
    """One spec in `differences_chart`: its difference from the reference and the interval the verdict reads."""

    label: str
    estimate: float
    low: float  # nan when the spec has too few seeds for an interval
    high: float
    verdict: Optional[str]  # a key of VERDICT_COLOURS; None for the reference itself
    colour: Any
    note: str = ""  # written after the verdict, e.g. the smallest detectable difference
    tested: bool = True  # False: no interval (e.g. one seed); the note says why, in place of a verdict


@dataclass(frozen=True)
class Curve:
    """One spec in `curves_chart`."""

    label: str
    values: Sequence[float]  # per epoch, mean over seeds
    colour: Any
    same_as: Optional[str] = None  # another curve's label when the numbers are identical
    low: Sequence[float] = ()  # per epoch, the lowest and highest seed (the band); empty: no band
    high: Sequence[float] = ()
    reference: bool = False  # drawn on top of every other curve, thicker


@dataclass(frozen=True)
class EffectRow:
    """One effect in `effects_chart`."""

    label: str
    estimate: float
    low: float
    high: float
    verdict: str  # a key of VERDICT_COLOURS
    qualified_by: tuple[str, ...] = ()  # resolved interactions that qualify a main effect


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


def _figure(layout: Layout, height: float, title: str, subtitle: str) -> Figure:
    """A figure `height` inches tall plus room for the title and subtitle as `_title` wraps them."""
    lines = len(_wrap(title, layout).splitlines()) + len(_wrap(subtitle, layout).splitlines())
    return Figure(figsize=(layout.width, height + 0.2 + lines * (layout.font + 1.5) * 1.3 / 72), layout="constrained")


def _axis_label(text: str, layout: Layout) -> str:
    """`text` wrapped to the width of an axes (narrower than the figure: the row names take the rest)."""
    return _wrap(text, dataclasses.replace(layout, wrap=int(layout.wrap * 0.7)))


def _title(figure: Figure, title: str, subtitle: str, layout: Layout) -> None:
    figure.suptitle(
        _wrap(title, layout) + "\n" + _wrap(subtitle, layout), fontsize=layout.font + 1.5, x=0.01, ha="left"
    )


def _fit_axis(values: Sequence[float], margin: float = 0.0) -> tuple[float, float]:
    """Limits around every finite value and ``±margin`` with 8% room on each side."""
    finite = [v for v in values if not math.isnan(v)] + [-margin, margin]
    low, high = min(finite), max(finite)
    pad = 0.08 * (high - low or 0.01)
    return low - pad, high + pad


def _interval_limits(rows: Sequence[Any], margin: float) -> tuple[float, float]:
    """x limits fitted to the estimates and intervals, an interval reaching past twice the largest estimate cut
    at the axis (drawn with an arrow there), so one wide interval does not flatten the others."""
    reach = 2 * max([abs(r.estimate) for r in rows] + [margin, 0.01])
    values = [v for r in rows for v in (r.low, r.high, r.estimate) if not math.isnan(v) and abs(v) <= reach]
    low, high = _fit_axis(values, margin)
    clipped = any(not math.isnan(r.low) and (r.low < low or r.high > high) for r in rows)
    return (max(low, -reach * 1.08), min(high, reach * 1.08)) if clipped else (low, high)


def _interval(ax: Any, row: Any, y: float, colour: Any, lw: float) -> None:
    """The interval of `row` at `y`, cut at the axis limits with an arrow where it goes on."""
    if math.isnan(row.low):
        return
    left, right = ax.get_xlim()
    ax.plot([max(row.low, left), min(row.high, right)], [y, y], color=colour, lw=lw, solid_capstyle="butt", zorder=2)
    for end, edge, marker in ((row.low, left, "<"), (row.high, right, ">")):
        if (end < edge) if marker == "<" else (end > edge):
            ax.plot([edge], [y], marker=marker, color=colour, markersize=6, clip_on=False, zorder=3)


def _margin_band(ax: Any, margin: float) -> None:
    if margin > 0:
        ax.axvspan(-margin, margin, color=VERDICT_COLOURS["equivalent"], alpha=0.12, lw=0, zorder=0)
    ax.axvline(0, color="black", lw=0.8, zorder=1)


def differences_chart(
    rows: Sequence[Difference], margin: float, title: str, subtitle: str, layout: Layout = PAGE
) -> bytes:
    """Per spec a dot at its difference from the reference and a line over its verdict interval, in the spec's
    colour; the ``±margin`` band shaded; the verdict written at the right in its colour."""
    figure = _figure(layout, 1.1 + layout.row * len(rows), title, subtitle)
    ax = figure.add_subplot()
    y = np.arange(len(rows))[::-1]
    _margin_band(ax, margin)
    ax.set_xlim(*_interval_limits(rows, margin))
    for yy, row in zip(y, rows):
        _interval(ax, row, yy, row.colour, 2.5)
        ax.scatter([row.estimate], [yy], color=row.colour, s=28, zorder=3, edgecolor="black", linewidth=0.5)
        verdict = "reference" if row.verdict is None else row.verdict + (f" ({row.note})" if row.note else "")
        if not row.tested:
            verdict = row.note
        colour = "black" if row.verdict is None else VERDICT_COLOURS[row.verdict]
        if layout.labels_above:  # a narrow card: the name and the verdict above the row
            ax.text(
                0.01,
                yy + 0.22,
                f"{row.label}: {verdict}",
                transform=ax.get_yaxis_transform(),
                fontsize=layout.font - 0.5,
                color=colour,
                va="bottom",
            )
        else:
            ax.text(
                1.01,
                yy,
                verdict,
                transform=ax.get_yaxis_transform(),
                va="center",
                fontsize=layout.font - 1,
                color=colour,
            )
    if layout.labels_above:
        ax.set_yticks([])
    else:
        ax.set_yticks(y, [row.label for row in rows], fontsize=layout.font)
    ax.set_ylim(-0.6, len(rows) - 0.2)
    ax.tick_params(axis="x", labelsize=layout.font)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(
        _axis_label(
            f"difference in test accuracy from the reference (line: verdict interval; band: ±{margin:g})", layout
        ),
        fontsize=layout.font,
    )
    _title(figure, title, subtitle, layout)
    return _png(figure, layout)


def curves_chart(curves: Sequence[Curve], title: str, subtitle: str, layout: Layout = PAGE) -> bytes:
    """Validation accuracy per epoch, the axis fitted to the data: per spec, in its colour, its mean over seeds as
    a line and the range of its seeds as a band; the reference spec thick on top of all; a spec identical to
    another dashed with open markers."""
    beside = layout is PAGE  # the legend, else below in two columns
    figure = _figure(layout, 5.0 if beside else 3.0 + 0.19 * math.ceil(len(curves) / 2), title, subtitle)
    ax = figure.add_subplot()
    others = [c for c in curves if not c.reference]
    for i, curve in enumerate([*others, *[c for c in curves if c.reference]]):
        epochs = range(1, len(curve.values) + 1)
        duplicate = curve.same_as is not None
        colour = curve.colour
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
            ls="--" if duplicate else LINE_STYLES[i // len(PALETTE) % len(LINE_STYLES)],
            label=label,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(*_fit_axis([v for c in curves for v in (*c.values, *c.low, *c.high)]))
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


def _effect_rows(
    ax: Any, rows: Sequence[EffectRow], limits: tuple[float, float], margin: float, layout: Layout
) -> None:
    """Draw `rows` top-down on `ax` as dots with interval lines."""
    y = np.arange(len(rows))[::-1]
    _margin_band(ax, margin)
    ax.set_xlim(*limits)
    for yy, row in zip(y, rows):
        colour = QUALIFIED if row.qualified_by else VERDICT_COLOURS[row.verdict]
        _interval(ax, row, yy, colour, 2)
        hollow = (
            {"facecolor": "white", "edgecolor": colour, "linewidth": 1.5} if row.qualified_by else {"color": colour}
        )
        ax.scatter([row.estimate], [yy], zorder=3, s=22, **hollow)
    ax.set_yticks(y, [row.label for row in rows], fontsize=layout.font)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.tick_params(axis="x", labelsize=layout.font)
    ax.grid(axis="x", alpha=0.3)


def effects_chart(
    rows: Sequence[EffectRow],
    simple: Sequence[EffectRow],
    margin: float,
    title: str,
    subtitle: str,
    layout: Layout = PAGE,
) -> bytes:
    """The effects as dots with their verdict intervals around zero and the ``±margin`` band, coloured by verdict;
    a main effect qualified by a resolved interaction hollow, in its own colour (never "raises accuracy"); below,
    in a panel of their own, the simple effects of the resolved interactions (`simple`), coloured by verdict."""
    heights = [len(rows)] + ([len(simple) + 1.5] if simple else [])
    figure = _figure(layout, 1.6 + layout.row * 0.8 * sum(heights), title, subtitle)
    axes = figure.subplots(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    limits = _interval_limits([*rows, *simple], margin)
    _effect_rows(axes[0], rows, limits, margin, layout)
    if simple:
        _effect_rows(axes[1], simple, limits, margin, layout)
        axes[1].set_title(
            _axis_label("Simple effects of the resolved interactions: each factor without and with the other", layout),
            fontsize=layout.font,
            loc="left",
        )
    axes[-1].set_xlabel(
        _axis_label(f"change in test accuracy (dot: estimate; line: verdict interval; band: ±{margin:g})", layout),
        fontsize=layout.font,
    )
    present = {r.verdict for r in [*rows, *simple] if not r.qualified_by}
    labels = {
        "better": "better: raises accuracy, averaged over the rest",
        "worse": "worse: lowers accuracy, averaged over the rest",
        "equivalent": f"equivalent: within ±{margin:g}",
        "open": "open: neither within the margin nor clear of 0",
    }
    handles: list[Any] = [
        Line2D([], [], color=VERDICT_COLOURS[key], marker="o", label=labels[key]) for key in labels if key in present
    ]
    if any(r.qualified_by for r in rows):
        handles.append(
            Line2D(
                [],
                [],
                color=QUALIFIED,
                marker="o",
                markerfacecolor="white",
                label="depends on an interaction: see its simple effects",
            )
        )
    figure.legend(
        handles=handles, loc="outside lower center", ncol=layout.legend_columns, fontsize=layout.font - 1, frameon=False
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
