"""The fieldwork sensor on a real mongod: a run per open-fieldwork sample, none for closed ones or
samples without news, none while a run of that sample is in flight."""

import datetime as dt

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.sampler.assets import sample_completes, sample_directory, sample_fieldwork
from panel_pipeline.sampler.jobs import sample_fieldwork_job
from panel_pipeline.sampler.resources import CompletesFiles, FieldworkTiming
from panel_pipeline.sampler.sensors import fieldwork_sensor
from panel_pipeline.shared.resources import ContactBudget, MongoResource

UTC = dt.UTC


@pytest.fixture
def mongo(mongo_uri, mongo_db):
    return MongoResource(uri=mongo_uri, database=mongo_db.name)


def sample(mongo_db, status, survey_id, close_at=None, name="s"):
    state = {"status": status, "close_at": close_at or dt.datetime.now(UTC) + dt.timedelta(days=10)}
    return mongo_db.samples.insert_one(
        {"name": name, "survey_id": survey_id, "processed": True, "status": "done", "fieldwork_state": state}
    ).inserted_id


def tick(instance, mongo, cursor=None, pass_seconds=0.001):
    """One sensor tick; the default pass length puts every tick in a bucket of its own."""
    timing = FieldworkTiming(pass_seconds=pass_seconds)
    context = dg.build_sensor_context(
        instance=instance, resources={"mongo": mongo, "fieldwork_timing": timing}, cursor=cursor
    )
    result = fieldwork_sensor(context)
    return result, context.cursor if result.cursor is None else result.cursor


def test_one_run_per_open_sample_and_none_for_closed_ones(mongo, mongo_db):
    first, second = sample(mongo_db, "open", "11"), sample(mongo_db, "open", 12)
    sample(mongo_db, "closed", "13")
    with dg.instance_for_test() as instance:
        result, cursor = tick(instance, mongo)
        assert sorted(r.partition_key for r in result.run_requests) == sorted([str(first), str(second)])
        assert all(r.run_key.startswith(f"fieldwork:{r.partition_key}:") for r in result.run_requests)

        again, cursor = tick(instance, mongo, cursor)
        assert not again.run_requests  # nothing changed since

        mongo_db.transactions.insert_one({"user_id": ObjectId(), "survey_id": 12, "created_at": dt.datetime.now(UTC)})
        news, cursor = tick(instance, mongo, cursor)
        assert [r.partition_key for r in news.run_requests] == [str(second)]


def test_a_sample_past_its_close_at_is_looked_at_again(mongo, mongo_db):
    due = sample(mongo_db, "open", "21", close_at=dt.datetime.now(UTC) - dt.timedelta(minutes=1))
    with dg.instance_for_test() as instance:
        _, cursor = tick(instance, mongo)
        result, _ = tick(instance, mongo, cursor)
        assert [r.partition_key for r in result.run_requests] == [str(due)]


def test_no_second_run_while_one_of_the_sample_is_in_flight(mongo, mongo_db):
    busy = sample(mongo_db, "open", "31")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sample_requests", [str(busy)])
        job = dg.Definitions(
            assets=[sample_fieldwork, sample_completes, sample_directory],
            jobs=[sample_fieldwork_job],
            resources={
                "fieldwork_timing": FieldworkTiming(),
                "mongo": mongo,
                "contact_budget": ContactBudget(),
                "completes_files": CompletesFiles(directory="unused"),
            },
        ).resolve_job_def("sample_fieldwork_job")
        instance.create_run_for_job(
            job_def=job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": str(busy)}
        )
        result, _ = tick(instance, mongo)
        assert not result.run_requests


def test_news_within_a_pass_waits_for_the_next_one(mongo, mongo_db):
    sample(mongo_db, "open", "41")
    with dg.instance_for_test() as instance:
        _, cursor = tick(instance, mongo, pass_seconds=3600)
        mongo_db.transactions.insert_one({"user_id": ObjectId(), "survey_id": "41", "created_at": dt.datetime.now(UTC)})
        result, _ = tick(instance, mongo, cursor, pass_seconds=3600)
        assert not result.run_requests  # one pass per sample per hour, news or not


def test_a_fieldwork_run_is_tagged_with_the_sample_name(mongo, mongo_db):
    named = sample(mongo_db, "open", "51", name="Omnibus wave 12 for a@b.example")
    with dg.instance_for_test() as instance:
        (run_request,) = tick(instance, mongo)[0].run_requests
    assert run_request.tags == {"panel/sample_id": str(named), "panel/sample_name": "Omnibus_wave_12_for_email"}
