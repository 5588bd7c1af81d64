"""The deleted-response sweep over real HTTP to the local SurveyGizmo server, on a real mongod."""

import datetime as dt

import dagster as dg
import pytest

from panel_pipeline.extractor.assets import surveygizmo_deletions
from panel_pipeline.extractor.jobs import deletion_sweep_job
from panel_pipeline.extractor.schedules import weekly_deletion_sweep_schedule
from panel_pipeline.extractor.store import raw_records
from panel_pipeline.local.demo import demo_user_id, seed_users
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.local.surveygizmo.faults import dropped_rows
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo
from panel_pipeline_tests.extractor.conftest import extract_day, extract_resources

UTC = dt.UTC
DAY = dt.date(2026, 3, 2)
RESPONSES = 60
FIRST_ID = 5000


@pytest.fixture
def server():
    with LocalSurveyGizmo() as server:
        server.add_survey(PROFILE_SURVEY)
        for index in range(RESPONSES):
            submitted = dt.datetime.combine(DAY, dt.time(9), UTC) + dt.timedelta(minutes=index)
            profile = {"gender": "female", "birth_year": 1960 + index % 40, "region": "Wales"}
            record = response_record(
                profile,
                response_id=FIRST_ID + index,
                submitted_at=submitted,
                account_zone=server.zone,
                panel_id=str(demo_user_id(index + 1)),
            )
            server.add_response(PROFILE_SURVEY_ID, record)
        yield server


@pytest.fixture
def res(mongo_uri, mongo_db, server):
    return extract_resources(mongo_uri, mongo_db.name, server)


@pytest.fixture
def extracted(mongo_db, res):
    """The day extracted into raw responses and profiles, as the hourly schedule leaves it."""
    seed_users(mongo_db, RESPONSES)
    with dg.instance_for_test() as instance:
        assert extract_day(instance, res, DAY).success
        yield instance


def sweep(instance, res, max_deleted_share: float | None = None):
    config = {} if max_deleted_share is None else {"max_deleted_share": max_deleted_share}
    return dg.materialize(
        [surveygizmo_deletions],
        instance=instance,
        resources=res,
        raise_on_error=False,
        run_config={"ops": {"surveygizmo_deletions": {"config": config}}},
    )


def sweep_metadata(result) -> dict:
    if result.success:
        return {
            key: value.value
            for key, value in result.asset_materializations_for_node("surveygizmo_deletions")[0].metadata.items()
        }
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    failure_data = failure.step_failure_data.user_failure_data
    return {key: value.value for key, value in failure_data.metadata.items()} | {
        "description": failure_data.description
    }


def deleted_ids(db) -> set[str]:
    return {doc["response_id"] for doc in db.sg_responses.find({"deleted_at": {"$exists": True}})}


def test_deleted_responses_are_marked_left_out_of_profiles_and_restored(mongo_db, server, res, extracted):
    gone = [str(FIRST_ID + n) for n in (3, 17, 42)]
    for response_id in gone:
        server.delete_response(PROFILE_SURVEY_ID, response_id)
    result = sweep(extracted, res)
    assert result.success
    metadata = sweep_metadata(result)
    assert {k: metadata[k] for k in ("checked", "listed", "newly_deleted", "restored", "listed_not_stored")} == {
        "checked": RESPONSES,
        "listed": RESPONSES - 3,
        "newly_deleted": 3,
        "restored": 0,
        "listed_not_stored": 0,
    }
    assert metadata["api_calls"] == 2  # one page of 500 and the count probe
    assert metadata["days_to_rematerialize"] == [DAY.isoformat()]
    assert deleted_ids(mongo_db) == set(gone)
    assert len(raw_records(mongo_db, DAY.isoformat())) == RESPONSES - 3
    applied = (
        extract_day(extracted, res, DAY).asset_materializations_for_node("users")[0].metadata["responses_applied"].value
    )
    assert applied == RESPONSES - 3

    assert sweep_metadata(sweep(extracted, res))["newly_deleted"] == 0  # a second sweep changes nothing
    server.restore_response(PROFILE_SURVEY_ID, gone[0])
    metadata = sweep_metadata(sweep(extracted, res))
    assert (metadata["newly_deleted"], metadata["restored"]) == (0, 1)
    assert deleted_ids(mongo_db) == set(gone[1:])


def test_a_listing_that_does_not_add_up_marks_nothing(mongo_db, server, res, extracted):
    server.delete_response(PROFILE_SURVEY_ID, FIRST_ID)
    server.inject(dropped_rows(5, times=100))  # every page short of rows its totals count
    result = sweep(extracted, res)
    assert not result.success
    assert "the listing did not add up" in sweep_metadata(result)["description"]
    assert deleted_ids(mongo_db) == set()


def test_deleting_more_than_the_allowed_share_is_refused_unless_raised(mongo_db, server, res, extracted):
    purge = [str(FIRST_ID + n) for n in range(25)]  # 25 of 60: over the 20 always allowed and over 10%
    for response_id in purge:
        server.delete_response(PROFILE_SURVEY_ID, response_id)
    refused = sweep(extracted, res)
    assert not refused.success
    assert "25 of 60 live responses would be marked deleted" in sweep_metadata(refused)["description"]
    assert deleted_ids(mongo_db) == set()

    applied = sweep(extracted, res, max_deleted_share=0.5)
    assert applied.success and sweep_metadata(applied)["newly_deleted"] == 25
    assert deleted_ids(mongo_db) == set(purge)


def test_a_response_listed_again_by_the_extract_is_no_longer_deleted(mongo_db, server, res, extracted):
    server.delete_response(PROFILE_SURVEY_ID, FIRST_ID)
    assert sweep(extracted, res).success and deleted_ids(mongo_db) == {str(FIRST_ID)}
    server.restore_response(PROFILE_SURVEY_ID, FIRST_ID)
    assert extract_day(extracted, res, DAY).success
    assert deleted_ids(mongo_db) == set()


def test_weekly_schedule_runs_the_sweep_and_is_on_by_default():
    assert weekly_deletion_sweep_schedule.job_name == deletion_sweep_job.name
    assert weekly_deletion_sweep_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert weekly_deletion_sweep_schedule.cron_schedule == "30 3 * * 0"
