"""MongoDB as a Dagster resource: the panel database and its work queues."""

from __future__ import annotations

import functools

import dagster as dg
import pymongo
from pydantic import Field
from pymongo.database import Database

from panel_pipeline.queue.store import QueuePolicy, WorkQueue
from panel_pipeline.shared.contacts import DEFAULT_CONTACTS_PER_WEEK


@functools.cache
def _client(uri: str) -> pymongo.MongoClient:
    # One pooled client per process; a short server-selection timeout keeps a sensor tick well inside
    # its 60 s budget when Mongo is down.
    return pymongo.MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=3000, appname="panel-pipeline")


@functools.cache
def _ensure_indexes(uri: str, database: str, collection: str) -> None:
    WorkQueue(_client(uri)[database][collection]).ensure_indexes()


class MongoResource(dg.ConfigurableResource):
    """The panel's MongoDB: the single source of truth and the queue shared with the backend."""

    uri: str = Field(description="MongoDB connection string; may hold credentials, so set it from MONGO_URI.")
    database: str = Field(default="panel", description="Database shared with the backend.")
    lease_seconds: float = Field(default=300.0, description="How long a run holds a claimed document.")
    max_attempts: int = Field(default=3, description="Claims before a document is failed for good.")
    retry_backoff_seconds: float = Field(default=10.0, description="First retry delay; doubles per attempt.")

    def db(self) -> Database:
        return _client(self.uri)[self.database]

    def work_queue(self, collection: str) -> WorkQueue:
        _ensure_indexes(self.uri, self.database, collection)
        policy = QueuePolicy(self.lease_seconds, self.max_attempts, self.retry_backoff_seconds)
        return WorkQueue(self.db()[collection], policy)


class StandingWorkers(dg.ConfigurableResource):
    """Standing workers (`queue/worker.py`): one run per duty kept serving by a sensor, woken by a
    change stream, so transactional mail and a dynamic sample's newcomers go out in about a second;
    off, the polling sensors start a run per tick as before."""

    enabled: bool = Field(default=True, description="Keep a standing worker per duty running (PANEL_STANDING_WORKERS).")
    serve_seconds: float = Field(
        default=600.0, description="How long one worker run serves before its successor takes over."
    )
    handover_seconds: float = Field(
        default=120.0,
        description="Start the successor this long before the window ends (a run start on ECS takes a minute or more).",
    )


class ContactBudget(dg.ConfigurableResource):
    """How often a member may be asked to take part: survey invitations plus reminders, across all
    samples, in 7 days (`shared/contacts.py`). Enforced at draw, top-up, reminder and dynamic add."""

    contacts_per_week: int = Field(
        default=DEFAULT_CONTACTS_PER_WEEK, ge=1, description="Survey contacts a member may get in any 7 days."
    )
