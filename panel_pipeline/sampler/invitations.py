"""Invitations for sample members, made exactly once, for the Sampler and the Updater alike.

Two idempotent steps. First the members of a sample with an invitation (`mailing.template`) who are
not yet tied to one are stamped with one new mailing id (each member document gets one id, once);
then every stamped id that has no `mailings` document yet gets one, naming exactly those members.
A crash between the steps leaves stamped members whose mailing the next run creates with the same
id; nobody is named by two invitations, and the Mailer sends each recipient of a mailing once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError


def stamp_pending_invitations(db: Database, sample_id: ObjectId) -> ObjectId | None:
    """Tie the sample's members still waiting for an invitation to one new mailing id."""
    sample = db.samples.find_one({"_id": sample_id}, {"mailing": 1})
    if not ((sample or {}).get("mailing") or {}).get("template"):
        return None  # a sample without an invitation: members are added, nobody is mailed
    mailing_id = ObjectId()
    result = db.sample_members.update_many(
        {"sample_id": sample_id, "invited_at": None, "mailing_id": {"$exists": False}},
        {"$set": {"mailing_id": mailing_id}},
    )
    return mailing_id if result.modified_count else None


def create_missing_mailings(db: Database, now: dt.datetime) -> list[ObjectId]:
    """A `mailings` document for every stamped mailing id that has none yet (exactly once: `_id`)."""
    stamped = db.sample_members.distinct("mailing_id", {"invited_at": None, "mailing_id": {"$exists": True}})
    existing = set(db.mailings.distinct("_id", {"_id": {"$in": stamped}}))
    created = []
    for mailing_id in stamped:
        if mailing_id in existing:
            continue
        members = list(db.sample_members.find({"mailing_id": mailing_id}, {"user_id": 1, "sample_id": 1}))
        sample = db.samples.find_one({"_id": members[0]["sample_id"]}, {"mailing": 1})
        try:
            db.mailings.insert_one(invitation_document(mailing_id, members, sample["mailing"], now))
        except DuplicateKeyError:
            continue
        created.append(mailing_id)
    return created


def invitation_document(
    mailing_id: ObjectId, members: Sequence[Mapping[str, Any]], invitation: Mapping[str, Any], now: dt.datetime
) -> dict[str, Any]:
    return {
        "_id": mailing_id,
        "processed": False,
        "created_at": now,
        "kind": "bulk",
        "template": invitation["template"],
        "default_data": dict(invitation.get("default_data") or invitation.get("data") or {}),
        "recipients": [{"user_id": member["user_id"]} for member in members],
        "invitation_for_sample": members[0]["sample_id"],
    }
