"""Quota allocation, the draw inside cells, infeasible requests and reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler.quotas import SelectionResult, select, select_members
from panel_pipeline.sampler.requests import ResponseRates, parse_sample_request
from panel_pipeline.sampler.targets import Target, request_targets
from panel_pipeline.sampler.weighting import kish_effective_sample_size, rake

GENDER_50_50 = Target.from_shares("gender", {"female": 0.5, "male": 0.5})


def tiny_panel(**columns: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(columns, index=[f"user{i}" for i in range(len(next(iter(columns.values()))))])


def completes_by(result: SelectionResult, field: str) -> dict[str, int]:
    return result.cells.groupby(field)["completes"].sum().to_dict()


def test_marginal_quota_is_met_exactly() -> None:
    panel = tiny_panel(gender=["female"] * 60 + ["male"] * 40)
    result = select_members(panel, [GENDER_50_50], 10, seed=1)
    assert result.status == "ok"
    assert completes_by(result, "gender") == {"female": 5, "male": 5}
    assert panel.loc[result.member_ids, "gender"].value_counts().to_dict() == {"female": 5, "male": 5}
    assert result.max_deviation_pp == 0


def test_interlocked_cells_are_met_exactly() -> None:
    panel = tiny_panel(age_band=["18-24"] * 50 + ["75+"] * 50, gender=(["female"] * 25 + ["male"] * 25) * 2)
    target = Target.from_shares(
        "age_band|gender", {"18-24|female": 0.4, "18-24|male": 0.1, "75+|female": 0.3, "75+|male": 0.2}
    )
    result = select_members(panel, [target], 20, seed=1)
    by_cell = result.cells.set_index(["age_band", "gender"])["completes"].to_dict()
    assert by_cell == {("18-24", "female"): 8, ("18-24", "male"): 2, ("75+", "female"): 6, ("75+", "male"): 4}


def test_two_marginal_targets_on_correlated_fields() -> None:
    # Women are mostly old, men mostly young: both 50/50 margins are still reachable (5 + 5).
    panel = tiny_panel(
        gender=["female"] * 40 + ["male"] * 40,
        age_band=["75+"] * 35 + ["18-24"] * 5 + ["18-24"] * 35 + ["75+"] * 5,
    )
    age = Target.from_shares("age_band", {"18-24": 0.5, "75+": 0.5})
    result = select_members(panel, [GENDER_50_50, age], 10, seed=2)
    assert completes_by(result, "gender") == {"female": 5, "male": 5}
    assert completes_by(result, "age_band") == {"18-24": 5, "75+": 5}


def test_odd_size_rounds_to_the_nearest_integers() -> None:
    panel = tiny_panel(gender=["female"] * 10 + ["male"] * 10)
    result = select_members(panel, [GENDER_50_50], 3, seed=3, tolerance_pp=20)
    assert sorted(completes_by(result, "gender").values()) == [1, 2]
    assert result.max_deviation_pp == pytest.approx(100 / 6)
    assert result.status == "ok"


def test_infeasible_request_reports_shortfall_per_category_and_weighting_cost() -> None:
    panel = tiny_panel(age_band=["18-24"] * 2 + ["75+"] * 50)
    target = Target.from_shares("age_band", {"18-24": 0.5, "75+": 0.5})
    result = select_members(panel, [target], 10, seed=4)
    assert result.status == "infeasible"
    young, old = result.categories
    assert (young.requested, young.available, young.capacity, young.allocated, young.shortfall) == (5, 2, 2, 2, 3)
    assert (old.allocated, old.shortfall) == (8, 0)
    assert young.deviation_pp == pytest.approx(-30)
    assert result.max_deviation_pp == pytest.approx(30)
    cost = result.weighting_cost
    # Raked back: 2 young people weigh 2.5 each, 8 old 0.625 each.
    assert cost.max_weight == pytest.approx(2.5)
    assert cost.effective_sample_size == pytest.approx(100 / 15.625)
    assert cost.design_effect == pytest.approx(15.625 / 10)
    assert result.shortfalls == (young,)
    assert "18-24: 2 of 5" in result.summary()


def test_request_larger_than_the_panel_is_reported_not_silently_shrunk() -> None:
    panel = tiny_panel(gender=["female"] * 3 + ["male"] * 3)
    result = select_members(panel, [GENDER_50_50], 10, seed=5)
    assert result.status == "infeasible"
    assert result.completes_planned == 6
    assert sum(report.shortfall for report in result.categories) == 4


def test_invitations_are_sized_per_cell_from_response_rates() -> None:
    panel = tiny_panel(gender=["female"] * 500 + ["male"] * 500)
    rates = ResponseRates(default=None, fields=("gender",), rates={("female",): 0.1, ("male",): 0.2})
    result = select_members(panel, [GENDER_50_50], 20, seed=6, response_rates=rates)
    assert result.cells.set_index("gender")["invites"].to_dict() == {"female": 100, "male": 50}
    assert result.invited == 150
    assert result.expected_completes == pytest.approx(20)


def test_low_response_cell_limits_what_can_be_planned() -> None:
    panel = tiny_panel(gender=["female"] * 50 + ["male"] * 500)
    rates = ResponseRates(default=0.5, fields=("gender",), rates={("female",): 0.1})
    result = select_members(panel, [GENDER_50_50], 20, seed=6, response_rates=rates)
    female = result.categories[0]
    assert (female.capacity, female.allocated, female.shortfall) == (5, 5, 5)
    assert result.cells.set_index("gender").loc["female", "invites"] == 50


def test_eligibility_mask_and_unclassifiable_members() -> None:
    panel = tiny_panel(gender=["female"] * 20 + ["male"] * 20 + ["other", None])
    eligible = np.arange(len(panel)) % 2 == 0
    eligible[-2:] = True
    result = select_members(panel, [GENDER_50_50], 10, seed=7, eligible=eligible)
    assert eligible[result.row_positions].all()
    assert result.unclassified_members == 2


@pytest.fixture(scope="module")
def synthetic_panel() -> pd.DataFrame:
    frame = generate_profiles(200_000, seed=8, as_of_year=2025)
    frame.index = pd.Index([f"u{i:07d}" for i in range(len(frame))])
    return frame


def nat_rep(size: int, seed: int | None = None, **fields: object) -> object:
    return parse_sample_request(
        {"name": "nat rep", "survey_id": "1", "size": size, "preset": "uk_nat_rep", "seed": seed, **fields}
    )


def test_uk_nat_rep_from_a_skewed_panel(synthetic_panel: pd.DataFrame) -> None:
    request = nat_rep(2000, seed=9)
    result = select(synthetic_panel, request)  # type: ignore[arg-type]
    assert result.status == "ok"
    assert result.invited == 2000 == len(set(result.member_ids))
    assert result.max_deviation_pp <= 0.5
    chosen = synthetic_panel.iloc[result.row_positions]
    targets = request_targets(request)  # type: ignore[arg-type]
    codes, shares = [], []
    for target in targets:
        keys = chosen[list(target.fields)].astype(str).agg("|".join, axis=1)
        cells = ["|".join(cell) for cell in target.cells]
        actual = keys.value_counts(normalize=True).reindex(cells, fill_value=0).to_numpy()
        assert np.abs(actual - target.share_array()).max() * 100 <= 0.5, target.key
        codes.append(pd.Categorical(keys, categories=cells).codes.astype(np.int64))
        shares.append(target.share_array())
    assert kish_effective_sample_size(rake(codes, shares).weights) >= 1900


def test_same_seed_same_members_and_replayable_without_seed(synthetic_panel: pd.DataFrame) -> None:
    first = select(synthetic_panel, nat_rep(300, seed=10))  # type: ignore[arg-type]
    again = select(synthetic_panel, nat_rep(300, seed=10))  # type: ignore[arg-type]
    other = select(synthetic_panel, nat_rep(300, seed=11))  # type: ignore[arg-type]
    np.testing.assert_array_equal(first.member_ids, again.member_ids)
    assert set(first.member_ids) != set(other.member_ids)
    unseeded = select(synthetic_panel, nat_rep(300))  # type: ignore[arg-type]
    replay = select(synthetic_panel, nat_rep(300, seed=unseeded.seed))  # type: ignore[arg-type]
    np.testing.assert_array_equal(unseeded.member_ids, replay.member_ids)


def test_request_filters_are_applied(synthetic_panel: pd.DataFrame) -> None:
    request = nat_rep(200, seed=12, filters={"region": "Scotland", "age": {"$gte": 35}})
    result = select(synthetic_panel, request)  # type: ignore[arg-type]
    chosen = synthetic_panel.iloc[result.row_positions]
    assert (chosen["region"] == "Scotland").all() and (chosen["age"] >= 35).all()


def test_result_document_is_json_ready(synthetic_panel: pd.DataFrame) -> None:
    result = select(synthetic_panel, nat_rep(1000, seed=13))  # type: ignore[arg-type]
    document = json.loads(json.dumps(result.to_document()))
    assert document["status"] == "ok" and len(document["composition"]) == 46
