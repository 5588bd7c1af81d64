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
* a permanent bounce makes the member `bounced`, a complaint `unsubscribed` (from `active` only), so
  the mailer suppresses them from then on; a transient or undetermined bounce changes nothing; an
  event about a message sent before the member's last `status_changed_at` is stale (a member the
  backend reactivated is not bounced again by a late event about their old address).
The member is found by the recipient tag (a user id) or else by the address SES reports; addresses
are used for that lookup only, never stored in `mail_events` nor logged. Applying an event twice
changes nothing the second time, so SQS's at-least-once delivery is harmless. pymongo only, no Dagster.
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
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from panel_pipeline.mailer.store import (
    SendEvent,
    normalize_email,
    send_event_from_ses,
)
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.contract import ACTIVE, BOUNCED, UNSUBSCRIBED

PERMANENT_BOUNCE = "Permanent"
SQS_BATCH_SIZE = 10
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
    addresses: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Applied:
    """What applying one event did."""

    event_type: str
    stored: bool
    member_status: str | None


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
    common = FeedbackEvent(
        str(event_type), str(mail["messageId"]), _parse_time(mail.get("timestamp")), send_event_from_ses(event)
    )
    if event_type == "Bounce":
        bounce = event.get("bounce") or {}
        kind = f"{bounce.get('bounceType', 'Undetermined')}/{bounce.get('bounceSubType', 'Undetermined')}"
        status = BOUNCED if bounce.get("bounceType") == PERMANENT_BOUNCE else None
        return dataclasses.replace(
            common,
            member_status=status,
            reason=f"SES bounce {kind}",
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


def _addresses(recipients: Any) -> tuple[str, ...]:
    found = (entry.get("emailAddress") for entry in recipients or [] if isinstance(entry, dict))
    return tuple(sorted({normalize_email(address) for address in found if address}))


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


class FeedbackStore:
    """`mail_events` and the members' status in `users`, written idempotently."""

    def __init__(self, events: Collection, users: Collection, clock: Clock = SYSTEM_CLOCK) -> None:
        self.events = events
        self.users = users
        self._clock = clock

    def ensure_indexes(self) -> None:
        self.events.create_index(
            [("mailing_id", ASCENDING), ("batch_id", ASCENDING), ("recipient_key", ASCENDING)],
            name="mailing_batch_recipient",
        )

    def apply(self, event: FeedbackEvent) -> Applied:
        """Change the member first, then store the event: a crash in between is redone on redelivery."""
        changed = self.suppress_member(event)
        return Applied(event.event_type, self.store(event), changed)

    def store(self, event: FeedbackEvent) -> bool:
        """Keep a tagged event once per (message, event type); True when it was new."""
        tags = event.tags
        if tags is None or not ObjectId.is_valid(tags.mailing_id):
            return False
        now = self._clock.now()
        document = {
            "event_type": event.event_type,
            "mailing_id": ObjectId(tags.mailing_id),
            "batch_id": tags.batch_id,
            "recipient_key": tags.recipient_key,
            "message_id": event.message_id,
            "error": tags.error or event.reason,
            # When SES accepted the message: settle_unknown compares it with attempt times.
            "occurred_at": event.occurred_at or now,
            "received_at": now,
        }
        try:
            result = self.events.update_one(
                {"_id": f"{event.message_id}:{event.event_type}"}, {"$setOnInsert": document}, upsert=True
            )
        except DuplicateKeyError:  # another consumer stored it at the same moment
            return False
        return result.upserted_id is not None

    def suppress_member(self, event: FeedbackEvent) -> str | None:
        """Move an active member to the event's status; returns it when a member changed."""
        if event.member_status is None:
            return None
        member = self._member_filter(event)
        if member is None:
            return None
        stale = {"status_changed_at": {"$not": {"$gte": event.occurred_at}}} if event.occurred_at else {}
        changed = self.users.update_many(
            {**member, **stale, "status": ACTIVE},
            {
                "$set": {
                    "status": event.member_status,
                    "status_reason": event.reason,
                    "status_changed_at": self._clock.now(),
                }
            },
        ).modified_count
        return event.member_status if changed else None

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

    def receive(self, max_messages: int) -> Sequence[QueueMessage]: ...

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

    def add(self, applied: Applied | Untrusted | None) -> None:
        if applied is None:
            self.messages_ignored += 1
            return
        if isinstance(applied, Untrusted):
            self.messages_untrusted += 1
            return
        self.events_by_type[applied.event_type] += 1
        self.events_stored += int(applied.stored)
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


def apply_message(store: FeedbackStore, body: str, topic_arn: str) -> Applied | Untrusted | None:
    """Apply one SQS message; None when it carries no SES event, the `Untrusted` reason when it
    must not be applied."""
    try:
        event = read_message(body, topic_arn)
    except Untrusted as untrusted:
        return untrusted
    return store.apply(event) if event is not None else None


def drain(
    queue: MessageQueue,
    store: FeedbackStore,
    max_messages: int = MAX_MESSAGES_PER_DRAIN,
    max_seconds: float = MAX_SECONDS_PER_DRAIN,
    monotonic: Callable[[], float] = time.monotonic,
) -> DrainReport:
    """Receive batches of 10 until the queue is empty, or `max_messages` were read, or `max_seconds`
    passed (while mail is flowing the queue may never be empty), applying each message and deleting
    it only once applied. If applying fails, the messages already applied are deleted and the error
    raised: the rest stay in the queue and come back later."""
    report = DrainReport()
    deadline = monotonic() + max_seconds
    while report.messages_read < max_messages and monotonic() < deadline:
        messages = queue.receive(SQS_BATCH_SIZE)
        if not messages:
            break
        report.messages_read += len(messages)
        applied: list[str] = []
        try:
            for message in messages:
                report.add(apply_message(store, message.body, queue.topic_arn))
                applied.append(message.receipt_handle)
        finally:
            if applied:
                report.messages_deleted += queue.delete(applied)
    return report
