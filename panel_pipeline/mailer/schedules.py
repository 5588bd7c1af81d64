"""The SES templates are synced every morning (and a mailing syncs its own template on demand)."""

import dagster as dg

from panel_pipeline.mailer.jobs import email_templates_job

template_sync_schedule = dg.ScheduleDefinition(
    job=email_templates_job,
    cron_schedule="0 6 * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
