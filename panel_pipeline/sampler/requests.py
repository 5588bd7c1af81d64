"""The sample request document (the `samples` collection) as a typed, validated model.

A request arrives from the panel backend; everything in it is untrusted. `parse_sample_request`
turns the raw document into a `SampleRequest` or raises `SampleRequestError` whose messages name
the offending field (``filters.region: unknown operator $where``). `mongo_filter` turns a valid
request into a Mongo query on ``profile.<field>`` that can only use the allow-listed fields and
comparison/set operators, plus ``status: "active"``. `filter_mask` evaluates the same filters on a
panel DataFrame (same semantics as Mongo, including for missing values).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Profile values exactly as the contract (CONTRACT.md, `users.profile`) writes them.
PROFILE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "gender": ("female", "male", "other", "prefer_not_to_say"),
    "age_band": ("18-24", "25-34", "35-44", "45-54", "55-64", "65-74", "75+"),
    "region": (
        "North East",
        "North West",
        "Yorkshire and The Humber",
        "East Midlands",
        "West Midlands",
        "East of England",
        "London",
        "South East",
        "South West",
        "Wales",
        "Scotland",
        "Northern Ireland",
    ),
    "social_grade": ("AB", "C1", "C2", "DE"),
    "education": (
        "no_qualifications",
        "level_1",
        "level_2",
        "apprenticeship",
        "level_3",
        "level_4_plus",
        "other",
    ),
    "vote_2019": (
        "conservative",
        "labour",
        "lib_dem",
        "brexit_party",
        "green",
        "snp",
        "plaid_cymru",
        "other",
        "did_not_vote",
    ),
    "vote_2024": (
        "conservative",
        "labour",
        "lib_dem",
        "reform_uk",
        "green",
        "snp",
        "plaid_cymru",
        "other",
        "did_not_vote",
    ),
    "eu_ref_vote": ("remain", "leave", "did_not_vote"),
}
# Lower bound of each age band, in the order of PROFILE_CATEGORIES["age_band"].
AGE_BAND_LOWER_BOUNDS: tuple[int, ...] = (18, 25, 35, 45, 55, 65, 75)
NUMERIC_BOUNDS: dict[str, tuple[int, int]] = {"age": (0, 130), "birth_year": (1890, 2100)}
FILTERABLE_FIELDS: frozenset[str] = frozenset(PROFILE_CATEGORIES) | frozenset(NUMERIC_BOUNDS)
ORDER_OPERATORS: frozenset[str] = frozenset({"$gt", "$gte", "$lt", "$lte"})
SCALAR_OPERATORS: frozenset[str] = frozenset({"$eq", "$ne"}) | ORDER_OPERATORS
SET_OPERATORS: frozenset[str] = frozenset({"$in", "$nin"})
ALLOWED_OPERATORS: frozenset[str] = SCALAR_OPERATORS | SET_OPERATORS
PRESETS: tuple[str, ...] = ("uk_nat_rep",)
CELL_SEPARATOR = "|"


def age_band_codes(age: np.ndarray) -> np.ndarray:
    """Index into PROFILE_CATEGORIES["age_band"] for each age; -1 below 18."""
    return np.searchsorted(np.asarray(AGE_BAND_LOWER_BOUNDS), age, side="right") - 1


class RequestFieldError(ValueError):
    """A validation failure at `path` below the field pydantic is validating."""

    def __init__(self, path: Sequence[str], reason: str) -> None:
        super().__init__(reason)
        self.path = tuple(path)
        self.reason = reason


class SampleRequestError(ValueError):
    """The request document is invalid; `messages` are one `field.path: reason` per problem."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


Operator = Literal["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"]
FilterValue = str | int | tuple[str, ...] | tuple[int, ...]


@dataclass(frozen=True)
class Condition:
    """One `field operator value` test on a profile field."""

    field: str
    operator: Operator
    value: FilterValue


@dataclass(frozen=True)
class ResponseRates:
    """Expected completes per invitation: one overall rate, or per value of `fields` (crossed).

    `rates` keys are tuples of values in the order of `fields`; cells not listed use `default`.
    """

    default: float | None
    fields: tuple[str, ...] = ()
    rates: Mapping[tuple[str, ...], float] = dataclass_field(default_factory=dict)

    def rate_for(self, cell: tuple[str, ...]) -> float:
        rate = self.rates.get(cell, self.default)
        if rate is None:
            raise ValueError(f"expected_response_rate: no rate for {CELL_SEPARATOR.join(cell)} and no default")
        return rate


class Exclusions(BaseModel):
    """Who to leave out; the caller applies these and passes an eligibility mask."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    invited_within_days: int | None = Field(default=None, ge=0)
    completed_surveys: tuple[str, ...] = ()


class SampleRequest(BaseModel):
    """A validated `samples` document (queue fields and any other extra keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    survey_id: str = Field(min_length=1)
    size: int = Field(gt=0)
    tolerance: float = Field(default=1.0, gt=0, le=100)
    seed: int | None = None
    preset: Literal["uk_nat_rep"] | None = None
    filters: tuple[Condition, ...] = ()
    quotas: dict[str, dict[str, float]] = Field(default_factory=dict)
    exclude: Exclusions = Field(default_factory=Exclusions)
    expected_response_rate: ResponseRates = Field(default_factory=lambda: ResponseRates(default=1.0))
    dynamic: bool = False
    mailing: dict[str, Any] | None = None

    @field_validator("survey_id", mode="before")
    @classmethod
    def _survey_id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("filters", mode="before")
    @classmethod
    def _parse_filters(cls, value: Any) -> tuple[Condition, ...]:
        return parse_filters(value)

    @field_validator("quotas", mode="before")
    @classmethod
    def _parse_quotas(cls, value: Any) -> dict[str, dict[str, float]]:
        return parse_quotas(value)

    @field_validator("expected_response_rate", mode="before")
    @classmethod
    def _parse_rates(cls, value: Any) -> ResponseRates:
        return parse_response_rates(value)


def parse_sample_request(document: Mapping[str, Any]) -> SampleRequest:
    """Validate a raw `samples` document; raise SampleRequestError naming every bad field."""
    try:
        return SampleRequest.model_validate(dict(document))
    except ValidationError as exc:
        raise SampleRequestError([_describe(error) for error in exc.errors()]) from None


def _describe(error: Mapping[str, Any]) -> str:
    location = [str(part) for part in error["loc"]]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, RequestFieldError):
        return f"{'.'.join(location + list(cause.path))}: {cause.reason}"
    return f"{'.'.join(location)}: {error['msg']}"


# --- filters -----------------------------------------------------------------------------------


def parse_filters(raw: Any) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise RequestFieldError((), "must be an object of field: {operator: value}")
    conditions: list[Condition] = []
    for field, spec in raw.items():
        conditions.extend(_parse_field_filter(str(field), spec))
    return tuple(conditions)


def _parse_field_filter(field: str, spec: Any) -> list[Condition]:
    if field.startswith("$"):
        raise RequestFieldError((field,), f"operator {field} is not allowed; filter on profile fields")
    if field not in FILTERABLE_FIELDS:
        raise RequestFieldError((field,), f"unknown field {field}; allowed: {', '.join(sorted(FILTERABLE_FIELDS))}")
    if not isinstance(spec, Mapping):
        spec = {"$eq": spec}
    if not spec:
        raise RequestFieldError((field,), "empty condition")
    return [_parse_condition(field, str(operator), value) for operator, value in spec.items()]


def _parse_condition(field: str, operator: str, value: Any) -> Condition:
    if operator not in ALLOWED_OPERATORS:
        raise RequestFieldError((field,), f"unknown operator {operator}")
    if operator in ORDER_OPERATORS and field not in NUMERIC_BOUNDS:
        raise RequestFieldError((field, operator), f"{operator} needs a numeric field (age, birth_year)")
    if operator in SET_OPERATORS:
        if not isinstance(value, list | tuple) or not value:
            raise RequestFieldError((field, operator), "must be a non-empty list")
        return Condition(field, operator, tuple(_parse_value(field, operator, item) for item in value))  # type: ignore[arg-type]
    return Condition(field, operator, _parse_value(field, operator, value))  # type: ignore[arg-type]


def _parse_value(field: str, operator: str, value: Any) -> str | int:
    path = (field, operator)
    if field in NUMERIC_BOUNDS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
            raise RequestFieldError(path, f"must be a whole number, got {value!r}")
        low, high = NUMERIC_BOUNDS[field]
        if not low <= value <= high:
            raise RequestFieldError(path, f"{value} is outside {low}..{high}")
        return int(value)
    if not isinstance(value, str):
        raise RequestFieldError(path, f"must be a string, got {type(value).__name__}")
    if value not in PROFILE_CATEGORIES[field]:
        raise RequestFieldError(path, f"unknown value {value!r}; allowed: {', '.join(PROFILE_CATEGORIES[field])}")
    return value


def mongo_filter(request: SampleRequest, as_of_year: int | None = None) -> dict[str, Any]:
    """The `users` query for the request: active panelists matching every filter.

    `age` is translated to `profile.birth_year` (age = as_of_year - birth_year, the pipeline's
    derivation) so a stored age can never go stale; every other field maps to `profile.<field>`.
    """
    year = as_of_year or dt.date.today().year
    clauses: list[dict[str, Any]] = [{"status": "active"}]
    for condition in request.filters:
        path, operator, value = _mongo_condition(condition, year)
        clauses.append({path: {operator: list(value) if isinstance(value, tuple) else value}})
    return _merge_clauses(clauses)


_MIRRORED_OPERATOR = {"$gt": "$lt", "$gte": "$lte", "$lt": "$gt", "$lte": "$gte"}


def _mongo_condition(condition: Condition, year: int) -> tuple[str, str, FilterValue]:
    if condition.field != "age":
        return f"profile.{condition.field}", condition.operator, condition.value
    value = condition.value
    birth_years = tuple(year - age for age in value) if isinstance(value, tuple) else year - value  # type: ignore[operator, union-attr]
    return "profile.birth_year", _MIRRORED_OPERATOR.get(condition.operator, condition.operator), birth_years


def _merge_clauses(clauses: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, dict[str, Any] | str] = {}
    for clause in clauses:
        ((path, test),) = clause.items()
        existing = merged.get(path)
        if existing is None:
            merged[path] = dict(test) if isinstance(test, dict) else test
        elif isinstance(existing, dict) and isinstance(test, dict) and not set(existing) & set(test):
            existing.update(test)
        else:
            return {"$and": clauses}
    return merged


def filter_mask(panel: pd.DataFrame, filters: Sequence[Condition]) -> np.ndarray:
    """Rows of `panel` (profile fields as columns) that match every condition, Mongo-style:
    a missing value fails $eq/$in/order tests and passes $ne/$nin."""
    mask = np.ones(len(panel), dtype=bool)
    for condition in filters:
        mask &= _condition_mask(panel[condition.field], condition)
    return mask


def _condition_mask(column: pd.Series, condition: Condition) -> np.ndarray:
    present = column.notna().to_numpy()
    value = condition.value
    match condition.operator:
        case "$eq":
            return present & (column == value).to_numpy()
        case "$ne":
            return ~(present & (column == value).to_numpy())
        case "$in":
            return present & column.isin(list(value)).to_numpy()  # type: ignore[arg-type]
        case "$nin":
            return ~(present & column.isin(list(value)).to_numpy())  # type: ignore[arg-type]
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    compare = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
    with np.errstate(invalid="ignore"):
        return present & compare[condition.operator](numbers, float(value))  # type: ignore[arg-type]


# --- quotas and response rates -----------------------------------------------------------------


def split_key(key: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in key.split(CELL_SEPARATOR))


def parse_quotas(raw: Any) -> dict[str, dict[str, float]]:
    """`{"gender": {"female": 0.51, ...}, "age_band|gender": {"18-24|female": 0.05, ...}}`,
    shares in [0, 1] summing to 1 (within 0.005; renormalised)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RequestFieldError((), "must be an object of field: {value: share}")
    return {str(key): _parse_quota(str(key), shares) for key, shares in raw.items()}


def _parse_quota(key: str, shares: Any) -> dict[str, float]:
    fields = _categorical_fields(key)
    if not isinstance(shares, Mapping) or not shares:
        raise RequestFieldError((key,), "must be a non-empty object of value: share")
    parsed = {str(cell): _parse_share(key, str(cell), fields, share) for cell, share in shares.items()}
    total = sum(parsed.values())
    if not math.isclose(total, 1.0, abs_tol=0.005):
        raise RequestFieldError((key,), f"shares must sum to 1, got {total:.4f}")
    return {cell: share / total for cell, share in parsed.items()}


def _categorical_fields(key: str) -> tuple[str, ...]:
    fields = split_key(key)
    for field in fields:
        if field not in PROFILE_CATEGORIES:
            raise RequestFieldError((key,), f"unknown field {field}; allowed: {', '.join(PROFILE_CATEGORIES)}")
    if len(set(fields)) != len(fields):
        raise RequestFieldError((key,), "a field appears twice")
    return fields


def _parse_share(key: str, cell: str, fields: tuple[str, ...], share: Any) -> float:
    _check_cell(key, cell, fields)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise RequestFieldError((key, cell), f"share must be a number in [0, 1], got {share!r}")
    return float(share)


def _check_cell(key: str, cell: str, fields: tuple[str, ...]) -> tuple[str, ...]:
    values = split_key(cell)
    if len(values) != len(fields):
        raise RequestFieldError((key, cell), f"needs {len(fields)} values separated by {CELL_SEPARATOR!r}")
    for field, value in zip(fields, values, strict=True):
        if value not in PROFILE_CATEGORIES[field]:
            raise RequestFieldError((key, cell), f"unknown {field} value {value!r}")
    return values


def parse_response_rates(raw: Any) -> ResponseRates:
    """A number in (0, 1], or `{"<field>[|field]": {"<value>[|value]": rate}, "default": rate}`."""
    if raw is None:
        return ResponseRates(default=1.0)
    if not isinstance(raw, Mapping):
        return ResponseRates(default=_parse_rate((), raw))
    default = _parse_rate(("default",), raw["default"]) if "default" in raw else None
    keys = [str(key) for key in raw if key != "default"]
    if len(keys) != 1:
        raise RequestFieldError((), "give one rate table (one field or one 'field|field' key) plus an optional default")
    (key,) = keys
    table = raw[key]
    fields = _categorical_fields(key)
    if not isinstance(table, Mapping) or not table:
        raise RequestFieldError((key,), "must be a non-empty object of value: rate")
    rates = {_check_cell(key, str(cell), fields): _parse_rate((key, str(cell)), rate) for cell, rate in table.items()}
    return ResponseRates(default=default, fields=fields, rates=rates)


def _parse_rate(path: tuple[str, ...], rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise RequestFieldError(path, f"rate must be a number in (0, 1], got {rate!r}")
    return float(rate)
