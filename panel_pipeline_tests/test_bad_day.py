"""A bad day, under the real daemon (`dagster dev` as `make run` starts it) on a local stack of its own.

In one scenario: a nat rep sample whose invitation hits SES's daily quota mid-way and resumes after
the pause; members unsubscribing during the pause; the mailing's run worker SIGKILLed mid-send; an
analyst re-materialising the partition the sensor's run is sending; malformed samples, mailings and
transactions of every kind among good ones; a 50,000-member profile backfill while a dynamic sample
is open. Then the invariants: every queue document ends processed, `done` or `failed` with an error
naming what to fix; nobody mailed twice, nobody lost, nobody mailed after leaving; every good sample
invited; and nothing the instance kept (event log, run storage, compute logs, captured output, tags,
config, metadata) holds a member's address, a token or a secret.

The stack runs with short pauses and leases (the PANEL_* timing variables of the local resources) so
a pause of an hour and a lease of minutes take seconds here; the code paths are production's.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from panel_pipeline.local.dagster_dev import DagsterDev
from panel_pipeline.local.demo import demo_user, demo_user_id
from panel_pipeline.local.mongod import LocalMongod, free_port
from panel_pipeline.local.profile_survey import PROFILE_SURVEY
from panel_pipeline.local.ses_events import SnsEventPublisher
from panel_pipeline.local.ses_proxy import SesFaultProxy, daily_quota_exceeded
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.local.sns_sqs import LocalCloudWatch, LocalSnsSqs, ensure_feedback_path
from panel_pipeline.local.stack import LOCAL_UNSUBSCRIBE_SECRET, pipeline_environment
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN_SECRET, LocalSurveyGizmo
from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline_tests.pii_scan import Needles, scan_dagster_home, scan_texts
from panel_pipeline_tests.waiting import DAEMON_FEEDBACK, run_worker_pid, serving, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.stack]
UTC = dt.UTC
PANEL = 4_000
BACKFILL = 50_000
SEND_RATE = 40.0
SURVEY = {
    "survey_name": "Omnibus wave 12",
    "duration_minutes": 10,
    "points": 100,
    "survey_url": "https://survey.example/s/12",
}
TIMINGS = {
    "PANEL_MAIL_PAUSE_SECONDS": "20",  # after SES's daily quota answer (production: an hour)
    "PANEL_MAIL_RECIPIENT_LEASE_SECONDS": "20",  # a claimed batch of recipients (production: 5 minutes)
    "PANEL_MAIL_EVENT_SILENCE_SECONDS": "30",  # SES event feed reordering allowance (production: 10 minutes)
    # Nobody answers surveys here: at the local run's hour a second, fieldwork would top up and remind
    # the whole panel within minutes. In wall time its samples stay in their first wave.
    "PANEL_FIELDWORK_TIME_SCALE": "1",
}
DRAIN_TIMEOUT = 900.0


@dataclass
class Stack:
    db: Database
    dagster: DagsterDev
    proxy: SesFaultProxy
    ses: LocalSesServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, local_cloudwatch: LocalCloudWatch) -> Iterator[Stack]:
    mongod = LocalMongod(data_dir=tmp_path_factory.mktemp("bad_day_mongod"), port=free_port())
    mongod.start()
    try:
        with (
            LocalSesServer(port=free_port(), max_send_rate=SEND_RATE) as ses,
            LocalSurveyGizmo() as surveygizmo,
            LocalSnsSqs(port=free_port()) as sns_sqs,
        ):
            surveygizmo.add_survey(PROFILE_SURVEY)
            path = ensure_feedback_path(sns_sqs.url)
            publisher = SnsEventPublisher(sns_sqs.url, path.topic_arn)
            proxy = SesFaultProxy(ses.url, publish=publisher, feedback=DAEMON_FEEDBACK)
            proxy.start()
            completes = tmp_path_factory.mktemp("bad_day_completes")
            environment = (
                pipeline_environment(
                    mongod.uri, proxy.url, surveygizmo.base_url, sns_sqs.url, local_cloudwatch.url, completes
                )
                | TIMINGS
            )
            dagster = DagsterDev(tmp_path_factory.mktemp("bad_day_dagster_home"), environment)
            client: MongoClient = MongoClient(mongod.uri, tz_aware=True)
            try:
                dagster.start()
                yield Stack(client.panel, dagster, proxy, ses)
            finally:
                dagster.stop()
                proxy.stop()
                publisher.close()
                client.close()
    finally:
        mongod.stop()


# --- the backend's writes ------------------------------------------------------------------------


def profile_of(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (int(v) if k == "birth_year" else str(v)) for k, v in row.items() if v is not None and k != "age"}


def seed_members(db: Database, first: int, count: int, seed: int) -> None:
    now = dt.datetime.now(UTC)
    rows = generate_profiles(count, seed=seed).astype(object).to_dict("records")
    for start in range(0, count, 5_000):
        db.users.insert_many(
            [
                {**demo_user(first + i, now), "profile": profile_of(rows[i]), "profile_updated_at": now}
                for i in range(start, min(start + 5_000, count))
            ]
        )


def sample(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "processed": False,
        "created_at": dt.datetime.now(UTC),
        "name": name,
        "survey_id": "901",
        "size": 20,
        "tolerance": 100,
        "mailing": {"template": "new_survey", "default_data": {**SURVEY, "survey_name": name}},
        # One invitation each: fieldwork has a daemon test of its own, and its passes (one per sample
        # whenever its events change) kept runs queued behind the Sampler's limit of one.
        "fieldwork": False,
        **fields,
    }


GOOD_SAMPLES = {
    "nat rep": sample("Omnibus wave 12", size=800, preset="uk_nat_rep", tolerance=10, seed=7),
    "women": sample("Women's health", size=60, filters={"gender": "female"}, seed=2),
    "scotland": sample("Scotland tracker", size=600, dynamic=True, filters={"region": {"$in": ["Scotland"]}}),
}
# Malformed requests, and the field each error must name: a wrong type, the two that used to raise
# inside the draw (a negative seed in the RNG, an exclusion window that overflows a date), an invitation
# that cannot be sent, filters nobody matches. Each is a run of its own in the Sampler's one-at-a-time
# lane, so these stand for the rest here; sampler/test_assets.py refuses every kind through the same asset.
BAD_SAMPLES = {
    "size as text": (sample("bad", size="100"), "size"),
    "negative seed": (sample("bad", seed=-1), "seed"),
    "exclusion overflow": (sample("bad", exclude={"invited_within_days": 10**7}), "exclude.invited_within_days"),
    "unknown template": (
        sample("bad", mailing={"template": "no_such_template", "default_data": SURVEY}),
        "mailing.template",
    ),
    "nobody matches": (sample("bad", filters={"birth_year": {"$lt": 1895}}), ""),
}
BAD_MAILINGS = {
    "template not text": ({"template": 5, "recipients": [{"user_id": demo_user_id(1)}]}, "template"),
    "unknown template": ({"template": "no_such_template", "recipients": [{"user_id": demo_user_id(1)}]}, "template"),
}
BAD_TRANSACTIONS = {
    "response id not an id": (
        {"user_id": demo_user_id(1), "survey_id": "7000001", "response_id": "abc"},
        "response_id",
    ),
    "survey id not an id": ({"user_id": demo_user_id(1), "survey_id": "x1", "response_id": "5"}, "survey_id"),
    "no such member": ({"user_id": ObjectId(), "survey_id": "7000001", "response_id": "6"}, "user_id"),
}


def password_email(db: Database, member: int, token: str) -> ObjectId:
    return db.mailings.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "user_id": demo_user_id(member),
                    "data": {"reset_url": f"https://panel.example/reset?token={token}", "expires_in_minutes": 60},
                }
            ],
        }
    ).inserted_id


def transactional(db: Database, **fields: Any) -> ObjectId:
    return db.mailings.insert_one(
        {"processed": False, "created_at": dt.datetime.now(UTC), "kind": "transactional", **fields}
    ).inserted_id


# --- what the test reads -------------------------------------------------------------------------


def sent_for(db: Database, mailing_id: ObjectId) -> int:
    return db.mail_log.count_documents({"mailing_id": mailing_id, "status": "sent"})


def invitation_of(db: Database, sample_id: ObjectId) -> dict[str, Any] | None:
    member = db.sample_members.find_one({"sample_id": sample_id, "mailing_id": {"$exists": True}}, {"mailing_id": 1})
    return db.mailings.find_one({"_id": member["mailing_id"]}) if member else None


def accepted_entries(proxy: SesFaultProxy) -> list[tuple[str, str, str]]:
    """(mailing id, address, call timestamp) of every entry SES accepted."""
    accepted = []
    for call in proxy.calls():
        mailing = next((t["Value"] for t in call.request.get("DefaultEmailTags", []) if t["Name"] == "mailing"), "")
        for entry, result in zip(call.request.get("BulkEmailEntries", []), call.results, strict=False):
            if result.get("Status") == "SUCCESS":
                accepted.append((mailing, entry["Destination"]["ToAddresses"][0].lower(), call.timestamp))
    return accepted


def launch_partition_run(dagster: DagsterDev, job_name: str, partition: str) -> str:
    """What an analyst's Materialize on one partition does: a run of the job for that partition."""
    data = dagster.graphql(
        """mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
             __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {
            "params": {
                "selector": {
                    "repositoryLocationName": "panel_pipeline",
                    "repositoryName": "__repository__",
                    "jobName": job_name,
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
            }
        },
    )
    launched = data["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def runs_settled(dagster: DagsterDev) -> bool:
    with dagster.instance() as instance:
        return all(run.status in TERMINAL or serving(run) for run in instance.get_runs())


def drained(db: Database) -> bool:
    if any(db[name].count_documents({"processed": False}, limit=1) for name in ("samples", "mailings", "transactions")):
        return False
    if db.mail_log.count_documents({"status": {"$in": ["pending", "claimed", "unknown"]}}, limit=1):
        return False
    newest = db.users.find_one(sort=[("created_at", -1)])["created_at"]
    cursor = (db.pipeline_state.find_one({"_id": "updater"}) or {}).get("changed_since")
    return cursor is not None and cursor >= newest


# --- the day ---------------------------------------------------------------------------------------


def test_a_bad_day(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    db, dagster, proxy = stack.db, stack.dagster, stack.proxy
    explain = dagster.activity
    seed_members(db, 1, PANEL, seed=5)
    started = time.monotonic()

    good = {name: db.samples.insert_one(dict(doc)).inserted_id for name, doc in GOOD_SAMPLES.items()}
    bad_samples = {
        name: (db.samples.insert_one(dict(doc)).inserted_id, field) for name, (doc, field) in BAD_SAMPLES.items()
    }
    bad_mailings = {name: (transactional(db, **doc), field) for name, (doc, field) in BAD_MAILINGS.items()}
    bad_address = transactional(
        db,
        template="points_registered",
        recipients=[
            {
                "email": "not an address",
                "data": {
                    "survey_name": "Omnibus",
                    "points": 5,
                    "balance": 10,
                    "dashboard_url": "https://panel.example/dashboard",
                },
            },
            {
                "user_id": demo_user_id(2),
                "data": {
                    "survey_name": "Omnibus",
                    "points": 5,
                    "balance": 10,
                    "dashboard_url": "https://panel.example/dashboard",
                },
            },
        ],
    )
    bad_transactions = {
        name: (
            db.transactions.insert_one(
                {"processed": False, "created_at": dt.datetime.now(UTC), "points": 5, **doc}
            ).inserted_id,
            field,
        )
        for name, (doc, field) in BAD_TRANSACTIONS.items()
    }
    reset_tokens = [os.urandom(16).hex() for _ in range(5)]
    resets = [password_email(db, 100 + n, token) for n, token in enumerate(reset_tokens)]

    # The nat rep invitation starts; SES answers "daily quota exceeded" mid-way.
    invitation = wait_for(
        lambda: invitation_of(db, good["nat rep"]), timeout=300, what="the nat rep invitation", explain=explain
    )
    mailing_id = invitation["_id"]
    wait_for(lambda: sent_for(db, mailing_id) >= 100, timeout=300, what="the invitation half sent", explain=explain)
    proxy.inject(daily_quota_exceeded())
    wait_for(
        lambda: db.mailings.find_one({"_id": mailing_id, "status": "postponed"}),
        timeout=120,
        what="the quota pause",
        explain=explain,
    )

    # Members leave during the pause: they must not be mailed afterwards.
    leaving = [
        row["user_id"]
        for row in db.mail_log.find({"mailing_id": mailing_id, "status": "pending"}, {"user_id": 1}).limit(25)
    ]
    left_at = dt.datetime.now(UTC)
    db.users.update_many({"_id": {"$in": leaving}}, {"$set": {"status": "unsubscribed", "status_changed_at": left_at}})

    # After the pause it resumes; an analyst re-materialises the partition it is sending.
    resumed_from = sent_for(db, mailing_id)
    wait_for(
        lambda: sent_for(db, mailing_id) > resumed_from + 40,
        timeout=180,
        what="the invitation resumed",
        explain=explain,
    )
    analyst_run = launch_partition_run(dagster, "mailing_job", str(mailing_id))

    # The run worker sending it is SIGKILLed mid-send.
    sender = db.mailings.find_one({"_id": mailing_id})["run_id"]
    with dagster.instance() as instance:
        pid = wait_for(
            lambda: run_worker_pid(instance, sender), timeout=60, what="the sending run's pid", explain=explain
        )
    killed_at = sent_for(db, mailing_id)
    os.kill(pid, signal.SIGKILL)

    # A 50,000-member profile backfill while the Scotland sample is open.
    seed_members(db, PANEL + 1, BACKFILL, seed=6)

    wait_for(lambda: drained(db), timeout=DRAIN_TIMEOUT, what="every queue drained", explain=explain)
    drain_seconds = time.monotonic() - started
    wait_for(lambda: runs_settled(dagster), timeout=120, what="every run terminal", explain=explain)

    # Every queue document ends processed, done or failed, and a failure says what to fix.
    for name in ("samples", "mailings", "transactions"):
        for doc in db[name].find():
            assert doc["processed"] is True and doc["status"] in ("done", "failed"), (
                name,
                doc["_id"],
                doc.get("status"),
            )
            if doc["status"] == "failed":
                assert doc.get("error"), (name, doc["_id"])
    for kind, (doc_id, field) in [*bad_samples.items(), *bad_mailings.items()]:
        doc = db.samples.find_one({"_id": doc_id}) or db.mailings.find_one({"_id": doc_id})
        assert doc["status"] == "failed" and doc["attempts"] == 1, (
            kind,
            doc.get("status"),
            doc.get("attempts"),
            doc.get("error"),
        )
        assert field in doc["error"] and "gave up" not in doc["error"], (kind, doc["error"])
    for kind, (doc_id, field) in bad_transactions.items():
        doc = db.transactions.find_one({"_id": doc_id})
        assert doc["status"] == "failed" and doc["attempts"] == 1 and field in doc["error"], (kind, doc.get("error"))
    address_rows = {
        str(row["user_id"]): (row["status"], row.get("error")) for row in db.mail_log.find({"mailing_id": bad_address})
    }
    assert sorted(status for status, _ in address_rows.values()) == ["failed", "sent"], (
        address_rows,
        db.mailings.find_one({"_id": bad_address}),
    )

    # Every good sample drawn and invited; the Scotland sample took newcomers from the backfill.
    for name, sample_id in good.items():
        doc = db.samples.find_one({"_id": sample_id})
        assert doc["status"] == "done", (name, doc.get("error"))
        assert db.sample_members.count_documents({"sample_id": sample_id}) > 0, name
    newcomers = db.sample_members.count_documents({"sample_id": good["scotland"], "source": "updater"})
    assert newcomers > 0

    # Nobody mailed twice, nobody lost, nobody mailed after leaving.
    accepted = accepted_entries(proxy)
    per_recipient = Counter((mailing, address) for mailing, address, _ in accepted)
    duplicates = sum(n - 1 for n in per_recipient.values() if n > 1)
    assert duplicates == 0
    assert Counter(e["destination"]["to"][0].lower() for e in stack.ses.emails()) == Counter(a for _, a, _ in accepted)
    sent_rows = db.mail_log.count_documents({"status": "sent"})
    assert sent_rows == len(accepted)
    lost = 0
    for sample_id in good.values():
        for member in db.sample_members.find({"sample_id": sample_id}):
            rows = list(db.mail_log.find({"user_id": member["user_id"], "mailing_id": member.get("mailing_id")}))
            user = db.users.find_one({"_id": member["user_id"]}, {"status": 1})
            if user["status"] == "active" and not any(row["status"] == "sent" for row in rows):
                lost += 1
    assert lost == 0
    leavers = {f"member{int(str(uid), 16)}@panel.example" for uid in leaving}
    mailed_after_leaving = [
        a for mailing, a, at in accepted if a in leavers and mailing == str(mailing_id) and at > _ses_time(left_at)
    ]
    assert mailed_after_leaving == []
    assert db.mail_log.count_documents(
        {"mailing_id": mailing_id, "user_id": {"$in": leaving}, "status": "suppressed"}
    ) == len(leaving)

    # The analyst's run and the killed run ended; the mailing names its last run.
    with dagster.instance() as instance:
        assert instance.get_run_by_id(analyst_run).status in TERMINAL
        assert instance.get_run_by_id(sender).status == dg.DagsterRunStatus.FAILURE
        assert all(doc["status"] == "done" for doc in db.mailings.find({"_id": {"$in": resets}}))

        # Nothing the instance kept holds an address, a token or a secret.
        unsubscribe_tokens = {
            token
            for email in stack.ses.emails()
            for token in re.findall(r"token=([0-9a-zA-Z._\-]+)", str(email.get("headers", "")))
        }
        needles = Needles(
            emails=frozenset(u["email"] for u in db.users.find({}, {"email": 1})),
            tokens=frozenset(reset_tokens)
            | frozenset(t for t in unsubscribe_tokens if re.fullmatch(r"[0-9a-f]{16,}", t)),
            secrets=frozenset({LOCAL_UNSUBSCRIBE_SECRET, DEMO_TOKEN_SECRET}),
        )
        scan = scan_dagster_home(dagster.home, instance, needles)
    stored_errors = [
        (f"{name} {doc['_id']}", str(doc.get("error", "")) + str(doc.get("last_error", "")))
        for name in ("samples", "mailings", "transactions", "mail_log")
        for doc in db[name].find({"$or": [{"error": {"$exists": True}}, {"last_error": {"$exists": True}}]})
    ]
    error_hits = scan_texts(stored_errors, needles)
    with capsys.disabled():
        print(
            f"\nbad day: {db.samples.count_documents({})} samples, {db.mailings.count_documents({})} mailings, "
            f"{db.transactions.count_documents({})} transactions; {len(accepted)} e-mails accepted by SES "
            f"({sent_for(db, mailing_id)} of the nat rep invitation, killed at {killed_at}), "
            f"{newcomers} backfill newcomers invited; "
            f"duplicates {duplicates}, lost {lost}, stuck 0, mailed after leaving 0; drained in {drain_seconds:.0f} s"
        )
        print(scan.summary(), f"; stored errors read {len(stored_errors)}, hits {len(error_hits)}")
        print("runs:", dagster.run_summary())
    assert scan.hits == [] and error_hits == []


def _ses_time(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
