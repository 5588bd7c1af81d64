"""The Sampler's reads and writes in Mongo: the eligible panel, exclusions, and sample members."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from bson import ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.database import Database

from panel_pipeline.sampler.requests import (
    PROFILE_CATEGORIES,
    SampleRequest,
    mongo_filter,
)

PROFILE_FIELDS = (*PROFILE_CATEGORIES, "birth_year", "age")


def ensure_indexes(db: Database) -> None:
    db.sample_members.create_index([("sample_id", ASCENDING), ("user_id", ASCENDING)], unique=True)
    db.sample_members.create_index([("mailing_id", ASCENDING)], sparse=True)
    db.sample_members.create_index([("invited_at", ASCENDING)], sparse=True)
    db.sample_members.create_index([("user_id", ASCENDING), ("invited_at", ASCENDING)])
    db.transactions.create_index([("survey_id", ASCENDING), ("user_id", ASCENDING)])


def profiles_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per user (index = user id as str), the profile fields as columns."""
    rows = [{name: (doc.get("profile") or {}).get(name) for name in PROFILE_FIELDS} for doc in docs]
    return pd.DataFrame(rows, index=[str(doc["_id"]) for doc in docs], columns=list(PROFILE_FIELDS))


def load_panel(db: Database, request: SampleRequest, as_of_year: int) -> pd.DataFrame:
    """Active members matching the request's filters, in `_id` order (so a seed replays the draw)."""
    projection = {f"profile.{name}": 1 for name in PROFILE_FIELDS}
    docs = db.users.find(mongo_filter(request, as_of_year), projection).sort("_id", ASCENDING)
    return profiles_frame(list(docs))


def excluded_user_ids(
    db: Database, request: SampleRequest, now: dt.datetime, among: Iterable[str] | None = None
) -> set[str]:
    """Members the request leaves out: invited to anything lately, or done with the given surveys.
    `among` limits the look-up to those members (the Updater's changed members)."""
    scope = {} if among is None else {"user_id": {"$in": [ObjectId(user_id) for user_id in among]}}
    excluded: set[ObjectId] = set()
    if request.exclude.invited_within_days is not None:
        since = now - dt.timedelta(days=request.exclude.invited_within_days)
        excluded.update(db.sample_members.distinct("user_id", {**scope, "invited_at": {"$gte": since}}))
    if request.exclude.completed_surveys:
        surveys = list(request.exclude.completed_surveys)
        excluded.update(db.transactions.distinct("user_id", {**scope, "survey_id": {"$in": surveys + _as_ints(surveys)}}))
    return {str(user_id) for user_id in excluded}


def _as_ints(values: Iterable[str]) -> list[int]:
    return [int(value) for value in values if value.isdigit()]


def eligibility(panel: pd.DataFrame, excluded: set[str]) -> np.ndarray:
    return ~panel.index.isin(list(excluded))


def kept_members(db: Database, sample_id: ObjectId) -> set[str]:
    """Members a re-draw must not touch: invited, or named by an invitation already queued."""
    query = {"sample_id": sample_id, "$or": [{"invited_at": {"$ne": None}}, {"mailing_id": {"$exists": True}}]}
    return {str(doc["user_id"]) for doc in db.sample_members.find(query, {"user_id": 1})}


def replace_members(db: Database, sample_id: ObjectId, user_ids: Sequence[str], now: dt.datetime) -> dict[str, int]:
    """Make the sample's members `user_ids` plus the kept ones: idempotent, and never touching
    members already invited or queued for an invitation."""
    wanted = [ObjectId(uid) for uid in user_ids]
    removed = db.sample_members.delete_many(
        {
            "sample_id": sample_id,
            "user_id": {"$nin": wanted},
            "invited_at": None,
            "mailing_id": {"$exists": False},
        }
    ).deleted_count
    upserts = [
        UpdateOne(
            {"sample_id": sample_id, "user_id": user_id},
            {"$setOnInsert": {"added_at": now, "invited_at": None, "source": "sampler"}},
            upsert=True,
        )
        for user_id in wanted
    ]
    added = db.sample_members.bulk_write(upserts, ordered=False).upserted_count if upserts else 0
    return {"added": added, "removed": removed, "members": db.sample_members.count_documents({"sample_id": sample_id})}
