"""Keeps the raw responses current: every hour, today's and yesterday's partitions."""

import datetime as dt

import dagster as dg

from panel_pipeline.extractor.assets import UK
from panel_pipeline.extractor.sensors import extract_job


@dg.schedule(
    job=extract_job, cron_schedule="5 * * * *", execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def hourly_extract_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """Today's partition while the day runs, and yesterday's for responses completed late."""
    today = context.scheduled_execution_time.astimezone(UK).date()
    days = [today - dt.timedelta(days=1), today]
    return [dg.RunRequest(partition_key=day.isoformat(), run_key=f"{day.isoformat()}@{context.scheduled_execution_time.isoformat()}") for day in days]
