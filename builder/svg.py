"""Small SVG charts with no dependencies: one panel per series, oldest point on the left.

The same values give the same bytes (no timestamps, no ids), so a chart can be committed and
diffed. `repro history --plot` draws verdicts, times to reproduce and metrics with it; the
benchmark scripts can draw their numbers with it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

WIDTH, PANEL, LEFT, RIGHT, TOP = 640, 110, 70, 20, 28
_COLOURS = {"ok": "#1a7f37", "bad": "#cf222e", "line": "#0969da"}


@dataclass(frozen=True)
class Series:
    """One panel. `values[i]` is point i (None: no value there); `marks[i]`, when given, makes
    the panel a row of dots coloured "ok" or "bad" (verdicts) instead of a line."""

    title: str
    values: Sequence[float | None]
    unit: str = ""
    marks: Sequence[str] | None = None


def _fmt(value: float, unit: str) -> str:
    return f"{value:.4g}{unit}"


def chart(title: str, labels: Sequence[str], series: Sequence[Series]) -> str:
    """An SVG document: `title` on top, one panel per series, `labels` name the points."""
    n = len(labels)
    plot_w = WIDTH - LEFT - RIGHT
    height = TOP + PANEL * len(series) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
           f"<title>{escape(title)}</title>",
           f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']

    def x_of(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    for p, s in enumerate(series):
        top = TOP + p * PANEL
        bottom = top + PANEL - 30
        out.append(f'<g class="panel" data-series={quoteattr(s.title)}>')
        out.append(f'<text x="{LEFT}" y="{top + 10}" font-weight="bold">{escape(s.title)}</text>')
        out.append(f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" '
                   f'stroke="#d0d7de"/>')
        known = [v for v in s.values if v is not None]
        low, high = (min(known), max(known)) if known else (0.0, 1.0)
        span = (high - low) or 1.0

        flat = s.marks is not None or high == low  # dots in a row, mid-panel

        def y_of(v: float, low: float = low, span: float = span, top: int = top,
                 bottom: int = bottom, flat: bool = flat) -> float:
            return (top + 16 + bottom) / 2 if flat else \
                bottom - (v - low) / span * (bottom - top - 16)

        if s.marks is None and known:
            for value in sorted({high, low}):  # one label when the line is flat
                out.append(f'<text x="{LEFT - 6}" y="{y_of(value) + 4:.1f}" '
                           f'text-anchor="end">{escape(_fmt(value, s.unit))}</text>')
            points = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}"
                              for i, v in enumerate(s.values) if v is not None)
            out.append(f'<polyline points="{points}" fill="none" '
                       f'stroke="{_COLOURS["line"]}" stroke-width="1.5"/>')
        for i, v in enumerate(s.values):
            if v is None:
                continue
            mark = s.marks[i] if s.marks is not None else "line"
            tip = f"{labels[i]}: " + (mark if s.marks is not None else _fmt(v, s.unit))
            out.append(f'<circle class="point {escape(mark)}" cx="{x_of(i):.1f}" '
                       f'cy="{y_of(v):.1f}" r="{5 if s.marks is not None else 3}" '
                       f'fill="{_COLOURS.get(mark, _COLOURS["line"])}">'
                       f"<title>{escape(tip)}</title></circle>")
        out.append("</g>")
    if labels:
        out.append(f'<text x="{LEFT}" y="{height - 8}">{escape(labels[0])}</text>')
        if n > 1:
            out.append(f'<text x="{WIDTH - RIGHT}" y="{height - 8}" text-anchor="end">'
                       f"{escape(labels[-1])}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
