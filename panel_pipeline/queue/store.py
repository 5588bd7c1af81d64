"""The `processed: false` queue contract on one Mongo collection, free of Dagster.

A document moves through these states (fields written by the pipeline in brackets):

    queued        processed=false, no attempts, no claims        (inserted by the backend)
    processing    status=processing, lease_owner, attempts+=1, claims+=1, retry_at=lease expiry
    retry         status=retry, last_error, retry_at=now+backoff   (a transient failure)
    postponed     status=postponed, retry_at=until, attempts-=1    (work that must wait: `Postpone`, e.g. a quota)
    paused        status=paused, paused_reason, paused_at, retry_at=PAUSED_UNTIL, attempts-=1
                  (an operator's or a policy's pause: claimable by nobody until `resume`)
    done/failed   processed=true, status, processed_at, run_id, error on failure
    cancelled     processed=true, status=cancelled, processed_at, run_id   (an operator's cancel)

Transitions out of `processing` are the lease owner's: complete (done), fail, release (retry),
postpone, pause, cancel. `take` is how a control gets there from any other unfinished state: it
claims a document no live lease holds, whatever its retry time (queued, retry, postponed, paused,
or an expired lease), and returns it as it was, so the control knows what it is pausing, resuming
or cancelling. `resume` hands a taken paused document back as `postponed` until now (`resumed_at`
set): claimable at once, under a new `claims` (the take counted one), so the next run key is new. A paused document
is never claimed (its `retry_at` never comes), and a cancelled one is finished like a failed one.

`retry_at` is the one field that says when an unprocessed document may be claimed again: the
lease expiry while it is processing (pushed on by `extend_lease`/`renew` while the work goes on),
the backoff time after a transient failure. So an expired lease and a due retry are the same
indexed query, and a worker killed mid-way is recovered without a reaper. A document that has used
`max_attempts` attempts is failed, not retried forever; a live lease is never failed that way.

`attempts` counts toward `max_attempts` (a postponement gives its attempt back); `claims` counts
every claim and never goes down, so it names each claim once (the sensors' run keys use it). A
document claimed before `claims` existed counts from LEGACY_CLAIMS_START, above any attempts count.
Only the lease owner can complete, fail, release, postpone, pause, cancel or renew; one that finds its lease gone
raises (or is told by a False) and stops: `LeaseLost`. Stored errors pass through
`panel_pipeline.shared.privacy` (redacted, clipped). The statuses are `shared.contract`'s; times
come from the queue's `Clock`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.collection import Collection

from panel_pipeline.shared.backoff import backoff_seconds
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock
from panel_pipeline.shared.contract import CANCELLED, DONE, FAILED, PAUSED, POSTPONED, PROCESSING, RETRY
from panel_pipeline.shared.privacy import clip, describe_error, redact

Document = dict[str, Any]

SKIPPED = "skipped"  # an Outcome only: the document was not claimable by this run (never stored)
LEGACY_CLAIMS_START = 1000  # above any attempts count a run key was built from before `claims`
# A paused document's `retry_at`: a time that never comes, so no claim, due query or give-up touches it.
PAUSED_UNTIL = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)


@dataclass(frozen=True)
class QueuePolicy:
    lease_seconds: float = 300.0
    max_attempts: int = 3
    retry_backoff_seconds: float = 10.0

    def backoff(self, attempts: int) -> dt.timedelta:
        return dt.timedelta(seconds=backoff_seconds(attempts - 1, self.retry_backoff_seconds))


class RequestRejected(Exception):
    """The document itself is wrong (a bad field, an unknown id): fail it now, retrying won't help."""


class Postpone(Exception):
    """The work must wait (data not there yet, a quota): hand the document back to be claimed again
    at `until`, without using up an attempt; `reason` is stored as its `last_error`."""

    def __init__(self, reason: str, until: dt.datetime) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until = until


class LeaseLost(Exception):
    """The run no longer holds the document (its lease expired and another run claimed it, or it
    was finished or failed meanwhile): whatever it does next would not be recorded, so it stops."""

    def __init__(self, collection: str, doc_id: ObjectId, owner: str, doing: str) -> None:
        super().__init__(
            f"{collection} document {doc_id}: run {owner} lost its lease before it could {doing} "
            "(another run claimed it after the lease expired, or it was finished meanwhile); this run stops"
        )
        self.collection = collection
        self.doc_id = doc_id
        self.owner = owner


def claims_of(doc: Mapping[str, Any]) -> int:
    """How many times the document was claimed (what a run key is built from)."""
    if "claims" in doc:
        return int(doc["claims"])
    return LEGACY_CLAIMS_START if "attempts" in doc else 0


class WorkQueue:
    """Claim, complete, fail and retry documents of one collection, each claimed by one owner at a time."""

    def __init__(
        self, collection: Collection, policy: QueuePolicy = QueuePolicy(), clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.collection = collection
        self.policy = policy
        self.clock = clock

    @property
    def name(self) -> str:
        return self.collection.name

    def ensure_indexes(self) -> None:
        self.collection.create_index([("processed", ASCENDING), ("_id", ASCENDING)], name="queue_new")
        self.collection.create_index([("processed", ASCENDING), ("retry_at", ASCENDING)], name="queue_due")
        self.collection.create_index([("lease_owner", ASCENDING)], name="queue_owner", sparse=True)

    # -- what a sensor asks ------------------------------------------------------------------

    def new_documents(
        self, after_id: ObjectId | None, limit: int, fields: Sequence[str] = (), match: Mapping[str, Any] | None = None
    ) -> list[Document]:
        """Never-claimed documents (those also matching `match`), oldest first, with `_id` above
        `after_id` when given."""
        query: Document = {"processed": False, "attempts": {"$exists": False}, **(match or {})}
        if after_id is not None:
            query["_id"] = {"$gt": after_id}
        projection = dict.fromkeys(["_id", *fields], 1)
        return list(self.collection.find(query, projection).sort("_id", ASCENDING).limit(limit))

    def due_documents(
        self, limit: int, fields: Sequence[str] = (), match: Mapping[str, Any] | None = None
    ) -> list[Document]:
        """Documents (also matching `match`) whose lease expired or whose retry time came: claimable again."""
        query = {"processed": False, "retry_at": {"$lte": self.clock.now()}, **(match or {})}
        projection = dict.fromkeys(["_id", "attempts", "claims", *fields], 1)
        return list(self.collection.find(query, projection).sort("retry_at", ASCENDING).limit(limit))

    # -- what a run does -----------------------------------------------------------------------

    def claim(self, doc_id: ObjectId, owner: str) -> Document | None:
        """Atomically take the document for `owner`; None when it is not claimable now."""
        now = self.clock.now()
        claimed = self.collection.find_one_and_update(
            {
                "_id": doc_id,
                "processed": False,
                "retry_at": {"$not": {"$gt": now}},
                "$or": [
                    {"attempts": {"$exists": False}},
                    {"attempts": {"$lt": self.policy.max_attempts}},
                ],
            },
            self._claim_update(owner, now),
            return_document=ReturnDocument.AFTER,
        )
        if claimed is None:
            self._give_up_if_exhausted(doc_id, owner, now)
        return claimed

    def take(self, doc_id: ObjectId, owner: str) -> Document | None:
        """For a control (pause, resume, cancel), not for work: claim the document if no live lease
        holds it, whatever its retry time, and return it as it was before (None when it is finished
        or a live lease holds it). The taker then holds it like any claim."""
        now = self.clock.now()
        return self.collection.find_one_and_update(
            {"_id": doc_id, "processed": False, **unheld(now)},
            self._claim_update(owner, now),
            return_document=ReturnDocument.BEFORE,
        )

    def _claim_update(self, owner: str, now: dt.datetime) -> list[Document]:
        return [
            {
                "$set": {
                    "status": PROCESSING,
                    "lease_owner": {"$literal": owner},
                    "run_id": {"$literal": owner},
                    "claimed_at": now,
                    "retry_at": now + dt.timedelta(seconds=self.policy.lease_seconds),
                    "attempts": {"$add": [{"$ifNull": ["$attempts", 0]}, 1]},
                    "claims": {"$add": [{"$ifNull": ["$claims", _LEGACY_CLAIMS]}, 1]},
                }
            }
        ]

    def extend_lease(self, doc_id: ObjectId, owner: str) -> bool:
        """Push the lease expiry a full lease from now; False when `owner` no longer holds it."""
        expiry = self.clock.now() + dt.timedelta(seconds=self.policy.lease_seconds)
        result = self.collection.update_one(self._leased(doc_id, owner), {"$set": {"retry_at": expiry}})
        return result.matched_count == 1

    def extend_lease_reading(self, doc_id: ObjectId, owner: str, fields: Sequence[str]) -> Document | None:
        """`extend_lease` and a read of the document's `fields` in one round trip (e.g. whether an
        operator asked to stop); None when `owner` no longer holds it."""
        expiry = self.clock.now() + dt.timedelta(seconds=self.policy.lease_seconds)
        return self.collection.find_one_and_update(
            self._leased(doc_id, owner),
            {"$set": {"retry_at": expiry}},
            projection=dict.fromkeys(["_id", *fields], 1),
            return_document=ReturnDocument.AFTER,
        )

    def renew(self, doc_id: ObjectId, owner: str) -> None:
        """`extend_lease`, raising LeaseLost when the lease is gone (call it as the work progresses)."""
        if not self.extend_lease(doc_id, owner):
            raise LeaseLost(self.name, doc_id, owner, "renew its lease")

    def save_progress(self, doc_id: ObjectId, owner: str, fields: Mapping[str, Any]) -> None:
        """Write fields on the document while still holding it (and renew the lease), so a later
        claim can carry on from them; LeaseLost when the lease is gone."""
        expiry = self.clock.now() + dt.timedelta(seconds=self.policy.lease_seconds)
        result = self.collection.update_one(self._leased(doc_id, owner), {"$set": {**fields, "retry_at": expiry}})
        if result.matched_count != 1:
            raise LeaseLost(self.name, doc_id, owner, "save its progress")

    def complete(self, doc_id: ObjectId, owner: str, result: Mapping[str, Any] | None = None) -> bool:
        """Mark done with the result fields; False when `owner` no longer holds the lease."""
        return self._finish(doc_id, owner, DONE, dict(result or {}))

    def fail(self, doc_id: ObjectId, owner: str, error: str, result: Mapping[str, Any] | None = None) -> bool:
        """Mark failed for good, with a message a person can act on."""
        return self._finish(doc_id, owner, FAILED, {**(result or {}), "error": _stored(error)})

    def release(self, doc_id: ObjectId, owner: str, error: str) -> str:
        """After a transient failure: schedule a retry, or fail when attempts are used up.

        Returns the document's new status (`retry` or `failed`), or "" when the lease was lost.
        """
        doc = self.collection.find_one(self._leased(doc_id, owner), {"attempts": 1})
        if doc is None:
            return ""
        attempts = int(doc.get("attempts", 0))
        if attempts >= self.policy.max_attempts:
            self.fail(doc_id, owner, _gave_up(attempts, error))
            return FAILED
        self.collection.update_one(
            self._leased(doc_id, owner),
            {
                "$set": {
                    "status": RETRY,
                    "last_error": _stored(error),
                    "retry_at": self.clock.now() + self.policy.backoff(attempts),
                },
                "$unset": {"lease_owner": ""},
            },
        )
        return RETRY

    def postpone(self, doc_id: ObjectId, owner: str, until: dt.datetime, reason: str) -> bool:
        """Hand the document back to be claimed again at `until`, without using up an attempt
        (work that must wait, such as a mailing paused by the daily sending quota)."""
        return self._hand_back(doc_id, owner, {"status": POSTPONED, "last_error": _stored(reason), "retry_at": until})

    def pause(self, doc_id: ObjectId, owner: str, reason: str) -> bool:
        """Hand the document back `paused`: claimable by nobody until `resume`, the attempt given
        back; `paused_reason` says who paused it and why."""
        fields = {"status": PAUSED, "paused_reason": _stored(reason), "paused_at": self.clock.now()}
        return self._hand_back(doc_id, owner, {**fields, "retry_at": PAUSED_UNTIL})

    def resume(self, doc_id: ObjectId, owner: str) -> bool:
        """Hand a paused document (held by a `take`) back claimable now: `postponed` until now, `resumed_at` now."""
        now = self.clock.now()
        fields = {"status": POSTPONED, "retry_at": now, "resumed_at": now}
        return self._hand_back(doc_id, owner, fields, unset=("paused_reason", "paused_at"))

    def cancel(self, doc_id: ObjectId, owner: str, result: Mapping[str, Any] | None = None) -> bool:
        """Finish the document `cancelled` with the result fields: nothing more is done for it."""
        return self._finish(doc_id, owner, CANCELLED, dict(result or {}))

    def _hand_back(self, doc_id: ObjectId, owner: str, fields: Document, unset: Sequence[str] = ()) -> bool:
        result = self.collection.update_one(
            self._leased(doc_id, owner),
            {"$set": fields, "$unset": dict.fromkeys(["lease_owner", *unset], ""), "$inc": {"attempts": -1}},
        )
        return result.modified_count == 1

    def release_owner(self, owner: str, error: str) -> dict[str, str]:
        """Release every document `owner` still holds (its run failed or was killed)."""
        held = self.collection.find({"lease_owner": owner, "processed": False}, {"_id": 1})
        return {str(doc["_id"]): self.release(doc["_id"], owner, error) for doc in held}

    # -- internals -------------------------------------------------------------------------------

    def _finish(self, doc_id: ObjectId, owner: str, status: str, fields: Document) -> bool:
        update = {
            "$set": {**fields, "processed": True, "status": status, "processed_at": self.clock.now(), "run_id": owner},
            "$unset": {"lease_owner": "", "retry_at": ""},
        }
        return self.collection.update_one(self._leased(doc_id, owner), update).modified_count == 1

    def _give_up_if_exhausted(self, doc_id: ObjectId, owner: str, now: dt.datetime) -> None:
        """A document whose last allowed attempt died is failed by the next run that finds it."""
        doc = self.collection.find_one_and_update(
            {
                "_id": doc_id,
                "processed": False,
                "retry_at": {"$not": {"$gt": now}},
                "attempts": {"$gte": self.policy.max_attempts},
            },
            {
                "$set": {"processed": True, "status": FAILED, "processed_at": now, "run_id": owner},
                "$unset": {"lease_owner": "", "retry_at": ""},
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None:
            last = doc.get("last_error") or "its worker stopped without finishing (lease expired)"
            self.collection.update_one(
                {"_id": doc_id}, {"$set": {"error": _stored(_gave_up(int(doc["attempts"]), last))}}
            )

    @staticmethod
    def _leased(doc_id: ObjectId, owner: str) -> Document:
        return {"_id": doc_id, "lease_owner": owner, "processed": False}


def unheld(now: dt.datetime) -> Document:
    """No live lease holds the document: none was taken, or it expired."""
    return {"$or": [{"lease_owner": {"$exists": False}}, {"retry_at": {"$lte": now}}]}


def _gave_up(attempts: int, last_error: str) -> str:
    return f"gave up after {attempts} attempts; last error: {last_error}"


def _stored(message: str) -> str:
    """What may be stored on a document as an error: redacted (no address, link or token), clipped."""
    return clip(redact(message))


# `claims` for a document that has none: 0 if never claimed, else LEGACY_CLAIMS_START (see claims_of).
_LEGACY_CLAIMS = {"$cond": [{"$eq": [{"$type": "$attempts"}, "missing"]}, 0, LEGACY_CLAIMS_START]}


@dataclass(frozen=True)
class Outcome:
    """What became of one document in a run: DONE, FAILED (rejected), POSTPONED, or SKIPPED (not ours)."""

    doc_id: ObjectId
    status: str
    result: Mapping[str, Any]
    error: str = ""


def process_document(
    queue: WorkQueue, doc_id: ObjectId, owner: str, work: Callable[[Document], Mapping[str, Any]]
) -> Outcome:
    """Claim, work, complete. A rejected request is failed; work that raises `Postpone` is handed
    back until its time; any other error schedules a retry and propagates, so the run shows as failed
    with its traceback. A run that finds its lease gone when it finishes raises LeaseLost: its result
    was not recorded, and the run must not look successful."""
    doc = queue.claim(doc_id, owner)
    if doc is None:
        return Outcome(doc_id, SKIPPED, {})
    try:
        result = work(doc)
    except RequestRejected as rejected:
        if not queue.fail(doc_id, owner, str(rejected)):
            raise LeaseLost(queue.name, doc_id, owner, "record the rejection") from rejected
        return Outcome(doc_id, FAILED, {}, str(rejected))
    except Postpone as waiting:
        if not queue.postpone(doc_id, owner, waiting.until, waiting.reason):
            raise LeaseLost(queue.name, doc_id, owner, "postpone it") from waiting
        return Outcome(doc_id, POSTPONED, {}, waiting.reason)
    except BaseException as exc:
        queue.release(doc_id, owner, describe_error(exc))
        raise
    if not queue.complete(doc_id, owner, result):
        raise LeaseLost(queue.name, doc_id, owner, "complete it")
    return Outcome(doc_id, DONE, result)


# -- what is waiting: for a sensor tick or a standing worker's step ------------------------------

DOCUMENTS_PER_TICK = 200
FULL_SCAN_EVERY = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class QueueCursor:
    """Where the last tick stopped. `_id`s are only roughly time-ordered across writers, so a
    periodic full scan of unprocessed documents picks up any late insert with a smaller `_id`."""

    last_id: ObjectId | None = None
    full_scan_at: dt.datetime | None = None

    @classmethod
    def parse(cls, raw: str | None) -> QueueCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            ObjectId(data["last_id"]) if data.get("last_id") else None,
            dt.datetime.fromisoformat(data["full_scan_at"]) if data.get("full_scan_at") else None,
        )

    def serialize(self) -> str:
        return json.dumps(
            {
                "last_id": str(self.last_id) if self.last_id else None,
                "full_scan_at": self.full_scan_at.isoformat() if self.full_scan_at else None,
            }
        )


def pending_work(
    queue: WorkQueue,
    cursor: QueueCursor,
    now: dt.datetime,
    fields: Sequence[str] = (),
    match: Mapping[str, Any] | None = None,
) -> tuple[list[Document], QueueCursor]:
    """New and due documents (matching `match`) for one tick, with `fields` besides `_id`, and the cursor after it."""
    full_scan = cursor.full_scan_at is None or now - cursor.full_scan_at >= FULL_SCAN_EVERY
    new = queue.new_documents(None if full_scan else cursor.last_id, DOCUMENTS_PER_TICK, fields, match)
    due = queue.due_documents(DOCUMENTS_PER_TICK, fields, match)
    seen_ids = [doc["_id"] for doc in new] + ([cursor.last_id] if cursor.last_id else [])
    next_cursor = QueueCursor(
        last_id=max(seen_ids) if seen_ids else None,
        full_scan_at=now if full_scan else cursor.full_scan_at,
    )
    return new + due, next_cursor
