"""The circuit breakers under the daemon, as in production: the mailing's run sends through the local SES
endpoint, SES's events go through SNS and SQS to the ses_feedback runs the sensor starts, and the
sending run's breaker reads what they stored. The session's daemon judges a mailing over its last 200
sends (PANEL_MAIL_BREAKER_WINDOW_SENDS in conftest).

The mailing goes at 10 a second, so that the feed's runs (started by a sensor every 30 s or so) store
the first 200 sends while most of the mailing is still to go; its SES endpoint publishes no Delivery
events (DAEMON_FEEDBACK: the breaker reads Send and Bounce events)."""

import uuid
from collections import Counter

import dagster as dg
import pytest

from panel_pipeline.local.ses_events import FeedbackShares
from panel_pipeline.local.sns_sqs import aws_client, ensure_feedback_path
from panel_pipeline.queue.sensors import DOCUMENT_TAG
from panel_pipeline_tests.mailer.conftest import SURVEY
from panel_pipeline_tests.test_bad_day import accepted_entries
from panel_pipeline_tests.waiting import DAEMON_FEEDBACK, finished_runs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.stack]

RECIPIENTS = 1200
SEND_RATE = 10.0  # recipients a second: the feed's runs start while the mailing is still going
RESUMED_RATE = 50.0
BOUNCE_SHARE = 0.06


@pytest.fixture(scope="module")
def event_queue_emptied_afterwards(local_sns_sqs):
    """The events these tests left in the session's event queue are dropped once they are done (SQS
    allows one purge a minute), so the next daemon tests' feed finds it as they expect."""
    yield
    aws_client("sqs", local_sns_sqs.url).purge_queue(QueueUrl=ensure_feedback_path(local_sns_sqs.url).queue_url)


@pytest.fixture
def account(daemon_ses, event_queue_emptied_afterwards):
    """The session's SES endpoint, its account, feedback and publishing put back as they were afterwards."""
    yield daemon_ses
    daemon_ses.set_account()
    daemon_ses.set_feedback(DAEMON_FEEDBACK)
    daemon_ses.set_publishing(True)


def members(db, prefix, count):
    return db.users.insert_many(
        [{"email": f"{prefix}{i}@panel.example", "first_name": f"M{i}", "status": "active"} for i in range(count)]
    ).inserted_ids


def bulk_mailing(db, user_ids):
    return db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [{"user_id": uid} for uid in user_ids],
        }
    ).inserted_id


def test_a_mailing_bouncing_at_6_percent_pauses_itself_and_once_resumed_mails_the_rest_once(
    dagster_dev, mongo_client, account
):
    db = mongo_client.panel
    prefix = f"breaker-{uuid.uuid4().hex[:6]}-"
    account.set_account(max_send_rate=SEND_RATE)
    account.set_feedback(FeedbackShares(bounce=BOUNCE_SHARE, delivery=0.0))
    mailing_id = bulk_mailing(db, members(db, prefix, RECIPIENTS))

    # The pause is written, then the control settled into `last_control` (a second write): wait for both.
    paused = wait_for(
        lambda: db.mailings.find_one({"_id": mailing_id, "status": "paused", "last_control": {"$exists": True}}),
        timeout=300,
        what="the mailing paused by its breaker, the control settled",
        explain=dagster_dev.activity,
    )
    assert paused["paused_reason"].startswith("paused by circuit breaker: bounce rate ")
    assert paused["paused_reason"].endswith("over its last 200 sends passed 4.00%")
    assert paused["last_control"]["by"] == "circuit breaker"
    sent_at_pause = db.mail_log.count_documents({"mailing_id": mailing_id, "status": "sent"})
    assert 200 <= sent_at_pause < RECIPIENTS
    finished_runs(dagster_dev, "the run that paused it", tags={DOCUMENT_TAG: str(mailing_id)})
    print(f"paused after {sent_at_pause} of {RECIPIENTS} sent: {paused['paused_reason']}")

    account.set_account(max_send_rate=RESUMED_RATE)  # the resumed run reads the account anew
    account.set_publishing(False)  # the rest needs no feed
    db.mailings.update_one({"_id": mailing_id}, {"$set": {"control": "resume", "control_by": "the test"}})
    done = wait_for(
        lambda: db.mailings.find_one({"_id": mailing_id, "status": "done"}),
        timeout=300,
        what="the resumed mailing done",
        explain=dagster_dev.activity,
    )
    assert done["counts"]["sent"] == RECIPIENTS
    entries = [entry for entry in accepted_entries(account) if entry[0] == str(mailing_id)]
    per_address = Counter(address for _, address, _ in entries)
    assert len(per_address) == RECIPIENTS and set(per_address.values()) == {1}, "each recipient mailed once"
    resumed_at = done["resumed_at"]
    between = [t for _, _, t in entries if paused["paused_at"].isoformat()[:23] < t[:23] < resumed_at.isoformat()[:23]]
    assert between == [], "nothing was sent while the mailing was paused"


def test_under_probation_bulk_mail_waits_and_transactional_mail_goes(dagster_dev, mongo_client, account):
    db = mongo_client.panel
    prefix = f"probation-{uuid.uuid4().hex[:6]}-"
    account.set_account(enforcement_status="PROBATION")
    user_ids = members(db, prefix, 3)
    bulk_id = bulk_mailing(db, user_ids)
    password_id = db.mailings.insert_one(
        {
            "processed": False,
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "email": f"{prefix}0@panel.example",
                    "data": {"reset_url": "https://panel.example/r/1", "expires_in_minutes": 60},
                }
            ],
        }
    ).inserted_id

    wait_for(
        lambda: db.mailings.find_one({"_id": password_id, "status": "done"}),
        what="the password e-mail sent",
        explain=dagster_dev.activity,
    )
    held = wait_for(
        lambda: db.mailings.find_one({"_id": bulk_id, "status": "postponed"}),
        what="the bulk mailing postponed",
        explain=dagster_dev.activity,
    )
    assert held["last_error"] == "bulk mail held: the SES account's enforcement status is PROBATION"
    addresses = Counter(address for _, address, _ in accepted_entries(account) if address.startswith(prefix))
    assert addresses == {f"{prefix}0@panel.example": 1}, "only the password e-mail went"

    db.mailings.update_one({"_id": bulk_id}, {"$set": {"control": "cancel", "control_by": "the test"}})
    wait_for(lambda: db.mailings.find_one({"_id": bulk_id, "status": "cancelled"}), what="the held mailing cancelled")
    runs = finished_runs(dagster_dev, "the bulk mailing's runs", tags={DOCUMENT_TAG: str(bulk_id)})
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
