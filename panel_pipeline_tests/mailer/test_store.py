"""The mail_log ledger on a real mongod: expansion, leases, write-ahead attempts, unknowns, reconciliation."""

from __future__ import annotations

import datetime as dt
import threading

from bson import ObjectId

from panel_pipeline.mailer.ses import EntryResult, SendStatus
from panel_pipeline.mailer.store import (
    CANCELLED,
    CLAIMED,
    FAILED,
    PENDING,
    SENT,
    SUPPRESSED,
    UNKNOWN,
    MailingControls,
    MailLedger,
    NewRecipient,
    SendEvent,
    recipient_key_for,
    send_event_from_ses,
)
from panel_pipeline_tests.clock import ManualClock


def _people(count: int) -> list[NewRecipient]:
    return [NewRecipient(f"Person{i}@Example.org ", {"first_name": f"P{i}"}, user_id=ObjectId()) for i in range(count)]


def _clocked(ledger: MailLedger) -> tuple[MailLedger, ManualClock]:
    clock = ManualClock(dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC))
    return MailLedger(ledger.collection, ledger.events, clock=clock), clock


def test_expansion_is_idempotent_and_stores_normalized_addresses(ledger: MailLedger) -> None:
    mailing = ObjectId()
    people = _people(3)
    assert ledger.add_recipients(mailing, people) == 3
    assert ledger.add_recipients(mailing, people) == 0
    same_address_by_email = NewRecipient("  person0@EXAMPLE.org", {})
    assert ledger.add_recipients(mailing, [same_address_by_email]) == 0
    assert sorted(ledger.collection.distinct("email")) == [f"person{i}@example.org" for i in range(3)]
    assert ledger.counts(mailing)[PENDING] == 3


def test_recipient_key_never_contains_the_address() -> None:
    key = recipient_key_for(None, " A@B.org")
    assert key == recipient_key_for(None, "a@b.org") and "@" not in key and key.startswith("e-")


def test_failed_and_suppressed_rows_count_as_final(ledger: MailLedger) -> None:
    mailing = ObjectId()
    ledger.add_recipients(
        mailing,
        [
            NewRecipient("a@example.org", {}, status=FAILED, error="missing template data: first_name"),
            NewRecipient("b@example.org", {}, status=SUPPRESSED, error="unsubscribed"),
        ],
    )
    assert ledger.claim_batch(mailing, "w1", 10, 60) is None
    assert ledger.mailing_done(mailing)


def test_two_workers_never_claim_the_same_row(ledger: MailLedger) -> None:
    mailing = ObjectId()
    ledger.add_recipients(mailing, _people(200))
    claimed: list[list[str]] = []

    def work(owner: str) -> None:
        while (batch := ledger.claim_batch(mailing, owner, 7, 60)) is not None:
            claimed.append(batch.keys)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = [key for batch in claimed for key in batch]
    assert len(keys) == len(set(keys)) == 200


def test_expired_lease_without_attempt_is_claimable_again(ledger: MailLedger) -> None:
    ledger, clock = _clocked(ledger)
    mailing = ObjectId()
    ledger.add_recipients(mailing, _people(3))
    first = ledger.claim_batch(mailing, "dead-worker", 10, lease_seconds=30)
    assert first is not None and ledger.claim_batch(mailing, "w2", 10, 30) is None
    clock.advance(31)
    second = ledger.claim_batch(mailing, "w2", 10, 30)
    assert second is not None and sorted(second.keys) == sorted(first.keys)
    assert ledger.start_attempt(first).rows == [], "the old owner lost its lease and must not send"
    assert len(ledger.start_attempt(second).rows) == 3


def test_worker_dying_after_the_attempt_leaves_unknown_rows_that_are_not_resent(ledger: MailLedger) -> None:
    ledger, clock = _clocked(ledger)
    mailing = ObjectId()
    ledger.add_recipients(mailing, _people(4))
    batch = ledger.start_attempt(ledger.claim_batch(mailing, "w1", 10, 30))
    assert ledger.collection.count_documents({"attempt_started_at": {"$ne": None}, "attempts": 1}) == 4
    clock.advance(31)
    assert ledger.claim_batch(mailing, "w2", 10, 30) is None
    assert ledger.recover_expired(mailing) == 4
    assert ledger.counts(mailing)[UNKNOWN] == 4 and not ledger.mailing_done(mailing)

    accepted, rejected = batch.keys[0], batch.keys[1]
    events = [
        SendEvent("Send", str(mailing), batch.batch_id, accepted, "ses-1"),
        SendEvent("Rendering Failure", str(mailing), batch.batch_id, rejected, "ses-2", "Attribute 'x' is not present"),
        SendEvent("Send", str(mailing), "another-batch", batch.keys[2], "ses-3"),
    ]
    assert ledger.reconcile(events) == {SENT: 1, FAILED: 1}
    assert ledger.collection.find_one({"recipient_key": accepted})["ses_message_id"] == "ses-1"
    assert ledger.counts(mailing)[UNKNOWN] == 2

    clock.advance(600)
    assert ledger.release_unknown(mailing, attempted_before=clock.now(), to_status=PENDING) == 2
    assert sorted(ledger.claim_batch(mailing, "w3", 10, 30).keys) == sorted(batch.keys[2:])


def _stored_event(
    mailing: ObjectId, batch_id: str, recipient_key: str, event_type: str, occurred_at: dt.datetime
) -> dict:
    """A `mail_events` document as the SES event feed stores it."""
    message_id = f"ses-{ObjectId()}"
    return {
        "_id": f"{message_id}:{event_type}",
        "event_type": event_type,
        "mailing_id": mailing,
        "batch_id": batch_id,
        "recipient_key": recipient_key,
        "message_id": message_id,
        "error": None,
        "occurred_at": occurred_at,
    }


def test_unknown_rows_are_settled_from_stored_events_and_silence_counts_only_when_the_feed_moved_on(
    ledger: MailLedger,
) -> None:
    ledger, clock = _clocked(ledger)
    mailing = ObjectId()
    ledger.add_recipients(mailing, _people(3))
    batch = ledger.start_attempt(ledger.claim_batch(mailing, "w1", 10, 30))
    attempted = clock.now()
    clock.advance(31)
    ledger.recover_expired(mailing)
    ledger.events.insert_one(_stored_event(mailing, batch.batch_id, batch.keys[0], "Send", attempted))

    assert ledger.settle_unknown(mailing) == {SENT: 1, FAILED: 0, PENDING: 0}
    assert ledger.counts(mailing)[UNKNOWN] == 2, "a feed that heard nothing later proves nothing"

    later_send = _stored_event(ObjectId(), "other", "someone", "Send", attempted + dt.timedelta(minutes=11))
    ledger.events.insert_one(later_send)
    clock.advance(660)
    assert ledger.settle_unknown(mailing) == {SENT: 0, FAILED: 0, PENDING: 2}
    assert sorted(ledger.claim_batch(mailing, "w2", 10, 30).keys) == sorted(batch.keys[1:])
    assert ledger.collection.find_one({"recipient_key": batch.keys[0]})["status"] == SENT


def test_results_are_recorded_per_entry_and_retries_wait(ledger: MailLedger) -> None:
    ledger, clock = _clocked(ledger)
    mailing = ObjectId()
    ledger.add_recipients(mailing, _people(4))
    batch = ledger.start_attempt(ledger.claim_batch(mailing, "w1", 10, 30))
    keys = batch.keys
    results = [
        EntryResult(keys[0], SendStatus.SENT, "SUCCESS", "ses-a"),
        EntryResult(keys[1], SendStatus.FAILED, "MESSAGE_REJECTED", error="rejected"),
        EntryResult(keys[2], SendStatus.RETRY, "ACCOUNT_THROTTLED", error="throttled"),
        EntryResult(keys[3], SendStatus.UNKNOWN, error="no answer"),
    ]
    later = clock.now() + dt.timedelta(seconds=20)
    assert ledger.record_results(batch, results, retry_at=later) == {SENT: 1, FAILED: 1, PENDING: 1, UNKNOWN: 1}
    sent = ledger.collection.find_one({"recipient_key": keys[0]})
    assert (sent["status"], sent["ses_message_id"], sent["sent_at"]) == (SENT, "ses-a", clock.now())
    assert ledger.claim_batch(mailing, "w1", 10, 30) is None
    assert ledger.next_retry_at(mailing) == later
    clock.advance(21)
    assert ledger.claim_batch(mailing, "w1", 10, 30).keys == [keys[2]]

    assert ledger.record_results(batch, [EntryResult(keys[0], SendStatus.FAILED, error="late")]) == {FAILED: 0}
    counts = {PENDING: 0, CLAIMED: 1, UNKNOWN: 1, SENT: 1, FAILED: 1, SUPPRESSED: 0, CANCELLED: 0}
    assert ledger.counts(mailing) == counts


def test_ses_events_are_parsed_from_tags() -> None:
    event = {
        "eventType": "Send",
        "mail": {
            "messageId": "ses-9",
            "tags": {"mailing": ["m"], "batch": ["b"], "recipient": ["r"], "ses:source-ip": ["1.2.3.4"]},
        },
    }
    assert send_event_from_ses(event) == SendEvent("Send", "m", "b", "r", "ses-9")
    assert send_event_from_ses({"notificationType": "Bounce", "mail": {"tags": {}}}) is None


def test_only_send_events_show_the_feed_moved_past_an_attempt(ledger: MailLedger) -> None:
    ledger, clock = _clocked(ledger)
    mailing = ObjectId()
    ledger.add_recipients(mailing, _people(2))
    batch = ledger.start_attempt(ledger.claim_batch(mailing, "w1", 10, 30))
    attempted = clock.now()
    clock.advance(31)
    ledger.recover_expired(mailing)
    much_later = attempted + dt.timedelta(minutes=30)
    for event_type in ("Bounce", "Complaint", "Delivery", "Reject"):  # other mail's feedback, no Send event
        ledger.events.insert_one(_stored_event(ObjectId(), "other", "someone", event_type, much_later))
    clock.advance(3600)
    assert ledger.settle_unknown(mailing) == {SENT: 0, FAILED: 0, PENDING: 0}
    assert ledger.counts(mailing)[UNKNOWN] == 2, "without Send events no unknown row is released"

    ledger.events.insert_one(_stored_event(ObjectId(), "other", "someone", "Send", much_later))
    assert ledger.settle_unknown(mailing)[PENDING] == 2
    assert sorted(ledger.claim_batch(mailing, "w2", 10, 30).keys) == sorted(batch.keys)


def test_a_rows_data_is_removed_once_it_is_settled(ledger: MailLedger) -> None:
    mailing = ObjectId()
    token = {"first_name": "T", "reset_url": "https://panel.example/reset?token=SECRET"}
    people = [NewRecipient(f"t{i}@example.org", token, user_id=ObjectId()) for i in range(6)]
    ledger.add_recipients(
        mailing,
        [
            *people,
            NewRecipient("failed@example.org", token, status=FAILED, error="missing template data: x"),
            NewRecipient("gone@example.org", token, status=SUPPRESSED, error="member status is unsubscribed"),
        ],
    )
    batch = ledger.start_attempt(ledger.claim_batch(mailing, "w1", 5, 30))
    keys = batch.keys
    ledger.record_results(
        batch,
        [
            EntryResult(keys[0], SendStatus.SENT, "SUCCESS", "ses-a"),
            EntryResult(keys[1], SendStatus.FAILED, "MESSAGE_REJECTED", error="rejected"),
            EntryResult(keys[2], SendStatus.RETRY, "ACCOUNT_THROTTLED", error="throttled"),
            EntryResult(keys[3], SendStatus.UNKNOWN, error="no answer"),
            EntryResult(keys[4], SendStatus.UNKNOWN, error="no answer"),
        ],
        retry_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    ledger.reconcile([SendEvent("Send", str(mailing), batch.batch_id, keys[3], "ses-d")])
    claimed = ledger.claim_batch(mailing, "w2", 10, 30)
    (last,) = claimed.keys
    assert (
        ledger.suppress(claimed, {last: "member status is bounced (changed after the mailing was planned)"}).rows == []
    )
    rows = {row["recipient_key"]: row for row in ledger.collection.find({"mailing_id": mailing})}
    with_data = {row["status"] for row in rows.values() if "data" in row}
    without_data = {row["status"] for row in rows.values() if "data" not in row}
    assert with_data == {PENDING, UNKNOWN}, "only rows that may still be sent keep their data"
    assert without_data == {SENT, FAILED, SUPPRESSED}
    assert rows[last]["status"] == SUPPRESSED and "changed after" in rows[last]["error"]
    assert "SECRET" not in str(list(ledger.collection.find({"status": {"$in": [SENT, FAILED, SUPPRESSED]}})))


def test_recipients_are_added_from_an_iterable_in_chunks_and_sent_ids_streamed_back(ledger: MailLedger) -> None:
    mailing = ObjectId()
    people = (NewRecipient(f"p{i}@example.org", {"first_name": "P"}, user_id=ObjectId()) for i in range(2500))
    assert ledger.add_recipients(mailing, people) == 2500
    ledger.collection.update_many({"mailing_id": mailing}, {"$set": {"status": SENT}})
    sent = ledger.sent_user_ids(mailing)
    assert not isinstance(sent, list | set | tuple), "streamed, not collected"
    assert len(set(sent)) == 2500


def test_cancel_unsent_cancels_what_was_never_attempted_and_leaves_what_ses_may_have(ledger: MailLedger) -> None:
    mailing = ObjectId()
    ledger.add_recipients(mailing, _people(5))
    in_flight = ledger.start_attempt(ledger.claim_batch(mailing, "w1", 2, 60))  # SES call under way
    ledger.claim_batch(mailing, "w2", 1, 60)  # claimed, never attempted
    assert ledger.cancel_unsent(mailing, "not sent: the mailing was cancelled") == 3
    assert ledger.counts(mailing)[CANCELLED] == 3 and ledger.counts(mailing)[CLAIMED] == 2
    cancelled = ledger.collection.find_one({"mailing_id": mailing, "status": CANCELLED})
    assert cancelled["error"] == "not sent: the mailing was cancelled" and "data" not in cancelled
    assert ledger.claim_batch(mailing, "w3", 10, 60) is None
    assert len(ledger.start_attempt(in_flight).rows) == 0  # already attempted: no second attempt


def test_a_control_is_settled_only_while_it_still_holds_the_value_applied(mongo_db) -> None:
    controls = MailingControls(mongo_db.mailings)
    controls.ensure_indexes()
    mailing = mongo_db.mailings.insert_one({"processed": False}).inserted_id
    assert controls.request(mailing, "pause", "Sam", "wrong link")
    assert not controls.request(ObjectId(), "pause", "Sam", "")
    mongo_db.mailings.update_one({"_id": mailing}, {"$set": {"control": "cancel"}})  # the backend changed its mind
    assert not controls.settle(mailing, "pause", "paused", "run-1")
    assert [doc["control"] for doc in controls.pending({}, 10)] == ["cancel"]
    assert controls.settle(mailing, "cancel", "cancelled: 0 sent, 0 not mailed, 0 unknown", "run-2")
    doc = mongo_db.mailings.find_one({"_id": mailing})
    assert doc["controls_applied"] == 1 and not {"control", "control_by", "control_reason"} & set(doc)
    assert {k: doc["last_control"][k] for k in ("action", "by", "reason", "run_id")} == {
        "action": "cancel",
        "by": "Sam",
        "reason": "wrong link",
        "run_id": "run-2",
    }
    assert controls.pending({}, 10) == []
