"""The Updater's reads and writes in Mongo: changed members, open dynamic samples, their members,
and the newcomers the contact budget held back.

Invariants:

- Invitations go through `panel_pipeline.shared.invitations`, exactly as for a first draw.
- A dynamic sample with fieldwork (and cells) is read with its `fieldwork_state`: its room counts
  every member the state did not (not invited by the state's `updated_at`), so a member added since
  the last `sample_fieldwork` look is never counted as room twice. It closes once its fieldwork has.
- `dynamic_held_back` holds one document per (sample, newcomer) the contact budget kept out, upserted
  (a page read again writes nothing new) and removed when the member later joins; the sample's
  `dynamic_held_back` summary is recounted from it, never incremented, after every page while the
  sample holds anyone back (so a crash between a removal and the recount is mended by the next page).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from bson import ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.database import Database

from panel_pipeline.sampler import store as sampler_store
from panel_pipeline.sampler.fieldwork_state import FIELDWORK_CLOSED
from panel_pipeline.sampler.requests import SampleRequestError, parse_sample_request
from panel_pipeline.shared.contract import ACTIVE, DONE, DYNAMIC_HELD_BACK, SAMPLES
from panel_pipeline.shared.mongo import as_utc, insert_missing
from panel_pipeline.updater.dynamic import CellKey, DynamicSample, fieldwork_room, filled_cells, first_draw_of

CURSOR_ID = "updater"
# Writers' clocks and commit order differ by a little: each run looks again this far back (the
# work is idempotent, so seeing a member twice costs nothing).
CURSOR_OVERLAP = dt.timedelta(seconds=10)
CHANGES_PER_PAGE = 5_000  # members read, placed and written per page; a run loops pages until caught up
CHANGE_FIELDS = ("profile_updated_at", "created_at")


def ensure_indexes(db: Database) -> None:
    sampler_store.ensure_indexes(db)
    for name in CHANGE_FIELDS:
        db.users.create_index([(name, ASCENDING)])  # the sensor's newest-change look-up
        db.users.create_index([(name, ASCENDING), ("_id", ASCENDING)])  # the pages, in a stable order
    db.samples.create_index([("dynamic", ASCENDING), ("open", ASCENDING)])
    db[DYNAMIC_HELD_BACK].create_index([("sample_id", ASCENDING), ("user_id", ASCENDING)], unique=True)


def read_cursor(db: Database) -> dt.datetime | None:
    state = db.pipeline_state.find_one({"_id": CURSOR_ID})
    return state["changed_since"] if state else None


def write_cursor(db: Database, changed_since: dt.datetime) -> None:
    db.pipeline_state.update_one({"_id": CURSOR_ID}, {"$set": {"changed_since": changed_since}}, upsert=True)


def latest_change(db: Database) -> dt.datetime | None:
    """The newest `profile_updated_at` or `created_at` of any user (two index look-ups)."""
    latest = [
        doc[name]
        for name in ("profile_updated_at", "created_at")
        if (doc := db.users.find_one({name: {"$type": "date"}}, {name: 1}, sort=[(name, -1)]))
    ]
    return max(latest) if latest else None


def unseen_change(db: Database) -> dt.datetime | None:
    """The newest member change after the Updater's cursor (one no update has considered yet), or
    None (three look-ups, all on indexes or `_id`)."""
    newest, cursor = latest_change(db), read_cursor(db)
    return newest if newest is not None and (cursor is None or newest > cursor) else None


@dataclass(frozen=True)
class ChangedMembers:
    """One page of changed members, in change order."""

    profiles: pd.DataFrame  # index = user id (str), profile fields as columns, oldest change first
    changed_at: pd.Series  # same index: when each member joined or last changed
    newest_change: dt.datetime  # where the next page starts; the cursor once this page is written

    def since(self, drawn_at: dt.datetime) -> pd.DataFrame:
        """Those who changed after a sample's draw, less the overlap (the draw considered everyone
        before; the backend's clock that stamps `created_at` is not ours)."""
        return self.profiles[(self.changed_at > drawn_at - CURSOR_OVERLAP).to_numpy()]


ChangeKey = tuple[dt.datetime, Any]  # (changed_at, user _id): the total order members are read in


def changed_at_of(doc: Mapping[str, Any]) -> dt.datetime:
    """When a member joined or last changed: the later of `profile_updated_at` and `created_at`."""
    return max(t for t in (doc.get(name) for name in CHANGE_FIELDS) if isinstance(t, dt.datetime))


def change_field_of(doc: Mapping[str, Any]) -> str:
    """Which of the two fields holds the member's change time (the first of CHANGE_FIELDS on a tie):
    each member is read from that field's index only, so it comes once however both fields moved."""
    changed_at = changed_at_of(doc)
    return next(name for name in CHANGE_FIELDS if doc.get(name) == changed_at)


def stream_query(name: str, after: ChangeKey | dt.datetime) -> dict[str, Any]:
    """Active members whose `name` is after a position, in (`name`, `_id`) order on index `name_1__id_1`."""
    if isinstance(after, dt.datetime):
        position: dict[str, Any] = {name: {"$gt": after}}
    else:
        moment, user_id = after
        position = {"$or": [{name: {"$gt": moment}}, {name: moment, "_id": {"$gt": user_id}}]}
    return {"status": ACTIVE, **position}


def changed_member_pages(
    db: Database, since: dt.datetime, as_of_year: int, page_size: int = CHANGES_PER_PAGE
) -> Iterator[ChangedMembers]:
    """Active members who joined or changed after `since` (less the overlap), page by page in
    (change time, `_id`) order until caught up: each member once, none skipped however many share a
    timestamp, at most 2 x `page_size` documents in memory. The two fields are read through their
    own `(field, _id)` indexes and merged; a page holds what both scans have passed."""
    position: ChangeKey | dt.datetime = since - CURSOR_OVERLAP
    projection = {"profile": 1, **{name: 1 for name in CHANGE_FIELDS}}
    while True:
        kept: list[dict[str, Any]] = []
        bound: ChangeKey | None = None  # below it, both scans have seen everything
        for name in CHANGE_FIELDS:
            scanned = list(
                db.users.find(stream_query(name, position), projection).sort([(name, 1), ("_id", 1)]).limit(page_size)
            )
            kept += [doc for doc in scanned if change_field_of(doc) == name]
            if len(scanned) == page_size:
                last = (scanned[-1][name], scanned[-1]["_id"])
                bound = last if bound is None or last < bound else bound
        page = sorted((doc for doc in kept if bound is None or _key(doc) <= bound), key=_key)
        if page:
            yield _page(page, as_of_year)
        if bound is None:
            return
        position = bound


def _key(doc: Mapping[str, Any]) -> ChangeKey:
    return (changed_at_of(doc), doc["_id"])


def _page(docs: list[dict[str, Any]], as_of_year: int) -> ChangedMembers:
    profiles = sampler_store.profiles_frame(docs, as_of_year)
    changed_at = pd.Series([changed_at_of(doc) for doc in docs], index=profiles.index, dtype=object)
    return ChangedMembers(profiles, changed_at, changed_at_of(docs[-1]))


def first_cursor(db: Database, now: dt.datetime) -> dt.datetime:
    """Where the very first update starts: the earliest draw of an open dynamic sample, else now."""
    earliest = db.samples.find_one(
        {"dynamic": True, "open": True, "drawn_at": {"$type": "date"}}, {"drawn_at": 1}, sort=[("drawn_at", 1)]
    )
    return earliest["drawn_at"] if earliest else now


def open_dynamic_samples(db: Database, now: dt.datetime) -> tuple[list[DynamicSample], list[str]]:
    """Open dynamic samples (after closing those past `closes_at`, or whose fieldwork closed), and
    the ids just closed."""
    closed = []
    samples = []
    learned = sampler_store.learned_response_rates(db)
    for doc in db.samples.find({"dynamic": True, "open": True, "processed": True, "status": DONE}).sort("_id", 1):
        closes_at = doc.get("closes_at")
        if closes_at is not None and closes_at <= now:
            close_sample(db, doc["_id"], "its end date passed", now)
            closed.append(str(doc["_id"]))
            continue
        try:
            request = parse_sample_request(doc)
        except SampleRequestError:
            continue  # the sampler already failed it; nothing to keep current
        members = list(db.sample_members.find({"sample_id": doc["_id"]}, {"user_id": 1, "invited_at": 1}))
        member_profiles = sampler_store.profiles_frame(
            list(db.users.find({"_id": {"$in": [m["user_id"] for m in members]}}, {"profile": 1})), now.year
        )
        member_ids = frozenset(str(m["user_id"]) for m in members)
        result = doc.get("result") or {}
        sample = DynamicSample(
            str(doc["_id"]),
            request,
            member_ids,
            drawn_at=doc.get("drawn_at"),
            first_draw=first_draw_of(result, request.size),
        )
        state = doc.get("fieldwork_state") or {}
        counted_until = state.get("updated_at")
        uncounted = uncounted_members(
            members, as_utc(counted_until) if isinstance(counted_until, dt.datetime) else None
        )
        room = fieldwork_room(sample, state, result, member_profiles[member_profiles.index.isin(uncounted)], learned)
        if room is not None and state.get("status") == FIELDWORK_CLOSED:
            close_sample(db, doc["_id"], "its fieldwork closed", now)
            closed.append(str(doc["_id"]))
            continue
        filled = filled_cells(member_profiles, sample.targets, request.missing)
        holds_back = bool((doc.get(DYNAMIC_HELD_BACK) or {}).get("members"))
        samples.append(replace(sample, filled=filled, fieldwork=room, holds_back=holds_back))
    return samples, closed


def uncounted_members(members: Iterable[Mapping[str, Any]], counted_until: dt.datetime | None) -> list[str]:
    """Members a fieldwork state written at `counted_until` did not count: not invited by then."""
    return [
        str(member["user_id"])
        for member in members
        if counted_until is None or member.get("invited_at") is None or as_utc(member["invited_at"]) > counted_until
    ]


def close_sample(db: Database, sample_id: ObjectId, reason: str, now: dt.datetime) -> None:
    db.samples.update_one({"_id": sample_id}, {"$set": {"open": False, "closed_at": now, "closed_reason": reason}})


def add_members(db: Database, sample_id: str, user_ids: Iterable[str], now: dt.datetime) -> int:
    """Add members once each (the unique index makes a repeat a no-op); returns how many were new."""
    docs = [
        {
            "sample_id": ObjectId(sample_id),
            "user_id": ObjectId(uid),
            "added_at": now,
            "invited_at": None,
            "source": "updater",
        }
        for uid in user_ids
    ]
    return len(docs) - len(insert_missing(db.sample_members, docs))


def mark_qualification(
    db: Database, sample_id: str, user_ids: Iterable[str], qualifies: bool, now: dt.datetime
) -> None:
    """Members are never removed; one who stops matching the filters is recorded as such."""
    ids = [ObjectId(uid) for uid in user_ids]
    if not ids:
        return
    update = (
        {"$set": {"qualifies": True}, "$unset": {"stopped_qualifying_at": ""}}
        if qualifies
        else {"$set": {"qualifies": False, "stopped_qualifying_at": now}}
    )
    db.sample_members.update_many({"sample_id": ObjectId(sample_id), "user_id": {"$in": ids}}, update)


def hold_back(db: Database, sample_id: str, held: Mapping[str, tuple[CellKey, ...]], now: dt.datetime) -> None:
    """Record the newcomers the contact budget kept out of the sample, with their cells (once each)."""
    if not held:
        return
    db[DYNAMIC_HELD_BACK].bulk_write(
        [
            UpdateOne(
                {"sample_id": ObjectId(sample_id), "user_id": ObjectId(user_id)},
                {
                    "$set": {"cells": [{"target": target, "category": category} for target, category in cells]},
                    "$setOnInsert": {"held_at": now},
                },
                upsert=True,
            )
            for user_id, cells in held.items()
        ],
        ordered=False,
    )


def release_held_back(db: Database, sample_id: str, user_ids: Iterable[str]) -> None:
    """Members who joined after all are no longer held back."""
    ids = [ObjectId(uid) for uid in user_ids]
    if ids:
        db[DYNAMIC_HELD_BACK].delete_many({"sample_id": ObjectId(sample_id), "user_id": {"$in": ids}})


def write_held_back_summary(db: Database, sample_id: str, now: dt.datetime) -> dict[str, Any]:
    """Recount the sample's held-back newcomers, in all and per cell, into `samples.dynamic_held_back`."""
    match = {"sample_id": ObjectId(sample_id)}
    per_cell = db[DYNAMIC_HELD_BACK].aggregate(
        [
            {"$match": match},
            {"$unwind": "$cells"},
            {"$group": {"_id": {"target": "$cells.target", "category": "$cells.category"}, "held_back": {"$sum": 1}}},
            {"$sort": {"_id.target": 1, "_id.category": 1}},
        ]
    )
    summary = {
        "members": db[DYNAMIC_HELD_BACK].count_documents(match),
        "by_cell": [{**row["_id"], "held_back": int(row["held_back"])} for row in per_cell],
        "updated_at": now,
    }
    db[SAMPLES].update_one({"_id": ObjectId(sample_id)}, {"$set": {DYNAMIC_HELD_BACK: summary}})
    return summary
