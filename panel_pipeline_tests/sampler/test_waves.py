"""Fieldwork waves on a real mongod, in process: the draw's first wave sized per cell by the rates,
the contact budget at the draw, top-up waves only into lagging cells, and a pass that is repeated
or crashes between adding a wave and inviting it adds and invites nobody twice."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler import fieldwork, store, waves
from panel_pipeline.sampler.assets import top_up_wave
from panel_pipeline.sampler.fieldwork_state import (
    FieldworkUpdate,
    sample_targets,
    soft_cells_reopened_at,
    update_fieldwork,
)
from panel_pipeline.sampler.requests import parse_sample_request
from panel_pipeline.sampler.response_rates import learn_response_rates
from panel_pipeline.sampler.store import learned_response_rates
from panel_pipeline.shared.resources import ContactBudget, MongoResource
from panel_pipeline_tests.sampler.test_assets import INVITATION, complete, fieldwork_run, request, run

UTC = dt.UTC
HALVES = {"gender": {"female": 0.5, "male": 0.5}}
RATES = {"female": 0.4, "male": 0.1}


@pytest.fixture
def mongo(mongo_uri, mongo_db):
    return MongoResource(uri=mongo_uri, database=mongo_db.name)


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def panel(mongo_db, profile_columns):
    """3,000 active members; `gender` of each by id."""
    profiles = generate_profiles(3000, seed=5)[profile_columns]
    docs = [
        {
            "status": "active",
            "created_at": dt.datetime(2025, 1, 1, tzinfo=UTC),
            "email": f"m{i}@panel.example",
            "profile": {k: v for k, v in row.items() if v is not None} | {"birth_year": int(row["birth_year"])},
        }
        for i, row in enumerate(profiles.astype(object).to_dict("records"))
    ]
    ids = mongo_db.users.insert_many(docs).inserted_ids
    return dict(zip(ids, profiles["gender"].astype(object), strict=True))


def members(mongo_db, sample_id, **query):
    return list(mongo_db.sample_members.find({"sample_id": sample_id, **query}))


def by_gender(panel, docs):
    genders = [panel[doc["user_id"]] for doc in docs]
    return {gender: genders.count(gender) for gender in ("female", "male")}


def learn_rates_where_women_answer_four_times_as_often(mongo_db, panel):
    """A stored `response_rates` document learned from 3,000 past invitations (women 40%, men 10%)."""
    now = dt.datetime.now(UTC)
    profiles = store.member_profiles(mongo_db, list(panel), now.year)
    rng = np.random.default_rng(2)
    answered = rng.random(len(profiles)) < profiles["gender"].map(RATES).fillna(0.2).to_numpy()
    invited_at = now - dt.timedelta(days=20)
    history = profiles[["age_band", "gender", "region", "social_grade"]].reset_index(drop=True)
    history["invited_at"] = invited_at
    history["completed_at"] = pd.Series(pd.NaT, index=history.index, dtype="datetime64[ns, UTC]")
    history.loc[answered, "completed_at"] = pd.Timestamp(invited_at + dt.timedelta(hours=6))
    learned = learn_response_rates(history, now)
    store.save_response_rates(mongo_db, learned.to_document(), now)


def test_the_first_wave_invites_first_wave_share_of_each_cell_at_the_learned_rates(instance, mongo, mongo_db, panel):
    learn_rates_where_women_answer_four_times_as_often(mongo_db, panel)
    sample_id = request(mongo_db, size=100, quotas=HALVES, seed=1, mailing=INVITATION)
    result = run(instance, mongo, sample_id)
    assert result.success
    drawn = members(mongo_db, sample_id)
    assert {doc["wave"] for doc in drawn} == {1}
    invited = by_gender(panel, drawn)
    assert invited["male"] > 2 * invited["female"]  # the low-rate cell gets more invitations
    # Each cell expects 0.7 x 50 = 35 completes at the learned rates.
    profiles = store.member_profiles(mongo_db, [doc["user_id"] for doc in drawn], dt.datetime.now(UTC).year)
    expected = pd.Series(learned_response_rates(mongo_db).predict(profiles), index=profiles.index)
    assert (expected.groupby(profiles["gender"].astype(object)).sum().round().between(29, 41)).all()
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["result"]["invited"] == len(drawn) == doc["members"]
    assert 60 <= doc["result"]["expected_completes"] <= 80  # 70 of the 100 completes
    assert {c["category"] for c in doc["result"]["composition"]} == {"female", "male"}
    (mailing,) = mongo_db.mailings.find()
    assert mailing["recipient_count"] == len(drawn)
    metadata = result.asset_materializations_for_node("samples")[0].metadata
    assert metadata["invitations"].value == len(drawn)


def test_members_at_their_contact_budget_are_not_drawn_and_are_counted_per_cell(instance, mongo, mongo_db, panel):
    women = [uid for uid, gender in panel.items() if gender == "female"][:200]
    yesterday = dt.datetime.now(UTC) - dt.timedelta(days=1)
    for survey in range(3):  # three invitations this week: at the budget of 3
        other = mongo_db.samples.insert_one({"name": f"other {survey}", "processed": True}).inserted_id
        mongo_db.sample_members.insert_many(
            [{"sample_id": other, "user_id": uid, "invited_at": yesterday} for uid in women]
        )
    sample_id = request(mongo_db, size=100, quotas=HALVES, seed=2, mailing=INVITATION, expected_response_rate=0.5)
    assert run(instance, mongo, sample_id).success
    drawn = {doc["user_id"] for doc in members(mongo_db, sample_id)}
    assert drawn and not drawn & set(women)
    doc = mongo_db.samples.find_one({"_id": sample_id})
    expected = {"held_back": 200, "by_cell": [{"target": "gender", "category": "female", "held_back": 200}]}
    assert doc["result"]["held_back"] == expected and doc["fieldwork_state"]["held_back"] == expected


def drawn_a_day_ago(instance, mongo, mongo_db, **fields):
    """A sample fielded in waves (request rates 0.5), drawn and mailed 30 hours ago."""
    sample_id = request(
        mongo_db,
        size=100,
        quotas=HALVES,
        seed=3,
        mailing=INVITATION,
        expected_response_rate=0.5,
        fieldwork={"top_up_every_hours": 1},
        **fields,
    )
    assert run(instance, mongo, sample_id).success
    then = dt.datetime.now(UTC) - dt.timedelta(hours=30)
    mongo_db.samples.update_one({"_id": sample_id}, {"$set": {"drawn_at": then}})
    mongo_db.sample_members.update_many({"sample_id": sample_id}, {"$set": {"added_at": then, "invited_at": then}})
    return sample_id, then


def women_complete_and_men_lag(mongo_db, panel, sample_id, then):
    drawn = members(mongo_db, sample_id)
    women = [doc["user_id"] for doc in drawn if panel[doc["user_id"]] == "female"]
    men = [doc["user_id"] for doc in drawn if panel[doc["user_id"]] == "male"]
    assert len(women) >= 50  # 0.7 x 50 / 0.5: some 70 invited, all complete: the cell is full
    complete(mongo_db, women + men[:5], "123", then + dt.timedelta(hours=4))
    return len(drawn)


def test_a_top_up_invites_only_the_lagging_cell_as_wave_2_and_a_second_pass_adds_nobody(
    instance, mongo, mongo_db, panel
):
    sample_id, then = drawn_a_day_ago(instance, mongo, mongo_db)
    first_wave = women_complete_and_men_lag(mongo_db, panel, sample_id, then)

    result = fieldwork_run(instance, mongo, sample_id)
    assert result.success
    added = members(mongo_db, sample_id, wave=2)
    assert added and by_gender(panel, added) == {"female": 0, "male": len(added)}  # never into the closed cell
    assert all(doc["invited_at"] is None and doc["mailing_id"] for doc in added)  # invited: the Mailer sends them
    second = mongo_db.mailings.find_one({"_id": added[0]["mailing_id"]})
    assert second["invitation_for_sample"] == sample_id and second["recipient_count"] == len(added)
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["waves"] == 2 and state["last_top_up"]["wave"] == 2
    assert state["last_top_up"]["invitations"] == len(added)
    assert [(w["wave"], w["members"]) for w in state["by_wave"]] == [(1, first_wave), (2, len(added))]
    assert {(c["target"], c["category"]) for c in state["closed_cells"]} == {("gender", "female")}
    metadata = result.asset_materializations_for_node("sample_fieldwork")[0].metadata
    assert metadata["waves"].value == 2 and "top-up wave 2" in metadata["top_up"].value

    again = fieldwork_run(instance, mongo, sample_id)
    assert again.success
    assert len(members(mongo_db, sample_id)) == first_wave + len(added)
    assert mongo_db.mailings.count_documents({}) == 2
    assert "no top-up" in again.asset_materializations_for_node("sample_fieldwork")[0].metadata["top_up"].value


def test_a_pass_that_crashed_between_adding_a_wave_and_inviting_it_invites_it_once_and_adds_nobody(
    instance, mongo, mongo_db, panel
):
    sample_id, then = drawn_a_day_ago(instance, mongo, mongo_db)
    first_wave = women_complete_and_men_lag(mongo_db, panel, sample_id, then)
    # The pass's first pieces: the state computed and wave 2 added; then it dies before the invitation.
    document = mongo_db.samples.find_one({"_id": sample_id})
    request_ = parse_sample_request(document)
    now = dt.datetime.now(UTC)
    fielded = store.fieldwork_members(mongo_db, sample_id, "123", now.year, mailed=True)
    update = update_fieldwork(request_, document, fielded, learned_response_rates(mongo_db), now)
    top_up, _ = top_up_wave(mongo_db, request_, document, update, fielded, None, ContactBudget(), now)
    assert top_up is not None and len(top_up.member_ids)
    waiting = members(mongo_db, sample_id, wave=2)
    assert len(waiting) == len(top_up.member_ids) and not any("mailing_id" in doc for doc in waiting)

    # The next pass counts them as invited (from their added_at), adds nobody, and invites them once.
    assert fieldwork_run(instance, mongo, sample_id).success
    assert len(members(mongo_db, sample_id)) == first_wave + len(waiting)
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["invited"] == first_wave + len(waiting) and state["waves"] == 2
    (mailing_id,) = {doc.get("mailing_id") for doc in members(mongo_db, sample_id, wave=2)}
    assert mailing_id and mongo_db.mailings.count_documents({}) == 2
    assert mongo_db.mailings.find_one({"_id": mailing_id})["recipient_count"] == len(waiting)


# --- when a top-up is due (pure) ---------------------------------------------------------------------

NOW = dt.datetime(2025, 6, 10, 12, tzinfo=UTC)


def fieldwork_now(needs, closed=(False, False), status="open"):
    cells = pd.DataFrame(
        {"target": ["gender", "gender"], "category": ["female", "male"], "need": needs, "closed": list(closed)}
    )
    accounting = fieldwork.CellAccounting(cells=cells, completes=0, invited=0, in_progress=0, reminders=0)
    return FieldworkUpdate(
        state={"status": status}, accounting=accounting, cell_members=pd.DataFrame(), completed_at={}, weights=None
    )


def wave_members(*waves_added_hours_ago):
    """One member per (wave, hours ago it was added)."""
    return pd.DataFrame(
        {
            "wave": [wave for wave, _ in waves_added_hours_ago],
            "added_at": [NOW - dt.timedelta(hours=hours) for _, hours in waves_added_hours_ago],
        }
    )


def waves_request(**fieldwork_settings):
    return parse_sample_request(
        {"name": "t", "survey_id": "1", "size": 100, "quotas": HALVES, "mailing": INVITATION}
        | ({"fieldwork": fieldwork_settings} if fieldwork_settings else {})
    )


@pytest.mark.parametrize(
    ("request_", "update", "members_", "before", "due"),
    [
        (waves_request(), fieldwork_now([0.0, 5.0]), wave_members((1, 13)), {}, True),
        # Wave 1's time is the draw's (13 h ago), whatever its members' added_at says.
        (waves_request(), fieldwork_now([0.0, 5.0]), wave_members((1, 1)), {}, True),
        (waves_request(), fieldwork_now([0.0, 5.0]), wave_members((1, 20), (2, 11)), {}, False),
        (waves_request(), fieldwork_now([0.0, 5.0]), wave_members((1, 20), (2, 13)), {}, True),
        (waves_request(top_up_every_hours=0.01), fieldwork_now([0.0, 5.0]), wave_members((1, 20), (2, 1)), {}, True),
        # The last look found nobody to add two hours ago: wait the interval from it too.
        (
            waves_request(),
            fieldwork_now([0.0, 5.0]),
            wave_members((1, 20)),
            {"last_top_up": {"at": NOW - dt.timedelta(hours=2)}},
            False,
        ),
        # 0.8 of a complete short (one short, a fifth of one still expected) is short enough; 0.4 is not.
        (waves_request(), fieldwork_now([0.0, 0.8]), wave_members((1, 13)), {}, True),
        (waves_request(), fieldwork_now([0.0, 0.4]), wave_members((1, 13)), {}, False),
        (waves_request(), fieldwork_now([0.0, 5.0], closed=(False, True)), wave_members((1, 13)), {}, False),
        (waves_request(), fieldwork_now([0.0, 5.0], status="closed"), wave_members((1, 13)), {}, False),
        (waves_request(waves=False), fieldwork_now([0.0, 5.0]), wave_members((1, 13)), {}, False),
    ],
)
def test_a_top_up_is_due_only_when_a_cell_is_short_and_the_latest_wave_is_old_enough(
    request_, update, members_, before, due
):
    reason = waves.top_up_not_due(request_, update, members_, NOW - dt.timedelta(hours=13), before, NOW)
    assert (reason is None) == due, reason


# --- when soft cells reopen (pure) -------------------------------------------------------------------


def test_soft_cells_close_at_target_in_waves_until_a_top_up_finds_a_hard_cell_stranded_and_stay_reopened():
    request_ = parse_sample_request(
        {"name": "t", "survey_id": "1", "size": 100, "quotas": HALVES, "mailing": INVITATION}
    )
    targets = sample_targets(request_, {})
    reached = {"by_cell": [{"target": "gender", "category": "male", "need": 3.0, "invitations": 4}]}
    stranded = {"by_cell": [{"target": "gender", "category": "male", "need": 3.0, "invitations": 0}]}
    assert soft_cells_reopened_at(request_, targets, {}, NOW) is None
    assert soft_cells_reopened_at(request_, targets, {"last_top_up": reached}, NOW) is None
    assert soft_cells_reopened_at(request_, targets, {"last_top_up": stranded}, NOW) == NOW
    earlier = NOW - dt.timedelta(hours=5)
    kept = {"last_top_up": reached, "soft_cells_reopened_at": earlier}
    assert soft_cells_reopened_at(request_, targets, kept, NOW) == earlier


def test_soft_cells_close_at_their_cap_from_the_start_in_a_sample_without_top_ups():
    for settings in ({"fieldwork": {"waves": False}}, {"dynamic": True}):
        request_ = parse_sample_request(
            {"name": "t", "survey_id": "1", "size": 100, "quotas": HALVES, "mailing": INVITATION} | settings
        )
        assert soft_cells_reopened_at(request_, sample_targets(request_, {}), {}, NOW) == NOW
