"""Fieldwork's pure core: cells, accounting (closed cells count respondents in the survey), waves,
top-ups never into a closed cell, reminders, the contact budget and closing."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler import fieldwork
from panel_pipeline.sampler.requests import DEFAULT_FIELDWORK_DAYS, FieldworkSettings
from panel_pipeline.sampler.response_rates import CURVE_HOURS, CompletionCurve
from panel_pipeline.sampler.targets import Target, preset_targets
from panel_pipeline.shared.clock import FieldworkStep, ScaledFieldworkClock, SteppedFieldworkClock

NOW = dt.datetime(2025, 6, 10, 12, tzinfo=dt.UTC)
TARGETS = (
    Target.from_shares("gender", {"female": 0.5, "male": 0.5}),
    Target.from_shares("region", {"London": 0.4, "Wales": 0.6}),
)
LINEAR_CURVE = CompletionCurve(CURVE_HOURS, tuple(hour / 168 for hour in CURVE_HOURS), 1)


def members(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Sample members: gender, region and the fieldwork columns (hours ago for the times)."""
    frame = pd.DataFrame(rows)
    for column in (fieldwork.INVITED_AT, fieldwork.COMPLETED_AT, fieldwork.REMINDED_AT, fieldwork.PARTIAL_AT):
        hours = frame[column] if column in frame else pd.Series(np.nan, index=frame.index)
        frame[column] = pd.Timestamp(NOW) - pd.to_timedelta(hours.astype(float), unit="h")
    return frame


def test_cell_targets_sum_to_the_completes_in_every_target() -> None:
    cells = fieldwork.cell_targets(preset_targets("uk_nat_rep"), 1_000)
    assert (cells.groupby("target")["target_completes"].sum() == 1_000).all()
    with_missing = fieldwork.cell_targets(TARGETS, 100, {"region": 0.1})
    assert with_missing.set_index(["target", "category"])["target_completes"].to_dict() == {
        ("gender", "female"): 50,
        ("gender", "male"): 50,
        ("region", "London"): 36,
        ("region", "Wales"): 54,
    }


def test_member_categories_cross_fields_and_leave_missing_or_foreign_values_out() -> None:
    profiles = pd.DataFrame(
        {
            "age_band": ["18-24", "18-24", None],
            "gender": ["male", "other", "female"],
            "region": ["Wales", "Wales", None],
        }
    )
    age_gender = Target.from_shares("age_band|gender", {"18-24|male": 0.5, "18-24|female": 0.5})
    categories = fieldwork.member_categories(profiles, [age_gender, TARGETS[1]])
    assert categories["age_band|gender"].tolist() == ["18-24|male", None, None]
    assert categories["region"].tolist() == ["Wales", "Wales", None]
    assert fieldwork.placeable(profiles, [age_gender, TARGETS[1]]).tolist() == [True, False, True]


def test_a_partial_response_that_moved_on_lately_is_in_the_survey_and_an_older_one_was_abandoned() -> None:
    cells = fieldwork.cell_targets(TARGETS, 4)
    sample = members(
        [
            {"gender": "female", "region": "London", "invited_at": 30, "partial_at": 0.5},  # in the survey
            {"gender": "female", "region": "Wales", "invited_at": 30, "partial_at": 5},  # gave up
            {"gender": "male", "region": "Wales", "invited_at": 30, "partial_at": 1, "completed_at": 0.2},
            {"gender": "male", "region": "London", "invited_at": 30},
        ]
    )
    accounting = fieldwork.account_cells(cells, sample, now=NOW)
    assert accounting.cells.set_index("category")["in_progress"].to_dict() == {
        "female": 1,
        "male": 0,  # completed: a complete, not in progress
        "London": 1,
        "Wales": 0,
    }
    assert fieldwork.account_cells(cells, sample).in_progress == 0, "without a now, only the flag counts"
    # Read on the fieldwork clock: a clock that has not moved since the draw has everyone in the survey still.
    still = SteppedFieldworkClock((FieldworkStep(NOW - dt.timedelta(hours=40), 24.0),))
    assert fieldwork.account_cells(cells, sample, now=NOW, clock=still).in_progress == 2
    settings = FieldworkSettings(reminder_after_hours=24)
    due = fieldwork.reminder_candidates(sample, fieldwork.account_cells(cells, sample, now=NOW), NOW, settings)
    assert not due[0], "never a reminder to a respondent in the survey"


def test_accounting_counts_completes_and_closes_a_cell_with_respondents_still_in_the_survey() -> None:
    cells = fieldwork.cell_targets(TARGETS, 4)  # 2 female, 2 male, 2 London (1.6 -> 2), 2 Wales
    sample = members(
        [
            {"gender": "female", "region": "London", "invited_at": 30, "completed_at": 2},
            {"gender": "female", "region": "Wales", "invited_at": 30, "in_progress": True},
            {"gender": "male", "region": "Wales", "invited_at": 30},
            {"gender": "male", "region": None, "invited_at": 30, "completed_at": 1},
            {"gender": "male", "region": "London"},  # not invited yet
        ]
    )
    accounting = fieldwork.account_cells(cells, sample)
    rows = accounting.cells.set_index("category")
    assert rows.loc["female", ["completes", "in_progress", "invited"]].tolist() == [1, 1, 2]
    assert rows.loc["male", ["completes", "invited"]].tolist() == [1, 2]
    assert accounting.closed_cells == [("gender", "female")]  # 1 complete + 1 in the survey = target 2
    assert (accounting.completes, accounting.invited, accounting.in_progress) == (2, 4, 1)
    assert rows.loc["male", "observed_rate"] == 0.5
    document = json.loads(json.dumps(accounting.to_document()))
    assert document["closed_cells"] == [{"target": "gender", "category": "female"}]
    assert {cell["category"] for cell in document["by_cell"]} == {"female", "male", "London", "Wales"}
    assert not accounting.every_cell_full
    assert accounting.invitations_per_complete == 2.0


def test_a_cell_over_target_by_more_than_the_tolerance_is_reported() -> None:
    cells = fieldwork.cell_targets((TARGETS[0],), 100)
    sample = members(
        [{"gender": "female", "region": "Wales", "invited_at": 30, "completed_at": 2}] * 52
        + [{"gender": "male", "region": "Wales", "invited_at": 30, "completed_at": 2}] * 48
    )
    accounting = fieldwork.account_cells(cells, sample)
    assert accounting.over_tolerance(2.5).empty
    assert accounting.over_tolerance(1.0)["category"].tolist() == ["female"]  # 2 points over its 50


def test_expected_completes_by_now_and_to_come_follow_the_rates_and_the_curve() -> None:
    cells = fieldwork.cell_targets((TARGETS[0],), 200)
    sample = members([{"gender": "female", "region": "Wales", "invited_at": 84}] * 100)  # half the window
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=np.full(100, 0.4), curve=LINEAR_CURVE)
    female = accounting.cells.set_index("category").loc["female"]
    assert female["expected_by_now"] == pytest.approx(100 * 0.4 * 0.5)
    assert female["behind_curve"]  # none in yet, 20 expected
    # Nobody in after half the window: observed/expected shrinks the rate to (0+10)/(20+10) of 0.4.
    rate = 0.4 * 10 / 30
    to_come = 100 * rate * 0.5 / (1 - rate * 0.5)
    assert female["need"] == pytest.approx(100 - to_come)


def panel_pool(members_count: int = 20_000) -> tuple[pd.DataFrame, np.ndarray]:
    profiles = generate_profiles(members_count, seed=11, as_of_year=2025)
    profiles = profiles[fieldwork.placeable(profiles, TARGETS)].reset_index(drop=True)
    categories = fieldwork.member_categories(profiles, TARGETS)
    rates = np.where(profiles["gender"] == "female", 0.3, 0.1)
    return categories, rates


def test_the_first_wave_invites_what_the_rates_say_fills_its_share_of_each_cell() -> None:
    pool, rates = panel_pool()
    cells = fieldwork.cell_targets(TARGETS, 100)
    eligible = np.ones(len(pool), dtype=bool)
    eligible[::3] = False
    wave = fieldwork.first_wave(cells, pool, rates, FieldworkSettings(), np.random.default_rng(1), eligible)
    assert eligible[wave.positions].all()
    expected = wave.cells.set_index("category")["expected_completes"]
    for category, target in cells.set_index("category")["target_completes"].items():
        assert expected[category] == pytest.approx(0.7 * target, abs=2)
    invitations = wave.cells.set_index("category")["invitations"]
    assert invitations["male"] == pytest.approx(3 * invitations["female"], rel=0.15)  # a third of the rate
    everything = fieldwork.first_wave(cells, pool, rates, FieldworkSettings(waves=False), np.random.default_rng(1))
    assert everything.expected_completes == pytest.approx(100, abs=2)


def test_a_top_up_fills_the_short_cells_and_never_invites_into_a_closed_cell() -> None:
    pool, rates = panel_pool()
    cells = fieldwork.cell_targets(TARGETS, 100)  # 50/50 by gender, 40/60 by region
    done = [{"gender": "female", "region": "Wales", "invited_at": 200, "completed_at": 100}] * 50
    done += [{"gender": "male", "region": "London", "invited_at": 200, "completed_at": 100}] * 30
    sample = members(done)
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=np.full(80, 0.2), curve=LINEAR_CURVE)
    assert ("gender", "female") in accounting.closed_cells
    extra = fieldwork.top_up(accounting, pool, rates, FieldworkSettings(waves=False), np.random.default_rng(2))
    invited = pool.iloc[extra.positions]
    assert len(invited) and (invited["gender"] == "male").all()  # female is closed
    expected = extra.cells.set_index("category")["expected_completes"]
    assert expected["male"] == pytest.approx(20, abs=1)  # 30 of 50
    assert expected["London"] == pytest.approx(10, abs=1)  # 30 of 40
    assert expected["Wales"] == pytest.approx(10, abs=1)  # 50 of 60
    invitable = extra.cells.set_index("category")["invitable_completes"]
    assert invitable["female"] == 0 and invitable["male"] > 10 * expected["male"]  # nobody may join a closed cell


def test_a_full_soft_cell_closes_at_target_until_a_hard_cell_is_stranded_then_at_its_cap() -> None:
    """Gender, the first target, is the hard quota; region is soft. London is full, and the men still
    needed are all Londoners: closed at its target, London strands them (the top-up says so); reopened,
    it takes them within the tolerance, and closes at its cap."""
    done = [{"gender": "female", "region": "London", "invited_at": 200, "completed_at": 100}] * 40
    done += [{"gender": "female", "region": "Wales", "invited_at": 200, "completed_at": 100}] * 10
    pool = pd.DataFrame({"gender": ["male"] * 400, "region": ["London"] * 400})
    rates, settings = np.full(400, 0.2), FieldworkSettings(waves=False)
    cells = fieldwork.cell_targets(TARGETS, 100, tolerance_pp=5.0)  # London 40, its cap 42 (40 + 2.5 of 100)

    def top_up(reopened: bool) -> tuple[fieldwork.CellAccounting, fieldwork.Invitations]:
        accounting = fieldwork.account_cells(
            cells,
            members(done),
            now=NOW,
            rates=np.full(len(done), 0.2),
            curve=LINEAR_CURVE,
            soft_cells_reopened=reopened,
        )
        return accounting, fieldwork.top_up(accounting, pool, rates, settings, np.random.default_rng(3))

    at_target, stranded = top_up(reopened=False)
    london = at_target.cells.set_index("category").loc["London"]
    assert (london["cap"], bool(london["full"]), bool(london["closed"])) == (40, True, True)
    assert stranded.count == 0 and fieldwork.stranded_hard_cells(stranded.cells, "gender") == ["male"]

    accounting, extra = top_up(reopened=True)
    london = accounting.cells.set_index("category").loc["London"]
    assert (london["cap"], bool(london["full"]), bool(london["closed"])) == (42, True, False)
    assert accounting.closed_cells == [("gender", "female")]
    assert extra.count > 0 and extra.cells.set_index("category")["expected_completes"]["male"] > 0
    assert fieldwork.stranded_hard_cells(extra.cells, "gender") == []

    done += [{"gender": "male", "region": "London", "invited_at": 50, "completed_at": 10}] * 2
    accounting, extra = top_up(reopened=True)
    assert ("region", "London") in accounting.closed_cells and extra.count == 0, "at its cap London closes"
    assert accounting.over_tolerance(5.0).empty


def test_a_short_soft_cell_with_nobody_to_invite_is_not_a_stranded_hard_cell() -> None:
    top_up_cells = pd.DataFrame(
        {
            "target": ["gender", "gender", "region"],
            "category": ["female", "male", "Wales"],
            "need": [0.0, 0.4, 3.0],  # male: under half a complete is not short
            "invitations": [0, 0, 0],
        }
    )
    assert fieldwork.stranded_hard_cells(top_up_cells, "gender") == []
    assert fieldwork.stranded_hard_cells(top_up_cells.assign(need=[2.0, 0.4, 3.0]), "gender") == ["female"]


def test_no_top_up_when_nothing_is_short() -> None:
    pool, rates = panel_pool(2_000)
    cells = fieldwork.cell_targets(TARGETS, 10)
    sample = members(
        [{"gender": "female", "region": "Wales", "invited_at": 300, "completed_at": 200}] * 5
        + [{"gender": "male", "region": "London", "invited_at": 300, "completed_at": 200}] * 4
        + [{"gender": "male", "region": "Wales", "invited_at": 300, "completed_at": 200}]
    )
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=np.full(10, 0.2), curve=LINEAR_CURVE)
    assert accounting.every_cell_full
    assert fieldwork.top_up(accounting, pool, rates, FieldworkSettings(), np.random.default_rng(3)).count == 0
    assert fieldwork.closing_reason(accounting, NOW, NOW + dt.timedelta(days=3)) == "every cell is full"


def test_fieldwork_closes_once_every_hard_cell_is_full_however_short_a_soft_cell_is() -> None:
    """Gender (the hard target) full at 5 + 5: nobody else can come in, so Wales one short cannot fill."""
    cells = fieldwork.cell_targets(TARGETS, 10)
    done = {"invited_at": 300, "completed_at": 200}
    sample = members(
        [{"gender": "female", "region": "Wales", **done}] * 5
        + [{"gender": "male", "region": "London", **done}] * 5
        + [{"gender": "male", "region": "Wales", "invited_at": 300}]
    )
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=np.full(11, 0.2), curve=LINEAR_CURVE)
    later = NOW + dt.timedelta(days=3)
    assert not accounting.every_cell_full
    assert fieldwork.closing_reason(accounting, NOW, later) is None, "without a hard target, open"
    assert fieldwork.closing_reason(accounting, NOW, later, hard_target="gender") == "every hard cell is full"
    assert fieldwork.closing_reason(accounting, NOW, later, hard_target="region") is None


def test_reminders_reach_only_pending_active_members_of_short_open_cells_once() -> None:
    cells = fieldwork.cell_targets(TARGETS, 100)
    base = {"gender": "male", "region": "Wales", "invited_at": 60}
    sample = members(
        [
            base,  # due
            {**base, "completed_at": 1},  # a completer
            {**base, "invited_at": 10},  # invited too recently
            {**base, "reminders": 1, "reminded_at": 50},  # had its one reminder
            {**base, "active": False},  # no longer active
            {**base, "in_progress": True},  # in the survey now
            {**base, "gender": "female"},  # female is closed below
            base,  # held back by the contact budget
        ]
        + [{"gender": "female", "region": "London", "invited_at": 100, "completed_at": 50}] * 50
    )
    sample["reminders"] = sample["reminders"].fillna(0)
    sample["active"] = sample["active"].fillna(True).astype(bool)
    sample["in_progress"] = sample["in_progress"].fillna(False).astype(bool)
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=np.full(len(sample), 0.1), curve=LINEAR_CURVE)
    allowed = np.ones(len(sample), dtype=bool)
    allowed[7] = False
    chosen = fieldwork.reminder_candidates(sample, accounting, NOW, FieldworkSettings(), allowed)
    assert np.flatnonzero(chosen).tolist() == [0]
    twice = fieldwork.reminder_candidates(sample, accounting, NOW, FieldworkSettings(max_reminders=2), allowed)
    assert np.flatnonzero(twice).tolist() == [0, 3]  # its last contact was 50 h ago


def test_no_reminder_where_the_cell_is_on_course() -> None:
    cells = fieldwork.cell_targets((TARGETS[0],), 2)
    sample = members([{"gender": "male", "region": "Wales", "invited_at": 60}] * 40)
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=np.full(40, 0.5), curve=LINEAR_CURVE)
    assert accounting.cells.set_index("category").loc["male", "need"] < fieldwork.MIN_NEED
    assert not fieldwork.reminder_candidates(sample, accounting, NOW, FieldworkSettings()).any()


def test_with_top_ups_only_the_cells_whose_fresh_sample_runs_out_are_reminded() -> None:
    cells = fieldwork.cell_targets((TARGETS[0],), 100)
    sample = members([{"gender": gender, "invited_at": 60} for gender in ("female", "male") for _ in range(20)])
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=np.full(40, 0.1), curve=LINEAR_CURVE)
    need = accounting.cells.set_index("category")["need"]
    assert (need >= fieldwork.MIN_NEED).all()  # both cells are short
    fresh = {"female": need["female"] - 1, "male": 10 * need["male"]}  # women: fewer left to invite than needed

    def reminded(invitable: np.ndarray | None) -> set[str]:
        due = fieldwork.reminder_candidates(sample, accounting, NOW, FieldworkSettings(), invitable_completes=invitable)
        return set(sample.loc[due, "gender"])

    assert reminded(accounting.cells["category"].map(fresh).to_numpy()) == {"female"}
    assert reminded(np.full(2, np.nan)) == set()  # no top-up has looked at the cells yet
    assert reminded(None) == {"female", "male"}  # no top-ups: a reminder is the only way to fill a cell


def test_the_contact_budget_holds_back_members_at_their_limit_counted_per_cell() -> None:
    cells = fieldwork.cell_targets(TARGETS, 10)
    pool = pd.DataFrame({"gender": ["female", "male", "male", "female"], "region": ["Wales", "Wales", "London", None]})
    check = fieldwork.contact_budget(np.array([3, 2, 5, 0]), cells, pool, budget=3)
    assert check.allowed.tolist() == [False, True, False, True]
    held = check.held_back_by_cell.set_index("category")["held_back"].to_dict()
    assert held == {"female": 1, "male": 1, "London": 1, "Wales": 1}
    assert check.to_document()["held_back"] == 2
    considered = fieldwork.contact_budget(np.array([3, 2, 5, 0]), cells, pool, considered=np.array([1, 1, 0, 1], bool))
    assert considered.held_back == 1


def test_fieldwork_closes_at_close_at() -> None:
    cells = fieldwork.cell_targets(TARGETS, 10)
    accounting = fieldwork.account_cells(cells, members([{"gender": "male", "region": "Wales", "invited_at": 5}]))
    assert fieldwork.closing_reason(accounting, NOW, NOW + dt.timedelta(hours=1)) is None
    assert fieldwork.closing_reason(accounting, NOW, NOW) == "close_at reached"
    drawn = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert FieldworkSettings().closes_at(drawn, drawn) == drawn + dt.timedelta(days=14)


def test_on_a_stepped_clock_fieldwork_durations_pass_only_with_the_steps() -> None:
    """However late in wall time a pass comes, it reads the fieldwork hours the clock was stepped to."""
    invited = NOW - dt.timedelta(hours=300)
    before = FieldworkSettings(reminder_after_hours=24, clock=SteppedFieldworkClock((), pace=3600))
    stepped = FieldworkSettings(
        reminder_after_hours=24, clock=SteppedFieldworkClock((FieldworkStep(NOW - dt.timedelta(hours=1), 24.0),))
    )
    cells = fieldwork.cell_targets((TARGETS[0],), 100)
    sample = members([{"gender": "male", "invited_at": 300}])
    sample["reminders"], sample["active"], sample["in_progress"] = 0, True, False
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=np.full(1, 0.1), curve=LINEAR_CURVE)
    assert not fieldwork.reminder_candidates(sample, accounting, NOW, before).any(), "300 wall hours, 0 stepped"
    assert fieldwork.reminder_candidates(sample, accounting, NOW, stepped).tolist() == [True]
    assert before.closes_at(invited, NOW) > NOW, "14 fieldwork days to come"
    assert SteppedFieldworkClock((FieldworkStep(NOW, 14 * 24.0),)).wall_after(invited, 14 * 24, NOW) == NOW


def test_fieldwork_time_can_run_faster_than_the_wall_clock() -> None:
    """At an hour a second (the local run's respondents), a reminder due 48 h after the invitation is
    due 48 s after it, and a member invited a minute ago has had 60 fieldwork hours to answer."""
    fast = FieldworkSettings(clock=ScaledFieldworkClock(3600.0))
    assert fast.hours_since([NOW - dt.timedelta(seconds=48)], NOW).tolist() == pytest.approx([48.0])
    assert fast.closes_at(NOW, NOW) - NOW == dt.timedelta(days=DEFAULT_FIELDWORK_DAYS) / 3600
    cells = fieldwork.cell_targets((TARGETS[0],), 100)
    sample = members([{"gender": "male", "invited_at": 60 / 3600}, {"gender": "male", "invited_at": 10 / 3600}])
    sample["reminders"], sample["active"], sample["in_progress"] = 0, True, False
    rates, curve = np.full(2, 0.1), LINEAR_CURVE
    accounting = fieldwork.account_cells(cells, sample, now=NOW, rates=rates, curve=curve, clock=fast.clock)
    assert fieldwork.reminder_candidates(sample, accounting, NOW, fast).tolist() == [True, False]
    assert not fieldwork.reminder_candidates(sample, accounting, NOW, FieldworkSettings()).any()
    wall = fieldwork.account_cells(cells, sample, now=NOW, rates=rates, curve=curve)
    male = accounting.cells["category"] == "male"
    expected_fast = accounting.cells.loc[male, "expected_by_now"].item()
    assert expected_fast == pytest.approx(0.1 * (60 + 10) / 168)
    assert wall.cells.loc[male, "expected_by_now"].item() < expected_fast / 1000


def test_a_sample_without_cells_closes_when_its_completes_are_in_not_at_once() -> None:
    """Filters only (every member in Scotland): no cell to fill is not a full sample."""
    no_cells = fieldwork.cell_targets((), 10)
    sample = members([{"invited_at": 5, "completed_at": 1}] * 4 + [{"invited_at": 5}] * 6)
    accounting = fieldwork.account_cells(no_cells, sample)
    assert fieldwork.closing_reason(accounting, NOW, NOW + dt.timedelta(days=3), wanted=10) is None
    assert (
        fieldwork.closing_reason(accounting, NOW, NOW + dt.timedelta(days=3), wanted=4) == "the completes wanted are in"
    )
    assert fieldwork.closing_reason(accounting, NOW, NOW, wanted=10) == "close_at reached"
