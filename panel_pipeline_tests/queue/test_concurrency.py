"""Many claimers at once, and a worker killed mid-way, against the real mongod."""

import multiprocessing
import os
import random
import signal
import threading
import time

import pymongo
from bson import ObjectId

from panel_pipeline.queue.store import QueuePolicy, WorkQueue

DOCUMENTS = 300


def claim_all(uri: str, db_name: str, owner: str, ids: list[ObjectId]) -> None:
    """Try to claim every document; record each successful claim as a side effect."""
    with pymongo.MongoClient(uri, tz_aware=True) as client:
        queue = WorkQueue(client[db_name].samples)
        for doc_id in random.Random(owner).sample(ids, len(ids)):
            if queue.claim(doc_id, owner) is not None:
                client[db_name].side_effects.insert_one({"doc_id": doc_id, "owner": owner})
                queue.complete(doc_id, owner, {})


def hold_forever(uri: str, db_name: str, doc_id: ObjectId) -> None:
    with pymongo.MongoClient(uri, tz_aware=True) as client:
        WorkQueue(client[db_name].samples, QueuePolicy(lease_seconds=1)).claim(doc_id, f"pid-{os.getpid()}")
        client[db_name].markers.insert_one({"claimed": True})
        time.sleep(600)


def assert_each_claimed_once(db, ids):
    per_doc = {
        row["_id"]: row["n"] for row in db.side_effects.aggregate([{"$group": {"_id": "$doc_id", "n": {"$sum": 1}}}])
    }
    assert per_doc == {doc_id: 1 for doc_id in ids}
    assert db.samples.count_documents({"processed": True, "status": "done"}) == len(ids)


def test_threads_claim_each_document_exactly_once(mongo_uri, mongo_db):
    ids = mongo_db.samples.insert_many([{"processed": False} for _ in range(DOCUMENTS)]).inserted_ids
    threads = [
        threading.Thread(target=claim_all, args=(mongo_uri, mongo_db.name, f"thread-{n}", ids)) for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert_each_claimed_once(mongo_db, ids)


def test_processes_claim_each_document_exactly_once(mongo_uri, mongo_db):
    ids = mongo_db.samples.insert_many([{"processed": False} for _ in range(DOCUMENTS)]).inserted_ids
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=claim_all, args=(mongo_uri, mongo_db.name, f"process-{n}", ids)) for n in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert_each_claimed_once(mongo_db, ids)


def test_killed_worker_document_is_reclaimed_after_the_lease_and_finished_once(mongo_uri, mongo_db):
    doc_id = mongo_db.samples.insert_one({"processed": False}).inserted_id
    worker = multiprocessing.get_context("spawn").Process(target=hold_forever, args=(mongo_uri, mongo_db.name, doc_id))
    worker.start()
    deadline = time.monotonic() + 60
    while mongo_db.markers.count_documents({}) == 0:
        assert time.monotonic() < deadline, "worker never claimed"
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()

    queue = WorkQueue(mongo_db.samples, QueuePolicy(lease_seconds=1))
    assert queue.claim(doc_id, "rescuer") is None  # the dead worker's lease still runs
    while not queue.due_documents(10):
        assert time.monotonic() < deadline, "lease never expired"
        time.sleep(0.1)
    claim_all(mongo_uri, mongo_db.name, "rescuer", [doc_id])
    assert_each_claimed_once(mongo_db, [doc_id])
    assert mongo_db.samples.find_one({"_id": doc_id})["attempts"] == 2
