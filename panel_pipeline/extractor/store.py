"""The Extractor's reads and writes in Mongo: raw responses, quarantine, and profile updates.

Raw responses are keyed `"<survey id>:<response id>"` (`_id` upserts are the fast ones), so
re-pulling a day, a backfill or overlapping windows never duplicate anything. Profile updates are
order-independent: each attribute remembers the response and submission time it came from
(`profile_sources`), and only a newer answer replaces it, so days applied in any order converge.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, ReplaceOne, UpdateOne
from pymongo.database import Database

from panel_pipeline.extractor.deletions import StoredResponse
from panel_pipeline.extractor.responses import SurveyResponse

RAW = "sg_responses"
QUARANTINE = "sg_quarantine"
PANEL_ID_VARIABLE = "pid"


def ensure_indexes(db: Database) -> None:
    db[RAW].create_index([("day", ASCENDING)])
    db[QUARANTINE].create_index([("day", ASCENDING)])
    db.users.create_index([("sg_contact_id", ASCENDING)], sparse=True)


def raw_id(survey_id: str, response_id: str) -> str:
    return f"{survey_id}:{response_id}"


@dataclass(frozen=True)
class RawWrite:
    inserted: int
    changed: int
    unchanged: int


def upsert_raw(db: Database, responses: Sequence[SurveyResponse], day_of: Any, now: dt.datetime) -> RawWrite:
    """Store parsed responses by (survey, response); a response that parses again leaves quarantine."""
    if not responses:
        return RawWrite(0, 0, 0)
    operations = [
        ReplaceOne({"_id": raw_id(r.survey_id, r.id)}, raw_document(r, day_of(r.submitted_at), now), upsert=True)
        for r in responses
    ]
    result = db[RAW].bulk_write(operations, ordered=False)
    db[QUARANTINE].delete_many({"_id": {"$in": [raw_id(r.survey_id, r.id) for r in responses]}})
    return RawWrite(result.upserted_count, result.modified_count, result.matched_count - result.modified_count)


def raw_document(response: SurveyResponse, day: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "survey_id": response.survey_id,
        "response_id": response.id,
        "status": response.status,
        "is_test_data": response.is_test_data,
        "submitted_at": response.submitted_at,
        "day": day,
        "contact_id": response.contact_id,
        "panel_id": response.url_variables.get(PANEL_ID_VARIABLE),
        "record": dict(response.raw),
        "fetched_at": now,
    }


def quarantine(db: Database, survey_id: str, response_id: str, day: str, reason: str, record: Mapping[str, Any], now: dt.datetime) -> None:
    db[QUARANTINE].replace_one(
        {"_id": raw_id(survey_id, response_id)},
        {"survey_id": survey_id, "response_id": response_id, "day": day, "reason": reason, "record": dict(record), "quarantined_at": now},
        upsert=True,
    )


def raw_records(db: Database, day: str) -> list[dict[str, Any]]:
    return list(db[RAW].find({"day": day, "deleted_at": {"$exists": False}}).sort("submitted_at", ASCENDING))


def stored_responses(db: Database, survey_id: str, submitted_before: dt.datetime) -> list[StoredResponse]:
    """The survey's raw responses submitted before the cutoff, deleted or not (a weekly scan)."""
    return [
        StoredResponse(doc["response_id"], doc["day"], "deleted_at" in doc)
        for doc in db[RAW].find(
            {"survey_id": survey_id, "submitted_at": {"$lt": submitted_before}}, {"response_id": 1, "day": 1, "deleted_at": 1}
        )
    ]


def mark_deleted(db: Database, survey_id: str, response_ids: Iterable[str], now: dt.datetime) -> int:
    """Stamp `deleted_at` (never remove the document): `raw_records` leaves these out from now on."""
    ids = [raw_id(survey_id, response_id) for response_id in response_ids]
    if not ids:
        return 0
    return db[RAW].update_many({"_id": {"$in": ids}, "deleted_at": {"$exists": False}}, {"$set": {"deleted_at": now}}).modified_count


def mark_restored(db: Database, survey_id: str, response_ids: Iterable[str]) -> int:
    ids = [raw_id(survey_id, response_id) for response_id in response_ids]
    if not ids:
        return 0
    return db[RAW].update_many({"_id": {"$in": ids}}, {"$unset": {"deleted_at": ""}}).modified_count


def find_member(db: Database, panel_id: str | None, contact_id: str | None) -> ObjectId | None:
    """The user a response belongs to: its panel id (the user `_id`), else the SurveyGizmo contact."""
    if panel_id:
        try:
            user_id = ObjectId(panel_id.strip())
        except (InvalidId, TypeError):
            user_id = None
        if user_id is not None and db.users.count_documents({"_id": user_id}, limit=1):
            return user_id
    if contact_id:
        user = db.users.find_one({"sg_contact_id": str(contact_id)}, {"_id": 1})
        if user:
            return user["_id"]
    return None


@dataclass(frozen=True)
class ProfileAnswer:
    user_id: ObjectId
    response_id: str
    submitted_at: dt.datetime
    profile: Mapping[str, Any]


def apply_profiles(db: Database, answers: Iterable[ProfileAnswer], now: dt.datetime) -> int:
    """Set each attribute from the newest answer for it; returns how many users changed."""
    answers = list(answers)
    users = {
        doc["_id"]: doc
        for doc in db.users.find(
            {"_id": {"$in": list({a.user_id for a in answers})}}, {"profile": 1, "profile_sources": 1}
        )
    }
    updates: dict[ObjectId, dict[str, Any]] = {}
    for answer in sorted(answers, key=lambda a: a.submitted_at):
        user = users.get(answer.user_id)
        if user is None:
            continue
        sources = user.setdefault("profile_sources", {})
        profile = user.setdefault("profile", {})
        for attribute, value in answer.profile.items():
            source = sources.get(attribute)
            if source is not None and _aware(source["submitted_at"]) > answer.submitted_at:
                continue
            sources[attribute] = {"response_id": answer.response_id, "submitted_at": answer.submitted_at}
            if profile.get(attribute) != value:
                profile[attribute] = value
                updates.setdefault(answer.user_id, {})[f"profile.{attribute}"] = value
            updates.setdefault(answer.user_id, {})[f"profile_sources.{attribute}"] = sources[attribute]
    operations = [
        UpdateOne({"_id": user_id}, {"$set": {**fields, **_changed_stamp(fields, now)}})
        for user_id, fields in updates.items()
    ]
    if operations:
        db.users.bulk_write(operations, ordered=False)
    return sum(1 for fields in updates.values() if _changed_stamp(fields, now))


def _changed_stamp(fields: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """`profile_updated_at` moves only when a profile value changed (the Updater reads it)."""
    return {"profile_updated_at": now} if any(key.startswith("profile.") for key in fields) else {}


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
