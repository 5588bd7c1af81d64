"""Keeps the raw responses current: every hour, today's and yesterday's partitions; and once a
week, the sweep that notices responses deleted in SurveyGizmo."""

import datetime as dt

import dagster as dg

from panel_pipeline.extractor.assets import UK
from panel_pipeline.extractor.jobs import deletion_sweep_job, extract_job


@dg.schedule(
    job=extract_job,
    cron_schedule="5 * * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def hourly_extract_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """Today's partition while the day runs, and yesterday's for responses completed late."""
    today = context.scheduled_execution_time.astimezone(UK).date()
    days = [today - dt.timedelta(days=1), today]
    return [
        dg.RunRequest(
            partition_key=day.isoformat(), run_key=f"{day.isoformat()}@{context.scheduled_execution_time.isoformat()}"
        )
        for day in days
    ]


weekly_deletion_sweep_schedule = dg.ScheduleDefinition(
    name="weekly_deletion_sweep_schedule",
    job=deletion_sweep_job,
    cron_schedule="30 3 * * 0",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Sundays at 03:30 UK time, when few responses come in: the deleted-response sweep.",
)
