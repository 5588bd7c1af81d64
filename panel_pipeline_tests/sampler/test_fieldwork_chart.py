"""The fieldwork and response-rate charts: well-formed SVG of a bounded size, a panel or row per cell."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ElementTree

import numpy as np
import pandas as pd

from panel_pipeline.sampler.fieldwork_chart import (
    GRID_POINTS,
    CellSeries,
    cell_series,
    completes_over_time_svg,
    completion_curve_svg,
    cumulative_counts,
    rates_svg,
    time_grid,
)
from panel_pipeline.sampler.response_rates import CellRate, CompletionCurve

SVG = "{http://www.w3.org/2000/svg}"
START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def texts(svg: str) -> list[str]:
    return [element.text or "" for element in ElementTree.fromstring(svg).iter(f"{SVG}text")]


def test_cell_series_counts_each_completer_in_each_of_their_cells():
    cells = pd.DataFrame(
        {
            "target": ["gender", "gender", "region"],
            "category": ["female", "male", "Wales"],
            "target_completes": [2, 2, 1],
        }
    )
    categories = pd.DataFrame(
        {"gender": ["female", "male", "female", None], "region": ["Wales", None, "Wales", "Wales"]},
        index=["a", "b", "c", "d"],
    )
    at = {uid: START + dt.timedelta(hours=i) for i, uid in enumerate(["c", "a", "d"])}  # b has not completed
    series = {(s.target, s.category): s for s in cell_series(cells, categories, at)}
    assert series[("gender", "female")].completed_at == (at["c"], at["a"])  # sorted
    assert series[("gender", "male")].completed_at == ()
    assert len(series[("region", "Wales")].completed_at) == 3
    assert series[("gender", "female")].target_completes == 2


def test_cumulative_counts_on_the_grid():
    grid = time_grid(START, START + dt.timedelta(hours=10), points=11)
    times = [START + dt.timedelta(hours=h) for h in (0, 2.5, 2.5, 9)]
    assert list(cumulative_counts(times, grid)) == [1, 1, 1, 3, 3, 3, 3, 3, 3, 4, 4]
    assert list(cumulative_counts([], grid)) == [0] * 11
    assert time_grid(START, START - dt.timedelta(hours=1), points=3) == [START] * 3  # an end before the start


def test_completes_chart_has_a_panel_per_cell_and_its_size_does_not_grow_with_completes():
    def chart(completes: int) -> str:
        times = tuple(START + dt.timedelta(seconds=i) for i in range(completes))
        series = [
            CellSeries("age_band|gender", "18-24|female", 40, times),
            CellSeries("age_band|gender", "18-24|male", 40, times[:10]),
            CellSeries("region", "Wales & <the> Marches", 5, ()),
        ]
        return completes_over_time_svg(series, START, START + dt.timedelta(days=2))

    small, large = chart(50), chart(5000)
    assert len(large) < 1.05 * len(small)  # a hundred times the completes, the same drawing
    root = ElementTree.fromstring(large)
    lines = list(root.iter(f"{SVG}polyline"))
    assert len(lines) == 3 and all(len(line.get("points", "").split()) == GRID_POINTS for line in lines)
    labels = texts(large)
    assert {"age_band|gender", "region", "18-24|female", "Wales & <the> Marches", "0/5", "5000/40"} <= set(labels)
    assert "#2f855a" in large  # the full cell is drawn green
    assert "no cells" in texts(completes_over_time_svg([], START, START))


def test_rates_chart_has_a_row_per_cell_and_the_curve_a_point_per_hour():
    cells = [
        CellRate("region", "London", 400, 380.0, 40, 0.105, 0.11, 0.9),
        CellRate("region", "Wales", 5, 5.0, 0, 0.0, 0.14, 1.0),
        CellRate("social_grade", "AB", 100, 100.0, 20, 0.2, 0.18, 1.2),
    ]
    svg = rates_svg(cells, overall_rate=0.15)
    assert {"region", "social_grade", "London", "Wales", "AB"} <= set(texts(svg))
    assert len(list(ElementTree.fromstring(svg).iter(f"{SVG}rect"))) == 3
    assert "no invitations learned from yet" in texts(rates_svg([], 0.0))

    curve = CompletionCurve(hours=(1, 24, 168), shares=(0.1, 0.7, 1.0), fully_observed_invitations=900)
    root = ElementTree.fromstring(completion_curve_svg(curve))
    assert len(list(root.iter(f"{SVG}circle"))) == 4  # 0 h and the three points
    ys = [float(c.get("cy", "nan")) for c in root.iter(f"{SVG}circle")]
    assert np.all(np.diff(ys) < 0)  # rising shares are drawn upwards
