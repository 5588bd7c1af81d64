"""The declarative profile mapping: contract values only, derived ages, reported problems, every kind."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from panel_pipeline.extractor.normalize import (
    MappingError,
    load_profile_mapping,
    normalize_profile,
    question_shortnames,
)
from panel_pipeline.extractor.responses import SurveyResponse, parse_response
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.shared.contract import PROFILE_CATEGORIES
from panel_pipeline_tests.extractor.conftest import EXAMPLE_PROFILE

ZONE = ZoneInfo("America/New_York")
AS_OF = dt.date(2025, 6, 1)
SHORTNAMES = question_shortnames(PROFILE_SURVEY)
MAPPING = load_profile_mapping()


def answered(profile: dict[str, Any]) -> SurveyResponse:
    record = response_record(
        profile, response_id=1, submitted_at=dt.datetime(2025, 5, 1, tzinfo=dt.UTC), account_zone=ZONE
    )
    return parse_response(record, PROFILE_SURVEY_ID, ZONE)


def normalized(profile: dict[str, Any]) -> Any:
    return normalize_profile(answered(profile), MAPPING, shortnames=SHORTNAMES, as_of=AS_OF)


def with_answers(entries: dict[str, dict[str, Any]], survey_id: str = "555") -> SurveyResponse:
    record = {"id": "9", "status": "Complete", "date_submitted": "2025-05-01 10:00:00 EDT", "survey_data": entries}
    return parse_response(record, survey_id, ZONE)


def write_mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shortnames_cover_questions_and_grid_rows() -> None:
    assert SHORTNAMES["10"] == "gender" and SHORTNAMES["16"] == "vote_2019" and SHORTNAMES["17"] == "vote_2024"


def test_a_full_profile_maps_to_contract_values_with_derived_age() -> None:
    result = normalized(EXAMPLE_PROFILE)
    assert result.problems == ()
    assert result.profile == {**EXAMPLE_PROFILE, "age": 41, "age_band": "35-44"}


def test_every_contract_value_is_reachable_from_the_mapping() -> None:
    for rule in MAPPING.rules:
        if rule.attribute in PROFILE_CATEGORIES:
            targets = {value for value in rule.recode.values() if value is not None}
            assert targets == set(PROFILE_CATEGORIES[rule.attribute]), rule.attribute


@pytest.mark.parametrize(
    ("birth_year", "age_band"),
    [
        (2007, "18-24"),
        (2000, "25-34"),
        (1990, "35-44"),
        (1980, "45-54"),
        (1970, "55-64"),
        (1960, "65-74"),
        (1950, "75+"),
        (1920, "75+"),
    ],
)
def test_age_bands(birth_year: int, age_band: str) -> None:
    assert normalized({"birth_year": birth_year}).profile == {
        "birth_year": birth_year,
        "age": 2025 - birth_year,
        "age_band": age_band,
    }


def test_missing_answers_are_absent_never_empty_strings() -> None:
    result = normalized({"gender": "male"})
    assert result.profile == {"gender": "male"} and result.problems == ()
    assert "" not in result.profile.values()


@pytest.mark.parametrize(
    ("answer", "expected", "problem"),
    [
        ("1984", {"birth_year": 1984, "age": 41, "age_band": "35-44"}, None),
        (" 1984.0 ", {"birth_year": 1984, "age": 41, "age_band": "35-44"}, None),
        ("84", {}, "not a four-digit year"),
        ("nineteen", {}, "not a four-digit year"),
        ("1900", {}, "gives an age outside"),
        ("2012", {}, "gives an age outside"),
        ("2008", {"birth_year": 2008, "age": 17}, "below the youngest band 18-24"),
    ],
)
def test_birth_year_answers(answer: str, expected: dict[str, Any], problem: str | None) -> None:
    response = with_answers({"11": {"id": 11, "type": "TEXTBOX", "question": "Year?", "answer": answer, "shown": True}})
    result = normalize_profile(response, MAPPING, shortnames={"11": "birth_year"}, as_of=AS_OF)
    assert result.profile == expected
    reasons = [p.reason for p in result.problems]
    assert (reasons == []) if problem is None else (len(reasons) == 1 and problem in reasons[0])


def test_answers_without_a_recode_are_reported_and_left_out() -> None:
    response = with_answers(
        {
            "10": {"id": 10, "type": "RADIO", "question": "Gender", "answer": "Prefer to self-describe", "shown": True},
            "12": {
                "id": 12,
                "type": "MENU",
                "question": "Region",
                "answer": "  yorkshire AND the   humber ",
                "shown": True,
            },
            "18": {"id": 18, "type": "RADIO", "question": "EU", "answer": "Don\u2019t know", "shown": True},
        }
    )
    result = normalize_profile(
        response, MAPPING, shortnames={"10": "gender", "12": "region", "18": "eu_ref_vote"}, as_of=AS_OF
    )

    assert result.profile == {
        "region": "Yorkshire and The Humber"
    }  # "Don't know" recodes to null: absent, not a problem
    [problem] = result.problems
    assert (problem.attribute, problem.question_id) == ("gender", "10")
    assert str(problem) == "gender (question 10): the answer has no recode in profile_mapping.yaml"
    assert "self-describe" not in repr(problem)  # what the member wrote never leaves the response


def test_party_recodes_follow_the_election() -> None:
    result = normalized({"vote_2019": "brexit_party", "vote_2024": "reform_uk"})
    assert result.profile == {"vote_2019": "brexit_party", "vote_2024": "reform_uk"}
    response = with_answers({"16": {"id": 16, "type": "RADIO", "parent": 15, "answer": "Reform UK", "shown": True}})
    assert normalize_profile(response, MAPPING, shortnames={"16": "vote_2019"}, as_of=AS_OF).profile == {
        "vote_2019": "brexit_party"
    }


def test_conflicting_answers_keep_the_first_and_report_the_second(tmp_path: Path) -> None:
    mapping = load_profile_mapping(
        write_mapping(
            tmp_path,
            """
attributes:
  gender:
    sources: [{shortname: gender}, {survey_id: "555", question_id: 3}]
    kind: choice
    recode: {Female: female, Male: male}
""",
        )
    )
    response = with_answers(
        {
            "1": {"id": 1, "type": "RADIO", "answer": "Female", "shown": True},
            "3": {"id": 3, "type": "RADIO", "answer": "Male", "shown": True},
        }
    )
    result = normalize_profile(response, mapping, shortnames={"1": "gender"}, as_of=AS_OF)
    assert result.profile == {"gender": "female"}
    assert result.problems[0].reason == "conflicts with the answer to another question; kept that one"
    assert "male" not in repr(result.problems[0])


def test_multi_number_and_text_kinds_by_question_id(tmp_path: Path) -> None:
    mapping = load_profile_mapping(
        write_mapping(
            tmp_path,
            """
attributes:
  news_sources:
    sources: [{survey_id: "555", question_id: 3}]
    kind: multi
    recode: {BBC: bbc, The Guardian: guardian, Other: ~}
  political_interest:
    sources: [{survey_id: "555", question_id: 10}]
    kind: number
    min: 0
    max: 10
  panel_id:
    sources: [{survey_id: "555", question_id: 82}]
    kind: text
  device:
    sources: [{survey_id: "555", question_id: 31}]
    kind: multi
    recode: {News: news}
  housing:
    sources: [{survey_id: "555", question_id: 50}]
    kind: text
    values: [owner, renter]
""",
        )
    )
    response = with_answers(
        {
            "3": {
                "id": 3,
                "type": "CHECKBOX",
                "options": {
                    "1": {"id": 1, "answer": "BBC"},
                    "2": {"id": 2, "answer": "Other"},
                    "3": {"id": 3, "answer": "The Guardian"},
                },
                "shown": True,
            },
            "10": {"id": 10, "type": "SLIDER", "answer": 7, "shown": True},
            "82": {"id": 82, "type": "HIDDEN", "answer": " P-000123 ", "shown": True},
            "30": {
                "id": 30,
                "type": "parent",
                "subquestions": {
                    "31": {
                        "10062": {"id": 10062, "type": "CHECKBOX", "answer": "News", "shown": True},
                        "10063": {"id": 10063, "type": "CHECKBOX", "answer": None, "shown": True},
                    }
                },
                "shown": True,
            },
            "50": {"id": 50, "type": "TEXTBOX", "answer": "lodger", "shown": True},
        }
    )
    result = normalize_profile(response, mapping, as_of=AS_OF)

    assert result.profile == {
        "news_sources": ["bbc", "guardian"],
        "political_interest": 7,
        "panel_id": "P-000123",
        "device": ["news"],
    }
    assert [str(p) for p in result.problems] == [
        "housing (question 50): the answer is not an allowed value (owner, renter)"
    ]


def test_numbers_outside_their_range_are_reported(tmp_path: Path) -> None:
    mapping = load_profile_mapping(
        write_mapping(
            tmp_path,
            """
attributes:
  political_interest: {sources: [{shortname: interest}], kind: number, min: 0, max: 10}
""",
        )
    )
    response = with_answers({"10": {"id": 10, "type": "SLIDER", "answer": "11", "shown": True}})
    result = normalize_profile(response, mapping, shortnames={"10": "interest"}, as_of=AS_OF)
    assert result.profile == {} and "outside" in result.problems[0].reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("attributes: {}", "non-empty `attributes`"),
        (
            "attributes:\n  gender: {sources: [{shortname: g}], kind: choice, recode: {F: f}}",
            "recode target 'f' is not an allowed value",
        ),
        (
            "attributes:\n  region: {sources: [{shortname: r}], kind: choice, recode: {London: london}}",
            "recode target 'london'",
        ),
        ("attributes:\n  gender: {sources: [{shortname: g}], kind: pick, recode: {F: female}}", "kind 'pick'"),
        (
            "attributes:\n  gender: {sources: [], kind: choice, recode: {F: female}}",
            "`sources` must be a non-empty list",
        ),
        (
            "attributes:\n  gender: {sources: [{survey_id: '1'}], kind: choice, recode: {F: female}}",
            "needs a shortname",
        ),
        ("attributes:\n  gender: {sources: [{shortname: g}], kind: choice}", "needs a `recode`"),
        ("attributes:\n  x: {sources: [{shortname: g}], kind: number, min: low}", "must be numbers"),
    ],
)
def test_invalid_mappings_fail_at_load(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MappingError, match=re.escape(message)):
        load_profile_mapping(write_mapping(tmp_path, text))


def test_a_problem_names_the_answer_code_never_what_the_member_wrote() -> None:
    """Vote answers are special-category data: an unmapped one is reported by question and option id."""
    response = with_answers(
        {
            "17": {
                "id": 17,
                "type": "RADIO",
                "question": "2024 vote",
                "answer": "Workers Party of Britain",
                "answer_id": 20077,
                "shown": True,
            },
            "10": {"id": 10, "type": "TEXTBOX", "question": "Gender", "answer": "my own words", "shown": True},
        }
    )
    result = normalize_profile(response, MAPPING, shortnames={"17": "vote_2024", "10": "gender"}, as_of=AS_OF)
    assert sorted((p.attribute, p.question_id, p.answer_code) for p in result.problems) == [
        ("gender", "10", None),
        ("vote_2024", "17", "20077"),
    ]
    shown = repr(result.problems) + " ".join(str(p) for p in result.problems)
    assert "Workers" not in shown and "own words" not in shown
