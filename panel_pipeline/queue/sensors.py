"""Queue sensors: turn `processed: false` documents into runs, and write failed runs back.

Each queued collection gets one sensor built by `build_queue_sensor`. A tick reads only documents
inserted since its cursor (the `queue_new` index), plus documents whose lease expired or whose retry
is due (the `queue_due` index), so it never scans processed documents. A run key of
`collection:id:claims` (the document's claim counter, which only grows) means a document never
launches two runs for the same claim, and every time it is due again (lease expired, retry,
postponement over) its key is new; the claim inside the run, not the run key, is what guarantees a
document is processed once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from bson import ObjectId
from pymongo.errors import PyMongoError

from panel_pipeline.queue.store import Document, WorkQueue, claims_of
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.resources import MongoResource

QUEUE_TAG = "panel/queue"
DOCUMENT_TAG = "panel/document_id"
DOCUMENTS_PER_TICK = 200
FULL_SCAN_EVERY = dt.timedelta(minutes=5)
SENSOR_INTERVAL_SECONDS = 1  # the daemon loops every 5 s; anything <= 4 s ticks every loop

TagsFor = Callable[[Document], Mapping[str, str]]


@dataclass(frozen=True)
class QueueCursor:
    """Where the last tick stopped. `_id`s are only roughly time-ordered across writers, so a
    periodic full scan of unprocessed documents picks up any late insert with a smaller `_id`."""

    last_id: ObjectId | None = None
    full_scan_at: dt.datetime | None = None

    @classmethod
    def parse(cls, raw: str | None) -> QueueCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            ObjectId(data["last_id"]) if data.get("last_id") else None,
            dt.datetime.fromisoformat(data["full_scan_at"]) if data.get("full_scan_at") else None,
        )

    def serialize(self) -> str:
        return json.dumps(
            {
                "last_id": str(self.last_id) if self.last_id else None,
                "full_scan_at": self.full_scan_at.isoformat() if self.full_scan_at else None,
            }
        )


RUN_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def run_in_flight(instance: dg.DagsterInstance, job_name: str) -> str | None:
    """The id of a run of this job that is queued or running, if any (sensors of one-at-a-time jobs)."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=RUN_IN_FLIGHT), limit=1)
    return runs[0].run_id if runs else None


def pending_work(
    queue: WorkQueue,
    cursor: QueueCursor,
    now: dt.datetime,
    fields: Sequence[str] = (),
    match: Mapping[str, Any] | None = None,
) -> tuple[list[Document], QueueCursor]:
    """New and due documents (matching `match`) for one tick, with `fields` besides `_id`, and the cursor after it."""
    full_scan = cursor.full_scan_at is None or now - cursor.full_scan_at >= FULL_SCAN_EVERY
    new = queue.new_documents(None if full_scan else cursor.last_id, DOCUMENTS_PER_TICK, fields, match)
    due = queue.due_documents(DOCUMENTS_PER_TICK, fields, match)
    seen_ids = [doc["_id"] for doc in new] + ([cursor.last_id] if cursor.last_id else [])
    next_cursor = QueueCursor(
        last_id=max(seen_ids) if seen_ids else None,
        full_scan_at=now if full_scan else cursor.full_scan_at,
    )
    return new + due, next_cursor


def run_key(collection: str, doc: Document) -> str:
    """Unique per claim: `claims` never goes down, unlike `attempts`, which a postponement gives back."""
    return f"{collection}:{doc['_id']}:{claims_of(doc)}"


def per_document_requests(
    collection: str, docs: Sequence[Document], partitions_def: dg.DynamicPartitionsDefinition, tags_for: TagsFor
) -> dg.SensorResult:
    keys = [str(doc["_id"]) for doc in docs]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key(collection, doc),
                partition_key=key,
                tags={**tags_for(doc), QUEUE_TAG: collection, DOCUMENT_TAG: key},
            )
            for doc, key in zip(docs, keys, strict=True)
        ],
        dynamic_partitions_requests=[partitions_def.build_add_request(keys)],
    )


def batch_request(collection: str, docs: Sequence[Document], op_name: str) -> dg.SensorResult:
    """One run for all of them: the run's config lists the ids it will claim."""
    ids = [str(doc["_id"]) for doc in docs]
    digest = hashlib.sha1("|".join(run_key(collection, doc) for doc in docs).encode()).hexdigest()[:16]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{collection}:batch:{digest}",
                run_config={"ops": {op_name: {"config": {"document_ids": ids}}}},
                tags={QUEUE_TAG: collection, DOCUMENT_TAG: ids[0], "panel/document_count": str(len(ids))},
            )
        ]
    )


def build_queue_sensor(
    *,
    collection: str,
    job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition,
    partitions_def: dg.DynamicPartitionsDefinition | None = None,
    batch_op_name: str | None = None,
    description: str,
    name: str | None = None,
    match: Mapping[str, Any] | None = None,
    tag_fields: Sequence[str] = (),
    tags_for: TagsFor = lambda doc: {},
) -> dg.SensorDefinition:
    """A sensor for one queued collection (or the part of it matching `match`, e.g. one kind of
    mailing): one run per document (a dynamic partition each) when `partitions_def` is given, else
    one run per tick for a batch configured through `batch_op_name`. `tags_for` adds run tags from
    the document's `tag_fields` (e.g. a mailing's kind, for concurrency limits)."""
    if (partitions_def is None) == (batch_op_name is None):
        raise ValueError("give exactly one of partitions_def (a run per document) or batch_op_name (a batch)")

    @dg.sensor(
        name=name or f"{collection}_queue_sensor",
        job=job,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def queue_sensor(context: dg.SensorEvaluationContext, mongo: MongoResource) -> dg.SensorResult:
        try:
            docs, cursor = pending_work(
                mongo.work_queue(collection), QueueCursor.parse(context.cursor), utc_now(), tag_fields, match
            )
        except PyMongoError as exc:
            return dg.SensorResult(
                skip_reason=f"MongoDB is unreachable ({type(exc).__name__}); {collection} will be read on the next tick"
            )
        if not docs:
            return dg.SensorResult(skip_reason=f"no unprocessed {collection}", cursor=cursor.serialize())
        if partitions_def is not None:
            result = per_document_requests(collection, docs, partitions_def, tags_for)
        else:
            result = batch_request(collection, docs, batch_op_name)  # type: ignore[arg-type]  # the factory requires one of partitions_def, batch_op_name
        return dg.SensorResult(
            run_requests=result.run_requests,
            dynamic_partitions_requests=result.dynamic_partitions_requests,
            cursor=cursor.serialize(),
        )

    return queue_sensor


def release_documents_of_run(mongo: MongoResource, collections: Sequence[str], run_id: str, why: str) -> dict[str, str]:
    """Write a failed or cancelled run back onto every document it still held."""
    released: dict[str, str] = {}
    for collection in collections:
        released.update(mongo.work_queue(collection).release_owner(run_id, why))
    return released


def build_run_failure_sensors(collections: Sequence[str]) -> list[dg.SensorDefinition]:
    """When any run of this code location fails or is cancelled, the documents it still held are
    released for a retry (or failed once their attempts are used up), so none stays `processing`."""

    @dg.run_failure_sensor(
        name="queue_run_failure_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    )
    def on_failure(context: dg.RunFailureSensorContext, mongo: MongoResource) -> None:
        message = context.failure_event.message or "no message"
        why = f"run {context.dagster_run.run_id} failed: {message}"
        released = release_documents_of_run(mongo, collections, context.dagster_run.run_id, why)
        context.log.info(f"released {len(released)} document(s): {released}")

    @dg.run_status_sensor(
        name="queue_run_cancel_sensor",
        run_status=dg.DagsterRunStatus.CANCELED,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    )
    def on_cancel(context: dg.RunStatusSensorContext, mongo: MongoResource) -> None:
        why = f"run {context.dagster_run.run_id} was cancelled"
        released = release_documents_of_run(mongo, collections, context.dagster_run.run_id, why)
        context.log.info(f"released {len(released)} document(s): {released}")

    return [on_failure, on_cancel]
