"""SES event feedback: what SES reports about each message, read from SQS and applied to Mongo.

Production path: the configuration set's event destination is an SNS topic, an SQS queue is
subscribed to it, and we drain the queue. Each SQS message body is an SNS envelope whose `Message`
is the SES event as a JSON string. Both spellings of SES events are read: configuration-set events
(`eventType`: Send, Reject, Bounce, Complaint, Delivery, Rendering Failure, ...) and legacy identity
notifications (`notificationType`).

The feed is not trusted blindly (anyone allowed to send to the queue could forge a bounce): a
message is applied only if its envelope's `TopicArn` is the configured topic and the event carries
the tags we wrote, of the types we wrote them (`mailing` and `batch` ObjectIds as 24 hex, `recipient`
a user id or `e-` and 32 hex). Anything else (a raw delivery without an envelope, another topic,
untagged or wrongly tagged events) is untrusted: counted and deleted, never applied.

What an event does:
* every tagged event (message tags `mailing`, `batch`, `recipient`) is stored once in `mail_events`,
  `_id` "<messageId>:<eventType>", which `MailLedger.settle_unknown` reads to settle unknown rows;
* a newly stored event of a category the report counts (report.py) increments its mailing's
  `report`, in the same transaction as the store: counted once, however often it is delivered;
* a permanent bounce makes the member `bounced`, a complaint `unsubscribed` (from `active` only), so
  the mailer suppresses them from then on; so do `SoftBouncePolicy.limit` transient bounces of
  messages sent within its window and after the member's last delivered message (the member's
  messages keyed by user id and by their address's key alike; counted from the
  stored events, so a redelivered bounce is not counted twice); an undetermined bounce changes
  nothing; an event about a message sent before the member's last `status_changed_at` is stale (a
  member the backend reactivated is not bounced again by a late event about their old address).
The member is found by the recipient tag (a user id) or else by the address SES reports; addresses
are used for that lookup only, never stored in `mail_events` nor logged. Applying an event twice
changes nothing the second time, so SQS's at-least-once delivery is harmless: the event is stored
first, then the member changed from what is stored, so a crash in between is redone on redelivery.
pymongo only, no Dagster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.collection import Collection

from panel_pipeline.mailer.report import category_for
from panel_pipeline.mailer.store import (
    PERMANENT_BOUNCE,
    MailingReports,
    SendEvent,
    normalize_email,
    recipient_key_for,
    send_event_from_ses,
)
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.contract import ACTIVE, BOUNCED, UNSUBSCRIBED
from panel_pipeline.shared.mongo import as_utc

TRANSIENT_BOUNCE = "Transient"
DELIVERY = "Delivery"
SQS_BATCH_SIZE = 10
APPLY_GROUP_SIZE = 100
MAX_MESSAGES_PER_DRAIN = 10_000
MAX_SECONDS_PER_DRAIN = 60.0  # then the run ends and the sensor asks for another: no run drains forever
OBJECT_ID_TAG = re.compile(r"^[0-9a-f]{24}$")
RECIPIENT_TAG = re.compile(r"^(?:[0-9a-f]{24}|e-[0-9a-f]{32})$")  # store.recipient_key_for


@dataclass(frozen=True)
class FeedbackEvent:
    """One SES event, reduced to what the pipeline acts on. `addresses` are lower-cased and only
    used to find a member the recipient tag does not name: never store or log them."""

    event_type: str
    message_id: str
    occurred_at: dt.datetime | None
    tags: SendEvent | None
    member_status: str | None = None  # bounced / unsubscribed when this event suppresses the member
    reason: str | None = None
    bounce_type: str | None = None  # Permanent, Transient or Undetermined, for a Bounce
    event_at: dt.datetime | None = None  # when the event itself happened (occurred_at: when SES accepted the mail)
    addresses: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class SoftBouncePolicy:
    """`limit` transient bounces of messages sent within `window` (and after the last one delivered)
    bounce the member."""

    limit: int = 3
    window: dt.timedelta = dt.timedelta(days=30)


@dataclass(frozen=True)
class Applied:
    """What applying one event did."""

    event_type: str
    stored: bool
    member_status: str | None
    mailing_id: str | None = None  # the event's mailing, when it was newly stored


class Untrusted(ValueError):
    """A message the feed must not apply: not from our topic, or not tagged as we tag our mail."""


def unwrap_sqs_body(body: str, topic_arn: str) -> Mapping[str, Any] | None:
    """The SES event in an SQS message body, an SNS envelope from `topic_arn`; None if it holds no
    event (not JSON, a subscription confirmation); `Untrusted` if it is no envelope of that topic."""
    try:
        document = json.loads(body)
    except (TypeError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    if document.get("TopicArn") != topic_arn or "Type" not in document:
        raise Untrusted("not an SNS envelope from the configured topic")
    if document["Type"] != "Notification":
        return None  # e.g. a subscription confirmation: nothing SES said
    try:
        event = json.loads(document.get("Message") or "null")
    except (TypeError, ValueError):
        return None
    return event if isinstance(event, dict) else None


def _storable(event: FeedbackEvent) -> bool:
    return event.tags is not None and ObjectId.is_valid(event.tags.mailing_id)


def check_tags(event: FeedbackEvent) -> FeedbackEvent:
    """`event` if it carries our tags with the types we write; else `Untrusted`."""
    tags = event.tags
    if tags is None:
        raise Untrusted("the event carries no mailing, batch and recipient tags")
    values = (tags.mailing_id, tags.batch_id, tags.recipient_key)
    if not all(isinstance(value, str) for value in values) or not (
        OBJECT_ID_TAG.fullmatch(tags.mailing_id)
        and OBJECT_ID_TAG.fullmatch(tags.batch_id)
        and RECIPIENT_TAG.fullmatch(tags.recipient_key)
    ):
        raise Untrusted("the event's tags are not of the types the mailer writes")
    return event


def parse_ses_event(event: Mapping[str, Any]) -> FeedbackEvent | None:
    """The event's type, message, tags and consequence for the member; None if it is no SES event."""
    event_type = event.get("eventType") or event.get("notificationType")
    mail = event.get("mail")
    if not event_type or not isinstance(mail, dict) or not mail.get("messageId"):
        return None
    sent_at = _parse_time(mail.get("timestamp"))
    detail = event.get(_DETAIL_KEYS.get(str(event_type), "")) or {}
    event_at = _parse_time(detail.get("timestamp")) if isinstance(detail, dict) else None
    common = FeedbackEvent(
        str(event_type), str(mail["messageId"]), sent_at, send_event_from_ses(event), event_at=event_at or sent_at
    )
    if event_type == "Bounce":
        bounce = event.get("bounce") or {}
        bounce_type = str(bounce.get("bounceType") or "Undetermined")
        kind = f"{bounce_type}/{bounce.get('bounceSubType', 'Undetermined')}"
        status = BOUNCED if bounce_type == PERMANENT_BOUNCE else None
        return dataclasses.replace(
            common,
            member_status=status,
            reason=f"SES bounce {kind}",
            bounce_type=bounce_type,
            addresses=_addresses(bounce.get("bouncedRecipients")),
        )
    if event_type == "Complaint":
        complaint = event.get("complaint") or {}
        kind = complaint.get("complaintFeedbackType") or complaint.get("complaintSubType") or "unspecified"
        return dataclasses.replace(
            common,
            member_status=UNSUBSCRIBED,
            reason=f"SES complaint {kind}",
            addresses=_addresses(complaint.get("complainedRecipients")),
        )
    return common


# Where each event type keeps its own part, with the event's `timestamp` (SES event publishing docs).
_DETAIL_KEYS = {
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Delivery": "delivery",
    "DeliveryDelay": "deliveryDelay",
    "Open": "open",
    "Click": "click",
    "Reject": "reject",
    "Rendering Failure": "failure",
}


def _addresses(recipients: Any) -> tuple[str, ...]:
    found = (entry.get("emailAddress") for entry in recipients or [] if isinstance(entry, dict))
    return tuple(sorted({normalize_email(address) for address in found if address}))


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


class FeedbackStore:
    """`mail_events`, the mailings' reports and the members' status in `users`, written idempotently."""

    def __init__(
        self,
        events: Collection,
        users: Collection,
        reports: MailingReports,
        soft_bounces: SoftBouncePolicy = SoftBouncePolicy(),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.events = events
        self.users = users
        self.reports = reports
        self.soft_bounces = soft_bounces
        self._clock = clock

    def ensure_indexes(self) -> None:
        self.events.create_index(
            [("mailing_id", ASCENDING), ("batch_id", ASCENDING), ("recipient_key", ASCENDING)],
            name="mailing_batch_recipient",
        )
        self.events.create_index(
            [("recipient_key", ASCENDING), ("event_type", ASCENDING), ("occurred_at", DESCENDING)],
            name="recipient_type_time",
        )
        self.reports.ensure_indexes()

    def apply(self, events: Sequence[FeedbackEvent]) -> list[Applied]:
        """Store the events (one SQS batch), then change the members from what is stored: a crash in
        between is redone on redelivery (the store says "not new", the member change runs again and
        is idempotent)."""
        stored = self.store(events)
        return [
            Applied(
                event.event_type,
                new,
                self.suppress_member(event) or self.bounce_after_soft_bounces(event),
                event.tags.mailing_id if new and event.tags else None,
            )
            for event, new in zip(events, stored, strict=True)
        ]

    def store(self, events: Sequence[FeedbackEvent]) -> list[bool]:
        """Keep each tagged event once per (message, event type) and count the new ones in their
        mailings' reports, all in one transaction (none when no event is of a category the report
        counts, e.g. a batch of Send events); per event, True when it was new."""
        now = self._clock.now()
        documents = {index: self._document(event, now) for index, event in enumerate(events) if _storable(event)}
        if not documents:
            return [False] * len(events)
        writes = [
            UpdateOne({"_id": f"{events[i].message_id}:{events[i].event_type}"}, {"$setOnInsert": d}, upsert=True)
            for i, d in documents.items()
        ]
        positions = list(documents)  # the bulk write's index -> the event's
        categories = {i: category_for(events[i].event_type, events[i].bounce_type) for i in documents}

        def store_and_count(session: ClientSession | None) -> set[int]:
            upserted = self.events.bulk_write(writes, ordered=True, session=session).upserted_ids or {}
            new = {positions[index] for index in upserted}
            counts: dict[ObjectId, list[tuple[str, dt.datetime]]] = {}
            for index in sorted(new):
                if (category := categories[index]) is not None:
                    document = documents[index]
                    counts.setdefault(document["mailing_id"], []).append((category, document["event_at"]))
            for mailing_id, counted in counts.items():
                self.reports.count(mailing_id, counted, session)
            return new

        if not any(categories.values()):
            new = store_and_count(None)
        else:
            with self.events.database.client.start_session() as session:
                new = session.with_transaction(store_and_count)
        return [index in new for index in range(len(events))]

    @staticmethod
    def _document(event: FeedbackEvent, now: dt.datetime) -> dict[str, Any]:
        tags = event.tags
        assert tags is not None  # _storable
        document: dict[str, Any] = {
            "event_type": event.event_type,
            "mailing_id": ObjectId(tags.mailing_id),
            "batch_id": tags.batch_id,
            "recipient_key": tags.recipient_key,
            "message_id": event.message_id,
            "error": tags.error or event.reason,
            # When SES accepted the message: settle_unknown compares it with attempt times.
            "occurred_at": event.occurred_at or now,
            "event_at": event.event_at or event.occurred_at or now,
            "received_at": now,
        }
        if event.bounce_type is not None:
            document["bounce_type"] = event.bounce_type
        return document

    def suppress_member(self, event: FeedbackEvent) -> str | None:
        """Move an active member to the event's status; returns it when a member changed."""
        if event.member_status is None or event.reason is None:
            return None
        return self._change_member(event, event.member_status, event.reason)

    def bounce_after_soft_bounces(self, event: FeedbackEvent) -> str | None:
        """A transient bounce that makes `soft_bounces.limit` of them (messages sent within the window,
        after the member's last delivered message and last status change) bounces the member."""
        if event.bounce_type != TRANSIENT_BOUNCE or event.tags is None or event.occurred_at is None:
            return None
        member = self._member_filter(event)
        found = (
            self.users.find_one({**member, "status": ACTIVE}, {"status_changed_at": 1, "email": 1}) if member else None
        )
        if found is None:
            return None
        # The member's mail is keyed by user id, or by address where the backend named only that.
        keys = {"$in": [str(found["_id"]), *([recipient_key_for(None, found["email"])] if found.get("email") else [])]}
        since = self._clock.now() - self.soft_bounces.window
        if found.get("status_changed_at") is not None:
            since = max(since, as_utc(found["status_changed_at"]))
        sent_after: dict[str, Any] = {"$gte": since}
        delivered = self.events.find_one(
            {"recipient_key": keys, "event_type": DELIVERY}, {"occurred_at": 1}, sort=[("occurred_at", DESCENDING)]
        )
        if delivered is not None:
            sent_after["$gt"] = delivered["occurred_at"]
        bounces = self.events.count_documents(
            {"recipient_key": keys, "event_type": "Bounce", "bounce_type": TRANSIENT_BOUNCE, "occurred_at": sent_after}
        )
        if bounces < self.soft_bounces.limit:
            return None
        days = self.soft_bounces.window / dt.timedelta(days=1)
        return self._change_member(event, BOUNCED, f"SES bounce Transient: {bounces} in {days:g} days")

    def _change_member(self, event: FeedbackEvent, status: str, reason: str) -> str | None:
        member = self._member_filter(event)
        if member is None:
            return None
        stale = {"status_changed_at": {"$not": {"$gte": event.occurred_at}}} if event.occurred_at else {}
        changed = self.users.update_many(
            {**member, **stale, "status": ACTIVE},
            {"$set": {"status": status, "status_reason": reason, "status_changed_at": self._clock.now()}},
        ).modified_count
        return status if changed else None

    def _member_filter(self, event: FeedbackEvent) -> dict[str, Any] | None:
        if event.tags is not None and ObjectId.is_valid(event.tags.recipient_key):
            return {"_id": ObjectId(event.tags.recipient_key)}
        if event.addresses:
            return {"email": {"$in": list(event.addresses)}}
        return None


@dataclass(frozen=True)
class QueueMessage:
    receipt_handle: str
    body: str


class MessageQueue(Protocol):
    """The SQS queue as the drain needs it (see mailer/sqs.py); `topic_arn` is the one topic whose
    messages are applied."""

    topic_arn: str

    def receive(self, max_messages: int, wait: bool = True) -> Sequence[QueueMessage]:
        """Up to `max_messages`; with `wait`, long-polled until one comes or the wait ends."""
        ...

    def delete(self, receipt_handles: Sequence[str]) -> int: ...


@dataclass
class DrainReport:
    messages_read: int = 0
    messages_deleted: int = 0
    messages_ignored: int = 0  # not an SES event: deleted, as no redelivery can make it one
    messages_untrusted: int = 0  # not from our topic or not tagged as ours: deleted unapplied
    events_by_type: Counter[str] = field(default_factory=Counter)
    events_stored: int = 0
    members: Counter[str] = field(default_factory=Counter)  # new status -> members changed
    mailings: set[str] = field(default_factory=set)  # the mailings with newly stored events: reports to refresh

    def add(self, applied: Applied | Untrusted | None) -> None:
        if applied is None:
            self.messages_ignored += 1
            return
        if isinstance(applied, Untrusted):
            self.messages_untrusted += 1
            return
        self.events_by_type[applied.event_type] += 1
        self.events_stored += int(applied.stored)
        if applied.mailing_id:
            self.mailings.add(applied.mailing_id)
        if applied.member_status:
            self.members[applied.member_status] += 1


def read_message(body: str, topic_arn: str) -> FeedbackEvent | None:
    """The SES event of one SQS message; None when it carries none or is malformed; `Untrusted`
    (raised) when it is not from `topic_arn` or not tagged as our mail is."""
    try:
        raw = unwrap_sqs_body(body, topic_arn)
        event = parse_ses_event(raw) if raw is not None else None
    except Untrusted:
        raise
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # no redelivery can make it readable, so it must not fail the drain
    return check_tags(event) if event is not None else None


def apply_messages(store: FeedbackStore, bodies: Sequence[str], topic_arn: str) -> list[Applied | Untrusted | None]:
    """Apply the SQS messages of one batch together; per message, None when it carries no SES event,
    the `Untrusted` reason when it must not be applied."""
    read: list[FeedbackEvent | Untrusted | None] = []
    for body in bodies:
        try:
            read.append(read_message(body, topic_arn))
        except Untrusted as untrusted:
            read.append(untrusted)
    events = [event for event in read if isinstance(event, FeedbackEvent)]
    applied = iter(store.apply(events))
    return [next(applied) if isinstance(event, FeedbackEvent) else event for event in read]


def drain(
    queue: MessageQueue,
    store: FeedbackStore,
    max_messages: int = MAX_MESSAGES_PER_DRAIN,
    max_seconds: float = MAX_SECONDS_PER_DRAIN,
    monotonic: Callable[[], float] = time.monotonic,
) -> DrainReport:
    """Receive until the queue is empty, or `max_messages` were read, or `max_seconds` passed (while
    mail is flowing the queue may never be empty), applying the messages and deleting them only once
    applied. If applying fails, the error is raised and the messages stay in the queue, to come back
    later (applying again changes nothing)."""
    report = DrainReport()
    deadline = monotonic() + max_seconds
    while report.messages_read < max_messages and monotonic() < deadline:
        messages = _receive_group(queue, max_messages - report.messages_read)
        if not messages:
            break
        report.messages_read += len(messages)
        for applied in apply_messages(store, [message.body for message in messages], queue.topic_arn):
            report.add(applied)
        for start in range(0, len(messages), SQS_BATCH_SIZE):
            batch = messages[start : start + SQS_BATCH_SIZE]
            report.messages_deleted += queue.delete([message.receipt_handle for message in batch])
    return report


def _receive_group(queue: MessageQueue, most: int) -> list[QueueMessage]:
    """Up to APPLY_GROUP_SIZE messages for one transaction (its cost is mostly per transaction: a
    tenth of a 10-message one's per event). Only the first receive waits: the next ones, while SQS
    answers full batches, take what is there, so a group is never held back by a long poll."""
    group = list(queue.receive(SQS_BATCH_SIZE))
    while len(group) % SQS_BATCH_SIZE == 0 and 0 < len(group) < min(most, APPLY_GROUP_SIZE):
        messages = queue.receive(SQS_BATCH_SIZE, wait=False)
        if not messages:
            break
        group.extend(messages)
    return group
