"""Mailings from the queue: a run (and a `mailings` partition) per bulk mailing; prompt mail
(transactional, a dynamic sample's newcomers) sent by the standing worker this part keeps running,
or batched per tick while none serves; SES's feedback drained whenever its SQS queue holds messages;
a control run for each cancel, pause or resume set on a mailing no run holds."""

from collections.abc import Mapping
from typing import Any

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError
from pymongo.errors import PyMongoError

from panel_pipeline.mailer.assets import PROMPT_MAIL
from panel_pipeline.mailer.jobs import (
    PROMPT_MAIL_DUTY,
    apply_mailing_control,
    mailing_control_job,
    mailing_job,
    prompt_mail_worker_job,
    ses_feedback_job,
    transactional_mail_job,
)
from panel_pipeline.mailer.resources import SqsResource
from panel_pipeline.mailer.ses import aws_error_code
from panel_pipeline.mailer.store import MailingControls
from panel_pipeline.queue.sensors import (
    DOCUMENT_TAG,
    QUEUE_TAG,
    SENSOR_INTERVAL_SECONDS,
    build_queue_sensor,
    build_worker_sensor,
    run_in_flight,
)
from panel_pipeline.queue.store import DOCUMENTS_PER_TICK, claims_of, unheld
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.contract import BULK, MAILINGS, PROMPT, TRANSACTIONAL
from panel_pipeline.shared.partitions import mailing_partitions
from panel_pipeline.shared.privacy import redact
from panel_pipeline.shared.resources import MongoResource

mailings_queue_sensor = build_queue_sensor(
    collection=MAILINGS,
    job=mailing_job,
    partitions_def=mailing_partitions,
    match={"kind": {"$ne": TRANSACTIONAL}, "delivery": {"$ne": PROMPT}},
    description="Turns each bulk `mailings` document with processed: false into a run of its own "
    "partition; bulk mailings run one at a time. Prompt ones (a dynamic sample's newcomers) are the "
    "standing mail worker's.",
    tags_for=lambda doc: {"panel/mail_kind": BULK},
)

transactional_mail_queue_sensor = build_queue_sensor(
    collection=MAILINGS,
    name="transactional_mail_queue_sensor",
    job=transactional_mail_job,
    batch_op_name="transactional_mail",
    match=PROMPT_MAIL,
    served_by=PROMPT_MAIL_DUTY,
    description="The backstop of the standing mail worker: while none serves, turns the transactional "
    "and prompt `mailings` documents with processed: false into one run per tick, beside any bulk mailing.",
)

prompt_mail_worker_sensor = build_worker_sensor(
    duty=PROMPT_MAIL_DUTY,
    job=prompt_mail_worker_job,
    op_name="serve_prompt_mail",
    description="Keeps one standing mail worker (prompt_mail_worker_job) serving transactional mail and "
    "newcomers' invitations, and starts its successor before its window ends.",
)

FEEDBACK_CHECK_SECONDS = 30


@dg.sensor(
    job=ses_feedback_job,
    minimum_interval_seconds=FEEDBACK_CHECK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Asks for a ses_feedback run when the SES event queue (SQS) holds messages and no such run "
    "is queued or running.",
)
def ses_feedback_sensor(context: dg.SensorEvaluationContext, sqs: SqsResource) -> dg.SensorResult:
    try:
        waiting = sqs.queue().waiting()
    except (BotoCoreError, ClientError) as exc:
        return dg.SensorResult(
            skip_reason=f"the SES event queue is unreachable ({aws_error_code(exc)}); trying again on the next tick"
        )
    if not waiting:
        return dg.SensorResult(skip_reason="no SES events waiting")
    if run_in_flight(context.instance, ses_feedback_job.name):
        return dg.SensorResult(skip_reason=f"{waiting} SES events waiting for the ses_feedback run already under way")
    return dg.SensorResult(run_requests=[dg.RunRequest(tags={"panel/waiting_messages": str(waiting)})])


@dg.sensor(
    job=mailing_control_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts a mailing_control_job run for each `mailings` document with a `control` (cancel, "
    "pause, resume) that no run holds; a mailing being sent applies its own within one batch.",
)
def mailing_control_sensor(context: dg.SensorEvaluationContext, mongo: MongoResource) -> dg.SensorResult:
    controls = MailingControls(mongo.db()[MAILINGS])
    try:
        controls.ensure_indexes()
        docs = controls.pending(unheld(utc_now()), DOCUMENTS_PER_TICK)
    except PyMongoError as exc:
        return dg.SensorResult(skip_reason=f"MongoDB is unreachable ({type(exc).__name__}); controls read next tick")
    if not docs:
        return dg.SensorResult(skip_reason="no mailing controls pending")
    return dg.SensorResult(run_requests=[control_request(doc) for doc in docs])


def control_request(doc: Mapping[str, Any]) -> dg.RunRequest:
    """One run per control request and claim: `controls_applied` grows with each request applied and
    `claims` with each claim or take, so the key is new for the next request, or once the mailing was
    claimed again, and the same while this one waits. A run that failed is not relaunched for the same
    claim (its failure shows in the UI; the operator can launch the job again)."""
    mailing_id = str(doc["_id"])
    config = {"mailing_id": mailing_id, "action": redact(str(doc["control"]))[:20], "from_document": True}
    return dg.RunRequest(
        run_key=f"{MAILINGS}:{mailing_id}:control:{doc.get('controls_applied', 0)}:{claims_of(doc)}",
        run_config={"ops": {apply_mailing_control.name: {"config": config}}},
        tags={QUEUE_TAG: MAILINGS, DOCUMENT_TAG: mailing_id},
    )
