"""Fieldwork reminders on a real mongod, through the `sample_fieldwork` asset in process: who is
reminded (only where a top-up can no longer fill the cell), once, within the contact budget, and
what a crash mid-round leaves."""

import datetime as dt

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.mailer.recipients import mark_reminded
from panel_pipeline.sampler.assets import sample_fieldwork
from panel_pipeline.sampler.resources import FieldworkTiming
from panel_pipeline.shared import invitations
from panel_pipeline.shared.resources import ContactBudget, MongoResource

UTC = dt.UTC
NOW = dt.datetime.now(UTC)
INVITED_AT = NOW - dt.timedelta(hours=30)
CLOSE_AT = NOW + dt.timedelta(days=5)
SURVEY_ID = "321"
INVITATION = {
    "template": "new_survey",
    "default_data": {
        "survey_name": "Omnibus",
        "duration_minutes": 10,
        "points": 100,
        "survey_url": "https://survey.example/s/321",
    },
}
PER_GENDER = 20


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def mongo(mongo_uri, mongo_db):
    return MongoResource(uri=mongo_uri, database=mongo_db.name)


def user(db, gender):
    profile = {"gender": gender, "birth_year": 1980, "region": "London", "social_grade": "C1"}
    member = {"email": f"{ObjectId()}@panel.example", "status": "active", "profile": profile}
    return db.users.insert_one(member).inserted_id


@pytest.fixture
def fielded(mongo_db):
    """A drawn sample with fieldwork (target 10 women, 10 men at an expected 30%), 20 women and 20
    men invited 30 h ago: the whole panel, so a top-up finds nobody left to invite. Ten women
    completed (their cell is full), one man did."""
    sample_id = mongo_db.samples.insert_one(
        {
            "name": "Omnibus wave 12",
            "survey_id": SURVEY_ID,
            "size": 20,
            "tolerance": 100,
            "quotas": {"gender": {"female": 0.5, "male": 0.5}},
            "expected_response_rate": 0.3,
            "mailing": INVITATION,
            "fieldwork": {"reminder_after_hours": 24, "max_reminders": 1, "close_at": CLOSE_AT},
            "processed": True,
            "status": "done",
            "drawn_at": NOW - dt.timedelta(days=2),
            "result": {},
            "fieldwork_state": {"status": "open", "close_at": CLOSE_AT},
        }
    ).inserted_id
    women = [user(mongo_db, "female") for _ in range(PER_GENDER)]
    men = [user(mongo_db, "male") for _ in range(PER_GENDER)]
    invitation_id = ObjectId()
    mongo_db.sample_members.insert_many(
        [
            {"sample_id": sample_id, "user_id": uid, "invited_at": INVITED_AT, "mailing_id": invitation_id}
            for uid in women + men
        ]
    )
    complete(mongo_db, women[:10] + men[:1])
    return sample_id, women, men


def complete(db, user_ids):
    db.transactions.insert_many(
        [
            {"user_id": uid, "survey_id": SURVEY_ID, "response_id": 1000 + i, "created_at": INVITED_AT}
            for i, uid in enumerate(user_ids)
        ]
    )


def fieldwork_pass(instance, mongo, sample_id, contacts_per_week=3):
    instance.add_dynamic_partitions("sample_requests", [str(sample_id)])
    result = dg.materialize(
        [sample_fieldwork],
        partition_key=str(sample_id),
        instance=instance,
        resources={
            "mongo": mongo,
            "contact_budget": ContactBudget(contacts_per_week=contacts_per_week),
            "fieldwork_timing": FieldworkTiming(),
        },
    )
    return result.asset_materializations_for_node("sample_fieldwork")[0].metadata


def reminder_mailings(db, sample_id):
    return list(db.mailings.find({"reminder_for_sample": sample_id}).sort("_id", 1))


def named_by(db, mailing_id):
    return {m["user_id"] for m in db.sample_members.find({"reminder_mailing_id": mailing_id})}


def mailer_sends(db, mailing, reached):
    """What the Mailer does once a reminder went out: the members it reached reminded, the mailing done."""
    mark_reminded(db, mailing, reached, dt.datetime.now(UTC))
    db.mailings.update_one({"_id": mailing["_id"]}, {"$set": {"processed": True, "status": "done"}})


def test_reminders_reach_only_active_invited_non_completers_in_short_cells_once(instance, mongo, mongo_db, fielded):
    sample_id, women, men = fielded
    mongo_db.users.update_one({"_id": men[1]}, {"$set": {"status": "unsubscribed"}})
    mongo_db.sample_members.update_one({"user_id": men[2]}, {"$set": {"invited_at": None}})  # still on its way

    metadata = fieldwork_pass(instance, mongo, sample_id)

    (reminder,) = reminder_mailings(mongo_db, sample_id)
    expected = set(men[3:])  # not the completer, the unsubscribed or the uninvited; no woman (her cell is full)
    assert named_by(mongo_db, reminder["_id"]) == expected
    assert reminder["recipient_count"] == len(expected) and "recipients" not in reminder
    assert reminder["kind"] == "bulk" and reminder["template"] == "survey_reminder" and not reminder["processed"]
    closes_on = invitations.closing_day(CLOSE_AT)
    assert reminder["default_data"] == INVITATION["default_data"] | {"closes_on": closes_on}
    assert "invitation_for_sample" not in reminder
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["reminder_round"]["reminded"] == len(expected) and state["reminder_round"]["held_back"] == 0
    assert metadata["reminded_now"].value == len(expected) and metadata["reminders_sent"].value == 0

    # The next pass before the Mailer sent it: nobody is in two rounds.
    assert fieldwork_pass(instance, mongo, sample_id)["reminded_now"].value == 0
    refused = men[3]  # an address the Mailer would not send to: that row failed, they were not reached
    mailer_sends(mongo_db, reminder, expected - {refused})
    # And after: max_reminders is 1, and who was not reached is tried again only after reminder_after_hours.
    metadata = fieldwork_pass(instance, mongo, sample_id)
    assert metadata["reminded_now"].value == 0 and metadata["reminders_sent"].value == len(expected) - 1
    assert len(reminder_mailings(mongo_db, sample_id)) == 1
    assert mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]["reminders"] == len(expected) - 1
    a_day_ago = ObjectId.from_datetime(NOW - dt.timedelta(hours=25))  # as if their round were made then
    mongo_db.sample_members.update_one({"user_id": refused}, {"$set": {"reminder_mailing_id": a_day_ago}})
    assert fieldwork_pass(instance, mongo, sample_id)["reminded_now"].value == 1
    assert named_by(mongo_db, reminder_mailings(mongo_db, sample_id)[-1]["_id"]) == {refused}


def test_a_short_cell_with_members_left_to_invite_gets_a_top_up_not_a_reminder(instance, mongo, mongo_db, fielded):
    """A fresh invitation yields more than a reminder to someone who let one pass: while the men's cell
    can still be filled from the panel, the pass tops it up and reminds nobody."""
    sample_id, _, men = fielded
    fresh = {user(mongo_db, "male") for _ in range(100)}

    metadata = fieldwork_pass(instance, mongo, sample_id)

    assert metadata["reminded_now"].value == 0 and not reminder_mailings(mongo_db, sample_id)
    added = {m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id, "wave": 2})}
    assert added and added <= fresh
    look = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]["last_top_up"]
    (male,) = [cell for cell in look["by_cell"] if cell["category"] == "male"]
    assert male["invitable_completes"] >= male["need"] > 0


def test_a_member_over_the_contact_budget_is_held_back_and_counted_per_cell(instance, mongo, mongo_db, fielded):
    sample_id, _, men = fielded
    busy = men[3:6]
    for _ in range(2):  # two other samples invited them this week: with this one, three contacts
        other = ObjectId()
        mongo_db.sample_members.insert_many(
            [{"sample_id": other, "user_id": uid, "invited_at": NOW - dt.timedelta(days=2)} for uid in busy]
        )

    metadata = fieldwork_pass(instance, mongo, sample_id)

    (reminder,) = reminder_mailings(mongo_db, sample_id)
    assert named_by(mongo_db, reminder["_id"]) == set(men[1:]) - set(busy)
    held = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]["reminder_round"]
    assert held["held_back"] == 3
    assert held["by_cell"] == [{"target": "gender", "category": "male", "held_back": 3}]
    assert metadata["reminders_held_back"].value == 3
    assert [r.data for r in metadata["reminders_held_back_by_cell"].records] == [
        {"target": "gender", "category": "male", "held back": 3}
    ]


def test_the_budget_is_the_contact_budget_resource_s_setting(instance, mongo, mongo_db, fielded):
    sample_id, _, men = fielded
    metadata = fieldwork_pass(instance, mongo, sample_id, contacts_per_week=1)  # their invitation used it up
    assert reminder_mailings(mongo_db, sample_id) == []
    assert metadata["reminded_now"].value == 0 and metadata["reminders_held_back"].value == len(men) - 1


def test_a_crash_between_stamping_and_the_mailing_document_reminds_nobody_twice(instance, mongo, mongo_db, fielded):
    sample_id, _, men = fielded
    # A pass that stopped after its pending id (nobody stamped yet), and one that stopped after stamping.
    mongo_db.pending_invitations.insert_one(
        {"_id": ObjectId(), "sample_id": sample_id, "stamped_at": NOW, "reminder": True}
    )
    crashed = invitations.stamp_pending_reminder(mongo_db, sample_id, men[1:6], NOW)
    assert mongo_db.mailings.find_one({"_id": crashed}) is None

    fieldwork_pass(instance, mongo, sample_id)

    first, second = reminder_mailings(mongo_db, sample_id)
    assert first["_id"] == crashed and named_by(mongo_db, crashed) == set(men[1:6])
    assert named_by(mongo_db, second["_id"]) == set(men[6:])
    assert mongo_db.pending_invitations.count_documents({}) == 0
    fieldwork_pass(instance, mongo, sample_id)
    assert len(reminder_mailings(mongo_db, sample_id)) == 2
