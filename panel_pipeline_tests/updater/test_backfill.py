"""A backlog of changes larger than a page is read whole, in a stable order: each member once, none
skipped, however many share a timestamp (real mongod)."""

import datetime as dt
import random

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.shared.resources import ContactBudget, MongoResource
from panel_pipeline.updater import store
from panel_pipeline.updater.assets import dynamic_sample_updates
from panel_pipeline.updater.sensors import member_changes_sensor

UTC = dt.UTC
BACKFILL = 50_000


@pytest.fixture
def mongo(mongo_uri, mongo_db):
    return MongoResource(uri=mongo_uri, database=mongo_db.name)


def update(mongo, instance):
    result = dg.materialize(
        [dynamic_sample_updates], instance=instance, resources={"mongo": mongo, "contact_budget": ContactBudget()}
    )
    assert result.success
    return {
        key: value.value
        for key, value in result.asset_materializations_for_node("dynamic_sample_updates")[0].metadata.items()
    }


def dynamic_sample(db, size, drawn_at, filters=None):
    return db.samples.insert_one(
        {
            "name": "tracker",
            "survey_id": "9",
            "size": size,
            "dynamic": True,
            "open": True,
            "processed": True,
            "status": "done",
            "filters": filters or {},
            "drawn_at": drawn_at,
            "processed_at": drawn_at,
        }
    ).inserted_id


def test_pages_give_every_changed_member_once_in_change_order(mongo_db):
    """Ties, members whose newer time is `created_at` or `profile_updated_at` or both alike, left
    members and wrong-typed times, read 7 at a time."""
    rng = random.Random(5)
    base = dt.datetime(2026, 5, 1, tzinfo=UTC)
    moments = [base + dt.timedelta(seconds=s) for s in (20, 20, 20, 30, 40)]
    docs = []
    for _ in range(300):
        doc = {
            "_id": ObjectId(),
            "status": rng.choice(["active"] * 5 + ["unsubscribed"]),
            "profile": {"region": "Wales"},
        }
        kind = rng.randrange(4)
        if kind == 0:
            doc["created_at"] = rng.choice(moments)
        elif kind == 1:
            doc["created_at"], doc["profile_updated_at"] = base - dt.timedelta(days=3), rng.choice(moments)
        elif kind == 2:
            doc["created_at"] = doc["profile_updated_at"] = rng.choice(moments)
        else:
            doc["created_at"], doc["profile_updated_at"] = rng.choice(moments), "yesterday"
        docs.append(doc)
    mongo_db.users.insert_many(docs)
    store.ensure_indexes(mongo_db)

    pages = list(store.changed_member_pages(mongo_db, base + dt.timedelta(seconds=10), 2026, page_size=7))
    read = [user_id for page in pages for user_id in page.profiles.index]
    expected = sorted((store.changed_at_of(doc), doc["_id"]) for doc in docs if doc["status"] == "active")
    assert read == [str(user_id) for _, user_id in expected]
    assert all(len(page.profiles) <= 2 * 7 for page in pages)
    assert [page.newest_change for page in pages] == sorted(page.newest_change for page in pages)


def test_a_backfill_of_50000_changes_is_considered_once_none_skipped(mongo, mongo_db):
    """50,000 profiles changed after the samples' draw, 10,000 at each of five timestamps: the
    Scotland sample takes the first Scots in change order up to its size, the open one everybody,
    each once, in one run; the next run (cursor overlap) adds nobody."""
    drawn_at = (dt.datetime.now(UTC) - dt.timedelta(hours=1)).replace(microsecond=0)  # Mongo keeps milliseconds
    moments = [drawn_at + dt.timedelta(minutes=m) for m in range(1, 6)]
    users = [
        {
            "_id": ObjectId(),
            "status": "active",
            "created_at": drawn_at - dt.timedelta(days=30),
            "profile_updated_at": moments[n % 5],
            "profile": {"region": ("Scotland", "Wales")[n % 2], "gender": "female"},
        }
        for n in range(BACKFILL)
    ]
    mongo_db.users.insert_many(users)
    scotland = dynamic_sample(mongo_db, 12_000, drawn_at, {"region": {"$in": ["Scotland"]}})
    everyone = dynamic_sample(mongo_db, 100_000, drawn_at)
    store.write_cursor(mongo_db, drawn_at)

    with dg.instance_for_test() as instance:
        first = update(mongo, instance)
        assert first["changed_members"] == BACKFILL, "each changed member read once"
        assert first["pages"] >= BACKFILL // store.CHANGES_PER_PAGE
        assert mongo_db.sample_members.count_documents({"sample_id": everyone}) == BACKFILL
        in_change_order = sorted(
            (u["profile_updated_at"], u["_id"]) for u in users if u["profile"]["region"] == "Scotland"
        )
        assert set(mongo_db.sample_members.distinct("user_id", {"sample_id": scotland})) == {
            i for _, i in in_change_order[:12_000]
        }
        assert mongo_db.samples.find_one({"_id": scotland})["closed_reason"] == "its size was reached"
        assert store.read_cursor(mongo_db) == moments[-1]

        second = update(mongo, instance)
        assert second["changed_members"] == BACKFILL // 5, (
            "the overlap looks 10 s back: the last timestamp's members again"
        )
        assert second["members_added"] == 0
        assert mongo_db.sample_members.count_documents({}) == BACKFILL + 12_000


def test_a_change_of_a_member_who_left_does_not_request_updates_forever(mongo, mongo_db):
    dynamic_sample(mongo_db, 10, dt.datetime.now(UTC) - dt.timedelta(minutes=1))
    mongo_db.users.insert_one(
        {"status": "unsubscribed", "created_at": dt.datetime.now(UTC), "profile": {"region": "Wales"}}
    )
    with dg.instance_for_test() as instance:

        def tick():
            return member_changes_sensor(dg.build_sensor_context(instance=instance, resources={"mongo": mongo}))

        assert len(tick().run_requests) == 1
        assert update(mongo, instance)["changed_members"] == 0
        assert tick().skip_reason.skip_message == "no member changed since the last update"
