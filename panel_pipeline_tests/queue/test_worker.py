"""Standing workers against a real mongod: the slot makes one serve at a time, the change stream
wakes it, the backlog is served first, and a successor takes over without a gap or an overlap."""

import datetime as dt
import threading
import time

from panel_pipeline.queue.worker import Doorbell, ServeReport, WorkerSlot, inserts_matching, serve, serving_worker
from panel_pipeline.shared.contract import PIPELINE_STATE
from panel_pipeline_tests.clock import ManualClock

START = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def test_one_owner_holds_the_slot_until_it_lets_go_or_its_lease_lapses(mongo_db):
    clock = ManualClock(START)
    first = WorkerSlot(mongo_db[PIPELINE_STATE], "mail", "run-1", clock, lease_seconds=15)
    second = WorkerSlot(mongo_db[PIPELINE_STATE], "mail", "run-2", clock, lease_seconds=15)
    until = START + dt.timedelta(minutes=10)
    assert first.take(until)
    assert not second.take(until)
    clock.advance(10)
    assert first.renew() and not second.take(until)
    assert serving_worker(mongo_db, "mail", clock.now())["owner"] == "run-1"
    clock.advance(16)  # run-1 was killed: it renews no more
    assert serving_worker(mongo_db, "mail", clock.now()) is None
    assert second.take(until) and not first.renew()
    second.release()
    assert serving_worker(mongo_db, "mail", clock.now()) is None


def test_the_doorbell_rings_for_matching_inserts_only(mongo_db):
    match = {"$or": [{"kind": "transactional"}, {"delivery": "prompt"}]}
    doorbell = Doorbell(mongo_db.mailings, inserts_matching(match))
    try:
        assert not doorbell.wait(0.3)  # opens the stream; nothing yet
        mongo_db.mailings.insert_one({"kind": "bulk"})
        assert not doorbell.wait(0.6)
        mongo_db.mailings.insert_one({"kind": "bulk", "delivery": "prompt"})
        assert doorbell.wait(5)
        mongo_db.mailings.insert_one({"kind": "transactional"})
        assert doorbell.wait(5)
    finally:
        doorbell.close()


def test_a_worker_serves_the_backlog_then_each_insert_as_it_comes(mongo_db):
    mongo_db.jobs.insert_many([{"n": n, "done": False} for n in range(3)])  # waiting before the worker starts
    handled: list[float] = []

    def step() -> int:
        done = mongo_db.jobs.update_many({"done": False}, {"$set": {"done": True, "at": time.monotonic()}})
        handled.extend([time.monotonic()] * done.modified_count)
        return done.modified_count

    slot = WorkerSlot(mongo_db[PIPELINE_STATE], "jobs", "run-1")
    doorbell = Doorbell(mongo_db.jobs, inserts_matching({}))
    reports: list[ServeReport] = []
    # The 60 s poll never comes within the 10 s window: the insert is served only if it rings.
    worker = threading.Thread(
        target=lambda: reports.append(serve(slot, step, doorbell, 10.0, poll_seconds=60)), daemon=True
    )
    worker.start()
    try:
        wait_until(lambda: len(handled) == 3)
        mongo_db.jobs.insert_one({"n": 3, "done": False})
        wait_until(lambda: len(handled) == 4)
    finally:
        worker.join()
    assert reports[0].wakeups >= 1 and reports[0].items == 4
    assert serving_worker(mongo_db, "jobs", dt.datetime.now(dt.UTC)) is None  # given up at the window's end


def test_a_successor_waits_for_the_slot_and_takes_over_with_no_overlap(mongo_db):
    serving: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    active: set[str] = set()
    lock = threading.Lock()

    def stepper(owner: str):
        def step() -> int:
            with lock:
                active.add(owner)
                if len(active) > 1:
                    overlaps.append(tuple(sorted(active)))
                serving.append(owner)
            time.sleep(0.05)
            with lock:
                active.discard(owner)
            return 0

        return step

    def worker(owner: str, seconds: float) -> threading.Thread:
        slot = WorkerSlot(mongo_db[PIPELINE_STATE], "jobs", owner)
        doorbell = Doorbell(mongo_db.jobs, inserts_matching({}))
        thread = threading.Thread(
            target=serve, args=(slot, stepper(owner), doorbell, seconds), kwargs={"poll_seconds": 0.2}
        )
        thread.start()
        return thread

    first = worker("run-1", 2.0)
    wait_until(lambda: "run-1" in serving)
    second = worker("run-2", 4.0)  # started before run-1's window ends, as the sensor starts a successor
    first.join()
    second.join()
    assert overlaps == []
    handover = serving.index("run-2")
    assert set(serving[:handover]) == {"run-1"} and set(serving[handover:]) == {"run-2"}


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_prompt_and_transactional_inserts_are_matched_on_the_change_event():
    assert inserts_matching({"$or": [{"kind": "transactional"}, {"delivery": "prompt"}], "processed": False}) == [
        {
            "$match": {
                "operationType": "insert",
                "$or": [{"fullDocument.kind": "transactional"}, {"fullDocument.delivery": "prompt"}],
                "fullDocument.processed": False,
            }
        }
    ]


def test_a_worker_whose_slot_was_taken_stops_and_says_so(mongo_db):
    """A worker stalled past its lease (a long GC pause, a frozen VM) finds a successor serving: it
    must stop at once rather than serve beside it, and its report says why it ended early."""
    clock = ManualClock(START)
    slot = WorkerSlot(mongo_db[PIPELINE_STATE], "jobs", "run-1", clock, lease_seconds=15)
    thief = WorkerSlot(mongo_db[PIPELINE_STATE], "jobs", "run-2", clock, lease_seconds=15)

    def stalled_step() -> int:
        clock.advance(20)  # past the lease: run-2 takes the slot meanwhile
        assert thief.take(START + dt.timedelta(minutes=10))
        return 1

    report = serve(slot, stalled_step, Doorbell(mongo_db.jobs, inserts_matching({})), 600.0, clock=clock)
    assert report.lost_slot and report.steps == 1
    assert "lost the slot" in report.summary()
    assert serving_worker(mongo_db, "jobs", clock.now())["owner"] == "run-2"
