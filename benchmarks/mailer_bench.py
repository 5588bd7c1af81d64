"""Mailer throughput and transactional latency under the local run (`dagster dev`, the project's
dagster.yaml, as `make run` starts it): a 10,000-recipient bulk mailing with the account's max send
rate at 200/s on the local SES endpoint, and password-recovery e-mails inserted while it runs.

Reports achieved recipients/s as a ratio of the configured rate (target >= 0.95), SendBulkEmail calls
made against the floor ceil(N/50), and insert -> accepted-by-SES latency of the password e-mails
(p50, p95). SES is aws-ses-v2-local behind the project's recording proxy, so every call is counted."""

import datetime as dt
import math
import statistics
import tempfile
import time
from pathlib import Path

from bson import ObjectId

from benchmarks._mongo import throwaway_mongod
from panel_pipeline.local.dagster_dev import DagsterDev
from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.local.sns_sqs import LocalSnsSqs, ensure_feedback_path
from panel_pipeline.local.stack import pipeline_environment
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo

UTC = dt.UTC
RECIPIENTS = 10_000
SEND_RATE = 200.0
SES_BATCH = 50
PASSWORD_EVERY_SECONDS = 2.0
SURVEY = {
    "survey_name": "Winter omnibus",
    "duration_minutes": 12,
    "points": 150,
    "survey_url": "https://survey.example/s/9",
}


def wait_for(predicate, timeout: float = 300.0, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(poll)
    raise TimeoutError("gave up waiting")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def seed_bulk_mailing(db) -> ObjectId:
    """10,000 active members in a sample, and the mailing that invites them all."""
    now = dt.datetime.now(UTC)
    user_ids = db.users.insert_many(
        [
            {"email": f"member{i}@panel.example", "first_name": f"Member{i}", "status": "active", "created_at": now}
            for i in range(RECIPIENTS)
        ]
    ).inserted_ids
    sample_id = db.samples.insert_one({"name": "bench", "processed": True, "status": "done"}).inserted_id
    db.sample_members.insert_many(
        [{"sample_id": sample_id, "user_id": uid, "added_at": now, "invited_at": None} for uid in user_ids]
    )
    return db.mailings.insert_one(
        {
            "processed": False,
            "created_at": now,
            "kind": "bulk",
            "template": "new_survey",
            "sample_id": sample_id,
            "default_data": SURVEY,
        }
    ).inserted_id


def insert_password_email(db, number: int) -> ObjectId:
    return db.mailings.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "email": f"reset{number}@panel.example",
                    "data": {
                        "first_name": "R",
                        "reset_url": f"https://panel.example/reset?token=t{number}",
                        "expires_in_minutes": 60,
                    },
                }
            ],
        }
    ).inserted_id


def accepted_after(db, mailing_id: ObjectId) -> float:
    """Seconds from a mailing's insert to SES accepting its e-mail (both stamped on this machine's clock)."""
    row = wait_for(lambda: db.mail_log.find_one({"mailing_id": mailing_id, "status": "sent"}, {"sent_at": 1}))
    return (row["sent_at"] - db.mailings.find_one({"_id": mailing_id})["created_at"]).total_seconds()


def main() -> None:
    with (
        throwaway_mongod() as (client, uri),
        LocalSesServer(port=free_port(), max_send_rate=SEND_RATE) as ses,
        LocalSurveyGizmo() as sg,
        LocalSnsSqs(port=free_port()) as sns_sqs,
        tempfile.TemporaryDirectory(prefix="panel-dagster-") as home,
    ):
        ensure_feedback_path(sns_sqs.url)
        proxy = SesFaultProxy(ses.url)
        proxy.start()
        db = client.panel
        server = DagsterDev(Path(home), pipeline_environment(uri, proxy.url, sg.base_url, sns_sqs.url))
        server.start()
        try:
            accepted_after(db, insert_password_email(db, 0))  # warm-up: template sync, first imports
            bulk_id = seed_bulk_mailing(db)
            inserted = time.monotonic()
            passwords = []
            while not db.mailings.find_one({"_id": bulk_id, "processed": True}, {"_id": 1}):
                passwords.append(insert_password_email(db, len(passwords) + 1))
                time.sleep(PASSWORD_EVERY_SECONDS)
            done = time.monotonic()
            latencies = [accepted_after(db, mailing_id) for mailing_id in passwords]
        finally:
            server.stop()
            proxy.stop()
        report(db, bulk_id, proxy, latencies, done - inserted)


def report(db, bulk_id: ObjectId, proxy: SesFaultProxy, latencies: list[float], insert_to_done: float) -> None:
    rows = list(db.mail_log.find({"mailing_id": bulk_id}, {"status": 1, "attempt_started_at": 1, "sent_at": 1}))
    sent = [row for row in rows if row["status"] == "sent"]
    first_attempt = min(row["attempt_started_at"] for row in sent)
    bulk = db.mailings.find_one({"_id": bulk_id})
    last_sent = max(row["sent_at"] for row in sent)
    sending_seconds = (last_sent - first_attempt).total_seconds()
    # The first batch goes at once (the bucket starts full), so the rate counts the recipients after it.
    achieved = (len(sent) - SES_BATCH) / sending_seconds
    bulk_calls = sum(
        1 for call in proxy.calls() if call.request.get("DefaultEmailTags") and _tag(call, "mailing") == str(bulk_id)
    )
    floor = math.ceil(RECIPIENTS / SES_BATCH)
    print(
        f"bulk mailing: {len(sent):,} of {RECIPIENTS:,} sent; insert -> done {insert_to_done:.1f} s "
        f"(insert -> first SES call {(first_attempt - bulk['created_at']).total_seconds():.1f} s, "
        f"sending {sending_seconds:.1f} s)"
    )
    print(
        f"achieved {achieved:.1f} recipients/s of the configured {SEND_RATE:.0f}/s: "
        f"ratio {achieved / SEND_RATE:.3f} (target >= 0.95)"
    )
    print(f"SendBulkEmail calls: {bulk_calls} (floor ceil(N/50) = {floor}; ratio {bulk_calls / floor:.2f})")
    print(
        f"password-recovery e-mails inserted every {PASSWORD_EVERY_SECONDS:.0f} s during the bulk send: "
        f"{len(latencies)}; insert -> accepted by SES "
        f"p50 {percentile(latencies, 0.5):.1f} s, p95 {percentile(latencies, 0.95):.1f} s, max {max(latencies):.1f} s, "
        f"mean {statistics.mean(latencies):.1f} s"
    )


def _tag(call, name: str) -> str | None:
    return next((tag["Value"] for tag in call.request.get("DefaultEmailTags", []) if tag["Name"] == name), None)


if __name__ == "__main__":
    main()
