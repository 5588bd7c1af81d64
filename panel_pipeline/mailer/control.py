"""Cancel, pause and resume a mailing: what a `control` on its `mailings` document does.

Invariants:
- **One way in.** A control is the document's `control` field (`cancel`, `pause`, `resume`), set by
  the backend, or by `mailing_control_job` for an operator with `control_by` and `control_reason`.
  Everything else follows from the field; once applied (or refused) it is removed and recorded in
  `last_control` (`MailingControls.settle`), so no document is controlled twice for one request.
- **The holder applies it.** A run sending the mailing reads `control` with every lease renewal,
  after each batch (`hold`), and stops within one batch (`dispatch.Hold`); a mailing no live lease
  holds is taken (`WorkQueue.take`) by a run of `mailing_control_job`, which `mailing_control_sensor`
  launches for it. Either way the transition is the lease holder's, so a control and a sending run
  never both act, and a sending run never sends after its mailing was paused or cancelled.
- **pause**: the mailing becomes `paused`, claimable by nobody; its `mail_log` rows are untouched.
  **resume**: a paused mailing becomes claimable now and the ledger carries on where it stopped,
  exactly once per recipient. **cancel**: rows not yet attempted end `cancelled` (never mailed);
  rows SES may have (their attempt started) are settled from the stored SES events where they can
  be and otherwise stay `unknown` (never re-sent, counted); the members it reached are marked
  invited, and the mailing ends `cancelled` with its `counts`.
- **Refused** (recorded, the request removed): an unknown action, any control of a finished
  mailing (done, failed, cancelled), and resume of a mailing that is not paused.
- **Idempotent.** A crash between a transition and its settle leaves the control pending; applying
  it again finds the work done (already paused, already cancelled) and only settles it.
No Dagster here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.mailer.dispatch import Hold
from panel_pipeline.mailer.recipients import mark_invited
from panel_pipeline.mailer.store import CANCELLED as NOT_MAILED
from panel_pipeline.mailer.store import SENT, UNKNOWN, MailingControls, MailLedger, control_text
from panel_pipeline.queue.store import LeaseLost, WorkQueue
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.contract import CANCELLED, PAUSED
from panel_pipeline.shared.privacy import redact

CANCEL = "cancel"
PAUSE = "pause"
RESUME = "resume"
ACTIONS: tuple[str, ...] = (CANCEL, PAUSE, RESUME)
STOPPING: tuple[str, ...] = (CANCEL, PAUSE)  # what stops a run that is sending the mailing
NOT_SENT_REASON = "not sent: the mailing was cancelled"


class ControlRefused(ValueError):
    """The control request itself is wrong (its field named), or the mailing cannot take it."""


@dataclass(frozen=True)
class ControlOutcome:
    """What a control run did: applied it, refused it (recorded on the document), or left it to
    the run that holds the mailing (still pending)."""

    action: str
    applied: bool
    refused: bool
    message: str


def check_action(value: object, field: str = "action") -> str:
    if value not in ACTIONS:
        raise ControlRefused(f"{field}: must be one of {', '.join(ACTIONS)}; got {redact(str(value))[:60]!r}")
    return str(value)


def check_mailing_id(value: str, field: str = "mailing_id") -> ObjectId:
    if not ObjectId.is_valid(value):
        raise ControlRefused(f"{field}: not a mailings document id (24 hex digits); got {redact(value)[:60]!r}")
    return ObjectId(value)


def hold(queue: WorkQueue, mailing_id: ObjectId, owner: str) -> Hold:
    """The sending run's lease renewal, which also reads whether a control asks it to stop."""
    doc = queue.extend_lease_reading(mailing_id, owner, ["control"])
    if doc is None:
        return Hold(held=False)
    control = doc.get("control")
    return Hold(held=True, stop_for=control if control in STOPPING else None)


def pause_mailing(queue: WorkQueue, mailing_id: ObjectId, owner: str, reason: str) -> None:
    """Pause a mailing `owner` holds (a control, or a policy such as a bounce-rate breaker): it is
    `paused` with `paused_reason` until resumed; nothing of its ledger changes."""
    if not queue.pause(mailing_id, owner, reason):
        raise LeaseLost(queue.name, mailing_id, owner, "pause it")


def cancel_mailing(
    db: Database, queue: WorkQueue, ledger: MailLedger, mailing: Mapping[str, Any], owner: str
) -> dict[str, int]:
    """Cancel a mailing `owner` holds: unsent rows `cancelled`, the rows SES may have settled where
    the stored events tell, its reached members marked invited; returns its final counts."""
    mailing_id = mailing["_id"]
    ledger.recover_expired(mailing_id)
    ledger.settle_unknown(mailing_id)
    ledger.cancel_unsent(mailing_id, NOT_SENT_REASON)
    counts = ledger.counts(mailing_id)
    if counts[SENT]:
        mark_invited(db, mailing, ledger.sent_user_ids(mailing_id), utc_now())
    if not queue.cancel(mailing_id, owner, {"counts": counts}):
        raise LeaseLost(queue.name, mailing_id, owner, "cancel it")
    return counts


def stop_held_mailing(
    db: Database, queue: WorkQueue, ledger: MailLedger, mailing_id: ObjectId, owner: str, action: str
) -> str:
    """Apply `action` (pause or cancel) to a mailing `owner` holds, and settle the request; returns what was done."""
    mailing = queue.collection.find_one({"_id": mailing_id}) or {"_id": mailing_id}
    if action == PAUSE:
        pause_mailing(queue, mailing_id, owner, _requested(mailing, "paused"))
        outcome = "paused"
    else:
        counts = cancel_mailing(db, queue, ledger, mailing, owner)
        outcome = f"cancelled: {counts[SENT]} sent, {counts[NOT_MAILED]} not mailed, {counts[UNKNOWN]} unknown"
    MailingControls(queue.collection).settle(mailing_id, action, outcome, owner)
    return outcome


def apply_control(
    db: Database, queue: WorkQueue, ledger: MailLedger, mailing_id: ObjectId, owner: str
) -> ControlOutcome:
    """Apply the control pending on the mailing, as a run of mailing_control_job (`owner`). A mailing
    a live lease holds is left to its run, which applies it within one batch."""
    controls = MailingControls(queue.collection)
    doc = queue.collection.find_one({"_id": mailing_id})
    if doc is None:
        raise ControlRefused(f"mailing_id: no mailings document {mailing_id}")
    if "control" not in doc:
        return ControlOutcome("", False, False, "no control pending (the last one applied is in last_control)")
    control = doc["control"]
    refusal = _refusal(doc)
    if refusal is not None:
        controls.settle(mailing_id, control, f"refused: {refusal}", owner)
        return ControlOutcome(str(control), False, True, refusal)
    if control == PAUSE and doc.get("status") == PAUSED:
        controls.settle(mailing_id, control, "already paused", owner)
        return ControlOutcome(control, True, False, "already paused")
    taken = queue.take(mailing_id, owner)
    if taken is None:
        now = queue.collection.find_one({"_id": mailing_id}, {"processed": 1, "lease_owner": 1}) or {}
        if now.get("processed"):  # finished meanwhile: refused as such
            return apply_control(db, queue, ledger, mailing_id, owner)
        holder = now.get("lease_owner", "another run")
        return ControlOutcome(control, False, False, f"run {holder} holds the mailing and applies it within one batch")
    if control == RESUME:
        if not queue.resume(mailing_id, owner):
            raise LeaseLost(queue.name, mailing_id, owner, "resume it")
        controls.settle(mailing_id, control, "resumed", owner)
        return ControlOutcome(control, True, False, "resumed: claimable now")
    return ControlOutcome(control, True, False, stop_held_mailing(db, queue, ledger, mailing_id, owner, control))


def _refusal(doc: Mapping[str, Any]) -> str | None:
    control, status = doc.get("control"), doc.get("status")
    try:
        check_action(control, "control")
    except ControlRefused as wrong:
        return str(wrong)
    if doc.get("processed"):
        if status == CANCELLED and control == RESUME:
            return "the mailing was cancelled, and a cancelled mailing cannot be resumed"
        return f"the mailing is already {status}: nothing to {control}"
    if control == RESUME and status != PAUSED:
        return f"the mailing is not paused (status {status or 'queued'}): nothing to resume"
    return None


def _requested(mailing: Mapping[str, Any], what: str) -> str:
    """`paused by <who>: <why>` from the request on the document, redacted."""
    by = control_text(mailing.get("control_by")) or "the backend"
    reason = control_text(mailing.get("control_reason"))
    return f"{what} by {by}" + (f": {reason}" if reason else "")
