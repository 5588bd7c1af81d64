"""The Mailer's jobs: one run per bulk mailing (a `mailings` partition), transactional mail batched
per sensor tick, the SES template sync, and the SES feedback drain."""

import dagster as dg

mailing_job = dg.define_asset_job(
    "mailing_job",
    selection=dg.AssetSelection.assets("mailings"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "mailer"},
)

email_templates_job = dg.define_asset_job("email_templates_job", selection=dg.AssetSelection.assets("email_templates"))

transactional_mail_job = dg.define_asset_job(
    "transactional_mail_job",
    selection=dg.AssetSelection.assets("transactional_mail"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "transactional_mail"},
)

ses_feedback_job = dg.define_asset_job(
    "ses_feedback_job",
    selection=dg.AssetSelection.assets("ses_feedback"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "ses_feedback"},
)
