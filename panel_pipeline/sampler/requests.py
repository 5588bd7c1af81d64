"""The sample request document (the `samples` collection) as a typed, validated model.

A request arrives from the panel backend; everything in it is untrusted. `parse_sample_request`
turns the raw document into a `SampleRequest` or raises `SampleRequestError` whose messages name
the offending field (``filters.region: unknown operator $where``). `mongo_filter` turns a valid
request into a Mongo query on ``profile.<field>`` that can only use the allow-listed fields and
comparison/set operators, plus ``status: "active"``. `filter_mask` evaluates the same filters on a
panel DataFrame (same semantics as Mongo, including for missing values).

Invariant: a request `parse_sample_request` accepts can be drawn (`quotas.select`) and written back
without an exception caused by the request itself: numbers are of their type and within the limits
below (no string or `true` for a number, no seed the RNG or BSON cannot take, no day count
`timedelta` cannot hold), every response-rate cell has a rate, the crossed cell space fits an int64
index, and an invitation (`mailing`) names a built template whose variables the default data fills
(the per-member `first_name` and `unsubscribe_url` come from the Mailer), so no sample is drawn for
an invitation that cannot be sent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from panel_pipeline.shared.clock import REAL_TIME, FieldworkClock
from panel_pipeline.shared.contract import (
    ACTIVE,
    AGE_BAND_LOWER_BOUNDS,
    HTML_COPY_KEY,
    PER_MEMBER_VARIABLES,
    PROFILE_CATEGORIES,
    UNSUBSCRIBE_URL,
)
from panel_pipeline.shared.privacy import redact
from panel_pipeline.shared.template_data import DEPTH, KEY, NUMBER, NotJson, as_json
from panel_pipeline.shared.templates import EmailTemplate, check_recipient_data, load_templates

NUMERIC_BOUNDS: dict[str, tuple[int, int]] = {"age": (0, 130), "birth_year": (1890, 2100)}
FILTERABLE_FIELDS: frozenset[str] = frozenset(PROFILE_CATEGORIES) | frozenset(NUMERIC_BOUNDS)
ORDER_OPERATORS: frozenset[str] = frozenset({"$gt", "$gte", "$lt", "$lte"})
SCALAR_OPERATORS: frozenset[str] = frozenset({"$eq", "$ne"}) | ORDER_OPERATORS
SET_OPERATORS: frozenset[str] = frozenset({"$in", "$nin"})
ALLOWED_OPERATORS: frozenset[str] = SCALAR_OPERATORS | SET_OPERATORS
PRESETS: tuple[str, ...] = ("uk_nat_rep",)
CELL_SEPARATOR = "|"

# Limits of a request (docs/contract.md, `samples`); anything outside is refused naming the field.
MAX_SAMPLE_SIZE = 1_000_000
MAX_SEED = 2**63 - 1  # BSON int64 (the seed is written back); numpy takes any non-negative int
MAX_INVITED_WITHIN_DAYS = 3650
MAX_NAME_CHARS = 200
MAX_COMPLETED_SURVEYS = 1000
MAX_FIELDS_PER_KEY = 4  # fields crossed in one quota or response-rate key
MAX_QUOTA_TARGETS = 12
MAX_CELL_SPACE = 2**62  # product of every target's and the rate table's cells: an int64 cell index
MAX_DATA_DEPTH = 8
SURVEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# Set by the Mailer, never by a request: the escaped copy and the member's own signed link.
MAILER_OWNED_KEYS: frozenset[str] = frozenset({UNSUBSCRIBE_URL, HTML_COPY_KEY})


MissingPolicy = Literal["include", "exclude"]
MISSING_POLICIES: tuple[str, ...] = ("include", "exclude")
# The derived age band of a member younger than the youngest band: a value, but in no target's cells.
BELOW_AGE_BANDS = "under 18"
AGE_BAND_VALUES: tuple[str, ...] = (*PROFILE_CATEGORIES["age_band"], BELOW_AGE_BANDS)


def age_band_codes(age: np.ndarray) -> np.ndarray:
    """Index into PROFILE_CATEGORIES["age_band"] for each age; -1 below 18."""
    return np.searchsorted(np.asarray(AGE_BAND_LOWER_BOUNDS), age, side="right") - 1


def age_bands(age: np.ndarray) -> pd.Categorical[str]:
    """Each age's band (categories AGE_BAND_VALUES: under 18 is BELOW_AGE_BANDS); NaN where the age is.

    The pipeline's one derivation of `age_band`: a stored band is never read (it goes stale on a
    birthday, and the contract lets the backend store `birth_year` alone)."""
    ages = np.asarray(age, dtype=float)
    codes = np.where(np.isnan(ages), -1, age_band_codes(np.nan_to_num(ages, nan=0.0)))
    codes = np.where(np.isnan(ages) | (codes >= 0), codes, len(AGE_BAND_VALUES) - 1)
    return pd.Categorical.from_codes(codes.astype(np.int64), categories=pd.Index(AGE_BAND_VALUES))


def age_range(band: str) -> tuple[int, int | None]:
    """The ages of a band, lowest and highest (None: no upper bound)."""
    index = PROFILE_CATEGORIES["age_band"].index(band)
    upper = AGE_BAND_LOWER_BOUNDS[index + 1] - 1 if index + 1 < len(AGE_BAND_LOWER_BOUNDS) else None
    return AGE_BAND_LOWER_BOUNDS[index], upper


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


DEFAULT_FIELDWORK_DAYS = 14  # close_at when the request gives none: this long after the draw
MAX_REMINDER_AFTER_HOURS = 24 * 60
MAX_REMINDERS = 5
MAX_WEIGHT_BOUND = 100.0
FIELDWORK_KEYS: tuple[str, ...] = (
    "close_at",
    "waves",
    "reminder_after_hours",
    "max_reminders",
    "first_wave_share",
    "weight_bounds",
    "top_up_every_hours",
)


@dataclass(frozen=True)
class FieldworkSettings:
    """`fieldwork`: how a sample is fielded (sampler/fieldwork.py). `close_at` None: DEFAULT_FIELDWORK_DAYS
    after the draw (`closes_at`). Weight bounds are on weights relative to a mean of 1.

    Durations are in fieldwork hours, read on `clock` (shared/clock.py): not a request key, but the
    pipeline's setting (`FieldworkTiming`, real time in production), put here by `on_fieldwork_clock`
    so that every rule reading a duration converts it the same way."""

    close_at: dt.datetime | None = None
    waves: bool = True
    reminder_after_hours: float = 48.0
    max_reminders: int = 1
    first_wave_share: float = 0.7
    weight_bounds: tuple[float, float] = (0.2, 5.0)
    top_up_every_hours: float = 12.0  # the least time between two waves (sampler/waves.py)
    clock: FieldworkClock = REAL_TIME

    def closes_at(self, drawn_at: dt.datetime, now: dt.datetime) -> dt.datetime:
        return self.close_at or self.clock.wall_after(drawn_at, DEFAULT_FIELDWORK_DAYS * 24.0, now)

    def hours_since(self, instants: Any, now: dt.datetime) -> np.ndarray:
        """Fieldwork hours from each wall time (a datetime, or a sequence of them) to `now`; NaN where missing."""
        return self.clock.hours_since(instants, now)


def parse_fieldwork(raw: Any) -> FieldworkSettings | None:
    """An object of FIELDWORK_KEYS (each optional), true (every default) or false/null (no fieldwork)."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return FieldworkSettings()
    if not isinstance(raw, Mapping):
        raise RequestFieldError((), f"must be an object of fieldwork settings or true/false, got {_type_shown(raw)}")
    unknown = [str(key) for key in raw if key not in FIELDWORK_KEYS]
    if unknown:
        raise RequestFieldError((unknown[0],), f"unknown setting; allowed: {', '.join(FIELDWORK_KEYS)}")
    defaults = FieldworkSettings()
    return FieldworkSettings(
        close_at=_optional(raw, "close_at", _close_at, None),
        waves=_optional(raw, "waves", _true_or_false, defaults.waves),
        reminder_after_hours=_optional(raw, "reminder_after_hours", _reminder_hours, defaults.reminder_after_hours),
        max_reminders=_optional(
            raw, "max_reminders", lambda value: whole_number(value, 0, MAX_REMINDERS), defaults.max_reminders
        ),
        first_wave_share=_optional(raw, "first_wave_share", _first_wave_share, defaults.first_wave_share),
        weight_bounds=_optional(raw, "weight_bounds", _weight_bounds, defaults.weight_bounds),
        top_up_every_hours=_optional(raw, "top_up_every_hours", _top_up_hours, defaults.top_up_every_hours),
    )


def _optional(raw: Mapping[str, Any], key: str, parse: Any, default: Any) -> Any:
    value = raw.get(key)
    if value is None:
        return default
    try:
        return parse(value)
    except RequestFieldError as bad:
        raise RequestFieldError((key, *bad.path), bad.reason) from None


def _close_at(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise RequestFieldError((), f"must be a date (BSON date, UTC), got {_type_shown(value)}")
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _true_or_false(value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestFieldError((), f"must be true or false, got {_shown(value)}")
    return value


def _reminder_hours(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= MAX_REMINDER_AFTER_HOURS:
        raise RequestFieldError(
            (), f"must be a number of hours from 1 to {MAX_REMINDER_AFTER_HOURS}, got {_shown(value)}"
        )
    return float(value)


def _top_up_hours(value: Any) -> float:
    # Fractions of an hour are allowed: tests on the local stack run hours of fieldwork in seconds.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_REMINDER_AFTER_HOURS:
        raise RequestFieldError(
            (), f"must be a number of hours above 0, at most {MAX_REMINDER_AFTER_HOURS}, got {_shown(value)}"
        )
    return float(value)


def _first_wave_share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise RequestFieldError((), f"must be a share in (0, 1], got {_shown(value)}")
    return float(value)


def _weight_bounds(value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise RequestFieldError((), f"must be [lowest, highest], got {_type_shown(value)}")
    if any(isinstance(bound, bool) or not isinstance(bound, int | float) for bound in value):
        raise RequestFieldError((), "must be two numbers [lowest, highest]")
    low, high = float(value[0]), float(value[1])
    if not (0 <= low <= 1 <= high <= MAX_WEIGHT_BOUND):
        raise RequestFieldError(
            (), f"must satisfy 0 <= lowest <= 1 <= highest <= {MAX_WEIGHT_BOUND:g}, got [{low:g}, {high:g}]"
        )
    return low, high


class Exclusions(BaseModel):
    """Who to leave out; the caller applies these and passes an eligibility mask."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    invited_within_days: int | None = None
    completed_surveys: tuple[str, ...] = ()

    @field_validator("invited_within_days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> int | None:
        return None if value is None else whole_number(value, 0, MAX_INVITED_WITHIN_DAYS)

    @field_validator("completed_surveys", mode="before")
    @classmethod
    def _surveys(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise RequestFieldError((), "must be a list of survey ids")
        if len(value) > MAX_COMPLETED_SURVEYS:
            raise RequestFieldError((), f"at most {MAX_COMPLETED_SURVEYS} surveys, got {len(value)}")
        surveys: list[str] = []
        for index, item in enumerate(value):
            try:
                surveys.append(survey_id_text(item))
            except RequestFieldError as bad:
                raise RequestFieldError((str(index),), bad.reason) from None
        return tuple(surveys)


class InvitationRequest(BaseModel):
    """`mailing`: the invitation the sample's members get, checked against the built template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str
    default_data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("template", mode="before")
    @classmethod
    def _known_template(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise RequestFieldError((), f"must be a template name (text), got {type(value).__name__}")
        known = built_templates()
        if value not in known:
            raise RequestFieldError((), f"unknown template {_shown(value)}; built: {', '.join(sorted(known))}")
        return value

    @field_validator("default_data", mode="before")
    @classmethod
    def _plain_data(cls, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise RequestFieldError((), f"must be an object of template variables, got {type(value).__name__}")
        for key in value:
            if key in MAILER_OWNED_KEYS:
                raise RequestFieldError(
                    (str(key),), "is set by the Mailer (escaped copy / the member's own signed link); remove it"
                )
        check_plain_data(value, ())
        return dict(value)

    @model_validator(mode="after")
    def _fills_the_template(self) -> InvitationRequest:
        template = built_templates()[self.template]
        placeholders = dict.fromkeys(PER_MEMBER_VARIABLES, "x")
        missing = check_recipient_data(template, {**placeholders, **self.default_data})
        if missing:
            raise RequestFieldError(
                ("default_data",),
                f"template {self.template} needs {', '.join(missing)}, missing (or null) in the default data",
            )
        return self


class SampleRequest(BaseModel):
    """A validated `samples` document (queue fields and any other extra keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)

    name: str
    survey_id: str
    size: int
    tolerance: float = 1.0
    seed: int | None = None
    preset: Literal["uk_nat_rep"] | None = None
    filters: tuple[Condition, ...] = ()
    quotas: dict[str, dict[str, float]] = Field(default_factory=dict)
    exclude: Exclusions = Field(default_factory=Exclusions)
    expected_response_rate: ResponseRates = Field(default_factory=lambda: ResponseRates(default=1.0))
    dynamic: bool = False
    closes_at: dt.datetime | None = None
    mailing: InvitationRequest | None = None
    missing: MissingPolicy = "include"
    fieldwork: FieldworkSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _fieldwork_by_default_and_no_null_rate(cls, data: Any) -> Any:
        """A sample with an invitation gets fieldwork unless it says `fieldwork: false`; a null
        `expected_response_rate` is no rate (learned rates size the invitations)."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if "fieldwork" not in data and data.get("mailing") is not None:
            data["fieldwork"] = True
        if "expected_response_rate" in data and data["expected_response_rate"] is None:
            del data["expected_response_rate"]
        return data

    @property
    def gives_response_rate(self) -> bool:
        """Whether the request sets its own expected_response_rate (it then wins over learned rates)."""
        return "expected_response_rate" in self.model_fields_set

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise RequestFieldError((), f"must be non-empty text, got {_type_shown(value)}")
        if len(value) > MAX_NAME_CHARS:
            raise RequestFieldError((), f"at most {MAX_NAME_CHARS} characters, got {len(value)}")
        return value

    @field_validator("survey_id", mode="before")
    @classmethod
    def _survey_id(cls, value: Any) -> str:
        return survey_id_text(value)

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return whole_number(value, 1, MAX_SAMPLE_SIZE)

    @field_validator("tolerance", mode="before")
    @classmethod
    def _tolerance(cls, value: Any) -> float:
        if value is None:
            return 1.0
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
            raise RequestFieldError((), f"must be a number of percentage points in (0, 100], got {_shown(value)}")
        return float(value)

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value: Any) -> int | None:
        return None if value is None else whole_number(value, 0, MAX_SEED)

    @field_validator("dynamic", mode="before")
    @classmethod
    def _dynamic(cls, value: Any) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise RequestFieldError((), f"must be true or false, got {_shown(value)}")
        return value

    @field_validator("missing", mode="before")
    @classmethod
    def _missing(cls, value: Any) -> str:
        if value is None:
            return "include"
        if not isinstance(value, str) or value not in MISSING_POLICIES:
            raise RequestFieldError((), f'must be "include" or "exclude", got {_shown(value)}')
        return value

    @field_validator("closes_at", mode="before")
    @classmethod
    def _closes_at(cls, value: Any) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise RequestFieldError((), f"must be a date (BSON date, UTC), got {_type_shown(value)}")
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)

    @field_validator("exclude", mode="before")
    @classmethod
    def _exclude(cls, value: Any) -> Any:
        if value is None:
            return Exclusions()
        if not isinstance(value, Mapping):
            raise RequestFieldError((), "must be an object with invited_within_days and/or completed_surveys")
        return value

    @field_validator("mailing", mode="before")
    @classmethod
    def _mailing(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, Mapping):
            raise RequestFieldError((), f"must be an object with template and default_data, got {_type_shown(value)}")
        return value

    @field_validator("fieldwork", mode="before")
    @classmethod
    def _fieldwork(cls, value: Any) -> FieldworkSettings | None:
        return parse_fieldwork(value)

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

    @model_validator(mode="after")
    def _cells_fit_an_index(self) -> SampleRequest:
        from panel_pipeline.sampler.targets import UK_NAT_REP_TARGETS  # targets.py imports this module

        keys = {*(UK_NAT_REP_TARGETS if self.preset else ()), *self.quotas}
        space = math.prod(_cell_count(split_key(key)) for key in keys)
        space *= 1 + _cell_count(self.expected_response_rate.fields)
        if space > MAX_CELL_SPACE:
            raise RequestFieldError(
                ("quotas",),
                "the targets cross too many cells (more than 2^62 combinations); use fewer or smaller crossed targets",
            )
        return self


def on_fieldwork_clock(request: SampleRequest, clock: FieldworkClock) -> SampleRequest:
    """The request with its fieldwork durations read on `clock` (FieldworkSettings)."""
    if request.fieldwork is None:
        return request
    return request.model_copy(update={"fieldwork": dataclasses.replace(request.fieldwork, clock=clock)})


def parse_sample_request(document: Mapping[str, Any]) -> SampleRequest:
    """Validate a raw `samples` document; raise SampleRequestError naming every bad field.

    A missing template build raises TemplateError (not the request's fault: the run is retried)."""
    if document.get("mailing") is not None:
        built_templates()  # outside the validators, which would turn its TemplateError into a refusal
    try:
        return SampleRequest.model_validate(dict(document))
    except ValidationError as exc:
        raise SampleRequestError([_describe(error) for error in exc.errors()]) from None


def _describe(error: Mapping[str, Any]) -> str:
    """`path: reason`, redacted: the message may quote a wrong value, and it is stored and logged."""
    location = [_path_part(part) for part in error["loc"]]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, RequestFieldError):
        return f"{'.'.join(location + [_path_part(part) for part in cause.path])}: {redact(cause.reason)}"
    return f"{'.'.join(location) or 'request'}: {redact(str(error['msg']))}"


def _path_part(part: Any) -> str:
    """A key as written, quoted when it is empty or holds a separator or space (so the path stays readable)."""
    text = str(part)
    if redact(text) != text:
        return "'<redacted key>'"
    return repr(text) if not text or any(char in text for char in ".:@ \t\n") or text != text.strip() else text


# --- scalar fields and invitation data ---------------------------------------------------------


def whole_number(value: Any, low: int, high: int) -> int:
    """An integer (or a whole float, as JSON numbers arrive) within [low, high]; never a string or bool."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise RequestFieldError((), f"must be a whole number from {low} to {high}, got {_shown(value)}")
    if not low <= value <= high:
        raise RequestFieldError((), f"must be a whole number from {low} to {high}, got {_shown(value)}")
    return int(value)


def survey_id_text(value: Any) -> str:
    """A survey id as text: a positive integer (an int64: transactions are matched on it as a number
    too), or up to 64 letters, digits and `_.:-`."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SEED:
        return str(value)
    if isinstance(value, str) and SURVEY_ID_PATTERN.match(value) and not (value.isdigit() and int(value) > MAX_SEED):
        return value
    raise RequestFieldError(
        (), f"must be a survey id (a positive integer or up to 64 letters, digits, _.:-), got {_shown(value)}"
    )


@functools.cache
def built_templates() -> dict[str, EmailTemplate]:
    """The built e-mail templates by name (a missing build raises TemplateError: not the request's fault)."""
    return load_templates()


def check_plain_data(value: Any, path: tuple[str, ...]) -> None:
    """Template data must be JSON: text, finite numbers, true/false, null, lists and objects with text keys."""
    try:
        as_json(value, max_depth=MAX_DATA_DEPTH, empty_keys=False, path=path)
    except NotJson as wrong:
        at = tuple(map(str, wrong.path))
        if wrong.reason == DEPTH:
            raise RequestFieldError(at, f"nested deeper than {MAX_DATA_DEPTH} levels") from None
        if wrong.reason == NUMBER:
            raise RequestFieldError(at, "must be a finite number") from None
        if wrong.reason == KEY:
            raise RequestFieldError(at, f"keys must be non-empty text, got {_type_shown(wrong.value)}") from None
        raise RequestFieldError(
            at, f"must be text, a number, true/false, a list or an object, got {type(wrong.value).__name__}"
        ) from None


def _cell_count(fields: Sequence[str]) -> int:
    return math.prod(len(PROFILE_CATEGORIES.get(field, ())) or 1 for field in fields) if fields else 0


def _shown(value: Any) -> str:
    """A wrong value for an error message: short, and its type when it is not a plain scalar."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    if value is None or isinstance(value, bool | int | float):
        text = repr(value)
        return text if len(text) <= 40 else f"{text[:12]}… ({len(text)} digits)"
    return _type_shown(value)


def _type_shown(value: Any) -> str:
    return "null" if value is None else f"a value of type {type(value).__name__}"


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
        values = dict.fromkeys(_parse_value(field, operator, item) for item in value)  # each once, in order
        return Condition(field, operator, tuple(values))  # type: ignore[arg-type]  # the operator fixes the value's type: a tuple for sets, a number for order
    return Condition(field, operator, _parse_value(field, operator, value))  # type: ignore[arg-type]  # the operator fixes the value's type: a tuple for sets, a number for order


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

    `age` and `age_band` are translated to `profile.birth_year` (age = as_of_year - birth_year, the
    pipeline's derivation) so a stored age or band is never read and can never go stale; every other
    field maps to `profile.<field>`.
    """
    year = as_of_year or dt.date.today().year
    clauses: list[dict[str, Any]] = [{"status": ACTIVE}]
    for condition in request.filters:
        if condition.field == "age_band":
            clauses.append(_age_band_clause(condition, year))
            continue
        path, operator, value = _mongo_condition(condition, year)
        clauses.append({path: {operator: list(value) if isinstance(value, tuple) else value}})
    return _merge_clauses(clauses)


def _age_band_clause(condition: Condition, year: int) -> dict[str, Any]:
    """An age_band test as birth_year ranges; like a stored value, a missing birth_year fails
    $eq/$in and passes $ne/$nin."""
    bands = condition.value if isinstance(condition.value, tuple) else (condition.value,)
    ranges = [_birth_years_of(str(band), year) for band in bands]
    if condition.operator in ("$eq", "$in"):
        return ranges[0] if len(ranges) == 1 else {"$or": ranges}
    return {"$nor": ranges}


def _birth_years_of(band: str, year: int) -> dict[str, Any]:
    youngest, oldest = age_range(band)
    years: dict[str, int] = {"$lte": year - youngest}
    if oldest is not None:
        years["$gte"] = year - oldest
    return {"profile.birth_year": years}


_MIRRORED_OPERATOR = {"$gt": "$lt", "$gte": "$lte", "$lt": "$gt", "$lte": "$gte"}


def _mongo_condition(condition: Condition, year: int) -> tuple[str, str, FilterValue]:
    if condition.field != "age":
        return f"profile.{condition.field}", condition.operator, condition.value
    value = condition.value
    birth_years = tuple(year - int(age) for age in value) if isinstance(value, tuple) else year - int(value)
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
            return present & column.isin(list(value)).to_numpy()  # type: ignore[arg-type]  # the operator fixes the value's type: a tuple for sets, a number for order
        case "$nin":
            return ~(present & column.isin(list(value)).to_numpy())  # type: ignore[arg-type]  # the operator fixes the value's type: a tuple for sets, a number for order
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    compare = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
    with np.errstate(invalid="ignore"):
        return present & compare[condition.operator](numbers, float(value))  # type: ignore[arg-type]  # the operator fixes the value's type: a tuple for sets, a number for order


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
    if len(raw) > MAX_QUOTA_TARGETS:
        raise RequestFieldError((), f"at most {MAX_QUOTA_TARGETS} targets, got {len(raw)}")
    return {str(key): _parse_quota(str(key), shares) for key, shares in raw.items()}


def _parse_quota(key: str, shares: Any) -> dict[str, float]:
    fields = _categorical_fields(key)
    if not isinstance(shares, Mapping) or not shares:
        raise RequestFieldError((key,), "must be a non-empty object of value: share")
    parsed = {str(cell): _parse_share(key, str(cell), fields, share) for cell, share in shares.items()}
    _refuse_repeated_cells(key, list(parsed))
    total = sum(parsed.values())
    if not math.isclose(total, 1.0, abs_tol=0.005):
        raise RequestFieldError((key,), f"shares must sum to 1, got {total:.4f}")
    return {cell: share / total for cell, share in parsed.items()}


def _categorical_fields(key: str) -> tuple[str, ...]:
    fields = split_key(key)
    if len(fields) > MAX_FIELDS_PER_KEY:
        raise RequestFieldError((key,), f"crosses {len(fields)} fields; at most {MAX_FIELDS_PER_KEY}")
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
    """A number in (0, 1], `{"default": rate}`, or `{"<field>[|field]": {"<value>[|value]": rate}, "default": rate}`.

    A table without a default must list every cell of its fields."""
    if raw is None:
        return ResponseRates(default=1.0)
    if not isinstance(raw, Mapping):
        return ResponseRates(default=_parse_rate((), raw))
    default = _parse_rate(("default",), raw["default"]) if "default" in raw else None
    tables = [(str(key), table) for key, table in raw.items() if key != "default"]
    if not tables and default is not None:
        return ResponseRates(default=default)
    if len(tables) != 1:
        raise RequestFieldError((), "give one rate table (one field or one 'field|field' key) plus an optional default")
    ((key, table),) = tables
    fields = _categorical_fields(key)
    if not isinstance(table, Mapping) or not table:
        raise RequestFieldError((key,), "must be a non-empty object of value: rate")
    _refuse_repeated_cells(key, [str(cell) for cell in table])
    rates = {_check_cell(key, str(cell), fields): _parse_rate((key, str(cell)), rate) for cell, rate in table.items()}
    if default is None:
        unlisted = [
            cell for cell in itertools.product(*(PROFILE_CATEGORIES[field] for field in fields)) if cell not in rates
        ]
        if unlisted:
            shown = ", ".join(CELL_SEPARATOR.join(cell) for cell in unlisted[:5]) + (", …" if len(unlisted) > 5 else "")
            raise RequestFieldError(
                (key,),
                f"no rate for {len(unlisted)} cell(s) ({shown}) and no default; list every cell or add a default",
            )
        # Every cell is listed: members without a value for the table's fields get the lowest rate
        # (the cautious guess: more invitations, never fewer completes than planned).
        default = min(rates.values())
    return ResponseRates(default=default, fields=fields, rates=rates)


def _refuse_repeated_cells(key: str, cells: list[str]) -> None:
    seen: dict[tuple[str, ...], str] = {}
    for cell in cells:
        values = split_key(cell)
        if values in seen:
            raise RequestFieldError((key, cell), f"the same cell as {seen[values]!r}")
        seen[values] = cell


def _parse_rate(path: tuple[str, ...], rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise RequestFieldError(path, f"rate must be a number in (0, 1], got {rate!r}")
    return float(rate)
