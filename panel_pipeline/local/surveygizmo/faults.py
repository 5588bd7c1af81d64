"""Faults the local SurveyGizmo server answers with, injected at runtime.

`server.inject(throttled(3))`, `inject(cdn_error())`, `inject(slow(2.0))`, `inject(please_wait())`,
`inject(result_not_ok(...))`, `inject(truncated())`, `inject(dropped_rows(2))`; an outage of list
calls (`server.outage = Outage(days=...)`); and faults at random (`server.random_faults =
RandomFaults(rate=0.05)`: 429s and 5xx on that share of requests, reproducibly).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

UTC = dt.UTC
RATE_LIMITED = "You have exceeded your requests per minute, see /help/api-request-limits for more details"
PLEASE_WAIT = "Please wait for other requests to complete."
CDN_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} | alchemer.com</title></head>"
    "<body><h1>Error {status}</h1><p>Origin is unreachable.</p></body></html>"
)


@dataclass
class Fault:
    """An answer given instead of (or, for `delay`/`truncate`, on top of) the normal one."""

    status: int | None = None
    body: Any = None
    content_type: str = "application/json"
    delay: float = 0.0
    truncate: bool = False
    times: int = 1
    path_contains: str = ""
    retry_after: str | None = None
    drop_rows: int = 0


def throttled(times: int = 1, retry_after: str | None = None) -> Fault:
    return Fault(429, {"result_ok": False, "code": 429, "message": RATE_LIMITED}, times=times, retry_after=retry_after)


def please_wait(times: int = 1, status: int = 400) -> Fault:
    return Fault(status, {"result_ok": False, "code": status, "message": PLEASE_WAIT}, times=times)


def server_error(status: int = 500, times: int = 1) -> Fault:
    return Fault(status, {"result_ok": False, "code": status, "message": "Internal server error"}, times=times)


def cdn_error(status: int = 522, times: int = 1) -> Fault:
    return Fault(status, CDN_PAGE.format(status=status), "text/html", times=times)


def maintenance_page(times: int = 1) -> Fault:
    return Fault(200, "<html><body>Down for scheduled maintenance</body></html>", "text/html", times=times)


def result_not_ok(
    code: int | None = 500, message: str = "Unexpected error", http_status: int = 200, times: int = 1
) -> Fault:
    body: dict[str, Any] = {"result_ok": False, "message": message}
    if code is not None:
        body["code"] = code
    return Fault(http_status, body, times=times)


def slow(seconds: float, times: int = 1) -> Fault:
    return Fault(delay=seconds, times=times)


def truncated(times: int = 1) -> Fault:
    return Fault(truncate=True, times=times)


def dropped_rows(rows: int = 1, times: int = 1) -> Fault:
    """A list page missing its last `rows` rows while its totals still count them: a lossy answer."""
    return Fault(drop_rows=rows, times=times, path_contains="surveyresponse")


class RandomFaults:
    """Each request fails with probability `rate`: a 429 throttle or a 5xx server error, drawn from
    `statuses` by a seeded generator, so a run's faults are reproducible."""

    def __init__(self, rate: float, statuses: tuple[int, ...] = (429, 500, 502, 503), seed: int = 0) -> None:
        self.rate = rate
        self.statuses = statuses
        self.answered = 0
        self._rng = random.Random(seed)

    def draw(self) -> Fault | None:
        if self._rng.random() >= self.rate:
            return None
        self.answered += 1
        status = self._rng.choice(self.statuses)
        return throttled() if status == 429 else server_error(status)


@dataclass
class Outage:
    """List calls fail with `status` while the server clock is in [start, end), or when their
    `date_submitted` window touches one of `days` (account-zone days), e.g. to fail one backfill day."""

    days: frozenset[dt.date] = frozenset()
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    status: int = 503

    def covers(self, now: dt.datetime, window: tuple[dt.datetime | None, dt.datetime | None], zone: ZoneInfo) -> bool:
        """Whether a list call at `now` over `window` (either end open when None) fails."""
        if self.start is not None and self.end is not None and self.start <= now < self.end:
            return True
        low, high = window
        for day in self.days:
            day_start = dt.datetime.combine(day, dt.time(), zone).astimezone(UTC)
            day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone).astimezone(UTC)
            if (low is None or low < day_end) and (high is None or high > day_start):
                return True
        return False
