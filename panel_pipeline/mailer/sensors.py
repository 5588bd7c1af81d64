"""Mailings from the queue: one run (and one `mailings` partition) per mailing."""

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

mailings_queue_sensor = build_queue_sensor(
    collection="mailings",
    job=mailing_job,
    partitions_def=mailings,
    description="Turns each `mailings` document with processed: false into a run of its own partition; "
    "bulk mailings run one at a time, transactional ones beside them.",
    tag_fields=["kind"],
    tags_for=lambda doc: {"panel/mail_kind": str(doc.get("kind", "bulk"))},
)
