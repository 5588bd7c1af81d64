import datetime as dt

from bson import ObjectId

from panel_pipeline.shared.contacts import recent_contacts

NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


def membership(db, user_id, **fields):
    db.sample_members.insert_one({"sample_id": ObjectId(), "user_id": user_id, "invited_at": None, **fields})


def test_invitations_sent_or_on_their_way_and_reminders_count_within_seven_days(mongo_db):
    ann, bob, cat, dan = (ObjectId() for _ in range(4))
    membership(mongo_db, ann, invited_at=NOW - dt.timedelta(days=1), reminded_at=NOW - dt.timedelta(hours=2))
    membership(mongo_db, ann, mailing_id=ObjectId())  # stamped, not yet sent
    membership(mongo_db, ann, invited_at=NOW - dt.timedelta(days=8))  # outside the window
    membership(mongo_db, bob, invited_at=NOW - dt.timedelta(days=8), reminded_at=NOW - dt.timedelta(days=6))
    membership(mongo_db, cat)  # a sample without a mailing: never stamped, no contact
    assert recent_contacts(mongo_db, [ann, bob, cat, dan], NOW).tolist() == [3, 1, 0, 0]


def test_a_reminder_put_in_a_round_and_not_yet_sent_counts_once_sent_too(mongo_db):
    ann, bob, cat = (ObjectId() for _ in range(3))
    invited = NOW - dt.timedelta(days=3)
    an_hour_ago = ObjectId.from_datetime(NOW - dt.timedelta(hours=1))
    membership(mongo_db, ann, invited_at=invited, reminder_mailing_id=an_hour_ago)  # on its way
    sent = {"reminder_mailing_id": an_hour_ago, "reminded_at": NOW - dt.timedelta(minutes=30)}
    membership(mongo_db, bob, invited_at=invited, **sent)  # sent: one contact, not two
    old_round = ObjectId.from_datetime(NOW - dt.timedelta(days=9))
    membership(mongo_db, cat, invited_at=NOW - dt.timedelta(days=10), reminder_mailing_id=old_round)
    assert recent_contacts(mongo_db, [ann, bob, cat], NOW).tolist() == [2, 2, 0]
