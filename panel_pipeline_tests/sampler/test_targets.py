"""Packaged UK targets, the uk_nat_rep preset and a request's targets."""

from __future__ import annotations

import math

from panel_pipeline.sampler.requests import parse_sample_request
from panel_pipeline.sampler.targets import (
    load_target_table,
    preset_targets,
    request_targets,
)
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

BASE = {"name": "n", "survey_id": "1", "size": 100}


def test_packaged_targets_use_contract_values_and_sum_to_one() -> None:
    for target in preset_targets("uk_nat_rep"):
        assert math.isclose(sum(target.shares.values()), 1.0)
        for cell in target.cells:
            for field, value in zip(target.fields, cell, strict=True):
                assert value in PROFILE_CATEGORIES[field]
    assert load_target_table()["source"].notna().all()


def test_uk_nat_rep_interlocks_age_and_gender_and_keeps_the_rest_marginal() -> None:
    keys = [target.key for target in preset_targets("uk_nat_rep")]
    assert keys == ["age_band|gender", "region", "social_grade", "education", "vote_2024"]
    vote = {cell[0]: share for cell, share in preset_targets("uk_nat_rep")[-1].shares.items()}
    assert 0.45 < vote["did_not_vote"] < 0.47  # shares of adults, not of votes cast


def test_quotas_override_the_preset_and_add_targets() -> None:
    request = parse_sample_request(
        BASE
        | {
            "preset": "uk_nat_rep",
            "quotas": {"region": {"Wales": 0.5, "Scotland": 0.5}, "eu_ref_vote": {"remain": 0.5, "leave": 0.5}},
        }
    )
    targets = {target.key: target for target in request_targets(request)}
    assert targets["region"].shares == {("Wales",): 0.5, ("Scotland",): 0.5}
    assert "eu_ref_vote" in targets and "education" in targets


def test_filters_restrict_and_renormalise_targets() -> None:
    request = parse_sample_request(
        BASE | {"preset": "uk_nat_rep", "filters": {"region": "Scotland", "age": {"$gte": 35}}}
    )
    targets = {target.key: target for target in request_targets(request)}
    assert targets["region"].shares == {("Scotland",): 1.0}
    bands = {cell[0] for cell in targets["age_band|gender"].cells}
    assert bands == {"35-44", "45-54", "55-64", "65-74", "75+"}
    assert math.isclose(sum(targets["age_band|gender"].shares.values()), 1.0)
