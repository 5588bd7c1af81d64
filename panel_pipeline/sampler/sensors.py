"""Sample requests from the queue: one run (and one `sample_requests` partition) per request; and
a look at each open sample's fieldwork every few minutes.

The fieldwork sensor reads the open samples through the `fieldwork_open` partial index, and asks
for a `sample_fieldwork` run of a sample (run key = sample id + the time bucket, buckets
`FieldworkTiming.pass_seconds` long: at most one run per sample per bucket) when its fingerprint
(its survey's transactions, its invited members: two index counts) changed since the last run it
asked for, when its close_at has come, or once REFRESH_HOURS of fieldwork time have passed (the
expected completes move with time; on a stepped fieldwork clock, each step is news). Never while a
run of that sample is queued or running.

Both tag each run with the sample's name (SAMPLE_NAME_TAG, through `tag_value`), so the Runs page
finds a sample's runs by the name an analyst knows.
"""

from __future__ import annotations

import json

import dagster as dg
from pymongo.errors import PyMongoError

from panel_pipeline.queue.sensors import RUN_IN_FLIGHT, build_queue_sensor
from panel_pipeline.sampler import store
from panel_pipeline.sampler.jobs import sample_fieldwork_job, sample_job
from panel_pipeline.sampler.resources import FieldworkTiming
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.contract import SAMPLES
from panel_pipeline.shared.metadata import tag_value
from panel_pipeline.shared.mongo import as_utc
from panel_pipeline.shared.partitions import sample_request_partitions
from panel_pipeline.shared.resources import MongoResource

FIELDWORK_TICK_SECONDS = 1  # every daemon loop (5 s), as the queue sensors; a sample's passes are `pass_seconds` apart
REFRESH_HOURS = 1.0  # of fieldwork time (FieldworkTiming's clock)
SAMPLE_TAG = "panel/sample_id"
SAMPLE_NAME_TAG = "panel/sample_name"
PARTITION_TAG = "dagster/partition"

samples_queue_sensor = build_queue_sensor(
    collection=SAMPLES,
    job=sample_job,
    partitions_def=sample_request_partitions,
    description="Turns each `samples` document with processed: false into a run of its own partition.",
    tag_fields=("name",),
    tags_for=lambda doc: {SAMPLE_NAME_TAG: tag_value(doc.get("name"))},
)


@dg.sensor(
    job=sample_fieldwork_job,
    minimum_interval_seconds=FIELDWORK_TICK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A `sample_fieldwork` run per sample whose fieldwork is open and has news, at most one per "
    "`fieldwork_timing.pass_seconds` per sample.",
)
def fieldwork_sensor(
    context: dg.SensorEvaluationContext, mongo: MongoResource, fieldwork_timing: FieldworkTiming
) -> dg.SensorResult:
    now = utc_now()
    bucket = int(now.timestamp() // fieldwork_timing.pass_seconds)
    seen: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    try:
        db = mongo.db()
        hours = float(fieldwork_timing.fieldwork_clock(db).hours_at(now)[0])
        store.ensure_fieldwork_indexes(db)
        open_samples = store.open_fieldwork_samples(db)
        fingerprints = {
            str(doc["_id"]): store.fieldwork_fingerprint(db, doc["_id"], doc.get("survey_id")) for doc in open_samples
        }
    except PyMongoError as exc:
        return dg.SensorResult(skip_reason=f"MongoDB is unreachable ({type(exc).__name__}); fieldwork waits a tick")
    busy = samples_in_flight(context.instance)
    requests, cursor = [], {}
    for doc in open_samples:
        key = str(doc["_id"])
        last_fingerprint, last_bucket, last_hours = [*seen.get(key, []), None, None, None][:3]
        close_at = (doc.get("fieldwork_state") or {}).get("close_at")
        due = last_bucket is None or (
            bucket != last_bucket
            and (
                fingerprints[key] != last_fingerprint
                or last_hours is None
                or hours - last_hours >= REFRESH_HOURS
                or (close_at is not None and now >= as_utc(close_at))
            )
        )
        if key in busy or not due:
            cursor[key] = [last_fingerprint, last_bucket, last_hours]
            continue
        tags = {SAMPLE_TAG: key, SAMPLE_NAME_TAG: tag_value(doc.get("name"))}
        requests.append(dg.RunRequest(run_key=f"fieldwork:{key}:{bucket}", partition_key=key, tags=tags))
        cursor[key] = [fingerprints[key], bucket, hours]
    if not requests:
        skip = f"{len(open_samples)} open fieldwork sample(s), none with news" if open_samples else "no open fieldwork"
        return dg.SensorResult(skip_reason=skip, cursor=json.dumps(cursor))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            sample_request_partitions.build_add_request([str(r.partition_key) for r in requests])
        ],
        cursor=json.dumps(cursor),
    )


def samples_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """The samples a `sample_fieldwork` run is queued or running for."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=sample_fieldwork_job.name, statuses=RUN_IN_FLIGHT))
    return {run.tags.get(PARTITION_TAG, "") for run in runs}
