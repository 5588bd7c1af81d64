"""The demo profile survey, and profile -> SurveyGizmo v5 response record (the inverse of the mapping).

`PROFILE_SURVEY` is the definition the local server answers `GET /v5/survey/{id}` with (pages,
questions, options, grid rows, shortnames). `response_record` writes the answers a member with a
given normalized profile would have given, in the exact v5 record shape, so a test can go
profile -> record -> `parse_response` -> `normalize_profile` and compare. The option texts here are
written independently of `extractor/profile_mapping.yaml` on purpose: the round trip checks that
the two agree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from panel_pipeline.extractor.responses import format_timestamp
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

PROFILE_SURVEY_ID = "7000001"

# (contract value, option text shown and reported) per single-choice question.
GENDER_OPTIONS = (
    ("female", "Female"),
    ("male", "Male"),
    ("other", "In another way"),
    ("prefer_not_to_say", "Prefer not to say"),
)
REGION_OPTIONS = tuple((region, region.replace("The Humber", "the Humber")) for region in PROFILE_CATEGORIES["region"])
# Grades are asked at the six-way level and collapsed by the mapping; AB is written as B, DE as D.
SOCIAL_GRADE_OPTIONS = (("AB", "B"), ("C1", "C1"), ("C2", "C2"), ("DE", "D"))
SOCIAL_GRADE_CHOICES = (
    ("A", "Higher managerial, administrative or professional"),
    ("B", "Intermediate managerial, administrative or professional"),
    ("C1", "Supervisory, clerical or junior managerial"),
    ("C2", "Skilled manual worker"),
    ("D", "Semi-skilled or unskilled manual worker"),
    ("E", "State pensioner, casual worker or unemployed"),
)
EDUCATION_OPTIONS = (
    ("no_qualifications", "No formal qualifications"),
    ("level_1", "1-4 GCSEs or O levels, or equivalent"),
    ("level_2", "5 or more GCSEs at grade C/4 or above, or equivalent"),
    ("apprenticeship", "Apprenticeship"),
    ("level_3", "2 or more A levels, or equivalent"),
    ("level_4_plus", "Degree or higher (BA, BSc, MA, PhD…)"),
    ("other", "Other qualifications"),
)
PARTY_OPTIONS = (
    ("conservative", "Conservative"),
    ("labour", "Labour"),
    ("lib_dem", "Liberal Democrat"),
    ("reform_uk", "Reform UK"),
    ("brexit_party", "Brexit Party"),
    ("green", "Green Party"),
    ("snp", "Scottish National Party (SNP)"),
    ("plaid_cymru", "Plaid Cymru"),
    ("other", "Another party"),
    ("did_not_vote", "Did not vote"),
)
EU_REF_OPTIONS = (
    ("remain", "Remain a member of the European Union"),
    ("leave", "Leave the European Union"),
    ("did_not_vote", "Did not vote"),
)

GENDER_QUESTION, BIRTH_YEAR_QUESTION, REGION_QUESTION, GRADE_QUESTION = 10, 11, 12, 13
EDUCATION_QUESTION, VOTE_GRID, VOTE_2019_ROW, VOTE_2024_ROW = 14, 15, 16, 17
EU_REF_QUESTION, PANEL_ID_QUESTION = 18, 19
PAGE_ID = 1
GRADE_TITLE = "Which best describes the occupation of the main earner in your household?"


def _options(question_id: int, choices: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    return [
        {"id": question_id * 1000 + index, "title": {"English": text}, "value": text, "properties": {"disabled": False}}
        for index, (_value, text) in enumerate(choices, start=1)
    ]


def _question(question_id: int, kind: str, title: str, shortname: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": question_id,
        "base_type": "Action" if kind == "HIDDEN" else "Question",
        "type": kind,
        "title": {"English": title},
        "shortname": shortname,
        "varname": [],
        "description": [],
        "has_showhide_deps": False,
        "comment": False,
        "properties": {
            "required": kind != "HIDDEN",
            "hidden": kind == "HIDDEN",
            "question_description": {"English": ""},
        },
        "options": [],
        **extra,
    }


def _grade_question() -> dict[str, Any]:
    options = [
        {
            "id": GRADE_QUESTION * 1000 + index,
            "title": {"English": text},
            "value": code,
            "properties": {"disabled": False},
        }
        for index, (code, text) in enumerate(SOCIAL_GRADE_CHOICES, start=1)
    ]
    return _question(GRADE_QUESTION, "RADIO", GRADE_TITLE, "social_grade", options=options)


def _vote_grid() -> dict[str, Any]:
    rows = [
        _question(
            VOTE_2019_ROW,
            "RADIO",
            "2019 general election",
            "vote_2019",
            parent=VOTE_GRID,
            options=_options(VOTE_GRID, PARTY_OPTIONS),
        ),
        _question(
            VOTE_2024_ROW,
            "RADIO",
            "2024 general election",
            "vote_2024",
            parent=VOTE_GRID,
            options=_options(VOTE_GRID, PARTY_OPTIONS),
        ),
    ]
    return _question(
        VOTE_GRID,
        "TABLE",
        "Which party did you vote for in each of these general elections?",
        "past_vote",
        options=_options(VOTE_GRID, PARTY_OPTIONS),
        sub_questions=rows,
    )


def _survey_definition() -> dict[str, Any]:
    questions = [
        _question(
            GENDER_QUESTION,
            "RADIO",
            "How do you describe yourself?",
            "gender",
            options=_options(GENDER_QUESTION, GENDER_OPTIONS),
        ),
        _question(BIRTH_YEAR_QUESTION, "TEXTBOX", "In which year were you born?", "birth_year"),
        _question(
            REGION_QUESTION,
            "MENU",
            "Where in the UK do you live?",
            "region",
            options=_options(REGION_QUESTION, REGION_OPTIONS),
        ),
        _grade_question(),
        _question(
            EDUCATION_QUESTION,
            "RADIO",
            "What is your highest qualification?",
            "education",
            options=_options(EDUCATION_QUESTION, EDUCATION_OPTIONS),
        ),
        _vote_grid(),
        _question(
            EU_REF_QUESTION,
            "RADIO",
            "How did you vote in the 2016 EU referendum?",
            "eu_ref_vote",
            options=_options(EU_REF_QUESTION, EU_REF_OPTIONS),
        ),
        _question(PANEL_ID_QUESTION, "HIDDEN", "panel_id", "panel_id"),
    ]
    return {
        "id": PROFILE_SURVEY_ID,
        "team": "433737",
        "type": "Standard Survey",
        "status": "Launched",
        "created_on": "2024-01-15 10:44:23",
        "modified_on": "2024-03-02 09:58:20",
        "title": "Panel profile — about you",
        "statistics": None,
        "pages": [{"id": PAGE_ID, "title": {"English": "About you"}, "questions": questions}],
    }


PROFILE_SURVEY: dict[str, Any] = _survey_definition()


def _choice_entry(
    question_id: int, title: str, choices: tuple[tuple[str, str], ...], value: str | None
) -> dict[str, Any]:
    """A single-choice entry; not shown (no `answer` key) when the member has no value."""
    entry: dict[str, Any] = {"id": question_id, "type": "RADIO", "question": title, "section_id": PAGE_ID}
    if value is None:
        return {**entry, "shown": False}
    texts = dict(choices)
    if value not in texts:
        raise ValueError(f"question {question_id}: {value!r} is not a contract value ({', '.join(texts)})")
    index = list(texts).index(value) + 1
    return {**entry, "answer": texts[value], "answer_id": question_id * 1000 + index, "shown": True}


def _grid_row(row_id: int, title: str, value: str | None) -> dict[str, Any]:
    entry = _choice_entry(VOTE_GRID, title, PARTY_OPTIONS, value)
    return {**entry, "id": row_id, "parent": VOTE_GRID}


def _survey_data(profile: Mapping[str, Any], panel_id: str | None) -> dict[str, Any]:
    grade = dict(SOCIAL_GRADE_OPTIONS).get(profile["social_grade"]) if profile.get("social_grade") else None
    birth_year = profile.get("birth_year")
    entries = {
        GENDER_QUESTION: _choice_entry(
            GENDER_QUESTION, "How do you describe yourself?", GENDER_OPTIONS, profile.get("gender")
        ),
        BIRTH_YEAR_QUESTION: {
            "id": BIRTH_YEAR_QUESTION,
            "type": "TEXTBOX",
            "question": "In which year were you born?",
            "section_id": PAGE_ID,
            **({"answer": str(int(birth_year)), "shown": True} if birth_year is not None else {"shown": False}),
        },
        REGION_QUESTION: {
            **_choice_entry(REGION_QUESTION, "Where in the UK do you live?", REGION_OPTIONS, profile.get("region")),
            "type": "MENU",
        },
        GRADE_QUESTION: _choice_entry(
            GRADE_QUESTION, GRADE_TITLE, tuple((code, code) for code, _text in SOCIAL_GRADE_CHOICES), grade
        ),
        EDUCATION_QUESTION: _choice_entry(
            EDUCATION_QUESTION, "What is your highest qualification?", EDUCATION_OPTIONS, profile.get("education")
        ),
        VOTE_GRID: {
            "id": VOTE_GRID,
            "type": "parent",
            "question": "Which party did you vote for in each of these general elections?",
            "section_id": PAGE_ID,
            "shown": True,
            "subquestions": {
                str(VOTE_2019_ROW): _grid_row(VOTE_2019_ROW, "2019 general election", profile.get("vote_2019")),
                str(VOTE_2024_ROW): _grid_row(VOTE_2024_ROW, "2024 general election", profile.get("vote_2024")),
            },
        },
        EU_REF_QUESTION: _choice_entry(
            EU_REF_QUESTION, "How did you vote in the 2016 EU referendum?", EU_REF_OPTIONS, profile.get("eu_ref_vote")
        ),
    }
    if panel_id is not None:
        entries[PANEL_ID_QUESTION] = {
            "id": PANEL_ID_QUESTION,
            "type": "HIDDEN",
            "question": "panel_id",
            "section_id": PAGE_ID,
            "answer": panel_id,
            "shown": True,
        }
    return {str(question_id): entry for question_id, entry in entries.items()}


def response_record(
    profile: Mapping[str, Any],
    *,
    response_id: str | int,
    submitted_at: dt.datetime,
    account_zone: ZoneInfo,
    panel_id: str | None = None,
    status: str = "Complete",
    is_test_data: bool = False,
) -> dict[str, Any]:
    """The v5 record of a member with `profile` (contract values; absent or None = not answered)."""
    started_at = submitted_at - dt.timedelta(minutes=4, seconds=12)
    return {
        "id": str(response_id),
        "contact_id": "",
        "status": status,
        "is_test_data": "1" if is_test_data else "0",
        "date_submitted": format_timestamp(submitted_at, account_zone),
        "date_started": format_timestamp(started_at, account_zone),
        "date_updated": submitted_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "session_id": f"{int(submitted_at.timestamp())}_{response_id}",
        "language": "English",
        "link_id": "24839672",
        "url_variables": {"pid": {"key": "pid", "value": panel_id, "type": "url"}} if panel_id else [],
        "ip_address": "203.0.113.7",
        "referer": None,
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "response_time": 252,
        "data_quality": [],
        "longitude": "",
        "latitude": "",
        "country": "United Kingdom",
        "city": "",
        "region": "",
        "postal": "",
        "dma": "0",
        "survey_data": _survey_data(profile, panel_id),
    }
