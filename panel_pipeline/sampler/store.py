"""The Sampler's reads and writes in Mongo: the eligible panel, exclusions, sample members, and
fieldwork (past invitations with their completions, a sample's members with theirs, the state,
top-up waves' members, the panel's recent survey contacts, a stepped fieldwork clock's steps).

The Updater reads the panel and the exclusions through this module too, so a dynamic sample's
newcomers are loaded and left out exactly as its first draw's members were. A completion is a
member's first `transactions` document for the sample's survey (its `created_at`); a member in the
survey has a recent Partial SurveyGizmo response (`latest_partials`). Every query is bounded by an
index (invited_at, sample_id, (survey_id, user_id), the open-fieldwork and the Partial responses'
partial indexes) and reads only the fields it needs; member ids go to Mongo in chunks of ID_CHUNK.
No Dagster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.database import Database

from panel_pipeline.sampler.fieldwork_state import FIELDWORK_OPEN, PANEL_RATES_ID
from panel_pipeline.sampler.quotas import panel_fields
from panel_pipeline.sampler.requests import SampleRequest, age_bands, mongo_filter
from panel_pipeline.sampler.response_rates import LearnedResponseRates
from panel_pipeline.shared.clock import FieldworkStep
from panel_pipeline.shared.contacts import recent_contacts
from panel_pipeline.shared.contract import (
    ACTIVE,
    MAILINGS,
    PIPELINE_STATE,
    PROFILE_CATEGORIES,
    RAW_RESPONSES,
    RESPONSE_RATES,
    SAMPLE_MEMBERS,
    SAMPLES,
    TRANSACTIONS,
    USERS,
)
from panel_pipeline.shared.mongo import as_utc

PARTIAL = "Partial"  # a SurveyGizmo response begun and not submitted (extractor/responses.py STATUSES)

# `age` and `age_band` are derived from `birth_year` at draw time, never read: a stored band goes
# stale on a birthday, and the backend may store `birth_year` alone.
DERIVED_FROM_BIRTH_YEAR = ("age", "age_band")
STORED_FIELDS = (*(field for field in PROFILE_CATEGORIES if field not in DERIVED_FROM_BIRTH_YEAR), "birth_year")
FIELD_SEPARATOR = "\x1f"  # ASCII unit separator: never part of a profile value


def ensure_indexes(db: Database) -> None:
    db.sample_members.create_index([("sample_id", ASCENDING), ("user_id", ASCENDING)], unique=True)
    db.sample_members.create_index([("mailing_id", ASCENDING)], sparse=True)
    db.sample_members.create_index([("invited_at", ASCENDING)], sparse=True)
    db.sample_members.create_index([("user_id", ASCENDING), ("invited_at", ASCENDING)])
    db.transactions.create_index([("survey_id", ASCENDING), ("user_id", ASCENDING)])
    db.sample_members.create_index([("sample_id", ASCENDING), ("invited_at", ASCENDING)])


def profiles_frame(docs: Sequence[Mapping[str, Any]], as_of_year: int) -> pd.DataFrame:
    """One row per user (index = user id as str), the profile fields as columns (a value outside
    the contract's is read as missing, as `load_panel` reads it); `age` and `age_band` derived from
    `birth_year` as the Mongo filter derives them, so they never go stale."""
    rows = [
        {name: _contract_value(name, (doc.get("profile") or {}).get(name)) for name in STORED_FIELDS} for doc in docs
    ]
    frame = pd.DataFrame(rows, index=[str(doc["_id"]) for doc in docs], columns=list(STORED_FIELDS))
    frame["age"] = as_of_year - pd.to_numeric(frame["birth_year"], errors="coerce")
    frame["age_band"] = pd.Series(age_bands(frame["age"].to_numpy(dtype=float)), index=frame.index).astype(object)
    frame["age_band"] = frame["age_band"].where(frame["age_band"].notna(), None)
    return frame


def _contract_value(field: str, value: Any) -> Any:
    if field not in PROFILE_CATEGORIES:
        return value
    return value if isinstance(value, str) and value in PROFILE_CATEGORIES[field] else None


def load_panel(db: Database, request: SampleRequest, as_of_year: int) -> pd.DataFrame:
    """Active members matching the request's filters, in `_id` order (so a seed replays the draw),
    with the profile fields the selection reads: categories as pandas categoricals (a value outside
    the contract's is read as missing), `age` and `age_band` derived from `birth_year` as the Mongo
    filter derives them.

    mongod joins each member's fields into one string: decoding a million small documents is about
    2.5x faster than decoding a million nested profiles, and each distinct combination (tens of
    thousands, not a million) is split once."""
    fields = panel_fields(request)
    joined: list[Any] = []
    for field in fields:
        source = "birth_year" if field in DERIVED_FROM_BIRTH_YEAR else field
        joined += [
            {"$convert": {"input": f"$profile.{source}", "to": "string", "onError": "", "onNull": ""}},
            FIELD_SEPARATOR,
        ]
    pipeline = [
        {"$match": mongo_filter(request, as_of_year)},
        {"$sort": {"_id": ASCENDING}},
        {"$project": {"key": {"$concat": joined[:-1]}}},
    ]
    docs = list(db.users.aggregate(pipeline))
    keys = pd.Categorical([doc.get("key") or "" for doc in docs])
    combinations = [key.split(FIELD_SEPARATOR) for key in keys.categories]
    columns = {
        field: _panel_column(field, [combination[i] for combination in combinations], keys.codes, as_of_year)
        for i, field in enumerate(fields)
    }
    return pd.DataFrame(columns, index=pd.Index([str(doc["_id"]) for doc in docs]))


def _panel_column(
    field: str, values: list[str], codes: np.ndarray, as_of_year: int
) -> pd.Categorical[str] | np.ndarray:
    """One column from the values of each distinct combination and each member's combination code."""
    if field in DERIVED_FROM_BIRTH_YEAR:
        years = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)
        ages = as_of_year - years
        return ages[codes] if field == "age" else age_bands(ages)[codes]
    if field in PROFILE_CATEGORIES:
        categories = PROFILE_CATEGORIES[field]
        return pd.Categorical.from_codes(
            pd.Index(categories).get_indexer(pd.Index(values)), categories=pd.Index(categories)
        )[codes]
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)[codes]


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
        excluded.update(
            db.transactions.distinct("user_id", {**scope, "survey_id": {"$in": surveys + _as_ints(surveys)}})
        )
    return {str(user_id) for user_id in excluded}


def _as_ints(values: Iterable[str]) -> list[int]:
    return [int(value) for value in values if value.isdigit()]


def eligibility(panel: pd.DataFrame, excluded: set[str]) -> np.ndarray:
    return ~panel.index.isin(list(excluded))


def kept_members(db: Database, sample_id: ObjectId) -> set[str]:
    """Members a re-draw must not touch: invited, or named by an invitation already queued."""
    query = {"sample_id": sample_id, "$or": [{"invited_at": {"$ne": None}}, {"mailing_id": {"$exists": True}}]}
    return {str(doc["user_id"]) for doc in db.sample_members.find(query, {"user_id": 1})}


def replace_members(
    db: Database, sample_id: ObjectId, user_ids: Sequence[str], now: dt.datetime, wave: int | None = None
) -> dict[str, int]:
    """Make the sample's members `user_ids` plus the kept ones: idempotent, and never touching
    members already invited or queued for an invitation. New members get `wave` when given."""
    wanted = [ObjectId(uid) for uid in user_ids]
    removed = db.sample_members.delete_many(
        {
            "sample_id": sample_id,
            "user_id": {"$nin": wanted},
            "invited_at": None,
            "mailing_id": {"$exists": False},
        }
    ).deleted_count
    added = add_members(db, sample_id, user_ids, now, wave)
    return {"added": added, "removed": removed, "members": db.sample_members.count_documents({"sample_id": sample_id})}


def add_members(
    db: Database, sample_id: ObjectId, user_ids: Sequence[str], now: dt.datetime, wave: int | None = None
) -> int:
    """Upsert these members (a draw's, or a top-up wave's): a member already in the sample is left
    as it is, so a repeated call adds nobody twice. Returns how many were new."""
    fields: dict[str, Any] = {"added_at": now, "invited_at": None, "source": "sampler"}
    if wave is not None:
        fields["wave"] = wave
    upserts = [
        UpdateOne({"sample_id": sample_id, "user_id": ObjectId(uid)}, {"$setOnInsert": fields}, upsert=True)
        for uid in user_ids
    ]
    return db.sample_members.bulk_write(upserts, ordered=False).upserted_count if upserts else 0


def panel_contacts(db: Database, panel: pd.DataFrame, among: np.ndarray, now: dt.datetime) -> np.ndarray:
    """Each panel member's survey contacts in the last 7 days (shared/contacts.py), looked up for
    the members `among` marks only (0 for the others), aligned with the panel's rows."""
    contacts = np.zeros(len(panel), dtype=np.int64)
    rows = np.flatnonzero(among)
    contacts[rows] = recent_contacts(db, [ObjectId(uid) for uid in panel.index[rows]], now)
    return contacts


# --- fieldwork ---------------------------------------------------------------------------------------

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ID_CHUNK = 20_000  # ids per `$in` (well inside the 16 MB command limit)


def ensure_fieldwork_indexes(db: Database) -> None:
    """The open-fieldwork samples the sensor reads (a few among every sample ever drawn), a sample's
    reminder mailings, each reminder's members (the Mailer's recipients), and the Partial responses
    of a survey's members (the extractor's raw copies; a few among the complete ones)."""
    db[SAMPLES].create_index(
        [("fieldwork_state.status", ASCENDING)],
        name="fieldwork_open",
        partialFilterExpression={"fieldwork_state.status": FIELDWORK_OPEN},
    )
    db[MAILINGS].create_index([("reminder_for_sample", ASCENDING)], sparse=True)
    db[SAMPLE_MEMBERS].create_index([("reminder_mailing_id", ASCENDING)], sparse=True)
    db[RAW_RESPONSES].create_index(
        [("survey_id", ASCENDING), ("panel_id", ASCENDING)],
        name="partial_by_survey_member",
        partialFilterExpression={"status": PARTIAL},
    )


def survey_id_values(survey_id: str) -> list[str | int]:
    """A survey id as the backend may have stored it on a transaction: its text, and its number."""
    return [survey_id, int(survey_id)] if survey_id.isdigit() else [survey_id]


def first_completions(db: Database, survey_id: str, user_ids: Sequence[ObjectId]) -> dict[str, dt.datetime]:
    """Each member's first transaction for the survey: its `created_at` (the member's completion)."""
    found: dict[str, dt.datetime] = {}
    for chunk in _chunks(list(user_ids)):
        pipeline: list[dict[str, Any]] = [
            {"$match": {"survey_id": {"$in": survey_id_values(survey_id)}, "user_id": {"$in": chunk}}},
            {
                "$group": {
                    "_id": "$user_id",
                    "completed_at": {"$min": {"$ifNull": ["$created_at", {"$toDate": "$_id"}]}},
                }
            },
        ]
        found.update({str(doc["_id"]): doc["completed_at"] for doc in db[TRANSACTIONS].aggregate(pipeline)})
    return found


def latest_partials(db: Database, survey_id: str, user_ids: Sequence[ObjectId]) -> dict[str, dt.datetime]:
    """Each member's newest Partial response to the survey in the extractor's raw copies (its
    `submitted_at`: SurveyGizmo moves a Partial's `date_submitted` on as the respondent goes), by the
    panel id the survey link carries (the user `_id`)."""
    found: dict[str, dt.datetime] = {}
    for chunk in _chunks(list(user_ids)):
        query = {
            "survey_id": survey_id,
            "status": PARTIAL,
            "panel_id": {"$in": [str(uid) for uid in chunk]},
            "deleted_at": {"$exists": False},
        }
        for doc in db[RAW_RESPONSES].find(query, {"panel_id": 1, "submitted_at": 1}):
            at = doc.get("submitted_at")
            if isinstance(at, dt.datetime) and (doc["panel_id"] not in found or as_utc(at) > found[doc["panel_id"]]):
                found[doc["panel_id"]] = as_utc(at)
    return found


def member_profiles(db: Database, user_ids: Sequence[ObjectId], as_of_year: int) -> pd.DataFrame:
    """profiles_frame of these members (index: user id as str) plus `active` (users.status is active);
    a member whose users document is gone is inactive with no profile."""
    docs: list[Mapping[str, Any]] = []
    for chunk in _chunks(list(user_ids)):
        docs += list(db[USERS].find({"_id": {"$in": chunk}}, {"profile": 1, "status": 1}))
    by_id = {str(doc["_id"]): doc for doc in docs}
    ordered = [by_id.get(str(user_id), {"_id": user_id}) for user_id in user_ids]
    frame = profiles_frame(ordered, as_of_year)
    frame["active"] = [doc.get("status") == ACTIVE for doc in ordered]
    return frame


def invitation_history(db: Database, since: dt.datetime, as_of_year: int) -> pd.DataFrame:
    """One row per sample member invited since `since`: the rate fields of their profile (age_band
    derived from birth_year), `invited_at`, and `completed_at` (their first transaction for the
    sample's survey, NaT if none). Reads only the fields needed, through the invited_at index."""
    members = list(
        db[SAMPLE_MEMBERS].find(
            {"invited_at": {"$gte": since}}, {"_id": 0, "sample_id": 1, "user_id": 1, "invited_at": 1}
        )
    )
    columns = ["age_band", "gender", "region", "social_grade", "invited_at", "completed_at"]
    if not members:
        return pd.DataFrame(columns=columns)
    surveys = {
        doc["_id"]: str(doc["survey_id"])
        for doc in db[SAMPLES].find(
            {"_id": {"$in": list({m["sample_id"] for m in members})}, "survey_id": {"$ne": None}}, {"survey_id": 1}
        )
    }
    completed: dict[tuple[Any, str], dt.datetime] = {}
    for sample_id, survey_id in surveys.items():
        user_ids = [m["user_id"] for m in members if m["sample_id"] == sample_id]
        completed.update({(sample_id, uid): at for uid, at in first_completions(db, survey_id, user_ids).items()})
    profiles = member_profiles(db, list(dict.fromkeys(m["user_id"] for m in members)), as_of_year)
    rows = profiles.loc[[str(m["user_id"]) for m in members], ["age_band", "gender", "region", "social_grade"]]
    return rows.reset_index(drop=True).assign(
        invited_at=_times([m["invited_at"] for m in members]),
        completed_at=_times([completed.get((m["sample_id"], str(m["user_id"]))) for m in members]),
    )[columns]


def fieldwork_members(
    db: Database, sample_id: ObjectId, survey_id: str, as_of_year: int, *, mailed: bool = False
) -> pd.DataFrame:
    """The sample's members (index: user id as str): their profile (profiles_frame), `active`, and
    the fieldwork columns `invited_at`, `completed_at` (first transaction of the survey), `reminded_at`,
    `reminders`, `wave`, `added_at`, `reminder_mailing_id`, `partial_at` (latest_partials) (NaT / 0 /
    NaN / None where absent). With `mailed` (the sample has an invitation), a member not sent theirs
    yet counts as invited from their `added_at`: stamped or waiting to be, their invitation is on its
    way, and a pass that counted them as not invited would invite for the same need again (a crash
    between adding a wave and its invitation)."""
    fields = ("user_id", "invited_at", "reminded_at", "reminders", "wave", "added_at", "reminder_mailing_id")
    docs = list(
        db[SAMPLE_MEMBERS]
        .find({"sample_id": sample_id}, {"_id": 0, **dict.fromkeys(fields, 1)})
        .sort("user_id", ASCENDING)
    )
    user_ids = [doc["user_id"] for doc in docs]
    frame = member_profiles(db, user_ids, as_of_year)
    completions = first_completions(db, survey_id, user_ids)
    frame["invited_at"] = _times([doc.get("invited_at") for doc in docs])
    frame["completed_at"] = _times([completions.get(str(uid)) for uid in user_ids])
    frame["reminded_at"] = _times([doc.get("reminded_at") for doc in docs])
    frame["reminders"] = [int(doc.get("reminders") or 0) for doc in docs]
    frame["wave"] = [doc.get("wave") for doc in docs]
    frame["added_at"] = _times([doc.get("added_at") for doc in docs])
    frame["reminder_mailing_id"] = [doc.get("reminder_mailing_id") for doc in docs]
    partials = latest_partials(db, survey_id, user_ids)
    frame["partial_at"] = _times([partials.get(str(uid)) for uid in user_ids])
    # A member who completed was invited, whatever the invitation's own record says (sent before the
    # Mailer stamped it, or by hand): count them as invited when they completed.
    frame["invited_at"] = frame["invited_at"].where(frame["invited_at"].notna(), frame["completed_at"])
    if mailed:
        frame["invited_at"] = frame["invited_at"].where(frame["invited_at"].notna(), frame["added_at"])
    return frame


def write_fieldwork(
    db: Database,
    sample_id: ObjectId,
    state: Mapping[str, Any],
    completed_at: Mapping[str, dt.datetime],
    weights: Mapping[str, float] | None,
) -> int:
    """Save `completed_at` on the completers not stamped yet (and, with `weights`, each completer's
    `weight`), then `fieldwork_state` on the sample: whoever reads a state closed with weights (the
    backend, `sample_completes`) finds every member's weight written; the count of members newly
    stamped. A crash in between leaves the state as it was, and the next pass writes it all again."""
    stamps = [
        UpdateOne(
            {"sample_id": sample_id, "user_id": ObjectId(user_id), "completed_at": None},
            {"$set": {"completed_at": at}},
        )
        for user_id, at in completed_at.items()
    ]
    stamped = db[SAMPLE_MEMBERS].bulk_write(stamps, ordered=False).modified_count if stamps else 0
    if weights:
        db[SAMPLE_MEMBERS].bulk_write(
            [
                UpdateOne({"sample_id": sample_id, "user_id": ObjectId(user_id)}, {"$set": {"weight": weight}})
                for user_id, weight in weights.items()
            ],
            ordered=False,
        )
    db[SAMPLES].update_one({"_id": sample_id}, {"$set": {"fieldwork_state": dict(state)}})
    return stamped


def save_reminder_round(db: Database, sample_id: ObjectId, reminder_round: Mapping[str, Any]) -> None:
    """Record the fieldwork pass's reminder round in `fieldwork_state.reminder_round`."""
    db[SAMPLES].update_one({"_id": sample_id}, {"$set": {"fieldwork_state.reminder_round": dict(reminder_round)}})


def completed_members(db: Database, sample_id: ObjectId, as_of_year: int) -> pd.DataFrame:
    """The sample's completers as the last fieldwork pass stamped them (`completed_at` set), in user
    id order: member_profiles of each, and `wave`, `invited_at`, `completed_at`, `weight` (NaN
    before fieldwork closed with converged weights)."""
    docs = list(
        db[SAMPLE_MEMBERS]
        .find(
            {"sample_id": sample_id, "completed_at": {"$ne": None}},
            {"_id": 0, "user_id": 1, "wave": 1, "invited_at": 1, "completed_at": 1, "weight": 1},
        )
        .sort("user_id", ASCENDING)
    )
    frame = member_profiles(db, [doc["user_id"] for doc in docs], as_of_year)
    frame["wave"] = [doc.get("wave") for doc in docs]
    frame["invited_at"] = _times([doc.get("invited_at") for doc in docs])
    frame["completed_at"] = _times([doc.get("completed_at") for doc in docs])
    frame["weight"] = [doc.get("weight", np.nan) for doc in docs]
    return frame


def open_fieldwork_samples(db: Database) -> list[dict[str, Any]]:
    """Samples whose fieldwork is open (the `fieldwork_open` index): `_id`, `name`, `survey_id`,
    `fieldwork_state.close_at`."""
    return list(
        db[SAMPLES].find(
            {"fieldwork_state.status": FIELDWORK_OPEN}, {"name": 1, "survey_id": 1, "fieldwork_state.close_at": 1}
        )
    )


DIRECTORY_FIELDS = ("name", "survey_id", "status", "created_at", "fieldwork_state.status")


def recent_samples(db: Database, limit: int) -> list[dict[str, Any]]:
    """The `limit` newest samples (by `_id`, its index), with DIRECTORY_FIELDS."""
    return list(db[SAMPLES].find({}, dict.fromkeys(DIRECTORY_FIELDS, 1)).sort("_id", -1).limit(limit))


def fieldwork_fingerprint(db: Database, sample_id: ObjectId, survey_id: Any) -> str:
    """What changes when a sample's fieldwork may have: its survey's transactions and its invited
    members, both counted on an index (no document read)."""
    completes = db[TRANSACTIONS].count_documents({"survey_id": {"$in": survey_id_values(str(survey_id))}})
    invited = db[SAMPLE_MEMBERS].count_documents({"sample_id": sample_id, "invited_at": {"$gt": EPOCH}})
    return f"{completes}:{invited}"


def save_response_rates(db: Database, document: Mapping[str, Any], learned_at: dt.datetime) -> None:
    db[RESPONSE_RATES].replace_one({"_id": PANEL_RATES_ID}, {**document, "learned_at": learned_at}, upsert=True)


def load_response_rates(db: Database) -> dict[str, Any] | None:
    """The learned rates' document (LearnedResponseRates.to_document()), or None before the first learning."""
    document = db[RESPONSE_RATES].find_one({"_id": PANEL_RATES_ID}, {"_id": 0, "learned_at": 0})
    return dict(document) if document else None


def learned_response_rates(db: Database) -> LearnedResponseRates | None:
    """The stored learned rates, or None before any invitation was learned from."""
    document = load_response_rates(db)
    if document is None or not document.get("invitations"):
        return None
    return LearnedResponseRates.from_document(document)


def _chunks(values: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), ID_CHUNK):
        yield values[start : start + ID_CHUNK]


def fieldwork_state_of(db: Database, sample_id: ObjectId) -> dict[str, Any]:
    """The sample's `fieldwork_state` ({} when it has none)."""
    document = db[SAMPLES].find_one({"_id": sample_id}, {"fieldwork_state": 1})
    return dict((document or {}).get("fieldwork_state") or {})


def _times(values: Sequence[dt.datetime | None]) -> pd.DatetimeIndex:
    """Mongo dates as UTC times, NaT where absent."""
    times = pd.DatetimeIndex([pd.NaT if value is None else pd.Timestamp(value) for value in values])
    return times.tz_localize("UTC") if times.tz is None else times.tz_convert("UTC")


FIELDWORK_CLOCK_ID = "fieldwork_clock"  # the `pipeline_state` document of a stepped fieldwork clock


def fieldwork_steps(db: Database) -> tuple[FieldworkStep, ...]:
    """The stepped fieldwork clock's steps so far (none before the first)."""
    document = db[PIPELINE_STATE].find_one({"_id": FIELDWORK_CLOCK_ID}) or {}
    return tuple(FieldworkStep(as_utc(step["at"]), float(step["hours"])) for step in document.get("steps", []))


def step_fieldwork_clock(db: Database, hours: float, at: dt.datetime) -> float:
    """Move the stepped fieldwork clock on by `hours` at wall time `at`, in one atomic update;
    returns the hours it reads now."""
    if not hours > 0:
        raise ValueError(f"a fieldwork step must move the clock on, got {hours} hours")
    reached = {"$ifNull": [{"$last": "$steps.hours"}, 0.0]}
    step = {"at": at, "hours": {"$add": [reached, float(hours)]}}
    document = db[PIPELINE_STATE].find_one_and_update(
        {"_id": FIELDWORK_CLOCK_ID},
        [{"$set": {"steps": {"$concatArrays": [{"$ifNull": ["$steps", []]}, [step]]}}}],
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert document is not None  # upserted
    return float(document["steps"][-1]["hours"])
