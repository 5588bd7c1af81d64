"""The respondent simulator on a real mongod and the real local SurveyGizmo server over HTTP: invitations
become completes in the cells' proportions, after delays scaled by the time scale, once each across a
restart, reminders lift a non-completer, and every completion is a transaction the Extractor accepts
whose response SurveyGizmo serves."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.extractor.responses import parse_response
from panel_pipeline.extractor.surveygizmo import SurveyGizmoClient
from panel_pipeline.extractor.transactions import parse_transaction
from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.respondents import (
    Invitation,
    QuotaRoom,
    RespondentSettings,
    RespondentSimulator,
    SurveyGizmoRespondent,
    age_band,
    completes_at,
    completion_rate,
    in_closed_cell,
    simulated_delay,
)
from panel_pipeline.local.surveygizmo.server import DEMO_TOKEN, DEMO_TOKEN_SECRET, LocalSurveyGizmo
from panel_pipeline.sampler import store as sampler_store
from panel_pipeline.sampler.requests import BELOW_AGE_BANDS, age_bands
from panel_pipeline.sampler.resources import FieldworkTiming
from panel_pipeline.shared.clock import ScaledFieldworkClock

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.UTC
SURVEY_ID = "12"
YEAR = dt.datetime.now(UTC).year
# Born so as to be 20 (18-24) and 70 (65-74) this year.
YOUNG, OLD = YEAR - 20, YEAR - 70
INSTANT = 1e9  # simulated seconds per real second: every delay (at most 14 days) is due within 2 ms
INSTANT_CLOCK = ScaledFieldworkClock(INSTANT)


@pytest.fixture
def surveygizmo() -> Iterator[LocalSurveyGizmo]:
    with LocalSurveyGizmo() as server:
        yield server


@pytest.fixture
def make_simulator(mongo_db: Database, surveygizmo: LocalSurveyGizmo) -> Iterator[Callable[..., RespondentSimulator]]:
    """A new simulator (a restart, when called again) on the test's database and SurveyGizmo server."""
    clients: list[SurveyGizmoRespondent] = []

    def make(time_scale: float = 1.0, clock: str = "scaled", **settings: Any) -> RespondentSimulator:
        client = SurveyGizmoRespondent(surveygizmo.base_url, DEMO_TOKEN, DEMO_TOKEN_SECRET)
        clients.append(client)
        timing = FieldworkTiming(time_scale=time_scale, clock=clock)
        return RespondentSimulator(mongo_db, client, RespondentSettings(**settings), timing)

    yield make
    for client in clients:
        client.close()


def invite(
    db: Database,
    members: list[dict[str, Any]],
    *,
    sent_at: dt.datetime | None = None,
    reminder: bool = False,
    sample_id: ObjectId | None = None,
) -> ObjectId:
    """A sample (survey 12) whose invitation (or reminder) mailing was sent to `members` (users made if new)."""
    now = dt.datetime.now(UTC)
    if sample_id is None:
        sample_id = db.samples.insert_one({"name": "Omnibus wave 12", "survey_id": SURVEY_ID, "size": 1}).inserted_id
    mailing_id = db.mailings.insert_one(
        {
            "template": "survey_reminder" if reminder else "new_survey",
            "kind": "bulk",
            "created_at": now,
            "reminder_for_sample" if reminder else "invitation_for_sample": sample_id,
            "default_data": {"survey_name": "Omnibus", "points": 100},
        }
    ).inserted_id
    for member in members:
        db.users.update_one({"_id": member["_id"]}, {"$setOnInsert": member}, upsert=True)
    db.mail_log.insert_many(
        [
            {
                "mailing_id": mailing_id,
                "user_id": member["_id"],
                "recipient_key": str(member["_id"]),
                "email": f"m{index}@panel.example",
                "status": "sent",
                "sent_at": sent_at or now,
            }
            for index, member in enumerate(members)
        ]
    )
    return sample_id


def member(gender: str, birth_year: int | None) -> dict[str, Any]:
    profile = {"gender": gender} | ({"birth_year": birth_year} if birth_year is not None else {})
    return {"_id": ObjectId(), "first_name": "A", "status": "active", "profile": profile}


def wait_for(condition: Callable[[], bool], simulator: RespondentSimulator, timeout: float = 60.0) -> None:
    """Run passes until `condition` holds (no fixed sleep: a pass, then a short poll)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        simulator.run_pass()
        time.sleep(0.05)


def transactions(db: Database) -> list[dict[str, Any]]:
    return list(db.transactions.find())


# --- pure decisions --------------------------------------------------------------------------------


def test_age_band_is_derived_as_the_sampler_derives_it() -> None:
    birth_years = list(range(YEAR - 100, YEAR - 10))
    sampler = [None if b == BELOW_AGE_BANDS else b for b in age_bands(np.array([YEAR - y for y in birth_years]))]
    assert [age_band(year, YEAR) for year in birth_years] == sampler
    assert age_band(None, YEAR) is None and age_band("1970", YEAR) is None and age_band(True, YEAR) is None


def test_rates_come_from_the_cell_table_with_fallbacks() -> None:
    settings = RespondentSettings()
    assert completion_rate(settings, {"gender": "male", "birth_year": YOUNG}, YEAR) == 0.04
    assert completion_rate(settings, {"gender": "female", "birth_year": OLD}, YEAR) == 0.35
    assert completion_rate(settings, {"gender": "other", "birth_year": OLD}, YEAR) == pytest.approx((0.28 + 0.35) / 2)
    assert completion_rate(settings, {"gender": "female"}, YEAR) == settings.default_rate
    with pytest.raises(ValueError, match="rate of 18-24|male"):
        RespondentSettings(rates={"18-24|male": 1.5})


def test_delays_follow_the_curve_most_within_a_day_or_two_with_a_long_tail() -> None:
    settings = RespondentSettings(seed=3)
    hours = np.array(
        [simulated_delay(settings, str(n), SURVEY_ID, "mail0") / dt.timedelta(hours=1) for n in range(4000)]
    )
    assert 0.70 < np.mean(hours <= 24) < 0.80 and 0.88 < np.mean(hours <= 48) < 0.95
    assert hours.max() > 96, "a tail of days"
    assert hours.max() <= settings.max_delay_hours


def test_a_decision_is_a_function_of_seed_member_and_survey_only() -> None:
    invited = dt.datetime(2025, 3, 3, 9, tzinfo=UTC)
    settings = RespondentSettings(seed=11, rates={}, default_rate=0.5)
    hourly, twice_as_fast = ScaledFieldworkClock(3600), ScaledFieldworkClock(7200)
    invitations = [Invitation(str(ObjectId()), SURVEY_ID, invited) for _ in range(400)]
    first = [completes_at(settings, invitation, hourly, invited) for invitation in invitations]
    assert first == [completes_at(RespondentSettings(**vars(settings)), i, hourly, invited) for i in invitations]
    assert 150 < sum(at is not None for at in first) < 250
    for invitation, at in zip(invitations, first, strict=True):
        if at is not None:  # a completer at one scale completes at every scale, in half the real time at twice it
            twice = completes_at(settings, invitation, twice_as_fast, invited)
            assert twice is not None and abs((twice - invited) - (at - invited) / 2) <= dt.timedelta(microseconds=1)


# --- the simulator against Mongo and SurveyGizmo ----------------------------------------------------


def test_invitations_become_completes_in_the_cells_proportions_as_the_extractor_reads_them(
    mongo_db: Database, surveygizmo: LocalSurveyGizmo, make_simulator: Callable[..., RespondentSimulator]
) -> None:
    young_men = [member("male", YOUNG) for _ in range(1000)]
    old_women = [member("female", OLD) for _ in range(1000)]
    invite(mongo_db, young_men + old_women)
    rates = {"18-24|male": 0.1, "65-74|female": 0.4}
    simulator = make_simulator(seed=5, time_scale=INSTANT, rates=rates)
    now = dt.datetime.now(UTC)
    expected = sum(
        completes_at(
            simulator.settings, Invitation(str(m["_id"]), SURVEY_ID, now, (), m["profile"]), INSTANT_CLOCK, now
        )
        is not None
        for m in young_men + old_women
    )
    wait_for(lambda: mongo_db.transactions.count_documents({}) == expected, simulator)
    completed = {t["user_id"] for t in transactions(mongo_db)}
    for group, rate in ((young_men, 0.1), (old_women, 0.4)):
        share = sum(m["_id"] in completed for m in group) / len(group)
        assert abs(share - rate) < 4 * math.sqrt(rate * (1 - rate) / len(group)), (rate, share)

    # The Extractor's own client (paced at 240 calls a minute in production; not against the local server).
    client = SurveyGizmoClient(DEMO_TOKEN, DEMO_TOKEN_SECRET, base_url=surveygizmo.base_url, calls_per_minute=60_000)
    for document in transactions(mongo_db):
        assert set(document) == {"_id", "user_id", "survey_id", "response_id", "points", "created_at", "processed"}
        assert (document["survey_id"], document["points"], document["processed"]) == (SURVEY_ID, 100, False)
        transaction = parse_transaction(document)
        response = parse_response(
            client.get_response(SURVEY_ID, transaction.response_id), SURVEY_ID, client.account_zone
        )
        assert response.status == "Complete" and response.answers["3"].value == str(transaction.user_id)
    assert simulator.status()["new_completes"] == expected


def test_delays_are_scaled_by_the_time_scale(
    mongo_db: Database, make_simulator: Callable[..., RespondentSimulator]
) -> None:
    """12 simulated hours per real second: the median complete 1 s after the invitation, none early."""
    members = [member("female", OLD) for _ in range(150)]
    sent_at = dt.datetime.now(UTC)
    invite(mongo_db, members, sent_at=sent_at)
    simulator = make_simulator(seed=2, time_scale=12 * 3600, rates={"65-74|female": 0.6}, max_delay_hours=48)
    clock = ScaledFieldworkClock(12 * 3600)
    due = {
        m["_id"]: completes_at(
            simulator.settings, Invitation(str(m["_id"]), SURVEY_ID, sent_at, (), m["profile"]), clock, sent_at
        )
        for m in members
    }
    due = {user: at for user, at in due.items() if at is not None}
    simulator.run_pass()
    passed_at = dt.datetime.now(UTC)
    due_by_then = sum(at <= passed_at for at in due.values())
    assert mongo_db.transactions.count_documents({}) <= due_by_then, "only those due by the pass's end complete"
    wait_for(lambda: mongo_db.transactions.count_documents({}) == len(due), simulator, timeout=30)
    for document in transactions(mongo_db):
        assert document["created_at"] >= due[document["user_id"]].replace(microsecond=0), "completed before its time"
    real = sorted((at - sent_at).total_seconds() for at in due.values())
    assert 0.6 < real[len(real) // 2] < 1.6 and real[-1] <= 4.0


def test_on_a_stepped_clock_members_complete_only_as_the_clock_is_stepped(
    mongo_db: Database, make_simulator: Callable[..., RespondentSimulator]
) -> None:
    """However long a pass takes to come, it completes only those due by the fieldwork hours stepped."""
    members = [member("female", OLD) for _ in range(200)]
    invite(mongo_db, members, sent_at=dt.datetime.now(UTC))
    simulator = make_simulator(seed=6, clock="stepped", rates={"65-74|female": 1.0})
    delays = {m["_id"]: simulated_delay(simulator.settings, str(m["_id"]), SURVEY_ID, "mail0") for m in members}
    assert simulator.run_pass().new_completes == 0, "fieldwork time stands still before the first step"
    sampler_store.step_fieldwork_clock(mongo_db, 12, dt.datetime.now(UTC))
    time.sleep(0.05)  # wall time passing does not move a stepped clock: only the step counts
    assert simulator.run_pass().new_completes == sum(d <= dt.timedelta(hours=12) for d in delays.values())
    assert 80 < mongo_db.transactions.count_documents({}) < 120, "the median delay is 12 h"
    sampler_store.step_fieldwork_clock(mongo_db, 14 * 24, dt.datetime.now(UTC))
    simulator.run_pass()
    assert mongo_db.transactions.count_documents({}) == len(members)


def test_a_restart_makes_no_second_transaction_and_reuses_a_response_left_without_one(
    mongo_db: Database, surveygizmo: LocalSurveyGizmo, make_simulator: Callable[..., RespondentSimulator]
) -> None:
    invite(mongo_db, [member("male", OLD) for _ in range(300)])
    first = make_simulator(seed=9, time_scale=INSTANT)
    wait_for(lambda: first.run_pass().completed == mongo_db.transactions.count_documents({}) > 0, first)
    before = {t["user_id"]: t["response_id"] for t in transactions(mongo_db)}
    # A stop between the response and the transaction: SurveyGizmo has the response, Mongo no transaction.
    lost = mongo_db.transactions.find_one_and_delete({})
    assert lost is not None
    restarted = make_simulator(seed=9, time_scale=INSTANT)
    wait_for(lambda: mongo_db.transactions.count_documents({}) == len(before), restarted)
    restarted.run_pass()
    after = {t["user_id"]: t["response_id"] for t in transactions(mongo_db)}
    assert after == before, "the same members, the lost one with its own response again"
    assert Counter((t["user_id"], t["survey_id"]) for t in transactions(mongo_db)).most_common(1)[0][1] == 1
    assert len(surveygizmo.response_ids(SURVEY_ID)) == len(before), "no second response for anyone"


def test_a_reminded_non_completer_can_complete_and_one_not_reminded_does_not(
    mongo_db: Database, make_simulator: Callable[..., RespondentSimulator]
) -> None:
    members = [member("female", YOUNG) for _ in range(200)]
    sample_id = invite(mongo_db, members)
    # Half respond to the invitation; a reminder doubles that, so everyone reminded responds.
    simulator = make_simulator(seed=4, time_scale=INSTANT, rates={"18-24|female": 0.5}, reminder_lift=1.0)
    wait_for(lambda: simulator.run_pass().completed == mongo_db.transactions.count_documents({}) > 0, simulator)
    completers = {t["user_id"] for t in transactions(mongo_db)}
    others = [m for m in members if m["_id"] not in completers]
    reminded, not_reminded = others[::2], others[1::2]
    assert len(reminded) > 20 and len(not_reminded) > 20
    invite(mongo_db, reminded, reminder=True, sample_id=sample_id)
    wait_for(lambda: mongo_db.transactions.count_documents({}) == len(completers) + len(reminded), simulator)
    simulator.run_pass()
    completed = {t["user_id"] for t in transactions(mongo_db)}
    assert {m["_id"] for m in reminded} <= completed
    assert not {m["_id"] for m in not_reminded} & completed


def test_a_sample_whose_survey_is_no_surveygizmo_id_is_left_alone(
    mongo_db: Database, make_simulator: Callable[..., RespondentSimulator], caplog: pytest.LogCaptureFixture
) -> None:
    sample_id = mongo_db.samples.insert_one({"name": "Tracker", "survey_id": "tracker-3"}).inserted_id
    invite(mongo_db, [member("female", OLD) for _ in range(20)], sample_id=sample_id)
    simulator = make_simulator(time_scale=INSTANT, rates={}, default_rate=1.0)
    assert simulator.run_pass().new_completes == 0 and simulator.run_pass().invitations == 0
    assert mongo_db.transactions.count_documents({}) == 0
    assert caplog.text.count("no survey_id that is a SurveyGizmo id") == 1
    assert "@panel.example" not in caplog.text


def test_the_service_runs_from_the_command_line_with_a_status_page(
    mongo_db: Database, mongo_uri: str, surveygizmo: LocalSurveyGizmo, tmp_path: Path
) -> None:
    """`python -m panel_pipeline.local respondents`, as the local stack starts it."""
    invite(mongo_db, [member("male", YOUNG) for _ in range(30)])
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"18-24|male": 1.0, "default": 0.0}))
    port = free_port()
    command = [sys.executable, "-m", "panel_pipeline.local", "respondents", "--time-scale", "1e9", "--port", str(port)]
    options = ["--rates", str(rates), "--mongo-uri", mongo_uri, "--database", mongo_db.name]
    with subprocess.Popen(
        [*command, *options, "--surveygizmo-url", surveygizmo.base_url, "--poll-seconds", "0.2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as service:
        try:
            deadline = time.monotonic() + 60
            while mongo_db.transactions.count_documents({}) < 30:
                assert service.poll() is None and time.monotonic() < deadline, "the service made no completes"
                time.sleep(0.1)
            status = requests.get(f"http://127.0.0.1:{port}/", timeout=5).json()
            assert status["time_scale"] == 1e9 and status["new_completes"] == 30
        finally:
            service.terminate()
        output = service.communicate(timeout=10)[0]
    assert "30 new complete(s)" in output and "@panel.example" not in output


def test_a_member_of_a_full_cell_is_screened_out_at_survey_entry() -> None:
    closed = [{"target": "age_band|gender", "category": "18-24|male"}, {"target": "region", "category": "Wales"}]
    assert in_closed_cell({"birth_year": YOUNG, "gender": "male", "region": "London"}, closed, YEAR)
    assert in_closed_cell({"birth_year": OLD, "gender": "female", "region": "Wales"}, closed, YEAR)
    assert not in_closed_cell({"birth_year": OLD, "gender": "male", "region": "London"}, closed, YEAR)


def test_entry_counts_the_quotas_live_between_fieldwork_passes() -> None:
    """Room is the cap less what the last pass counted; each complete since uses one up, so a cell the
    next pass would close turns members away already."""
    quotas = QuotaRoom(closed=[], room={("region", "London"): 2.0, ("age_band|gender", "18-24|male"): 5.0})
    londoner = {"birth_year": YOUNG, "gender": "male", "region": "London"}
    for _ in range(2):
        assert quotas.admits(londoner, YEAR)
        quotas.completed(londoner, YEAR)
    assert not quotas.admits(londoner, YEAR), "London's room is used up"
    assert quotas.admits({"birth_year": YOUNG, "gender": "male", "region": "Wales"}, YEAR)
    assert quotas.room[("age_band|gender", "18-24|male")] == 3.0
