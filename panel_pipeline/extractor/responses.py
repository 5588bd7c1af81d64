"""Parse and validate one raw SurveyGizmo v5 response record into a typed `SurveyResponse`.

Pure functions, no I/O. The raw record is kept verbatim next to the typed form; what the typed
form needs and cannot get (an id, a known status, a parseable `date_submitted`, a `survey_data`
of answer objects, text that can be stored) raises `MalformedResponse(reason)` so the caller can
quarantine the record. Quirks handled (see the research note, §8–9): PHP's `[]` for empty objects,
ids as int or string, `is_test_data` as "0"/"1"/bool, `url_variables` in both shapes, grid rows
nested under `subquestions` (one or two levels) or at the top level with `parent`, `EST`/`EDT`
suffixes on timestamps and the account zone for suffix-less ones.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

UTC = dt.UTC
STATUSES = ("Complete", "Partial", "Disqualified", "Deleted")
TRUE_STRINGS = frozenset({"1", "true", "yes"})
FALSE_STRINGS = frozenset({"0", "false", "no", ""})

# Zone abbreviations SurveyGizmo writes after `date_submitted`; anything else is an error, not a guess.
SUFFIX_OFFSETS: dict[str, dt.timedelta] = {
    "EST": dt.timedelta(hours=-5),
    "EDT": dt.timedelta(hours=-4),
    "GMT": dt.timedelta(0),
    "UTC": dt.timedelta(0),
    "Z": dt.timedelta(0),
    "BST": dt.timedelta(hours=1),
}
TIMESTAMP_PATTERN = re.compile(
    r"^(?P<local>\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?)"
    r"(?:\s*(?P<suffix>[A-Za-z]{1,5}|[+-]\d{2}:?\d{2}))?$"
)


class MalformedResponse(ValueError):
    """The record cannot be turned into a `SurveyResponse`; `reason` says what is wrong with it."""

    def __init__(self, reason: str, response_id: str | None = None) -> None:
        prefix = f"response {response_id}: " if response_id else ""
        super().__init__(prefix + reason)
        self.reason = reason
        self.response_id = response_id


@dataclass(frozen=True)
class Answer:
    """One question's answer. `value` for single answers; `selected` (option id -> text) for
    checkbox, textbox-list and continuous-sum questions and checkbox-grid rows."""

    question_id: str
    type: str
    question: str
    shown: bool
    value: str | None = None
    option_id: str | None = None
    selected: Mapping[str, str] = field(default_factory=dict)
    parent_id: str | None = None

    @property
    def is_answered(self) -> bool:
        return bool(self.value and self.value.strip()) or bool(self.selected)


@dataclass(frozen=True)
class SurveyResponse:
    id: str
    survey_id: str
    status: str
    is_test_data: bool
    submitted_at: dt.datetime
    started_at: dt.datetime | None
    contact_id: str | None
    url_variables: Mapping[str, str]
    answers: Mapping[str, Answer]
    raw: Mapping[str, Any]


def parse_timestamp(text: str, account_zone: ZoneInfo) -> dt.datetime:
    """A SurveyGizmo timestamp as an aware UTC datetime.

    A suffix (`EST`, `EDT`, `GMT`, `+01:00`...) fixes the offset, so both copies of the repeated
    autumn hour map to distinct instants; without one the wall time is read in `account_zone`.
    """
    match = TIMESTAMP_PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"not a SurveyGizmo timestamp: {text!r}")
    local = dt.datetime.fromisoformat(match["local"].replace(" ", "T"))
    suffix = match["suffix"]
    if suffix is None:
        return local.replace(tzinfo=account_zone).astimezone(UTC)
    return local.replace(tzinfo=dt.timezone(_suffix_offset(suffix))).astimezone(UTC)


def format_timestamp(instant: dt.datetime, account_zone: ZoneInfo) -> str:
    """`instant` the way SurveyGizmo writes `date_submitted`: wall time in the zone plus its abbreviation."""
    local = instant.astimezone(account_zone)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def _suffix_offset(suffix: str) -> dt.timedelta:
    if suffix[0] in "+-":
        digits = suffix[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        return offset if suffix[0] == "+" else -offset
    try:
        return SUFFIX_OFFSETS[suffix.upper()]
    except KeyError:
        raise ValueError(f"unknown time zone suffix {suffix!r}") from None


def parse_response(record: Any, survey_id: str | int, account_zone: ZoneInfo) -> SurveyResponse:
    """Validate `record` (one element of a response list, or a single GET's `data`)."""
    if not isinstance(record, Mapping):
        raise MalformedResponse(f"record is a {type(record).__name__}, not an object")
    response_id = _parse_id(record.get("id"), "id")
    try:
        return SurveyResponse(
            id=response_id,
            survey_id=_parse_id(survey_id, "survey id"),
            status=_parse_status(record.get("status")),
            is_test_data=_parse_flag(record.get("is_test_data", "0"), "is_test_data"),
            submitted_at=_parse_required_time(record, "date_submitted", account_zone),
            started_at=_parse_optional_time(record, "date_started", account_zone),
            contact_id=_optional_text(record.get("contact_id")),
            url_variables=_parse_url_variables(record.get("url_variables")),
            answers=_parse_survey_data(record.get("survey_data")),
            raw=record,
        )
    except MalformedResponse as error:
        raise MalformedResponse(error.reason, response_id) from None


def _parse_id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise MalformedResponse(f"{name} is missing or not a string/integer: {value!r}")
    text = str(value).strip()
    if not text:
        raise MalformedResponse(f"{name} is empty")
    return text


def _parse_status(value: Any) -> str:
    for status in STATUSES:
        if isinstance(value, str) and value.strip().lower() == status.lower():
            return status
    raise MalformedResponse(f"status {value!r} is not one of {', '.join(STATUSES)}")


def _parse_flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    if text in TRUE_STRINGS:
        return True
    if text in FALSE_STRINGS:
        return False
    raise MalformedResponse(f"{name} {value!r} is not a boolean")


def _parse_required_time(record: Mapping[str, Any], name: str, zone: ZoneInfo) -> dt.datetime:
    parsed = _parse_optional_time(record, name, zone)
    if parsed is None:
        raise MalformedResponse(f"{name} is missing")
    return parsed


def _parse_optional_time(record: Mapping[str, Any], name: str, zone: ZoneInfo) -> dt.datetime | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedResponse(f"{name} {value!r} is not a string")
    try:
        return parse_timestamp(value, zone)
    except ValueError as error:
        raise MalformedResponse(f"{name}: {error}") from None


def _optional_text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _parse_url_variables(value: Any) -> dict[str, str]:
    """`[]`, `{"name": {"key", "value", "type"}}` or the legacy `{"name": "value"}` -> name -> value."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedResponse(f"url_variables is a {type(value).__name__}, not an object")
    variables = {}
    for name, entry in value.items():
        raw = entry.get("value") if isinstance(entry, Mapping) else entry
        variables[str(name)] = _storable_text("" if raw is None else str(raw), f"url variable {name}")
    return variables


def _parse_survey_data(value: Any) -> dict[str, Answer]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedResponse(f"survey_data is a {type(value).__name__}, not an object")
    answers: dict[str, Answer] = {}
    for key, entry in value.items():
        for answer in _parse_entry(str(key), entry, parent_id=None):
            answers.setdefault(answer.question_id, answer)
    return answers


def _parse_entry(key: str, entry: Any, parent_id: str | None) -> Iterator[Answer]:
    """The answer of one `survey_data` entry, then those of its grid rows, if any."""
    if not isinstance(entry, Mapping):
        raise MalformedResponse(f"question {key}: entry is a {type(entry).__name__}, not an object")
    if "type" not in entry and _is_option_map(entry):
        yield _checkbox_grid_row(key, entry, parent_id)
        return
    question_id = str(entry.get("id", key))
    own_parent = _optional_text(entry.get("parent")) or parent_id
    yield Answer(
        question_id=question_id,
        type=str(entry.get("type") or "UNKNOWN").upper(),
        question=_storable_text(str(entry.get("question") or ""), f"question {question_id} title"),
        shown=_parse_flag(entry.get("shown", True), f"question {question_id} shown"),
        value=_answer_text(entry.get("answer"), question_id),
        option_id=_optional_text(entry.get("answer_id")),
        selected=_selected_options(entry.get("options"), question_id),
        parent_id=own_parent,
    )
    subquestions = entry.get("subquestions") or {}
    if not isinstance(subquestions, Mapping):
        raise MalformedResponse(f"question {question_id}: subquestions is not an object")
    for row_key, row in subquestions.items():
        yield from _parse_entry(str(row_key), row, parent_id=question_id)


def _is_option_map(entry: Mapping[str, Any]) -> bool:
    return bool(entry) and all(isinstance(cell, Mapping) and "id" in cell for cell in entry.values())


def _checkbox_grid_row(row_id: str, cells: Mapping[str, Any], parent_id: str | None) -> Answer:
    """A checkbox-grid row: option id -> cell object, unticked cells have `answer: null`."""
    first = next(iter(cells.values()))
    return Answer(
        question_id=row_id,
        type=str(first.get("type") or "CHECKBOX").upper(),
        question=_storable_text(str(first.get("question") or ""), f"question {row_id} title"),
        shown=_parse_flag(first.get("shown", True), f"question {row_id} shown"),
        selected=_selected_options(cells, row_id),
        parent_id=_optional_text(first.get("parent")) or parent_id,
    )


def _selected_options(options: Any, question_id: str) -> dict[str, str]:
    if not options:
        return {}
    if not isinstance(options, Mapping):
        raise MalformedResponse(f"question {question_id}: options is not an object")
    selected = {}
    for option_key, option in options.items():
        if not isinstance(option, Mapping):
            raise MalformedResponse(f"question {question_id}: option {option_key} is not an object")
        text = _answer_text(option.get("answer"), question_id)
        if text is not None:
            selected[str(option.get("id", option_key))] = text
    return selected


def _answer_text(value: Any, question_id: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MalformedResponse(f"question {question_id}: answer {value!r} is not text or a number")
    return _storable_text(str(value), f"question {question_id} answer")


def _storable_text(text: str, what: str) -> str:
    """Reject text MongoDB cannot store (an unpaired surrogate from a `\\ud83d` escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedResponse(f"{what} contains an unpaired surrogate (broken \\u escape)") from None
    return text
