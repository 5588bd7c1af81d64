"""Recipients resolved from the real mongod: streamed in chunks (one users query per chunk), the new
invitation contract, duplicates counted, bad addresses and data failing their recipient alone."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pymongo
import pytest
from bson import Binary, ObjectId
from pymongo import monitoring

from panel_pipeline.mailer.dispatch import plan_recipients
from panel_pipeline.mailer.recipients import USERS_PER_QUERY, mark_members_reached, resolve_recipients
from panel_pipeline.mailer.store import FAILED, PENDING, SUPPRESSED
from panel_pipeline.mailer.validation import LinkPolicy
from panel_pipeline.queue.store import RequestRejected
from panel_pipeline.shared.contract import UNSUBSCRIBE_URL
from panel_pipeline.shared.templates import load_templates

SURVEY = {"survey_name": "Bus", "duration_minutes": 5, "points": 50, "survey_url": "https://survey.example/s/1"}
LINKS = LinkPolicy.of(["survey.example", "panel.example"])


def bulk_link(member_id: str) -> str:
    return f"https://panel.example/u?user={member_id}"


class FindCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds[event.command["find"]] += 1

    def succeeded(self, event) -> None: ...

    def failed(self, event) -> None: ...


@pytest.fixture
def counted(mongo_uri, mongo_db):
    """The test's database through a client that counts `find` commands per collection."""
    listener = FindCounter()
    client = pymongo.MongoClient(mongo_uri, event_listeners=[listener])
    yield client[mongo_db.name], listener
    client.close()


def add_users(db, count: int, **fields) -> list[ObjectId]:
    return db.users.insert_many(
        [{"email": f"m{i}@panel.example", "first_name": f"M{i}", "status": "active", **fields} for i in range(count)]
    ).inserted_ids


def test_a_big_invitation_is_streamed_a_thousand_members_per_users_query(counted):
    db, listener = counted
    members = add_users(db, 2500)
    mailing_id, sample_id = ObjectId(), ObjectId()
    db.sample_members.insert_many(
        [{"sample_id": sample_id, "user_id": uid, "mailing_id": mailing_id, "invited_at": None} for uid in members]
    )
    db.sample_members.insert_one(
        {"sample_id": sample_id, "user_id": ObjectId(), "mailing_id": ObjectId()}
    )  # another invitation's
    invitation = {
        "_id": mailing_id,
        "kind": "bulk",
        "template": "new_survey",
        "invitation_for_sample": sample_id,
        "recipient_count": 2500,
    }
    recipients = resolve_recipients(db, invitation, bulk_link)
    listener.finds.clear()
    chunks = recipients.chunks()
    first = next(chunks)
    assert len(first) == USERS_PER_QUERY and listener.finds["users"] == 1, "nothing beyond the first chunk was read"
    sizes = [len(first), *(len(chunk) for chunk in chunks)]
    assert sizes == [1000, 1000, 500] and listener.finds["users"] == 3
    assert recipients.duplicates == 0 and recipients.missing_members == 0


def test_listed_addresses_are_looked_up_in_batches_and_duplicates_counted(counted):
    db, listener = counted
    (ann,) = add_users(db, 1)  # m0@panel.example
    listed = [
        {"email": "M0@Panel.example "},  # the member, by address
        {"user_id": ann},  # the same member again
        {"email": "new@panel.example"},
        {"email": " NEW@panel.example"},  # differs only in case and spaces
        *({"email": f"other{i}@panel.example"} for i in range(5)),
    ]
    listener.finds.clear()
    recipients = resolve_recipients(db, {"_id": ObjectId(), "template": "welcome", "recipients": listed}, None)
    resolved = list(recipients)
    assert [r.email for r in resolved] == [
        "m0@panel.example",
        "new@panel.example",
        *(f"other{i}@panel.example" for i in range(5)),
    ]
    assert resolved[0].user_id == ann and resolved[0].data == {"first_name": "M0"}
    assert recipients.duplicates == 2
    assert listener.finds["users"] == 2, "one query for the chunk's ids, one for its addresses (was one per address)"


def test_data_is_made_json_and_a_bad_value_or_address_fails_that_recipient_alone(mongo_db):
    when = dt.datetime(2026, 12, 1, 9, 0)
    listed = [
        {
            "email": "ok@panel.example",
            "data": {
                "reset_url": "https://panel.example/r?t=1",
                "when": when,
                "ref": ObjectId("6566a0000000000000000009"),
            },
        },
        {"email": "blob@panel.example", "data": {"reset_url": "https://panel.example/r?t=2", "blob": Binary(b"\x00")}},
        {"email": "not an address", "data": {"reset_url": "https://panel.example/r?t=3"}},
        {
            "email": "raw@panel.example",
            "data": {"reset_url": "https://panel.example/r?t=4", "html": {"first_name": "<b>"}},
        },
        {"email": "evil@panel.example", "data": {"reset_url": "https://evil.example/r?t=5"}},
        {"email": "js@panel.example", "data": {"reset_url": "javascript:alert(1)"}},
        {"email": "list@panel.example", "data": ["not", "an", "object"]},
    ]
    mailing = {"_id": ObjectId(), "template": "password_recovery", "kind": "transactional", "recipients": listed}
    template = load_templates()["password_recovery"]
    planned = plan_recipients(
        template,
        resolve_recipients(mongo_db, mailing, None),
        {"first_name": "A", "expires_in_minutes": 60},
        bulk=False,
        links=LINKS,
    )
    outcome = {row.email: (row.status, row.error) for row in planned}
    assert outcome == {
        "ok@panel.example": (PENDING, None),
        "blob@panel.example": (
            FAILED,
            "recipients.1.data.blob: a Binary is not JSON; give a string, number, true/false, list or object",
        ),
        "not an address": (FAILED, "recipients.2.email: not an e-mail address (no name before an @)"),
        "raw@panel.example": (
            FAILED,
            "recipients.3.data.html: reserved (the pipeline puts the HTML-escaped copy of the data there)",
        ),
        "evil@panel.example": (FAILED, "data.reset_url: link points at a host that is not in the allowed link hosts"),
        "js@panel.example": (FAILED, "data.reset_url: link must be https"),
        "list@panel.example": (FAILED, "recipients.6.data: must be an object, not list"),
    }
    ok = next(row for row in planned if row.email == "ok@panel.example")
    assert ok.data["when"] == "2026-12-01T09:00:00+00:00" and ok.data["ref"] == "6566a0000000000000000009"


def test_bulk_data_never_carries_an_unsubscribe_link_of_its_own(mongo_db):
    members = add_users(mongo_db, 2)
    mailing = {
        "_id": ObjectId(),
        "template": "new_survey",
        "kind": "bulk",
        "recipients": [
            {"user_id": members[0], "data": {UNSUBSCRIBE_URL: "https://evil.example/phish"}},
            {"user_id": members[1]},
        ],
    }
    template = load_templates()["new_survey"]
    planned = plan_recipients(
        template,
        resolve_recipients(mongo_db, mailing, bulk_link),
        {**SURVEY, UNSUBSCRIBE_URL: "https://evil.example/all"},
        bulk=True,
        links=LINKS,
    )
    assert [(row.status, row.error) for row in planned] == [(PENDING, None), (PENDING, None)]
    assert all(UNSUBSCRIBE_URL not in row.data for row in planned), "the signed link is made at send time, never stored"


def test_a_bulk_recipient_who_is_no_member_fails_for_want_of_an_unsubscribe_link(mongo_db):
    mailing = {
        "_id": ObjectId(),
        "template": "new_survey",
        "kind": "bulk",
        "recipients": [{"email": "stranger@panel.example"}],
    }
    (row,) = plan_recipients(
        load_templates()["new_survey"],
        resolve_recipients(mongo_db, mailing, bulk_link),
        {**SURVEY, "first_name": "S"},
        bulk=True,
        links=LINKS,
    )
    assert (row.status, row.error) == (FAILED, "missing template data: unsubscribe_url")


def test_sample_members_who_left_are_suppressed_and_deleted_ones_counted(mongo_db):
    active, gone = add_users(mongo_db, 1)[0], add_users(mongo_db, 1, status="unsubscribed")[0]
    sample_id = ObjectId()
    mongo_db.sample_members.insert_many(
        [{"sample_id": sample_id, "user_id": uid, "invited_at": None} for uid in (active, gone, ObjectId())]
    )
    recipients = resolve_recipients(
        mongo_db, {"_id": ObjectId(), "template": "new_survey", "sample_id": sample_id}, bulk_link
    )
    planned = plan_recipients(load_templates()["new_survey"], recipients, SURVEY, bulk=True, links=LINKS)
    assert sorted(row.status for row in planned) == [PENDING, SUPPRESSED]
    assert recipients.missing_members == 1


@pytest.mark.parametrize(
    "mailing, expected",
    [
        ({"recipients": [{"email": "a@panel.example"}, {"user_id": ObjectId()}]}, "recipients.1.user_id: no user"),
        ({"recipients": [{"email": "a@panel.example"}, {}]}, "recipients.1: give a user_id or an email"),
        ({"recipients": [], "sample_id": None}, "recipients: the mailing lists no recipients and no sample_id"),
    ],
)
def test_a_wrong_listing_is_rejected_naming_the_field(mongo_db, mailing, expected):
    with pytest.raises(RequestRejected, match=expected.replace(".", r"\.")):
        list(resolve_recipients(mongo_db, {"_id": ObjectId(), "template": "welcome", **mailing}, None))


def test_a_reminder_is_counted_once_per_member_even_if_the_sender_s_clock_is_behind(mongo_db):
    made_at = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    reminder = {"_id": ObjectId(), "reminder_for_sample": ObjectId(), "created_at": made_at}
    ann, bob = ObjectId(), ObjectId()
    mongo_db.sample_members.insert_many(
        [
            {"sample_id": reminder["reminder_for_sample"], "user_id": uid, "reminder_mailing_id": reminder["_id"]}
            for uid in (ann, bob)
        ]
    )
    earlier = {"reminders": 1, "reminded_at": made_at - dt.timedelta(hours=50)}  # bob's first reminder
    mongo_db.sample_members.update_one({"user_id": bob}, {"$set": earlier})
    behind = made_at - dt.timedelta(minutes=5)  # the sending machine's clock, five minutes slow
    assert mark_members_reached(mongo_db, reminder, [ann, bob], behind) == 2
    assert mark_members_reached(mongo_db, reminder, [ann, bob], behind) == 0  # a re-run after a crash
    members = {m["user_id"]: m for m in mongo_db.sample_members.find()}
    assert (members[ann]["reminders"], members[bob]["reminders"]) == (1, 2)
    assert members[ann]["reminded_at"].replace(tzinfo=dt.UTC) == made_at and "invited_at" not in members[ann]


def test_a_reminder_leaves_out_a_member_whose_complete_came_in_after_it_was_made(mongo_db):
    """The backend's transaction is the complete; `completed_at` follows once the pipeline processes it."""
    sample_id = mongo_db.samples.insert_one({"survey_id": "812", "fieldwork_state": {"status": "open"}}).inserted_id
    reminder = {"_id": ObjectId(), "reminder_for_sample": sample_id, "template": "survey_reminder"}
    ann, bob = (
        mongo_db.users.insert_one({"email": f"{name}@panel.example", "status": "active"}).inserted_id
        for name in ("ann", "bob")
    )
    mongo_db.sample_members.insert_many(
        [{"sample_id": sample_id, "user_id": uid, "reminder_mailing_id": reminder["_id"]} for uid in (ann, bob)]
    )
    mongo_db.transactions.insert_one({"user_id": bob, "survey_id": "812", "processed": False})
    recipients = resolve_recipients(mongo_db, reminder, None)
    assert [r.user_id for r in recipients] == [ann]
    assert recipients.completed_members == 1
