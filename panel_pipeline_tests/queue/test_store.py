import datetime as dt

import pytest
from bson import ObjectId

from panel_pipeline.queue.store import (
    PAUSED_UNTIL,
    LeaseLost,
    Postpone,
    QueuePolicy,
    RequestRejected,
    WorkQueue,
    process_document,
)
from panel_pipeline_tests.clock import ManualClock


@pytest.fixture
def clock():
    return ManualClock(dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC))


@pytest.fixture
def queue(mongo_db, clock):
    q = WorkQueue(mongo_db.samples, QueuePolicy(lease_seconds=60, max_attempts=3, retry_backoff_seconds=10), clock)
    q.ensure_indexes()
    return q


def insert(queue, n=1):
    return queue.collection.insert_many([{"processed": False, "name": f"s{i}"} for i in range(n)]).inserted_ids


def test_claim_then_complete(queue):
    (doc_id,) = insert(queue)
    doc = queue.claim(doc_id, "run-1")
    assert doc["status"] == "processing" and doc["attempts"] == 1 and doc["run_id"] == "run-1"
    assert queue.claim(doc_id, "run-2") is None
    assert queue.complete(doc_id, "run-1", {"members": 3})
    stored = queue.collection.find_one({"_id": doc_id})
    assert stored["processed"] is True and stored["status"] == "done" and stored["members"] == 3
    assert stored["run_id"] == "run-1" and stored["processed_at"] is not None
    assert "lease_owner" not in stored and "retry_at" not in stored


def test_expired_lease_is_reclaimable_and_old_owner_cannot_finish(queue, clock):
    (doc_id,) = insert(queue)
    queue.claim(doc_id, "run-1")
    assert queue.due_documents(10) == []
    clock.advance(61)
    assert [d["_id"] for d in queue.due_documents(10)] == [doc_id]
    assert queue.claim(doc_id, "run-2")["attempts"] == 2
    assert not queue.complete(doc_id, "run-1", {})
    assert queue.complete(doc_id, "run-2", {})


def test_transient_failure_retries_with_backoff_then_gives_up(queue, clock):
    (doc_id,) = insert(queue)
    for attempt in (1, 2):
        queue.claim(doc_id, f"run-{attempt}")
        assert queue.release(doc_id, f"run-{attempt}", "ConnectionError: boom") == "retry"
        assert queue.claim(doc_id, "too-early") is None
        clock.advance(10 * 2 ** (attempt - 1))
    queue.claim(doc_id, "run-3")
    assert queue.release(doc_id, "run-3", "ConnectionError: boom") == "failed"
    stored = queue.collection.find_one({"_id": doc_id})
    assert stored["processed"] is True and stored["status"] == "failed"
    assert stored["error"] == "gave up after 3 attempts; last error: ConnectionError: boom"


def test_a_document_whose_last_worker_died_is_failed_not_retried_forever(queue, clock):
    (doc_id,) = insert(queue)
    for attempt in range(3):
        assert queue.claim(doc_id, f"run-{attempt}") is not None
        clock.advance(61)
    assert queue.claim(doc_id, "run-4") is None
    stored = queue.collection.find_one({"_id": doc_id})
    assert stored["status"] == "failed" and stored["processed"] is True
    assert "gave up after 3 attempts" in stored["error"] and "lease expired" in stored["error"]


def test_release_owner_frees_everything_a_dead_run_held(queue):
    ids = insert(queue, 3)
    for doc_id in ids[:2]:
        queue.claim(doc_id, "dead-run")
    released = queue.release_owner("dead-run", "run was killed")
    assert set(released) == {str(i) for i in ids[:2]} and set(released.values()) == {"retry"}


def test_process_document_rejects_and_retries(queue):
    rejected_id, crashing_id, good_id = insert(queue, 3)

    def reject(doc):
        raise RequestRejected("size: must be a positive integer, got -5")

    outcome = process_document(queue, rejected_id, "run", reject)
    assert outcome.status == "failed"
    assert queue.collection.find_one({"_id": rejected_id})["error"] == "size: must be a positive integer, got -5"

    def crash(doc):
        raise ConnectionError("lost")

    with pytest.raises(ConnectionError):
        process_document(queue, crashing_id, "run", crash)
    assert queue.collection.find_one({"_id": crashing_id})["status"] == "retry"

    assert process_document(queue, good_id, "run", lambda doc: {"n": 1}).status == "done"
    assert process_document(queue, good_id, "run", lambda doc: {"n": 2}).status == "skipped"


def test_new_documents_pages_with_a_cursor(queue):
    ids = insert(queue, 5)
    first = queue.new_documents(None, 3)
    assert [d["_id"] for d in first] == ids[:3]
    assert [d["_id"] for d in queue.new_documents(first[-1]["_id"], 10)] == ids[3:]
    queue.claim(ids[4], "run")
    assert [d["_id"] for d in queue.new_documents(ids[2], 10)] == [ids[3]]


def test_unknown_document_is_not_claimed(queue):
    assert queue.claim(ObjectId(), "run") is None


def test_postponed_document_waits_without_using_an_attempt(queue, clock):
    (doc_id,) = insert(queue)
    queue.claim(doc_id, "run-1")
    assert queue.postpone(doc_id, "run-1", clock.now() + dt.timedelta(hours=1), "daily quota reached")
    stored = queue.collection.find_one({"_id": doc_id})
    assert stored["status"] == "postponed" and stored["attempts"] == 0 and stored["processed"] is False
    assert queue.claim(doc_id, "run-2") is None
    clock.advance(3600)
    assert queue.claim(doc_id, "run-2")["attempts"] == 1


def test_claims_only_grow_while_attempts_are_given_back_by_postponements(queue, clock):
    (doc_id,) = insert(queue)
    for claim in range(1, 5):
        doc = queue.claim(doc_id, f"run-{claim}")
        assert doc["claims"] == claim and doc["attempts"] == 1
        queue.postpone(doc_id, f"run-{claim}", clock.now(), "waiting for SES events")
    assert queue.due_documents(10)[0]["claims"] == 4


def test_renew_keeps_a_long_job_claimed_and_raises_once_the_lease_is_lost(queue, clock):
    (doc_id,) = insert(queue)
    queue.claim(doc_id, "run-1")
    for _ in range(5):  # five minutes of work, renewed every 50 s on a 60 s lease
        clock.advance(50)
        queue.renew(doc_id, "run-1")
        assert queue.claim(doc_id, "run-2") is None
    assert queue.extend_lease(doc_id, "run-1") and queue.extend_lease(doc_id, "run-1")  # same expiry twice: still held
    clock.advance(61)
    assert queue.claim(doc_id, "run-2") is not None
    assert not queue.extend_lease(doc_id, "run-1")
    with pytest.raises(LeaseLost, match=f"samples document {doc_id}: run run-1 lost its lease"):
        queue.renew(doc_id, "run-1")


def test_a_run_whose_lease_was_taken_mid_work_stops_with_lease_lost(queue, clock):
    (doc_id,) = insert(queue)

    def slow_work(doc):
        clock.advance(61)  # the lease expires mid-work and another run takes the document
        assert queue.claim(doc_id, "run-2") is not None
        return {"members": 3}

    with pytest.raises(LeaseLost, match="run run-1 lost its lease before it could complete it"):
        process_document(queue, doc_id, "run-1", slow_work)
    stored = queue.collection.find_one({"_id": doc_id})
    assert stored["lease_owner"] == "run-2" and "members" not in stored


def test_a_live_lease_on_its_last_attempt_is_never_failed_by_another_claimant(queue, clock):
    (doc_id,) = insert(queue)
    for attempt in range(1, 4):
        queue.claim(doc_id, f"run-{attempt}")
        if attempt < 3:
            clock.advance(61)
    clock.advance(59)  # run-3's lease (the last attempt) is still live
    assert queue.claim(doc_id, "run-4") is None
    stored = queue.collection.find_one({"_id": doc_id})
    assert stored["processed"] is False and stored["lease_owner"] == "run-3" and "error" not in stored
    assert queue.complete(doc_id, "run-3", {"members": 1})


def test_stored_errors_are_redacted(queue, clock):
    (doc_id,) = insert(queue)

    def crash(doc):
        raise ConnectionError("lost while mailing ada@example.com via https://x.example/t?token=abc")

    with pytest.raises(ConnectionError):
        process_document(queue, doc_id, "run-1", crash)
    stored = queue.collection.find_one({"_id": doc_id})
    assert stored["last_error"] == "ConnectionError: lost while mailing <email> via <url>"
    clock.advance(3600)
    queue.claim(doc_id, "run-2")
    queue.postpone(doc_id, "run-2", clock.now(), "paused for bob@example.com")
    assert queue.collection.find_one({"_id": doc_id})["last_error"] == "paused for <email>"


def test_work_that_must_wait_is_postponed_without_using_an_attempt(queue, clock):
    (doc_id,) = insert(queue)
    until = clock.now() + dt.timedelta(minutes=2)

    def not_there_yet(doc):
        raise Postpone("response_id: not listed yet", until)

    outcome = process_document(queue, doc_id, "run-1", not_there_yet)
    stored = queue.collection.find_one({"_id": doc_id})
    assert outcome.status == "postponed" and outcome.error == "response_id: not listed yet"
    assert stored["status"] == "postponed" and stored["attempts"] == 0 and stored["retry_at"] == until
    assert stored["processed"] is False and "lease_owner" not in stored


def test_a_paused_document_is_claimed_by_nobody_until_resumed_and_then_gets_a_new_run_key(queue, clock):
    (doc_id,) = insert(queue)
    assert queue.take(doc_id, "control-1")["processed"] is False  # as it was: queued, never claimed
    assert queue.pause(doc_id, "control-1", "paused by Sam: wrong link sent to sam@example.org")
    paused = queue.collection.find_one({"_id": doc_id})
    assert (paused["status"], paused["attempts"], paused["claims"]) == ("paused", 0, 1)
    assert paused["paused_reason"] == "paused by Sam: wrong link sent to <email>"
    assert "lease_owner" not in paused and paused["retry_at"].year == PAUSED_UNTIL.year
    clock.advance(365 * 24 * 3600)
    assert queue.claim(doc_id, "run-1") is None and queue.due_documents(10) == []
    assert queue.new_documents(None, 10) == [] and queue.collection.find_one({"_id": doc_id})["status"] == "paused"

    assert queue.take(doc_id, "control-2")["status"] == "paused"
    assert queue.resume(doc_id, "control-2")
    resumed = queue.collection.find_one({"_id": doc_id})
    assert (resumed["status"], resumed["attempts"], resumed["claims"]) == ("postponed", 0, 2)
    assert "paused_reason" not in resumed and [d["_id"] for d in queue.due_documents(10)] == [doc_id]
    assert queue.claim(doc_id, "run-1")["claims"] == 3


def test_take_is_refused_while_a_live_lease_holds_the_document_and_works_once_it_expired(queue, clock):
    (doc_id,) = insert(queue)
    queue.claim(doc_id, "run-1")
    assert queue.take(doc_id, "control-1") is None
    assert not queue.pause(doc_id, "control-1", "not its lease")
    clock.advance(61)  # run-1 died
    assert queue.take(doc_id, "control-1")["lease_owner"] == "run-1"
    assert not queue.extend_lease(doc_id, "run-1")


def test_take_ignores_a_postponement_and_cancel_finishes_the_document(queue, clock):
    (doc_id,) = insert(queue)
    queue.claim(doc_id, "run-1")
    queue.postpone(doc_id, "run-1", clock.now() + dt.timedelta(hours=1), "daily quota reached")
    assert queue.take(doc_id, "control-1")["status"] == "postponed"
    assert queue.cancel(doc_id, "control-1", {"counts": {"sent": 3}})
    done = queue.collection.find_one({"_id": doc_id})
    assert (done["processed"], done["status"], done["counts"], done["run_id"]) == (
        True,
        "cancelled",
        {"sent": 3},
        "control-1",
    )
    assert "retry_at" not in done and queue.take(doc_id, "control-2") is None


def test_extend_lease_reading_renews_and_reads_in_one_call(queue, clock):
    (doc_id,) = insert(queue)
    queue.claim(doc_id, "run-1")
    queue.collection.update_one({"_id": doc_id}, {"$set": {"control": "pause"}})
    clock.advance(50)
    assert queue.extend_lease_reading(doc_id, "run-1", ["control"]) == {"_id": doc_id, "control": "pause"}
    clock.advance(50)
    assert queue.claim(doc_id, "run-2") is None  # renewed 50 s ago on a 60 s lease
    assert queue.extend_lease_reading(doc_id, "run-2", ["control"]) is None
