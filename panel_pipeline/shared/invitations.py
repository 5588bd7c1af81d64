"""Invitations and fieldwork reminders for sample members, made exactly once, for the Sampler and
the Updater alike.

Two idempotent steps. First the members of a sample with an invitation (`mailing.template`) who are
not yet tied to one are stamped with one new mailing id (each member document gets one id, once),
after that id is written to `pending_invitations` (`{_id: mailing id, sample_id, stamped_at}`);
then every pending id gets its `mailings` document and leaves `pending_invitations`. A crash
between the steps leaves a pending id whose mailing the next run creates with the same id; nobody
is named by two invitations, and the Mailer sends each recipient of a mailing once.

An invitation references its recipients instead of listing them, so no sample size can pass
Mongo's 16 MB document limit: `{_id, processed: false, created_at, kind: "bulk", template,
default_data, invitation_for_sample, recipient_count}` (and `delivery: "prompt"` when the Updater
invites a dynamic sample's newcomers, who should hear at once: up to PROMPT_MAX_RECIPIENTS of them),
and its recipients are the `sample_members` whose `mailing_id` is its `_id`.

Each sample's invitation fails alone: a reason (a `mailing.default_data` that is not an object,
...) is written on that sample as `invitation_error` and its id stays pending until the sample is
fixed; the others go on. A sample deleted, or whose `mailing` was unset, after its members were
stamped has its members unstamped (they were never invited) and its pending id dropped, logged by
id. Every query is bounded by the pending ids (one per stamping), never by all of `sample_members`.

A reminder round is made the same way (`stamp_pending_reminder`, then `create_missing_mailings`):
the pending id (`reminder: true`) first, then the chosen members get it as `reminder_mailing_id`,
then the `mailings` document `{kind: "bulk", template: survey_reminder, default_data: the
invitation's data plus `closes_on`, reminder_for_sample, recipient_count}`; its recipients are the
members whose `reminder_mailing_id` is its `_id`. A member is stamped only while no earlier reminder
of theirs is open (pending, or made and not yet processed: `open_reminder_ids`), so nobody is named by
two open reminders; the Mailer records each sent reminder once (`reminded_at`, `reminders`). A
reminder that cannot be made is recorded on the sample as `reminder_error`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.contacts import ID_CHUNK
from panel_pipeline.shared.contract import (
    BULK,
    MAILINGS,
    PENDING_INVITATIONS,
    PROMPT,
    SAMPLE_MEMBERS,
    SAMPLES,
    SURVEY_REMINDER_TEMPLATE,
)
from panel_pipeline.shared.mongo import as_utc
from panel_pipeline.shared.privacy import describe_error

LOG = logging.getLogger(__name__)
# A prompt invitation goes out at once through the mail worker, ahead of nothing else; a backfill's
# thousands of newcomers are a bulk mailing like any other, so password e-mails never wait behind them.
PROMPT_MAX_RECIPIENTS = 200
UK = ZoneInfo("Europe/London")  # members read the closing date as a UK calendar day
Logger = logging.Logger | logging.LoggerAdapter


class InvitationError(ValueError):
    """The sample's invitation cannot be made as it stands (names the field to fix)."""


def stamp_pending_invitations(
    db: Database, sample_id: ObjectId, now: dt.datetime | None = None, *, prompt: bool = False
) -> ObjectId | None:
    """Tie the sample's members still waiting for an invitation to one new mailing id; `prompt`
    marks the invitation for prompt delivery (newcomers of a dynamic sample)."""
    sample = db[SAMPLES].find_one({"_id": sample_id}, {"mailing": 1})
    mailing = (sample or {}).get("mailing")
    if not (isinstance(mailing, Mapping) and mailing.get("template")):
        return None  # a sample without an invitation: members are added, nobody is mailed
    waiting = {"sample_id": sample_id, "invited_at": None, "mailing_id": {"$exists": False}}
    if db[SAMPLE_MEMBERS].find_one(waiting, {"_id": 1}) is None:
        return None
    mailing_id = ObjectId()
    # Pending first: a crash after it and before the stamp leaves an id naming nobody, dropped later.
    pending = {"_id": mailing_id, "sample_id": sample_id, "stamped_at": now or utc_now()}
    db[PENDING_INVITATIONS].insert_one(pending | ({"prompt": True} if prompt else {}))
    if db[SAMPLE_MEMBERS].update_many(waiting, {"$set": {"mailing_id": mailing_id}}).modified_count:
        return mailing_id
    db[PENDING_INVITATIONS].delete_one({"_id": mailing_id})
    return None


def stamp_pending_reminder(
    db: Database, sample_id: ObjectId, user_ids: Sequence[ObjectId], now: dt.datetime
) -> ObjectId | None:
    """Tie these members of the sample to one new reminder mailing id (`reminder_mailing_id`), all but
    those whose earlier reminder is still open; None when that leaves nobody."""
    if not user_ids:
        return None
    mailing_id = ObjectId()
    # Pending first, and the open rounds read after it: a crash after it leaves an id naming nobody.
    db[PENDING_INVITATIONS].insert_one({"_id": mailing_id, "sample_id": sample_id, "stamped_at": now, "reminder": True})
    not_open = {"sample_id": sample_id, "reminder_mailing_id": {"$nin": list(open_reminder_ids(db, sample_id))}}
    ids = list(user_ids)
    stamped = sum(
        db[SAMPLE_MEMBERS]
        .update_many(
            {**not_open, "user_id": {"$in": ids[start : start + ID_CHUNK]}},
            {"$set": {"reminder_mailing_id": mailing_id}},
        )
        .modified_count
        for start in range(0, len(ids), ID_CHUNK)
    )
    if stamped:
        return mailing_id
    db[PENDING_INVITATIONS].delete_one({"_id": mailing_id})
    return None


def open_reminder_ids(db: Database, sample_id: ObjectId) -> set[ObjectId]:
    """The sample's reminder rounds not over yet: pending (no mailing yet), or made and not processed."""
    pending = db[PENDING_INVITATIONS].find({"sample_id": sample_id, "reminder": True}, {"_id": 1})
    unsent = db[MAILINGS].find({"reminder_for_sample": sample_id, "processed": {"$ne": True}}, {"_id": 1})
    return {doc["_id"] for doc in pending} | {doc["_id"] for doc in unsent}


def create_missing_mailings(
    db: Database, now: dt.datetime, *, sample_id: ObjectId | None = None, log: Logger | None = None
) -> list[ObjectId]:
    """A `mailings` document for every pending invitation or reminder (of `sample_id` only, when
    given), made exactly once (`_id` = the stamped id). Returns the ids created by this call. One
    sample's problem is recorded on it (`invitation_error`, `reminder_error`) and never stops the others."""
    log = log or LOG
    query = {} if sample_id is None else {"sample_id": sample_id}
    created = []
    for pending in db[PENDING_INVITATIONS].find(query).sort("_id", 1):
        try:
            if _create_invitation(db, pending, now, log):
                created.append(pending["_id"])
        except InvitationError as invalid:
            _record_invitation_error(db, pending, str(invalid), log)
        except Exception as exc:  # one sample's problem; Mongo being down fails the recording too, and stops the run
            _record_invitation_error(db, pending, describe_error(exc), log)
    return created


def invite_sample(db: Database, sample_id: ObjectId, now: dt.datetime, log: Logger | None = None) -> list[ObjectId]:
    """Stamp the sample's waiting members and create its invitation(s) now (inside the sample's run)."""
    stamp_pending_invitations(db, sample_id, now)
    return create_missing_mailings(db, now, sample_id=sample_id, log=log)


def _create_invitation(db: Database, pending: Mapping[str, Any], now: dt.datetime, log: Logger) -> bool:
    mailing_id, sample_id = pending["_id"], pending["sample_id"]
    reminder = bool(pending.get("reminder"))
    stamp_field = "reminder_mailing_id" if reminder else "mailing_id"
    if db[MAILINGS].find_one({"_id": mailing_id}, {"_id": 1}) is not None:
        db[PENDING_INVITATIONS].delete_one({"_id": mailing_id})  # made by a run that stopped before this step
        return False
    sample = db[SAMPLES].find_one({"_id": sample_id}, {"mailing": 1, "fieldwork_state.close_at": 1})
    if sample is None or not sample.get("mailing"):
        # An invitation's members were never invited; a reminder's were, and keep that.
        unstamp = {stamp_field: mailing_id} | ({} if reminder else {"invited_at": None})
        unstamped = db[SAMPLE_MEMBERS].update_many(unstamp, {"$unset": {stamp_field: ""}}).modified_count
        db[PENDING_INVITATIONS].delete_one({"_id": mailing_id})
        why = "was deleted" if sample is None else "no longer has a mailing"
        what = "reminder" if reminder else "invitation"
        log.warning(f"{what} {mailing_id} not made: sample {sample_id} {why}; {unstamped} member(s) unstamped")
        return False
    recipient_count = db[SAMPLE_MEMBERS].count_documents({stamp_field: mailing_id})
    if recipient_count == 0:  # stamped nobody (a crash before the stamp, or a race)
        db[PENDING_INVITATIONS].delete_one({"_id": mailing_id})
        return False
    if reminder:
        close_at = (sample.get("fieldwork_state") or {}).get("close_at")
        document = reminder_document(mailing_id, sample_id, sample["mailing"], close_at, recipient_count, now)
    else:
        document = invitation_document(mailing_id, sample_id, sample["mailing"], recipient_count, now)
    if pending.get("prompt") and recipient_count <= PROMPT_MAX_RECIPIENTS:
        document["delivery"] = PROMPT
    with contextlib.suppress(DuplicateKeyError):  # made by a run that stopped before the pending id went
        db[MAILINGS].insert_one(document)
    error_field = _error_field(pending)
    db[SAMPLES].update_one({"_id": sample_id, error_field: {"$exists": True}}, {"$unset": {error_field: ""}})
    db[PENDING_INVITATIONS].delete_one({"_id": mailing_id})
    return True


def _error_field(pending: Mapping[str, Any]) -> str:
    return "reminder_error" if pending.get("reminder") else "invitation_error"


def _record_invitation_error(db: Database, pending: Mapping[str, Any], reason: str, log: Logger) -> None:
    db[SAMPLES].update_one({"_id": pending["sample_id"]}, {"$set": {_error_field(pending): reason}})
    what = "reminder" if pending.get("reminder") else "invitation"
    log.warning(f"{what} {pending['_id']} of sample {pending['sample_id']} not made: {reason}")


def invitation_document(
    mailing_id: ObjectId, sample_id: ObjectId, invitation: Any, recipient_count: int, now: dt.datetime
) -> dict[str, Any]:
    """The `mailings` document of an invitation; InvitationError naming the field if the sample's
    `mailing` cannot make one."""
    if not isinstance(invitation, Mapping):
        raise InvitationError(f"mailing: must be an object with a template, got {type(invitation).__name__}")
    template = invitation.get("template")
    if not isinstance(template, str) or not template.strip():
        raise InvitationError("mailing.template: must be the name of a template")
    field = "default_data" if invitation.get("default_data") is not None else "data"
    data = invitation.get(field)
    if data is not None and not isinstance(data, Mapping):
        raise InvitationError(f"mailing.{field}: must be an object of template fields, got {type(data).__name__}")
    return {
        "_id": mailing_id,
        "processed": False,
        "created_at": now,
        "kind": BULK,
        "template": template,
        "default_data": dict(data or {}),
        "invitation_for_sample": sample_id,
        "recipient_count": recipient_count,
    }


def reminder_document(
    mailing_id: ObjectId,
    sample_id: ObjectId,
    invitation: Any,
    close_at: Any,
    recipient_count: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """The `mailings` document of a reminder round: the invitation's data plus `closes_on` (the
    closing date as members read it), template survey_reminder; InvitationError naming the field."""
    if not isinstance(close_at, dt.datetime):
        raise InvitationError("fieldwork_state.close_at: a reminder needs the closing date, and the sample has none")
    document = invitation_document(mailing_id, sample_id, invitation, recipient_count, now)
    del document["invitation_for_sample"]
    return document | {
        "template": SURVEY_REMINDER_TEMPLATE,
        "default_data": document["default_data"] | {"closes_on": closing_day(close_at)},
        "reminder_for_sample": sample_id,
    }


def closing_day(close_at: dt.datetime) -> str:
    """ "Friday 14 June": the last UK calendar day a member can still take part (a close at midnight
    is the end of the day before)."""
    day = (as_utc(close_at) - dt.timedelta(seconds=1)).astimezone(UK)
    return f"{day:%A} {day.day} {day:%B}"
