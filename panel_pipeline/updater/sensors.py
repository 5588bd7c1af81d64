"""The Updater's sensors: one keeps the standing updater worker serving; the other, its backstop,
runs an update when members changed and no worker serves (it compares the newest change with the cursor)."""

import dagster as dg
from pymongo.errors import PyMongoError

from panel_pipeline.queue.sensors import SENSOR_INTERVAL_SECONDS, build_worker_sensor, run_in_flight
from panel_pipeline.queue.worker import serving_worker
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline.updater import store
from panel_pipeline.updater.assets import DYNAMIC_SAMPLES_DUTY
from panel_pipeline.updater.jobs import dynamic_sample_updates_job, dynamic_samples_worker_job


@dg.sensor(
    job=dynamic_sample_updates_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def member_changes_sensor(context: dg.SensorEvaluationContext, mongo: MongoResource) -> dg.SensorResult:
    """The backstop of the standing updater worker: while none serves, requests an update of the
    dynamic samples when a member joined or changed profile since the last update (two index
    look-ups a tick); one update at a time, and a failed one is simply requested again on the next
    tick, since its cursor did not move."""
    try:
        db = mongo.db()
        worker = serving_worker(db, DYNAMIC_SAMPLES_DUTY, utc_now())
        newest = store.unseen_change(db)
    except PyMongoError as exc:
        return dg.SensorResult(skip_reason=f"MongoDB is unreachable ({type(exc).__name__})")
    if worker is not None:
        return dg.SensorResult(skip_reason=f"the standing updater worker (run {worker['owner']}) serves now")
    if newest is None:
        return dg.SensorResult(skip_reason="no member changed since the last update")
    running = run_in_flight(context.instance, dynamic_sample_updates_job.name)
    if running:
        return dg.SensorResult(skip_reason=f"an update is already running ({running})")
    return dg.SensorResult(run_requests=[dg.RunRequest(tags={"panel/changes_until": newest.isoformat()})])


dynamic_samples_worker_sensor = build_worker_sensor(
    duty=DYNAMIC_SAMPLES_DUTY,
    job=dynamic_samples_worker_job,
    op_name="serve_dynamic_samples",
    description="Keeps one standing updater worker (dynamic_samples_worker_job) serving the dynamic "
    "samples, and starts its successor before its window ends.",
)
