"""Demo members for the local run: the backend's side of the demo data.

The local SurveyGizmo server answers the profile survey for demo members 1..N with their panel id
(`demo_user_id(n)`) in the hidden field; `seed_users` creates the same members in Mongo, as the
backend does at sign-up (no profile yet: the Extractor derives it from those answers).
"""

from __future__ import annotations

import datetime as dt

from bson import ObjectId
from pymongo.database import Database

DEMO_MEMBERS = 1000
FIRST_NAMES = (
    "Amelia",
    "Oliver",
    "Isla",
    "George",
    "Ava",
    "Noah",
    "Freya",
    "Arthur",
    "Ivy",
    "Muhammad",
    "Rhys",
    "Catriona",
)


def demo_user_id(number: int) -> ObjectId:
    """The `_id` of demo member `number` (1-based), stable across runs."""
    return ObjectId(f"{number:024x}")


def demo_user(number: int, created_at: dt.datetime) -> dict:
    return {
        "_id": demo_user_id(number),
        "email": f"member{number}@panel.example",
        "first_name": FIRST_NAMES[number % len(FIRST_NAMES)],
        "status": "active",
        "created_at": created_at,
        "points": 0,
    }


def seed_users(db: Database, members: int = DEMO_MEMBERS) -> int:
    """Create the demo members that are missing (idempotent); returns how many were created."""
    now = dt.datetime.now(dt.UTC)
    created = 0
    for number in range(1, members + 1):
        result = db.users.update_one(
            {"_id": demo_user_id(number)}, {"$setOnInsert": demo_user(number, now)}, upsert=True
        )
        created += result.upserted_id is not None
    return created
