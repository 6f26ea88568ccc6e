"""The SVG charts `history --plot` and the benchmarks draw: valid XML, the same bytes for the
same values, one mark per point."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from builder.svg import Series, chart

NS = "{http://www.w3.org/2000/svg}"


def test_a_chart_holds_one_mark_per_point_and_skips_missing_values() -> None:
    series = [Series("verdict", [1.0, 1.0, 1.0], marks=["ok", "bad", "ok"]),
              Series("time", [2.0, 0.5, 1.0], "s"),
              Series("metric <loss> & more", [None, 0.3, 0.3])]
    text = chart("r: 3 verifications", ["a", "b", "c"], series)
    root = ET.fromstring(text)
    assert root.tag == f"{NS}svg"
    panels = [g for g in root if g.tag == f"{NS}g"]
    assert [g.get("data-series") for g in panels] == [s.title for s in series]
    marks = [[c.get("class") for c in g if c.tag == f"{NS}circle"] for g in panels]
    assert marks == [["point ok", "point bad", "point ok"], ["point line"] * 3,
                     ["point line"] * 2]
    line = panels[1].find(f"{NS}polyline")
    assert line is not None and len(line.get("points", "").split()) == 3
    assert chart("r: 3 verifications", ["a", "b", "c"], series) == text  # same bytes


def test_a_single_point_and_no_points_still_draw() -> None:
    assert ET.fromstring(chart("one", ["a"], [Series("t", [1.0])])) is not None
    empty = ET.fromstring(chart("none", [], [Series("t", [])]))
    assert empty.find(f"{NS}g/{NS}circle") is None
