"""The Mailer's jobs: one run per bulk mailing (a `mailings` partition); prompt mail (transactional,
a dynamic sample's newcomers) sent by a standing worker run, or batched per sensor tick while none
serves; the SES template sync; the SES feedback drain; and the SES suppression-list sync."""

import dagster as dg

from panel_pipeline.mailer.assets import PROMPT_MAIL, PromptMailSender
from panel_pipeline.mailer.resources import SesResource
from panel_pipeline.queue.store import QueueCursor, pending_work
from panel_pipeline.queue.worker import Doorbell, WorkerSlot, inserts_matching, serve
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.contract import MAILINGS, PIPELINE_STATE
from panel_pipeline.shared.resources import MongoResource

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

ses_suppression_job = dg.define_asset_job(
    "ses_suppression_job",
    selection=dg.AssetSelection.assets("ses_suppression_sync"),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "ses_suppression"},
)


PROMPT_MAIL_DUTY = "prompt_mail"


class WorkerWindow(dg.Config):
    serve_seconds: float = 600.0


@dg.op(tags={"panel/part": "prompt_mail_worker"})
def serve_prompt_mail(
    context: dg.OpExecutionContext, config: WorkerWindow, mongo: MongoResource, ses: SesResource
) -> None:
    """The standing mail worker: for `serve_seconds`, sends prompt mail (transactional e-mail, a
    dynamic sample's newcomers' invitations) within about a second of its insert, woken by a change
    stream on `mailings`. Each batch it sends is a materialization of `transactional_mail` (and each
    invitation of its `mailings` partition) in this run; every mailing is claimed with a lease
    exactly as the polling path claims it."""
    db = mongo.db()
    queue = mongo.work_queue(MAILINGS)
    owner = context.run.run_id
    cursor = QueueCursor()
    sender = PromptMailSender(db, queue, ses, owner, context)

    def step() -> int:
        nonlocal cursor
        docs, cursor = pending_work(queue, cursor, utc_now(), match=PROMPT_MAIL)
        if not docs:
            return 0
        sent = sender.send([doc["_id"] for doc in docs])
        context.log_event(dg.AssetMaterialization(asset_key="transactional_mail", metadata=sent.metadata()))
        return len(docs)

    doorbell = Doorbell(db[MAILINGS], inserts_matching(PROMPT_MAIL))
    report = serve(WorkerSlot(db[PIPELINE_STATE], PROMPT_MAIL_DUTY, owner), step, doorbell, config.serve_seconds)
    (context.log.warning if report.lost_slot else context.log.info)(f"served: {report.summary()} (mailings)")


@dg.job(executor_def=dg.in_process_executor, tags={"panel/part": "prompt_mail_worker"})
def prompt_mail_worker_job() -> None:
    """A standing worker for prompt mail, kept running by prompt_mail_worker_sensor."""
    serve_prompt_mail()
