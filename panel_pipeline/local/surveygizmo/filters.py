"""The v5 filter engine: `filter[field|operator|value][i]` query parameters, parsed and matched.

Fields `date_submitted`, `status`, `is_test_data`, `contact_id`, and a question's answer
`[question(<id>)]` (the answer text of `survey_data[<id>]`, grid rows included); operators `= <> != > < >= <= IS NULL
IS NOT NULL in`; dates read in the account's zone. A filter the real API refuses raises FilterError,
which the server answers with a 400.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

UTC = dt.UTC
FILTER_KEY = re.compile(r"^filter\[(field|operator|value)\]\[(\d+)\]$")
FILTER_FIELDS = frozenset({"date_submitted", "status", "is_test_data", "contact_id"})
QUESTION_FIELD = re.compile(r"^\[question\((\d+)\)\]$")
FILTER_OPERATORS = frozenset({"=", "<>", "!=", ">", "<", ">=", "<=", "IS NULL", "IS NOT NULL", "in"})

# (field, operator, value): the value as given, or for `date_submitted` the instant it names.
Condition = tuple[str, str, Any]


class FilterError(ValueError):
    """A filter the API refuses; the message is the API's."""


def parse_filters(params: Mapping[str, str], strict: bool) -> list[tuple[str, str, str | None]]:
    """The conditions in `params`, in index order; `strict` refuses fields the engine cannot filter on."""
    parts: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        match = FILTER_KEY.match(key)
        if match:
            parts.setdefault(int(match[2]), {})[match[1]] = value
    if sorted(parts) != list(range(len(parts))):
        raise FilterError("filter indexes must run 0, 1, 2, ...")
    conditions = []
    for index in sorted(parts):
        triple = parts[index]
        field_name, operator = triple.get("field", ""), triple.get("operator", "")
        if strict and field_name not in FILTER_FIELDS and not QUESTION_FIELD.match(field_name):
            raise FilterError(f"Unsupported filter field {field_name!r}")
        if operator not in FILTER_OPERATORS:
            raise FilterError(f"Unsupported filter operator {operator!r}")
        if operator not in ("IS NULL", "IS NOT NULL") and "value" not in triple:
            raise FilterError(f"filter {index} needs a value")
        conditions.append((field_name, operator, triple.get("value")))
    return conditions


def filter_instant(value: str, zone: ZoneInfo) -> dt.datetime:
    """A date filter's value, a wall time in the account's zone, as a UTC instant."""
    try:
        local = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise FilterError(f"Invalid date filter value {value!r}") from None
    return local.replace(tzinfo=zone).astimezone(UTC)


def resolved(condition: tuple[str, str, str | None], zone: ZoneInfo) -> Condition:
    """A condition with its date value read in the account's zone once, not once per record."""
    field_name, operator, value = condition
    if field_name == "date_submitted" and value is not None:
        return field_name, operator, filter_instant(value, zone)
    return condition


def matches(record: Mapping[str, Any], submitted_at: dt.datetime | None, condition: Condition) -> bool:
    field_name, operator, expected = condition
    if field_name == "date_submitted":
        return _compare(submitted_at, operator, expected)
    question = QUESTION_FIELD.match(field_name)
    if question:
        return _compare(_field_text(_answer(record, question[1]), field_name), operator, expected)
    return _compare(_field_text(record.get(field_name), field_name), operator, expected)


def date_window(params: Mapping[str, str], zone: ZoneInfo) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The `date_submitted` bounds the filters in `params` set (None where open)."""
    low = high = None
    for field_name, operator, value in parse_filters(params, strict=False):
        if field_name != "date_submitted" or value is None:
            continue
        if operator in (">", ">="):
            low = max(filter(None, (low, filter_instant(value, zone))))
        elif operator in ("<", "<="):
            high = min(filter(None, (high, filter_instant(value, zone))))
    return low, high


def _answer(record: Mapping[str, Any], question_id: str) -> Any:
    """The answer text of a question (a grid row is found under its parent's `subquestions`)."""
    survey_data = record.get("survey_data")
    if not isinstance(survey_data, Mapping):
        return None
    for entry in survey_data.values():
        if not isinstance(entry, Mapping):
            continue
        if str(entry.get("id")) == question_id:
            return entry.get("answer")
        rows = entry.get("subquestions")
        if isinstance(rows, Mapping) and isinstance(rows.get(question_id), Mapping):
            return rows[question_id].get("answer")
    return None


def _field_text(value: Any, field_name: str) -> str | None:
    if value is None or value == "":
        return None
    if field_name == "is_test_data":
        return "1" if str(value).strip().lower() in ("1", "true") else "0"
    return str(value)


def _order(actual: Any, expected: Any) -> tuple[Any, Any]:
    if isinstance(actual, str) and isinstance(expected, str):
        if actual.isdigit() and expected.isdigit():
            return int(actual), int(expected)
        return actual.casefold(), expected.casefold()
    return actual, expected


def _compare(actual: Any, operator: str, expected: Any) -> bool:
    if operator == "IS NULL":
        return actual is None
    if operator == "IS NOT NULL":
        return actual is not None
    if actual is None:
        return False
    if operator == "in":
        return any(_compare(actual, "=", item.strip()) for item in str(expected).split(","))
    left, right = _order(actual, expected)
    return _COMPARISONS[operator](left, right)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}
