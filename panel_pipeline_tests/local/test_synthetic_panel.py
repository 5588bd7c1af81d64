"""The synthetic panel: contract values, internal consistency, skew, reproducibility (its speed is
`python -m benchmarks synthetic_panel`'s to measure)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler.requests import age_band_codes
from panel_pipeline.sampler.targets import packaged_target
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

YEAR = 2025


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return generate_profiles(100_000, seed=11, as_of_year=YEAR)


def test_columns_and_values_are_exactly_the_contracts(panel: pd.DataFrame, profile_columns: list[str]) -> None:
    assert list(panel.columns) == profile_columns
    for field, values in PROFILE_CATEGORIES.items():
        assert set(panel[field].astype(str).unique()) <= set(values), field
    assert not panel.isna().any().any()


def test_age_agrees_with_birth_year_and_band(panel: pd.DataFrame) -> None:
    assert (panel["age"] == YEAR - panel["birth_year"]).all()
    assert panel["age"].min() >= 18
    bands = np.asarray(PROFILE_CATEGORIES["age_band"])[age_band_codes(panel["age"].to_numpy())]
    assert (bands == panel["age_band"].astype(str).to_numpy()).all()


def test_same_seed_same_panel_and_different_seed_differs() -> None:
    first = generate_profiles(5_000, seed=3, as_of_year=YEAR)
    pd.testing.assert_frame_equal(first, generate_profiles(5_000, seed=3, as_of_year=YEAR))
    assert not first.equals(generate_profiles(5_000, seed=4, as_of_year=YEAR))


def _share(panel: pd.DataFrame, field: str, values: list[str]) -> float:
    return float(panel[field].isin(values).mean())


def test_skewed_like_an_opt_in_panel(panel: pd.DataFrame) -> None:
    population_young = sum(
        share for cell, share in packaged_target("age_band|gender").shares.items() if cell[0] in ("18-24", "25-34")
    )
    assert _share(panel, "age_band", ["18-24", "25-34"]) < 0.7 * population_young
    assert _share(panel, "social_grade", ["AB", "C1"]) > 0.60  # population 0.56
    assert _share(panel, "region", ["London", "South East", "East of England", "South West"]) > 0.50  # population 0.45
    assert _share(panel, "vote_2024", ["did_not_vote"]) < 0.40  # population 0.46


def test_parties_only_where_they_stand(panel: pd.DataFrame) -> None:
    for vote in ("vote_2019", "vote_2024"):
        assert set(panel.loc[panel[vote] == "snp", "region"].astype(str)) == {"Scotland"}
        assert set(panel.loc[panel[vote] == "plaid_cymru", "region"].astype(str)) == {"Wales"}
        northern_ireland = panel.loc[panel["region"] == "Northern Ireland", vote].astype(str)
        assert not northern_ireland.isin(["conservative", "labour", "lib_dem"]).any()


def test_too_young_to_vote_did_not_vote(panel: pd.DataFrame) -> None:
    assert (panel.loc[2016 - panel["birth_year"] < 18, "eu_ref_vote"] == "did_not_vote").all()
    assert (panel.loc[2024 - panel["birth_year"] < 18, "vote_2024"] == "did_not_vote").all()


def test_plausible_associations(panel: pd.DataFrame) -> None:
    leave_by_band = pd.crosstab(panel["age_band"], panel["eu_ref_vote"] == "leave", normalize="index")[True]
    assert leave_by_band["65-74"] > leave_by_band["35-44"] + 0.15
    degree_by_grade = pd.crosstab(panel["social_grade"], panel["education"] == "level_4_plus", normalize="index")[True]
    assert degree_by_grade["AB"] > degree_by_grade["DE"] + 0.3
