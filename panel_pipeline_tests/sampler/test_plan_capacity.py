"""The fractional plan never exceeds a cell's capacity, even when the targets are met from the start."""

import numpy as np

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler.quotas import select
from panel_pipeline.sampler.requests import parse_sample_request


def test_a_plan_whose_margins_are_met_at_once_still_respects_low_response_rate_cells():
    # One target category (share 1) is met by the panel's own proportions, so raking does not
    # iterate; the older cells' response rate of 0.25 caps what they can give.
    panel = generate_profiles(400, seed=11, as_of_year=2026)
    rates = {band: 1.0 for band in ["18-24", "25-34", "35-44", "45-54", "55-64"]} | {"65-74": 0.25, "75+": 0.25}
    request = parse_sample_request(
        {
            "name": "n",
            "survey_id": "1",
            "size": 13,
            "seed": 0,
            "quotas": {"education": {"no_qualifications": 1.0}},
            "expected_response_rate": {"age_band": rates},
        }
    )
    result = select(panel, request)
    assert result.completes_planned == 13
    assert np.all(result.cells["completes"] <= np.floor(result.cells["capacity"] + 1e-9))
