"""Fieldwork under the real daemon, with the local stack's respondent simulator answering.

The backend only inserts sample requests; the simulator completes invitations as members would (a
Complete response in the local SurveyGizmo, then a `transactions` document); everything else is
the daemon's: the draws' first waves, fieldwork passes, top-up waves, reminder rounds, closing and
weights. The session's daemon reads fieldwork time on a stepped clock (PANEL_FIELDWORK_CLOCK): the
test moves it on a fieldwork day at a time, and only once the pipeline has settled (`settled`), so
what each pass decides does not depend on how busy the machine is; a day costs a few daemon loops.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.local.demo import demo_user
from panel_pipeline.local.respondents import (
    RespondentSettings,
    RespondentSimulator,
    SurveyGizmoRespondent,
    default_cell_rates,
)
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET
from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler import fieldwork
from panel_pipeline.sampler import store as sampler_store
from panel_pipeline.sampler.fieldwork_state import sample_targets
from panel_pipeline.sampler.requests import parse_sample_request
from panel_pipeline.sampler.resources import FieldworkTiming
from panel_pipeline.sampler.sensors import samples_in_flight
from panel_pipeline.shared.contacts import recent_contacts
from panel_pipeline.shared.mongo import as_utc
from panel_pipeline_tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.stack]
UTC = dt.UTC
PANEL = 3_000
ALREADY_CONTACTED = 200  # members with 3 survey contacts this week before the test starts
SURVEY = {"duration_minutes": 10, "points": 100, "survey_url": "https://survey.example/s/812"}
STEP_HOURS = 24.0  # the clock moves on a fieldwork day at a time
MAX_STEPS = 15  # the default close_at, 14 days after the draw, and one more
SETTLE_TIMEOUT = 120.0  # a day's completes, passes and mailings (a few daemon loops)


@pytest.fixture
def panel_db(dagster_dev, mongo_client) -> Database:
    db = mongo_client.panel
    for name in ("users", "samples", "sample_members", "mailings", "mail_log", "transactions", "pipeline_state"):
        db[name].delete_many({})
    return db


@pytest.fixture
def respondents(panel_db: Database, local_surveygizmo) -> Iterator[RespondentSimulator]:
    """The local stack's respondent simulator on the daemon's stepped clock; the test runs its passes."""
    client = SurveyGizmoRespondent(local_surveygizmo.base_url, DEMO_TOKEN, DEMO_TOKEN_SECRET)
    yield RespondentSimulator(panel_db, client, RespondentSettings(seed=3), FieldworkTiming(clock="stepped"))
    client.close()


def seed_panel(db: Database) -> list[ObjectId]:
    """A panel with the gaps real panels have: nobody answered the 2024 vote question, and one member
    in five has a birth year but no stored age band (the contract allows it). Returns the members
    already at their contact budget (three invitations of an earlier sample this week)."""
    now = dt.datetime.now(UTC)
    users = []
    for number, row in enumerate(generate_profiles(PANEL, seed=11).astype(object).to_dict("records"), start=1):
        profile = {k: (int(v) if k == "birth_year" else str(v)) for k, v in row.items() if v is not None}
        for dropped in ("age", "vote_2024", *(("age_band",) if number % 5 == 0 else ())):
            profile.pop(dropped, None)
        users.append({**demo_user(number, now), "profile": profile, "profile_updated_at": now})
    db.users.insert_many(users)
    busy = [user["_id"] for user in users[-ALREADY_CONTACTED:]]
    db.sample_members.insert_many(
        {"sample_id": ObjectId(), "user_id": uid, "invited_at": now - dt.timedelta(days=day), "mailing_id": ObjectId()}
        for uid in busy
        for day in (1, 2, 3)
    )
    return busy


# A survey each: a member in two samples of one survey would complete it once for both, and the
# completes a closed cell turned away in one sample would come in through the other.
SURVEY_IDS = {"Omnibus wave 12": "812", "Brand tracker": "813", "Travel panel": "814"}


def fieldwork_request(name: str, size: int, **fields: Any) -> dict[str, Any]:
    return {
        "processed": False,
        "created_at": dt.datetime.now(UTC),
        "name": name,
        "survey_id": SURVEY_IDS[name],
        "size": size,
        "tolerance": 5,
        # The simulator's true rates, as a project manager who knew the panel would give them.
        "expected_response_rate": {"age_band|gender": default_cell_rates(), "default": 0.15},
        "mailing": {"template": "new_survey", "default_data": {**SURVEY, "survey_name": name}},
        "fieldwork": {"reminder_after_hours": 24, "max_reminders": 1},  # closing at the default close_at
        **fields,
    }


def closed_state(db: Database, sample_id: ObjectId) -> dict[str, Any] | None:
    state = (db.samples.find_one({"_id": sample_id}) or {}).get("fieldwork_state") or {}
    return state if state.get("status") == "closed" and state.get("weights") else None


def settled(db: Database, instance: Any, sample_id: ObjectId, since: dt.datetime) -> dict[str, Any] | None:
    """The sample's fieldwork state once the pipeline has done all it will at the clock's hour: a
    pass began after `since` and after the last invitation went out, no pass is running, and every
    invitation and reminder the passes made is mailed. None until then."""
    state = (db.samples.find_one({"_id": sample_id}, {"fieldwork_state": 1}) or {}).get("fieldwork_state") or {}
    passed = state.get("updated_at")
    if closed_state(db, sample_id) is not None:
        return state
    if passed is None or as_utc(passed) < since or str(sample_id) in samples_in_flight(instance):
        return None
    its_mailings = {"$or": [{"invitation_for_sample": sample_id}, {"reminder_for_sample": sample_id}]}
    if db.mailings.count_documents({**its_mailings, "processed": {"$ne": True}}):
        return None
    if db.pending_invitations.count_documents({"sample_id": sample_id}):
        return None
    last = db.sample_members.find_one({"sample_id": sample_id}, {"invited_at": 1}, sort=[("invited_at", -1)])
    invited_at = (last or {}).get("invited_at")
    return state if invited_at is None or as_utc(invited_at) <= as_utc(passed) else None


def run_fieldwork(
    dagster_dev, db: Database, respondents: RespondentSimulator, sample_id: ObjectId, since: dt.datetime
) -> dict[str, Any]:
    """Day by day: once the pipeline has settled, the clock moves on a day and the members whose
    completes fall in it complete; until the sample's fieldwork closes with weights."""
    with dagster_dev.instance() as instance:
        for _ in range(MAX_STEPS):
            wait_for(
                lambda since=since: settled(db, instance, sample_id, since),
                timeout=SETTLE_TIMEOUT,
                what="the fieldwork passes, top-ups and reminders of the day",
                explain=lambda: fieldwork_progress(db, sample_id) + "\n" + dagster_dev.activity(runs=6, ticks=1),
            )
            if (state := closed_state(db, sample_id)) is not None:
                return state
            sampler_store.step_fieldwork_clock(db, STEP_HOURS, dt.datetime.now(UTC))
            respondents.run_pass()
            since = dt.datetime.now(UTC)
    raise AssertionError(f"fieldwork still open after {MAX_STEPS} days: {fieldwork_progress(db, sample_id)}")


def fieldwork_progress(db: Database, sample_id: ObjectId) -> str:
    """Where the sample's fieldwork stands: the cells still short, its waves and reminders."""
    document = db.samples.find_one({"_id": sample_id}) or {}
    state = document.get("fieldwork_state") or {}
    short = [
        f"{cell['target']}={cell['category']}: {cell['completes']}/{cell['target_completes']} of {cell['invited']}"
        for cell in state.get("by_cell", [])
        if cell["completes"] < cell["target_completes"]
    ]
    return (
        f"status {document.get('status')} / fieldwork {state.get('status')}, {state.get('completes')} completes, "
        f"{state.get('invited')} invited, waves {state.get('waves')}, reminders {state.get('reminders')}; "
        f"top-up: {state.get('last_top_up', {}).get('invitations')}; short: {short}; error: {document.get('error')}"
    )


def member_cells(db: Database, sample_id: ObjectId, user_ids: list[ObjectId]) -> Any:
    """Each member's category per target of the sample, as the fieldwork accounting counts them."""
    document = db.samples.find_one({"_id": sample_id})
    targets = sample_targets(parse_sample_request(document), document["result"])
    profiles = sampler_store.member_profiles(db, user_ids, dt.datetime.now(UTC).year)
    return fieldwork.member_categories(profiles, targets)


def test_fieldwork_fills_every_cell_closes_weighs_and_keeps_the_contact_budget(dagster_dev, panel_db, respondents):
    busy = seed_panel(panel_db)
    omnibus = panel_db.samples.insert_one(fieldwork_request("Omnibus wave 12", 60, preset="uk_nat_rep")).inserted_id
    others = [
        panel_db.samples.insert_one(
            fieldwork_request(name, 30, quotas={"gender": {"female": 0.5, "male": 0.5}}, fieldwork=False)
        ).inserted_id
        for name in ("Brand tracker", "Travel panel")
    ]

    state = run_fieldwork(dagster_dev, panel_db, respondents, omnibus, since=dt.datetime.now(UTC))

    # Every cell within tolerance, weighted: from a panel with no 2024 vote and missing age bands. (The
    # marginal cells are soft: a full one still takes the members a short age x gender cell needs.)
    assert state["closed_reason"] in ("every cell is full", "every hard cell is full", "close_at reached"), state
    assert not state["over_tolerance"], state["over_tolerance"]
    for cell in state["by_cell"]:
        assert abs(cell["completes"] - cell["target_completes"]) / 60 * 100 <= 5, cell
    assert state["weights"]["status"] == "converged", state["weights"]
    completers = panel_db.sample_members.count_documents({"sample_id": omnibus, "completed_at": {"$ne": None}})
    weighted = panel_db.sample_members.count_documents({"sample_id": omnibus, "weight": {"$exists": True}})
    assert completers == weighted == state["completes"] >= 55
    dropped = panel_db.samples.find_one({"_id": omnibus})["result"]["dropped_targets"]
    assert [entry["target"] for entry in dropped] == ["vote_2024"]

    members = list(panel_db.sample_members.find({"sample_id": omnibus}))
    cells = member_cells(panel_db, omnibus, [m["user_id"] for m in members])
    closed_at = {(cell["target"], cell["category"]): cell["closed_at"] for cell in state["closed_cells"]}
    assert state["waves"] >= 2, "the low-responding cells needed a top-up wave"

    # A cell closed early got no invitation after it closed, and one did close before a later wave.
    last_wave_added = max(member["added_at"] for member in members)
    assert any(closed < last_wave_added for closed in closed_at.values()), (closed_at, last_wave_added)
    for member in members:
        for target, category in cells.loc[str(member["user_id"])].items():
            closed = closed_at.get((target, category))
            assert closed is None or member["added_at"] <= closed, (member["wave"], target, category)

    # Reminders: once each, never to a completer, never into a closed cell.
    reminded = [m for m in members if m.get("reminders")]
    assert reminded, "nobody was reminded"
    rounds = {doc["_id"]: doc["created_at"] for doc in panel_db.mailings.find({"reminder_for_sample": omnibus})}
    for member in reminded:
        assert member["reminders"] == 1
        assert member.get("completed_at") is None or member["completed_at"] > member["reminded_at"]
        made_at = rounds[member["reminder_mailing_id"]]
        for target, category in cells.loc[str(member["user_id"])].items():
            closed = closed_at.get((target, category))
            assert closed is None or closed > made_at, (target, category)

    # The contact budget across the three samples (two of them one-off invitations drawn at the same
    # time): nobody over 3 contacts in 7 days, and the members already at 3 were never drawn (the
    # draws say how many they held back).
    everyone = [user["_id"] for user in panel_db.users.find({}, {"_id": 1})]
    assert recent_contacts(panel_db, everyone, dt.datetime.now(UTC)).max() <= 3
    sample_ids = [omnibus, *others]
    assert not panel_db.sample_members.count_documents({"sample_id": {"$in": sample_ids}, "user_id": {"$in": busy}})
    held = [panel_db.samples.find_one({"_id": sid})["result"]["held_back"]["held_back"] for sid in sample_ids]
    assert all(count > 0 for count in held), held
