"""A mailing's report: what SES said about its messages, counted per category and per hour, with
rates over the recipients sent, and a small hand-built SVG chart of those counts over time.

Invariants: a category is counted once per message (the feed stores each event once per message and
type, and counts it only when newly stored); `sent` comes from the ledger (`mail_log` rows `sent`),
never from events; rates are counts over `sent` (0.0 while nothing is sent). Hours are UTC, written
"YYYY-MM-DDTHH" (no dots: they are field names in Mongo). Pure logic, no Dagster, no Mongo.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

DELIVERED = "delivered"
BOUNCED_PERMANENT = "bounced_permanent"
BOUNCED_TRANSIENT = "bounced_transient"
BOUNCED_UNDETERMINED = "bounced_undetermined"
COMPLAINED = "complained"
REJECTED = "rejected"
RENDERING_FAILED = "rendering_failed"
DELIVERY_DELAYED = "delivery_delayed"
OPENED = "opened"
CLICKED = "clicked"
CATEGORIES = (
    DELIVERED,
    BOUNCED_PERMANENT,
    BOUNCED_TRANSIENT,
    BOUNCED_UNDETERMINED,
    COMPLAINED,
    REJECTED,
    RENDERING_FAILED,
    DELIVERY_DELAYED,
    OPENED,
    CLICKED,
)
_BY_EVENT_TYPE = {
    "delivery": DELIVERED,
    "complaint": COMPLAINED,
    "reject": REJECTED,
    "renderingfailure": RENDERING_FAILED,
    "deliverydelay": DELIVERY_DELAYED,
    "open": OPENED,
    "click": CLICKED,
}
_BY_BOUNCE_TYPE = {"permanent": BOUNCED_PERMANENT, "transient": BOUNCED_TRANSIENT}
HOUR_FORMAT = "%Y-%m-%dT%H"


def category_for(event_type: str, bounce_type: str | None = None) -> str | None:
    """The report category of an SES event type (either spelling: `Rendering Failure`, `DeliveryDelay`);
    None for events the report does not count (Send: `sent` is the ledger's)."""
    normalized = event_type.replace(" ", "").replace("_", "").lower()
    if normalized == "bounce":
        return _BY_BOUNCE_TYPE.get((bounce_type or "").lower(), BOUNCED_UNDETERMINED)
    return _BY_EVENT_TYPE.get(normalized)


def hour_of(moment: dt.datetime) -> str:
    utc = moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return utc.strftime(HOUR_FORMAT)


@dataclass(frozen=True)
class MailingReport:
    sent: int
    counts: Mapping[str, int] = field(default_factory=dict)
    hours: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # hour -> category -> count

    @classmethod
    def of(cls, sent: int, stored: Mapping[str, Any] | None) -> MailingReport:
        """The report from a `mailings` document's `report` (counts and hours as the feed writes them)."""
        counts = (stored or {}).get("counts") or {}
        hours = (stored or {}).get("hours") or {}
        return cls(sent, {c: int(counts.get(c, 0)) for c in CATEGORIES}, {h: dict(n) for h, n in sorted(hours.items())})

    def count(self, category: str) -> int:
        return int(self.counts.get(category, 0))

    def rates(self) -> dict[str, float]:
        """Each category over sent; `bounce_rate` is SES's (permanent bounces over sent)."""
        return {f"{category}_rate": self.rate(self.count(category)) for category in CATEGORIES}

    def rate(self, count: int) -> float:
        return round(count / self.sent, 6) if self.sent else 0.0


def report_chart_svg(report: MailingReport, width: int = 520, height: int = 200) -> str:
    """Cumulative counts per hour of the categories seen, one line each, with a legend."""
    seen = [c for c in CATEGORIES if report.count(c)]
    hours = _every_hour(list(report.hours))
    margin, legend_width = 30, 150
    plot_width, plot_height = width - legend_width - 2 * margin, height - 2 * margin
    highest = max([report.count(c) for c in seen] + [1])
    step = plot_width / max(len(hours) - 1, 1)
    lines: list[str] = []
    for index, category in enumerate(seen):
        colour = _PALETTE[index % len(_PALETTE)]
        total, points = 0, []
        for position, hour in enumerate(hours):
            total += int(report.hours.get(hour, {}).get(category, 0))
            x = margin + position * step
            y = margin + plot_height - total / highest * plot_height
            points.append(f"{x:.1f},{y:.1f}")
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>')
        legend_y = margin + 14 * index
        lines.append(
            f'<text x="{width - legend_width + 8}" y="{legend_y + 4}" fill="{colour}">'
            f"{escape(category)} {report.count(category)}</text>"
        )
    first, last = (hours[0], hours[-1]) if hours else ("", "")
    axes = (
        f'<line x1="{margin}" y1="{margin + plot_height}" x2="{margin + plot_width}" y2="{margin + plot_height}" '
        'stroke="#718096"/>'
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{margin + plot_height}" stroke="#718096"/>'
        f'<text x="{margin}" y="{height - 8}">{escape(first)}h</text>'
        f'<text x="{margin + plot_width}" y="{height - 8}" text-anchor="end">{escape(last)}h</text>'
        f'<text x="{margin - 4}" y="{margin}" text-anchor="end">{highest}</text>'
        f'<text x="{margin}" y="{margin - 10}">sent {report.sent}; events per hour, cumulative (UTC)</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">{axes}{"".join(lines)}</svg>'
    )


_PALETTE = (
    "#2b6cb0",
    "#c53030",
    "#dd6b20",
    "#6b46c1",
    "#2f855a",
    "#b7791f",
    "#4a5568",
    "#d53f8c",
    "#319795",
    "#718096",
)


def _every_hour(hours: list[str]) -> list[str]:
    """From the first hour to the last, those without events too, so the x axis is time."""
    if not hours:
        return []
    first, last = (dt.datetime.strptime(hour, HOUR_FORMAT) for hour in (min(hours), max(hours)))
    count = int((last - first) / dt.timedelta(hours=1)) + 1
    return [(first + dt.timedelta(hours=step)).strftime(HOUR_FORMAT) for step in range(count)]


MEMBER_PLACEHOLDER = "<member id>"


def who_got_what_query(mailing_id: str) -> str:
    """The mongosh query that answers "did member X get this mailing, and what happened to it"
    (docs/mailer.md, "Who got what"): the member's ledger row by its key (their user id, so no
    address is needed or shown), then its events by the row's batch and key (both indexed); it
    shows `{row, events}`, the row null when the member was never a recipient."""
    return (
        "const row = db.mail_log.findOne(\n"
        f'  {{mailing_id: ObjectId("{mailing_id}"), recipient_key: "{MEMBER_PLACEHOLDER}"}},\n'
        "  {status: 1, error: 1, sent_at: 1, ses_message_id: 1, batch_id: 1, recipient_key: 1, mailing_id: 1});\n"
        "({row, events: row ? db.mail_events.find(\n"
        "  {mailing_id: row.mailing_id, batch_id: row.batch_id, recipient_key: row.recipient_key},\n"
        "  {event_type: 1, bounce_type: 1, error: 1, event_at: 1}).sort({event_at: 1}).toArray() : []});"
    )
