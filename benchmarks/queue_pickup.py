"""Queue pickup: claim-and-complete throughput against a plain find_one_and_update loop, and the cost
of a sensor tick with 1,000,000 processed and 1,000 unprocessed documents (it must use the index)."""

from __future__ import annotations

import time

import dagster as dg
from bson import ObjectId
from pymongo import ReturnDocument

from benchmarks._mongo import throwaway_mongod
from panel_pipeline.queue.sensors import build_queue_sensor
from panel_pipeline.queue.store import WorkQueue
from panel_pipeline.shared.resources import MongoResource

DOCUMENTS = 1_000
PROCESSED = 1_000_000


def insert_unprocessed(collection, n: int) -> list[ObjectId]:
    return collection.insert_many([{"processed": False, "name": f"doc {i}"} for i in range(n)]).inserted_ids


def queue_primitives(collection) -> float:
    queue = WorkQueue(collection)
    queue.ensure_indexes()
    ids = insert_unprocessed(collection, DOCUMENTS)
    start = time.perf_counter()
    for doc_id in ids:
        queue.claim(doc_id, "bench")
        queue.complete(doc_id, "bench", {"result": 1})
    return DOCUMENTS / (time.perf_counter() - start)


def plain_loop(collection) -> float:
    collection.create_index([("processed", 1), ("_id", 1)])
    insert_unprocessed(collection, DOCUMENTS)
    start = time.perf_counter()
    while collection.find_one_and_update(
        {"processed": False}, {"$set": {"processed": True}}, return_document=ReturnDocument.AFTER
    ):
        pass
    return DOCUMENTS / (time.perf_counter() - start)


def sensor_tick(client, uri: str, database: str) -> None:
    collection = client[database].samples
    print(f"inserting {PROCESSED:,} processed documents ...", flush=True)
    batch = [{"processed": True, "status": "done"} for _ in range(10_000)]
    for _ in range(PROCESSED // len(batch)):
        collection.insert_many([dict(doc) for doc in batch], ordered=False)
    WorkQueue(collection).ensure_indexes()
    insert_unprocessed(collection, DOCUMENTS)

    @dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="bench"))
    def bench_asset() -> None: ...

    sensor = build_queue_sensor(
        collection="samples",
        job=dg.define_asset_job("bench_job", [bench_asset]),
        partitions_def=dg.DynamicPartitionsDefinition(name="bench"),
        description="benchmark",
    )
    mongo = MongoResource(uri=uri, database=database)
    with dg.instance_for_test() as instance:
        cursor, timings, requested = None, [], 0
        while True:
            start = time.perf_counter()
            result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"mongo": mongo}))
            timings.append(time.perf_counter() - start)
            cursor = result.cursor
            if not result.run_requests:
                break
            requested += len(result.run_requests)
        print(
            f"sensor ticks over {DOCUMENTS:,} new documents: {len(timings) - 1} ticks of up to 200 requests, "
            f"{requested:,} run requests, {sum(timings[:-1]) / (len(timings) - 1) * 1000:.0f} ms per tick; "
            f"an idle tick (nothing new) {timings[-1] * 1000:.1f} ms"
        )

    queue = WorkQueue(collection)
    for label, query in (
        ("new documents", {"processed": False, "attempts": {"$exists": False}}),
        ("due documents", {"processed": False, "retry_at": {"$lte": queue.clock.now()}}),
    ):
        plan = collection.find(query).sort("_id" if label == "new documents" else "retry_at", 1).limit(200).explain()
        stats = plan["executionStats"]
        winning = plan["queryPlanner"]["winningPlan"]
        print(
            f"{label}: plan {_stages(winning)}, keys examined {stats['totalKeysExamined']:,}, "
            f"documents examined {stats['totalDocsExamined']:,} of {collection.estimated_document_count():,}"
        )


def _stages(plan: dict) -> str:
    stage = plan.get("stage", "?")
    name = f"({plan['indexName']})" if "indexName" in plan else ""
    child = plan.get("inputStage")
    return f"{stage}{name}" + (f" <- {_stages(child)}" if child else "")


def main() -> None:
    with throwaway_mongod() as (client, uri):
        ours = queue_primitives(client.bench.queue_ours)
        plain = plain_loop(client.bench.queue_plain)
        print(
            f"claim-and-complete, {DOCUMENTS:,} documents: queue primitives {ours:,.0f} docs/s, "
            f"plain find_one_and_update loop {plain:,.0f} docs/s, ratio {ours / plain:.2f}"
        )
        sensor_tick(client, uri, "bench_tick")


if __name__ == "__main__":
    main()
