"""The Extractor's reads and writes in Mongo: raw responses, quarantine, and profile updates.

Raw responses are keyed `"<survey id>:<response id>"`, so re-pulling a day, a backfill or
overlapping windows never duplicate anything. Profile updates are order-independent: each
attribute remembers the response and submission time it came from (`profile_sources`), and only
a newer answer replaces it, so days applied in any order converge. Raw writes are streamed in
chunks of `WRITE_CHUNK`: a run's memory does not grow with the number of responses it pulls.
The checks on `users` read through here too. No Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bson
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReplaceOne, UpdateOne
from pymongo.database import Database

from panel_pipeline.extractor.deletions import StoredResponse
from panel_pipeline.extractor.responses import SurveyResponse
from panel_pipeline.shared.contract import (
    ACTIVE,
    PROFILE_CATEGORIES,
    QUARANTINED_RESPONSES,
    RAW_RESPONSES,
    SURVEYS,
    USERS,
)
from panel_pipeline.shared.mongo import as_utc, insert_missing, object_id_or_none

PANEL_ID_VARIABLE = "pid"


def ensure_indexes(db: Database) -> None:
    db[RAW_RESPONSES].create_index([("day", ASCENDING)])
    db[QUARANTINED_RESPONSES].create_index([("day", ASCENDING)])
    db[USERS].create_index([("sg_contact_id", ASCENDING)], sparse=True)


def raw_id(survey_id: str, response_id: str) -> str:
    return f"{survey_id}:{response_id}"


@dataclass(frozen=True)
class RawWrite:
    inserted: int
    changed: int
    unchanged: int

    @property
    def total(self) -> int:
        return self.inserted + self.changed + self.unchanged

    def __add__(self, other: RawWrite) -> RawWrite:
        return RawWrite(self.inserted + other.inserted, self.changed + other.changed, self.unchanged + other.unchanged)


WRITE_CHUNK = 5_000  # responses per round trip; keeps each `$in` well under Mongo's 16 MB document limit


def upsert_raw(db: Database, responses: Iterable[SurveyResponse], day_of: Any, now: dt.datetime) -> RawWrite:
    """Store parsed responses by (survey, response), `WRITE_CHUNK` at a time as they come (a
    generator is consumed lazily, so memory holds one chunk however long the backfill): new ones
    inserted, changed ones replaced (a SHA-1 of the record tells), the same ones left alone, so the
    hourly re-pull of a day costs reads, not writes. A response listed again is no longer deleted,
    and one that parses again leaves quarantine."""
    written = RawWrite(0, 0, 0)
    iterator = iter(responses)
    while chunk := list(itertools.islice(iterator, WRITE_CHUNK)):
        documents = {raw_id(r.survey_id, r.id): raw_document(r, day_of(r.submitted_at), now) for r in chunk}
        del chunk
        written += _write_raw(db, documents)
        db[QUARANTINED_RESPONSES].delete_many({"_id": {"$in": list(documents)}})
    return written


def _write_raw(db: Database, documents: Mapping[str, dict[str, Any]]) -> RawWrite:
    stored = {
        doc["_id"]: doc
        for doc in db[RAW_RESPONSES].find({"_id": {"$in": list(documents)}}, {"record_sha1": 1, "deleted_at": 1})
    }
    new = [key for key in documents if key not in stored]
    changed = [
        key
        for key in documents
        if key in stored
        and (stored[key].get("record_sha1") != documents[key]["record_sha1"] or "deleted_at" in stored[key])
    ]
    inserts = [{"_id": key, **documents[key]} for key in new]
    raced = [inserts[index]["_id"] for index in insert_missing(db[RAW_RESPONSES], inserts)]
    replace = [*changed, *raced]  # inserted by a concurrent run since we looked: replaced instead
    if replace:
        db[RAW_RESPONSES].bulk_write(
            [ReplaceOne({"_id": key}, documents[key], upsert=True) for key in replace], ordered=False
        )
    return RawWrite(len(new) - len(raced), len(replace), len(documents) - len(new) - len(changed))


def raw_document(response: SurveyResponse, day: str, now: dt.datetime) -> dict[str, Any]:
    record = dict(response.raw)
    return {
        "survey_id": response.survey_id,
        "response_id": response.id,
        "status": response.status,
        "is_test_data": response.is_test_data,
        "submitted_at": response.submitted_at,
        "day": day,
        "contact_id": response.contact_id,
        "panel_id": response.url_variables.get(PANEL_ID_VARIABLE),
        "record": record,
        "record_sha1": hashlib.sha1(bson.encode(record)).hexdigest(),
        "fetched_at": now,
    }


def quarantine(
    db: Database, survey_id: str, response_id: str, day: str, reason: str, record: Mapping[str, Any], now: dt.datetime
) -> None:
    db[QUARANTINED_RESPONSES].replace_one(
        {"_id": raw_id(survey_id, response_id)},
        {
            "survey_id": survey_id,
            "response_id": response_id,
            "day": day,
            "reason": reason,
            "record": dict(record),
            "quarantined_at": now,
        },
        upsert=True,
    )


def raw_records(db: Database, day: str) -> list[dict[str, Any]]:
    return list(db[RAW_RESPONSES].find({"day": day, "deleted_at": {"$exists": False}}).sort("submitted_at", ASCENDING))


def stored_responses(db: Database, survey_id: str, submitted_before: dt.datetime) -> list[StoredResponse]:
    """The survey's raw responses submitted before the cutoff, deleted or not (a weekly scan)."""
    return [
        StoredResponse(doc["response_id"], doc["day"], "deleted_at" in doc)
        for doc in db[RAW_RESPONSES].find(
            {"survey_id": survey_id, "submitted_at": {"$lt": submitted_before}},
            {"response_id": 1, "day": 1, "deleted_at": 1},
        )
    ]


def mark_deleted(db: Database, survey_id: str, response_ids: Iterable[str], now: dt.datetime) -> int:
    """Stamp `deleted_at` (never remove the document): `raw_records` leaves these out from now on."""
    ids = [raw_id(survey_id, response_id) for response_id in response_ids]
    if not ids:
        return 0
    return (
        db[RAW_RESPONSES]
        .update_many({"_id": {"$in": ids}, "deleted_at": {"$exists": False}}, {"$set": {"deleted_at": now}})
        .modified_count
    )


def mark_restored(db: Database, survey_id: str, response_ids: Iterable[str]) -> int:
    ids = [raw_id(survey_id, response_id) for response_id in response_ids]
    if not ids:
        return 0
    return db[RAW_RESPONSES].update_many({"_id": {"$in": ids}}, {"$unset": {"deleted_at": ""}}).modified_count


def remember_survey(db: Database, survey_id: str, shortnames: Mapping[str, str], now: dt.datetime) -> None:
    """Keep the survey's question shortnames, which the profile mapping is written against."""
    db[SURVEYS].replace_one({"_id": survey_id}, {"shortnames": dict(shortnames), "fetched_at": now}, upsert=True)


def survey_shortnames(db: Database) -> dict[str, dict[str, str]]:
    """Each known survey's question shortnames (kept in `sg_surveys` by the raw extract), by survey id."""
    return {survey["_id"]: dict(survey.get("shortnames") or {}) for survey in db[SURVEYS].find()}


def member_exists(db: Database, user_id: ObjectId) -> bool:
    return db[USERS].find_one({"_id": user_id}, {"_id": 1}) is not None


def find_members(db: Database, raws: Sequence[Mapping[str, Any]]) -> list[ObjectId | None]:
    """The user each raw response belongs to: its panel id (the user `_id`), else the SurveyGizmo
    contact; None when neither is known. Two queries however many responses."""
    panel_ids = [object_id_or_none(raw.get("panel_id")) for raw in raws]
    known = {doc["_id"] for doc in db[USERS].find({"_id": {"$in": [i for i in set(panel_ids) if i]}}, {"_id": 1})}
    contacts = {
        str(raw["contact_id"])
        for raw, user_id in zip(raws, panel_ids, strict=True)
        if user_id not in known and raw.get("contact_id")
    }
    by_contact = (
        {
            doc["sg_contact_id"]: doc["_id"]
            for doc in db[USERS].find({"sg_contact_id": {"$in": sorted(contacts)}}, {"sg_contact_id": 1})
        }
        if contacts
        else {}
    )
    return [
        user_id if user_id in known else by_contact.get(str(raw.get("contact_id") or ""))
        for raw, user_id in zip(raws, panel_ids, strict=True)
    ]


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
        for doc in db[USERS].find(
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
            if source is not None and as_utc(source["submitted_at"]) > answer.submitted_at:
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
        db[USERS].bulk_write(operations, ordered=False)
    return sum(1 for fields in updates.values() if _changed_stamp(fields, now))


def _changed_stamp(fields: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """`profile_updated_at` moves only when a profile value changed (the Updater reads it)."""
    return {"profile_updated_at": now} if any(key.startswith("profile.") for key in fields) else {}


# -- what the checks on users read -------------------------------------------------------------


def profile_coverage(db: Database) -> tuple[int, dict[str, float]]:
    """The number of active members, and the share of them holding each profile attribute."""
    active = db[USERS].count_documents({"status": ACTIVE})
    coverage = {
        attribute: db[USERS].count_documents({"status": ACTIVE, f"profile.{attribute}": {"$ne": None}}) / active
        if active
        else 0.0
        for attribute in PROFILE_CATEGORIES
    }
    return active, coverage


def profile_values_outside(db: Database) -> dict[str, int]:
    """Per profile attribute, the members holding a value the contract does not allow."""
    return {
        attribute: db[USERS].count_documents({f"profile.{attribute}": {"$exists": True, "$nin": [*values, None]}})
        for attribute, values in PROFILE_CATEGORIES.items()
    }


def quarantine_count(db: Database) -> int:
    return db[QUARANTINED_RESPONSES].count_documents({})


def quarantine_reasons(db: Database, limit: int) -> list[tuple[str, int]]:
    """The `limit` most frequent quarantine reasons, each with its count (the reasons as stored)."""
    grouped = db[QUARANTINED_RESPONSES].aggregate(
        [{"$group": {"_id": "$reason", "n": {"$sum": 1}}}, {"$sort": {"n": DESCENDING}}, {"$limit": limit}]
    )
    return [(str(group["_id"]), group["n"]) for group in grouped]
