"""Small helpers for values that come from or go to Mongo, used by every part. No Dagster.

Invariant: a datetime read back from Mongo is naive UTC unless the client was made `tz_aware`;
`as_utc` makes both kinds comparable with `clock.utc_now()`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId


def as_utc(moment: dt.datetime) -> dt.datetime:
    """`moment` as an aware UTC datetime (a naive one is taken to be UTC, as Mongo stores it)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def object_id_or_none(value: Any) -> ObjectId | None:
    """The ObjectId `value` (an ObjectId or its 24 hex digits, spaces trimmed) names, or None."""
    if isinstance(value, ObjectId):
        return value
    try:
        return ObjectId(str(value).strip()) if value else None
    except (InvalidId, TypeError):
        return None
