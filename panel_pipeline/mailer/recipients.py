"""Who a mailing goes to, read from Mongo: its listed recipients or its sample's members."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.mailer.dispatch import UNSUBSCRIBE_FIELD, MailingRecipient
from panel_pipeline.mailer.ledger import normalize_email
from panel_pipeline.queue.store import RequestRejected

UnsubscribeLink = Callable[[str], str]
USER_FIELDS = {"email": 1, "first_name": 1, "status": 1}
USERS_PER_QUERY = 1000


def resolve_recipients(db: Database, mailing: Mapping[str, Any], unsubscribe_link: UnsubscribeLink | None) -> list[MailingRecipient]:
    """The mailing's recipients with their data (first name, unsubscribe link for bulk mail); members
    who are not `active` are kept but suppressed, so the ledger records why they were not mailed."""
    listed = mailing.get("recipients")
    if listed:
        entries = [(dict(entry), f"recipients.{i}") for i, entry in enumerate(listed)]
    elif mailing.get("sample_id"):
        sample_id = _object_id(mailing["sample_id"], "sample_id")
        members = db.sample_members.find({"sample_id": sample_id, "invited_at": None, "mailing_id": {"$exists": False}}, {"user_id": 1})
        entries = [({"user_id": member["user_id"]}, "sample_id") for member in members]
    else:
        raise RequestRejected("recipients: the mailing lists no recipients and no sample_id")
    users = _users_by_id(db, [_object_id(entry["user_id"], f"{where}.user_id") for entry, where in entries if entry.get("user_id") is not None])
    return [_recipient(db, users, entry, unsubscribe_link, where) for entry, where in entries]


def _users_by_id(db: Database, user_ids: list[ObjectId]) -> dict[ObjectId, Mapping[str, Any]]:
    """One query per thousand members instead of one per member."""
    users: dict[ObjectId, Mapping[str, Any]] = {}
    for start in range(0, len(user_ids), USERS_PER_QUERY):
        chunk = user_ids[start : start + USERS_PER_QUERY]
        users.update((user["_id"], user) for user in db.users.find({"_id": {"$in": chunk}}, USER_FIELDS))
    return users


def _recipient(
    db: Database, users: Mapping[ObjectId, Mapping[str, Any]], entry: Mapping[str, Any], unsubscribe_link: UnsubscribeLink | None, where: str
) -> MailingRecipient:
    data = dict(entry.get("data") or {})
    if entry.get("user_id") is not None:
        user_id = _object_id(entry["user_id"], f"{where}.user_id")
        user = users.get(user_id)
        if user is None or not user.get("email"):
            raise RequestRejected(f"{where}.user_id: no user {user_id} with an e-mail address")
    elif entry.get("email"):
        user = db.users.find_one({"email": normalize_email(str(entry["email"]))}, USER_FIELDS)
        user = user or {"email": str(entry["email"]), "status": "active"}
        user_id = user.get("_id")
    else:
        raise RequestRejected(f"{where}: give a user_id or an email")
    if user.get("first_name"):
        data.setdefault("first_name", user["first_name"])
    if unsubscribe_link is not None and user_id is not None:
        data.setdefault(UNSUBSCRIBE_FIELD, unsubscribe_link(str(user_id)))
    status = user.get("status", "active")
    suppressed = None if status == "active" else f"member status is {status}"
    return MailingRecipient(email=user["email"], data=data, user_id=user_id, suppressed_reason=suppressed)


def _object_id(value: Any, field: str) -> ObjectId:
    try:
        return value if isinstance(value, ObjectId) else ObjectId(str(value))
    except Exception as exc:
        raise RequestRejected(f"{field}: {value!r} is not an id") from exc


def mark_invited(db: Database, mailing: Mapping[str, Any], sent_user_ids: Iterable[Any], sent_at: Any) -> int:
    """Sample members this mailing reached get `invited_at` (the Sampler and Updater read it): the
    members it was made for (`mailing_id`), or the members of its `sample_id`. `sent_user_ids` is
    consumed `USERS_PER_QUERY` at a time (one update each), so no list of every member is built."""
    scope: dict[str, Any] = {"mailing_id": mailing["_id"]}
    if mailing.get("sample_id") and not mailing.get("recipients"):
        scope = {"sample_id": _object_id(mailing["sample_id"], "sample_id")}
    ids = (uid for uid in sent_user_ids if uid is not None)
    marked = 0
    while chunk := list(itertools.islice(ids, USERS_PER_QUERY)):
        marked += db.sample_members.update_many(
            {**scope, "user_id": {"$in": chunk}, "invited_at": None},
            {"$set": {"invited_at": sent_at, "mailing_id": mailing["_id"]}},
        ).modified_count
    return marked
