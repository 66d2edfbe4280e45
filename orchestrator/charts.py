"""The dashboard's SVG charts: their geometry as plain data, then drawn as inline SVG.
Colours are not chosen here: each bar has a series number, and the stylesheet fills `.series-N`
from its colour variables, so the charts follow the light and the dark scheme."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH = 720
HEIGHT = 220
LEFT = 56  # room for the value labels
BOTTOM = 24  # room for the day labels
TOP = 8


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: int
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[Label]  # along the axes
    ticks: list[Label]  # the value scale
    gridlines: list[float]


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 × 10ⁿ at least `value`: a scale people can read."""
    if value <= 1:
        return 1
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def stacked_columns(columns: Sequence[tuple[str, str, Sequence[int]]], names: Sequence[str]) -> Chart:
    """One column per entry of `columns` (short label, long label, a value per series), its
    series stacked bottom up; `names` names the series for each bar's tooltip."""
    plot_width, plot_height = WIDTH - LEFT, HEIGHT - TOP - BOTTOM
    top = nice_ceiling(max((sum(values) for _, _, values in columns), default=0))
    slot = plot_width / max(len(columns), 1)
    gap = min(slot * 0.2, 6)
    bars, labels = [], []
    every = max(1, round(len(columns) / 10))  # about ten day labels, whatever the period
    for index, (short, long, values) in enumerate(columns):
        x = LEFT + index * slot + gap / 2
        base = TOP + plot_height
        for series, value in enumerate(values):
            if not value:
                continue
            height = value / top * plot_height
            base -= height
            bars.append(Bar(x=round(x, 2), y=round(base, 2), width=round(slot - gap, 2), height=round(height, 2),
                            series=series, title=f"{long}: {names[series]} {value:,}"))
        if index % every == 0:
            labels.append(Label(x=round(x + (slot - gap) / 2, 2), y=HEIGHT - 6, text=short))
    ticks = [Label(x=LEFT - 6, y=round(TOP + plot_height * (1 - part), 2) + 4, text=f"{top * part:,g}")
             for part in (0, 0.5, 1)]
    gridlines = [round(TOP + plot_height * (1 - part), 2) for part in (0, 0.5, 1)]
    return Chart(width=WIDTH, height=HEIGHT, bars=bars, labels=labels, ticks=ticks, gridlines=gridlines)


ROW = 26
NAME_WIDTH = 180


def stacked_rows(rows: Sequence[tuple[str, Sequence[int]]], names: Sequence[str],
                 colours: Sequence[int] | None = None) -> Chart:
    """One horizontal bar per entry of `rows` (label, a value per series), its series side by side
    from the left. `colours`: the stylesheet's series number for each series, if not its position."""
    plot_width = WIDTH - NAME_WIDTH - 8
    top = nice_ceiling(max((sum(values) for _, values in rows), default=0))
    bars, labels = [], []
    for index, (name, values) in enumerate(rows):
        y = TOP + index * ROW
        left = float(NAME_WIDTH)
        for series, value in enumerate(values):
            if not value:
                continue
            width = value / top * plot_width
            bars.append(Bar(x=round(left, 2), y=y, width=round(width, 2), height=ROW - 8,
                            series=colours[series] if colours else series,
                            title=f"{name}: {names[series]} {value:,}"))
            left += width
        labels.append(Label(x=NAME_WIDTH - 8, y=y + ROW / 2, text=name))
    height = TOP + max(len(rows), 1) * ROW + BOTTOM
    ticks = [Label(x=round(NAME_WIDTH + plot_width * part, 2), y=height - 6, text=f"{top * part:,g}")
             for part in (0, 0.5, 1)]
    return Chart(width=WIDTH, height=height, bars=bars, labels=labels, ticks=ticks, gridlines=[])


def svg(chart: Chart, *, id: str, label: str, kind: str) -> SafeString:
    """The chart as inline SVG: a titled image whose bars take their fill from the stylesheet
    (`.series-N`) and whose text and grid lines are `currentColor`. Built here rather than in a
    template loop, which takes a tenth of a second for the 90 days × series of a busy site."""
    grid = format_html_join("", '<line class="chart-grid" x1="{}" x2="{}" y1="{}" y2="{}" stroke="currentColor"/>',
                            ((LEFT, chart.width, y, y) for y in chart.gridlines))
    bars = format_html_join("", '<rect class="chart-bar series-{}" x="{}" y="{}" width="{}" height="{}">'
                                '<title>{}</title></rect>',
                            ((bar.series, bar.x, bar.y, bar.width, bar.height, bar.title) for bar in chart.bars))
    ticks = format_html_join("", '<text class="chart-tick" x="{}" y="{}" fill="currentColor">{}</text>',
                             ((tick.x, tick.y, tick.text) for tick in chart.ticks))
    labels = format_html_join("", '<text class="chart-label {}" x="{}" y="{}" fill="currentColor">{}</text>',
                              ((kind, text.x, text.y, text.text) for text in chart.labels))
    return format_html('<svg class="chart {}-chart" viewBox="0 0 {} {}" role="img" aria-labelledby="{}-title" '
                       'preserveAspectRatio="xMinYMin meet"><title id="{}-title">{}</title>{}{}{}{}</svg>',
                       kind, chart.width, chart.height, id, id, label, grid, bars, ticks, labels)
