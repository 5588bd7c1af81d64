"""The Updater runs when members changed: a sensor compares the newest change with the cursor."""

import dagster as dg
from pymongo.errors import PyMongoError

from panel_pipeline.queue.sensors import SENSOR_INTERVAL_SECONDS, run_in_flight
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline.updater import store
from panel_pipeline.updater.jobs import dynamic_sample_updates_job


@dg.sensor(
    job=dynamic_sample_updates_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def member_changes_sensor(context: dg.SensorEvaluationContext, mongo: MongoResource) -> dg.SensorResult:
    """Requests an update of the dynamic samples when a member joined or changed profile since the
    last update (two index look-ups a tick); one update at a time, and a failed one is simply
    requested again on the next tick, since its cursor did not move."""
    try:
        db = mongo.db()
        newest, cursor = store.latest_change(db), store.read_cursor(db)
    except PyMongoError as exc:
        return dg.SensorResult(skip_reason=f"MongoDB is unreachable ({type(exc).__name__})")
    if newest is None or (cursor is not None and newest <= cursor):
        return dg.SensorResult(skip_reason="no member changed since the last update")
    running = run_in_flight(context.instance, dynamic_sample_updates_job.name)
    if running:
        return dg.SensorResult(skip_reason=f"an update is already running ({running})")
    return dg.SensorResult(run_requests=[dg.RunRequest(tags={"panel/changes_until": newest.isoformat()})])
