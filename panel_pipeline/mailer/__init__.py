"""The Mailer: Foundation for Emails templates through SES, each recipient exactly once."""

import dagster as dg

from panel_pipeline.mailer.assets import email_templates, mailings, transactional_mail
from panel_pipeline.mailer.schedules import template_sync_schedule
from panel_pipeline.mailer.sensors import (
    mailing_job,
    mailings_queue_sensor,
    template_job,
    transactional_mail_job,
    transactional_mail_queue_sensor,
)

defs = dg.Definitions(
    assets=[email_templates, mailings, transactional_mail],
    jobs=[mailing_job, transactional_mail_job, template_job],
    sensors=[mailings_queue_sensor, transactional_mail_queue_sensor],
    schedules=[template_sync_schedule],
)
