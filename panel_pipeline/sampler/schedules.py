"""The response rates, learned again every night from the panel's invitations."""

import dagster as dg

from panel_pipeline.sampler.jobs import response_rates_job

daily_response_rates_schedule = dg.ScheduleDefinition(
    name="daily_response_rates_schedule",
    job=response_rates_job,
    cron_schedule="15 4 * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 04:15 UK time: response rates from the last 180 days of invitations.",
)
