"""Drives one mailing through the ledger and the SES gateway; the loop a Dagster asset calls.

`plan_recipients` turns a mailing's recipients into ledger rows, failing (alone) each recipient
whose data lacks a template variable (SES would accept and then silently drop that e-mail), whose
address is invalid, or whose link values fall outside the link policy. Bulk mail's unsubscribe link
is never taken from data nor stored: `_bulk_send` makes it from the member id per batch.
`send_mailing` claims a batch, suppresses the rows whose member is no longer active (one
query per batch: a member may leave between planning and sending, and a pause can last days),
writes the attempt ahead, makes one SES call and records every entry's outcome; throttled entries
come back after a jittered exponential backoff, and a daily-quota or sending-paused answer stops
the run with the time to resume. After each batch `keep_alive` renews the caller's hold on the
mailing; when it fails, sending stops at once (`SendingStopped`); when it
reports a control that stops the mailing (pause, cancel), or a reason to postpone it (the account's
breaker, mailer/breaker.py), sending stops and `send_mailing` returns saying so. Either way each
sender finishes at most the batch it is in and gives back a batch it claimed but did not send.
No Dagster here.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection

from panel_pipeline.mailer.ses import (
    BatchResult,
    BulkRecipient,
    BulkSend,
    SendStatus,
    SesGateway,
)
from panel_pipeline.mailer.store import (
    EVENT_SILENCE,
    FAILED,
    PENDING,
    SUPPRESSED,
    Batch,
    MailLedger,
    NewRecipient,
    normalize_email,
)
from panel_pipeline.mailer.validation import (
    ANY_HOST,
    DataProblem,
    LinkPolicy,
    address_problem,
    mailing_data,
    reserved_key_problem,
)
from panel_pipeline.queue.store import RequestRejected
from panel_pipeline.shared.backoff import backoff_seconds
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.contract import ACTIVE, UNSUBSCRIBE_URL
from panel_pipeline.shared.mongo import as_utc
from panel_pipeline.shared.templates import EmailTemplate, check_recipient_data, escape_for_html

log = logging.getLogger(__name__)

# Stands in for the signed link while checking a bulk recipient's data: the link is made at send time.
_SIGNED_LINK_PLACEHOLDER = "https://unsubscribe.invalid/"
UnsubscribeLink = Callable[[str], str]


class SendingStopped(RuntimeError):
    """`keep_alive` said the run no longer holds the mailing: another run may be sending it now."""


@dataclass(frozen=True)
class Hold:
    """What `keep_alive` found: whether the caller still holds the mailing, the control asking the
    sender to stop (pause, cancel), if any, and why the mailing must wait (postponed), if it must."""

    held: bool
    stop_for: str | None = None
    postpone_for: str | None = None


KeepAlive = Callable[[], Hold]


@dataclass(frozen=True)
class MailingRecipient:
    """One recipient as the mailing lists it; `suppressed_reason` set means: do not mail (e.g. unsubscribed)."""

    email: str
    data: Mapping[str, Any] = field(default_factory=dict)
    user_id: Any | None = None
    suppressed_reason: str | None = None
    problem: str | None = None  # set: fail this recipient alone with this reason (it names the field)


@dataclass(frozen=True)
class DispatchPolicy:
    lease_seconds: float = 300.0
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    pause_seconds: float = 3600.0  # daily quota / sending paused: try again this much later
    max_wait_seconds: float = 120.0  # wait in-process for a backoff this long at most, else return
    senders: int = 2  # batches in flight at once (see _BatchSender)
    event_silence: dt.timedelta = EVENT_SILENCE  # see MailLedger.settle_unknown


@dataclass
class DispatchReport:
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    paused_until: dt.datetime | None = None
    pause_reason: str | None = None
    stopped_for: str | None = None  # the control (pause, cancel) that stopped the sender

    @property
    def stopped(self) -> bool:
        return self.paused_until is not None or self.stopped_for is not None


def plan_recipients(
    template: EmailTemplate,
    recipients: Iterable[MailingRecipient],
    default_data: Mapping[str, Any] | None = None,
    bulk: bool = True,
    links: LinkPolicy | None = None,
) -> list[NewRecipient]:
    """Ledger rows for a mailing: pending, or failed/suppressed with a reason a person can act on.

    `links` is where link values (`template.link_variables`) may point; the asset passes the SES
    resource's policy (None checks only that links are https and well-formed). A `default_data`
    that cannot be sent raises `RequestRejected` naming its field; a bad recipient fails alone.
    """
    try:
        shared = mailing_data(default_data, "default_data")
    except DataProblem as problem:
        raise RequestRejected(str(problem)) from None
    if bulk:
        shared.pop(UNSUBSCRIBE_URL, None)  # only the pipeline's own signed link goes out
    policy = links or ANY_HOST
    planned = []
    for recipient in recipients:
        data = {**shared, **recipient.data}
        planned.append(
            NewRecipient(
                recipient.email, data, recipient.user_id, *_initial_status(template, recipient, data, bulk, policy)
            )
        )
    return planned


def _initial_status(
    template: EmailTemplate, recipient: MailingRecipient, data: Mapping[str, Any], bulk: bool, links: LinkPolicy
) -> tuple[str, str | None]:
    if recipient.suppressed_reason:
        return SUPPRESSED, recipient.suppressed_reason
    if recipient.problem:
        return FAILED, recipient.problem
    wrong_address = address_problem(normalize_email(recipient.email))
    if wrong_address:
        return FAILED, f"email: {wrong_address}"
    reserved = reserved_key_problem(data, "data")
    if reserved:
        return FAILED, reserved
    signed_link = bulk and recipient.user_id is not None
    for name in sorted(template.link_variables):
        if name == UNSUBSCRIBE_URL and signed_link:
            continue  # made by the pipeline when the batch is built
        wrong_link = links.problem(data[name]) if data.get(name) is not None else None
        if wrong_link:
            return FAILED, f"data.{name}: {wrong_link}"
    checked = {**data, UNSUBSCRIBE_URL: _SIGNED_LINK_PLACEHOLDER} if signed_link else data
    missing = set(check_recipient_data(template, checked))
    if bulk and not checked.get(UNSUBSCRIBE_URL):
        missing.add(UNSUBSCRIBE_URL)
    if missing:
        return FAILED, f"missing template data: {', '.join(sorted(missing))}"
    return PENDING, None


def send_mailing(
    ledger: MailLedger,
    gateway: SesGateway,
    mailing_id: ObjectId,
    template_name: str,
    owner: str,
    bulk: bool = True,
    policy: DispatchPolicy = DispatchPolicy(),
    clock: Clock = SYSTEM_CLOCK,
    members: Collection | None = None,
    keep_alive: KeepAlive | None = None,
    unsubscribe_link: UnsubscribeLink | None = None,
) -> DispatchReport:
    """Send every claimable recipient of the mailing; returns when nothing is claimable soon, on
    pause, or when `keep_alive` reports a control that stops it (`report.stopped_for`).

    `template_name` is the versioned SES name (`SesGateway.ensure_template`) the mailing started with.
    `members` (the `users` collection) is read once per batch: a row whose member is no longer
    active is suppressed instead of sent. `keep_alive` is called after each batch and each wait;
    a lost hold raises `SendingStopped` before anything more is sent. `unsubscribe_link` makes bulk
    mail's signed link from the member id when each batch is built (`_bulk_send`).
    Afterwards `ledger.mailing_done(mailing_id)` says whether the mailing is finished.
    """
    report = DispatchReport()
    recovered = ledger.recover_expired(mailing_id)
    if recovered:
        log.warning("mailing %s: %d recipients of a stopped worker are unknown until reconciled", mailing_id, recovered)
    settled = ledger.settle_unknown(mailing_id, policy.event_silence)
    if any(settled.values()):
        log.info("mailing %s: unknown recipients settled from SES events: %s", mailing_id, settled)
    sender = _BatchSender(
        ledger, gateway, mailing_id, template_name, owner, bulk, policy, clock, members, keep_alive, unsubscribe_link
    )
    while not report.stopped:
        sender.send_while_claimable(report)
        if report.stopped:
            break
        wait = _seconds_until_retry(ledger, mailing_id, clock.now())
        if wait is None or wait > policy.max_wait_seconds:
            break
        clock.sleep(wait)
        sender.keep_alive_now(report)
    return report


@dataclass
class _BatchSender:
    """Claims, sends and records batches with `policy.senders` threads, so one batch's Mongo writes
    overlap another's SES call: on shared cores the work between two calls can take longer than the
    rate's interval, and one sender alone then falls behind the rate. The one token bucket in the
    gateway keeps their sum at the rate; the ledger's claims keep their batches apart."""

    ledger: MailLedger
    gateway: SesGateway
    mailing_id: ObjectId
    template_name: str
    owner: str
    bulk: bool
    policy: DispatchPolicy
    clock: Clock
    members: Collection | None
    keep_alive: KeepAlive | None
    unsubscribe_link: UnsubscribeLink | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _claiming: threading.Lock = field(default_factory=threading.Lock)  # the senders never split one look's rows

    def send_while_claimable(self, report: DispatchReport) -> None:
        """Send batches until none is claimable now, SES pauses sending, a control stops it, or the
        hold is lost (raises)."""
        stop = threading.Event()
        if self.policy.senders == 1:
            self._send_batches(report, stop)
            return
        with ThreadPoolExecutor(self.policy.senders, thread_name_prefix="ses-sender") as pool:
            futures = [pool.submit(self._send_batches, report, stop) for _ in range(self.policy.senders)]
            for future in futures:
                try:
                    future.result()
                except BaseException:
                    stop.set()
                    raise

    def keep_alive_now(self, report: DispatchReport) -> None:
        """Renew the hold; note a control that stops the mailing or a reason to postpone it."""
        if self.keep_alive is None:
            return
        hold = self.keep_alive()
        with self._lock:
            if hold.stop_for is not None and report.stopped_for is None:
                report.stopped_for = hold.stop_for
                log.warning(
                    "mailing %s: %s asked for; stopped sending after %d batches",
                    self.mailing_id,
                    hold.stop_for,
                    report.batches,
                )
            if hold.postpone_for is not None and report.paused_until is None:
                report.paused_until = self.clock.now() + dt.timedelta(seconds=self.policy.pause_seconds)
                report.pause_reason = hold.postpone_for
                log.warning(
                    "mailing %s postponed until %s: %s", self.mailing_id, report.paused_until, report.pause_reason
                )
        if not hold.held:
            message = (
                f"mailing {self.mailing_id}: this run no longer holds the mailing (its lease was lost, another run "
                f"may have claimed it); stopped sending after {report.batches} batches"
            )
            log.error(message)
            raise SendingStopped(message)

    def _send_batches(self, report: DispatchReport, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if not self._send_one(report, stop):
                    return
                if not report.stopped:
                    self.keep_alive_now(report)
                if report.stopped:
                    stop.set()
                    return
        except BaseException:
            stop.set()
            raise

    def _send_one(self, report: DispatchReport, stop: threading.Event) -> bool:
        """One batch through SES; False when nothing is claimable now, or another sender stopped."""
        with self._claiming:
            batch = self.ledger.claim_batch(
                self.mailing_id, self.owner, self.gateway.batch_size, self.policy.lease_seconds
            )
        if batch is None:
            return False
        if self.members is not None:
            left = left_members(self.members, batch.rows)
            batch = self.ledger.suppress(batch, left)
            with self._lock:
                report.outcomes.update({"suppressed": len(left)} if left else {})
            if not batch.rows:
                return True
        self.gateway.wait_for_send_capacity(len(batch.rows))
        if stop.is_set():  # the other sender lost the hold, met a pause or a control while this one waited
            self.ledger.release_batch(batch)
            return False
        attempt = self.ledger.start_attempt(batch)
        if not attempt.rows:
            return True
        result = self.gateway.send_batch(_bulk_send(attempt, self.template_name, self.bulk, self.unsubscribe_link))
        self.ledger.record_results(attempt, result.entries, _retry_at(result, attempt, self.policy, self.clock.now()))
        with self._lock:
            report.batches += 1
            report.outcomes.update(entry.outcome.value for entry in result.entries)
            if result.keys(SendStatus.PAUSE) and report.paused_until is None:
                report.paused_until = self.clock.now() + dt.timedelta(seconds=self.policy.pause_seconds)
                error = next(e.error for e in result.entries if e.outcome is SendStatus.PAUSE)
                report.pause_reason = f"SES paused sending: {error}"
                log.warning("mailing %s paused until %s: %s", self.mailing_id, report.paused_until, report.pause_reason)
        return True


def left_members(users: Collection, rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Recipient key -> reason for the rows whose member is no longer active (one query)."""
    rows = [row for row in rows if row.get("user_id") is not None]
    if not rows:
        return {}
    statuses = {
        user["_id"]: user.get("status", ACTIVE)
        for user in users.find({"_id": {"$in": list({row["user_id"] for row in rows})}}, {"status": 1})
    }
    reasons = {}
    for row in rows:
        user_id = row["user_id"]
        if user_id not in statuses:
            if isinstance(user_id, ObjectId):  # a member deleted from `users` altogether
                reasons[row["recipient_key"]] = "member no longer exists (removed after the mailing was planned)"
        elif statuses[user_id] != ACTIVE:
            reasons[row["recipient_key"]] = (
                f"member status is {statuses[user_id]} (changed after the mailing was planned)"
            )
    return reasons


def _bulk_send(
    batch: Batch, template_name: str, bulk: bool, unsubscribe_link: UnsubscribeLink | None = None
) -> BulkSend:
    """The SES call for a batch. Bulk mail gets each member's signed unsubscribe link here, made
    from the member id, so no link (no token) is stored with the ledger row; the link both the
    template and `List-Unsubscribe` use is that one, whatever the data held."""
    recipients = []
    for row in batch.rows:
        data = dict(row.get("data") or {})
        link = None
        if bulk:
            if unsubscribe_link is not None and row.get("user_id") is not None:
                link = unsubscribe_link(str(row["user_id"]))
            else:  # a row planned before the link was made at send time
                link = data.get(UNSUBSCRIBE_URL)
            data[UNSUBSCRIBE_URL] = link
        recipients.append(
            BulkRecipient(
                recipient_key=row["recipient_key"],
                email=row["email"],
                template_data=escape_for_html(data),
                unsubscribe_url=link,
            )
        )
    return BulkSend(str(batch.mailing_id), batch.batch_id, template_name, recipients, bulk)


def _retry_at(result: BatchResult, batch: Batch, policy: DispatchPolicy, now: dt.datetime) -> dt.datetime:
    """When re-queued rows may go again: after a pause, or a full-jitter exponential backoff."""
    if result.keys(SendStatus.PAUSE):
        return now + dt.timedelta(seconds=policy.pause_seconds)
    attempts = max((row.get("attempts", 1) for row in batch.rows), default=1)  # counts this attempt
    ceiling = backoff_seconds(attempts - 1, policy.backoff_base_seconds, policy.backoff_cap_seconds)
    return now + dt.timedelta(seconds=random.uniform(0, ceiling))


def _seconds_until_retry(ledger: MailLedger, mailing_id: ObjectId, now: dt.datetime) -> float | None:
    retry_at = ledger.next_retry_at(mailing_id)
    if retry_at is None:
        return None
    return max((as_utc(retry_at) - now).total_seconds(), 0.0)
