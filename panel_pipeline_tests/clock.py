"""The one fake clock the tests drive: time moves only when a test advances it or code sleeps.

Implements panel_pipeline.shared.clock.Clock: `now()` is aware UTC (`start` plus the time advanced),
`monotonic()` the seconds advanced, and `sleep(seconds)` records the sleep and advances, so code
that backs off or paces itself runs instantly.
"""

from __future__ import annotations

import datetime as dt
import threading


class ManualClock:
    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._start = start.astimezone(dt.UTC)
        self._elapsed = 0.0
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._elapsed += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._elapsed += seconds
