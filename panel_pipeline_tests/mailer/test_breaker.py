"""The circuit breakers: the rules, the account read over real HTTP (the local SES endpoint's GetAccount,
moto's CloudWatch), the mailing breaker on the real mongod, and bulk mail held under PROBATION while
transactional mail goes (the mailings asset in process). The whole loop under the daemon (SES events
through SNS and SQS, a 6% bounce mailing pausing itself, resumed) is in test_breaker_daemon.py."""

import datetime as dt
import threading
from collections import Counter

import dagster as dg
import pytest

from panel_pipeline.local.sns_sqs import aws_client
from panel_pipeline.mailer.assets import mailings
from panel_pipeline.mailer.breaker import (
    BREAKER,
    AccountMonitor,
    AccountStanding,
    BreakerPolicy,
    MailingBreaker,
    account_hold_reason,
    mailing_trip_reason,
)
from panel_pipeline.mailer.resources import SesResource
from panel_pipeline.mailer.store import MailingControls, MailingReports, RecentFeedback
from panel_pipeline_tests.clock import ManualClock
from panel_pipeline_tests.mailer.conftest import CONFIGURATION_SET, SURVEY
from panel_pipeline_tests.mailer.test_assets import send_transactional
from panel_pipeline_tests.waiting import wait_for

UTC = dt.UTC
POLICY = BreakerPolicy()


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_a_mailing_trips_only_once_its_window_is_full_and_a_rate_passes_its_mark():
    assert mailing_trip_reason(RecentFeedback(999, 300, 0), POLICY) is None, "too few sends to judge"
    assert mailing_trip_reason(RecentFeedback(1000, 40, 0), POLICY) is None, "4% is the mark, not past it"
    reason = mailing_trip_reason(RecentFeedback(1000, 60, 0), POLICY)
    assert reason == "bounce rate 6.00% (60 permanent bounces) over its last 1000 sends passed 4.00%"
    assert mailing_trip_reason(RecentFeedback(1000, 0, 1), BreakerPolicy(window_sends=1250)) is None
    assert mailing_trip_reason(RecentFeedback(1000, 0, 1), POLICY) == (
        "complaint rate 0.10% (1 complaints) over its last 1000 sends passed 0.08%"
    )
    with pytest.raises(ValueError, match="window_sends: at least 200"):
        BreakerPolicy(window_sends=100)


def test_bulk_mail_waits_for_an_account_under_review_or_past_a_reputation_mark():
    assert account_hold_reason(AccountStanding("HEALTHY"), POLICY) is None
    assert account_hold_reason(AccountStanding("HEALTHY", 0.039, 0.0007), POLICY) is None
    assert "enforcement status is PROBATION" in (account_hold_reason(AccountStanding("PROBATION"), POLICY) or "")
    assert "bounce rate 5.00% passed 4.00%" in (account_hold_reason(AccountStanding("HEALTHY", 0.05), POLICY) or "")
    held = account_hold_reason(AccountStanding("HEALTHY", 0.0, 0.001), POLICY) or ""
    assert "complaint rate 0.10% passed 0.08%" in held


def test_the_account_is_read_over_http_at_most_once_a_minute(make_gateway, ses_proxy, local_cloudwatch):
    cloudwatch = aws_client("cloudwatch", local_cloudwatch.url)
    clock = ManualClock(dt.datetime.now(UTC))
    monitor = AccountMonitor(make_gateway().account, cloudwatch, POLICY, clock)
    reads = lambda: ses_proxy.requests()["GET /v2/email/account"]  # noqa: E731
    assert monitor.hold_reason() is None and reads() == 1

    ses_proxy.set_account(enforcement_status="PROBATION")
    assert monitor.hold_reason() is None and reads() == 1, "read again only after account_check_seconds"
    clock.advance(POLICY.account_check_seconds)
    assert "PROBATION" in (monitor.hold_reason() or "") and reads() == 2

    ses_proxy.set_account(enforcement_status="HEALTHY")
    cloudwatch.put_metric_data(
        Namespace="AWS/SES",
        MetricData=[{"MetricName": "Reputation.BounceRate", "Value": 0.06, "Timestamp": dt.datetime.now(UTC)}],
    )
    assert monitor.standing() == AccountStanding("HEALTHY", 0.06, None)


def _sends(db, mailing_id, count, bounced, at):
    events = []
    for i in range(count):
        message_id = f"{mailing_id}-{at.timestamp():.0f}-{i}"
        events.append(
            {
                "_id": f"{message_id}:Send",
                "mailing_id": mailing_id,
                "event_type": "Send",
                "message_id": message_id,
                "occurred_at": at,
            }
        )
        if i < bounced:
            events.append(
                {
                    "_id": f"{message_id}:Bounce",
                    "mailing_id": mailing_id,
                    "event_type": "Bounce",
                    "bounce_type": "Permanent",
                    "message_id": message_id,
                    "occurred_at": at,
                }
            )
    db.mail_events.insert_many(events)


def test_a_tripped_mailing_asks_for_its_pause_once_and_a_resumed_one_is_judged_afresh(mongo_db):
    reports = MailingReports(mongo_db.mailings, mongo_db.mail_log, mongo_db.mail_events)
    reports.ensure_indexes()
    controls = MailingControls(mongo_db.mailings)
    start = dt.datetime.now(UTC) - dt.timedelta(minutes=10)
    mailing_id = mongo_db.mailings.insert_one({"processed": False, "status": "processing"}).inserted_id
    _sends(mongo_db, mailing_id, 1000, 60, start)
    mailing = mongo_db.mailings.find_one({"_id": mailing_id})

    assert MailingBreaker(reports, controls, mailing, POLICY).trip()
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert (doc["control"], doc["control_by"]) == ("pause", BREAKER)
    assert doc["control_reason"] == "bounce rate 6.00% (60 permanent bounces) over its last 1000 sends passed 4.00%"
    controls.request(mailing_id, "cancel", "ops", "wrong list")
    assert MailingBreaker(reports, controls, mailing, POLICY).trip()
    assert mongo_db.mailings.find_one({"_id": mailing_id})["control"] == "cancel", "a pending control is left as it is"

    resumed = {**mailing, "resumed_at": start + dt.timedelta(minutes=1)}
    assert not MailingBreaker(reports, controls, resumed, POLICY).trip(), "no sends since the resume yet"
    _sends(mongo_db, mailing_id, 1000, 10, start + dt.timedelta(minutes=2))
    assert not MailingBreaker(reports, controls, resumed, POLICY).trip(), "1% since the resume"


def test_under_probation_bulk_mail_is_held_and_transactional_mail_goes(
    instance, resources, mongo_db, ses_proxy, ses_server
):
    settings = {**resources["ses"].model_dump(), "endpoint_url": ses_proxy.url, "configuration_set": CONFIGURATION_SET}
    proxied = {**resources, "ses": SesResource(**settings)}
    ses_proxy.set_account(enforcement_status="PROBATION")
    user_ids = mongo_db.users.insert_many(
        [{"email": f"member{i}@panel.example", "first_name": f"M{i}", "status": "active"} for i in range(3)]
    ).inserted_ids
    bulk_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [{"user_id": uid} for uid in user_ids],
        }
    ).inserted_id
    mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "email": "member0@panel.example",
                    "data": {"reset_url": "https://panel.example/r/1", "expires_in_minutes": 60},
                }
            ],
        }
    )
    instance.add_dynamic_partitions("mailings", [str(bulk_id)])
    result = dg.materialize([mailings], partition_key=str(bulk_id), instance=instance, resources=proxied)
    bulk = mongo_db.mailings.find_one({"_id": bulk_id})
    assert bulk["status"] == "postponed" and not bulk["processed"]
    assert bulk["last_error"] == "bulk mail held: the SES account's enforcement status is PROBATION"
    assert "postponed" in result.asset_materializations_for_node("mailings")[0].metadata["outcome"].value
    assert ses_server.emails() == [], "nothing of the bulk mailing was sent"

    assert send_transactional(instance, proxied).success
    (email,) = ses_server.emails()
    assert email["destination"]["to"] == ["member0@panel.example"]


def test_an_account_put_under_review_mid_send_holds_the_rest_of_the_bulk_mailing(
    instance, resources, mongo_db, ses_proxy, ses_server
):
    """SES reviews the account while a bulk mailing is sending: the run stops within a batch or two of
    the next account read, the mailing is postponed with the reason, and what was sent is sent once."""
    settings = {
        **resources["ses"].model_dump(),
        "endpoint_url": ses_proxy.url,
        "configuration_set": CONFIGURATION_SET,
        "max_send_rate": 20.0,  # batches of 20, one a second
        "account_check_seconds": 0.1,
    }
    proxied = {**resources, "ses": SesResource(**settings)}
    user_ids = mongo_db.users.insert_many(
        [{"email": f"member{i}@panel.example", "first_name": f"M{i}", "status": "active"} for i in range(200)]
    ).inserted_ids
    bulk_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [{"user_id": uid} for uid in user_ids],
        }
    ).inserted_id

    def review_after_two_batches() -> None:
        wait_for(lambda: len(ses_proxy.calls()) >= 2, timeout=60, what="two batches sent")
        ses_proxy.set_account(enforcement_status="PROBATION")

    reviewer = threading.Thread(target=review_after_two_batches)
    reviewer.start()
    instance.add_dynamic_partitions("mailings", [str(bulk_id)])
    result = dg.materialize([mailings], partition_key=str(bulk_id), instance=instance, resources=proxied)
    reviewer.join()
    assert result.success
    bulk = mongo_db.mailings.find_one({"_id": bulk_id})
    assert bulk["status"] == "postponed" and not bulk["processed"]
    assert bulk["last_error"] == "bulk mail held: the SES account's enforcement status is PROBATION"
    sent = [address for email in ses_server.emails() for address in email["destination"]["to"]]
    assert 40 <= len(sent) <= 100 and len(set(sent)) == len(sent), len(sent)  # at most 2 batches after the review
    statuses = Counter(row["status"] for row in mongo_db.mail_log.find({"mailing_id": bulk_id}))
    assert statuses == {"sent": len(sent), "pending": 200 - len(sent)}
