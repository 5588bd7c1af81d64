"""The Mailer's jobs: one run per bulk mailing (a `mailings` partition); prompt mail (transactional,
a dynamic sample's newcomers) sent by a standing worker run, or batched per sensor tick while none
serves; the SES template sync; the SES feedback drain; the SES suppression-list sync; and a mailing's
cancel, pause or resume."""

import dagster as dg
from pydantic import Field

from panel_pipeline.mailer.assets import PROMPT_MAIL, PromptMailSender
from panel_pipeline.mailer.control import ControlRefused, apply_control, check_action, check_mailing_id
from panel_pipeline.mailer.resources import SesResource
from panel_pipeline.mailer.store import MailingControls, MailLedger
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


class MailingControl(dg.Config):
    """What the operator asks, in the Launchpad (mailing_control_sensor fills it for the backend's)."""

    mailing_id: str = Field(description="The mailings document's _id (24 hex digits).")
    action: str = Field(description="cancel, pause or resume.")
    reason: str = Field(default="", description="Why, for the record (stored redacted on the document).")
    requested_by: str = Field(default="operator", description="Who asks (a name, not an address).")
    from_document: bool = Field(
        default=False,
        description="Apply the control the backend set on the document and write nothing (the sensor's runs).",
    )


@dg.op(tags={"panel/part": "mailing_control"}, out=dg.Out(str))
def apply_mailing_control(context: dg.OpExecutionContext, config: MailingControl, mongo: MongoResource) -> dg.Output:
    """Cancel, pause or resume one mailing: writes the operator's request as the backend would
    (`control`, `control_by`, `control_reason`), then applies the control pending on the document;
    a mailing being sent is left to its run, which stops within one batch. Refusals fail the run,
    naming the field or saying why (e.g. a cancelled mailing cannot be resumed)."""
    db = mongo.db()
    queue = mongo.work_queue(MAILINGS)
    controls = MailingControls(db[MAILINGS])
    controls.ensure_indexes()
    ledger = MailLedger(db.mail_log, db.mail_events)
    ledger.ensure_indexes()
    try:
        mailing_id = check_mailing_id(config.mailing_id)
        if not config.from_document:
            action = check_action(config.action)
            by = config.requested_by.strip() or "operator"
            if not controls.request(mailing_id, action, by, config.reason):
                raise ControlRefused(f"mailing_id: no mailings document {mailing_id}")
        outcome = apply_control(db, queue, ledger, mailing_id, context.run.run_id)
    except ControlRefused as refused:
        raise dg.Failure(description=str(refused)) from None
    metadata: dict[str, str | bool] = {
        "mailing_id": str(mailing_id),
        "action": outcome.action,
        "applied": outcome.applied,
    }
    if outcome.refused:
        raise dg.Failure(description=f"{outcome.action or 'control'} refused: {outcome.message}", metadata=metadata)
    context.log.info(f"mailing {mailing_id}: {outcome.message}")
    return dg.Output(outcome.message, metadata={**metadata, "outcome": outcome.message})


@dg.job(executor_def=dg.in_process_executor, tags={"panel/part": "mailing_control"})
def mailing_control_job() -> None:
    """Cancel, pause or resume a mailing (Launchpad: `mailing_id`, `action`, `reason`); also what
    mailing_control_sensor runs for a control the backend set. docs/mailer.md, "Control"."""
    apply_mailing_control()
