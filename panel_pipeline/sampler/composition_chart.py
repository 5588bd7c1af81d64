"""Target-versus-achieved composition chart as a small hand-built SVG (no plotting dependency).

One row per target category: a grey bar for the target share, a thin coloured bar for the
achieved share (blue within tolerance, red outside), and the deviation in pp. Shown in the UI
through `shared.metadata.markdown_image` (a data URI in markdown metadata).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from panel_pipeline.sampler.quotas import CategoryReport

ROW_HEIGHT = 16
HEADER_HEIGHT = 20
LABEL_WIDTH = 190
BAR_WIDTH = 260
VALUE_WIDTH = 120
WITHIN_TOLERANCE = "#2b6cb0"
OUTSIDE_TOLERANCE = "#c53030"
TARGET_FILL = "#cbd5e0"


def composition_svg(categories: Sequence[CategoryReport], tolerance_pp: float) -> str:
    """An SVG document comparing target and achieved shares for every category."""
    scale = BAR_WIDTH / max([max(report.target_pct, report.achieved_pct) for report in categories] + [1.0])
    rows: list[str] = []
    y = 0
    current_target = None
    for report in categories:
        if report.target != current_target:
            current_target = report.target
            y += HEADER_HEIGHT
            rows.append(f'<text x="4" y="{y - 5}" font-weight="bold">{escape(report.target)}</text>')
        rows.append(_row(report, y, scale, tolerance_pp))
        y += ROW_HEIGHT
    width = LABEL_WIDTH + BAR_WIDTH + VALUE_WIDTH
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 4}" '
        f'font-family="sans-serif" font-size="11">{"".join(rows)}</svg>'
    )


def _row(report: CategoryReport, y: int, scale: float, tolerance_pp: float) -> str:
    colour = WITHIN_TOLERANCE if abs(report.deviation_pp) <= tolerance_pp else OUTSIDE_TOLERANCE
    middle = y + ROW_HEIGHT / 2
    return (
        f'<text x="{LABEL_WIDTH - 6}" y="{middle + 4}" text-anchor="end">{escape(report.category)}</text>'
        f'<rect x="{LABEL_WIDTH}" y="{y + 2}" width="{report.target_pct * scale:.1f}" '
        f'height="{ROW_HEIGHT - 4}" fill="{TARGET_FILL}"/>'
        f'<rect x="{LABEL_WIDTH}" y="{middle - 2}" width="{report.achieved_pct * scale:.1f}" '
        f'height="4" fill="{colour}"/>'
        f'<text x="{LABEL_WIDTH + BAR_WIDTH + 6}" y="{middle + 4}" fill="{colour}">'
        f"{report.achieved_pct:.1f}% vs {report.target_pct:.1f}% ({report.deviation_pp:+.2f})</text>"
    )
