"""The pipeline under a real Dagster daemon, driven only by writes to Mongo as the backend makes them."""

import datetime as dt
import time

import dagster as dg
import pytest

from panel_pipeline_tests.waiting import feedback_runs_since, finished_runs, materialized_since, statuses, wait_for

UTC = dt.UTC
pytestmark = [pytest.mark.slow, pytest.mark.stack]


@pytest.fixture
def panel_db(dagster_dev, mongo_client):
    db = mongo_client.panel
    for name in ("users", "samples", "sample_members", "mailings", "mail_log", "pipeline_state"):
        db[name].delete_many({})
    return db


def test_queue_sensors_are_running_in_the_daemon(dagster_dev):
    data = dagster_dev.graphql(
        """{ sensorsOrError(
            repositorySelector: {repositoryLocationName: "panel_pipeline", repositoryName: "__repository__"}
        ) {
              ... on Sensors { results { name sensorState { status } } } } }"""
    )
    states = {s["name"]: s["sensorState"]["status"] for s in data["sensorsOrError"]["results"]}
    assert states["queue_run_failure_sensor"] == "RUNNING"
    assert states["member_changes_sensor"] == "RUNNING"


def test_new_scottish_member_joins_the_dynamic_sample(dagster_dev, panel_db):
    since = dt.datetime.now(UTC)
    sample_id = panel_db.samples.insert_one(
        {
            "name": "Scotland tracker",
            "survey_id": "123",
            "size": 100,
            "dynamic": True,
            "open": True,
            "filters": {"region": {"$in": ["Scotland"]}},
            "processed": True,
            "status": "done",
            "processed_at": dt.datetime.now(UTC),
            "drawn_at": dt.datetime.now(UTC),
            "created_at": dt.datetime.now(UTC),
        }
    ).inserted_id
    inserted = time.monotonic()
    user_id = panel_db.users.insert_one(
        {
            "email": "new.member@panel.example",
            "first_name": "Morag",
            "status": "active",
            "created_at": dt.datetime.now(UTC),
            "points": 0,
            "profile": {"region": "Scotland", "gender": "female"},
        }
    ).inserted_id
    member = wait_for(
        lambda: panel_db.sample_members.find_one({"sample_id": sample_id, "user_id": user_id}),
        what="member",
        explain=dagster_dev.activity,
    )
    print(f"insert -> member added: {time.monotonic() - inserted:.1f} s")
    assert member["source"] == "updater"
    # The member is written inside the run (the standing updater worker's, or the backstop's): the
    # run that recorded the update is waited for, and must have succeeded (or still be serving).
    runs = materialized_since(dagster_dev, "dynamic_sample_updates", since.timestamp(), "the update")
    assert set(statuses(runs).values()) == {dg.DagsterRunStatus.SUCCESS}


def test_queue_documents_are_finished_in_seconds(dagster_dev, panel_db):
    """Insert -> processed for a sample request, and insert -> SES acceptance for a password e-mail."""
    panel_db.users.insert_many(
        [
            {
                "email": f"q{i}@panel.example",
                "first_name": "Q",
                "status": "active",
                "created_at": dt.datetime(2025, 1, 1, tzinfo=UTC),
                "profile": {"gender": ("female", "male")[i % 2], "region": "London"},
            }
            for i in range(40)
        ]
    )
    timings = {}
    started = time.monotonic()
    sample_id = panel_db.samples.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "name": "quick",
            "survey_id": "1",
            "size": 10,
            "quotas": {"gender": {"female": 0.5, "male": 0.5}},
        }
    ).inserted_id
    wait_for(
        lambda: panel_db.samples.find_one({"_id": sample_id, "processed": True}),
        what="sample processed",
        explain=dagster_dev.activity,
    )
    timings["sample request: insert -> done"] = time.monotonic() - started
    started = time.monotonic()
    mailing_id = panel_db.mailings.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "email": "q0@panel.example",
                    "data": {"reset_url": "https://panel.example/reset?token=t", "expires_in_minutes": 60},
                }
            ],
        }
    ).inserted_id
    wait_for(
        lambda: panel_db.mail_log.find_one({"mailing_id": mailing_id, "status": "sent"}),
        what="password e-mail sent",
        explain=dagster_dev.activity,
    )
    timings["password e-mail: insert -> accepted by SES"] = time.monotonic() - started
    for name, seconds in timings.items():
        print(f"{name}: {seconds:.1f} s")
    assert panel_db.samples.find_one({"_id": sample_id})["status"] == "done"
    mailing = wait_for(
        lambda: panel_db.mailings.find_one({"_id": mailing_id, "processed": True}),
        what="password mailing processed",
        explain=dagster_dev.activity,
    )
    assert mailing["status"] == "done"
    run_ids = [panel_db.samples.find_one({"_id": sample_id})["run_id"], mailing["run_id"]]
    runs = finished_runs(dagster_dev, "the sample's and the mailing's runs", run_ids=run_ids)
    assert statuses(runs) == dict.fromkeys(run_ids, dg.DagsterRunStatus.SUCCESS)


def test_an_ses_bounce_flows_back_through_the_daemon(dagster_dev, panel_db):
    """The daemon sends through the local SES endpoint, which publishes SES's events to SNS as a
    configuration set does; the feedback sensor and run apply the mailbox simulator's bounce."""
    since = dt.datetime.now(UTC)
    user_id = panel_db.users.insert_one(
        {
            "email": "bounce@simulator.amazonses.com",
            "first_name": "Bo",
            "status": "active",
            "created_at": dt.datetime(2025, 1, 1, tzinfo=UTC),
        }
    ).inserted_id
    panel_db.mailings.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "email": "bounce@simulator.amazonses.com",
                    "data": {"reset_url": "https://panel.example/reset?token=t", "expires_in_minutes": 60},
                }
            ],
        }
    )
    wait_for(
        lambda: panel_db.users.find_one({"_id": user_id, "status": "bounced"}),
        what="the member bounced",
        explain=dagster_dev.activity,
    )
    runs = feedback_runs_since(dagster_dev, since)
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
