"""The whole loop as the backend drives it: a real Dagster daemon (as `make run` starts it) on the
local stack, and this test only writes to Mongo (and answers surveys on the local SurveyGizmo)."""

import datetime as dt
import time
from collections import Counter

import dagster as dg
import pytest

from panel_pipeline.local.demo import demo_user, demo_user_id
from panel_pipeline.local.profile_survey import PROFILE_SURVEY_ID, response_record
from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline_tests.waiting import finished_runs, materialized_since, statuses, wait_for

UTC = dt.UTC
MEMBERS = 240
SURVEY = {
    "survey_name": "Omnibus wave 12",
    "duration_minutes": 10,
    "points": 100,
    "survey_url": "https://survey.example/s/12",
}
pytestmark = [pytest.mark.slow, pytest.mark.stack]


def answer_profile_survey(surveygizmo, number: int, profile: dict, response_id: int) -> None:
    record = response_record(
        profile,
        response_id=response_id,
        submitted_at=dt.datetime.now(UTC) - dt.timedelta(minutes=5),
        account_zone=surveygizmo.zone,
        panel_id=str(demo_user_id(number)),
    )
    surveygizmo.add_response(PROFILE_SURVEY_ID, record)


def complete(db, number: int, response_id: int) -> None:
    """The backend records a completion of the profile survey."""
    db.transactions.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "user_id": demo_user_id(number),
            "survey_id": PROFILE_SURVEY_ID,
            "response_id": str(response_id),
            "points": 20,
        }
    )


def profile_of(row: dict) -> dict:
    return {
        k: (int(v) if k == "birth_year" else str(v))
        for k, v in row.items()
        if v is not None and k not in ("age", "age_band")
    }


def invitations_sent(db, *sample_ids) -> bool:
    """Every member of these samples is named by an invitation, and each of those mailings is processed."""
    members = list(db.sample_members.find({"sample_id": {"$in": list(sample_ids)}}, {"sample_id": 1, "mailing_id": 1}))
    mailing_ids = {member.get("mailing_id") for member in members}
    return (
        {member["sample_id"] for member in members} == set(sample_ids)
        and None not in mailing_ids
        and db.mailings.count_documents({"_id": {"$in": list(mailing_ids)}, "processed": True}) == len(mailing_ids)
    )


def test_the_backend_drives_the_whole_pipeline(dagster_dev, mongo_client, local_surveygizmo, local_ses):
    db = mongo_client.panel
    for name in (
        "users",
        "samples",
        "sample_members",
        "mailings",
        "mail_log",
        "transactions",
        "pipeline_state",
        "sg_responses",
    ):
        db[name].delete_many({})
    local_ses.clear()

    # New members join and answer the profile survey; the backend records each completion.
    now = dt.datetime.now(UTC)
    rows = generate_profiles(MEMBERS, seed=11).astype(object).to_dict("records")
    db.users.insert_many([demo_user(n, now) for n in range(1, MEMBERS + 1)])
    for n, row in enumerate(rows, start=1):
        answer_profile_survey(local_surveygizmo, n, profile_of(row), 70_000 + n)
        complete(db, n, 70_000 + n)
    wait_for(
        lambda: db.transactions.count_documents({"processed": True}) == MEMBERS,
        what="transactions processed",
        explain=dagster_dev.activity,
    )
    assert db.transactions.count_documents({"status": "done"}) == MEMBERS
    assert db.users.count_documents({"profile.region": {"$exists": True}}) == MEMBERS

    # A project manager asks for a UK nat rep sample with an invitation, and a dynamic Scotland sample.
    nat_rep = db.samples.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "name": "Omnibus",
            "survey_id": "12",
            "size": 40,
            "preset": "uk_nat_rep",
            "tolerance": 25,
            "seed": 3,
            "mailing": {"template": "new_survey", "default_data": SURVEY},
            "fieldwork": False,  # one invitation: fieldwork has a daemon test of its own
        }
    ).inserted_id
    scotland = db.samples.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "name": "Scotland tracker",
            "survey_id": "13",
            "size": 500,
            "tolerance": 100,
            "dynamic": True,
            "filters": {"region": {"$in": ["Scotland"]}},
            "mailing": {"template": "new_survey", "default_data": {**SURVEY, "survey_name": "Scotland tracker"}},
            "fieldwork": False,
        }
    ).inserted_id
    wait_for(
        lambda: db.samples.count_documents({"processed": True}) == 2,
        what="samples processed",
        explain=dagster_dev.activity,
    )
    assert db.samples.find_one({"_id": nat_rep})["status"] == "done"
    assert db.samples.find_one({"_id": scotland})["open"] is True
    wait_for(
        lambda: invitations_sent(db, nat_rep, scotland),
        what="both samples' invitations sent",
        explain=dagster_dev.activity,
    )

    # A new Scottish member joins and answers the profile survey: added to the dynamic sample, invited once.
    newcomer = MEMBERS + 1
    db.users.insert_one(demo_user(newcomer, dt.datetime.now(UTC)))
    answer_profile_survey(local_surveygizmo, newcomer, {**profile_of(rows[0]), "region": "Scotland"}, 80_000)
    joined = time.monotonic()
    complete(db, newcomer, 80_000)
    member = wait_for(
        lambda: db.sample_members.find_one(
            {"sample_id": scotland, "user_id": demo_user_id(newcomer), "invited_at": {"$ne": None}}
        ),
        what="newcomer invited",
        explain=dagster_dev.activity,
    )
    print(f"newcomer: completion inserted -> invitation accepted by SES in {time.monotonic() - joined:.1f} s")
    # `invited_at` is written as the mail goes; the mailing document is finished after.
    wait_for(
        lambda: db.mailings.find_one({"_id": member["mailing_id"], "processed": True}),
        what="newcomer's mailing processed",
        explain=dagster_dev.activity,
    )

    # Every member of a sample got exactly one invitation per sample, with their own name on it.
    emails = local_ses.emails()
    per_address = Counter(e["destination"]["to"][0] for e in emails)
    invited = list(db.sample_members.find({"invited_at": {"$ne": None}}))
    expected = Counter(f"member{int(str(m['user_id']), 16)}@panel.example" for m in invited)
    assert per_address == expected
    for email in emails:
        number = int(email["destination"]["to"][0].removeprefix("member").split("@")[0])
        assert demo_user(number, now)["first_name"] in email["body"]["text"]
    assert all(doc["status"] == "done" for doc in db.mailings.find())
    assert all(doc["processed"] for name in ("samples", "mailings", "transactions") for doc in db[name].find())

    # Each queue document names its run, which succeeded: waited for, since a document is written
    # processed inside its run, before the run ends.
    named = {doc["run_id"] for name in ("samples", "mailings", "transactions") for doc in db[name].find()}
    runs = finished_runs(dagster_dev, "the queue documents' runs", run_ids=sorted(named))
    assert statuses(runs) == {run_id: dg.DagsterRunStatus.SUCCESS for run_id in named}
    updates = materialized_since(dagster_dev, "dynamic_sample_updates", 0, "the dynamic sample updates")
    assert set(statuses(updates).values()) == {dg.DagsterRunStatus.SUCCESS}
