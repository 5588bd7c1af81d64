"""The one clock every part reads: wall time for what is stored, a monotonic time for pacing.

Code that stores a time or paces itself takes a `Clock` (default `SYSTEM_CLOCK`), so a test can
drive time by hand instead of waiting. `now()` is always timezone-aware UTC: Mongo stores UTC and
the pipeline compares stored times with it. No Dagster, no Mongo.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals, not for storing)."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def utc_now() -> dt.datetime:
    return SYSTEM_CLOCK.now()
