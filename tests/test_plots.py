"""The charts' text and choice of curves: titles break between their parts, never inside one that fits; the
reference curve is drawn on top; the
differences and effects charts draw one series per row, the margin band, and a qualified main effect apart."""

from __future__ import annotations

from matplotlib.figure import Figure

from ablations.report import plots


def test_titles_break_between_parts_only():
    subtitle = (
        "5 epochs · 45,000 training images · 5,000 validation · 10,000 test · batch 128 · seeds 0, 1, 2 · "
        "line: mean over seeds · band: lowest to highest seed"
    )
    for layout in (plots.PAGE, plots.CARD):
        lines = plots._wrap(subtitle, layout.wrap).split("\n")
        assert all(len(line) <= layout.wrap for line in lines)
        parts = subtitle.split(" · ")
        assert sorted(p for line in lines for p in line.split(" · ")) == sorted(parts)  # no part cut in two


def test_the_reference_is_drawn_last_with_its_band(monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_png", lambda figure, layout: drawn.append(figure) or b"")
    curves = [
        plots.Curve("pixel", [0.5, 0.6], "C0", low=[0.4, 0.5], high=[0.6, 0.7], reference=True),
        plots.Curve("pixel+maxnorm=3", [0.5, 0.6], "C1", low=[0.45, 0.55], high=[0.55, 0.65]),
    ]
    plots.curves_chart(curves, "title", "subtitle")
    ax = drawn[0].axes[0]
    lines = ax.get_lines()
    reference = next(line for line in lines if line.get_label() == "pixel (reference)")
    assert reference.get_zorder() > max(line.get_zorder() for line in lines if line is not reference)
    assert len(ax.collections) == 2  # one band per spec
    assert isinstance(drawn[0], Figure)


def _drawn(monkeypatch) -> list[Figure]:
    figures: list[Figure] = []
    original = plots._png
    monkeypatch.setattr(plots, "_png", lambda figure, layout: figures.append(figure) or original(figure, layout))
    return figures


def test_the_differences_chart_draws_each_spec_with_its_interval_and_the_margin_band(monkeypatch):
    figures = _drawn(monkeypatch)
    colours = plots.spec_colours(["pixel", "pixel+bn", "pixel+l1", "one seed"])
    rows = [
        plots.Row("pixel", 0.0, float("nan"), float("nan"), None, colours["pixel"]),
        plots.Row("pixel+bn", -0.05, -0.13, 0.03, "open", colours["pixel+bn"], "could detect ±0.09"),
        plots.Row("pixel+l1", -0.2, -0.26, -0.14, "worse", colours["pixel+l1"]),
        plots.Row("one seed", 0.01, float("nan"), float("nan"), "open", colours["one seed"], "no interval"),
    ]
    for layout in (plots.PAGE, plots.CARD):
        png = plots.differences_chart(rows, 0.01, "title", "subtitle", layout)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figures[0].axes[0]
    assert len(ax.collections) == 4  # one dot per spec
    intervals = [
        line for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_xdata()[0] != line.get_xdata()[1]
    ]
    assert len(intervals) == 2  # the two specs with an interval
    assert [p.get_x() for p in ax.patches][:1] == [-0.01]  # the ±margin band
    texts = [t.get_text() for t in ax.texts]
    assert "open (could detect ±0.09)" in texts and "worse" in texts and "no interval" in texts
    assert len(set(colours.values())) == 4  # one colour per spec


def test_the_effects_chart_draws_a_qualified_main_effect_apart_and_the_simple_effects(monkeypatch):
    figures = _drawn(monkeypatch)
    rows = [
        plots.Row("bn (see pixel × bn)", 0.06, 0.02, 0.10, "better", qualified_by=("pixel × bn",)),
        plots.Row("l1", -0.19, -0.23, -0.15, "worse"),
        plots.Row("pixel × bn", -0.14, -0.22, -0.06, "worse"),
    ]
    simple = [
        plots.Row("bn without pixel", 0.13, 0.08, 0.18, "better"),
        plots.Row("bn with pixel", -0.01, -0.07, 0.04, "open"),
    ]
    plots.effects_chart(rows, simple, 0.01, "title", "subtitle")
    top, bottom = figures[0].axes
    assert len(top.collections) == 3 and len(bottom.collections) == 2  # one dot per effect, per panel
    assert top.collections[0].get_facecolor()[0].tolist() == [1.0, 1.0, 1.0, 1.0]  # hollow: qualified
    legend = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert any("depends on an interaction" in t for t in legend)
    from matplotlib.colors import to_rgba

    assert top.collections[0].get_edgecolor()[0].tolist() == list(to_rgba(plots.QUALIFIED))  # never green
    assert all("averaged over the rest" in t for t in legend if "raises accuracy" in t)
