"""The Updater's reads and writes in Mongo: changed members, open dynamic samples, their members.

Invitations go through `panel_pipeline.shared.invitations`, exactly as for a first draw.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from bson import ObjectId
from pymongo import ASCENDING
from pymongo.database import Database

from panel_pipeline.sampler import store as sampler_store
from panel_pipeline.sampler.requests import SampleRequestError, parse_sample_request
from panel_pipeline.shared.contract import ACTIVE, DONE
from panel_pipeline.shared.mongo import insert_missing
from panel_pipeline.updater.dynamic import DynamicSample, filled_cells, first_draw_of

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
    """Open dynamic samples (after closing those past `closes_at`), and the ids just closed."""
    closed = []
    samples = []
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
        members = list(db.sample_members.find({"sample_id": doc["_id"]}, {"user_id": 1}))
        member_profiles = sampler_store.profiles_frame(
            list(db.users.find({"_id": {"$in": [m["user_id"] for m in members]}}, {"profile": 1})), now.year
        )
        member_ids = frozenset(str(m["user_id"]) for m in members)
        first_draw = first_draw_of(doc.get("result") or {}, request.size)
        sample = DynamicSample(
            str(doc["_id"]), request, member_ids, drawn_at=doc.get("drawn_at"), first_draw=first_draw
        )
        filled = filled_cells(member_profiles, sample.targets, request.missing)
        samples.append(replace(sample, filled=filled))
    return samples, closed


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
