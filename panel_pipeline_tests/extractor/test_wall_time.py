"""Filter bounds as wall times: never inside the window they bound (the DST cases run against the
local server in test_surveygizmo_client.py)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from panel_pipeline.extractor.wall_time import lower_bound_wall_time, upper_bound_wall_time

UTC = dt.UTC
NEW_YORK = ZoneInfo("America/New_York")


def test_wall_time_bounds_never_cut_the_window() -> None:
    moment = dt.datetime(2024, 6, 3, 12, 0, 0, 500_000, tzinfo=UTC)
    assert lower_bound_wall_time(moment, NEW_YORK) == "2024-06-03 08:00:00"
    assert upper_bound_wall_time(moment, NEW_YORK) == "2024-06-03 08:00:01"
    assert lower_bound_wall_time(moment, ZoneInfo("UTC")) == "2024-06-03 12:00:00"


def test_bounds_in_the_repeated_autumn_hour_are_widened_by_it() -> None:
    first_0130 = dt.datetime(2024, 11, 3, 5, 30, tzinfo=UTC)  # 01:30 EDT; 01:30 EST comes an hour later
    assert lower_bound_wall_time(first_0130, NEW_YORK) == "2024-11-03 00:30:00"
    assert upper_bound_wall_time(first_0130 + dt.timedelta(hours=1), NEW_YORK) == "2024-11-03 02:30:00"
