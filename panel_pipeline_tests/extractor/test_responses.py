"""Parsing raw v5 response records: every question type, timestamps and zones, malformed records."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from panel_pipeline.extractor.responses import (
    MalformedResponse,
    format_timestamp,
    parse_response,
    parse_timestamp,
)

NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC

# The shape of the documented list-page record (research note §8.3), with one entry per question type.
RECORD: dict[str, Any] = {
    "id": "1207",
    "contact_id": "",
    "status": "Complete",
    "is_test_data": "0",
    "date_submitted": "2024-03-10 01:59:58 EST",
    "date_started": "2024-03-10 01:51:02 EST",
    "date_updated": "2024-03-10 07:00:03",
    "url_variables": {
        "pid": {"key": "pid", "value": "P-000123", "type": "url"},
        "sguid": {"key": "sguid", "value": "", "type": "url"},
    },
    "data_quality": [],
    "survey_data": {
        "2": {
            "id": 2,
            "type": "TEXTBOX",
            "question": "Your first name",
            "section_id": 1,
            "answer": "Zoë 🙂 שלום e\u0301",
            "shown": True,
        },
        "3": {
            "id": 3,
            "type": "CHECKBOX",
            "question": "Which of these news sources do you use?",
            "section_id": 1,
            "options": {
                "10004": {"id": 10004, "option": "BBC", "answer": "BBC"},
                "10006": {"id": 10006, "option": "The Guardian", "answer": "The Guardian"},
            },
            "shown": True,
        },
        "4": {"id": 4, "type": "RADIO", "question": "Why would you not vote?", "section_id": 1, "shown": False},
        "5": {
            "id": 5,
            "type": "RADIO",
            "question": "Which party?",
            "section_id": 1,
            "original_answer": "Labour",
            "answer": "LAB",
            "answer_id": 10001,
            "shown": True,
        },
        "6": {
            "id": 6,
            "type": "parent",
            "question": "Rate each leader",
            "section_id": 2,
            "subquestions": {
                "7": {
                    "id": 7,
                    "type": "RADIO",
                    "parent": 6,
                    "question": "Leader A",
                    "section_id": 2,
                    "answer": "Good",
                    "answer_id": 10021,
                    "shown": True,
                },
                "8": {
                    "id": 8,
                    "type": "RADIO",
                    "parent": 6,
                    "question": "Leader B",
                    "section_id": 2,
                    "answer": "Poor",
                    "answer_id": 10023,
                    "shown": True,
                },
            },
            "shown": True,
        },
        "9": {
            "id": 9,
            "type": "MENU",
            "question": "Region",
            "section_id": 1,
            "answer": "Wales",
            "answer_id": 10090,
            "shown": True,
        },
        "10": {
            "id": 10,
            "type": "SLIDER",
            "question": "Interest in politics",
            "section_id": 1,
            "answer": 7,
            "shown": True,
        },
        "11": {
            "id": 11,
            "type": "ESSAY",
            "question": "Anything else?",
            "section_id": 1,
            "answer": "<b>no</b> \\/ thanks",
            "shown": True,
        },
        "12": {
            "id": 12,
            "type": "RADIO",
            "question": "Other party",
            "section_id": 1,
            "answer": "Yorkshire Party",
            "answer_id": "10005-other",
            "shown": True,
        },
        "13": {"id": 13, "type": "TEXTBOX", "question": "Nickname", "section_id": 1, "answer": None, "shown": True},
        "30": {
            "id": 30,
            "type": "parent",
            "question": "Which channels on which devices?",
            "section_id": 3,
            "subquestions": {
                "31": {
                    "10062": {
                        "id": 10062,
                        "type": "CHECKBOX",
                        "parent": 30,
                        "question": "Phone : News",
                        "answer": "News",
                        "shown": True,
                    },
                    "10063": {
                        "id": 10063,
                        "type": "CHECKBOX",
                        "parent": 30,
                        "question": "Phone : Sport",
                        "answer": None,
                        "shown": True,
                    },
                }
            },
            "shown": True,
        },
        "38": {
            "id": 38,
            "type": "parent",
            "question": "Split 10 points",
            "section_id": 3,
            "options": {
                "10070": {"id": 10070, "option": "Economy", "answer": "6"},
                "10071": {"id": 10071, "option": "NHS", "answer": "4"},
            },
            "shown": True,
        },
        "40": {
            "id": 40,
            "type": "RADIO",
            "parent": 39,
            "question": "Grid row at top level",
            "section_id": 3,
            "answer": "Yes",
            "answer_id": 10101,
            "shown": True,
        },
        "82": {
            "id": 82,
            "type": "HIDDEN",
            "question": "panel_id",
            "section_id": 10,
            "answer": "P-000123",
            "shown": True,
        },
        "83": {
            "id": 83,
            "type": "parent",
            "question": "Custom table",
            "section_id": 4,
            "subquestions": {
                "10001": {
                    "id": 10001,
                    "type": "RADIO",
                    "question": "Column 1",
                    "section_id": 4,
                    "answer": "Option 1",
                    "answer_id": 10113,
                    "shown": True,
                }
            },
            "shown": True,
        },
        "90": {
            "id": 90,
            "type": "MAXDIFF_NEW",
            "question": "Unknown type",
            "section_id": 5,
            "answer": "x",
            "shown": True,
            "extra": {"a": 1},
        },
    },
}


def parse(record: dict[str, Any] | Any = RECORD) -> Any:
    return parse_response(record, 7000001, NEW_YORK)


def changed(**changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(RECORD)
    record.update(changes)
    return record


def with_answer(question: dict[str, Any]) -> dict[str, Any]:
    return changed(survey_data={str(question.get("id", "1")): question})


def test_top_level_fields() -> None:
    response = parse()
    assert (response.id, response.survey_id, response.status, response.is_test_data) == (
        "1207",
        "7000001",
        "Complete",
        False,
    )
    assert response.submitted_at == dt.datetime(2024, 3, 10, 6, 59, 58, tzinfo=UTC)
    assert response.started_at == dt.datetime(2024, 3, 10, 6, 51, 2, tzinfo=UTC)
    assert response.contact_id is None
    assert response.url_variables == {"pid": "P-000123", "sguid": ""}
    assert response.raw is RECORD


def test_single_answer_types() -> None:
    answers = parse().answers
    assert answers["2"].value == "Zoë 🙂 שלום e\u0301" and answers["2"].type == "TEXTBOX"
    assert (answers["5"].value, answers["5"].option_id) == ("LAB", "10001")
    assert (answers["9"].type, answers["9"].value) == ("MENU", "Wales")
    assert (answers["10"].type, answers["10"].value) == ("SLIDER", "7")
    assert answers["11"].value == "<b>no</b> \\/ thanks"
    assert (answers["12"].value, answers["12"].option_id) == ("Yorkshire Party", "10005-other")
    assert (answers["82"].type, answers["82"].value) == ("HIDDEN", "P-000123")
    assert answers["90"].type == "MAXDIFF_NEW" and answers["90"].value == "x"


def test_unanswered_questions_are_present_but_not_answered() -> None:
    answers = parse().answers
    assert not answers["4"].shown and not answers["4"].is_answered and answers["4"].value is None
    assert answers["13"].shown and not answers["13"].is_answered


def test_checkbox_and_textbox_list_options() -> None:
    answers = parse().answers
    assert answers["3"].selected == {"10004": "BBC", "10006": "The Guardian"}
    assert answers["3"].value is None and answers["3"].is_answered
    assert answers["38"].selected == {"10070": "6", "10071": "4"}


def test_grids_flatten_into_rows_with_their_parent() -> None:
    answers = parse().answers
    assert (answers["7"].value, answers["7"].parent_id) == ("Good", "6")
    assert (answers["8"].value, answers["8"].parent_id) == ("Poor", "6")
    assert answers["31"].selected == {"10062": "News"} and answers["31"].parent_id == "30"
    assert answers["10001"].value == "Option 1" and answers["10001"].parent_id == "83"
    assert answers["40"].parent_id == "39"
    assert answers["6"].type == "PARENT" and not answers["6"].is_answered


def test_empty_php_containers_and_test_flags() -> None:
    response = parse(
        changed(survey_data=[], url_variables=[], is_test_data="1", status="partial", contact_id=100039752)
    )
    assert response.answers == {} and response.url_variables == {}
    assert response.is_test_data and response.status == "Partial" and response.contact_id == "100039752"
    assert parse(changed(is_test_data=True, id=1207)).id == "1207"
    assert parse(changed(url_variables={"pid": "P-9"})).url_variables == {"pid": "P-9"}


def test_php_escaped_json_decodes_to_the_same_record() -> None:
    escaped = json.dumps(RECORD, ensure_ascii=True).replace("/", "\\/")
    assert parse(json.loads(escaped)).answers == parse().answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-10 01:59:58 EST", dt.datetime(2024, 3, 10, 6, 59, 58, tzinfo=UTC)),
        ("2024-03-10 03:00:04 EDT", dt.datetime(2024, 3, 10, 7, 0, 4, tzinfo=UTC)),
        ("2024-11-03 01:30:00 EDT", dt.datetime(2024, 11, 3, 5, 30, tzinfo=UTC)),
        ("2024-11-03 01:30:00 EST", dt.datetime(2024, 11, 3, 6, 30, tzinfo=UTC)),
        ("2024-07-01 12:00:00 GMT", dt.datetime(2024, 7, 1, 12, tzinfo=UTC)),
        ("2024-07-01 12:00:00 BST", dt.datetime(2024, 7, 1, 11, tzinfo=UTC)),
        ("2024-07-01 12:00:00 +02:00", dt.datetime(2024, 7, 1, 10, tzinfo=UTC)),
        ("2024-07-01 12:00:00-0430", dt.datetime(2024, 7, 1, 16, 30, tzinfo=UTC)),
        ("2024-07-01 12:00:00", dt.datetime(2024, 7, 1, 16, tzinfo=UTC)),  # no suffix: account zone (EDT)
        ("2024-01-15 12:00:00", dt.datetime(2024, 1, 15, 17, tzinfo=UTC)),  # no suffix: account zone (EST)
        ("2024-01-15", dt.datetime(2024, 1, 15, 5, tzinfo=UTC)),
    ],
)
def test_timestamps_parse_to_utc(text: str, expected: dt.datetime) -> None:
    assert parse_timestamp(text, NEW_YORK) == expected


@pytest.mark.parametrize("text", ["2024-07-01 12:00:00 CET", "yesterday", "2024-13-01 00:00:00 EST", ""])
def test_unknown_suffixes_and_garbage_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text, NEW_YORK)


def test_format_timestamp_round_trips_across_the_repeated_hour() -> None:
    first, second = dt.datetime(2024, 11, 3, 5, 30, tzinfo=UTC), dt.datetime(2024, 11, 3, 6, 30, tzinfo=UTC)
    assert (format_timestamp(first, NEW_YORK), format_timestamp(second, NEW_YORK)) == (
        "2024-11-03 01:30:00 EDT",
        "2024-11-03 01:30:00 EST",
    )
    assert parse_timestamp(format_timestamp(second, NEW_YORK), NEW_YORK) == second


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (["not", "a", "record"], "record is a list"),
        (changed(id=None), "id is missing"),
        (changed(id=True), "id is missing"),
        (changed(id="  "), "id is empty"),
        (changed(status="Weird"), "status 'Weird'"),
        (changed(status=None), "status None"),
        (changed(date_submitted=None), "date_submitted is missing"),
        (changed(date_submitted="10/03/2024"), "not a SurveyGizmo timestamp"),
        (changed(date_submitted="2024-03-10 01:59:58 CET"), "unknown time zone suffix"),
        (changed(date_submitted=1710053998), "is not a string"),
        (changed(is_test_data="maybe"), "is_test_data 'maybe' is not a boolean"),
        (changed(survey_data="oops"), "survey_data is a str"),
        (changed(url_variables="pid=1"), "url_variables is a str"),
        (with_answer({"id": 1, "type": "TEXTBOX", "answer": {"nested": True}}), "question 1: answer"),
        (with_answer({"id": 1, "type": "TEXTBOX", "answer": "\ud83d"}), "unpaired surrogate"),
        (with_answer({"id": 1, "type": "CHECKBOX", "options": ["BBC"]}), "options is not an object"),
        (with_answer({"id": 1, "type": "parent", "subquestions": {"2": "Good"}}), "question 2: entry is a str"),
        (changed(survey_data={"1": ["a"]}), "question 1: entry is a list"),
    ],
)
def test_malformed_records_say_why(record: Any, reason: str) -> None:
    with pytest.raises(MalformedResponse) as caught:
        parse(record)
    assert reason in caught.value.reason
    if isinstance(record, dict) and record.get("id") == "1207":
        assert caught.value.response_id == "1207" and str(caught.value).startswith("response 1207: ")
