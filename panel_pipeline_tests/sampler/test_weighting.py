"""Raking against weightipy (the reference rim weigher), caps, and Kish measures by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import weightipy

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler.weighting import (
    design_effect,
    kish_effective_sample_size,
    rake,
    rake_with_cap,
    weight_completes,
)

TARGETS = {
    "age_band": {"18-24": 10.5, "25-34": 17.0, "35-44": 16.4, "45-54": 16.8, "55-64": 15.9, "65-74": 12.5, "75+": 10.9},
    "gender": {"male": 48.35, "female": 51.65},
    "region": {
        "London": 13.0,
        "South East": 13.85,
        "Scotland": 8.26,
        "Wales": 4.68,
        "North West": 11.06,
        "North East": 4.0,
        "Yorkshire and The Humber": 8.16,
        "East Midlands": 7.31,
        "West Midlands": 8.78,
        "East of England": 9.44,
        "South West": 8.69,
        "Northern Ireland": 2.76,
    },
    "social_grade": {"AB": 27.0, "C1": 29.0, "C2": 21.0, "DE": 23.0},
}


def _codes_and_shares(frame: pd.DataFrame) -> tuple[list[np.ndarray], list[np.ndarray]]:
    codes = [
        pd.Categorical(frame[field].astype(str), categories=list(shares)).codes.astype(np.int64)
        for field, shares in TARGETS.items()
    ]
    targets = [np.array(list(shares.values())) / sum(shares.values()) for shares in TARGETS.values()]
    return codes, targets


def test_raking_matches_weightipy_on_the_same_data() -> None:
    frame = generate_profiles(30_000, seed=5, as_of_year=2025)
    frame = frame[frame["gender"].isin(["male", "female"])].astype({field: str for field in TARGETS})
    scheme = weightipy.scheme_from_dict(TARGETS, rim_params={"convcrit": 1e-12, "max_iterations": 5000})
    reference = weightipy.weight_dataframe(frame, scheme)["weights"].to_numpy()
    codes, targets = _codes_and_shares(frame)
    ours = rake(codes, targets, tolerance=1e-12)
    assert ours.converged
    assert reference.std() > 0.2  # the reference really weighted (weightipy < 0.4.2 returns all 1s on pandas 3)
    np.testing.assert_allclose(ours.weights, reference, rtol=1e-8)


def test_raked_margins_hit_the_targets() -> None:
    frame = generate_profiles(20_000, seed=6, as_of_year=2025)
    frame = frame[frame["gender"].isin(["male", "female"])]
    codes, targets = _codes_and_shares(frame)
    result = rake(codes, targets)
    for variable_codes, shares in zip(codes, targets, strict=True):
        achieved = np.bincount(variable_codes, weights=result.weights, minlength=len(shares)) / result.weights.sum()
        np.testing.assert_allclose(achieved, shares, atol=1e-6)


def test_cap_bounds_every_weight_and_reports_the_residual_miss() -> None:
    codes = [np.array([0] * 9 + [1])]  # one member of group 1 must stand for half the sample
    capped = rake_with_cap(codes, [np.array([0.5, 0.5])], cap=3.0)
    assert capped.weights.max() <= 3.0 + 1e-12
    assert not capped.converged
    assert capped.max_margin_error_pp > 10


def test_kish_effective_sample_size_and_design_effect_by_hand() -> None:
    weights = np.array([1.0, 1.0, 2.0, 2.0])
    assert kish_effective_sample_size(weights) == 36 / 10
    assert design_effect(weights) == 4 / 3.6
    assert kish_effective_sample_size(np.array([1.0, 2.0]), frequencies=np.array([2, 2])) == 3.6


# --- closing weights ----------------------------------------------------------------------------------

CLOSING_TARGETS = {"gender": {"female": 0.5, "male": 0.5}, "region": {"London": 0.3, "Wales": 0.7}}


def completes(female: int, male: int, london_share: float = 0.3) -> dict[str, np.ndarray]:
    """Exactly `london_share` of each gender in London."""
    gender = np.array(["female"] * female + ["male"] * male, dtype=object)
    region = [
        "London" if index < round(count * london_share) else "Wales"
        for count in (female, male)
        for index in range(count)
    ]
    return {"gender": gender, "region": np.array(region, dtype=object)}


def test_closing_weights_converge_within_the_bounds_and_hit_every_target() -> None:
    data = completes(600, 400)
    result = weight_completes(data, CLOSING_TARGETS, (0.2, 5.0))
    assert result.status == "converged" and result.weights is not None
    assert result.max_miss_pp <= 0.01
    for key, shares in CLOSING_TARGETS.items():
        for category, share in shares.items():
            achieved = result.weights[data[key] == category].sum() / result.weights.sum()
            assert achieved == pytest.approx(share, abs=1e-4)
    assert result.weights.mean() == pytest.approx(1.0)
    assert result.design_effect == pytest.approx(design_effect(result.weights))
    assert result.effective_sample_size == pytest.approx(kish_effective_sample_size(result.weights))
    assert result.max_weight == pytest.approx(1.25, abs=0.01)  # 0.5 / 0.4
    document = result.to_document()
    assert document["status"] == "converged" and document["failed_target"] is None


def test_a_target_out_of_reach_within_the_caps_is_named_and_no_weights_are_given() -> None:
    data = completes(950, 50)  # men would need weights of 10
    result = weight_completes(data, CLOSING_TARGETS, (0.2, 5.0))
    assert result.status == "not_converged"
    assert result.weights is None
    assert (result.failed_target, result.failed_category) == ("gender", "male")
    assert result.max_miss_pp > 10
    assert "gender=" in result.message and "5" in result.message
    assert result.max_weight <= 5.0 + 1e-9  # the caps were applied, not ignored


def test_the_caps_are_applied_not_just_accepted() -> None:
    """Uncapped, the men need weights of 4.75: with an upper bound of 10 raking converges and uses
    them; with an upper bound of 4 it cannot, and no weight goes past 4 (balance and svy shipped
    bounds that were silently ignored)."""
    data = completes(900, 100, london_share=0.3)
    loose = weight_completes(data, CLOSING_TARGETS, (0.0, 10.0))
    assert loose.status == "converged" and loose.weights is not None
    assert loose.max_weight == pytest.approx(5.0, rel=0.02)
    tight = weight_completes(data, CLOSING_TARGETS, (0.5, 4.0))
    assert tight.status == "not_converged" and tight.failed_target == "gender"
    assert tight.max_weight <= 4.0 + 1e-9 and tight.min_weight >= 0.5 - 1e-9
    raised_floor = weight_completes(data, CLOSING_TARGETS, (0.6, 10.0))  # the women need 0.56
    assert raised_floor.status == "not_converged"


def test_a_category_with_no_completes_cannot_be_weighted_and_is_named() -> None:
    data = completes(500, 500, london_share=0.0)
    result = weight_completes(data, CLOSING_TARGETS, (0.2, 5.0))
    assert (result.status, result.failed_target, result.failed_category) == ("not_converged", "region", "London")
    assert result.max_miss_pp == pytest.approx(30.0, abs=0.01)


def test_completes_missing_a_value_are_held_at_their_own_share() -> None:
    data = completes(600, 400)
    data["region"][:100] = None
    result = weight_completes(data, CLOSING_TARGETS, (0.2, 5.0))
    assert result.status == "converged" and result.weights is not None
    missing = result.weights[:100].sum() / result.weights.sum()
    assert missing == pytest.approx(0.1, abs=1e-4)
    london = result.weights[data["region"] == "London"].sum() / result.weights.sum()
    assert london == pytest.approx(0.3 * 0.9, abs=1e-4)


def test_no_completes_no_weights() -> None:
    empty = {"gender": np.array([], dtype=object), "region": np.array([], dtype=object)}
    result = weight_completes(empty, CLOSING_TARGETS)
    assert result.status == "no_completes" and result.weights is None
