"""Fieldwork and response-rate charts as small hand-built SVGs, shown through
`shared.metadata.markdown_image` (composition_chart.py's way: no plotting dependency). Pure: no Mongo, no Dagster.

Invariants: each chart's size is bounded whatever the sample's size (a cell's line is sampled on
GRID_POINTS times, not drawn per complete), every label passes through `html.escape`, and a chart
of nothing (no cells, no rates) is still a valid SVG saying so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import pandas as pd

from panel_pipeline.sampler.response_rates import CellRate, CompletionCurve

GRID_POINTS = 32  # times each cell's cumulative completes are sampled at (the chart is stored with every pass)
PANELS_PER_ROW = 4
PANEL_WIDTH = 170
PANEL_HEIGHT = 70
PLOT_TOP = 16  # the panel's title line above its plot
PLOT_BOTTOM = 6
HEADER_HEIGHT = 20
ROW_HEIGHT = 16
LABEL_WIDTH = 150
BAR_WIDTH = 240
CURVE_WIDTH = 420
CURVE_HEIGHT = 180
MARGIN = 30
OPEN_LINE = "#2b6cb0"
FULL_LINE = "#2f855a"
TARGET_LINE = "#a0aec0"
RAW_MARK = "#c53030"
BAR_FILL = "#90cdf4"


@dataclass(frozen=True)
class CellSeries:
    """One cell's completes over time: its target completes and its completers' completion times (sorted)."""

    target: str
    category: str
    target_completes: int
    completed_at: tuple[dt.datetime, ...]


def cell_series(
    cells: pd.DataFrame, categories: pd.DataFrame, completed_at: Mapping[str, dt.datetime]
) -> list[CellSeries]:
    """Per cell (`cells`: target, category, target_completes), the completion times of the completers
    (`completed_at`, by user id) whose category for that target (`categories`: fieldwork.member_categories,
    indexed by user id) is the cell's."""
    completers = categories.loc[[uid for uid in completed_at if uid in categories.index]]
    series = []
    for target, category, wanted in zip(cells["target"], cells["category"], cells["target_completes"], strict=True):
        in_cell = completers.index[completers[target] == category] if target in completers else []
        times = tuple(sorted(completed_at[uid] for uid in in_cell))
        series.append(CellSeries(str(target), str(category), int(wanted), times))
    return series


def cumulative_counts(times: Sequence[dt.datetime], grid: Sequence[dt.datetime]) -> np.ndarray:
    """How many of `times` (sorted) fall at or before each time of `grid`."""
    stamps = np.array([pd.Timestamp(t).value for t in times], dtype=np.int64)
    points = np.array([pd.Timestamp(t).value for t in grid], dtype=np.int64)
    return np.searchsorted(stamps, points, side="right")


def time_grid(start: dt.datetime, end: dt.datetime, points: int = GRID_POINTS) -> list[dt.datetime]:
    """`points` evenly spaced times from `start` to `end` (both included; end at least start)."""
    end = max(end, start)
    step = (end - start) / (points - 1)
    return [start + step * i for i in range(points)]


def completes_over_time_svg(series: Sequence[CellSeries], start: dt.datetime, end: dt.datetime) -> str:
    """Small multiples, one panel per cell grouped by target: cumulative completes from `start` to
    `end` (blue while short of target, green once there) against the cell's target (dashed)."""
    grid = time_grid(start, end)
    parts = [
        f'<text x="4" y="12">completes per cell against target, {escape(_day(start))} to {escape(_day(end))}</text>'
    ]
    y = HEADER_HEIGHT
    for target in dict.fromkeys(cell.target for cell in series):
        cells = [cell for cell in series if cell.target == target]
        y += HEADER_HEIGHT
        parts.append(f'<text x="4" y="{y - 5}" font-weight="bold">{escape(target)}</text>')
        for index, cell in enumerate(cells):
            row, column = divmod(index, PANELS_PER_ROW)
            parts.append(
                _panel(cell, cumulative_counts(cell.completed_at, grid), column * PANEL_WIDTH, y + row * PANEL_HEIGHT)
            )
        y += PANEL_HEIGHT * -(-len(cells) // PANELS_PER_ROW)
    if not series:
        parts.append(f'<text x="4" y="{y + 14}">no cells</text>')
        y += ROW_HEIGHT
    return _svg(PANEL_WIDTH * PANELS_PER_ROW, y + 4, parts)


def _panel(cell: CellSeries, counts: np.ndarray, x: float, y: float) -> str:
    done = int(counts[-1]) if len(counts) else 0
    top, bottom = y + PLOT_TOP, y + PANEL_HEIGHT - PLOT_BOTTOM
    left, right = x + 6, x + PANEL_WIDTH - 10
    highest = max(cell.target_completes, done, 1) * 1.1

    def y_of(count: float) -> float:
        return bottom - (bottom - top) * count / highest

    xs = np.linspace(left, right, len(counts))
    line = " ".join(f"{px:.0f},{y_of(c):.0f}" for px, c in zip(xs, counts, strict=True))
    colour = FULL_LINE if done >= cell.target_completes else OPEN_LINE
    target_y = y_of(cell.target_completes)
    return (
        f'<text x="{left}" y="{y + 11}">{escape(cell.category)}</text>'
        f'<text x="{right}" y="{y + 11}" text-anchor="end" fill="{colour}">{done}/{cell.target_completes}</text>'
        f'<path d="M{left} {bottom}H{right}" stroke="#e2e8f0"/>'
        f'<path d="M{left} {target_y:.0f}H{right}" stroke="{TARGET_LINE}" stroke-dasharray="4 3"/>'
        f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
    )


def rates_svg(cells: Sequence[CellRate], overall_rate: float) -> str:
    """One row per cell, grouped by dimension: the shrunk rate (bar), the raw rate (red tick) and
    the overall rate (dashed line), with the invitations the cell was learned from."""
    scale = BAR_WIDTH / max([max(cell.rate, cell.raw_rate) for cell in cells] + [overall_rate, 0.01])
    overall_x = LABEL_WIDTH + overall_rate * scale
    parts: list[str] = []
    y = 0
    for dimension in dict.fromkeys(cell.dimension for cell in cells):
        y += HEADER_HEIGHT
        parts.append(f'<text x="4" y="{y - 5}" font-weight="bold">{escape(dimension)}</text>')
        for cell in (cell for cell in cells if cell.dimension == dimension):
            parts.append(_rate_row(cell, y, scale))
            y += ROW_HEIGHT
    if not cells:
        parts.append(f'<text x="4" y="{y + 14}">no invitations learned from yet</text>')
        y += ROW_HEIGHT
    parts.append(
        f'<line x1="{overall_x:.1f}" y1="0" x2="{overall_x:.1f}" y2="{y}" stroke="{TARGET_LINE}" '
        'stroke-dasharray="4 3"/>'
    )
    return _svg(LABEL_WIDTH + BAR_WIDTH + 200, y + 4, parts)


def _rate_row(cell: CellRate, y: float, scale: float) -> str:
    middle = y + ROW_HEIGHT / 2
    raw_x = LABEL_WIDTH + cell.raw_rate * scale
    return (
        f'<text x="{LABEL_WIDTH - 6}" y="{middle + 4}" text-anchor="end">{escape(cell.cell)}</text>'
        f'<rect x="{LABEL_WIDTH}" y="{y + 3}" width="{cell.rate * scale:.1f}" height="{ROW_HEIGHT - 6}" '
        f'fill="{BAR_FILL}"/>'
        f'<line x1="{raw_x:.1f}" y1="{y + 1}" x2="{raw_x:.1f}" y2="{y + ROW_HEIGHT - 1}" stroke="{RAW_MARK}"/>'
        f'<text x="{LABEL_WIDTH + BAR_WIDTH + 6}" y="{middle + 4}">'
        f"{100 * cell.rate:.1f}% (raw {100 * cell.raw_rate:.1f}%, {cell.invitations} inv.)</text>"
    )


def completion_curve_svg(curve: CompletionCurve) -> str:
    """The share of eventual completes in by each hour since invitation (0 to 100%), points marked."""
    hours = np.array((0, *curve.hours), dtype=float)
    shares = np.array((0.0, *curve.shares), dtype=float)
    left, top = MARGIN + 10, MARGIN / 2
    width, height = CURVE_WIDTH - left - MARGIN, CURVE_HEIGHT - top - MARGIN
    xs = left + width * hours / max(hours[-1], 1.0)
    ys = top + height * (1.0 - np.clip(shares, 0.0, 1.0))
    parts = [
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#e2e8f0"/>',
        f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))}" '
        f'fill="none" stroke="{OPEN_LINE}" stroke-width="1.5"/>',
        *(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{OPEN_LINE}"/>' for x, y in zip(xs, ys, strict=True)),
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">100%</text>',
        f'<text x="{left - 4}" y="{top + height}" text-anchor="end">0</text>',
        f'<text x="{left + width}" y="{top + height + 14}" text-anchor="end">{int(hours[-1])} h</text>',
        f'<text x="{left + width / 2}" y="{top + height + 27}" text-anchor="middle">hours since invitation '
        f"(from {curve.fully_observed_invitations} fully observed invitations)</text>",
    ]
    return _svg(CURVE_WIDTH, CURVE_HEIGHT, parts)


def _svg(width: float, height: float, parts: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'font-family="sans-serif" font-size="11">{"".join(parts)}</svg>'
    )


def _day(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")
