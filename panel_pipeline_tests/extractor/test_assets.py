"""The Extractor's assets over real HTTP to the local SurveyGizmo server, on a real mongod."""

import datetime as dt

import dagster as dg
import pytest

from panel_pipeline.extractor import (
    extract_job_assets,
    hourly_extract_schedule,
    transactions_queue_sensor,
)
from panel_pipeline.extractor.assets import survey_completions
from panel_pipeline.extractor.resources import SurveyGizmoResource
from panel_pipeline.local.demo import demo_user_id, seed_users
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.local.surveygizmo_server import (
    DEMO_TOKEN,
    DEMO_TOKEN_SECRET,
    LocalSurveyGizmo,
    Outage,
)
from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.queue.resources import MongoResource

UTC = dt.timezone.utc
DAYS = [dt.date(2026, 3, 2), dt.date(2026, 3, 4), dt.date(2026, 3, 6)]  # apart: one day's outage touches one window
PER_DAY = 40


@pytest.fixture
def server():
    server = LocalSurveyGizmo()
    server.add_survey(PROFILE_SURVEY)
    profiles = generate_profiles(PER_DAY * len(DAYS), seed=5)
    rows = profiles.astype(object).to_dict("records")
    for index, row in enumerate(rows):
        day = DAYS[index // PER_DAY]
        submitted = dt.datetime.combine(day, dt.time(9), UTC) + dt.timedelta(minutes=index % PER_DAY)
        profile = {k: (int(v) if k == "birth_year" else str(v)) for k, v in row.items() if v is not None and k not in ("age", "age_band")}
        server.add_response(
            PROFILE_SURVEY_ID,
            response_record(profile, response_id=5000 + index, submitted_at=submitted, account_zone=server.zone, panel_id=str(demo_user_id(index + 1))),
        )
    server.start()
    yield server
    server.stop()


def resources(mongo_uri, db_name, server):
    return {
        "mongo": MongoResource(uri=mongo_uri, database=db_name),
        "surveygizmo": SurveyGizmoResource(
            api_token=DEMO_TOKEN, api_token_secret=DEMO_TOKEN_SECRET, base_url=server.base_url,
            account_time_zone="America/New_York", profile_survey_ids=PROFILE_SURVEY_ID,
            max_attempts=2, retry_base_delay_seconds=0.01,
        ),
    }


def extract(instance, res, day: dt.date):
    return dg.materialize(extract_job_assets, partition_key=day.isoformat(), instance=instance, resources=res, raise_on_error=False)


def snapshot(db):
    raw = sorted((d["_id"], d["status"], d["submitted_at"], d["day"]) for d in db.sg_responses.find())
    users = sorted((str(d["_id"]), sorted((d.get("profile") or {}).items())) for d in db.users.find())
    return raw, users


def test_days_extract_into_raw_and_profiles(mongo_uri, mongo_client, mongo_db, server):
    seed_users(mongo_db, PER_DAY * len(DAYS))
    res = resources(mongo_uri, mongo_db.name, server)
    with dg.instance_for_test() as instance:
        for day in DAYS:
            result = extract(instance, res, day)
            assert result.success
        logs = "\n".join(str(e.user_message) for e in instance.all_logs(result.run_id))
    assert DEMO_TOKEN_SECRET not in logs and DEMO_TOKEN not in logs
    assert mongo_db.sg_responses.count_documents({}) == PER_DAY * len(DAYS)
    user = mongo_db.users.find_one({"_id": demo_user_id(1)})
    assert set(user["profile"]) >= {"gender", "region", "birth_year", "age", "age_band"} and user["profile_updated_at"]
    metadata = result.asset_materializations_for_node("surveygizmo_responses")[0].metadata
    assert metadata["api_calls"].value >= 1 and DEMO_TOKEN_SECRET not in str(metadata)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["profile_values_allowed"] and checks["quarantined_responses"]


def test_backfill_after_an_outage_converges_to_the_no_outage_data(mongo_uri, mongo_client, mongo_db, server):
    reference_db = mongo_client[mongo_db.name + "_ref"]
    for db in (mongo_db, reference_db):
        seed_users(db, PER_DAY * len(DAYS))
    with dg.instance_for_test() as instance:
        for day in DAYS:
            assert extract(instance, resources(mongo_uri, reference_db.name, server), day).success
        server.outage = Outage(days=frozenset({DAYS[1]}))
        outcomes = {day: extract(instance, resources(mongo_uri, mongo_db.name, server), day).success for day in DAYS}
        assert outcomes == {DAYS[0]: True, DAYS[1]: False, DAYS[2]: True}  # exactly the outage's partition failed
        server.outage = None
        assert extract(instance, resources(mongo_uri, mongo_db.name, server), DAYS[1]).success  # the backfill
    assert snapshot(mongo_db) == snapshot(reference_db)
    mongo_client.drop_database(reference_db.name)


def test_malformed_records_are_quarantined_and_the_run_goes_on(mongo_uri, mongo_db, server):
    seed_users(mongo_db, 5)
    bad = response_record({"gender": "female"}, response_id=9999, submitted_at=dt.datetime.combine(DAYS[0], dt.time(10), UTC), account_zone=server.zone)
    bad["date_submitted"] = "not a date"
    server.add_response(PROFILE_SURVEY_ID, bad, submitted_at=dt.datetime.combine(DAYS[0], dt.time(10), UTC))
    with dg.instance_for_test() as instance:
        result = extract(instance, resources(mongo_uri, mongo_db.name, server), DAYS[0])
    assert result.success
    quarantined = mongo_db.sg_quarantine.find_one({"response_id": "9999"})
    assert quarantined and "date_submitted" in quarantined["reason"]
    unknown_members = mongo_db.sg_quarantine.count_documents({"reason": {"$regex": "^unknown member"}})
    assert unknown_members == PER_DAY - 5
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["quarantined_responses"] is False


def test_transactions_fetch_their_response_and_update_the_profile(mongo_uri, mongo_db, server):
    seed_users(mongo_db, 3)
    user_id = demo_user_id(1)
    res = resources(mongo_uri, mongo_db.name, server)
    good = mongo_db.transactions.insert_one({"processed": False, "user_id": user_id, "survey_id": PROFILE_SURVEY_ID, "response_id": "5000", "points": 50}).inserted_id
    missing = mongo_db.transactions.insert_one({"processed": False, "user_id": user_id, "survey_id": PROFILE_SURVEY_ID, "response_id": "404404", "points": 50}).inserted_id
    with dg.instance_for_test() as instance:
        tick = transactions_queue_sensor(dg.build_sensor_context(instance=instance, resources={"mongo": res["mongo"]}))
        (request,) = tick.run_requests
        result = dg.materialize([survey_completions], instance=instance, resources=res, run_config=request.run_config)
    assert result.success
    assert mongo_db.transactions.find_one({"_id": good})["status"] == "done"
    failed = mongo_db.transactions.find_one({"_id": missing})
    assert failed["status"] == "failed" and failed["error"] == f"response_id: no response 404404 in survey {PROFILE_SURVEY_ID}"
    assert mongo_db.users.find_one({"_id": user_id})["profile"]["gender"]


def test_hourly_schedule_requests_today_and_yesterday():
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 6, 1, 10, 5, tzinfo=UTC))
    keys = [r.partition_key for r in hourly_extract_schedule(context)]
    assert keys == ["2026-05-31", "2026-06-01"]
