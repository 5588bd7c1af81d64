"""Profile -> v5 record -> parse -> normalize gives the profile back: the demo survey and the mapping agree."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from panel_pipeline.extractor.normalize import (
    load_profile_mapping,
    normalize_profile,
    question_shortnames,
)
from panel_pipeline.extractor.responses import parse_response
from panel_pipeline.extractor.surveygizmo import SurveyGizmoClient
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.local.surveygizmo.demo import load_demo_data
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

ZONE = ZoneInfo("America/New_York")
AS_OF = dt.date(2025, 6, 1)
SUBMITTED = dt.datetime(2025, 3, 9, 6, 59, tzinfo=dt.UTC)
MAPPING = load_profile_mapping()
SHORTNAMES = question_shortnames(PROFILE_SURVEY)
CATEGORICAL = ("gender", "region", "social_grade", "education", "vote_2019", "vote_2024", "eu_ref_vote")


def every_value_profiles() -> list[dict[str, Any]]:
    """Enough hand-made profiles that every contract value of every field appears at least once."""
    longest = max(len(PROFILE_CATEGORIES[field]) for field in CATEGORICAL)
    return [
        {
            "birth_year": 1940 + 5 * index,
            **{field: PROFILE_CATEGORIES[field][index % len(PROFILE_CATEGORIES[field])] for field in CATEGORICAL},
        }
        for index in range(longest)
    ]


def round_trip(profile: dict[str, Any], response_id: int = 1) -> dict[str, Any]:
    record = response_record(
        profile, response_id=response_id, submitted_at=SUBMITTED, account_zone=ZONE, panel_id="P-1"
    )
    result = normalize_profile(
        parse_response(record, PROFILE_SURVEY_ID, ZONE), MAPPING, shortnames=SHORTNAMES, as_of=AS_OF
    )
    assert result.problems == ()
    return result.profile


def without_derived(profile: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in profile.items() if key not in ("age", "age_band")}


@pytest.mark.parametrize("profile", every_value_profiles(), ids=lambda profile: str(profile["birth_year"]))
def test_every_contract_value_round_trips(profile: dict[str, Any]) -> None:
    back = round_trip(profile)
    assert without_derived(back) == profile
    assert back["age"] == AS_OF.year - profile["birth_year"]


def test_partial_profiles_round_trip_without_empty_values() -> None:
    assert round_trip({"region": "Northern Ireland"}) == {"region": "Northern Ireland"}
    assert round_trip({}) == {}


def test_records_have_the_v5_shape() -> None:
    record = response_record(
        {"gender": "female"},
        response_id=12,
        submitted_at=SUBMITTED,
        account_zone=ZONE,
        panel_id="P-7",
        is_test_data=True,
    )
    assert record["date_submitted"] == "2025-03-09 01:59:00 EST"
    assert (record["id"], record["is_test_data"], record["status"]) == ("12", "1", "Complete")
    assert record["url_variables"]["pid"] == {"key": "pid", "value": "P-7", "type": "url"}
    assert record["survey_data"]["10"] == {
        "id": 10,
        "type": "RADIO",
        "question": "How do you describe yourself?",
        "section_id": 1,
        "answer": "Female",
        "answer_id": 10001,
        "shown": True,
    }
    assert record["survey_data"]["11"]["shown"] is False and "answer" not in record["survey_data"]["11"]
    assert record["survey_data"]["15"]["subquestions"]["16"]["parent"] == 15
    with pytest.raises(ValueError, match="not a contract value"):
        response_record({"gender": "F"}, response_id=1, submitted_at=SUBMITTED, account_zone=ZONE)


def synthetic_profiles(n: int, seed: int) -> pd.DataFrame:
    module = pytest.importorskip("panel_pipeline.local.synthetic_panel")
    return module.generate_profiles(n, seed=seed, as_of_year=AS_OF.year)


@pytest.mark.parametrize("make_profiles", [synthetic_profiles])
def test_a_synthetic_panel_survives_server_client_parse_and_normalize(
    make_profiles: Callable[[int, int], pd.DataFrame],
) -> None:
    profiles = make_profiles(1200, 3)
    start = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    end = start + dt.timedelta(days=14)  # spans the 2025-03-09 spring-forward in New York
    with LocalSurveyGizmo("t", "s") as server:
        load_demo_data(server, profiles, start, end)
        client = SurveyGizmoClient("t", "s", base_url=server.base_url, calls_per_minute=100_000, rng=random.Random(1))
        survey = client.get_survey(PROFILE_SURVEY_ID)
        records = list(client.list_responses(PROFILE_SURVEY_ID, start, end))

    shortnames = question_shortnames(survey)
    back = [
        normalize_profile(
            parse_response(record, PROFILE_SURVEY_ID, client.account_zone), MAPPING, shortnames=shortnames, as_of=AS_OF
        )
        for record in records
    ]
    assert [result.problems for result in back] == [()] * len(profiles)
    expected = profiles.astype({field: str for field in (*CATEGORICAL, "age_band")}).to_dict(orient="records")
    assert [result.profile for result in back] == [
        {**row, "birth_year": int(row["birth_year"]), "age": int(row["age"])} for row in expected
    ]
