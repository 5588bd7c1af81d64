"""SES events read from SQS bodies and applied to the real mongod: `mail_events` and members' status."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import WriteError

from panel_pipeline.mailer.feedback import (
    BOUNCED,
    UNSUBSCRIBED,
    FeedbackStore,
    QueueMessage,
    Untrusted,
    apply_messages,
    drain,
    parse_ses_event,
    unwrap_sqs_body,
)
from panel_pipeline.mailer.store import (
    PENDING,
    SENT,
    UNKNOWN,
    MailingReports,
    MailLedger,
    recipient_key_for,
)
from panel_pipeline_tests.clock import ManualClock
from panel_pipeline_tests.mailer.ses_events import (
    BATCH,
    bounce,
    complaint,
    event,
    sns_envelope,
    tags,
)

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TOPIC = "arn:aws:sns:eu-west-2:123456789012:panel-ses-events"  # sns_envelope's default


def apply_message(store, body):
    """What the drain does with one SQS body, from the configured topic."""
    (applied,) = apply_messages(store, [body], TOPIC)
    return applied


@pytest.fixture
def store(mongo_db: Database) -> FeedbackStore:
    reports = MailingReports(mongo_db.mailings, mongo_db.mail_log, mongo_db.mail_events)
    feedback = FeedbackStore(mongo_db.mail_events, mongo_db.users, reports, clock=ManualClock(NOW))
    feedback.ensure_indexes()
    return feedback


def member(db: Database, email: str, status: str = "active") -> ObjectId:
    return db.users.insert_one({"email": email, "first_name": "Ann", "status": status}).inserted_id


def test_an_sns_envelope_from_the_configured_topic_carries_the_event():
    ses_event = event("Send", "ann@panel.example", tags(ObjectId(), ObjectId()))
    assert unwrap_sqs_body(sns_envelope(ses_event), TOPIC) == ses_event


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Type": "SubscriptionConfirmation", "TopicArn": TOPIC, "Message": "confirm"}),
        "not json",
        "[1, 2]",
        json.dumps({"Type": "Notification", "TopicArn": TOPIC, "Message": "not json"}),
    ],
)
def test_a_body_without_an_ses_event_is_none(body):
    assert unwrap_sqs_body(body, TOPIC) is None


@pytest.mark.parametrize(
    "malformed",
    [
        {"eventType": "Bounce", "mail": {"messageId": "m1", "tags": ["not", "a", "map"]}},
        {"eventType": "Complaint", "mail": {"messageId": "m1"}, "complaint": ["not a map"]},
    ],
)
def test_a_malformed_event_is_ignored_not_raised(store, malformed):
    assert apply_message(store, sns_envelope(malformed)) is None


def test_configuration_set_and_legacy_spellings_parse_alike():
    labels = tags(ObjectId(), "u1")
    modern = parse_ses_event(bounce("Ann@Panel.example", labels))
    legacy = parse_ses_event(bounce("Ann@Panel.example", labels, key="notificationType"))
    for parsed in (modern, legacy):
        assert (parsed.event_type, parsed.member_status, parsed.reason) == (
            "Bounce",
            BOUNCED,
            "SES bounce Permanent/General",
        )
        assert parsed.addresses == ("ann@panel.example",)
        assert parsed.tags.recipient_key == "u1"
        assert parsed.occurred_at == dt.datetime(2026, 11, 23, 9, 0, 0, 123000, tzinfo=UTC)
    assert parse_ses_event(bounce("a@b.example", None, bounce_type="Transient")).member_status is None
    assert parse_ses_event(complaint("a@b.example", None)).member_status == UNSUBSCRIBED
    assert parse_ses_event({"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "set up"}) is None
    assert "@" not in repr(modern), "an address must not reach a log through repr"


def test_each_tagged_event_is_stored_once_with_the_schema_and_no_address(store, mongo_db):
    mailing, ann = ObjectId(), str(ObjectId())
    sent = event("Send", "ann@panel.example", tags(mailing, ann))
    message_id = sent["mail"]["messageId"]
    bounced = bounce("ann@panel.example", tags(mailing, ann), message_id=message_id)
    for body in (sns_envelope(sent), sns_envelope(sent), sns_envelope(bounced)):
        apply_message(store, body)
    apply_message(store, sns_envelope(event("Rendering Failure", "bob@panel.example", tags(mailing, ObjectId()))))

    documents = {doc["_id"]: doc for doc in mongo_db.mail_events.find()}
    assert sorted(doc["event_type"] for doc in documents.values()) == ["Bounce", "Rendering Failure", "Send"]
    assert documents[f"{message_id}:Send"] == {
        "_id": f"{message_id}:Send",
        "event_type": "Send",
        "mailing_id": mailing,
        "batch_id": BATCH,
        "recipient_key": ann,
        "message_id": message_id,
        "error": None,
        "occurred_at": dt.datetime(2026, 11, 23, 9, 0, 0, 123000, tzinfo=UTC),
        "event_at": dt.datetime(2026, 11, 23, 9, 0, 0, 123000, tzinfo=UTC),
        "received_at": NOW,
    }
    assert documents[f"{message_id}:Bounce"]["error"] == "SES bounce Permanent/General"
    assert documents[f"{message_id}:Bounce"]["bounce_type"] == "Permanent"
    assert documents[f"{message_id}:Bounce"]["event_at"] == dt.datetime(2026, 11, 23, 9, 5, tzinfo=UTC)
    failure = next(doc for doc in documents.values() if doc["event_type"] == "Rendering Failure")
    assert failure["error"] == "Attribute 'points' is not present in the rendering data."
    assert "@" not in str(list(mongo_db.mail_events.find()))
    index = mongo_db.mail_events.index_information()["mailing_batch_recipient"]
    assert index["key"] == [("mailing_id", 1), ("batch_id", 1), ("recipient_key", 1)]


def test_a_permanent_bounce_bounces_the_tagged_member_once(store, mongo_db):
    ann = member(mongo_db, "ann@panel.example")
    body = sns_envelope(bounce("ann@panel.example", tags(ObjectId(), ann)))
    first, again = apply_message(store, body), apply_message(store, body)
    assert (first.member_status, again.member_status) == (BOUNCED, None)
    user = mongo_db.users.find_one({"_id": ann})
    assert (user["status"], user["status_reason"], user["status_changed_at"]) == (
        "bounced",
        "SES bounce Permanent/General",
        NOW,
    )


def test_a_complaint_without_a_user_tag_finds_the_member_by_address(store, mongo_db):
    ann = member(mongo_db, "ann@panel.example")
    hashed_key = recipient_key_for(None, "Ann@Panel.example")
    applied = apply_message(store, sns_envelope(complaint("ANN@panel.example", tags(ObjectId(), hashed_key))))
    assert applied.member_status == UNSUBSCRIBED
    assert mongo_db.users.find_one({"_id": ann})["status_reason"] == "SES complaint abuse"
    other = member(mongo_db, "ann2@panel.example")
    legacy = complaint(
        "ann2@panel.example", tags(ObjectId(), recipient_key_for(None, "ann2@panel.example")), key="notificationType"
    )
    assert apply_message(store, sns_envelope(legacy)).member_status == UNSUBSCRIBED
    assert mongo_db.users.find_one({"_id": other})["status"] == "unsubscribed"


def test_a_transient_bounce_changes_nothing_and_only_active_members_change(store, mongo_db):
    ann = member(mongo_db, "ann@panel.example")
    gone = member(mongo_db, "gone@panel.example", status="deleted")
    apply_message(store, sns_envelope(bounce("ann@panel.example", tags(ObjectId(), ann), bounce_type="Transient")))
    apply_message(store, sns_envelope(complaint("gone@panel.example", tags(ObjectId(), gone))))
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"
    assert mongo_db.users.find_one({"_id": gone})["status"] == "deleted"
    assert "status_reason" not in mongo_db.users.find_one({"_id": gone})


def test_a_late_event_about_an_earlier_message_does_not_bounce_a_reactivated_member(store, mongo_db):
    ann = member(mongo_db, "ann@panel.example")
    apply_message(
        store, sns_envelope(bounce("ann@panel.example", tags(ObjectId(), ann)))
    )  # sent 09:00, applied at 10:00
    mongo_db.users.update_one({"_id": ann}, {"$set": {"status": "active"}})  # the backend reactivates her
    late = bounce("ann@panel.example", tags(ObjectId(), ann))  # another message sent at 09:00, reported late
    assert apply_message(store, sns_envelope(late)).member_status is None
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"
    fresh = bounce("ann@panel.example", tags(ObjectId(), ann))
    fresh["mail"]["timestamp"] = "2026-11-23T11:00:00.000Z"  # a message sent after the reactivation
    assert apply_message(store, sns_envelope(fresh)).member_status == BOUNCED


def test_stored_events_settle_unknown_ledger_rows(store, mongo_db):
    """The ledger reads what the feed stores: a Send event settles its unknown row as sent."""
    mailing, ann = ObjectId(), ObjectId()
    ledger = MailLedger(mongo_db.mail_log, mongo_db.mail_events)
    mongo_db.mail_log.insert_many(
        [
            {
                "mailing_id": mailing,
                "recipient_key": key,
                "batch_id": BATCH,
                "status": UNKNOWN,
                "attempt_started_at": dt.datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
            }
            for key in (str(ann), "e-0000")
        ]
    )
    apply_message(store, sns_envelope(event("Send", "ann@panel.example", tags(mailing, ann))))
    settled = ledger.settle_unknown(mailing)
    assert (settled[SENT], settled[PENDING]) == (1, 1)  # the silent one was never accepted
    assert mongo_db.mail_log.find_one({"recipient_key": str(ann)})["status"] == SENT


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda e: json.dumps(e), id="raw delivery: no envelope to check"),
        pytest.param(
            lambda e: sns_envelope(e, topic_arn="arn:aws:sns:eu-west-2:999999999999:someone-else"), id="another topic"
        ),
        pytest.param(lambda e: json.dumps({**json.loads(sns_envelope(e)), "TopicArn": None}), id="no topic"),
    ],
)
def test_a_message_not_from_the_configured_topic_is_untrusted_and_changes_nothing(store, mongo_db, forged):
    ann = member(mongo_db, "ann@panel.example")
    applied = apply_message(store, forged(bounce("ann@panel.example", tags(ObjectId(), ann))))
    assert isinstance(applied, Untrusted)
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"
    assert mongo_db.mail_events.count_documents({}) == 0


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param(None, id="untagged"),
        pytest.param({"mailing": "not-an-id", "batch": BATCH, "recipient": "x"}, id="mailing not an ObjectId"),
        pytest.param(
            {"mailing": str(ObjectId()), "batch": "batch-1", "recipient": str(ObjectId())}, id="batch not an ObjectId"
        ),
        pytest.param(
            {"mailing": str(ObjectId()), "batch": BATCH, "recipient": "ann@panel.example"}, id="recipient not a key"
        ),
        pytest.param(
            {"mailing": str(ObjectId()), "batch": BATCH, "recipient": "e-1234"}, id="recipient hash too short"
        ),
    ],
)
def test_an_event_without_our_tags_is_untrusted_even_from_the_topic(store, mongo_db, labels):
    ann = member(mongo_db, "ann@panel.example")
    applied = apply_message(store, sns_envelope(complaint("ann@panel.example", labels)))
    assert isinstance(applied, Untrusted)
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"
    assert mongo_db.mail_events.count_documents({}) == 0


class ListQueue:
    topic_arn = TOPIC

    def __init__(self, bodies):
        self.bodies, self.deleted, self.received, self.waits = list(bodies), [], 0, []

    def receive(self, max_messages, wait=True):
        self.waits.append(wait)
        taken, self.bodies = self.bodies[:max_messages], self.bodies[max_messages:]
        self.received += len(taken)
        return [QueueMessage(f"r{self.received - len(taken) + i}", body) for i, body in enumerate(taken)]

    def delete(self, handles):
        assert len(handles) <= 10  # DeleteMessageBatch's most
        self.deleted.extend(handles)
        return len(handles)


def test_the_drain_counts_and_deletes_untrusted_messages(store, mongo_db):
    ann = member(mongo_db, "ann@panel.example")
    genuine = sns_envelope(event("Send", "ann@panel.example", tags(ObjectId(), ann)))
    queue = ListQueue(
        [
            genuine,
            json.dumps(bounce("ann@panel.example", tags(ObjectId(), ann))),
            "not json",
            sns_envelope(bounce("ann@panel.example", None)),
        ]
    )
    report = drain(queue, store)
    assert (report.messages_read, report.messages_deleted) == (4, 4)
    assert (report.events_stored, report.messages_untrusted, report.messages_ignored) == (1, 2, 1)
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"


def test_a_drain_ends_after_its_time_even_while_messages_keep_coming(store, mongo_db):
    """While mail flows the queue is never empty: the run must still end (the sensor asks again)."""
    ann = member(mongo_db, "ann@panel.example")
    queue = ListQueue(sns_envelope(event("Delivery", "ann@panel.example", tags(ObjectId(), ann))) for _ in range(500))
    ticks = iter(range(100))  # one second per look at the clock: the deadline at 0 + 3, two groups before it
    report = drain(queue, store, max_seconds=3, monotonic=lambda: next(ticks))
    assert (report.messages_read, report.messages_deleted) == (200, 200)
    assert sorted(queue.deleted, key=lambda handle: int(handle[1:])) == [f"r{i}" for i in range(200)]
    assert len(queue.bodies) == 300


def test_a_drain_applies_up_to_a_hundred_messages_together_and_stops_at_a_short_batch(store, mongo_db):
    ann = member(mongo_db, "ann@panel.example")
    queue = ListQueue(sns_envelope(event("Delivery", "ann@panel.example", tags(ObjectId(), ann))) for _ in range(135))
    groups = []
    apply = store.apply
    store.apply = lambda events: groups.append(len(events)) or apply(events)
    report = drain(queue, store)
    assert groups == [100, 35]
    assert queue.waits == [True] + [False] * 9 + [True] + [False] * 3 + [True]  # a long poll only to start a group
    assert (report.messages_read, report.messages_deleted, report.events_stored) == (135, 135, 135)


def sent_at(ses_event: dict, timestamp: str) -> dict:
    """The event about a message SES accepted at `timestamp`."""
    ses_event["mail"]["timestamp"] = timestamp
    return ses_event


def soft_bounce(member_id: ObjectId, timestamp: str) -> dict:
    return sent_at(bounce("ann@panel.example", tags(ObjectId(), member_id), bounce_type="Transient"), timestamp)


def test_one_batch_is_stored_and_counted_all_or_nothing(store, mongo_db):
    """A batch of SQS messages is one transaction: a report that cannot be written stores none of
    its events, and the redelivered batch then stores and counts each once (a duplicate within it too)."""
    mailing = mongo_db.mailings.insert_one({"processed": False, "template": "new_survey"}).inserted_id
    ann, bob = ObjectId(), ObjectId()
    delivered = event("Delivery", "ann@panel.example", tags(mailing, ann))
    batch = [sns_envelope(e) for e in (event("Send", "ann@panel.example", tags(mailing, ann)), delivered, delivered)]
    batch.append(sns_envelope(bounce("bob@panel.example", tags(mailing, bob))))
    mongo_db.command("collMod", "mailings", validator={"$expr": False}, validationAction="error")
    with pytest.raises(WriteError, match="Document failed validation"):
        apply_messages(store, batch, TOPIC)
    assert mongo_db.mail_events.count_documents({}) == 0, "the report's write failed, so nothing was stored"

    mongo_db.command("collMod", "mailings", validator={})
    applied = apply_messages(store, batch, TOPIC)
    assert [a.stored for a in applied] == [True, True, False, True]
    assert mongo_db.mailings.find_one({"_id": mailing})["report"]["counts"] == {"delivered": 1, "bounced_permanent": 1}
    assert mongo_db.mail_events.count_documents({}) == 3


def test_a_newly_stored_event_counts_once_in_its_mailings_report(store, mongo_db):
    mailing = mongo_db.mailings.insert_one({"processed": False, "template": "new_survey"}).inserted_id
    ann, bob = ObjectId(), ObjectId()
    delivered = event("Delivery", "ann@panel.example", tags(mailing, ann))
    complained = complaint("ann@panel.example", tags(mailing, ann), message_id=delivered["mail"]["messageId"])
    transient = bounce("bob@panel.example", tags(mailing, bob), bounce_type="Transient")
    opened = event("Open", "ann@panel.example", tags(mailing, ann), message_id=delivered["mail"]["messageId"])
    for ses_event in (delivered, delivered, complained, transient, opened, complained, event("Send", "x@y.z", None)):
        apply_message(store, sns_envelope(ses_event))
    apply_message(store, sns_envelope(event("Delivery", "cat@panel.example", tags(ObjectId(), ObjectId()))))

    report = mongo_db.mailings.find_one({"_id": mailing})["report"]
    counted = {"delivered": 1, "complained": 1, "bounced_transient": 1, "opened": 1}
    assert report["counts"] == counted
    # Delivery, Complaint and Bounce carry their own time (09:05); the Open here only the send time (09:00).
    assert report["hours"] == {"2026-11-23T09": counted}

    mongo_db.mail_log.insert_many([{"mailing_id": mailing, "status": status} for status in ("sent",) * 4 + ("failed",)])
    refreshed = store.reports.refresh(mailing)
    assert refreshed is not None and refreshed.sent == 4
    stored = mongo_db.mailings.find_one({"_id": mailing})["report"]
    assert stored["sent"] == 4 and stored["updated_at"] is not None
    assert (stored["rates"]["delivered_rate"], stored["rates"]["bounced_transient_rate"]) == (0.25, 0.25)
    assert stored["rates"]["bounced_permanent_rate"] == 0.0


def test_an_event_whose_count_fails_is_not_stored_and_counts_on_redelivery(store, mongo_db):
    """The event and its count are one transaction: a failure between them leaves neither, so the
    redelivered event is counted once, not lost."""
    mailing = mongo_db.mailings.insert_one({"processed": False}).inserted_id
    body = sns_envelope(event("Delivery", "ann@panel.example", tags(mailing, ObjectId())))
    mongo_db.command("collMod", "mailings", validator={"$expr": False}, validationAction="error")
    with pytest.raises(WriteError, match="Document failed validation"):
        apply_message(store, body)
    assert mongo_db.mail_events.count_documents({}) == 0

    mongo_db.command("collMod", "mailings", validator={})
    assert apply_message(store, body).stored and not apply_message(store, body).stored
    assert mongo_db.mailings.find_one({"_id": mailing})["report"]["counts"] == {"delivered": 1}


def test_three_transient_bounces_within_the_window_bounce_the_member(store, mongo_db):
    ann = member(mongo_db, "ann@panel.example")
    too_old = soft_bounce(ann, "2026-10-20T09:00:00.000Z")  # 34 days before NOW: outside the 30 days
    first, second = soft_bounce(ann, "2026-11-20T09:00:00.000Z"), soft_bounce(ann, "2026-11-21T09:00:00.000Z")
    for ses_event in (too_old, first, second, second, first):  # redelivered ones count once
        assert apply_message(store, sns_envelope(ses_event)).member_status is None
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"

    third = apply_message(store, sns_envelope(soft_bounce(ann, "2026-11-22T09:00:00.000Z")))
    assert third.member_status == BOUNCED
    user = mongo_db.users.find_one({"_id": ann})
    assert (user["status"], user["status_reason"], user["status_changed_at"]) == (
        "bounced",
        "SES bounce Transient: 3 in 30 days",
        NOW,
    )


def test_a_delivery_after_transient_bounces_starts_the_count_again(store, mongo_db):
    ann = member(mongo_db, "ann@panel.example")
    for timestamp in ("2026-11-19T09:00:00.000Z", "2026-11-20T09:00:00.000Z"):
        apply_message(store, sns_envelope(soft_bounce(ann, timestamp)))
    delivered = sent_at(event("Delivery", "ann@panel.example", tags(ObjectId(), ann)), "2026-11-21T09:00:00.000Z")
    apply_message(store, sns_envelope(delivered))
    for timestamp in ("2026-11-21T10:00:00.000Z", "2026-11-22T09:00:00.000Z"):
        assert apply_message(store, sns_envelope(soft_bounce(ann, timestamp))).member_status is None
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active", "two since the delivery"
    late = apply_message(store, sns_envelope(soft_bounce(ann, "2026-11-23T08:00:00.000Z")))
    assert late.member_status == BOUNCED


def test_a_members_mail_keyed_by_user_id_and_by_address_counts_together(store, mongo_db):
    """The backend may name a member by address only (a password e-mail): those messages carry the
    address's key, not the user id, and still count toward the member's soft bounces and deliveries."""
    ann = member(mongo_db, "ann@panel.example")
    by_address = recipient_key_for(None, "ann@panel.example")

    def transient(recipient: object, timestamp: str) -> dict:
        return sent_at(bounce("ann@panel.example", tags(ObjectId(), recipient), bounce_type="Transient"), timestamp)

    apply_message(store, sns_envelope(transient(ann, "2026-11-19T09:00:00.000Z")))
    apply_message(store, sns_envelope(transient(by_address, "2026-11-20T09:00:00.000Z")))
    assert apply_message(store, sns_envelope(transient(ann, "2026-11-21T09:00:00.000Z"))).member_status == BOUNCED

    bob = member(mongo_db, "bob@panel.example")
    apply_message(store, sns_envelope(transient(bob, "2026-11-19T09:00:00.000Z")))
    delivered = event("Delivery", "bob@panel.example", tags(ObjectId(), recipient_key_for(None, "bob@panel.example")))
    apply_message(store, sns_envelope(sent_at(delivered, "2026-11-20T09:00:00.000Z")))
    for timestamp in ("2026-11-21T09:00:00.000Z", "2026-11-22T09:00:00.000Z"):
        apply_message(store, sns_envelope(transient(bob, timestamp)))
    assert mongo_db.users.find_one({"_id": bob})["status"] == "active", (
        "the delivery by address started the count again"
    )


def test_soft_bounces_keep_the_feeds_rules_only_active_members_and_none_from_before_a_status_change(store, mongo_db):
    gone = member(mongo_db, "gone@panel.example", status="deleted")
    for day in (20, 21, 22):
        apply_message(store, sns_envelope(soft_bounce(gone, f"2026-11-{day}T09:00:00.000Z")))
    assert mongo_db.users.find_one({"_id": gone})["status"] == "deleted"

    back = member(mongo_db, "back@panel.example")
    mongo_db.users.update_one({"_id": back}, {"$set": {"status_changed_at": dt.datetime(2026, 11, 21, 12, tzinfo=UTC)}})
    for day in (20, 21, 22):  # two of them about mail sent before the backend reactivated her
        assert (
            apply_message(store, sns_envelope(soft_bounce(back, f"2026-11-{day}T09:00:00.000Z"))).member_status is None
        )
    assert mongo_db.users.find_one({"_id": back})["status"] == "active"


def test_recent_feedback_counts_permanent_bounces_and_complaints_among_the_last_sends(store, mongo_db):
    """The count item 2's circuit breaker reads: over the last N messages SES accepted for a mailing."""
    mailing = ObjectId()
    sends = [
        sent_at(event("Send", "a@panel.example", tags(mailing, ObjectId())), f"2026-11-23T09:0{minute}:00.000Z")
        for minute in range(5)
    ]
    for send in sends:
        apply_message(store, sns_envelope(send))
    oldest, _, middle, _, newest = sends

    def about(send: dict, feedback: dict) -> dict:
        """SES's feedback events carry their message's id and send time (`mail.timestamp`)."""
        return sent_at(feedback, send["mail"]["timestamp"])

    for send, ses_event in (
        (oldest, bounce("a@panel.example", tags(mailing, ObjectId()), message_id=oldest["mail"]["messageId"])),
        (middle, bounce("a@panel.example", tags(mailing, ObjectId()), message_id=middle["mail"]["messageId"])),
        (
            newest,
            bounce(
                "a@panel.example",
                tags(mailing, ObjectId()),
                message_id=newest["mail"]["messageId"],
                bounce_type="Transient",
            ),
        ),
        (newest, complaint("a@panel.example", tags(mailing, ObjectId()), message_id=newest["mail"]["messageId"])),
        (newest, bounce("a@panel.example", tags(ObjectId(), ObjectId()))),  # another mailing's
    ):
        apply_message(store, sns_envelope(about(send, ses_event)))  # the oldest's is not among the last 3
    recent = store.reports.recent_feedback(mailing, last_sends=3)
    assert (recent.sends, recent.permanent_bounces, recent.complaints) == (3, 1, 1)
    assert (round(recent.bounce_rate, 3), round(recent.complaint_rate, 3)) == (0.333, 0.333)
    assert store.reports.recent_feedback(mailing, last_sends=10).permanent_bounces == 2
    plan = (
        mongo_db.mail_events.find({"mailing_id": mailing, "event_type": "Send"})
        .sort("occurred_at", -1)
        .limit(3)
        .explain()
    )
    assert "mailing_type_time" in str(plan["queryPlanner"]["winningPlan"])
