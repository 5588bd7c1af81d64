import datetime as dt
import json
import time

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.queue.sensors import (
    build_queue_sensor,
    build_worker_sensor,
    release_documents_of_run,
    successor_reason,
)
from panel_pipeline.queue.store import QueueCursor
from panel_pipeline.queue.worker import WorkerSlot
from panel_pipeline.shared.contract import PIPELINE_STATE
from panel_pipeline.shared.resources import MongoResource, StandingWorkers

requests_partitions = dg.DynamicPartitionsDefinition(name="test_requests")


@dg.asset(partitions_def=requests_partitions)
def request_asset() -> None: ...


class BatchConfig(dg.Config):
    document_ids: list[str]


@dg.asset
def batch_asset(config: BatchConfig) -> None: ...


request_job = dg.define_asset_job("request_job", selection=[request_asset])
batch_job = dg.define_asset_job("batch_job", selection=[batch_asset])
request_sensor = build_queue_sensor(
    collection="samples", job=request_job, partitions_def=requests_partitions, description="test"
)
batch_sensor = build_queue_sensor(
    collection="transactions", job=batch_job, batch_op_name="batch_asset", description="test"
)


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def mongo(mongo_uri, mongo_db):
    return MongoResource(uri=mongo_uri, database=mongo_db.name)


def tick(sensor, instance, mongo, cursor=None):
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"mongo": mongo}))


def test_new_documents_give_one_run_each_and_the_next_tick_none(instance, mongo, mongo_db):
    ids = [str(i) for i in mongo_db.samples.insert_many([{"processed": False} for _ in range(3)]).inserted_ids]
    mongo_db.samples.insert_one({"processed": True, "status": "done"})
    first = tick(request_sensor, instance, mongo)
    assert [r.partition_key for r in first.run_requests] == ids
    assert [r.run_key for r in first.run_requests] == [f"samples:{i}:0" for i in ids]
    assert first.run_requests[0].tags["panel/document_id"] == ids[0]
    assert first.dynamic_partitions_requests[0].partition_keys == ids
    assert json.loads(first.cursor)["last_id"] == ids[-1]

    second = tick(request_sensor, instance, mongo, cursor=first.cursor)
    assert second.run_requests == [] or second.run_requests is None
    assert second.skip_reason.skip_message == "no unprocessed samples"
    assert second.cursor == first.cursor

    new_id = str(mongo_db.samples.insert_one({"processed": False}).inserted_id)
    third = tick(request_sensor, instance, mongo, cursor=second.cursor)
    assert [r.partition_key for r in third.run_requests] == [new_id]


def test_daemon_style_evaluation_accepts_the_partitioned_requests(instance, mongo, mongo_db):
    mongo_db.samples.insert_one({"processed": False})
    defs = dg.Definitions(
        assets=[request_asset], jobs=[request_job], sensors=[request_sensor], resources={"mongo": mongo}
    )
    context = dg.build_sensor_context(instance_ref=instance.get_ref(), definitions=defs, resources={"mongo": mongo})
    data = defs.resolve_sensor_def("samples_queue_sensor").evaluate_tick(context)
    assert len(data.run_requests) == 1


def test_late_insert_with_an_older_id_is_found_by_the_full_scan(instance, mongo, mongo_db):
    first = tick(request_sensor, instance, mongo, cursor=None)
    mongo_db.samples.insert_one({"processed": False})
    newest = tick(request_sensor, instance, mongo, cursor=first.cursor)
    older_id = ObjectId.from_datetime(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    mongo_db.samples.insert_one({"_id": older_id, "processed": False})
    assert tick(request_sensor, instance, mongo, cursor=newest.cursor).run_requests in ([], None)
    stale = QueueCursor.parse(newest.cursor)
    stale = QueueCursor(stale.last_id, stale.full_scan_at - dt.timedelta(minutes=10))
    rescanned = tick(request_sensor, instance, mongo, cursor=stale.serialize())
    assert str(older_id) in [r.partition_key for r in rescanned.run_requests]


def test_expired_lease_gives_a_new_run_key(instance, mongo, mongo_db):
    queue = mongo.work_queue("samples")
    doc_id = mongo_db.samples.insert_one({"processed": False}).inserted_id
    queue.claim(doc_id, "run-1")
    mongo_db.samples.update_one({"_id": doc_id}, {"$set": {"retry_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}})
    result = tick(request_sensor, instance, mongo, cursor=None)
    assert [r.run_key for r in result.run_requests] == [f"samples:{doc_id}:1"]


def test_batch_sensor_requests_one_run_with_the_ids_in_its_config(instance, mongo, mongo_db):
    ids = [str(i) for i in mongo_db.transactions.insert_many([{"processed": False} for _ in range(4)]).inserted_ids]
    result = tick(batch_sensor, instance, mongo)
    (request,) = result.run_requests
    assert request.run_config == {"ops": {"batch_asset": {"config": {"document_ids": ids}}}}
    assert request.tags["panel/document_count"] == "4"
    assert tick(batch_sensor, instance, mongo, cursor=None).run_requests[0].run_key == request.run_key


def test_mongo_down_skips_with_a_clear_message_and_keeps_the_cursor(instance):
    down = MongoResource(uri="mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300", database="panel")
    result = tick(request_sensor, instance, down, cursor='{"last_id": null, "full_scan_at": null}')
    assert "MongoDB is unreachable" in result.skip_reason.skip_message
    assert result.cursor is None
    assert "mongodb://" not in result.skip_reason.skip_message


def test_failed_run_releases_its_documents(instance, mongo, mongo_db):
    doc_id = mongo_db.samples.insert_one({"processed": False}).inserted_id
    mongo.work_queue("samples").claim(doc_id, "the-run")
    assert release_documents_of_run(mongo, ["samples"], "the-run", "run the-run failed: boom") == {str(doc_id): "retry"}
    assert mongo_db.samples.find_one({"_id": doc_id})["last_error"] == "run the-run failed: boom"


def test_tags_from_document_fields(instance, mongo, mongo_db):
    tagged = build_queue_sensor(
        collection="samples",
        job=request_job,
        partitions_def=requests_partitions,
        description="test",
        tag_fields=["kind"],
        tags_for=lambda doc: {"panel/mail_kind": doc.get("kind", "bulk")},
    )
    mongo_db.samples.insert_one({"processed": False, "kind": "transactional"})
    (request,) = tick(tagged, instance, mongo).run_requests
    assert request.tags["panel/mail_kind"] == "transactional"


def postpone_until_due(queue, doc_id, owner):
    """Claim, then postpone into the past: due again at once, as after a daily-quota pause."""
    assert queue.claim(doc_id, owner) is not None
    assert queue.postpone(doc_id, owner, dt.datetime(2020, 1, 1, tzinfo=dt.UTC), "daily quota reached")


def test_a_postponed_document_due_again_gets_a_run_key_never_used_before(instance, mongo, mongo_db):
    queue = mongo.work_queue("samples")
    doc_id = mongo_db.samples.insert_one({"processed": False}).inserted_id
    used = [r.run_key for r in tick(request_sensor, instance, mongo).run_requests]
    for claim in range(1, 4):  # postponed over and over: each time due again with a key of its own
        postpone_until_due(queue, doc_id, f"run-{claim}")
        (request,) = tick(request_sensor, instance, mongo).run_requests
        assert request.run_key not in used
        used.append(request.run_key)
    assert used == [f"samples:{doc_id}:{n}" for n in range(4)]
    assert mongo_db.samples.find_one({"_id": doc_id})["attempts"] == 0  # postponements use no attempt


def test_a_postponed_transactional_batch_due_again_gets_a_new_run_key(instance, mongo, mongo_db):
    queue = mongo.work_queue("transactions")
    doc_id = mongo_db.transactions.insert_one({"processed": False}).inserted_id
    (first,) = tick(batch_sensor, instance, mongo).run_requests
    postpone_until_due(queue, doc_id, "batch-run-1")
    (again,) = tick(batch_sensor, instance, mongo).run_requests
    assert again.run_key != first.run_key
    assert again.run_config == first.run_config


def test_a_document_claimed_before_the_claim_counter_gets_keys_no_old_run_used(instance, mongo, mongo_db):
    # Written by the old code: claimed once, then postponed (attempts given back), so its old key was `:0`.
    doc_id = mongo_db.samples.insert_one(
        {"processed": False, "status": "postponed", "attempts": 0, "retry_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}
    ).inserted_id
    (request,) = tick(request_sensor, instance, mongo).run_requests
    assert request.run_key == f"samples:{doc_id}:1000"
    postpone_until_due(mongo.work_queue("samples"), doc_id, "run-1")
    assert [r.run_key for r in tick(request_sensor, instance, mongo).run_requests] == [f"samples:{doc_id}:1001"]


served_sensor = build_queue_sensor(
    collection="transactions",
    name="served_transactions_sensor",
    job=batch_job,
    batch_op_name="batch_asset",
    description="test",
    served_by="transactions",
)


def test_a_backstop_sensor_stands_back_while_its_worker_serves_and_acts_when_it_does_not(instance, mongo, mongo_db):
    mongo_db.transactions.insert_one({"processed": False})
    slot = WorkerSlot(mongo_db[PIPELINE_STATE], "transactions", "worker-run")
    assert slot.take(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))
    served = tick(served_sensor, instance, mongo)
    assert not served.run_requests
    assert (
        served.skip_reason.skip_message == "the standing transactions worker (run worker-run) serves transactions now"
    )
    slot.release()  # the worker's window ended (or its lease lapsed): the backstop picks the work up
    assert len(tick(served_sensor, instance, mongo).run_requests) == 1


def test_a_successor_is_asked_for_when_none_runs_or_the_window_ends_soon(instance):
    now = dt.datetime.now(dt.UTC)
    handover = dt.timedelta(minutes=2)
    run = dg.DagsterRun(job_name="worker_job", run_id="run-1")
    serving_for = {"owner": "run-1", "serve_until": now + dt.timedelta(minutes=8)}
    ending_soon = {"owner": "run-1", "serve_until": now + dt.timedelta(seconds=90)}
    predecessor = {"owner": "run-0", "serve_until": now + dt.timedelta(seconds=30)}
    assert successor_reason([], None, now, handover, instance) == "no worker running"
    assert successor_reason([run], serving_for, now, handover, instance) is None
    assert successor_reason([run], ending_soon, now, handover, instance) == "hand-over: its window ends soon"
    assert successor_reason([run], predecessor, now, handover, instance) is None  # it waits for the slot
    assert successor_reason([run, run], ending_soon, now, handover, instance) is None  # its successor exists


@dg.op
def serve_duty() -> None: ...


@dg.job
def duty_worker_job() -> None:
    serve_duty()


duty_worker_sensor = build_worker_sensor(duty="duty", job=duty_worker_job, op_name="serve_duty", description="test")


def started_runs(instance, seconds_ago: float, count: int) -> list[str]:
    run_ids = []
    for _ in range(count):
        run = instance.create_run_for_job(job_def=duty_worker_job)
        start = dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=run.job_name)
        instance.report_dagster_event(start, run.run_id, timestamp=time.time() - seconds_ago)
        run_ids.append(run.run_id)
    return run_ids


def test_worker_runs_a_hard_stop_left_started_are_failed_and_a_new_worker_is_asked_for(mongo, mongo_db):
    """`kill -9` (or a reboot) under `make run` leaves worker runs STARTED for good: the local run
    launcher cannot tell run monitoring they died. Older than a window and a hand-over without the
    slot, they cannot be live: the sensor fails them and asks for a worker. A younger run without the
    slot (its slot document gone, say) is not failed, only given a successor."""
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"mongo": mongo, "workers": StandingWorkers()})
        stale = started_runs(instance, 3600, 2)
        (request,) = duty_worker_sensor(context).run_requests
        assert request.tags["panel/why"] == "no worker running"
        assert {instance.get_run_by_id(run_id).status for run_id in stale} == {dg.DagsterRunStatus.FAILURE}

        (young,) = started_runs(instance, 120, 1)
        (request,) = duty_worker_sensor(context).run_requests
        assert request.tags["panel/why"] == f"run {young} started 30+ s ago but does not serve (stopped or killed)"
        assert instance.get_run_by_id(young).status == dg.DagsterRunStatus.STARTED
