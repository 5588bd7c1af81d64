"""Who a mailing goes to, read from Mongo: its listed recipients, its invitation's or reminder's
sample members, or its sample's members.

Invariants:
* Streamed: recipients come in chunks of `USERS_PER_QUERY`, each chunk's members read with one
  query (listed addresses too), so a 600k-member invitation is never held in memory whole.
* A listed recipient whose address (trimmed, lower-cased) or member was listed before is one
  recipient: it is counted in `duplicates`, not yielded again. (Sample members are unique per
  sample; two members sharing an address are kept apart by the ledger's unique (mailing, email).)
* A wrong document (an entry with neither `user_id` nor `email`, an id that is no id, a listed
  member who does not exist) raises `RequestRejected` naming the field; listed entries are all
  checked before the first is yielded. A recipient whose own address or data cannot be mailed is
  yielded with `problem` (the field and the reason), and the ledger fails it alone.
* A reminder's recipients are the members it was made for (`reminder_mailing_id`) who have not
  completed since: no `completed_at`, and no `transactions` document for the sample's survey (the
  backend's record of a complete, there before the pipeline has processed it into `completed_at`);
  nobody once its sample's fieldwork closed (a full sample would only screen them out);
  `mark_reminded` counts each sent reminder once per member.
* The data never holds the unsubscribe link: bulk mail gets the pipeline's signed link when its
  batch is built (`dispatch._bulk_send`), and an `unsubscribe_url` the backend put in bulk data is
  dropped, so it can neither replace the link nor be stored.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.mailer.dispatch import MailingRecipient, UnsubscribeLink
from panel_pipeline.mailer.store import normalize_email
from panel_pipeline.mailer.validation import (
    SAMPLE_FIELDS,
    DataProblem,
    address_problem,
    check_recipient_entry,
    mailing_data,
    object_id,
)
from panel_pipeline.queue.store import RequestRejected
from panel_pipeline.shared.contract import ACTIVE, FIELDWORK_CLOSED, FIRST_NAME, TRANSACTIONS, UNSUBSCRIBE_URL
from panel_pipeline.shared.mongo import as_utc

USER_FIELDS = {"email": 1, FIRST_NAME: 1, "status": 1}
USERS_PER_QUERY = 1000


class ResolvedRecipients:
    """The mailing's recipients, read chunk by chunk as they are iterated (once).

    After iterating: `duplicates` (listed recipients that repeat an earlier one) and
    `missing_members` (sample members with no `users` document or no address: nobody to mail) and
    `completed_members` (a reminder's members whose complete came in after the reminder was made)."""

    def __init__(self, db: Database, mailing: Mapping[str, Any], bulk: bool, chunk_size: int = USERS_PER_QUERY) -> None:
        self.db = db
        self.mailing = mailing
        self.bulk = bulk
        self.chunk_size = chunk_size
        self.duplicates = 0
        self.missing_members = 0
        self.completed_members = 0
        self._survey_id: Any = None  # a reminder's: its completers are left out
        self._listed = _listed_entries(mailing)
        if not self._listed and all(mailing.get(field_name) is None for field_name in SAMPLE_FIELDS):
            raise RequestRejected("recipients: the mailing lists no recipients and no sample_id")

    def __iter__(self) -> Iterator[MailingRecipient]:
        for chunk in self.chunks():
            yield from chunk

    def chunks(self) -> Iterator[list[MailingRecipient]]:
        """Lists of at most `chunk_size` recipients, one `users` query each."""
        if self._listed:
            yield from self._listed_chunks(self._listed)
        else:
            yield from self._member_chunks()

    # --- listed recipients -----------------------------------------------------------------------

    def _listed_chunks(self, entries: list[Mapping[str, Any]]) -> Iterator[list[MailingRecipient]]:
        seen: set[str] = set()
        for start in range(0, len(entries), self.chunk_size):
            chunk = list(enumerate(entries[start : start + self.chunk_size], start))
            by_id = self._users(
                "_id", [object_id(e["user_id"], "user_id") for _, e in chunk if e.get("user_id") is not None]
            )
            addresses = [normalize_email(e["email"]) for _, e in chunk if e.get("user_id") is None]
            by_email = {normalize_email(str(user["email"])): user for user in self._users("email", addresses).values()}
            recipients = []
            for index, entry in chunk:
                recipient = self._listed_recipient(entry, f"recipients.{index}", by_id, by_email)
                key = normalize_email(recipient.email)
                if key in seen:
                    self.duplicates += 1
                    continue
                seen.add(key)
                recipients.append(recipient)
            yield recipients

    def _listed_recipient(
        self,
        entry: Mapping[str, Any],
        where: str,
        by_id: Mapping[ObjectId, Mapping[str, Any]],
        by_email: Mapping[str, Mapping[str, Any]],
    ) -> MailingRecipient:
        if entry.get("user_id") is not None:
            user_id = object_id(entry["user_id"], f"{where}.user_id")
            user = by_id.get(user_id)
            if user is None or not user.get("email"):
                raise RequestRejected(f"{where}.user_id: no user {user_id} with an e-mail address")
            return self._recipient(user, entry.get("data"), f"{where}.data", f"{where}.user_id: the member's address")
        address = normalize_email(entry["email"])
        user = by_email.get(address) or {"email": address, "status": ACTIVE}
        return self._recipient(user, entry.get("data"), f"{where}.data", f"{where}.email")

    # --- sample members ------------------------------------------------------------------------

    def _member_chunks(self) -> Iterator[list[MailingRecipient]]:
        if self.mailing.get("invitation_for_sample") is not None:
            # An invitation names its members by their mailing_id (shared/invitations.py).
            scope: dict[str, Any] = {"mailing_id": self.mailing["_id"]}
        elif self.mailing.get("reminder_for_sample") is not None:
            sample = self._sample(object_id(self.mailing["reminder_for_sample"], "reminder_for_sample"))
            if (sample.get("fieldwork_state") or {}).get("status") == FIELDWORK_CLOSED:
                return
            self._survey_id = sample.get("survey_id")
            scope = {"reminder_mailing_id": self.mailing["_id"], "completed_at": None}
        else:
            scope = {
                "sample_id": object_id(self.mailing["sample_id"], "sample_id"),
                "invited_at": None,
                "mailing_id": {"$exists": False},
            }
        members = self.db.sample_members.find(scope, {"user_id": 1, "_id": 0}, batch_size=self.chunk_size)
        user_ids: list[Any] = []
        for member in members:
            user_ids.append(member.get("user_id"))
            if len(user_ids) == self.chunk_size:
                yield self._members(user_ids)
                user_ids = []
        if user_ids:
            yield self._members(user_ids)

    def _sample(self, sample_id: ObjectId) -> Mapping[str, Any]:
        return self.db.samples.find_one({"_id": sample_id}, {"fieldwork_state.status": 1, "survey_id": 1}) or {}

    def _members(self, user_ids: list[Any]) -> list[MailingRecipient]:
        if self._survey_id is not None:
            completed = {
                row["user_id"]
                for row in self.db[TRANSACTIONS].find(
                    {"survey_id": self._survey_id, "user_id": {"$in": user_ids}}, {"user_id": 1}
                )
            }
            self.completed_members += len(completed)
            user_ids = [user_id for user_id in user_ids if user_id not in completed]
        users = self._users("_id", user_ids)
        recipients = []
        for user_id in user_ids:
            user = users.get(user_id)
            if user is None or not user.get("email"):
                self.missing_members += 1
                continue
            recipients.append(self._recipient(user, None, "data", f"member {user_id}: address"))
        return recipients

    # --- one recipient -------------------------------------------------------------------------

    def _users(self, field_name: str, values: list[Any]) -> dict[Any, Mapping[str, Any]]:
        """The users whose `field_name` is one of `values` (one query), by `_id`."""
        if not values:
            return {}
        return {user["_id"]: user for user in self.db.users.find({field_name: {"$in": values}}, USER_FIELDS)}

    def _recipient(
        self, user: Mapping[str, Any], raw_data: Any, data_field: str, address_field: str
    ) -> MailingRecipient:
        problem = None
        try:
            data = mailing_data(raw_data, data_field)
        except DataProblem as bad:
            data, problem = {}, str(bad)
        if self.bulk:
            data.pop(UNSUBSCRIBE_URL, None)
        if user.get(FIRST_NAME) and isinstance(user[FIRST_NAME], str):
            data.setdefault(FIRST_NAME, user[FIRST_NAME])
        email = normalize_email(str(user["email"]))
        wrong_address = address_problem(email)
        if wrong_address and problem is None:
            problem = f"{address_field}: {wrong_address}"
        status = user.get("status", ACTIVE)
        suppressed = None if status == ACTIVE else f"member status is {status}"
        return MailingRecipient(
            email=email, data=data, user_id=user.get("_id"), suppressed_reason=suppressed, problem=problem
        )


def resolve_recipients(
    db: Database, mailing: Mapping[str, Any], unsubscribe_link: UnsubscribeLink | None
) -> ResolvedRecipients:
    """The mailing's recipients with their data (first name), streamed; members who are not
    `active` are kept but suppressed, so the ledger records why they were not mailed.

    `unsubscribe_link` given means bulk mail (the link itself is made per batch at send time);
    None means transactional mail, whose data may carry its own links."""
    return ResolvedRecipients(db, mailing, bulk=unsubscribe_link is not None)


def _listed_entries(mailing: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    listed = mailing.get("recipients")
    if listed is None or listed == []:
        return []
    if not isinstance(listed, list):
        raise RequestRejected(f"recipients: must be a list, not {type(listed).__name__}")
    for index, entry in enumerate(listed):
        check_recipient_entry(entry, f"recipients.{index}")
    return listed


def mark_invited(db: Database, mailing: Mapping[str, Any], sent_user_ids: Iterable[Any], sent_at: Any) -> int:
    """Sample members this mailing reached get `invited_at` (the Sampler and Updater read it): the
    members it was made for (`mailing_id`), or the members of its `sample_id`. `sent_user_ids` is
    consumed `USERS_PER_QUERY` at a time (one update each), so no list of every member is built."""
    scope: dict[str, Any] = {"mailing_id": mailing["_id"]}
    if mailing.get("sample_id") and not mailing.get("recipients"):
        scope = {"sample_id": object_id(mailing["sample_id"], "sample_id")}
    ids = (uid for uid in sent_user_ids if uid is not None)
    marked = 0
    while chunk := list(itertools.islice(ids, USERS_PER_QUERY)):
        marked += db.sample_members.update_many(
            {**scope, "user_id": {"$in": chunk}, "invited_at": None},
            {"$set": {"invited_at": sent_at, "mailing_id": mailing["_id"]}},
        ).modified_count
    return marked


def mark_members_reached(db: Database, mailing: Mapping[str, Any], sent_user_ids: Iterable[Any], sent_at: Any) -> int:
    """What a finished mailing records on the sample members it reached: a reminder's reminder, else
    an invitation."""
    if mailing.get("reminder_for_sample") is not None:
        return mark_reminded(db, mailing, sent_user_ids, sent_at)
    return mark_invited(db, mailing, sent_user_ids, sent_at)


def mark_reminded(db: Database, mailing: Mapping[str, Any], sent_user_ids: Iterable[Any], sent_at: dt.datetime) -> int:
    """The members a reminder reached get `reminded_at` and one more `reminders`, once: a member is
    stamped for a reminder only after their previous one was recorded and `reminder_after_hours`
    (at least an hour) passed, so one not reminded since this mailing was made is not counted yet."""
    made_at = as_utc(mailing.get("created_at") or mailing["_id"].generation_time)
    # Recorded no earlier than the mailing was made, whatever this machine's clock says: a reminded_at
    # from then on is what tells a second call that the member's reminder is counted.
    recorded_at = max(as_utc(sent_at), made_at)
    ids = (uid for uid in sent_user_ids if uid is not None)
    marked = 0
    while chunk := list(itertools.islice(ids, USERS_PER_QUERY)):
        marked += db.sample_members.update_many(
            {
                "reminder_mailing_id": mailing["_id"],
                "user_id": {"$in": chunk},
                "reminded_at": {"$not": {"$gte": made_at}},
            },
            {"$set": {"reminded_at": recorded_at}, "$inc": {"reminders": 1}},
        ).modified_count
    return marked
