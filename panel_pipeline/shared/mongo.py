"""Small helpers for values and writes that come from or go to Mongo, used by every part. No Dagster.

Invariants: a datetime read back from Mongo is naive UTC unless the client was made `tz_aware`;
`as_utc` makes both kinds comparable with `clock.utc_now()`. `insert_missing` is how a part writes
documents a unique index may already hold: a duplicate is skipped, any other write error raised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000  # Mongo's error code for a write a unique index refused


def as_utc(moment: dt.datetime) -> dt.datetime:
    """`moment` as an aware UTC datetime (a naive one is taken to be UTC, as Mongo stores it)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def object_id_or_none(value: Any) -> ObjectId | None:
    """The ObjectId `value` (an ObjectId or its 24 hex digits, spaces trimmed) names, or None."""
    if isinstance(value, ObjectId):
        return value
    try:
        return ObjectId(str(value).strip()) if value else None
    except (InvalidId, TypeError):
        return None


def insert_missing(collection: Collection, documents: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert documents, unordered; those a unique index already holds are skipped. Returns the
    indexes (into `documents`) of the skipped ones; any other write error is raised."""
    if not documents:
        return []
    try:
        collection.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise
        return [error["index"] for error in errors]
    return []
