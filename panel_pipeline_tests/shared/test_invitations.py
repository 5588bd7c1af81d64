"""Invitations on a real mongod: each sample's invitation fails alone, and none embeds its recipients."""

import datetime as dt
import logging
import time

import bson
from bson import ObjectId

from panel_pipeline.sampler import store
from panel_pipeline.shared import invitations

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEFAULT_DATA = {
    "survey_name": "Omnibus",
    "duration_minutes": 10,
    "points": 100,
    "survey_url": "https://survey.example/s/12",
}


def sample_with_members(db, count, mailing=None):
    sample_id = db.samples.insert_one(
        {
            "name": "s",
            "processed": True,
            "status": "done",
            "mailing": mailing or {"template": "new_survey", "default_data": DEFAULT_DATA},
        }
    ).inserted_id
    for start in range(0, count, 50_000):
        db.sample_members.insert_many(
            [
                {"sample_id": sample_id, "user_id": ObjectId(), "invited_at": None, "source": "sampler"}
                for _ in range(start, min(count, start + 50_000))
            ],
            ordered=False,
        )
    return sample_id


def test_one_bad_sample_among_good_ones_fails_alone(mongo_db, caplog):
    store.ensure_indexes(mongo_db)
    good = [sample_with_members(mongo_db, 3) for _ in range(2)]
    bad = sample_with_members(mongo_db, 2, {"template": "new_survey", "default_data": "points: 100"})
    deleted = sample_with_members(mongo_db, 2)
    unset = sample_with_members(mongo_db, 2)
    stamped = {
        sample_id: invitations.stamp_pending_invitations(mongo_db, sample_id, NOW)
        for sample_id in [bad, good[0], deleted, unset, good[1]]
    }
    mongo_db.samples.delete_one({"_id": deleted})
    mongo_db.samples.update_one({"_id": unset}, {"$unset": {"mailing": ""}})

    with caplog.at_level(logging.WARNING, logger=invitations.__name__):
        created = invitations.create_missing_mailings(mongo_db, NOW)

    assert sorted(created) == sorted(stamped[sample_id] for sample_id in good)
    for sample_id in good:
        mailing = mongo_db.mailings.find_one({"invitation_for_sample": sample_id})
        assert mailing == {
            "_id": stamped[sample_id],
            "processed": False,
            "created_at": NOW,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": DEFAULT_DATA,
            "invitation_for_sample": sample_id,
            "recipient_count": 3,
        }
    assert (
        mongo_db.samples.find_one({"_id": bad})["invitation_error"]
        == "mailing.default_data: must be an object of template fields, got str"
    )
    assert mongo_db.mailings.count_documents({}) == 2
    # Deleted or uninvited samples: their members are unstamped (never invited), said in the log by id.
    for sample_id in (deleted, unset):
        assert mongo_db.sample_members.count_documents({"sample_id": sample_id, "mailing_id": {"$exists": True}}) == 0
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"sample {deleted} was deleted; 2 member(s) unstamped" in logged
    assert f"sample {unset} no longer has a mailing; 2 member(s) unstamped" in logged
    assert "@" not in logged

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=invitations.__name__):
        assert invitations.create_missing_mailings(mongo_db, NOW) == []  # nothing new, and no raise
    assert "unstamped" not in caplog.text  # the dropped ones are not looked at again

    mongo_db.samples.update_one({"_id": bad}, {"$set": {"mailing.default_data": DEFAULT_DATA}})  # the PM fixes it
    assert invitations.create_missing_mailings(mongo_db, NOW) == [stamped[bad]]
    assert "invitation_error" not in mongo_db.samples.find_one({"_id": bad})
    assert mongo_db.pending_invitations.count_documents({}) == 0


def test_a_crash_between_stamping_and_the_mailing_is_finished_once(mongo_db):
    sample_id = sample_with_members(mongo_db, 4)
    mailing_id = invitations.stamp_pending_invitations(mongo_db, sample_id, NOW)  # then the run dies
    assert invitations.stamp_pending_invitations(mongo_db, sample_id, NOW) is None  # nobody left to stamp
    assert invitations.create_missing_mailings(mongo_db, NOW) == [mailing_id]
    assert invitations.create_missing_mailings(mongo_db, NOW) == []
    assert mongo_db.mailings.find_one({"_id": mailing_id})["recipient_count"] == 4


def test_a_large_sample_gets_a_mailing_document_no_larger_than_a_small_ones(mongo_db, capsys):
    """The document names its sample, never its members: its size does not grow with them (a 600k
    list of recipients would pass Mongo's 16 MB), so 3 and 40,000 members give the same bytes."""
    store.ensure_indexes(mongo_db)
    small = sample_with_members(mongo_db, 3)
    invitations.stamp_pending_invitations(mongo_db, small, NOW)
    large = sample_with_members(mongo_db, 40_000)
    started = time.perf_counter()
    mailing_id = invitations.stamp_pending_invitations(mongo_db, large, NOW)
    stamped = time.perf_counter()
    small_id, large_id = invitations.create_missing_mailings(mongo_db, NOW)
    created = time.perf_counter()
    assert large_id == mailing_id
    small_mailing, large_mailing = (mongo_db.mailings.find_one({"_id": i}) for i in (small_id, large_id))
    assert large_mailing["recipient_count"] == 40_000 and "recipients" not in large_mailing
    assert len(bson.encode(large_mailing)) == len(bson.encode(small_mailing)) < 1000
    with capsys.disabled():
        print(
            f"\n40k-member invitation: stamping {stamped - started:.2f} s, mailing documents {created - stamped:.3f} s"
        )


def test_a_few_newcomers_are_invited_promptly_a_backfill_in_the_bulk_line(mongo_db):
    few, many = sample_with_members(mongo_db, 3), sample_with_members(mongo_db, invitations.PROMPT_MAX_RECIPIENTS + 1)
    drawn = sample_with_members(mongo_db, 3)
    for sample_id in (few, many):
        invitations.stamp_pending_invitations(mongo_db, sample_id, NOW, prompt=True)
    invitations.stamp_pending_invitations(mongo_db, drawn, NOW)  # the Sampler's first draw
    invitations.create_missing_mailings(mongo_db, NOW)
    delivery = {doc["invitation_for_sample"]: doc.get("delivery") for doc in mongo_db.mailings.find()}
    assert delivery == {few: "prompt", many: None, drawn: None}


def test_a_reminder_round_names_nobody_in_an_open_round_and_is_made_once_with_the_closing_day(mongo_db, caplog):
    sample_id = sample_with_members(mongo_db, 3)
    a, b, c = (m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id}))
    first = invitations.stamp_pending_reminder(mongo_db, sample_id, [a, b], NOW)
    second = invitations.stamp_pending_reminder(mongo_db, sample_id, [a, b, c], NOW)  # a and b: round one is open
    assert invitations.stamp_pending_reminder(mongo_db, sample_id, [a, b, c], NOW) is None
    with caplog.at_level(logging.WARNING, logger=invitations.__name__):
        assert invitations.create_missing_mailings(mongo_db, NOW) == []
    assert mongo_db.samples.find_one({"_id": sample_id})["reminder_error"] == (
        "fieldwork_state.close_at: a reminder needs the closing date, and the sample has none"
    )
    assert f"reminder {first} of sample {sample_id} not made" in caplog.text

    # Fieldwork closing at midnight: the last day to take part is the day before.
    close_at = dt.datetime(2026, 12, 15, 0, 0, tzinfo=UTC)
    mongo_db.samples.update_one({"_id": sample_id}, {"$set": {"fieldwork_state.close_at": close_at}})
    assert invitations.create_missing_mailings(mongo_db, NOW) == [first, second]
    assert invitations.create_missing_mailings(mongo_db, NOW) == []
    reminder = mongo_db.mailings.find_one({"_id": first})
    assert reminder == {
        "_id": first,
        "processed": False,
        "created_at": NOW,
        "kind": "bulk",
        "template": "survey_reminder",
        "default_data": DEFAULT_DATA | {"closes_on": "Monday 14 December"},
        "reminder_for_sample": sample_id,
        "recipient_count": 2,
    }
    assert mongo_db.mailings.find_one({"_id": second})["recipient_count"] == 1
    assert "reminder_error" not in mongo_db.samples.find_one({"_id": sample_id})
    assert invitations.open_reminder_ids(mongo_db, sample_id) == {first, second}
    mongo_db.mailings.update_many({}, {"$set": {"processed": True}})  # sent: no round is open
    assert invitations.open_reminder_ids(mongo_db, sample_id) == set()
