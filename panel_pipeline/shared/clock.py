"""The clocks every part reads: wall time for what is stored, a monotonic time for pacing, and
fieldwork time for the durations of fieldwork.

Code that stores a time or paces itself takes a `Clock` (default `SYSTEM_CLOCK`), so a test can
drive time by hand instead of waiting. `now()` is always timezone-aware UTC: Mongo stores UTC and
the pipeline compares stored times with it.

Fieldwork durations (hours to a reminder, the time-to-complete curve, the default length of
fieldwork) are measured on a `FieldworkClock`, which maps each stored wall time to the fieldwork
hours passed by then. Invariants:

- Every stored time stays wall time; only durations between them are read on the fieldwork clock,
  so one mapping (`hours_at`) converts every rule's duration the same way.
- `ScaledFieldworkClock(1)` is real time (production); `ScaledFieldworkClock(3600)` runs an hour a
  second (the local run, beside its respondent simulator).
- `SteppedFieldworkClock` stands still between steps, and a step moves it on at once: a test steps
  it only once the pipeline has settled, so what a fieldwork pass decides at a given fieldwork hour
  does not depend on how fast the machine is. Its steps are wall times with the hours reached then,
  both increasing; before the first step it reads 0.
No Dagster, no Mongo.
"""

from __future__ import annotations

import abc
import bisect
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd


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


EPOCH = pd.Timestamp(0, tz="UTC")
HOUR = pd.Timedelta(hours=1)


def wall_hours(instants: Any) -> np.ndarray:
    """Hours since the Unix epoch of a wall time or of each of a sequence of them (datetimes, naive
    ones UTC, or datetime64), as floats; NaN where one is missing (None, NaT)."""
    if isinstance(instants, dt.datetime):
        instants = [instants]
    times = pd.to_datetime(pd.Series(instants, dtype=object if isinstance(instants, list) else None), utc=True)
    return ((times - EPOCH) / HOUR).to_numpy(dtype=float, na_value=np.nan)


class FieldworkClock(abc.ABC):
    """How many fieldwork hours had passed at each wall time (from an origin of the clock's own)."""

    @abc.abstractmethod
    def hours_at(self, instants: Any) -> np.ndarray:
        """The fieldwork hours at each wall time (`wall_hours`' arguments); NaN where one is missing."""

    @abc.abstractmethod
    def wall_after(self, start: dt.datetime, hours: float, now: dt.datetime) -> dt.datetime:
        """When `hours` fieldwork hours after the wall time `start` have passed: at or before `now`
        if they have, else after `now` (an estimate, at the clock's pace)."""

    def hours_since(self, instants: Any, now: dt.datetime) -> np.ndarray:
        """The fieldwork hours from each wall time to `now` (NaN where one is missing)."""
        return self.hours_at(now)[0] - self.hours_at(instants)


@dataclass(frozen=True)
class ScaledFieldworkClock(FieldworkClock):
    """Fieldwork time running `scale` times faster than wall time."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"a fieldwork clock's scale must be a positive number, got {self.scale}")

    def hours_at(self, instants: Any) -> np.ndarray:
        return wall_hours(instants) * self.scale

    def wall_after(self, start: dt.datetime, hours: float, now: dt.datetime) -> dt.datetime:
        return start + dt.timedelta(hours=hours / self.scale)


REAL_TIME = ScaledFieldworkClock(1.0)


@dataclass(frozen=True)
class FieldworkStep:
    """At wall time `at`, the stepped clock moved on to `hours` fieldwork hours."""

    at: dt.datetime
    hours: float


@dataclass(frozen=True)
class SteppedFieldworkClock(FieldworkClock):
    """Fieldwork time that stands still between `steps`; `pace` (fieldwork hours per wall hour) is
    only for estimating when hours still to come will have passed."""

    steps: Sequence[FieldworkStep] = ()
    pace: float = 1.0

    def __post_init__(self) -> None:
        walls, hours = wall_hours([s.at for s in self.steps]), [s.hours for s in self.steps]
        if np.any(np.diff(walls) < 0) or np.any(np.diff(hours) <= 0) or (hours and hours[0] <= 0):
            raise ValueError("a stepped fieldwork clock's steps must move on in wall time and in hours")

    def hours_at(self, instants: Any) -> np.ndarray:
        walls = wall_hours(instants)
        step_walls = wall_hours([step.at for step in self.steps])
        reached = np.append(0.0, [step.hours for step in self.steps])
        hours = reached[np.searchsorted(step_walls, np.nan_to_num(walls), side="right")]
        return np.where(np.isnan(walls), np.nan, hours)

    def wall_after(self, start: dt.datetime, hours: float, now: dt.datetime) -> dt.datetime:
        wanted = float(self.hours_at(start)[0]) + hours
        reached = [step.hours for step in self.steps]
        index = bisect.bisect_left(reached, wanted - 1e-9)
        if index < len(self.steps):
            return max(start, self.steps[index].at)
        return now + dt.timedelta(hours=max(wanted - float(self.hours_at(now)[0]), 0.0) / self.pace + 1e-6)
