"""Survey contacts per member across all samples, for the contact budget (pymongo; no Dagster).

A contact is a survey invitation or a reminder, whichever sample it came from, counted from
`sample_members`:

- an invitation sent in the window (`invited_at`), or stamped and not yet sent (`invited_at` None
  with a `mailing_id`: it is on its way, so a second sample drawn meanwhile sees it);
- a reminder sent in the window (`reminded_at`), or put in a round in the window and not recorded
  as sent (`reminder_mailing_id`, whose ObjectId carries the round's time, newer than `reminded_at`):
  on its way, or one that reached nobody, counted until the window passes it.

Members of a sample without a mailing were never stamped, so they are no contact. The Sampler's
runs (draws, top-ups, reminders) go one at a time (the `panel/part: sampler` run limit), so each
sees the contacts the others made; the Updater's additions run beside them, so a newcomer added
while a draw reads the counts may get one contact more than the budget.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.shared.contract import SAMPLE_MEMBERS

CONTACT_WINDOW = dt.timedelta(days=7)
DEFAULT_CONTACTS_PER_WEEK = 3
ID_CHUNK = 20_000  # ids per `$in` (well inside the 16 MB command limit)


def recent_contacts(db: Database, user_ids: Sequence[ObjectId], now: dt.datetime) -> np.ndarray:
    """Each member's survey contacts in the CONTACT_WINDOW before `now`, aligned with `user_ids`."""
    since = now - CONTACT_WINDOW
    round_since = ObjectId.from_datetime(since)
    reminder_on_its_way = {
        "$and": [
            {"$gte": ["$reminder_mailing_id", round_since]},
            {"$not": [{"$gte": ["$reminded_at", {"$toDate": "$reminder_mailing_id"}]}]},
        ]
    }
    counts: dict[ObjectId, int] = {}
    ids = list(user_ids)
    for start in range(0, len(ids), ID_CHUNK):
        pipeline: list[dict[str, Any]] = [
            {
                "$match": {
                    "user_id": {"$in": ids[start : start + ID_CHUNK]},
                    "$or": [
                        {"invited_at": {"$gte": since}},
                        {"invited_at": None, "mailing_id": {"$exists": True}},
                        {"reminded_at": {"$gte": since}},
                        {"reminder_mailing_id": {"$gte": round_since}},
                    ],
                }
            },
            {
                "$group": {
                    "_id": "$user_id",
                    "contacts": {
                        "$sum": {
                            "$add": [
                                {"$cond": [{"$gte": ["$invited_at", since]}, 1, 0]},
                                {
                                    "$cond": [
                                        {
                                            "$and": [
                                                {"$eq": [{"$ifNull": ["$invited_at", None]}, None]},
                                                {"$ne": [{"$type": "$mailing_id"}, "missing"]},
                                            ]
                                        },
                                        1,
                                        0,
                                    ]
                                },
                                {"$cond": [{"$gte": ["$reminded_at", since]}, 1, 0]},
                                {"$cond": [reminder_on_its_way, 1, 0]},
                            ]
                        }
                    },
                }
            },
        ]
        counts.update((doc["_id"], int(doc["contacts"])) for doc in db[SAMPLE_MEMBERS].aggregate(pipeline))
    return np.array([counts.get(uid, 0) for uid in ids], dtype=np.int64)
