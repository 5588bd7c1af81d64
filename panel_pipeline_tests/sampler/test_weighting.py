"""Raking against weightipy (the reference rim weigher), caps, and Kish measures by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import weightipy

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler.weighting import (
    design_effect,
    kish_effective_sample_size,
    rake,
    rake_with_cap,
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
