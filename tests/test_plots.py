"""The charts' text and choice of curves: titles break between their parts, never inside one that fits; the
reference curve is always drawn, on top; a large suite's curves are cut to those a reader can tell apart."""

from __future__ import annotations

from matplotlib.figure import Figure

from ablations.report import plots


def test_titles_break_between_parts_only():
    subtitle = (
        "5 epochs · 45,000 training images · 5,000 validation · 10,000 test · batch 128 · seeds 0, 1, 2 · "
        "line: mean over seeds · band: lowest to highest seed"
    )
    for layout in (plots.PAGE, plots.CARD):
        lines = plots._wrap(subtitle, layout).split("\n")
        assert all(len(line) <= layout.wrap for line in lines)
        parts = subtitle.split(" · ")
        assert sorted(p for line in lines for p in line.split(" · ")) == sorted(parts)  # no part cut in two


def test_a_large_suite_keeps_the_reference_and_the_extremes():
    curves = [plots.Curve(f"s{i}", [0.1, i / 100]) for i in range(30)]
    curves[7] = plots.Curve("ref", [0.1, 0.07], reference=True)
    kept, subtitle = plots._legible(curves, "settings")
    labels = [c.label for c in kept]
    assert len(kept) == plots.MAX_CURVES and "ref" in labels
    assert {"s0", "s1", "s29", "s28"} <= set(labels) and "10 of 30 specs" in subtitle


def test_the_reference_is_drawn_last_with_its_band(monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_png", lambda figure, layout: drawn.append(figure) or b"")
    curves = [
        plots.Curve("pixel", [0.5, 0.6], low=[0.4, 0.5], high=[0.6, 0.7], reference=True),
        plots.Curve("pixel+maxnorm=3", [0.5, 0.6], low=[0.45, 0.55], high=[0.55, 0.65]),
    ]
    plots.curves_chart(curves, "title", "subtitle")
    ax = drawn[0].axes[0]
    lines = ax.get_lines()
    reference = next(line for line in lines if line.get_label() == "pixel (reference)")
    assert reference.get_zorder() > max(line.get_zorder() for line in lines if line is not reference)
    assert len(ax.collections) == 2  # one band per spec
    assert isinstance(drawn[0], Figure)
