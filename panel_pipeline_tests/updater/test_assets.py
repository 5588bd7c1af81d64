import datetime as dt
import math

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.sampler import store as sampler_store
from panel_pipeline.sampler.assets import sample_fieldwork, samples
from panel_pipeline.sampler.fieldwork import MIN_NEED
from panel_pipeline.sampler.resources import FieldworkTiming
from panel_pipeline.shared import invitations
from panel_pipeline.shared.resources import ContactBudget, MongoResource
from panel_pipeline.updater import store
from panel_pipeline.updater.assets import dynamic_sample_updates
from panel_pipeline.updater.jobs import dynamic_samples_worker_job
from panel_pipeline.updater.sensors import member_changes_sensor

UTC = dt.UTC


@pytest.fixture
def mongo(mongo_uri, mongo_db):
    return MongoResource(uri=mongo_uri, database=mongo_db.name)


def add_user(db, region, when, status="active"):
    return db.users.insert_one(
        {"status": status, "created_at": when, "profile": {"region": region, "gender": "female"}}
    ).inserted_id


def open_invitation():
    return {
        "template": "new_survey",
        "default_data": {
            "survey_name": "Tracker",
            "duration_minutes": 5,
            "points": 50,
            "survey_url": "https://survey.example/s/9",
        },
    }


def open_scotland_sample(db, size=10, mailing=True):
    doc = {
        "name": "Scotland tracker",
        "survey_id": "123",
        "size": size,
        "dynamic": True,
        "open": True,
        "filters": {"region": {"$in": ["Scotland"]}},
        "processed": True,
        "status": "done",
        "processed_at": dt.datetime.now(UTC) - dt.timedelta(minutes=1),
        "drawn_at": dt.datetime.now(UTC) - dt.timedelta(minutes=1),
    }
    if mailing:
        doc["mailing"] = open_invitation()
    return db.samples.insert_one(doc).inserted_id


def update(mongo):
    resources = {"mongo": mongo, "contact_budget": ContactBudget()}
    with dg.instance_for_test() as instance:
        result = dg.materialize([dynamic_sample_updates], instance=instance, resources=resources)
    assert result.success
    return result.asset_materializations_for_node("dynamic_sample_updates")[0].metadata


def test_new_scottish_member_joins_and_is_invited_once(mongo, mongo_db):
    sample_id = open_scotland_sample(mongo_db)
    now = dt.datetime.now(UTC)
    scot = add_user(mongo_db, "Scotland", now)
    add_user(mongo_db, "Wales", now)
    add_user(mongo_db, "Scotland", now, status="unsubscribed")
    metadata = update(mongo)
    assert metadata["members_added"].value == metadata["dagster/row_count"].value == 1
    member = mongo_db.sample_members.find_one({"sample_id": sample_id})
    assert member["user_id"] == scot
    (mailing,) = mongo_db.mailings.find()
    assert mailing["_id"] == member["mailing_id"] and mailing["recipient_count"] == 1 and "recipients" not in mailing
    assert mailing["processed"] is False and mailing["template"] == "new_survey"

    update(mongo)  # the same changes seen again (cursor overlap): nothing new
    assert mongo_db.sample_members.count_documents({}) == 1
    assert mongo_db.mailings.count_documents({}) == 1


def test_crash_between_stamping_and_mailing_is_finished_by_the_next_run(mongo, mongo_db):
    sample_id = open_scotland_sample(mongo_db)
    scot = add_user(mongo_db, "Scotland", dt.datetime.now(UTC))
    now = dt.datetime.now(UTC)
    store.add_members(mongo_db, str(sample_id), [str(scot)], now)
    mailing_id = invitations.stamp_pending_invitations(mongo_db, sample_id)  # then the run "dies"
    update(mongo)
    (mailing,) = mongo_db.mailings.find()
    assert mailing["_id"] == mailing_id


def test_sample_closes_at_its_size_and_end_date(mongo, mongo_db):
    full = open_scotland_sample(mongo_db, size=1, mailing=False)
    ended = open_scotland_sample(mongo_db, mailing=False)
    mongo_db.samples.update_one({"_id": ended}, {"$set": {"closes_at": dt.datetime(2020, 1, 1, tzinfo=UTC)}})
    add_user(mongo_db, "Scotland", dt.datetime.now(UTC))
    add_user(mongo_db, "Scotland", dt.datetime.now(UTC))
    update(mongo)
    assert mongo_db.sample_members.count_documents({"sample_id": full}) == 1
    assert mongo_db.samples.find_one({"_id": full})["closed_reason"] == "its size was reached"
    assert mongo_db.samples.find_one({"_id": ended})["open"] is False
    assert mongo_db.sample_members.count_documents({"sample_id": ended}) == 0
    assert mongo_db.mailings.count_documents({}) == 0


def test_member_who_moves_away_is_recorded_but_kept(mongo, mongo_db):
    sample_id = open_scotland_sample(mongo_db, mailing=False)
    scot = add_user(mongo_db, "Scotland", dt.datetime.now(UTC))
    update(mongo)
    mongo_db.users.update_one(
        {"_id": scot}, {"$set": {"profile.region": "Wales", "profile_updated_at": dt.datetime.now(UTC)}}
    )
    update(mongo)
    member = mongo_db.sample_members.find_one({"sample_id": sample_id, "user_id": scot})
    assert member["qualifies"] is False and member["stopped_qualifying_at"] is not None


def test_sensor_requests_an_update_only_when_members_changed(mongo, mongo_db):
    with dg.instance_for_test() as instance:

        def tick():
            return member_changes_sensor(dg.build_sensor_context(instance=instance, resources={"mongo": mongo}))

        assert tick().skip_reason is not None
        add_user(mongo_db, "Scotland", dt.datetime.now(UTC))
        assert len(tick().run_requests) == 1
        store.write_cursor(mongo_db, store.latest_change(mongo_db))
        assert tick().skip_reason.skip_message == "no member changed since the last update"


def test_update_cost_does_not_depend_on_the_unchanged_panel(mongo, mongo_db):
    old = dt.datetime(2025, 1, 1, tzinfo=UTC)
    mongo_db.users.insert_many(
        [{"status": "active", "created_at": old, "profile": {"region": "Scotland"}} for _ in range(2000)]
    )
    store.ensure_indexes(mongo_db)
    store.write_cursor(mongo_db, old + dt.timedelta(days=1))
    add_user(mongo_db, "Scotland", dt.datetime.now(UTC))
    for name in store.CHANGE_FIELDS:
        cursor = mongo_db.users.find(store.stream_query(name, (old + dt.timedelta(days=1), ObjectId("0" * 24))))
        plan = cursor.sort([(name, 1), ("_id", 1)]).limit(store.CHANGES_PER_PAGE).explain()
        assert plan["executionStats"]["totalDocsExamined"] <= 1, name
    (page,) = store.changed_member_pages(mongo_db, store.read_cursor(mongo_db), 2026)
    assert page.profiles.shape[0] == 1


def test_members_who_changed_before_the_draw_do_not_join(mongo, mongo_db):
    add_user(mongo_db, "Scotland", dt.datetime.now(UTC) - dt.timedelta(hours=1))
    sample_id = open_scotland_sample(mongo_db, mailing=False)
    update(mongo)
    assert mongo_db.sample_members.count_documents({"sample_id": sample_id}) == 0


def test_member_who_joined_while_the_draw_ran_joins(mongo, mongo_db):
    """The draw read the panel at `drawn_at` and finished (`processed_at`) later; a member stamped in
    between, or a little before by a backend clock running behind ours, was in neither."""
    sample_id = open_scotland_sample(mongo_db, mailing=False)
    drawn_at = dt.datetime.now(UTC)
    mongo_db.samples.update_one(
        {"_id": sample_id}, {"$set": {"drawn_at": drawn_at, "processed_at": drawn_at + dt.timedelta(seconds=5)}}
    )
    during = add_user(mongo_db, "Scotland", drawn_at + dt.timedelta(seconds=2))
    behind = add_user(mongo_db, "Scotland", drawn_at - dt.timedelta(seconds=2))
    update(mongo)
    assert set(mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id})) == {during, behind}


def test_the_requests_exclusions_hold_for_newcomers(mongo, mongo_db):
    sample_id = open_scotland_sample(mongo_db, mailing=False)
    mongo_db.samples.update_one(
        {"_id": sample_id}, {"$set": {"exclude": {"invited_within_days": 30, "completed_surveys": ["77"]}}}
    )
    now = dt.datetime.now(UTC)
    completed, invited, newcomer = (add_user(mongo_db, "Scotland", now) for _ in range(3))
    mongo_db.transactions.insert_one({"user_id": completed, "survey_id": 77, "processed": True})
    mongo_db.sample_members.insert_one(
        {"sample_id": ObjectId(), "user_id": invited, "invited_at": now - dt.timedelta(days=3)}
    )
    metadata = update(mongo)
    assert mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id}) == [newcomer]
    (row,) = metadata["per_sample"].records
    assert row.data == {
        "sample": str(sample_id),
        "added": 1,
        "no room": 0,
        "excluded": 2,
        "stopped qualifying": 0,
        "held back (contact budget)": 0,
    }


def test_an_age_filter_reads_the_birth_year_not_a_stale_stored_age(mongo, mongo_db):
    sample_id = open_scotland_sample(mongo_db, mailing=False)
    mongo_db.samples.update_one(
        {"_id": sample_id}, {"$set": {"filters": {"region": {"$in": ["Scotland"]}, "age": {"$gte": 30}}}}
    )
    now = dt.datetime.now(UTC)
    thirty_something = mongo_db.users.insert_one(
        {
            "status": "active",
            "created_at": now,
            "profile": {"region": "Scotland", "birth_year": now.year - 35, "age": 20},
        }
    ).inserted_id
    update(mongo)
    assert mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id}) == [thirty_something]


def test_a_scottish_newcomer_without_vote_2024_joins_a_sample_drawn_where_nobody_answered_it(mongo, mongo_db):
    """The first draw dropped the vote target (nobody had answered it) and found a fifth of the
    sample without a social grade: newcomers are placed by the same rules."""
    sample_id = open_scotland_sample(mongo_db, size=10, mailing=False)
    quotas = {"vote_2024": {"labour": 0.5, "snp": 0.5}, "social_grade": {"AB": 0.5, "C1": 0.5}}
    result = {
        "dropped_targets": [
            {"target": "vote_2024", "reason": "no member has answered vote_2024: the vote_2024 target was left out"}
        ],
        "missing": [{"target": "social_grade", "members": 30, "completes": 2, "pct": 20.0}],
    }
    mongo_db.samples.update_one({"_id": sample_id}, {"$set": {"quotas": quotas, "result": result}})
    drawn = mongo_db.users.insert_one(
        {"status": "active", "created_at": dt.datetime(2025, 1, 1, tzinfo=UTC), "profile": {"region": "Scotland"}}
    ).inserted_id
    mongo_db.sample_members.insert_one({"sample_id": sample_id, "user_id": drawn, "invited_at": None})
    now = dt.datetime.now(UTC)
    newcomer, second_without_grade = (
        mongo_db.users.insert_one(
            {"status": "active", "created_at": now, "profile": {"region": "Scotland", "birth_year": 1980}}
        ).inserted_id
        for _ in range(2)
    )
    metadata = update(mongo)
    members = set(mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id}))
    # The drawn member already holds one of the two places without a grade; the first newcomer takes the other.
    assert members == {drawn, newcomer}
    assert second_without_grade not in members
    (row,) = metadata["per_sample"].records
    assert row.data["added"] == 1 and row.data["no room"] == 1


def add_member(db, region, gender, when):
    return db.users.insert_one(
        {"status": "active", "created_at": when, "profile": {"region": region, "gender": gender}}
    ).inserted_id


def test_a_dynamic_fieldwork_sample_takes_newcomers_into_short_cells_only(mongo, mongo_db):
    """Drawn and looked at by the Sampler's own assets: the women's cell is full (closed), the men's
    still needs completes; newcomers join only the men's, each using half a complete of its need."""
    past = dt.datetime.now(UTC) - dt.timedelta(days=30)
    women = [add_member(mongo_db, "Scotland", "female", past) for _ in range(4)]
    [add_member(mongo_db, "Scotland", "male", past) for _ in range(2)]
    sample_id = mongo_db.samples.insert_one(
        {
            "name": "Scotland fieldwork tracker",
            "survey_id": "55",
            "size": 8,
            "dynamic": True,
            "filters": {"region": {"$in": ["Scotland"]}},
            "quotas": {"gender": {"female": 0.5, "male": 0.5}},
            "expected_response_rate": 0.5,
            "mailing": open_invitation(),
            "processed": False,
            "created_at": dt.datetime.now(UTC),
        }
    ).inserted_id
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sample_requests", [str(sample_id)])
        drawn = dg.materialize(
            [samples],
            partition_key=str(sample_id),
            instance=instance,
            resources={"mongo": mongo, "contact_budget": ContactBudget()},
        )
        assert drawn.success
        assert str(sample_id) in {str(doc["_id"]) for doc in sampler_store.open_fieldwork_samples(mongo_db)}
        invited_at = dt.datetime.now(UTC) - dt.timedelta(hours=1)  # as the Mailer stamps a sent invitation
        mongo_db.sample_members.update_many({"sample_id": sample_id}, {"$set": {"invited_at": invited_at}})
        mongo_db.transactions.insert_many(
            [
                {"user_id": uid, "survey_id": "55", "response_id": i + 1, "created_at": invited_at}
                for i, uid in enumerate(women)
            ]
        )
        looked = dg.materialize(
            [sample_fieldwork],
            partition_key=str(sample_id),
            instance=instance,
            resources={"mongo": mongo, "contact_budget": ContactBudget(), "fieldwork_timing": FieldworkTiming()},
        )
        assert looked.success
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["target_completes"] == 8 and state["status"] == "open"  # its size is the completes wanted
    assert state["closed_cells"][0]["category"] == "female"
    men_need = next(cell["need"] for cell in state["by_cell"] if cell["category"] == "male")
    assert men_need >= 1.0, state["by_cell"]

    now = dt.datetime.now(UTC)
    [add_member(mongo_db, "Scotland", "female", now) for _ in range(3)]
    men = [add_member(mongo_db, "Scotland", "male", now) for _ in range(12)]
    metadata = update(mongo)
    joined = set(mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id, "source": "updater"}))
    assert 0 < len(joined) < len(men)
    assert joined == set(men[: math.floor((men_need - MIN_NEED) / 0.5) + 1])  # until the need is met
    assert metadata["members_added"].value == len(joined)
    assert mongo_db.samples.find_one({"_id": sample_id})["open"] is True  # more members than `size`: still open

    later = dt.datetime.now(UTC)  # before fieldwork looks again, the joiners count: no room twice
    add_member(mongo_db, "Scotland", "male", later)
    assert update(mongo)["members_added"].value == 0

    mongo_db.samples.update_one({"_id": sample_id}, {"$set": {"fieldwork_state.status": "closed"}})
    update(mongo)
    closed = mongo_db.samples.find_one({"_id": sample_id})
    assert closed["open"] is False and closed["closed_reason"] == "its fieldwork closed"


def contacted(db, user_id, times):
    """`times` survey invitations to other samples in the last days."""
    db.sample_members.insert_many(
        [
            {"sample_id": ObjectId(), "user_id": user_id, "invited_at": dt.datetime.now(UTC) - dt.timedelta(days=1)}
            for _ in range(times)
        ]
    )


def test_a_newcomer_at_the_contact_budget_is_held_back_and_counted(mongo, mongo_db):
    sample_id = open_scotland_sample(mongo_db)
    mongo_db.samples.update_one({"_id": sample_id}, {"$set": {"quotas": {"gender": {"female": 0.5, "male": 0.5}}}})
    now = dt.datetime.now(UTC)
    busy, free = add_user(mongo_db, "Scotland", now), add_user(mongo_db, "Scotland", now)
    contacted(mongo_db, busy, 3)
    contacted(mongo_db, free, 2)
    metadata = update(mongo)
    assert mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id}) == [free]
    assert metadata["members_held_back"].value == 1
    (row,) = metadata["per_sample"].records
    assert row.data["held back (contact budget)"] == 1
    (cell,) = metadata["held_back_by_cell"].records
    assert cell.data == {"sample": str(sample_id), "target": "gender", "category": "female", "held back": 1}
    summary = {"members": 1, "by_cell": [{"target": "gender", "category": "female", "held_back": 1}]}
    assert mongo_db.samples.find_one({"_id": sample_id})["dynamic_held_back"].items() >= summary.items()

    update(mongo)  # the same change seen again: still one member held back, once
    assert mongo_db.dynamic_held_back.count_documents({"sample_id": sample_id}) == 1

    # Simplest honest rule: a held-back member is looked at again when they next change.
    mongo_db.sample_members.delete_many({"user_id": busy})
    mongo_db.users.update_one({"_id": busy}, {"$set": {"profile_updated_at": dt.datetime.now(UTC)}})
    update(mongo)
    assert busy in mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id})
    assert mongo_db.samples.find_one({"_id": sample_id})["dynamic_held_back"]["members"] == 0


def test_the_standing_worker_holds_the_budget_from_its_resource(mongo, mongo_db):
    sample_id = open_scotland_sample(mongo_db)
    busy, free = (
        add_user(mongo_db, "Scotland", dt.datetime.now(UTC)),
        add_user(mongo_db, "Scotland", dt.datetime.now(UTC)),
    )
    contacted(mongo_db, busy, 2)
    result = dynamic_samples_worker_job.execute_in_process(
        run_config={"ops": {"serve_dynamic_samples": {"config": {"serve_seconds": 1.0}}}},
        resources={"mongo": mongo, "contact_budget": ContactBudget(contacts_per_week=2)},
    )
    assert result.success
    assert mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id}) == [free]
    (materialization,) = result.asset_materializations_for_node("serve_dynamic_samples")
    assert materialization.metadata["members_held_back"].value == 1


def test_a_sample_without_a_mailing_holds_nobody_back(mongo, mongo_db):
    """Joining a sample nobody is invited to is no contact: the budget does not apply."""
    sample_id = open_scotland_sample(mongo_db, mailing=False)
    busy = add_user(mongo_db, "Scotland", dt.datetime.now(UTC))
    contacted(mongo_db, busy, 3)
    metadata = update(mongo)
    assert mongo_db.sample_members.distinct("user_id", {"sample_id": sample_id}) == [busy]
    assert metadata["members_held_back"].value == 0
