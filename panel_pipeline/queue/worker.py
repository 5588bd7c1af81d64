"""Standing workers: one run serves a latency-sensitive duty (transactional mail, newcomers of dynamic
samples) for a bounded window, woken by a MongoDB change stream, instead of a new run process per
sensor tick. Free of Dagster: the Dagster side (the worker's job, the sensor that keeps one running,
the polling sensors that stand back while it lives) is in each part and in `queue/sensors.py`.

Invariants:
- **One serves at a time.** A duty's slot (`pipeline_state`, `_id: "worker:<duty>"`) is a lease
  `{owner, until, serve_until}` taken atomically and renewed after every step and every wait. A
  successor started before its predecessor's window ends waits for the slot, which the predecessor
  gives up when its window ends; a killed worker's slot lapses after `slot_seconds`.
- **The change stream only wakes the worker.** What it does comes from the same indexed queries the
  polling sensors make, run first thing (the backlog) and after every wake-up or `poll_seconds`
  without one. So a worker that was down, or a stream that broke, misses nothing, and no resume
  token is kept that could outlive the oplog. Without change streams (a standalone mongod) it polls.
- **The polling sensors are the backstop.** They ask `serving_worker(...)`: while a worker holds a
  live slot they leave the duty to it; when none does, they do the work as before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.contract import PIPELINE_STATE

log = logging.getLogger(__name__)

SLOT_SECONDS = 15.0  # a worker that stops renewing (killed) frees its duty this much later
SLOT_WAIT_SECONDS = 0.25  # a successor looks for its predecessor's slot this often (the hand-over gap)
POLL_SECONDS = 2.0  # look at the queries this often even when nothing woke the worker
WAKE_WAIT_MS = 500  # one change-stream getMore waits this long on the server


def slot_id(duty: str) -> str:
    return f"worker:{duty}"


class WorkerSlot:
    """The lease that makes one worker (or one update run) the one serving `duty`."""

    def __init__(
        self, state: Collection, duty: str, owner: str, clock: Clock = SYSTEM_CLOCK, lease_seconds: float = SLOT_SECONDS
    ) -> None:
        self.state = state
        self.duty = duty
        self.owner = owner
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.serve_until: dt.datetime | None = None

    def take(self, serve_until: dt.datetime) -> bool:
        """Hold (or keep holding) the slot, saying it serves until `serve_until`; False while another holds it."""
        now = self.clock.now()
        try:
            self.state.find_one_and_update(
                {"_id": slot_id(self.duty), "$or": [{"owner": self.owner}, {"until": {"$lt": now}}]},
                {
                    "$set": {
                        "owner": self.owner,
                        "until": now + dt.timedelta(seconds=self.lease_seconds),
                        "serve_until": serve_until,
                        "beat_at": now,
                    }
                },
                upsert=True,
            )
        except DuplicateKeyError:  # the slot exists and another owner's lease is live
            return False
        self.serve_until = serve_until
        return True

    def renew(self) -> bool:
        """Keep the slot taken last (called while a long step works); False if it was lost."""
        return self.serve_until is not None and self.take(self.serve_until)

    def release(self) -> None:
        self.state.delete_one({"_id": slot_id(self.duty), "owner": self.owner})


def serving_worker(db: Database, duty: str, now: dt.datetime) -> Mapping[str, Any] | None:
    """The slot of the worker serving `duty` now (its `owner` run id, `serve_until`), if one does."""
    return db[PIPELINE_STATE].find_one({"_id": slot_id(duty), "until": {"$gt": now}})


class Doorbell:
    """Rings when the watched collection gets a change matching `pipeline`; the change itself is not used."""

    def __init__(self, collection: Collection, pipeline: Sequence[Mapping[str, Any]], clock: Clock = SYSTEM_CLOCK):
        self.collection = collection
        self.pipeline = list(pipeline)
        self.clock = clock
        self._stream: Any = None
        self.supported = True

    def wait(self, seconds: float) -> bool:
        """Block up to `seconds` for a change; True if one came. Falls back to sleeping when the
        server has no change streams or the stream broke (it is reopened on the next wait)."""
        deadline = self.clock.monotonic() + seconds
        while (left := deadline - self.clock.monotonic()) > 0:
            stream = self._open()
            if stream is None:
                self.clock.sleep(left)
                return False
            try:
                if stream.try_next() is not None:
                    return True
            except PyMongoError as exc:
                log.warning("change stream on %s broke (%s); reopening", self.collection.name, type(exc).__name__)
                self.close()
                self.clock.sleep(min(left, 1.0))
                return True  # what came while it was down is not missed: the caller steps once more
        return False

    def open(self) -> None:
        """Start watching now: a change after this rings even if it comes before the first `wait`."""
        self._open()

    def _open(self) -> Any:
        if self._stream is None and self.supported:
            try:
                self._stream = self.collection.watch(self.pipeline, max_await_time_ms=WAKE_WAIT_MS)
            except OperationFailure as exc:  # e.g. a standalone mongod: no change streams
                log.warning("no change streams on %s (%s): polling instead", self.collection.name, exc.code)
                self.supported = False
            except PyMongoError as exc:
                log.warning("cannot watch %s yet (%s)", self.collection.name, type(exc).__name__)
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(PyMongoError):
                self._stream.close()
            self._stream = None


def inserts_matching(match: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A change-stream pipeline for inserts of documents matching `match` (a query on the document)."""
    return [{"$match": {"operationType": "insert", **_on_full_document(match)}}]


def _on_full_document(match: Mapping[str, Any]) -> dict[str, Any]:
    """The same query on a change event: field names under `fullDocument`, `$or`/`$and` parts alike."""
    return {
        key if key.startswith("$") else f"fullDocument.{key}": (
            [_on_full_document(part) for part in value] if key in ("$or", "$and", "$nor") else value
        )
        for key, value in match.items()
    }


@dataclass
class ServeReport:
    steps: int = 0
    items: int = 0
    wakeups: int = 0
    waited_for_slot_seconds: float = 0.0
    lost_slot: bool = False  # another worker took the slot (this one's renewal came too late): it stopped early

    def summary(self) -> str:
        ended = "; lost the slot to another worker and stopped early" if self.lost_slot else ""
        return (
            f"{self.items} item(s) in {self.steps} step(s), woken {self.wakeups} time(s), "
            f"{self.waited_for_slot_seconds:.1f} s waiting for the slot{ended}"
        )


Step = Callable[[], int]  # does whatever is due now; returns how many items it handled


def serve(
    slot: WorkerSlot,
    step: Step,
    doorbell: Doorbell,
    serve_seconds: float,
    poll_seconds: float = POLL_SECONDS,
    clock: Clock = SYSTEM_CLOCK,
) -> ServeReport:
    """Take the duty's slot (waiting for a predecessor to give it up), then step whenever woken or
    every `poll_seconds` until `serve_seconds` have passed; give the slot up at the end."""
    report = ServeReport()
    started = clock.monotonic()
    end = started + serve_seconds
    serve_until = clock.now() + dt.timedelta(seconds=serve_seconds)
    while not slot.take(serve_until):
        if clock.monotonic() >= end:
            return report
        clock.sleep(SLOT_WAIT_SECONDS)
    report.waited_for_slot_seconds = clock.monotonic() - started
    # Watching before the first step: an insert between a step that found nothing and the wait
    # would otherwise wait for the next poll.
    doorbell.open()
    try:
        while clock.monotonic() < end:
            handled = step()
            report.steps += 1
            report.items += handled
            if not slot.renew():
                report.lost_slot = True
                break
            if handled:
                continue  # more may have arrived while this step ran
            if doorbell.wait(min(poll_seconds, max(end - clock.monotonic(), 0.0))):
                report.wakeups += 1
            if not slot.renew():
                report.lost_slot = True
                break
    finally:
        doorbell.close()
        slot.release()
    return report
