"""Survey contacts per member across all samples, for the contact budget (pymongo; no Dagster).

A contact is a survey invitation or a reminder, whichever sample it came from, counted from
`sample_members`:

- an invitation sent in the window (`invited_at`), or stamped and not yet sent (`invited_at` None
  with a `mailing_id`: it is on its way, so a second sample drawn meanwhile sees it);
- a reminder sent in the window (`reminded_at`).

Members of a sample without a mailing were never stamped, so they are no contact. Two draws that
read the counts at the same moment may both take the same member: the budget is a ration, not a
lock, and the next look sees both.
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
                            ]
                        }
                    },
                }
            },
        ]
        counts.update((doc["_id"], int(doc["contacts"])) for doc in db[SAMPLE_MEMBERS].aggregate(pipeline))
    return np.array([counts.get(uid, 0) for uid in ids], dtype=np.int64)
