"""The Extractor's assets over real HTTP to the local SurveyGizmo server, on a real mongod."""

import datetime as dt
import time

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.extractor.assets import survey_completions
from panel_pipeline.extractor.schedules import hourly_extract_schedule
from panel_pipeline.extractor.sensors import transactions_queue_sensor
from panel_pipeline.local.demo import demo_user_id, seed_users
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.local.surveygizmo.faults import Outage
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET, LocalSurveyGizmo
from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline_tests.extractor.conftest import extract_day, extract_resources

UTC = dt.UTC
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
        profile = {
            k: (int(v) if k == "birth_year" else str(v))
            for k, v in row.items()
            if v is not None and k not in ("age", "age_band")
        }
        server.add_response(
            PROFILE_SURVEY_ID,
            response_record(
                profile,
                response_id=5000 + index,
                submitted_at=submitted,
                account_zone=server.zone,
                panel_id=str(demo_user_id(index + 1)),
            ),
        )
    server.start()
    yield server
    server.stop()


def snapshot(db):
    raw = sorted((d["_id"], d["status"], d["submitted_at"], d["day"]) for d in db.sg_responses.find())
    users = sorted((str(d["_id"]), sorted((d.get("profile") or {}).items())) for d in db.users.find())
    return raw, users


def test_days_extract_into_raw_and_profiles(mongo_uri, mongo_client, mongo_db, server):
    seed_users(mongo_db, PER_DAY * len(DAYS))
    res = extract_resources(mongo_uri, mongo_db.name, server)
    with dg.instance_for_test() as instance:
        for day in DAYS:
            result = extract_day(instance, res, day)
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
    reference, res = (extract_resources(mongo_uri, db.name, server) for db in (reference_db, mongo_db))
    with dg.instance_for_test() as instance:
        for day in DAYS:
            assert extract_day(instance, reference, day).success
        server.outage = Outage(days=frozenset({DAYS[1]}))
        outcomes = {day: extract_day(instance, res, day).success for day in DAYS}
        assert outcomes == {DAYS[0]: True, DAYS[1]: False, DAYS[2]: True}  # exactly the outage's partition failed
        server.outage = None
        assert extract_day(instance, res, DAYS[1]).success  # the backfill
    assert snapshot(mongo_db) == snapshot(reference_db)
    mongo_client.drop_database(reference_db.name)


def test_malformed_records_are_quarantined_and_the_run_goes_on(mongo_uri, mongo_db, server):
    seed_users(mongo_db, 5)
    bad = response_record(
        {"gender": "female"},
        response_id=9999,
        submitted_at=dt.datetime.combine(DAYS[0], dt.time(10), UTC),
        account_zone=server.zone,
    )
    bad["date_submitted"] = "not a date"
    server.add_response(PROFILE_SURVEY_ID, bad, submitted_at=dt.datetime.combine(DAYS[0], dt.time(10), UTC))
    with dg.instance_for_test() as instance:
        result = extract_day(instance, extract_resources(mongo_uri, mongo_db.name, server), DAYS[0])
    assert result.success
    quarantined = mongo_db.sg_quarantine.find_one({"response_id": "9999"})
    assert quarantined and "date_submitted" in quarantined["reason"]
    unknown_members = mongo_db.sg_quarantine.count_documents({"reason": {"$regex": "^unknown member"}})
    assert unknown_members == PER_DAY - 5
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["quarantined_responses"] is False


def run_completions(instance, res, **config):
    """One survey_completions run over the batch the transactions sensor asks for now."""
    tick = transactions_queue_sensor(dg.build_sensor_context(instance=instance, resources={"mongo": res["mongo"]}))
    (request,) = tick.run_requests
    run_config = request.run_config
    run_config["ops"]["survey_completions"]["config"].update(config)
    return dg.materialize(
        [survey_completions], instance=instance, resources=res, run_config=run_config, raise_on_error=False
    )


def transaction(db, **fields):
    document = {
        "processed": False,
        "created_at": dt.datetime.now(UTC),
        "user_id": demo_user_id(1),
        "survey_id": PROFILE_SURVEY_ID,
        "response_id": "5000",
        "points": 50,
        **fields,
    }
    return db.transactions.insert_one(document).inserted_id


def test_transactions_fetch_their_response_and_update_the_profile(mongo_uri, mongo_db, server):
    seed_users(mongo_db, 3)
    user_id = demo_user_id(1)
    res = extract_resources(mongo_uri, mongo_db.name, server)
    good = transaction(mongo_db)
    long_ago = dt.datetime.now(UTC) - dt.timedelta(minutes=31)
    missing = transaction(mongo_db, response_id="404404", created_at=long_ago)
    with dg.instance_for_test() as instance:
        assert run_completions(instance, res).success
    assert mongo_db.transactions.find_one({"_id": good})["status"] == "done"
    failed = mongo_db.transactions.find_one({"_id": missing})
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert (
        failed["error"] == f"response_id: no response 404404 in survey {PROFILE_SURVEY_ID}, "
        "31 minutes after the transaction was created"
    )
    assert mongo_db.users.find_one({"_id": user_id})["profile"]["gender"]


def test_a_response_not_listed_yet_is_looked_for_again_until_it_appears(mongo_uri, mongo_db, server):
    """Alchemer: a new response can take minutes to reach the API. Within the wait it is postponed
    (no attempt used), then found; without the wait it would have failed at the first 404."""
    seed_users(mongo_db, 3)
    res = extract_resources(mongo_uri, mongo_db.name, server)
    late = transaction(mongo_db, user_id=demo_user_id(2), response_id="7001")
    queue = res["mongo"].work_queue("transactions")
    with dg.instance_for_test() as instance:
        assert run_completions(instance, res, response_retry_minutes=0.01).success
        waiting = mongo_db.transactions.find_one({"_id": late})
        assert waiting["status"] == "postponed" and waiting["processed"] is False and waiting["attempts"] == 0
        assert waiting["last_error"].startswith(
            f"response_id: response 7001 not in survey {PROFILE_SURVEY_ID} yet; looking again until "
        )
        assert waiting["retry_at"] <= waiting["created_at"] + dt.timedelta(minutes=30)

        profile = {"gender": "male", "region": "Wales", "birth_year": 1970}
        server.add_response(
            PROFILE_SURVEY_ID,
            response_record(
                profile,
                response_id=7001,
                submitted_at=dt.datetime.now(UTC),
                account_zone=server.zone,
                panel_id=str(demo_user_id(2)),
            ),
        )
        wait_until(lambda: any(doc["_id"] == late for doc in queue.due_documents(10)))
        assert run_completions(instance, res, response_retry_minutes=0.01).success
    done = mongo_db.transactions.find_one({"_id": late})
    assert done["status"] == "done" and done["profile_updated"] is True
    assert mongo_db.users.find_one({"_id": demo_user_id(2)})["profile"]["region"] == "Wales"


BAD_TRANSACTIONS = {
    "survey id not a SurveyGizmo id": (
        {"survey_id": "7000001; DROP"},
        "survey_id: must be a SurveyGizmo id (a positive integer, as a number or its digits), got '7000001; DROP'",
    ),
    "response id negative": (
        {"response_id": -5000},
        "response_id: must be a SurveyGizmo id (a positive integer, as a number or its digits), got -5000",
    ),
    "response id true": ({"response_id": True}, "response_id: must be a SurveyGizmo id"),
    "response id a path": ({"response_id": "../survey"}, "response_id: must be a SurveyGizmo id"),
    "response id missing": (
        {"response_id": None},
        "response_id: must be a SurveyGizmo id (a positive integer, as a number or its digits), got nothing",
    ),
    "user id not an id": ({"user_id": "bob"}, "user_id: must be a member's id (an ObjectId), got 'bob'"),
    "user id no member": (
        {"user_id": ObjectId("0000000000000000000000ff")},
        "user_id: no member 0000000000000000000000ff",
    ),
    "created_at text": ({"created_at": "yesterday"}, "created_at: must be a date"),
    "survey unknown": ({"survey_id": 424242, "response_id": 5000}, "survey_id: no survey 424242 in SurveyGizmo"),
}


def test_bad_transactions_fail_at_once_naming_the_field(mongo_uri, mongo_db, server):
    seed_users(mongo_db, 3)
    res = extract_resources(mongo_uri, mongo_db.name, server)
    ids = {label: transaction(mongo_db, **fields) for label, (fields, _) in BAD_TRANSACTIONS.items()}
    good = transaction(mongo_db, survey_id=int(PROFILE_SURVEY_ID), response_id=5001)  # ids as numbers are fine
    with dg.instance_for_test() as instance:
        assert run_completions(instance, res).success
    for label, (_, message) in BAD_TRANSACTIONS.items():
        doc = mongo_db.transactions.find_one({"_id": ids[label]})
        assert (doc["status"], doc["attempts"]) == ("failed", 1), label
        assert doc["error"].startswith(message), (label, doc["error"])
    assert mongo_db.transactions.find_one({"_id": good})["status"] == "done"


def test_metadata_counts_unmapped_answers_by_code_never_by_text(mongo_uri, mongo_db, server):
    """An answer the mapping cannot place shows as question id, answer code and count in the run's
    metadata, never as what the member wrote (a vote answer is special-category data)."""
    seed_users(mongo_db, PER_DAY)
    day = dt.datetime.combine(DAYS[0], dt.time(11), UTC)
    for index in range(3):
        record = response_record(
            {"gender": "female", "vote_2024": "labour"},
            response_id=8000 + index,
            submitted_at=day + dt.timedelta(minutes=index),
            account_zone=server.zone,
            panel_id=str(demo_user_id(index + 1)),
        )
        vote_2024 = record["survey_data"]["15"]["subquestions"]["17"]
        vote_2024.update(answer="Workers Party of Britain", answer_id=20077)  # no recode in the mapping
        server.add_response(PROFILE_SURVEY_ID, record, submitted_at=day + dt.timedelta(minutes=index))
    bad = response_record({"gender": "female"}, response_id=8100, submitted_at=day, account_zone=server.zone)
    bad["survey_data"] = {"1": {"id": 1, "type": "RADIO", "answer": {"text": "I vote Workers Party"}, "shown": True}}
    server.add_response(PROFILE_SURVEY_ID, bad, submitted_at=day)
    with dg.instance_for_test() as instance:
        result = extract_day(instance, extract_resources(mongo_uri, mongo_db.name, server), DAYS[0])
    assert result.success
    shown = str(result.asset_materializations_for_node("users")[0].metadata) + str(
        result.asset_materializations_for_node("surveygizmo_responses")[0].metadata
    )
    shown += str([check.metadata for check in result.get_asset_check_evaluations()])
    assert "Workers" not in shown
    unmapped = result.asset_materializations_for_node("users")[0].metadata["unmapped_examples"].records
    assert any(row.data["answer code"] == "20077" and row.data["responses"] == 3 for row in unmapped)
    assert mongo_db.sg_quarantine.find_one({"response_id": "8100"})  # quarantined, and shown only by id and reason


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_hourly_schedule_requests_today_and_yesterday():
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 6, 1, 10, 5, tzinfo=UTC))
    keys = [r.partition_key for r in hourly_extract_schedule(context)]
    assert keys == ["2026-05-31", "2026-06-01"]


def test_a_transaction_hit_by_an_outage_is_retried_with_a_redacted_error(mongo_uri, mongo_db, server):
    seed_users(mongo_db, 3)
    res = extract_resources(mongo_uri, mongo_db.name, server)
    doc_id = transaction(mongo_db)
    server.stop()  # SurveyGizmo unreachable: a transient error, not the document's fault
    with dg.instance_for_test() as instance:
        result = run_completions(instance, res)
    assert not result.success
    doc = mongo_db.transactions.find_one({"_id": doc_id})
    assert (doc["status"], doc["attempts"], doc["processed"]) == ("retry", 1, False)
    assert (
        doc["last_error"].startswith("SurveyGizmo")
        and "://" not in doc["last_error"]
        and DEMO_TOKEN not in doc["last_error"]
    )
