"""The Mailer's definitions: what the code location loads from this part."""

import dagster as dg

from panel_pipeline.mailer.assets import (
    email_templates,
    mailings,
    ses_feedback,
    ses_suppression_sync,
    transactional_mail,
)
from panel_pipeline.mailer.jobs import (
    email_templates_job,
    mailing_control_job,
    mailing_job,
    prompt_mail_worker_job,
    ses_feedback_job,
    ses_suppression_job,
    transactional_mail_job,
)
from panel_pipeline.mailer.schedules import hourly_suppression_sync_schedule, template_sync_schedule
from panel_pipeline.mailer.sensors import (
    mailing_control_sensor,
    mailings_queue_sensor,
    prompt_mail_worker_sensor,
    ses_feedback_sensor,
    transactional_mail_queue_sensor,
)

defs = dg.Definitions(
    assets=[email_templates, mailings, transactional_mail, ses_feedback, ses_suppression_sync],
    jobs=[
        mailing_job,
        transactional_mail_job,
        prompt_mail_worker_job,
        email_templates_job,
        ses_feedback_job,
        ses_suppression_job,
        mailing_control_job,
    ],
    sensors=[
        mailings_queue_sensor,
        transactional_mail_queue_sensor,
        prompt_mail_worker_sensor,
        ses_feedback_sensor,
        mailing_control_sensor,
    ],
    schedules=[template_sync_schedule, hourly_suppression_sync_schedule],
)
