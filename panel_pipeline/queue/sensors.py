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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg
from pymongo.errors import PyMongoError

from panel_pipeline.queue.store import Document, QueueCursor, claims_of, pending_work
from panel_pipeline.queue.worker import serving_worker
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.resources import MongoResource, StandingWorkers

QUEUE_TAG = "panel/queue"
DOCUMENT_TAG = "panel/document_id"
SENSOR_INTERVAL_SECONDS = 1  # the daemon loops every 5 s; anything <= 4 s ticks every loop
# Keeping the standing workers up and releasing a failed run's documents: nobody waits on these by
# the second (a worker's hand-over starts minutes ahead; a released document waits for its retry
# anyway), and every tick builds a Dagster instance in the code server and writes a tick record.
UPKEEP_SENSOR_SECONDS = 15

TagsFor = Callable[[Document], Mapping[str, str]]


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
    served_by: str | None = None,
) -> dg.SensorDefinition:
    """A sensor for one queued collection (or the part of it matching `match`, e.g. one kind of
    mailing): one run per document (a dynamic partition each) when `partitions_def` is given, else
    one run per tick for a batch configured through `batch_op_name`. `tags_for` adds run tags from
    the document's `tag_fields` (e.g. a mailing's kind, for concurrency limits). With `served_by`
    (a standing worker's duty) the sensor is the backstop: it stands back while that worker serves."""
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
            worker = serving_worker(mongo.db(), served_by, utc_now()) if served_by else None
            if worker is not None:
                return dg.SensorResult(
                    skip_reason=f"the standing {served_by} worker (run {worker['owner']}) serves {collection} now"
                )
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


WORKER_TAG = "panel/worker"
START_GRACE = dt.timedelta(seconds=30)  # started this long ago, yet nobody holds the slot: it is not serving
# A worker run is at most a hand-over (waiting for its slot) plus a window (serving) old while live,
# and takes moments to finish after: this much older, without the slot, it was stopped or killed.
STALE_MARGIN = dt.timedelta(minutes=5)


def build_worker_sensor(*, duty: str, job: dg.JobDefinition, op_name: str, description: str) -> dg.SensorDefinition:
    """Keeps one standing worker serving `duty`: asks for a run when none is queued or running, and
    for its successor shortly before its window ends (the successor waits for the slot, so the
    hand-over has no gap) or when the running one is not serving. At most two runs at a time."""

    @dg.sensor(
        name=f"{duty}_worker_sensor",
        job=job,
        minimum_interval_seconds=UPKEEP_SENSOR_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def keep_worker(
        context: dg.SensorEvaluationContext, mongo: MongoResource, workers: StandingWorkers
    ) -> dg.SensorResult:
        if not workers.enabled:
            return dg.SensorResult(
                skip_reason="standing workers are off (PANEL_STANDING_WORKERS=off): the polling sensors serve"
            )
        now = utc_now()
        in_flight = context.instance.get_runs(
            filters=dg.RunsFilter(job_name=job.name, statuses=RUN_IN_FLIGHT), limit=10
        )
        try:
            slot = serving_worker(mongo.db(), duty, now)
        except PyMongoError as exc:
            return dg.SensorResult(skip_reason=f"MongoDB is unreachable ({type(exc).__name__})")
        handover = dt.timedelta(seconds=workers.handover_seconds)
        stale_after = dt.timedelta(seconds=workers.serve_seconds) + handover + STALE_MARGIN
        stale = stale_worker_runs(in_flight, slot, now, stale_after, context.instance)
        for run in stale:
            context.instance.report_run_failed(run, f"the {duty} worker {stale_message(stale_after)}")
        in_flight = [run for run in in_flight if run not in stale]
        reason = successor_reason(in_flight, slot, now, handover, context.instance)
        if reason is None:
            serving = f"run {slot['owner']} serves until {slot['serve_until'].isoformat()}" if slot else "starting"
            return dg.SensorResult(skip_reason=f"the {duty} worker is {serving}")
        after = in_flight[0].run_id if in_flight else _last_run_id(context.instance, job.name)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{duty}:after:{after}",
                    run_config={"ops": {op_name: {"config": {"serve_seconds": workers.serve_seconds}}}},
                    tags={WORKER_TAG: duty, "panel/why": reason},
                )
            ]
        )

    return keep_worker


def stale_worker_runs(
    in_flight: Sequence[dg.DagsterRun],
    slot: Mapping[str, Any] | None,
    now: dt.datetime,
    stale_after: dt.timedelta,
    instance: dg.DagsterInstance,
) -> list[dg.DagsterRun]:
    """Worker runs Dagster counts as in flight that cannot be live: not the slot's owner, and started
    longer ago than `stale_after` (a window, the hand-over and STALE_MARGIN). A `kill -9` or a
    reboot under `make run` leaves such runs STARTED for good, since run monitoring cannot check
    the local DefaultRunLauncher's workers; counted as in flight, two of them kept a duty from ever
    getting a worker again."""
    owner = slot["owner"] if slot else None
    return [
        run
        for run in in_flight
        if run.run_id != owner and _started_over(instance, run, stale_after.total_seconds(), now)
    ]


def _started_over(instance: dg.DagsterInstance, run: dg.DagsterRun, seconds: float, now: dt.datetime) -> bool:
    """The run started (its run worker began) more than `seconds` before `now`."""
    record = instance.get_run_record_by_id(run.run_id)
    started = record.start_time if record else None
    return started is not None and now.timestamp() - started > seconds


def stale_message(stale_after: dt.timedelta) -> str:
    return f"started over {stale_after.total_seconds():.0f} s ago and does not hold its slot: stopped or killed"


def successor_reason(
    in_flight: Sequence[dg.DagsterRun],
    slot: Mapping[str, Any] | None,
    now: dt.datetime,
    handover: dt.timedelta,
    instance: dg.DagsterInstance,
) -> str | None:
    """Why a new worker run is needed now, or None: a successor is asked for once per running worker."""
    if not in_flight:
        return "no worker running"
    if len(in_flight) > 1:
        return None
    run = in_flight[0]
    if slot is not None and slot["owner"] == run.run_id:
        return "hand-over: its window ends soon" if slot["serve_until"] - now <= handover else None
    if slot is not None:  # its predecessor still serves: it waits for the slot
        return None
    if _started_over(instance, run, START_GRACE.total_seconds(), now):
        return (
            f"run {run.run_id} started {START_GRACE.total_seconds():.0f}+ s ago but does not serve (stopped or killed)"
        )
    return None


def _last_run_id(instance: dg.DagsterInstance, job_name: str) -> str:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name), limit=1)
    return runs[0].run_id if runs else "none"


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
        minimum_interval_seconds=UPKEEP_SENSOR_SECONDS,
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
        minimum_interval_seconds=UPKEEP_SENSOR_SECONDS,
    )
    def on_cancel(context: dg.RunStatusSensorContext, mongo: MongoResource) -> None:
        why = f"run {context.dagster_run.run_id} was cancelled"
        released = release_documents_of_run(mongo, collections, context.dagster_run.run_id, why)
        context.log.info(f"released {len(released)} document(s): {released}")

    return [on_failure, on_cancel]
