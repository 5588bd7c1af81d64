"""The Mailer's assets: the SES templates, one partition per mailing sent through SES, SES's feedback,
and SES's account suppression list kept in step with members' statuses.

A mailing is expanded (recipients resolved, planned and written to the ledger, a chunk at a time)
once: `expanded_at` on the mailing document says it was, so a re-claim after a pause goes straight
to sending. Its queue lease is renewed after each expansion chunk and each SES batch; a run that
finds it gone stops sending at once and fails, saying so. The renewal after a batch also reads the
document's `control`: a pause or cancel stops sending within one batch, and this run, holding the
lease, applies it (mailer/control.py). One SES gateway per run.
"""

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import dagster as dg
from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.mailer.breaker import AccountMonitor, MailingBreaker, guarded
from panel_pipeline.mailer.control import PAUSE, STOPPING, hold, stop_held_mailing
from panel_pipeline.mailer.dispatch import KeepAlive, SendingStopped, plan_recipients, send_mailing
from panel_pipeline.mailer.feedback import DrainReport, FeedbackStore, drain
from panel_pipeline.mailer.recipients import mark_members_reached, resolve_recipients
from panel_pipeline.mailer.report import CATEGORIES, MailingReport, report_chart_svg, who_got_what_query
from panel_pipeline.mailer.resources import SesResource, SqsResource
from panel_pipeline.mailer.ses import SendEventsNotPublished, SesGateway
from panel_pipeline.mailer.store import (
    CLAIMED,
    UNKNOWN,
    MailingControls,
    MailingReports,
    MailLedger,
    SuppressionStore,
)
from panel_pipeline.mailer.suppression import BOUNCE, COMPLAINT, SyncReport, sync_suppression
from panel_pipeline.mailer.validation import check_mailing
from panel_pipeline.queue.store import LeaseLost, RequestRejected, WorkQueue
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.contract import (
    BOUNCED,
    BULK,
    CANCELLED,
    MAILINGS,
    PAUSED,
    PIPELINE_STATE,
    PROMPT,
    TRANSACTIONAL,
    UNSUBSCRIBED,
    USERS,
)
from panel_pipeline.shared.metadata import OWNERS, markdown_image, row_count, table
from panel_pipeline.shared.partitions import mailing_partitions
from panel_pipeline.shared.privacy import describe_error
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline.shared.templates import EmailTemplate, load_templates

MAILING_PARTITIONS = mailing_partitions.name or "mailings"
# Unknown recipients wait for SES events; claimed ones for another worker's lease: look again then.
OPEN_RECIPIENTS_RECHECK = dt.timedelta(seconds=60)


@dg.asset(group_name="mailer", owners=OWNERS, kinds={"python", "aws"}, tags={"panel/part": "mailer"})
def email_templates(context: dg.AssetExecutionContext, ses: SesResource) -> dg.MaterializeResult:
    """The five e-mails built from templates/ (Foundation for Emails, committed in templates/dist),
    stored in SES under versioned names (`panel-<name>-<content hash>`): a changed template is a new
    SES template, so a mailing in flight keeps the version it started with. Template calls are paced
    to SES's 1 call/s."""
    gateway = ses.gateway()
    rows = [
        (template.name, gateway.ensure_template(template), template.content_hash[:12])
        for template in load_templates().values()
    ]
    context.log.info(f"{len(rows)} templates in SES")
    return dg.MaterializeResult(
        metadata={"templates": table(["template", "SES name", "content hash"], rows), "count": len(rows)}
    )


@dg.asset(
    partitions_def=mailing_partitions,
    deps=[email_templates, dg.AssetDep("samples", partition_mapping=dg.AllPartitionMapping())],
    group_name="mailer",
    owners=OWNERS,
    kinds={"python", "mongodb", "aws"},
    tags={"panel/part": "mailer"},
)
def mailings(context: dg.AssetExecutionContext, mongo: MongoResource, ses: SesResource) -> dg.MaterializeResult:
    """One bulk mailing (partition = the `mailings` document's `_id`) sent through SES, each recipient
    exactly once: recipients go into the `mail_log` ledger (unique per mailing and recipient), each
    batch's attempt is recorded before the SES call and each entry's result after it. Recipients who
    are not active are suppressed and those missing a template variable failed, each with the reason.
    The mailing is completed with its counts only when no recipient is pending, claimed or unknown;
    a daily-quota pause or unreconciled recipients postpone it without using up an attempt. A
    `control` (pause, cancel) on the document stops it within one batch (docs/mailer.md, "Control").
    Re-materialising a finished mailing sends nothing: it reports the ledger and the mailing's report
    (what SES said since: counts, rates over sent, a chart per hour; `ses_feedback` records the same
    as an observation of the partition whenever new events arrive), and the who-got-what query."""
    db = mongo.db()
    mailing_id = ObjectId(context.partition_key)
    ledger = MailLedger(db.mail_log, db.mail_events)
    ledger.ensure_indexes()
    reports = mailing_reports(db)
    try:
        outcome = process_mailing(
            db, mongo.work_queue(MAILINGS), ledger, ses, ses.gateway(), mailing_id, context.run.run_id
        )
    except RequestRejected as rejected:
        raise dg.Failure(description=f"mailing rejected: {rejected}") from rejected
    except (SendingStopped, LeaseLost) as lost:
        context.log.error(describe_error(lost))
        raise dg.Failure(description=f"stopped: {describe_error(lost)}") from lost
    return mailing_result(ledger, reports, mailing_id, outcome)


class TransactionalBatch(dg.Config):
    document_ids: list[str]


# What the standing mail worker serves (and, while none serves, transactional_mail_queue_sensor):
# transactional mail, and the invitations of a dynamic sample's newcomers.
PROMPT_MAIL: dict[str, Any] = {"$or": [{"kind": TRANSACTIONAL}, {"delivery": PROMPT}]}


@dg.asset(
    deps=[email_templates],
    group_name="mailer",
    owners=OWNERS,
    kinds={"python", "mongodb", "aws"},
    tags={"panel/part": "transactional_mail"},
)
def transactional_mail(
    context: dg.AssetExecutionContext, config: TransactionalBatch, mongo: MongoResource, ses: SesResource
) -> dg.MaterializeResult:
    """Prompt mail: transactional e-mail (password recovery, welcome, points registered, paid) and
    the invitations of a dynamic sample's newcomers. The standing mail worker (prompt_mail_worker_job)
    sends it within about a second of its insert and records a materialization here per batch; while
    no worker serves, transactional_mail_queue_sensor starts a run of this asset per tick for what it
    found. Each goes through the same ledger as bulk mail (exactly once per recipient; unsubscribe
    headers only on invitations); a rejected one fails alone, naming the field; a transient error
    retries it later."""
    db = mongo.db()
    sender = PromptMailSender(db, mongo.work_queue(MAILINGS), ses, context.run.run_id, context)
    sent = sender.send([ObjectId(i) for i in config.document_ids])
    if sent.transient or sent.outcomes["lease_lost"]:
        raise dg.Failure(
            description=f"{sent.transient} mailing(s) hit transient errors and will be retried, "
            f"{sent.outcomes['lease_lost']} lost their lease to another run; {dict(sent.outcomes)}"
        )
    return dg.MaterializeResult(metadata=sent.metadata())


@dataclass
class PromptMailSent:
    """What one batch of prompt mail came to: mailings per outcome, and the rows they hold."""

    outcomes: Counter[str] = field(default_factory=Counter)
    transient: int = 0
    rows: int = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "mailings": sum(self.outcomes.values()) + self.transient,
            **{f"mailings_{k}": n for k, n in self.outcomes.items()},
            **row_count(self.rows),
        }


class PromptMailSender:
    """Sends prompt mailings claimed by `owner` through one ledger and one SES gateway (one account
    and template check for the run, however many batches), and records each invitation among them
    as a materialization of its `mailings` partition; one mailing's problem never stops the others."""

    def __init__(
        self,
        db: Database,
        queue: WorkQueue,
        ses: SesResource,
        owner: str,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
    ) -> None:
        self.db, self.queue, self.ses, self.owner, self.context = db, queue, ses, owner, context
        self.ledger = MailLedger(db.mail_log, db.mail_events)
        self.ledger.ensure_indexes()
        self.reports = mailing_reports(db)
        self.gateway = ses.gateway()

    def send(self, mailing_ids: list[ObjectId]) -> PromptMailSent:
        sent = PromptMailSent()
        log = self.context.log
        for mailing_id in mailing_ids:
            try:
                outcome = process_mailing(
                    self.db, self.queue, self.ledger, self.ses, self.gateway, mailing_id, self.owner
                )
            except RequestRejected as rejected:
                log.warning(f"mailing {mailing_id} rejected: {rejected}")
                sent.outcomes["rejected"] += 1
                continue
            except (SendingStopped, LeaseLost) as lost:
                log.error(describe_error(lost))
                sent.outcomes["lease_lost"] += 1
                continue
            except Exception as exc:  # released for a retry by process_mailing
                log.warning(f"mailing {mailing_id}: {describe_error(exc)}; retried later")
                sent.transient += 1
                continue
            sent.outcomes[outcome.status] += 1
            sent.rows += sum(self.ledger.counts(mailing_id).values())
            if outcome.prompt_invitation:
                record_mailing_partition(self.context, mailing_id, self.ledger, self.reports, outcome)
        return sent


def record_mailing_partition(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    mailing_id: ObjectId,
    ledger: MailLedger,
    reports: MailingReports,
    outcome: "MailingOutcome",
) -> None:
    """A prompt invitation is still a `mailings` partition: the run that sent it materializes it."""
    key = str(mailing_id)
    context.instance.add_dynamic_partitions(MAILING_PARTITIONS, [key])
    metadata = mailing_result(ledger, reports, mailing_id, outcome).metadata
    context.log_event(dg.AssetMaterialization(asset_key="mailings", partition=key, metadata=metadata))


@dataclass(frozen=True)
class MailingOutcome:
    status: str  # done, postponed (SES paused), waiting, paused or cancelled (a control), or not_claimed
    detail: str
    prompt_invitation: bool = False  # a dynamic sample's newcomers' invitation: a `mailings` partition


def process_mailing(
    db: Database,
    queue: WorkQueue,
    ledger: MailLedger,
    ses: SesResource,
    gateway: SesGateway,
    mailing_id: ObjectId,
    owner: str,
) -> MailingOutcome:
    """Claim the mailing, send it, then complete or postpone it. A rejected mailing is failed and
    the rejection raised; a lost lease raises (nothing to release: another run holds it); any
    other error releases it for a retry and propagates."""
    mailing = queue.claim(mailing_id, owner)
    if mailing is None:
        return MailingOutcome("not_claimed", "already finished or held by another run")
    try:
        outcome = send(db, queue, ledger, ses, gateway, mailing, owner)
        return dataclasses.replace(outcome, prompt_invitation=mailing.get("delivery") == PROMPT)
    except RequestRejected as rejected:
        if not queue.fail(mailing_id, owner, str(rejected)):
            raise LeaseLost(queue.name, mailing_id, owner, "record the rejection") from rejected
        raise
    except (SendingStopped, LeaseLost):
        raise
    except BaseException as exc:
        queue.release(mailing_id, owner, describe_error(exc))
        raise


def send(
    db: Database,
    queue: WorkQueue,
    ledger: MailLedger,
    ses: SesResource,
    gateway: SesGateway,
    mailing: Mapping[str, Any],
    owner: str,
) -> MailingOutcome:
    mailing_id = mailing["_id"]
    if mailing.get("control") in STOPPING:  # asked before this run claimed it
        return _controlled(db, queue, ledger, mailing_id, owner, mailing["control"])
    template = find_template(mailing)
    bulk = mailing.get("kind", BULK) != TRANSACTIONAL
    account = ses.account_monitor(gateway) if bulk else None
    if bulk:
        try:
            gateway.check_send_events_published()
        except SendEventsNotPublished as exc:
            raise RequestRejected(str(exc)) from exc
    held = account.hold_reason() if account is not None else None
    if held is not None:
        _postpone(queue, mailing_id, owner, utc_now() + dt.timedelta(seconds=ses.quota_pause_seconds), held)
        return MailingOutcome("postponed", f"postponed: {held}")
    ses_template = mailing.get("ses_template")
    if ses_template is None:
        ses_template = gateway.ensure_template(template)
        queue.save_progress(mailing_id, owner, {"ses_template": ses_template})
    if mailing.get("expanded_at") is None:
        expand(db, queue, ledger, ses, template, mailing, owner, bulk)
    dispatch = send_mailing(
        ledger,
        gateway,
        mailing_id,
        ses_template,
        owner,
        bulk,
        members=db.users,
        keep_alive=_keep_alive(db, queue, ses, mailing, owner, account),
        unsubscribe_link=ses.unsubscribe_link if bulk else None,
        policy=ses.dispatch_policy(),
    )
    if dispatch.stopped_for is not None:
        return _controlled(db, queue, ledger, mailing_id, owner, dispatch.stopped_for)
    counts = ledger.counts(mailing_id)
    if dispatch.paused_until is not None:
        _postpone(queue, mailing_id, owner, dispatch.paused_until, dispatch.pause_reason or "paused")
        return MailingOutcome("postponed", f"paused until {dispatch.paused_until.isoformat()}")
    if not ledger.mailing_done(mailing_id):
        retry = ledger.next_retry_at(mailing_id) or utc_now() + OPEN_RECIPIENTS_RECHECK
        waiting = f"{counts[UNKNOWN]} unknown (awaiting SES events), {counts[CLAIMED]} held by another worker"
        _postpone(queue, mailing_id, owner, max(retry, utc_now()), waiting)
        return MailingOutcome("waiting", f"postponed: {waiting}")
    mark_members_reached(db, mailing, ledger.sent_user_ids(mailing_id), utc_now())
    if not queue.complete(mailing_id, owner, {"counts": counts}):
        raise LeaseLost(queue.name, mailing_id, owner, "complete it")
    return MailingOutcome("done", "done")


def _keep_alive(
    db: Database,
    queue: WorkQueue,
    ses: SesResource,
    mailing: Mapping[str, Any],
    owner: str,
    account: AccountMonitor | None,
) -> KeepAlive:
    """The lease renewal after each batch, and for bulk mail (`account` given) the account's and the
    mailing's breakers."""
    renew = partial(hold, queue, mailing["_id"], owner)
    if account is None:
        return renew
    breaker = MailingBreaker(mailing_reports(db), MailingControls(queue.collection), mailing, ses.breaker_policy())
    return guarded(renew, account, breaker)


def expand(
    db: Database,
    queue: WorkQueue,
    ledger: MailLedger,
    ses: SesResource,
    template: EmailTemplate,
    mailing: Mapping[str, Any],
    owner: str,
    bulk: bool,
) -> None:
    """Resolve, plan and add the mailing's recipients, a chunk of `USERS_PER_QUERY` at a time (the lease
    renewed after each), then record `expanded_at` so no later claim expands it again."""
    recipients = resolve_recipients(db, mailing, ses.unsubscribe_link if bulk else None)
    links = ses.link_policy()
    listed = 0
    for chunk in recipients.chunks():  # `USERS_PER_QUERY` recipients each, never the whole list
        ledger.add_recipients(
            mailing["_id"], plan_recipients(template, chunk, mailing.get("default_data"), bulk, links)
        )
        listed += len(chunk)
        queue.renew(mailing["_id"], owner)
    expansion = {
        "recipients": listed,
        "duplicates": recipients.duplicates,
        "missing_members": recipients.missing_members,
        "completed_members": recipients.completed_members,
    }
    queue.save_progress(mailing["_id"], owner, {"expanded_at": utc_now(), "expansion": expansion})


def _controlled(
    db: Database, queue: WorkQueue, ledger: MailLedger, mailing_id: ObjectId, owner: str, action: str
) -> MailingOutcome:
    outcome = stop_held_mailing(db, queue, ledger, mailing_id, owner, action)
    return MailingOutcome(PAUSED if action == PAUSE else CANCELLED, outcome)


def _postpone(queue: WorkQueue, mailing_id: ObjectId, owner: str, until: dt.datetime, reason: str) -> None:
    if not queue.postpone(mailing_id, owner, until, reason):
        raise LeaseLost(queue.name, mailing_id, owner, "postpone it")


def find_template(mailing: Mapping[str, Any]) -> EmailTemplate:
    """The mailing's template, once its document's shape is checked (`validation.check_mailing`):
    a wrong document raises `RequestRejected` naming the field, before anything is sent."""
    templates = load_templates()
    check_mailing(mailing, templates)
    return templates[mailing["template"]]


def mailing_result(
    ledger: MailLedger, reports: MailingReports, mailing_id: ObjectId, outcome: MailingOutcome
) -> dg.MaterializeResult:
    counts = ledger.counts(mailing_id)
    report = reports.refresh(mailing_id)
    return dg.MaterializeResult(
        metadata={
            "outcome": outcome.detail,
            **{f"recipients_{status}": int(n) for status, n in counts.items()},
            **(report_metadata(mailing_id, report) if report else {}),
            **row_count(sum(counts.values())),
        }
    )


def mailing_reports(db: Database) -> MailingReports:
    return MailingReports(db[MAILINGS], db.mail_log, db.mail_events)


def report_metadata(mailing_id: ObjectId, report: MailingReport) -> dict[str, Any]:
    """A mailing's report as the UI shows it: the counts, the rates over sent, the chart over time,
    and the query that says what became of one member's mail (by member id: no address here)."""
    return {
        "report_sent": report.sent,
        **{f"report_{category}": report.count(category) for category in CATEGORIES},
        **{f"report_{name}": dg.MetadataValue.float(rate) for name, rate in report.rates().items()},
        "report_chart": dg.MetadataValue.md(markdown_image(report_chart_svg(report), alt="SES events per hour")),
        "who_got_what": dg.MetadataValue.md(
            'Did member X get this mailing, and what happened to it (mongosh; docs/mailer.md, "Who got what"):\n\n'
            f"```js\n{who_got_what_query(str(mailing_id))}\n```"
        ),
    }


@dg.asset(
    deps=[dg.AssetDep(mailings, partition_mapping=dg.AllPartitionMapping())],
    group_name="mailer",
    owners=OWNERS,
    kinds={"python", "mongodb", "aws"},
    tags={"panel/part": "ses_feedback"},
)
def ses_feedback(context: dg.AssetExecutionContext, mongo: MongoResource, sqs: SqsResource) -> dg.MaterializeResult:
    """What SES reported about the mail we sent (SES configuration set -> SNS topic -> SQS queue):
    drains the queue in batches of 10, up to 100 applied together (for at most a minute: while mail
    flows the queue never empties, and the sensor asks for the next run), and deletes each message
    only once applied. Tagged events are stored once per message and event type in `mail_events` (which
    settles unknown `mail_log` rows) and counted in their mailing's `report`, observed on its `mailings`
    partition; a permanent bounce, or the third transient one within the window, makes the member
    `bounced`, a complaint `unsubscribed`, so no bulk mail reaches them again. Redelivered messages
    change nothing twice."""
    db = mongo.db()
    reports = mailing_reports(db)
    store = FeedbackStore(db.mail_events, db.users, reports, sqs.soft_bounce_policy())
    store.ensure_indexes()
    report = drain(sqs.queue(), store)
    context.log.info(
        f"{report.messages_read} messages read, {report.messages_deleted} deleted; "
        f"{report.events_stored} events stored; "
        f"{report.members[BOUNCED]} members bounced, {report.members[UNSUBSCRIBED]} unsubscribed; "
        f"{len(report.mailings)} mailings' reports updated"
    )
    observe_reports(context, reports, report.mailings)
    return dg.MaterializeResult(metadata=feedback_metadata(report))


def observe_reports(context: dg.AssetExecutionContext, reports: MailingReports, mailing_ids: set[str]) -> None:
    """Refresh the reports of the mailings with newly stored events, and record each one that is a
    `mailings` partition as an observation of it, so the mailing's page shows its report as it grows."""
    for key in sorted(mailing_ids):
        report = reports.refresh(ObjectId(key))
        if report is not None and context.instance.has_dynamic_partition(MAILING_PARTITIONS, key):
            metadata = report_metadata(ObjectId(key), report)
            context.log_event(dg.AssetObservation(asset_key="mailings", partition=key, metadata=metadata))


def feedback_metadata(report: DrainReport) -> dict[str, Any]:
    return {
        "messages_read": report.messages_read,
        "messages_deleted": report.messages_deleted,
        "messages_ignored": report.messages_ignored,
        "messages_untrusted": report.messages_untrusted,
        "events_stored": report.events_stored,
        "events_by_type": dg.MetadataValue.json(dict(sorted(report.events_by_type.items()))),
        "members_bounced": report.members[BOUNCED],
        "members_unsubscribed": report.members[UNSUBSCRIBED],
        "mailings_reported": len(report.mailings),
        **row_count(report.events_stored),
    }


@dg.asset(
    deps=[ses_feedback],
    group_name="mailer",
    owners=OWNERS,
    kinds={"python", "mongodb", "aws"},
    tags={"panel/part": "ses_suppression"},
)
def ses_suppression_sync(
    context: dg.AssetExecutionContext, mongo: MongoResource, ses: SesResource
) -> dg.MaterializeResult:
    """SES's account-level suppression list in step with members' statuses, both ways (hourly, and on
    demand): addresses SES suppressed since the last pull mark their active members `bounced` or
    `unsubscribed` ("SES suppression list: BOUNCE"), unless the member's status changed after SES's
    entry; members bounced or unsubscribed here are put on SES's list (BOUNCE / COMPLAINT) once; a
    member the backend reactivated is taken off it. Paced to SES's limit for these calls (about one
    a second, `SesResource.suppression_calls_per_second`), at most `suppression_calls_per_run` calls
    a run; what is left waits for the next. Counts only: no address is logged or shown."""
    db = mongo.db()
    store = SuppressionStore(db[USERS], db[PIPELINE_STATE])
    store.ensure_indexes()
    report = sync_suppression(ses.suppression_list(), store)
    context.log.info(
        f"SES suppression list: {report.pulled} entries pulled, {sum(report.marked.values())} members marked, "
        f"{sum(report.pushed.values())} pushed, {report.deleted} taken off; {report.calls} SES calls"
        + (" (this run's limit: the rest is left for the next run)" if report.calls_used_up else "")
    )
    return dg.MaterializeResult(metadata=suppression_metadata(report))


def suppression_metadata(report: SyncReport) -> dict[str, Any]:
    start, end = report.pull_window or (None, None)
    return {
        "pushed_bounce": report.pushed[BOUNCE],
        "pushed_complaint": report.pushed[COMPLAINT],
        "push_refused": report.push_refused,
        "pulled": report.pulled,
        "marked_bounced": report.marked[BOUNCED],
        "marked_unsubscribed": report.marked[UNSUBSCRIBED],
        "skipped": report.skipped,
        "pulled_outcomes": dg.MetadataValue.json(dict(sorted(report.pulled_outcomes.items()))),
        "taken_off_list": report.deleted,
        "ses_calls": report.calls,
        "calls_used_up": report.calls_used_up,
        "pull_complete": report.pull_complete,
        "pull_from": start.isoformat() if start else "the beginning",
        "pull_to": end.isoformat() if end else "-",
        **row_count(report.pulled + sum(report.pushed.values()) + report.deleted),
    }
