"""Mailings from the queue: a run (and a `mailings` partition) per bulk mailing; transactional ones batched per tick."""

import dagster as dg

from panel_pipeline.partitions import mailings
from panel_pipeline.queue.sensors import build_queue_sensor

mailing_job = dg.define_asset_job(
    "mailing_job",
    selection=dg.AssetSelection.assets("mailings"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "mailer"},
)

template_job = dg.define_asset_job("email_templates_job", selection=dg.AssetSelection.assets("email_templates"))

transactional_mail_job = dg.define_asset_job(
    "transactional_mail_job",
    selection=dg.AssetSelection.assets("transactional_mail"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "transactional_mail"},
)

TRANSACTIONAL = {"kind": "transactional"}

mailings_queue_sensor = build_queue_sensor(
    collection="mailings",
    job=mailing_job,
    partitions_def=mailings,
    match={"kind": {"$ne": "transactional"}},
    description="Turns each bulk `mailings` document with processed: false into a run of its own "
    "partition; bulk mailings run one at a time.",
    tags_for=lambda doc: {"panel/mail_kind": "bulk"},
)

transactional_mail_queue_sensor = build_queue_sensor(
    collection="mailings",
    name="transactional_mail_queue_sensor",
    job=transactional_mail_job,
    batch_op_name="transactional_mail",
    match=TRANSACTIONAL,
    description="Turns the transactional `mailings` documents with processed: false into one run per "
    "tick, beside any bulk mailing, so a password e-mail never waits for a process per e-mail.",
)
