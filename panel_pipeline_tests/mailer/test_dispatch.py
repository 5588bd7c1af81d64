"""End to end without Dagster: plan, ledger on a real mongod, real boto3 over HTTP to aws-ses-v2-local."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest
from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.local.ses_proxy import (
    SesFaultProxy,
    daily_quota_exceeded,
    lost_answer,
    no_fault,
    throttling,
)
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.mailer.dispatch import (
    DispatchPolicy,
    Hold,
    MailingRecipient,
    SendingStopped,
    plan_recipients,
    send_mailing,
)
from panel_pipeline.mailer.feedback import FeedbackStore, parse_ses_event
from panel_pipeline.mailer.ses import SesGateway
from panel_pipeline.mailer.store import (
    CLAIMED,
    FAILED,
    PENDING,
    SENT,
    SUPPRESSED,
    UNKNOWN,
    MailingReports,
    MailLedger,
    NewRecipient,
    send_event_from_ses,
)
from panel_pipeline.queue.store import QueuePolicy, WorkQueue
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.templates import EmailTemplate
from panel_pipeline_tests.clock import ManualClock
from panel_pipeline_tests.mailer.conftest import CONFIGURATION_SET, FROM_ADDRESS

FAST = DispatchPolicy(backoff_base_seconds=0.05, backoff_cap_seconds=0.2, max_wait_seconds=5)


def LINK(user_id: str) -> str:  # noqa: N802 - stands for the resource's signing method
    return f"https://panel.example.org/unsubscribe?u={user_id}&sig=SECRET"


def _invitees(count: int, start: int = 0) -> list[MailingRecipient]:
    return [
        MailingRecipient(
            f"Panelist{i}@Example.org",
            {"first_name": f"Name{i}", "unsubscribe_url": f"https://panel.example.org/unsubscribe?u={i}&sig=SECRET{i}"},
            user_id=ObjectId(),
        )
        for i in range(start, start + count)
    ]


def _setup(
    ledger: MailLedger, gateway: SesGateway, template: EmailTemplate, recipients: list[MailingRecipient]
) -> tuple[ObjectId, str]:
    mailing = ObjectId()
    shared = {key: template.example_data[key] for key in ("survey_name", "duration_minutes", "points", "survey_url")}
    ledger.add_recipients(mailing, plan_recipients(template, recipients, shared, bulk=True))
    return mailing, gateway.ensure_template(template)


def _deliveries(server: LocalSesServer) -> Counter[str]:
    return Counter(address for email in server.emails() for address in email["destination"]["to"])


@pytest.mark.slow
def test_a_thousand_recipients_are_each_sent_once(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=2000)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(1000))
    report = send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST, unsubscribe_link=LINK)
    assert (report.batches, report.outcomes) == (20, Counter(sent=1000))
    deliveries = _deliveries(ses_server)
    assert len(deliveries) == 1000 and set(deliveries.values()) == {1}
    assert ledger.mailing_done(mailing)
    assert (
        ledger.collection.count_documents(
            {"mailing_id": mailing, "status": SENT, "ses_message_id": {"$regex": "^ses-"}}
        )
        == 1000
    )


def test_lost_answer_is_reconciled_from_send_events_without_a_duplicate(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=50)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(120))
    ses_proxy.inject(no_fault(), lost_answer())
    report = send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST, unsubscribe_link=LINK)
    assert report.outcomes == Counter(sent=70, unknown=50)
    assert ledger.counts(mailing)[UNKNOWN] == 50 and not ledger.mailing_done(mailing)

    again = send_mailing(ledger, gateway, mailing, name, owner="w2", policy=FAST, unsubscribe_link=LINK)
    assert again.batches == 0, "unknown rows are never re-sent blindly"

    events = [event for raw in ses_proxy.send_events() if (event := send_event_from_ses(raw))]
    assert ledger.reconcile(events)[SENT] == 50
    assert ledger.mailing_done(mailing)
    deliveries = _deliveries(ses_server)
    assert len(deliveries) == 120 and set(deliveries.values()) == {1}


def test_throttled_batches_back_off_and_then_go(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=50)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(60))
    ses_proxy.inject(throttling(), throttling())
    report = send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST, unsubscribe_link=LINK)
    assert report.outcomes["sent"] == 60 and report.outcomes["retry"] >= 60
    assert [call.fault for call in ses_proxy.calls()][:2] == ["TooManyRequestsException"] * 2
    assert ledger.mailing_done(mailing)
    assert set(_deliveries(ses_server).values()) == {1} and len(_deliveries(ses_server)) == 60
    assert ledger.collection.count_documents({"attempts": {"$gte": 2}}) >= 50


def test_daily_quota_pauses_the_mailing_until_later(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=50)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(80))
    ses_proxy.inject(no_fault(), daily_quota_exceeded())
    report = send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST, unsubscribe_link=LINK)
    # Both batches (50 and 30) are in flight at once: either may be the call that meets the quota.
    assert report.outcomes in (Counter(sent=50, pause=30), Counter(sent=30, pause=50))
    assert (
        report.paused_until is not None and report.pause_reason == "SES paused sending: Daily message quota exceeded."
    )
    assert ledger.counts(mailing)[PENDING] == report.outcomes["pause"] and not ledger.mailing_done(mailing)
    assert send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST, unsubscribe_link=LINK).batches == 0
    assert len(ses_server.emails()) == report.outcomes["sent"]


def test_recipients_missing_a_variable_fail_alone(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway()
    invitees = _invitees(4)
    invitees[1] = MailingRecipient(
        "nameless@example.org", {"unsubscribe_url": "https://panel.example.org/u"}, user_id=ObjectId()
    )
    invitees[2] = MailingRecipient(
        "nolink@example.org", {"first_name": "Null", "unsubscribe_url": None}, user_id=ObjectId()
    )
    mailing, name = _setup(ledger, gateway, templates["new_survey"], invitees)
    send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST, unsubscribe_link=LINK)
    failed = {row["email"]: row["error"] for row in ledger.collection.find({"status": FAILED})}
    assert failed == {"nameless@example.org": "missing template data: first_name"}
    assert sorted(_deliveries(ses_server)) == [
        "nolink@example.org",
        "panelist0@example.org",
        "panelist3@example.org",
    ], "the unsubscribe link is the pipeline's own, made at send time"
    assert ledger.mailing_done(mailing)


def test_logs_carry_no_address_link_or_token(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="panel_pipeline")
    gateway = make_gateway(max_send_rate=50)
    template = templates["password_recovery"]
    mailing = ObjectId()
    resets = [
        MailingRecipient(
            f"Reset{i}@Example.org",
            {
                "first_name": "R",
                "reset_url": f"https://panel.example.org/reset?token=TOKEN{i}",
                "expires_in_minutes": 60,
            },
        )
        for i in range(70)
    ]
    ledger.add_recipients(mailing, plan_recipients(template, resets, bulk=False))
    ses_proxy.inject(throttling(), lost_answer(), daily_quota_exceeded())
    send_mailing(
        ledger,
        gateway,
        mailing,
        gateway.ensure_template(template),
        owner="w1",
        bulk=False,
        policy=FAST,
        unsubscribe_link=LINK,
    )
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "quota" in logged and "unknown" in logged, "the test must see the fault paths log"
    assert not re.search(r"@|token|https?://", logged, re.IGNORECASE), logged


def test_one_bad_recipient_fails_alone_and_the_batch_goes(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=50)
    template = templates["new_survey"]
    shared = {key: template.example_data[key] for key in ("survey_name", "duration_minutes", "points", "survey_url")}
    mailing = ObjectId()
    rows = [NewRecipient(f"p{i}@example.org", {**shared, "first_name": f"P{i}"}, user_id=ObjectId()) for i in range(20)]
    rows[3] = NewRecipient(
        "dated@example.org", {**shared, "first_name": "D", "closes_at": dt.datetime(2025, 1, 6)}, user_id=ObjectId()
    )
    rows[7] = NewRecipient("illegal@example.org", {**shared, "first_name": "I"}, user_id=ObjectId())
    ledger.add_recipients(mailing, rows)
    ses_proxy.refuse_address("illegal@example.org", "Illegal address")
    report = send_mailing(
        ledger, gateway, mailing, gateway.ensure_template(template), owner="w1", policy=FAST, unsubscribe_link=LINK
    )
    assert report.paused_until is None and report.outcomes == Counter(sent=18, failed=2)
    assert ledger.mailing_done(mailing)
    failed = {row["email"]: row["error"] for row in ledger.collection.find({"status": FAILED})}
    assert failed == {
        "dated@example.org": "not sent: template data: data.closes_at is a datetime, not a JSON value",
        "illegal@example.org": "SES refused this recipient: Illegal address",
    }
    deliveries = _deliveries(ses_server)
    assert len(deliveries) == 18 and set(deliveries.values()) == {1}
    assert "dated@example.org" not in deliveries and "illegal@example.org" not in deliveries


def test_a_member_who_leaves_after_planning_is_suppressed_not_mailed(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    templates: dict[str, EmailTemplate],
    mongo_db: Database,
) -> None:
    gateway = make_gateway(max_send_rate=50)
    invitees = _invitees(60)
    mongo_db.users.insert_many([{"_id": r.user_id, "email": r.email.lower(), "status": "active"} for r in invitees])
    mailing, name = _setup(ledger, gateway, templates["new_survey"], invitees)
    mongo_db.users.update_one({"_id": invitees[1].user_id}, {"$set": {"status": "unsubscribed"}})
    mongo_db.users.update_one({"_id": invitees[55].user_id}, {"$set": {"status": "bounced"}})
    mongo_db.users.delete_one({"_id": invitees[30].user_id})
    report = send_mailing(
        ledger, gateway, mailing, name, owner="w1", policy=FAST, members=mongo_db.users, unsubscribe_link=LINK
    )
    assert report.outcomes == Counter(sent=57, suppressed=3)
    suppressed = {
        row["user_id"]: row["error"] for row in ledger.collection.find({"mailing_id": mailing, "status": SUPPRESSED})
    }
    assert suppressed == {
        invitees[1].user_id: "member status is unsubscribed (changed after the mailing was planned)",
        invitees[55].user_id: "member status is bounced (changed after the mailing was planned)",
        invitees[30].user_id: "member no longer exists (removed after the mailing was planned)",
    }
    deliveries = _deliveries(ses_server)
    assert len(deliveries) == 57 and not {invitees[i].email.lower() for i in (1, 30, 55)} & set(deliveries)
    assert ledger.mailing_done(mailing)


def test_a_long_mailing_keeps_its_queue_lease(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    templates: dict[str, EmailTemplate],
    mongo_db: Database,
) -> None:
    # The queue's clock is driven by hand: each batch takes 0.6 of a lease on it, so the mailing
    # outlasts its lease however loaded the machine is, and a rival run (launched from the UI) that
    # claims whenever the lease looks expired tries after every batch.
    clock = ManualClock(utc_now())
    queue = WorkQueue(mongo_db.mailings, QueuePolicy(lease_seconds=300), clock=clock)
    doc_id = mongo_db.mailings.insert_one({"processed": False}).inserted_id
    assert queue.claim(doc_id, "run-1") is not None
    claimed_at = clock.now()
    gateway = make_gateway(max_send_rate=200)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(400))  # eight batches
    rival_claims: list[object] = []

    def keep_alive() -> Hold:
        clock.advance(0.6 * queue.policy.lease_seconds)
        rival_claims.extend(doc for doc in [queue.claim(doc_id, "run-2")] if doc is not None)
        return Hold(queue.extend_lease(doc_id, "run-1"))

    report = send_mailing(
        ledger, gateway, mailing, name, owner="run-1", policy=FAST, unsubscribe_link=LINK, keep_alive=keep_alive
    )
    assert clock.now() - claimed_at > dt.timedelta(seconds=2 * queue.policy.lease_seconds)
    assert report.outcomes == Counter(sent=400) and rival_claims == []
    assert queue.complete(doc_id, "run-1")


@pytest.mark.parametrize("senders", [1, 2])
def test_a_stolen_lease_stops_the_sender_within_one_batch(
    senders: int,
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
    mongo_db: Database,
) -> None:
    queue = WorkQueue(mongo_db.mailings, QueuePolicy(lease_seconds=300))
    # Another run whose clock is past the lease: it claims as a run does once a lease has expired.
    later = WorkQueue(
        mongo_db.mailings, QueuePolicy(lease_seconds=300), clock=ManualClock(utc_now() + dt.timedelta(seconds=301))
    )
    doc_id = mongo_db.mailings.insert_one({"processed": False}).inserted_id
    queue.claim(doc_id, "run-1")
    gateway = make_gateway(max_send_rate=50)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(200))

    def keep_alive() -> Hold:
        if (
            later.claim(doc_id, "run-2") is None
            and mongo_db.mailings.find_one({"_id": doc_id})["lease_owner"] != "run-2"
        ):
            raise AssertionError("the rival run should have claimed the mailing")
        return Hold(queue.extend_lease(doc_id, "run-1"))

    policy = dataclasses.replace(FAST, senders=senders)
    with pytest.raises(SendingStopped, match="no longer holds the mailing.*stopped sending after [12] batches"):
        send_mailing(
            ledger, gateway, mailing, name, owner="run-1", policy=policy, unsubscribe_link=LINK, keep_alive=keep_alive
        )
    # Each sender finishes at most the batch it is in; a batch claimed but not yet sent is given back.
    calls = len(ses_proxy.calls())
    assert calls == 1 if senders == 1 else calls in (1, 2)
    rows = ledger.counts(mailing)
    assert rows[SENT] == 50 * calls and rows[PENDING] == 200 - 50 * calls and rows[CLAIMED] == 0
    assert set(_deliveries(ses_server).values()) == {1} and len(_deliveries(ses_server)) == 50 * calls
    assert ledger.counts(mailing)[PENDING] == 150


@pytest.mark.parametrize("senders", [1, 2])
def test_a_control_that_stops_the_mailing_stops_each_sender_within_one_batch(
    senders: int,
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=50)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(200))
    policy = dataclasses.replace(FAST, senders=senders)
    report = send_mailing(
        ledger,
        gateway,
        mailing,
        name,
        owner="run-1",
        policy=policy,
        unsubscribe_link=LINK,
        keep_alive=lambda: Hold(held=True, stop_for="pause"),  # asked for before the first renewal
    )
    assert report.stopped_for == "pause" and report.paused_until is None
    calls = len(ses_proxy.calls())
    assert calls == 1 if senders == 1 else calls in (1, 2)
    rows = ledger.counts(mailing)
    assert rows[SENT] == 50 * calls and rows[PENDING] == 200 - 50 * calls and rows[CLAIMED] == 0
    assert len(_deliveries(ses_server)) == 50 * calls


KILLS = 20
LEASE_SECONDS = 1.0
EVENT_SILENCE_SECONDS = 2.0


def _worker(mongo_uri: str, db: Database, mailing: ObjectId, template_name: str, ses_url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "panel_pipeline_tests.mailer.send_worker",
            "--mongo-uri",
            mongo_uri,
            "--database",
            db.name,
            "--mailing",
            str(mailing),
            "--template",
            template_name,
            "--ses-url",
            ses_url,
            "--from-address",
            FROM_ADDRESS,
            "--configuration-set",
            CONFIGURATION_SET,
            "--max-send-rate",
            "100",
            "--lease-seconds",
            str(LEASE_SECONDS),
            "--event-silence-seconds",
            str(EVENT_SILENCE_SECONDS),
        ]
    )


def _wait_for_an_attempt(ledger: MailLedger, mailing: ObjectId, worker: subprocess.Popen) -> None:
    """Until the worker has written an attempt down, or has nothing left to do."""
    attempt = {"mailing_id": mailing, "status": CLAIMED, "attempt_started_at": {"$ne": None}}
    while worker.poll() is None and not ledger.collection.find_one(attempt, {"_id": 1}):
        time.sleep(0.002)


def _feed_events(ses_proxy: SesFaultProxy, db: Database) -> None:
    """What the SES event feed does: every Send event SES published, stored in `mail_events`."""
    store = FeedbackStore(db.mail_events, db.users, MailingReports(db.mailings, db.mail_log, db.mail_events))
    events = [parse_ses_event(raw) for raw in ses_proxy.send_events()]
    for start in range(0, len(events), 10):  # as the drain applies them, an SQS batch at a time
        store.apply(events[start : start + 10])


@pytest.mark.slow
def test_a_worker_killed_twenty_times_mails_nobody_twice_and_loses_nobody(
    ledger: MailLedger,
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
    mongo_db: Database,
    mongo_uri: str,
) -> None:
    gateway = make_gateway(max_send_rate=100)
    invitees = _invitees(1000)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], invitees)
    draw = random.Random(20)
    unknown_seen = 0
    for kill in range(KILLS):
        worker = _worker(mongo_uri, mongo_db, mailing, name, ses_proxy.url)
        if kill % 2:  # anywhere: start-up, pacing, claiming, the SES call, writing results
            time.sleep(draw.uniform(0.5, 3.0))
        else:  # just after an attempt was written: before, during or after the SES call
            _wait_for_an_attempt(ledger, mailing, worker)
            time.sleep(draw.uniform(0.0, 0.15))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        time.sleep(LEASE_SECONDS)
        ledger.recover_expired(mailing)
        unknown_seen += ledger.counts(mailing)[UNKNOWN]
        _feed_events(ses_proxy, mongo_db)

    for _ in range(5):
        _feed_events(ses_proxy, mongo_db)
        _worker(mongo_uri, mongo_db, mailing, name, ses_proxy.url).wait(timeout=120)
        if ledger.mailing_done(mailing):
            break
        # Unknown rows with no Send event wait for the feed to move past them: later mail does that.
        time.sleep(EVENT_SILENCE_SECONDS)
        later, later_name = _setup(ledger, gateway, templates["new_survey"], _invitees(1, start=5000 + _))
        send_mailing(ledger, gateway, later, later_name, owner="other-mailing", policy=FAST, unsubscribe_link=LINK)

    counts = ledger.counts(mailing)
    deliveries = _deliveries(ses_server)
    mailed = {recipient.email.lower() for recipient in invitees}
    duplicates = sum(n - 1 for address, n in deliveries.items() if address in mailed and n > 1)
    print(
        f"SIGKILL: {KILLS} kills, {unknown_seen} unknown rows seen, {counts[SENT]} sent, "
        f"{duplicates} duplicates, {len(mailed - set(deliveries))} lost"
    )
    assert counts[SENT] == 1000 and ledger.mailing_done(mailing), counts
    assert {address: n for address, n in deliveries.items() if address in mailed and n != 1} == {}
    assert mailed <= set(deliveries), "nobody lost"
    assert unknown_seen > 0, "some kills must have landed after an attempt started, or the test proves little"
