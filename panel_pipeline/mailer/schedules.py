"""The SES templates are synced every morning (and a mailing syncs its own template on demand); SES's
account suppression list is brought in step with members' statuses every hour."""

import dagster as dg

from panel_pipeline.mailer.jobs import email_templates_job, ses_suppression_job

template_sync_schedule = dg.ScheduleDefinition(
    job=email_templates_job,
    cron_schedule="0 6 * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

hourly_suppression_sync_schedule = dg.ScheduleDefinition(
    name="hourly_suppression_sync_schedule",
    job=ses_suppression_job,
    cron_schedule="17 * * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
