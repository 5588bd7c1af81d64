"""Filter bounds as SurveyGizmo reads them: suffix-less wall times in the account's zone.

Invariant: a lower bound is never later, and an upper bound never earlier, than the instant it
stands for, however the server reads the wall time. Sub-second instants round outwards, and a
bound in the repeated autumn hour (one wall time, two instants) is widened by that hour, so a
window is never cut; the client then keeps only the records inside the exact window. Pure.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

WALL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def lower_bound_wall_time(instant: dt.datetime, zone: ZoneInfo) -> str:
    """`instant` as a suffix-less wall time in `zone`, never later than it however it is read."""
    local = _floor_second(instant).astimezone(zone)
    if _is_ambiguous(local):
        local = local.replace(tzinfo=None) - dt.timedelta(hours=1)
    return local.strftime(WALL_TIME_FORMAT)


def upper_bound_wall_time(instant: dt.datetime, zone: ZoneInfo) -> str:
    """`instant` as a suffix-less wall time in `zone`, never earlier than it however it is read."""
    local = _ceil_second(instant).astimezone(zone)
    if _is_ambiguous(local):
        local = local.replace(tzinfo=None) + dt.timedelta(hours=1)
    return local.strftime(WALL_TIME_FORMAT)


def _is_ambiguous(local: dt.datetime) -> bool:
    """True in the repeated autumn hour, where one wall time names two instants."""
    return local.replace(fold=0).utcoffset() != local.replace(fold=1).utcoffset()


def _floor_second(instant: dt.datetime) -> dt.datetime:
    return instant.replace(microsecond=0)


def _ceil_second(instant: dt.datetime) -> dt.datetime:
    floored = instant.replace(microsecond=0)
    return floored if floored == instant else floored + dt.timedelta(seconds=1)
