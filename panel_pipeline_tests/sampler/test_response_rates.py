"""Response rates learned from past invitations: recovery, shrinkage, censoring, the curve, the
document round trip, and which rate wins for a request."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from panel_pipeline.sampler.requests import parse_sample_request
from panel_pipeline.sampler.response_rates import (
    CURVE_HOURS,
    LearnedResponseRates,
    learn_response_rates,
    rates_for_request,
)

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
AGE_BANDS = ("18-24", "35-44", "65-74")
REGIONS = ("London", "North East", "Scotland")


def history(
    rng: np.random.Generator,
    members: int,
    rate_of: dict[str, float],
    region_young_bias: bool = False,
    hours_ago: tuple[float, float] = (200.0, 2000.0),
) -> pd.DataFrame:
    """Past invitations: rate by age band x gender only (region has no effect of its own)."""
    age = rng.choice(AGE_BANDS, members)
    gender = rng.choice(("female", "male"), members)
    if region_young_bias:  # London members are mostly young: a naive London rate looks low
        region = np.where(
            age == "18-24",
            rng.choice(REGIONS, members, p=[0.8, 0.1, 0.1]),
            rng.choice(REGIONS, members, p=[0.1, 0.45, 0.45]),
        )
    else:
        region = rng.choice(REGIONS, members)
    rate = np.array([rate_of[f"{a}|{g}"] for a, g in zip(age, gender, strict=True)])
    invited_at = pd.Timestamp(NOW) - pd.to_timedelta(rng.uniform(*hours_ago, members), unit="h")
    delay = rng.exponential(10.0, members)
    completed_at = pd.Series(invited_at + pd.to_timedelta(delay, unit="h"))
    completed_at = completed_at.where((rng.random(members) < rate) & (delay <= 168) & (completed_at <= NOW))
    return pd.DataFrame(
        {
            "age_band": age,
            "gender": gender,
            "region": region,
            "social_grade": rng.choice(("AB", "C1", "C2", "DE"), members),
            "invited_at": invited_at,
            "completed_at": completed_at.to_numpy(),
        }
    )


RATES = {
    f"{age}|{gender}": rate
    for (age, gender), rate in zip(
        [(a, g) for a in AGE_BANDS for g in ("female", "male")], [0.07, 0.04, 0.14, 0.09, 0.35, 0.22], strict=True
    )
}


def test_the_cell_rates_and_predictions_recover_the_true_rates() -> None:
    frame = history(np.random.default_rng(1), 60_000, RATES)
    learned = learn_response_rates(frame, NOW)
    for cell, rate in RATES.items():
        assert learned.cell("age_band|gender", cell).rate == pytest.approx(rate, rel=0.08)
    predicted = learned.predict(frame)
    truth = np.array([RATES[f"{a}|{g}"] for a, g in zip(frame["age_band"], frame["gender"], strict=True)])
    assert np.median(np.abs(predicted / truth - 1)) < 0.05


def test_dimensions_combine_without_counting_age_twice() -> None:
    """London's raw rate is low only because its members are young; its factor stays near 1, so
    the prediction for a young Londoner is not pushed below the young rate."""
    frame = history(np.random.default_rng(2), 60_000, RATES, region_young_bias=True)
    learned = learn_response_rates(frame, NOW)
    london = learned.cell("region", "London")
    assert london.raw_rate < 0.8 * learned.overall_rate  # the naive ratio would penalise London
    assert london.factor == pytest.approx(1.0, abs=0.06)
    young_londoner = pd.DataFrame([{"age_band": "18-24", "gender": "male", "region": "London", "social_grade": "C1"}])
    assert learned.predict(young_londoner)[0] == pytest.approx(RATES["18-24|male"], rel=0.15)


def test_a_cell_with_few_invitations_is_shrunk_toward_the_overall_rate() -> None:
    frame = history(np.random.default_rng(3), 20_000, RATES)
    rare = frame.iloc[:5].copy()
    rare["region"] = "Wales"
    rare["completed_at"] = rare["invited_at"] + pd.Timedelta(hours=1)  # 5 of 5 completed
    learned = learn_response_rates(pd.concat([frame.iloc[5:], rare], ignore_index=True), NOW, prior_strength=100)
    wales = learned.cell("region", "Wales")
    assert wales.raw_rate == 1.0
    assert wales.rate == pytest.approx((5 + 100 * learned.overall_rate) / (5 + 100), rel=1e-9)
    assert wales.rate < 1.5 * learned.overall_rate


def test_invitations_too_recent_to_have_finished_are_censored_not_counted_as_refusals() -> None:
    rng = np.random.default_rng(4)
    old = history(rng, 30_000, RATES)
    fresh = history(rng, 30_000, RATES, hours_ago=(0.5, 6.0))  # most of their completes are still to come
    alone = learn_response_rates(old, NOW)
    together = learn_response_rates(pd.concat([old, fresh], ignore_index=True), NOW)
    naive = (old["completed_at"].notna().sum() + fresh["completed_at"].notna().sum()) / 60_000
    assert naive < 0.8 * alone.overall_rate  # counting fresh invitations as refusals would drag it down
    assert together.overall_rate == pytest.approx(alone.overall_rate, rel=0.06)
    assert together.curve.fully_observed_invitations == 30_000


def test_the_curve_is_the_share_of_eventual_completes_by_each_hour() -> None:
    frame = history(np.random.default_rng(5), 40_000, RATES)
    curve = learn_response_rates(frame, NOW).curve
    expected = [(1 - np.exp(-hour / 10.0)) / (1 - np.exp(-168 / 10.0)) for hour in CURVE_HOURS]
    np.testing.assert_allclose(curve.shares, expected, atol=0.02)
    assert curve.share_by(0.0) == 0.0 and curve.share_by(500.0) == 1.0


def test_members_missing_a_field_count_everywhere_else() -> None:
    frame = history(np.random.default_rng(6), 20_000, RATES)
    frame.loc[:4_999, "region"] = np.nan
    learned = learn_response_rates(frame, NOW)
    assert sum(cell.invitations for cell in learned.cells if cell.dimension == "region") == 15_000
    assert sum(cell.invitations for cell in learned.cells if cell.dimension == "age_band|gender") == 20_000
    no_region = pd.DataFrame([{"age_band": "65-74", "gender": "female", "region": None, "social_grade": None}])
    assert learned.predict(no_region)[0] == pytest.approx(RATES["65-74|female"], rel=0.12)


def test_the_document_is_plain_json_and_round_trips() -> None:
    learned = learn_response_rates(history(np.random.default_rng(7), 5_000, RATES), NOW)
    document = json.loads(json.dumps(learned.to_document()))
    assert LearnedResponseRates.from_document(document) == learned


def test_a_requests_own_rate_wins_over_the_learned_one() -> None:
    learned = learn_response_rates(history(np.random.default_rng(8), 5_000, RATES), NOW)
    base = {"name": "x", "survey_id": "1", "size": 10}
    own = parse_sample_request({**base, "expected_response_rate": 0.3})
    assert rates_for_request(own, learned).default == 0.3
    for request in (parse_sample_request(base), parse_sample_request({**base, "expected_response_rate": None})):
        chosen = rates_for_request(request, learned)
        assert chosen.fields == ("age_band", "gender", "region", "social_grade")
        assert chosen.rate_for(("65-74", "female", "London", "AB")) > chosen.rate_for(("18-24", "male", "London", "AB"))
    assert rates_for_request(parse_sample_request(base), None).default == 1.0
