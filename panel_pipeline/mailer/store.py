"""The Mailer's Mongo access. `mail_log`: the per-recipient ledger that makes each mailing reach each
recipient at most once.

One document per (mailing, recipient), unique on (mailing_id, recipient_key) and on
(mailing_id, email), so expanding a mailing twice, or listing a person twice, adds nobody twice.

    pending --claim--> claimed --start_attempt--> (SES call) --record_results--> sent | failed
       ^                  |                              |                      \\-> pending (retry_at)
       |   lease expired, |                              | no answer / worker died
       +--- no attempt ---+                              v
                                                      unknown --reconcile(SES send events)--> sent | failed
    suppressed (never mailed, e.g. unsubscribed), failed (e.g. missing template data) at expansion;
    claimed --suppress--> suppressed (the member left after the mailing was planned);
    pending, claimed (no attempt) --cancel_unsent--> cancelled (the mailing was cancelled: never mailed).

The attempt is written BEFORE SES is called. A claimed row whose lease expired without an attempt
is safely claimable again; one whose attempt had started may or may not have been mailed, so it
becomes `unknown` and is settled from SES events (message tags carry mailing, batch and recipient)
or by an explicit decision (`release_unknown`), never by a blind re-send. Only SES `Send` events
show that the feed has moved past an attempt: bounces, complaints and deliveries can arrive while
Send events are missing, so without Send events no unknown row is ever released.

A row's `data` (reset links, unsubscribe tokens, first name) lives only while the row may still be
sent: it is removed when the row is settled (sent, failed, suppressed), and never stored for a row
that is failed or suppressed from the start.

`SuppressionStore` (the SES suppression-list sync, mailer/suppression.py): `users.ses_suppressed_at`
is set exactly while the pipeline knows the member's address to be on SES's account suppression
list, set after the address was put there (or found there) and removed after it was taken off;
an active member's status is changed from SES's list only if it did not change at or after the
list's entry.

`MailingReports` keeps each mailing's `report` on its `mailings` document (see the class).

`MailingControls`: the `control` a mailing's operator or the backend sets on its `mailings` document
(cancel, pause, resume; mailer/control.py applies it). A control is pending while `control` is set;
applying it removes `control`, `control_by`, `control_reason` only if `control` still holds the value
applied (a newer request is never lost), records `last_control` and counts `controls_applied`.
pymongo only, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.client_session import ClientSession
from pymongo.collection import Collection

from panel_pipeline.mailer.report import MailingReport, hour_of
from panel_pipeline.mailer.ses import EntryResult, SendStatus
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.contract import ACTIVE, BOUNCED, UNSUBSCRIBED
from panel_pipeline.shared.mongo import as_utc, insert_missing
from panel_pipeline.shared.privacy import clip, redact

PENDING = "pending"
CLAIMED = "claimed"
SENT = "sent"
FAILED = "failed"
SUPPRESSED = "suppressed"
UNKNOWN = "unknown"
CANCELLED = "cancelled"
OPEN_STATUSES = (PENDING, CLAIMED, UNKNOWN)
ALL_STATUSES = (PENDING, CLAIMED, UNKNOWN, SENT, FAILED, SUPPRESSED, CANCELLED)
ERROR_MAX_CHARS = 500
# How much later than an attempt the event feed must have reached before the attempt's silence
# means "not accepted": SES events arrive within seconds, SNS and SQS do not keep their order.
EVENT_SILENCE = dt.timedelta(minutes=10)
SEND_EVENT = "Send"
PERMANENT_BOUNCE = "Permanent"
ROWS_PER_INSERT = 1000


def normalize_email(email: str) -> str:
    return email.strip().lower()


def recipient_key_for(user_id: Any | None, email: str) -> str:
    """A tag-safe ledger key: the user id, else a hash of the normalized address (never the address)."""
    if user_id is not None:
        return str(user_id)
    return "e-" + hashlib.sha256(normalize_email(email).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class NewRecipient:
    """A ledger row to add. `status` is pending, or failed/suppressed with the reason in `error`."""

    email: str
    data: Mapping[str, Any]
    user_id: Any | None = None
    status: str = PENDING
    error: str | None = None

    @property
    def recipient_key(self) -> str:
        return recipient_key_for(self.user_id, self.email)


@dataclass(frozen=True)
class Batch:
    batch_id: str
    mailing_id: ObjectId
    owner: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [row["recipient_key"] for row in self.rows]


@dataclass(frozen=True)
class SendEvent:
    """The part of an SES event (Send, Reject, Rendering Failure, ...) the ledger needs."""

    event_type: str
    mailing_id: str
    batch_id: str
    recipient_key: str
    message_id: str
    error: str | None = None


def send_event_from_ses(event: Mapping[str, Any]) -> SendEvent | None:
    """Parse one SES event (configuration-set `eventType` or legacy `notificationType`); None if untagged."""
    mail = event.get("mail", {})
    tags = mail.get("tags", {})

    def tag(name: str) -> str | None:
        values = tags.get(name) or []
        return values[0] if values else None

    mailing, batch, recipient = tag("mailing"), tag("batch"), tag("recipient")
    if not (mailing and batch and recipient):
        return None
    event_type = event.get("eventType") or event.get("notificationType") or ""
    failure = event.get("failure") or event.get("reject") or {}
    error = failure.get("errorMessage") or failure.get("reason")
    return SendEvent(event_type, mailing, batch, recipient, mail.get("messageId", ""), error)


class MailLedger:
    """The `mail_log` collection, used by any number of workers at once."""

    def __init__(self, collection: Collection, events: Collection | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        """`events` is `mail_events`, where the SES event feed stores what SES reported per message."""
        self.collection = collection
        self.events = events
        self._clock = clock

    def ensure_indexes(self) -> None:
        self.collection.create_index(
            [("mailing_id", ASCENDING), ("recipient_key", ASCENDING)], unique=True, name="mailing_recipient"
        )
        self.collection.create_index(
            [("mailing_id", ASCENDING), ("email", ASCENDING)], unique=True, name="mailing_email"
        )
        self.collection.create_index(
            [("mailing_id", ASCENDING), ("status", ASCENDING), ("retry_at", ASCENDING)], name="mailing_status"
        )
        self.collection.create_index([("batch_id", ASCENDING)], name="batch")
        if self.events is not None:
            self.events.create_index([("event_type", ASCENDING), ("occurred_at", DESCENDING)], name="type_time")

    # --- expansion ----------------------------------------------------------------------------

    def add_recipients(self, mailing_id: ObjectId, recipients: Iterable[NewRecipient]) -> int:
        """Insert rows for new recipients, `ROWS_PER_INSERT` at a time (the iterable is consumed in
        chunks, never held whole); ones already in the mailing are skipped. Returns how many were added."""
        now = self._clock.now()
        added = 0
        rows = (self._new_row(mailing_id, recipient, now) for recipient in recipients)
        while chunk := list(itertools.islice(rows, ROWS_PER_INSERT)):
            added += len(chunk) - len(insert_missing(self.collection, chunk))
        return added

    def _new_row(self, mailing_id: ObjectId, recipient: NewRecipient, now: dt.datetime) -> dict[str, Any]:
        if recipient.status not in (PENDING, FAILED, SUPPRESSED):
            raise ValueError(f"a new recipient is pending, failed or suppressed, not {recipient.status}")
        row = {
            "mailing_id": mailing_id,
            "recipient_key": recipient.recipient_key,
            "user_id": recipient.user_id,
            "email": normalize_email(recipient.email),
            "status": recipient.status,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        if recipient.status == PENDING:
            row["data"] = dict(recipient.data)
        if recipient.error:
            row["error"] = recipient.error[:ERROR_MAX_CHARS]
        return row

    # --- claim, attempt, record -----------------------------------------------------------------

    def claim_batch(self, mailing_id: ObjectId, owner: str, size: int, lease_seconds: float) -> Batch | None:
        """Lease up to `size` claimable rows to `owner`; None when nothing is claimable now. Rows
        another sender claimed between the look and the claim are skipped, and the look repeated."""
        while True:
            now = self._clock.now()
            claimable = self._claimable(mailing_id, now)
            ids = [row["_id"] for row in self.collection.find(claimable, {"_id": 1}).sort("_id", ASCENDING).limit(size)]
            if not ids:
                return None
            batch_id = str(ObjectId())
            self.collection.update_many(
                {"_id": {"$in": ids}, **claimable},
                {
                    "$set": {
                        "status": CLAIMED,
                        "batch_id": batch_id,
                        "lease_owner": owner,
                        "lease_until": now + dt.timedelta(seconds=lease_seconds),
                        "attempt_started_at": None,
                        "updated_at": now,
                    }
                },
            )
            rows = list(self.collection.find({"batch_id": batch_id, "status": CLAIMED}).sort("_id", ASCENDING))
            if rows:
                return Batch(batch_id, mailing_id, owner, rows)

    @staticmethod
    def _claimable(mailing_id: ObjectId, now: dt.datetime) -> dict[str, Any]:
        return {
            "mailing_id": mailing_id,
            "$or": [
                {"status": PENDING, "$or": [{"retry_at": None}, {"retry_at": {"$lte": now}}]},
                {"status": CLAIMED, "attempt_started_at": None, "lease_until": {"$lt": now}},
            ],
        }

    def release_batch(self, batch: Batch) -> None:
        """Give back a claimed batch never attempted (its sender stopped first): pending again at once."""
        self.collection.update_many(
            {"batch_id": batch.batch_id, "status": CLAIMED, "lease_owner": batch.owner, "attempt_started_at": None},
            {"$set": {"status": PENDING, "lease_owner": None, "lease_until": None, "updated_at": self._clock.now()}},
        )

    def cancel_unsent(self, mailing_id: ObjectId, reason: str) -> int:
        """The mailing was cancelled: rows not yet attempted (pending, or claimed with no attempt
        started) end `cancelled` with `reason`, never to be sent; returns how many. Rows whose attempt
        started stay as they are: SES may have them (they end sent, failed or unknown)."""
        now = self._clock.now()
        return self.collection.update_many(
            {
                "mailing_id": mailing_id,
                "$or": [{"status": PENDING}, {"status": CLAIMED, "attempt_started_at": None}],
            },
            {
                "$set": {
                    "status": CANCELLED,
                    "error": reason[:ERROR_MAX_CHARS],
                    "updated_at": now,
                    "lease_owner": None,
                    "lease_until": None,
                },
                "$unset": {"data": ""},
            },
        ).modified_count

    def start_attempt(self, batch: Batch) -> Batch:
        """Write-ahead: mark the attempt on the rows this owner still holds; returns just those rows.

        Call immediately before SES. Rows missing from the result lost their lease and must not be sent.
        """
        now = self._clock.now()
        attempt_id = str(ObjectId())
        self.collection.update_many(
            {
                "batch_id": batch.batch_id,
                "status": CLAIMED,
                "lease_owner": batch.owner,
                "lease_until": {"$gt": now},
                "attempt_started_at": None,
            },
            {"$set": {"attempt_started_at": now, "attempt_id": attempt_id, "updated_at": now}, "$inc": {"attempts": 1}},
        )
        rows = list(self.collection.find({"attempt_id": attempt_id}).sort("_id", ASCENDING))
        return Batch(batch.batch_id, batch.mailing_id, batch.owner, rows)

    def suppress(self, batch: Batch, reasons: Mapping[str, str]) -> Batch:
        """Claimed rows of this batch that must not be mailed after all (`reasons` by recipient key)
        end `suppressed` with the reason; returns the batch without them."""
        if not reasons:
            return batch
        now = self._clock.now()
        for reason, keys in _keys_by_reason(reasons).items():
            self.collection.update_many(
                {
                    "batch_id": batch.batch_id,
                    "recipient_key": {"$in": keys},
                    "status": CLAIMED,
                    "lease_owner": batch.owner,
                },
                {
                    "$set": {
                        "status": SUPPRESSED,
                        "error": reason[:ERROR_MAX_CHARS],
                        "updated_at": now,
                        "lease_owner": None,
                        "lease_until": None,
                    },
                    "$unset": {"data": ""},
                },
            )
        rows = [row for row in batch.rows if row["recipient_key"] not in reasons]
        return Batch(batch.batch_id, batch.mailing_id, batch.owner, rows)

    def record_results(
        self, batch: Batch, results: Iterable[EntryResult], retry_at: dt.datetime | None = None
    ) -> dict[str, int]:
        """Store each entry's outcome; RETRY/PAUSE rows go back to pending until `retry_at`.

        Only rows of this batch that are still claimed or unknown are written, so a late answer
        settles an `unknown` row but can never overwrite a result recorded by someone else.
        """
        now = self._clock.now()
        written: dict[str, int] = {}
        for result in results:
            update = self._result_update(result, now, retry_at)
            matched = self.collection.update_one(
                {
                    "batch_id": batch.batch_id,
                    "recipient_key": result.recipient_key,
                    "status": {"$in": [CLAIMED, UNKNOWN]},
                },
                update,
            ).modified_count
            status = update["$set"]["status"]
            written[status] = written.get(status, 0) + matched
        return written

    @staticmethod
    def _result_update(result: EntryResult, now: dt.datetime, retry_at: dt.datetime | None) -> dict[str, Any]:
        error = (result.error or "")[:ERROR_MAX_CHARS] or None
        fields: dict[str, Any] = {
            "ses_status": result.ses_status,
            "updated_at": now,
            "lease_owner": None,
            "lease_until": None,
        }
        if result.outcome is SendStatus.SENT:
            fields |= {"status": SENT, "ses_message_id": result.message_id, "sent_at": now, "error": None}
        elif result.outcome is SendStatus.FAILED:
            fields |= {"status": FAILED, "error": error}
        elif result.outcome is SendStatus.UNKNOWN:
            return {"$set": fields | {"status": UNKNOWN, "error": error}}  # may be sent again: keeps its data
        else:
            # Nothing was sent: the row may be claimed again once retry_at has passed.
            return {
                "$set": fields
                | {"status": PENDING, "error": error, "retry_at": retry_at or now, "attempt_started_at": None}
            }
        return {"$set": fields, "$unset": {"data": ""}}

    # --- recovery and reconciliation ------------------------------------------------------------

    def recover_expired(self, mailing_id: ObjectId) -> int:
        """Rows whose worker died after starting the attempt become `unknown`; returns how many."""
        now = self._clock.now()
        return self.collection.update_many(
            {
                "mailing_id": mailing_id,
                "status": CLAIMED,
                "attempt_started_at": {"$ne": None},
                "lease_until": {"$lt": now},
            },
            {"$set": {"status": UNKNOWN, "error": "worker stopped after the SES call started", "updated_at": now}},
        ).modified_count

    def reconcile(self, events: Iterable[SendEvent]) -> dict[str, int]:
        """Settle `unknown` rows from SES events: a Send event means sent, a Reject or Rendering Failure failed."""
        now = self._clock.now()
        settled = {SENT: 0, FAILED: 0}
        for event in events:
            status = _status_for_event(event.event_type)
            if status is None or not ObjectId.is_valid(event.mailing_id):
                continue
            fields: dict[str, Any] = {"status": status, "updated_at": now, "reconciled_at": now}
            if status == SENT:
                fields |= {"ses_message_id": event.message_id, "sent_at": now, "error": None}
            else:
                fields["error"] = (event.error or event.event_type)[:ERROR_MAX_CHARS]
            settled[status] += self.collection.update_one(
                {
                    "mailing_id": ObjectId(event.mailing_id),
                    "batch_id": event.batch_id,
                    "recipient_key": event.recipient_key,
                    "status": UNKNOWN,
                },
                {"$set": fields, "$unset": {"data": ""}},
            ).modified_count
        return settled

    def settle_unknown(self, mailing_id: ObjectId, silence: dt.timedelta = EVENT_SILENCE) -> dict[str, int]:
        """Settle the mailing's `unknown` rows from the stored SES events.

        A row with an event is sent (or failed). A row with none, although the feed has since
        delivered Send events of messages sent more than `silence` after its attempt, was never
        accepted by SES (SES publishes a Send event for every message it accepts): it goes back to
        pending. Only Send events count: a feed that carries bounces or deliveries but no Send
        events (a destination without SEND) proves nothing. While no Send event newer than the
        attempt has arrived nothing is assumed, so a broken feed delays mail but never doubles it.
        """
        if self.events is None:
            return {}
        unknown = list(self.collection.find({"mailing_id": mailing_id, "status": UNKNOWN}, {"batch_id": 1}))
        if not unknown:
            return {}
        stored = self.events.find(
            {"mailing_id": mailing_id, "batch_id": {"$in": sorted({row["batch_id"] for row in unknown})}}
        )
        settled = self.reconcile(
            SendEvent(
                doc["event_type"],
                str(doc["mailing_id"]),
                doc["batch_id"],
                doc["recipient_key"],
                doc.get("message_id", ""),
                doc.get("error"),
            )
            for doc in stored
        )
        settled[PENDING] = 0
        newest = self.events.find_one(
            {"event_type": SEND_EVENT}, {"occurred_at": 1}, sort=[("occurred_at", DESCENDING)]
        )
        if newest is not None:
            now = self._clock.now()
            heard_until = as_utc(newest["occurred_at"]) - silence
            settled[PENDING] = self.collection.update_many(
                {"mailing_id": mailing_id, "status": UNKNOWN, "attempt_started_at": {"$lt": heard_until}},
                {
                    "$set": {
                        "status": PENDING,
                        "retry_at": now,
                        "updated_at": now,
                        "error": "SES reported no Send event: not accepted, sent again",
                    }
                },
            ).modified_count
        return settled

    def release_unknown(self, mailing_id: ObjectId, attempted_before: dt.datetime, to_status: str) -> int:
        """A person's (or a policy's) decision for `unknown` rows no event settled by now.

        `to_status=pending` re-sends them (accepting a possible duplicate); `failed` gives them up.
        """
        if to_status not in (PENDING, FAILED):
            raise ValueError("unknown rows are released to pending or failed")
        now = self._clock.now()
        update: dict[str, Any] = {
            "$set": {"status": to_status, "retry_at": now, "updated_at": now, "error": "released: no SES event"}
        }
        if to_status == FAILED:
            update["$unset"] = {"data": ""}
        return self.collection.update_many(
            {"mailing_id": mailing_id, "status": UNKNOWN, "attempt_started_at": {"$lt": attempted_before}}, update
        ).modified_count

    def sent_user_ids(self, mailing_id: ObjectId) -> Iterable[Any]:
        """The user ids of the mailing's sent rows, streamed from a cursor (never all in memory)."""
        cursor = self.collection.find(
            {"mailing_id": mailing_id, "status": SENT, "user_id": {"$ne": None}},
            {"user_id": 1, "_id": 0},
            batch_size=ROWS_PER_INSERT,
        )
        return (row["user_id"] for row in cursor)

    # --- progress -----------------------------------------------------------------------------

    def counts(self, mailing_id: ObjectId) -> dict[str, int]:
        counts = {status: 0 for status in ALL_STATUSES}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"mailing_id": mailing_id}},
            {"$group": {"_id": "$status", "n": {"$sum": 1}}},
        ]
        for group in self.collection.aggregate(pipeline):
            counts[group["_id"]] = group["n"]
        return counts

    def mailing_done(self, mailing_id: ObjectId) -> bool:
        """True when nothing is pending, claimed or unknown: every recipient has a final outcome."""
        return (
            self.collection.count_documents({"mailing_id": mailing_id, "status": {"$in": list(OPEN_STATUSES)}}, limit=1)
            == 0
        )

    def next_retry_at(self, mailing_id: ObjectId) -> dt.datetime | None:
        """When the earliest pending row becomes claimable (None if nothing is pending)."""
        row = self.collection.find_one(
            {"mailing_id": mailing_id, "status": PENDING}, {"retry_at": 1}, sort=[("retry_at", ASCENDING)]
        )
        if row is None:
            return None
        return row.get("retry_at") or self._clock.now()


@dataclass(frozen=True)
class RecentFeedback:
    """What became of a mailing's last sends: of `sends` messages, how many bounced permanently or
    drew a complaint (the rates SES reviews an account by)."""

    sends: int
    permanent_bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.permanent_bounces / self.sends if self.sends else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sends if self.sends else 0.0


class MailingReports:
    """The `report` of each `mailings` document: `counts` and `hours` (category -> count, and per UTC hour)
    that the SES feed increments once per newly stored event, in the transaction that stores the event
    (`count`, with its session), so a crash neither loses nor doubles a count; `sent` (the ledger's
    sent rows) and `rates` (report.py), which `refresh` rewrites from those. pymongo only, no Dagster."""

    def __init__(self, mailings: Collection, mail_log: Collection, events: Collection, clock: Clock = SYSTEM_CLOCK):
        self.mailings = mailings
        self.mail_log = mail_log
        self.events = events
        self._clock = clock

    def ensure_indexes(self) -> None:
        self.events.create_index(
            [("mailing_id", ASCENDING), ("event_type", ASCENDING), ("occurred_at", DESCENDING)],
            name="mailing_type_time",
        )

    def count(
        self, mailing_id: ObjectId, events: Sequence[tuple[str, dt.datetime]], session: ClientSession | None
    ) -> None:
        """More events of the mailing, each a (category, when), in one write (a mailing that is not in
        `mailings` counts nothing)."""
        increments: Counter[str] = Counter()
        for category, at in events:
            increments[f"report.counts.{category}"] += 1
            increments[f"report.hours.{hour_of(at)}.{category}"] += 1
        self.mailings.update_one({"_id": mailing_id}, {"$inc": dict(increments)}, session=session)

    def refresh(self, mailing_id: ObjectId) -> MailingReport | None:
        """Write the report's `sent`, `rates` and `updated_at` from the ledger and the counts; None if
        there is no such mailing."""
        document = self.mailings.find_one({"_id": mailing_id}, {"report": 1})
        if document is None:
            return None
        sent = self.mail_log.count_documents({"mailing_id": mailing_id, "status": SENT})
        report = MailingReport.of(sent, document.get("report"))
        refreshed = {"report.sent": sent, "report.rates": report.rates(), "report.updated_at": self._clock.now()}
        self.mailings.update_one({"_id": mailing_id}, {"$set": refreshed})
        return report

    def recent_feedback(
        self, mailing_id: ObjectId, last_sends: int, since: dt.datetime | None = None
    ) -> RecentFeedback:
        """Over the mailing's last `last_sends` messages SES accepted (its newest Send events, none before
        `since`): how many bounced permanently, how many drew a complaint. Reads on `mailing_type_time`
        only, none fetching the sends: the `last_sends`-th newest Send event's time (covered), then
        the mailing's Bounce and Complaint events about messages sent from then on (an event's
        `occurred_at` is its message's send time), a few where the rates matter. The sending run asks
        after every batch, so this must not grow with the window."""
        query: dict[str, Any] = {"mailing_id": mailing_id, "event_type": SEND_EVENT}
        if since is not None:
            query["occurred_at"] = {"$gte": since}
        oldest = next(
            self.events.find(query, {"occurred_at": 1, "_id": 0})
            .sort("occurred_at", DESCENDING)
            .skip(last_sends - 1)
            .limit(1),
            None,
        )
        sends = last_sends if oldest is not None else self.events.count_documents(query)
        feedback: dict[str, Any] = {"mailing_id": mailing_id, "event_type": {"$in": ["Bounce", "Complaint"]}}
        start = oldest["occurred_at"] if oldest is not None else since
        if start is not None:
            feedback["occurred_at"] = {"$gte": start}
        found = Counter(
            (event["event_type"], event.get("bounce_type"))
            for event in self.events.find(feedback, {"event_type": 1, "bounce_type": 1, "_id": 0})
        )
        complaints = sum(n for (kind, _), n in found.items() if kind == "Complaint")
        return RecentFeedback(sends, found[("Bounce", PERMANENT_BOUNCE)], complaints)


def _keys_by_reason(reasons: Mapping[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, reason in reasons.items():
        grouped.setdefault(reason, []).append(key)
    return grouped


def _status_for_event(event_type: str) -> str | None:
    normalized = event_type.replace(" ", "").replace("_", "").lower()
    if normalized in {"send", "delivery", "bounce", "complaint", "deliverydelay", "open", "click"}:
        return SENT  # every one of these proves SES accepted and sent the message
    if normalized in {"reject", "renderingfailure"}:
        return FAILED
    return None


CONTROL_FIELDS = ("control", "control_by", "control_reason", "control_requested_at")
CONTROL_TEXT_MAX_CHARS = 200


def control_text(value: Any) -> str | None:
    """A control's `by` or `reason` as it may be stored or shown: redacted and clipped (the backend
    writes what it likes there), None when absent."""
    return None if value is None else clip(redact(str(value)), CONTROL_TEXT_MAX_CHARS)


class MailingControls:
    """The `control` field of `mailings` documents: requested by an operator or the backend, applied once."""

    def __init__(self, mailings: Collection, clock: Clock = SYSTEM_CLOCK) -> None:
        self.collection = mailings
        self._clock = clock

    def ensure_indexes(self) -> None:
        self.collection.create_index(
            [("control", ASCENDING)], name="control_pending", partialFilterExpression={"control": {"$exists": True}}
        )

    def request(
        self, mailing_id: ObjectId, action: str, by: str, reason: str, only_if: Mapping[str, Any] | None = None
    ) -> bool:
        """Write a control as the backend would (`by` and `reason` redacted); False when there is no
        such mailing, or none matching `only_if`."""
        fields = {"control": action, "control_by": control_text(by), "control_reason": control_text(reason)}
        update = {"$set": {**fields, "control_requested_at": self._clock.now()}}
        return self.collection.update_one({"_id": mailing_id, **(only_if or {})}, update).matched_count == 1

    def pending(self, unheld: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
        """Mailings with a control to apply that match `unheld` (no live lease holds them: a run
        holding one applies its control itself), oldest first."""
        query = {"control": {"$exists": True}, **unheld}
        projection = {"_id": 1, "control": 1, "controls_applied": 1, "claims": 1, "attempts": 1}
        return list(self.collection.find(query, projection).sort("_id", ASCENDING).limit(limit))

    def settle(self, mailing_id: ObjectId, control: Any, outcome: str, run_id: str) -> bool:
        """Record what became of `control` (the value read from the document) and remove the request,
        only if `control` still holds that value; False when it changed (the newer one stays pending).
        `by` and `reason` are recorded redacted: the backend may have written anything there."""
        request = self.collection.find_one({"_id": mailing_id, "control": control}, ["control_by", "control_reason"])
        if request is None:
            return False
        record = {
            "action": {"$literal": control},
            "by": {"$literal": control_text(request.get("control_by"))},
            "reason": {"$literal": control_text(request.get("control_reason"))},
            "requested_at": "$control_requested_at",
            "outcome": {"$literal": outcome[:ERROR_MAX_CHARS]},
            "applied_at": self._clock.now(),
            "run_id": {"$literal": run_id},
        }
        update: list[dict[str, Any]] = [
            {
                "$set": {
                    "last_control": record,
                    "controls_applied": {"$add": [{"$ifNull": ["$controls_applied", 0]}, 1]},
                }
            },
            {"$unset": list(CONTROL_FIELDS)},
        ]
        return self.collection.update_one({"_id": mailing_id, "control": control}, update).modified_count == 1


# --- SES's account suppression list, in step with members' statuses (mailer/suppression.py) ----------

SES_SUPPRESSED_AT = "ses_suppressed_at"
SUPPRESSION_STATE_ID = "ses_suppression"
SUPPRESSED_HERE = (BOUNCED, UNSUBSCRIBED)


@dataclass(frozen=True)
class MemberAddress:
    """A member the suppression sync acts on; `email` goes to SES only, never into a log or metadata."""

    user_id: ObjectId
    status: str
    email: str = field(repr=False)


class SuppressionStore:
    """What the suppression sync reads and writes in Mongo: members' statuses and `ses_suppressed_at`
    in `users`, and the pull's cursor in `pipeline_state` (`_id: "ses_suppression"`, `pulled_through`).

    `ses_suppressed_at` says the member's address is on SES's account suppression list as far as the
    pipeline knows (it put it there, or found it there), and is removed once the address is taken
    off again. So a member `bounced`/`unsubscribed` without it still has to be pushed, and an
    `active` member with it was reactivated (before or after the address went on the list) and has
    to be taken off: both are index ranges of `status_ses_suppressed`.
    """

    def __init__(self, users: Collection, state: Collection, clock: Clock = SYSTEM_CLOCK) -> None:
        self.users = users
        self.state = state
        self._clock = clock

    def ensure_indexes(self) -> None:
        self.users.create_index([("status", ASCENDING), (SES_SUPPRESSED_AT, ASCENDING)], name="status_ses_suppressed")

    def to_push(self, limit: int) -> list[MemberAddress]:
        """Members bounced or unsubscribed here whose address is not on SES's list yet, oldest first."""
        found = self.users.find(
            {"status": {"$in": list(SUPPRESSED_HERE)}, SES_SUPPRESSED_AT: None}, {"email": 1, "status": 1}
        )
        return [_member_address(doc) for doc in found.sort("_id", ASCENDING).limit(limit)]

    def reactivated(self, limit: int) -> list[MemberAddress]:
        """Active members whose address the pipeline knows to be on SES's list: the backend reactivated them."""
        found = self.users.find({"status": ACTIVE, SES_SUPPRESSED_AT: {"$type": "date"}}, {"email": 1, "status": 1})
        return [_member_address(doc) for doc in found.sort("_id", ASCENDING).limit(limit)]

    def mark_on_list(self, user_id: ObjectId) -> None:
        """The member's address is on SES's list now (whatever their status: reactivated meanwhile,
        they are taken off again)."""
        now = self._clock.now()
        self.users.update_one({"_id": user_id, SES_SUPPRESSED_AT: None}, {"$set": {SES_SUPPRESSED_AT: now}})

    def mark_off_list(self, user_id: ObjectId) -> None:
        """The member's address is off SES's list (whatever their status: bounced again meanwhile,
        they are pushed again)."""
        self.users.update_one({"_id": user_id}, {"$unset": {SES_SUPPRESSED_AT: ""}})

    def members_with(self, addresses: Iterable[str]) -> set[str]:
        """Which of these (normalized) addresses belong to a member: one query per page of SES's list."""
        wanted = sorted(set(addresses))
        return {normalize_email(str(doc["email"])) for doc in self.users.find({"email": {"$in": wanted}}, {"email": 1})}

    def apply_ses_suppression(self, email: str, status: str, reason: str, last_update_time: dt.datetime) -> str:
        """Bring the members with this address in line with SES's list entry; returns what happened:
        `marked` (an active member became `status`), `already` (not active here: now known to be on
        SES's list too), `changed_later` (active, their status changed at or after SES's entry, or
        reactivated since the pipeline knew them suppressed: untouched, and marked so the address
        is taken off SES's list), `not_member`."""
        now = self._clock.now()
        marked = self.users.update_many(
            {
                "email": email,
                "status": ACTIVE,
                SES_SUPPRESSED_AT: None,
                "status_changed_at": {"$not": {"$gte": last_update_time}},
            },
            {"$set": {"status": status, "status_reason": reason, "status_changed_at": now, SES_SUPPRESSED_AT: now}},
        ).modified_count
        if marked:
            return "marked"
        others = list(self.users.find({"email": email}, {"status": 1, SES_SUPPRESSED_AT: 1}))
        if not others:
            return "not_member"
        self.users.update_many({"email": email, SES_SUPPRESSED_AT: None}, {"$set": {SES_SUPPRESSED_AT: now}})
        return "already" if any(doc.get("status") != ACTIVE for doc in others) else "changed_later"

    def pulled_through(self) -> dt.datetime | None:
        """Where the last complete pull of SES's list ended (None: never pulled, so read it all)."""
        state = self.state.find_one({"_id": SUPPRESSION_STATE_ID})
        return as_utc(state["pulled_through"]) if state and state.get("pulled_through") else None

    def save_pulled_through(self, end: dt.datetime) -> None:
        self.state.update_one({"_id": SUPPRESSION_STATE_ID}, {"$set": {"pulled_through": end}}, upsert=True)


def _member_address(doc: Mapping[str, Any]) -> MemberAddress:
    return MemberAddress(doc["_id"], str(doc.get("status")), normalize_email(str(doc.get("email") or "")))
