"""A clock for tests: `ManualClock` is a `panel_pipeline.shared.clock.Clock` that moves only when
told (`advance`), or when the code under test sleeps (recorded in `sleeps`), so nothing waits."""

from __future__ import annotations

import datetime as dt
import threading


class ManualClock:
    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware (a Clock's now() is aware UTC)")
        self._now = start.astimezone(dt.UTC)
        self._elapsed = 0.0
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._elapsed

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)
            self._elapsed += seconds
