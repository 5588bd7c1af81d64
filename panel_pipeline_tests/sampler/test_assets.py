"""The samples asset on a real mongod: from the queue, rejected requests, re-draws, invitations."""

import datetime as dt
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from bson import ObjectId

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.queue.store import LeaseLost
from panel_pipeline.sampler.assets import (
    draw_once,
    response_rates,
    sample_completes,
    sample_directory,
    sample_fieldwork,
    samples,
    soft_cells_closing,
)
from panel_pipeline.sampler.checks import cells_within_tolerance, weights_converged
from panel_pipeline.sampler.requests import AGE_BAND_VALUES, age_band_codes
from panel_pipeline.sampler.resources import CompletesFiles, FieldworkTiming
from panel_pipeline.sampler.sensors import samples_queue_sensor
from panel_pipeline.shared.resources import ContactBudget, MongoResource

UTC = dt.UTC
INVITATION = {
    "template": "new_survey",
    "default_data": {
        "survey_name": "Omnibus",
        "duration_minutes": 10,
        "points": 100,
        "survey_url": "https://survey.example/s/12",
    },
}

ONE_WAVE = {"waves": False}  # the whole size invited at the draw, no top-ups


@pytest.fixture
def mongo(mongo_uri, mongo_db):
    return MongoResource(uri=mongo_uri, database=mongo_db.name)


@pytest.fixture
def panel(mongo_db, profile_columns):
    profiles = generate_profiles(6000, seed=3)[profile_columns]
    created = dt.datetime(2025, 1, 1, tzinfo=UTC)
    docs = [
        {
            "status": "active",
            "created_at": created,
            "email": f"m{i}@panel.example",
            "profile": {k: v for k, v in row.items() if v is not None},
        }
        for i, row in enumerate(profiles.astype(object).to_dict("records"))
    ]
    for doc in docs:
        doc["profile"]["birth_year"] = int(doc["profile"]["birth_year"])
        doc["profile"]["age"] = int(doc["profile"]["age"])
    return mongo_db.users.insert_many(docs).inserted_ids


@pytest.fixture
def few_members(mongo_db):
    """Enough of a panel for requests refused before the draw: they must write nothing for it."""
    born = {"gender": "female", "region": "Scotland", "birth_year": 1980}
    docs = [{"status": "active", "email": f"m{i}@panel.example", "profile": born} for i in range(50)]
    return mongo_db.users.insert_many(docs).inserted_ids


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def run(instance, mongo, sample_id, run_config=None):
    key = str(sample_id)
    instance.add_dynamic_partitions("sample_requests", [key])
    return dg.materialize(
        [samples],
        partition_key=key,
        instance=instance,
        resources={"mongo": mongo, "contact_budget": ContactBudget()},
        run_config=run_config,
        raise_on_error=False,
    )


def request(mongo_db, **fields):
    doc = {
        "name": "test",
        "survey_id": "123",
        "size": 200,
        "processed": False,
        "created_at": dt.datetime.now(UTC),
        **fields,
    }
    return mongo_db.samples.insert_one(doc).inserted_id


def test_nat_rep_request_from_the_queue_end_to_end(instance, mongo, mongo_db, panel):
    sample_id = request(
        mongo_db,
        name="Omnibus wave 12",
        preset="uk_nat_rep",
        seed=7,
        tolerance=2,
        mailing=INVITATION,
        fieldwork=ONE_WAVE,
    )
    tick = samples_queue_sensor(dg.build_sensor_context(instance=instance, resources={"mongo": mongo}))
    (run_request,) = tick.run_requests
    assert run_request.partition_key == str(sample_id)
    assert run_request.tags["panel/sample_name"] == "Omnibus_wave_12"  # the Runs page filters on it
    result = run(instance, mongo, sample_id)
    assert result.success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["processed"] and doc["status"] == "done" and doc["run_id"] == result.run_id
    assert doc["members"] == mongo_db.sample_members.count_documents({"sample_id": sample_id}) >= 200
    assert doc["result"]["composition"] and doc["seed_used"] == 7
    metadata = result.asset_materializations_for_node("samples")[0].metadata
    assert "largest_deviation_pp" in metadata and "data:image/svg+xml" in metadata["composition_chart"].value
    assert metadata["sample_name"].value == "Omnibus wave 12" and metadata["survey_id"].value == "123"
    assert metadata["dagster/row_count"].value == doc["members"]
    composition = metadata["target_vs_achieved"].records
    assert len(composition) == len(doc["result"]["composition"]) and {"target", "category", "shortfall"} <= set(
        composition[0].data
    )
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "composition_within_tolerance"
    (mailing,) = mongo_db.mailings.find()
    assert "recipients" not in mailing and mailing["kind"] == "bulk" and mailing["invitation_for_sample"] == sample_id
    assert mailing["recipient_count"] == doc["members"]
    assert (
        mongo_db.sample_members.count_documents({"sample_id": sample_id, "mailing_id": mailing["_id"]})
        == doc["members"]
    )

    again = run(instance, mongo, sample_id)  # an analyst re-materialises it: everyone is queued for mail
    assert not again.success
    assert mongo_db.mailings.count_documents({}) == 1
    assert mongo_db.sample_members.count_documents({"sample_id": sample_id}) == doc["members"]
    larger = run(instance, mongo, sample_id, {"ops": {"samples": {"config": {"size": 250, "tolerance": 100}}}})
    assert larger.success
    assert mongo_db.mailings.count_documents({}) == 2  # only the new members are invited, once
    second = mongo_db.mailings.find_one({"_id": {"$ne": mailing["_id"]}})
    assert second["recipient_count"] == mongo_db.sample_members.count_documents({"mailing_id": second["_id"]}) > 0
    assert mongo_db.sample_members.count_documents({"sample_id": sample_id, "mailing_id": {"$exists": False}}) == 0


NO_POINTS = {key: value for key, value in INVITATION["default_data"].items() if key != "points"}


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"size": "100"}, "size"),
        ({"size": True}, "size"),
        ({"size": -5}, "size"),
        ({"size": 10**12}, "size"),
        ({"seed": -1}, "seed"),
        ({"exclude": {"invited_within_days": 10**7}}, "exclude.invited_within_days"),
        ({"expected_response_rate": {"gender": {"female": 0.3}}}, "expected_response_rate"),
        ({"filters": {"region": {"$where": "sleep(1000)"}}}, "filters.region"),
        ({"filters": {"$where": "1"}}, "filters"),
        ({"filters": {"password": {"$eq": "x"}}}, "filters.password"),
        ({"quotas": {"gender": {"female": 0.9}}}, "quotas.gender"),
        ({"mailing": "yes"}, "mailing"),
        ({"mailing": {**INVITATION, "template": "no_such_template"}}, "mailing.template"),
        ({"mailing": {**INVITATION, "template": ["new_survey"]}}, "mailing.template"),
        ({"mailing": {**INVITATION, "default_data": "x"}}, "mailing.default_data"),
        ({"mailing": {**INVITATION, "default_data": NO_POINTS}}, "points"),
    ],
)
def test_invalid_request_is_failed_once_naming_the_field_and_writes_nothing(
    instance, mongo, mongo_db, few_members, fields, named
):
    sample_id = request(mongo_db, **fields)
    result = run(instance, mongo, sample_id)
    assert not result.success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["processed"] and doc["status"] == "failed" and doc["attempts"] == 1
    assert named in doc["error"] and "gave up" not in doc["error"], doc["error"]
    assert mongo_db.sample_members.count_documents({}) == 0 and mongo_db.mailings.count_documents({}) == 0


def test_redraw_with_a_new_seed_replaces_uninvited_members_and_keeps_invited_ones(instance, mongo, mongo_db, panel):
    sample_id = request(mongo_db, quotas={"gender": {"female": 0.5, "male": 0.5}}, seed=1, size=100)
    assert run(instance, mongo, sample_id).success
    first = [m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})]
    invited = first[:10]
    mongo_db.sample_members.update_many({"user_id": {"$in": invited}}, {"$set": {"invited_at": dt.datetime.now(UTC)}})
    result = run(instance, mongo, sample_id, {"ops": {"samples": {"config": {"seed": 99}}}})
    assert result.success
    after = {m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})}
    assert set(invited) <= after
    assert after != set(first)
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["redraws"][0]["changes"] == {"seed": 99} and doc["redraws"][0]["run_id"] == result.run_id


def test_exclusions_leave_out_recent_invitees_and_completers(instance, mongo, mongo_db, panel):
    recent, completer = panel[0], panel[1]
    mongo_db.sample_members.insert_one({"sample_id": ObjectId(), "user_id": recent, "invited_at": dt.datetime.now(UTC)})
    mongo_db.transactions.insert_one({"user_id": completer, "survey_id": "555", "processed": True})
    sample_id = request(
        mongo_db, size=5990, tolerance=100, exclude={"invited_within_days": 7, "completed_surveys": ["555"]}
    )
    assert run(instance, mongo, sample_id).success
    chosen = {m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})}
    assert recent not in chosen and completer not in chosen
    assert len(chosen) == 5990


def test_inactive_members_are_never_sampled(instance, mongo, mongo_db, panel):
    mongo_db.users.update_many({"_id": {"$in": panel[:3000]}}, {"$set": {"status": "unsubscribed"}})
    sample_id = request(mongo_db, size=100, tolerance=100)
    assert run(instance, mongo, sample_id).success
    chosen = {m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})}
    assert not chosen & set(panel[:3000])


def test_a_crash_after_the_draw_is_finished_by_the_next_claim_with_its_invitation(instance, mongo, mongo_db, panel):
    sample_id = request(mongo_db, size=100, tolerance=100, mailing=INVITATION)
    assert run(instance, mongo, sample_id).success
    done = mongo_db.samples.find_one({"_id": sample_id})
    (mailing,) = mongo_db.mailings.find()
    assert mailing["recipient_count"] == done["members"]  # stamped and invited before the request was completed

    # The state a run leaves when it is killed after saving its draw and stamping, before its
    # invitation and completion: the lease expired, the request unprocessed.
    mongo_db.mailings.delete_many({})
    mongo_db.sample_members.update_many({"sample_id": sample_id}, {"$unset": {"mailing_id": ""}})
    mongo_db.samples.update_one(
        {"_id": sample_id},
        {
            "$set": {
                "processed": False,
                "status": "processing",
                "lease_owner": "killed-run",
                "retry_at": dt.datetime(2020, 1, 1, tzinfo=UTC),
            },
            "$unset": {"processed_at": ""},
        },
    )
    members_before = {m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})}
    resumed = run(instance, mongo, sample_id)
    assert resumed.success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["status"] == "done" and doc["run_id"] == resumed.run_id and doc["drawn_by_run"] == done["drawn_by_run"]
    assert {
        m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})
    } == members_before  # not re-drawn
    (mailing,) = mongo_db.mailings.find()
    assert mailing["recipient_count"] == len(members_before)


def test_a_panel_nobody_answered_the_2024_vote_on_gives_a_full_nat_rep_sample(instance, mongo, mongo_db, panel):
    """A new user's first panel: nobody has answered the 2024 vote question yet."""
    mongo_db.users.update_many({}, {"$unset": {"profile.vote_2024": ""}})
    sample_id = request(mongo_db, preset="uk_nat_rep", size=200, seed=5, tolerance=2)
    result = run(instance, mongo, sample_id)
    assert result.success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["status"] == "done" and doc["members"] == 200 and doc["result"]["status"] == "ok"
    assert doc["result"]["unclassified_members"] < len(panel) // 10  # gender other / prefer not to say
    assert doc["result"]["dropped_targets"] == [
        {
            "target": "vote_2024",
            "reason": "no member has answered vote_2024: the vote_2024 target was left out of this draw",
        }
    ]
    assert "the vote_2024 target was left out of this draw." in doc["result"]["message"]
    assert doc["result"]["max_deviation_pp"] <= 2
    assert {entry["target"] for entry in doc["result"]["composition"]} == {
        "age_band|gender",
        "region",
        "social_grade",
        "education",
    }
    metadata = result.asset_materializations_for_node("samples")[0].metadata
    assert "vote_2024" in metadata["dropped_targets"].text


def derived_bands(profiles):
    """Each member's age band from birth_year, as of this year: what the draw must have used."""
    ages = dt.date.today().year - np.array([profile["birth_year"] for profile in profiles])
    return np.asarray(AGE_BAND_VALUES)[age_band_codes(ages)]


def test_members_with_birth_year_and_no_stored_age_band_are_sampled_on_the_derived_band(
    instance, mongo, mongo_db, panel
):
    # The backend stores birth_year alone; a third of the members keep a stored band that is stale.
    mongo_db.users.update_many({}, {"$unset": {"profile.age_band": "", "profile.age": ""}})
    stale = panel[::3]
    mongo_db.users.update_many({"_id": {"$in": stale}}, {"$set": {"profile.age_band": "18-24"}})
    sample_id = request(mongo_db, preset="uk_nat_rep", size=200, seed=6, tolerance=2)
    assert run(instance, mongo, sample_id).success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["members"] == 200 and doc["result"]["status"] == "ok" and doc["result"]["dropped_targets"] == []
    age_gaps = next(entry for entry in doc["result"]["missing"] if entry["target"] == "age_band|gender")
    assert age_gaps["completes"] == 0  # everyone has a birth_year, so nobody lacks a band
    chosen = [m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})]
    profiles = list(mongo_db.users.find({"_id": {"$in": chosen}}, {"profile": 1}))
    bands = derived_bands([doc_["profile"] for doc_ in profiles])
    genders = [doc_["profile"].get("gender") for doc_ in profiles]
    drawn = Counter(f"{band}|{gender}" for band, gender in zip(bands, genders, strict=True))
    for entry in doc["result"]["composition"]:
        if entry["target"] == "age_band|gender":
            assert drawn.get(entry["category"], 0) == entry["allocated"], entry


def test_missing_answers_are_kept_by_default_and_reported_per_target(instance, mongo, mongo_db, panel):
    mongo_db.users.update_many({"_id": {"$in": panel[::4]}}, {"$unset": {"profile.social_grade": ""}})
    sample_id = request(mongo_db, preset="uk_nat_rep", size=400, seed=7, tolerance=2)
    assert run(instance, mongo, sample_id).success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    gaps = {entry["target"]: entry for entry in doc["result"]["missing"]}
    assert gaps["social_grade"]["members"] == pytest.approx(len(panel) / 4, rel=0.05)
    assert gaps["social_grade"]["pct"] == pytest.approx(25, abs=1.5)
    assert gaps["region"]["completes"] == 0
    chosen = [m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})]
    unanswered = mongo_db.users.count_documents({"_id": {"$in": chosen}, "profile.social_grade": {"$exists": False}})
    assert unanswered == gaps["social_grade"]["completes"]
    grades = [entry for entry in doc["result"]["composition"] if entry["target"] == "social_grade"]
    assert max(abs(entry["deviation_pp"]) for entry in grades) <= 2  # the shares hold among those who answered
    assert "Missing values in the sample: social_grade" in doc["result"]["message"]


def test_missing_exclude_leaves_out_members_missing_a_target_attribute(instance, mongo, mongo_db, panel):
    mongo_db.users.update_many({"_id": {"$in": panel[::4]}}, {"$unset": {"profile.social_grade": ""}})
    sample_id = request(mongo_db, preset="uk_nat_rep", size=200, seed=7, tolerance=2, missing="exclude")
    assert run(instance, mongo, sample_id).success
    chosen = [m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})]
    assert len(chosen) == 200
    assert mongo_db.users.count_documents({"_id": {"$in": chosen}, "profile.social_grade": {"$exists": False}}) == 0


def test_a_request_nobody_can_fill_with_missing_exclude_is_failed_saying_how_to_fix_it(
    instance, mongo, mongo_db, panel
):
    mongo_db.users.update_many({"_id": {"$in": panel[::2]}}, {"$unset": {"profile.region": ""}})
    mongo_db.users.update_many({"_id": {"$in": panel[1::2]}}, {"$unset": {"profile.education": ""}})
    sample_id = request(mongo_db, preset="uk_nat_rep", size=100, missing="exclude")
    assert not run(instance, mongo, sample_id).success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["status"] == "failed" and doc["error"].startswith("no active member has a value in every target at once")
    assert 'remove "missing": "exclude"' in doc["error"]
    assert mongo_db.sample_members.count_documents({}) == 0


def test_a_request_whose_filters_leave_nobody_is_failed_naming_them(instance, mongo, mongo_db, panel):
    sample_id = request(mongo_db, size=100, filters={"age": {"$gte": 125}})
    assert not run(instance, mongo, sample_id).success
    assert mongo_db.samples.find_one({"_id": sample_id})["error"] == (
        "no active member matches the filters (filters.age): nobody can be placed; widen the filters"
    )


def test_a_partly_filled_request_is_done_with_its_shortfall(instance, mongo, mongo_db, panel):
    scots = mongo_db.users.count_documents({"profile.region": "Scotland"})
    sample_id = request(mongo_db, size=scots + 50, tolerance=100, filters={"region": {"$in": ["Scotland"]}})
    assert run(instance, mongo, sample_id).success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["status"] == "done" and doc["members"] == scots
    assert doc["shortfall"] == {"completes": 50, "categories": []}
    assert doc["result"]["status"] == "infeasible"


def test_a_partly_filled_quota_cell_is_named_in_the_shortfall(instance, mongo, mongo_db, panel):
    men = mongo_db.users.count_documents({"profile.gender": "male"})
    sample_id = request(mongo_db, size=2 * men + 100, tolerance=100, quotas={"gender": {"female": 0.5, "male": 0.5}})
    assert run(instance, mongo, sample_id).success
    doc = mongo_db.samples.find_one({"_id": sample_id})
    assert doc["shortfall"]["completes"] == doc["result"]["size_requested"] - doc["result"]["completes_planned"]
    (short,) = doc["shortfall"]["categories"]
    assert (short["target"], short["category"]) == ("gender", "male") and short["allocated"] <= men < short["requested"]


def test_a_draw_whose_lease_was_taken_stops_before_writing_members(mongo, mongo_db, panel):
    sample_id = request(mongo_db, size=100, tolerance=100)
    queue = mongo.work_queue("samples")
    claimed = queue.claim(sample_id, "slow-run")
    mongo_db.samples.update_one(
        {"_id": sample_id}, {"$set": {"retry_at": dt.datetime(2020, 1, 1, tzinfo=UTC)}}
    )  # its lease expired
    assert queue.claim(sample_id, "new-run") is not None
    with pytest.raises(
        LeaseLost, match=f"samples document {sample_id}: run slow-run lost its lease before it could renew"
    ):
        draw_once(mongo_db, queue, claimed, "slow-run", budget=3)
    assert mongo_db.sample_members.count_documents({}) == 0
    assert "drawn_by_run" not in mongo_db.samples.find_one({"_id": sample_id})


# --- response rates and fieldwork -----------------------------------------------------------------


def invite_all(mongo_db, sample_id, at):
    """What the Mailer does once the invitation went out: every member gets `invited_at`."""
    mongo_db.sample_members.update_many({"sample_id": sample_id}, {"$set": {"invited_at": at}})


def complete(mongo_db, user_ids, survey_id, at):
    """The backend's transactions: one per member who completed the survey."""
    if user_ids:
        mongo_db.transactions.insert_many(
            [
                {"user_id": uid, "survey_id": survey_id, "response_id": i + 1, "points": 100, "created_at": at}
                for i, uid in enumerate(user_ids)
            ]
        )


def fieldwork_run(instance, mongo, sample_id):
    key = str(sample_id)
    instance.add_dynamic_partitions("sample_requests", [key])
    return dg.materialize(
        [sample_fieldwork, cells_within_tolerance, weights_converged],
        partition_key=key,
        instance=instance,
        resources={"mongo": mongo, "contact_budget": ContactBudget(), "fieldwork_timing": FieldworkTiming()},
        raise_on_error=False,
    )


def drawn_sample(instance, mongo, mongo_db, **fields):
    sample_id = request(mongo_db, mailing=INVITATION, **fields)
    assert run(instance, mongo, sample_id).success
    return sample_id


def members_of(mongo_db, sample_id):
    return [m["user_id"] for m in mongo_db.sample_members.find({"sample_id": sample_id})]


def past_survey_women_completed_four_times_as_often(mongo_db) -> list:
    """A past survey of 4,000 members, its invitations and completes: 40% of women completed, 10% of men."""
    invited_at = dt.datetime.now(UTC) - dt.timedelta(days=20)
    past = mongo_db.samples.insert_one({"name": "past", "survey_id": "900", "processed": True}).inserted_id
    users = list(mongo_db.users.find({}, {"profile.gender": 1}).limit(4000))
    mongo_db.sample_members.insert_many(
        [{"sample_id": past, "user_id": u["_id"], "invited_at": invited_at} for u in users]
    )
    rng = np.random.default_rng(1)
    chance = {"female": 0.4, "male": 0.1}
    completers = [u["_id"] for u in users if rng.random() < chance.get(u["profile"].get("gender"), 0.2)]
    complete(
        mongo_db, completers, 900, invited_at + dt.timedelta(hours=6)
    )  # a numeric survey id, as some backends store it
    return completers


def learn_rates(instance, mongo):
    result = dg.materialize(
        [response_rates], instance=instance, resources={"mongo": mongo, "fieldwork_timing": FieldworkTiming()}
    )
    assert result.success
    return result


def test_response_rates_are_learned_per_cell_from_past_invitations(instance, mongo, mongo_db, panel):
    """Women completed four times as often as men in a past survey: the learned rates say so."""
    completers = past_survey_women_completed_four_times_as_often(mongo_db)
    result = learn_rates(instance, mongo)
    stored = mongo_db.response_rates.find_one({"_id": "panel"})
    assert stored["invitations"] == 4000 and stored["completes"] == len(completers)
    rates = {(c["dimension"], c["cell"]): c["rate"] for c in stored["cells"]}
    assert rates[("age_band|gender", "35-44|female")] > 2.5 * rates[("age_band|gender", "35-44|male")]
    metadata = result.asset_materializations_for_node("response_rates")[0].metadata
    assert metadata["invitations"].value == 4000
    assert 15 < metadata["overall_rate_pct"].value < 35
    assert {"rates_age_band_x_gender", "rates_region", "rates_social_grade", "completion_curve"} <= set(metadata)
    assert all("data:image/svg+xml" in metadata[chart].value for chart in ("rates_chart", "completion_curve_chart"))


def test_the_learned_rates_size_a_one_wave_draw_unless_the_request_gives_its_own(instance, mongo, mongo_db, panel):
    past_survey_women_completed_four_times_as_often(mongo_db)
    learn_rates(instance, mongo)
    halves = {"gender": {"female": 0.5, "male": 0.5}}

    def invited(**fields):
        sample_id = drawn_sample(instance, mongo, mongo_db, size=100, quotas=halves, seed=4, **fields)
        genders = Counter(
            u["profile"]["gender"] for u in mongo_db.users.find({"_id": {"$in": members_of(mongo_db, sample_id)}})
        )
        return genders, mongo_db.samples.find_one({"_id": sample_id})["result"]

    genders, result = invited(fieldwork=ONE_WAVE, exclude={"completed_surveys": ["900"]})
    assert genders["male"] > 2 * genders["female"]  # 50 completes each, at 10% and 40% (shrunk toward 25%)
    # each fine cell's invitations are ceil(completes / rate): a few percent over at a size of 100
    assert sum(genders.values()) > 300 and 100 <= result["expected_completes"] <= 115
    genders, _ = invited(fieldwork=ONE_WAVE, expected_response_rate=0.5)
    assert genders == {"female": 100, "male": 100}  # the request's own rate wins


def test_fieldwork_state_after_some_completes_closes_full_cells(instance, mongo, mongo_db, panel):
    sample_id = drawn_sample(
        instance, mongo, mongo_db, name="Omnibus wave 12", preset="uk_nat_rep", seed=3, tolerance=2
    )
    drawn = mongo_db.samples.find_one({"_id": sample_id})
    assert drawn["fieldwork_state"]["status"] == "open"  # the sensor's index finds it from the draw on
    invited_at = dt.datetime.now(UTC) - dt.timedelta(hours=30)
    invite_all(mongo_db, sample_id, invited_at)
    women = [
        m for m in mongo_db.users.find({"_id": {"$in": members_of(mongo_db, sample_id)}, "profile.gender": "female"})
    ]
    complete(mongo_db, [m["_id"] for m in women], "123", invited_at + dt.timedelta(hours=5))

    result = fieldwork_run(instance, mongo, sample_id)
    assert result.success
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["status"] == "open" and state["completes"] == len(women) and state["invited"] == drawn["members"]
    assert state["target_completes"] == 200 and state["rates"] == "request"
    by_cell = {(c["target"], c["category"]): c for c in state["by_cell"]}
    full = {key for key, c in by_cell.items() if c["completes"] >= c["target_completes"]}
    assert full and full == {key for key, c in by_cell.items() if c["full"]}
    # Every full cell closes: age x gender, the hard quota, and, until a top-up finds a hard cell
    # nobody to invite, the marginal cells too (then at their target plus half the tolerance).
    assert "soft_cells_reopened_at" not in state
    soft_cells = result.asset_materializations_for_node("sample_fieldwork")[0].metadata["soft_cells_close_at"]
    assert soft_cells.value.startswith("their target")
    assert all(c["cap"] == c["target_completes"] for c in by_cell.values())
    assert {(c["target"], c["category"]) for c in state["closed_cells"]} == full
    assert all(key[1].endswith("|female") for key in full if key[0] == "age_band|gender")
    assert mongo_db.sample_members.count_documents({"sample_id": sample_id, "completed_at": {"$ne": None}}) == len(
        women
    )
    metadata = result.asset_materializations_for_node("sample_fieldwork")[0].metadata
    assert metadata["sample_name"].value == "Omnibus wave 12" and metadata["survey_id"].value == "123"
    assert metadata["completes"].value == len(women)
    assert len(metadata["completes_vs_target"].records) == len(state["by_cell"])
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert checks["weights_converged"].passed  # open: nothing to weigh yet

    # Closed cells keep the time they first closed.
    first = {(c["target"], c["category"]): c["closed_at"] for c in state["closed_cells"]}
    assert fieldwork_run(instance, mongo, sample_id).success
    again = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert {(c["target"], c["category"]): c["closed_at"] for c in again["closed_cells"]} == first


def test_a_cell_over_target_by_more_than_the_tolerance_fails_the_check(instance, mongo, mongo_db, panel):
    sample_id = drawn_sample(instance, mongo, mongo_db, preset="uk_nat_rep", seed=4, tolerance=2)
    invited_at = dt.datetime.now(UTC) - dt.timedelta(hours=10)
    members = set(members_of(mongo_db, sample_id))
    # Thirty more Londoners were invited (by hand, say) and they and every London member completed:
    # London is some 15 pp over its target.
    londoners = [u["_id"] for u in mongo_db.users.find({"profile.region": "London"}, {"_id": 1})]
    extra = [uid for uid in londoners if uid not in members][:30]
    mongo_db.sample_members.insert_many([{"sample_id": sample_id, "user_id": uid} for uid in extra])
    invite_all(mongo_db, sample_id, invited_at)
    complete(mongo_db, [uid for uid in londoners if uid in members] + extra, "123", invited_at + dt.timedelta(hours=1))
    result = fieldwork_run(instance, mongo, sample_id)
    assert result.success
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert not checks["cells_within_tolerance"].passed
    over = checks["cells_within_tolerance"].metadata["cells_over"].records
    assert [(r.data["target"], r.data["category"]) for r in over] == [("region", "London")]


def test_members_with_a_recent_partial_response_are_in_the_survey(instance, mongo, mongo_db, panel):
    """The extractor's raw copies of SurveyGizmo's Partial responses say who is in the survey now."""
    quotas = {"gender": {"female": 0.5, "male": 0.5}}
    sample_id = drawn_sample(instance, mongo, mongo_db, size=100, quotas=quotas, seed=2, fieldwork=ONE_WAVE)
    now = dt.datetime.now(UTC)
    invite_all(mongo_db, sample_id, now - dt.timedelta(hours=20))
    women = [
        u["_id"]
        for u in mongo_db.users.find({"_id": {"$in": members_of(mongo_db, sample_id)}, "profile.gender": "female"})
    ]
    partials = [(uid, now - dt.timedelta(minutes=10)) for uid in women[:3]] + [(women[3], now - dt.timedelta(hours=6))]
    partials.append((women[4], now - dt.timedelta(minutes=5)))
    mongo_db.sg_responses.insert_many(
        [
            {
                "_id": f"123:{i}",
                "survey_id": "123",
                "response_id": str(i),
                "status": "Partial",
                "panel_id": str(uid),
                "submitted_at": at,
            }
            for i, (uid, at) in enumerate(partials)
        ]
        + [
            {
                "_id": "999:1",
                "survey_id": "999",
                "response_id": "1",
                "status": "Partial",
                "panel_id": str(women[5]),
                "submitted_at": now,
            }
        ]
    )
    complete(mongo_db, [women[4]], "123", now)  # finished since: a complete, not in the survey
    assert fieldwork_run(instance, mongo, sample_id).success
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["in_progress"] == 3 and state["completes"] == 1
    by_cell = {(c["target"], c["category"]): c["in_progress"] for c in state["by_cell"]}
    assert by_cell == {("gender", "female"): 3, ("gender", "male"): 0}


def test_fieldwork_closes_when_every_cell_is_full_with_converged_weights(instance, mongo, mongo_db, panel):
    quotas = {"gender": {"female": 0.5, "male": 0.5}}
    sample_id = drawn_sample(instance, mongo, mongo_db, size=100, quotas=quotas, seed=2, fieldwork=ONE_WAVE)
    invited_at = dt.datetime.now(UTC) - dt.timedelta(hours=20)
    invite_all(mongo_db, sample_id, invited_at)
    complete(mongo_db, members_of(mongo_db, sample_id), "123", invited_at + dt.timedelta(hours=2))
    result = fieldwork_run(instance, mongo, sample_id)
    assert result.success
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["status"] == "closed" and state["closed_reason"] == "every cell is full" and state["closed_at"]
    assert state["weights"]["status"] == "converged"
    weights = [
        m["weight"] for m in mongo_db.sample_members.find({"sample_id": sample_id, "completed_at": {"$ne": None}})
    ]
    assert len(weights) == 100 and abs(np.mean(weights) - 1) < 1e-6
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert checks["weights_converged"].passed and checks["cells_within_tolerance"].passed
    metadata = result.asset_materializations_for_node("sample_fieldwork")[0].metadata
    assert metadata["weights_status"].value == "converged"
    assert metadata["weights_design_effect"].value == pytest.approx(1.0, abs=0.01)
    assert metadata["weights_effective_sample_size"].value == pytest.approx(100, abs=1)
    assert {"weights_max_weight", "weights_iterations"} <= set(metadata)


def test_weights_that_cannot_meet_the_targets_within_their_bounds_are_not_written(instance, mongo, mongo_db, panel):
    """50 women and 2 men complete, and the bounds allow weights of 0.8 to 1.25: raking cannot reach
    50/50, so fieldwork closes with the failure named and no weights, and the check fails."""
    quotas = {"gender": {"female": 0.5, "male": 0.5}}
    fieldwork = {**ONE_WAVE, "weight_bounds": [0.8, 1.25]}
    sample_id = drawn_sample(instance, mongo, mongo_db, size=100, quotas=quotas, seed=2, fieldwork=fieldwork)
    invited_at = dt.datetime.now(UTC) - dt.timedelta(hours=20)
    invite_all(mongo_db, sample_id, invited_at)
    members = mongo_db.users.find({"_id": {"$in": members_of(mongo_db, sample_id)}}, {"profile.gender": 1})
    by_gender: dict[str, list] = {}
    for member in members:
        by_gender.setdefault(member["profile"]["gender"], []).append(member["_id"])
    complete(mongo_db, by_gender["female"] + by_gender["male"][:2], "123", invited_at + dt.timedelta(hours=2))
    mongo_db.samples.update_one(
        {"_id": sample_id}, {"$set": {"fieldwork.close_at": dt.datetime.now(UTC) - dt.timedelta(minutes=1)}}
    )
    result = fieldwork_run(instance, mongo, sample_id)
    assert result.success  # the check warns; the asset is what it is
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["status"] == "closed" and state["closed_reason"] == "close_at reached"
    weights = state["weights"]
    assert weights["status"] == "not_converged" and weights["failed_target"] == "gender"
    assert "gender" in weights["message"] and "no weights written" in weights["message"]
    assert mongo_db.sample_members.count_documents({"sample_id": sample_id, "weight": {"$exists": True}}) == 0
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert not checks["weights_converged"].passed
    assert checks["weights_converged"].metadata["status"].value == "not_converged"
    metadata = result.asset_materializations_for_node("sample_fieldwork")[0].metadata
    assert metadata["weights_status"].value == "not_converged" and "gender" in metadata["weights"].value


def test_a_filters_only_sample_stays_open_until_its_completes_are_in(instance, mongo, mongo_db, panel):
    """No target cells is no reason to close: fieldwork waits for `size` completes, then weighs each 1."""
    sample_id = drawn_sample(instance, mongo, mongo_db, size=20, filters={"gender": "female"}, fieldwork=ONE_WAVE)
    invited_at = dt.datetime.now(UTC) - dt.timedelta(hours=20)
    invite_all(mongo_db, sample_id, invited_at)
    members = members_of(mongo_db, sample_id)
    complete(mongo_db, members[:5], "123", invited_at + dt.timedelta(hours=2))
    assert fieldwork_run(instance, mongo, sample_id).success
    assert mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]["status"] == "open"
    complete(mongo_db, members[5:], "123", invited_at + dt.timedelta(hours=3))
    result = fieldwork_run(instance, mongo, sample_id)
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["closed_reason"] == "the completes wanted are in" and state["target_completes"] == 20
    assert state["weights"]["status"] == "converged"
    weights = {m["weight"] for m in mongo_db.sample_members.find({"sample_id": sample_id, "weight": {"$exists": True}})}
    assert weights == {1.0}
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert checks["weights_converged"].passed


def test_fieldwork_closes_at_close_at_and_stays_closed(instance, mongo, mongo_db, panel):
    sample_id = drawn_sample(instance, mongo, mongo_db, preset="uk_nat_rep", seed=6, tolerance=2)
    invited_at = dt.datetime.now(UTC) - dt.timedelta(days=3)
    invite_all(mongo_db, sample_id, invited_at)
    complete(mongo_db, members_of(mongo_db, sample_id)[:40], "123", invited_at + dt.timedelta(hours=3))
    assert fieldwork_run(instance, mongo, sample_id).success
    assert mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]["status"] == "open"
    mongo_db.samples.update_one(
        {"_id": sample_id}, {"$set": {"fieldwork": {"close_at": dt.datetime.now(UTC) - dt.timedelta(minutes=1)}}}
    )
    result = fieldwork_run(instance, mongo, sample_id)
    assert result.success
    state = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert state["status"] == "closed" and state["closed_reason"] == "close_at reached"
    assert state["weights"]["status"] in {"converged", "not_converged"}
    if state["weights"]["status"] != "converged":
        assert "no weights written" in state["weights"]["message"]
        assert mongo_db.sample_members.count_documents({"sample_id": sample_id, "weight": {"$exists": True}}) == 0
    closed_at = state["closed_at"]
    mongo_db.samples.update_one({"_id": sample_id}, {"$unset": {"fieldwork.close_at": ""}})
    assert fieldwork_run(instance, mongo, sample_id).success
    after = mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]
    assert after["status"] == "closed" and after["closed_at"] == closed_at


def test_a_sample_without_fieldwork_has_no_fieldwork_state(instance, mongo, mongo_db, panel):
    sample_id = drawn_sample(instance, mongo, mongo_db, size=50, tolerance=100, fieldwork=False)
    assert "fieldwork_state" not in mongo_db.samples.find_one({"_id": sample_id})
    assert not fieldwork_run(instance, mongo, sample_id).success


# --- the completes file and the directory -----------------------------------------------------------


def fieldwork_job_run(instance, mongo, sample_id, completes_dir):
    """What the fieldwork job runs: fieldwork with its checks, then the completes file and the directory."""
    key = str(sample_id)
    instance.add_dynamic_partitions("sample_requests", [key])
    return dg.materialize(
        [sample_fieldwork, cells_within_tolerance, weights_converged, sample_completes, sample_directory],
        partition_key=key,
        instance=instance,
        resources={
            "fieldwork_timing": FieldworkTiming(),
            "mongo": mongo,
            "contact_budget": ContactBudget(),
            "completes_files": CompletesFiles(directory=str(completes_dir)),
        },
    )


def test_the_completes_file_follows_fieldwork_and_gets_the_weights_at_closing(
    instance, mongo, mongo_db, panel, tmp_path
):
    quotas = {"gender": {"female": 0.5, "male": 0.5}}
    sample_id = drawn_sample(
        instance, mongo, mongo_db, name="Omnibus wave 12", size=100, quotas=quotas, seed=2, fieldwork=ONE_WAVE
    )
    invited_at = dt.datetime.now(UTC) - dt.timedelta(hours=20)
    invite_all(mongo_db, sample_id, invited_at)
    members = members_of(mongo_db, sample_id)
    complete(mongo_db, members[:30], "123", invited_at + dt.timedelta(hours=2))

    result = fieldwork_job_run(instance, mongo, sample_id, tmp_path)
    metadata = result.asset_materializations_for_node("sample_completes")[0].metadata
    path = metadata["path"].value
    assert path == str(tmp_path / f"completes_{sample_id}.csv")
    open_file = pd.read_csv(path)
    assert list(open_file.columns) == ["user_id", "gender", "wave", "invited_at", "completed_at", "weight"]
    assert sorted(open_file["user_id"]) == sorted(str(uid) for uid in members[:30])
    assert open_file["weight"].isna().all() and metadata["fieldwork"].value == "open"
    assert metadata["sample_name"].value == "Omnibus wave 12" and metadata["survey_id"].value == "123"
    assert metadata["dagster/row_count"].value == 30 and len(metadata["preview"].records) == 10
    fieldwork = result.asset_materializations_for_node("sample_fieldwork")[0].metadata
    assert "data:image/svg+xml" in fieldwork["completes_over_time"].value
    listed = result.asset_materializations_for_node("sample_directory")[0].metadata["samples"].records
    assert [(r.data["name"], r.data["partition key"], r.data["fieldwork"]) for r in listed] == [
        ("Omnibus wave 12", str(sample_id), "open")
    ]

    complete(mongo_db, members[30:], "123", invited_at + dt.timedelta(hours=3))
    closed = fieldwork_job_run(instance, mongo, sample_id, tmp_path)
    assert mongo_db.samples.find_one({"_id": sample_id})["fieldwork_state"]["status"] == "closed"
    closed_file = pd.read_csv(path)  # the same file, replaced whole
    assert len(closed_file) == 100 and abs(closed_file["weight"].mean() - 1) < 1e-6
    assert closed_file["completed_at"].str.endswith("Z").all()
    assert "@" not in Path(path).read_text() and [p.name for p in tmp_path.iterdir()] == [f"completes_{sample_id}.csv"]
    assert closed.asset_materializations_for_node("sample_completes")[0].metadata["fieldwork"].value == "closed"
    (directory,) = closed.asset_materializations_for_node("sample_directory")  # fieldwork closed: a new list
    assert [r.data["fieldwork"] for r in directory.metadata["samples"].records] == ["closed"]
    unchanged = dg.materialize([sample_directory], instance=instance, resources={"mongo": mongo})
    assert unchanged.success and not unchanged.asset_materializations_for_node("sample_directory")


def test_the_fieldwork_metadata_says_where_soft_cells_close() -> None:
    assert soft_cells_closing({}).startswith("their target")
    since = dt.datetime(2026, 12, 3, 9, tzinfo=UTC)
    assert soft_cells_closing({"soft_cells_reopened_at": since}) == (
        "their cap, target plus half the tolerance (since 2026-12-03T09:00:00+00:00)"
    )
