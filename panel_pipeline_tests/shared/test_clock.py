"""The fieldwork clocks: durations between stored wall times, read as fieldwork hours."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from panel_pipeline.shared.clock import (
    REAL_TIME,
    FieldworkStep,
    ScaledFieldworkClock,
    SteppedFieldworkClock,
    wall_hours,
)

T0 = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)


def seconds(n: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=n)


def test_wall_hours_reads_datetimes_naive_ones_as_utc_and_missing_ones_as_nan() -> None:
    hours = wall_hours([T0, T0.replace(tzinfo=None), None])
    assert hours[0] == hours[1] == pd.Timestamp(T0).timestamp() / 3600 and np.isnan(hours[2])
    assert wall_hours(pd.Series([T0, pd.NaT])).shape == (2,)
    assert wall_hours(np.array([np.datetime64("1970-01-01T02:00")], dtype="datetime64[ns]")).tolist() == [2.0]


def test_a_scaled_clock_runs_its_scale_times_faster_than_wall_time() -> None:
    hourly = ScaledFieldworkClock(3600)
    assert hourly.hours_since([seconds(-48), None], T0)[0] == pytest.approx(48)
    assert hourly.wall_after(T0, 48, T0) == seconds(48)
    assert REAL_TIME.hours_since([T0 - dt.timedelta(hours=2)], T0).tolist() == [2.0]
    with pytest.raises(ValueError, match="scale"):
        ScaledFieldworkClock(0)


def test_a_stepped_clock_stands_still_between_steps_and_reads_0_before_the_first() -> None:
    clock = SteppedFieldworkClock((FieldworkStep(seconds(10), 24.0), FieldworkStep(seconds(40), 48.0)), pace=3600)
    assert clock.hours_at([seconds(0), seconds(10), seconds(39), seconds(40), None])[:4].tolist() == [0, 24, 24, 48]
    assert clock.hours_since([seconds(12)], seconds(1000)).tolist() == [24.0], "wall time alone moves nothing"
    # 24 h after a time read 0 passed at the first step; 30 h after it have not passed yet.
    assert clock.wall_after(seconds(5), 24, seconds(50)) == seconds(10)
    assert clock.wall_after(seconds(5), 30, seconds(50)) == seconds(40)
    assert clock.wall_after(seconds(20), 30, seconds(50)) > seconds(50)


def test_a_stepped_clock_refuses_steps_that_do_not_move_on() -> None:
    with pytest.raises(ValueError, match="move on"):
        SteppedFieldworkClock((FieldworkStep(seconds(10), 24.0), FieldworkStep(seconds(5), 48.0)))
    with pytest.raises(ValueError, match="move on"):
        SteppedFieldworkClock((FieldworkStep(seconds(10), 24.0), FieldworkStep(seconds(20), 24.0)))
