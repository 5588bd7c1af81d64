"""Turn a parsed profile-survey response into `users.profile` attributes, driven by profile_mapping.yaml.

Pure functions, no I/O beyond reading the mapping file. `load_profile_mapping` validates the
mapping up front (kinds, sources, every recode target against the contract's values), so a typo
fails at load, not on the millionth response. `normalize_profile` then never writes a value the
contract does not allow: answers without a recode, implausible years and values outside the allowed
set come back as `ProfileProblem`s and the attribute stays absent. Unanswered questions are simply
absent — never an empty string. A `ProfileProblem` never holds what the member wrote or the value it
would have given (answers can be special-category data, and problems end up in run metadata): it
names the attribute, the question, the answer's option id when it has one, and what was wrong.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from panel_pipeline.extractor.responses import Answer, SurveyResponse
from panel_pipeline.shared.contract import AGE_BAND_LOWER_BOUNDS, PROFILE_CATEGORIES

KINDS = frozenset({"choice", "multi", "birth_year", "number", "text"})
YEAR_PATTERN = re.compile(r"^\s*(\d{4})(?:\.0+)?\s*$")
AGE_BANDS = PROFILE_CATEGORIES["age_band"]


class MappingError(ValueError):
    """profile_mapping.yaml is invalid; the message names the attribute and what is wrong."""


@dataclass(frozen=True)
class Source:
    shortname: str | None = None
    survey_id: str | None = None
    question_id: str | None = None

    def matches(self, survey_id: str, question_id: str, shortname: str | None) -> bool:
        if self.shortname is not None:
            return shortname is not None and _match_key(shortname) == _match_key(self.shortname)
        return self.survey_id == survey_id and self.question_id == question_id


@dataclass(frozen=True)
class AttributeRule:
    attribute: str
    kind: str
    sources: tuple[Source, ...]
    recode: Mapping[str, str | None] = field(default_factory=dict)
    allowed: frozenset[str] | None = None
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class ProfileMapping:
    rules: tuple[AttributeRule, ...]

    def rules_for(self, survey_id: str, question_id: str, shortname: str | None) -> list[AttributeRule]:
        return [rule for rule in self.rules if any(s.matches(survey_id, question_id, shortname) for s in rule.sources)]


@dataclass(frozen=True)
class ProfileProblem:
    attribute: str
    question_id: str
    answer_code: str | None  # the SurveyGizmo option id of the answer, when it has one; never its text
    reason: str  # never the answer's text or value

    def __str__(self) -> str:
        return f"{self.attribute} (question {self.question_id}): {self.reason}"


@dataclass(frozen=True)
class NormalizedProfile:
    """Attributes to set on `users.profile`, and what could not be mapped (for review)."""

    profile: dict[str, Any]
    problems: tuple[ProfileProblem, ...]


def default_mapping_path() -> Path:
    return Path(str(resources.files("panel_pipeline.extractor") / "profile_mapping.yaml"))


def load_profile_mapping(path: Path | str | None = None) -> ProfileMapping:
    document = yaml.safe_load(Path(path or default_mapping_path()).read_text(encoding="utf-8"))
    attributes = document.get("attributes") if isinstance(document, Mapping) else None
    if not isinstance(attributes, Mapping) or not attributes:
        raise MappingError("the mapping needs a non-empty `attributes` object")
    return ProfileMapping(tuple(_rule(str(name), spec) for name, spec in attributes.items()))


def _rule(attribute: str, spec: Any) -> AttributeRule:
    if not isinstance(spec, Mapping):
        raise MappingError(f"{attribute}: expected an object")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise MappingError(f"{attribute}: kind {kind!r} is not one of {', '.join(sorted(KINDS))}")
    allowed = _allowed_values(attribute, spec)
    recode = _recode(attribute, spec.get("recode") or {}, allowed)
    if kind in ("choice", "multi") and not recode:
        raise MappingError(f"{attribute}: a {kind} attribute needs a `recode`")
    minimum, maximum = _bounds(attribute, kind, spec)
    return AttributeRule(attribute, kind, _sources(attribute, spec.get("sources")), recode, allowed, minimum, maximum)


def _allowed_values(attribute: str, spec: Mapping[str, Any]) -> frozenset[str] | None:
    if attribute in PROFILE_CATEGORIES:
        return frozenset(PROFILE_CATEGORIES[attribute])
    values = spec.get("values")
    return frozenset(str(value) for value in values) if values else None


def _recode(attribute: str, recode: Any, allowed: frozenset[str] | None) -> dict[str, str | None]:
    if not isinstance(recode, Mapping):
        raise MappingError(f"{attribute}: recode must be an object of answer text -> value")
    keyed: dict[str, str | None] = {}
    for text, value in recode.items():
        if value is not None and allowed is not None and str(value) not in allowed:
            raise MappingError(
                f"{attribute}: recode target {value!r} is not an allowed value ({', '.join(sorted(allowed))})"
            )
        keyed[_match_key(str(text))] = None if value is None else str(value)
    return keyed


def _sources(attribute: str, sources: Any) -> tuple[Source, ...]:
    if not isinstance(sources, list) or not sources:
        raise MappingError(f"{attribute}: `sources` must be a non-empty list")
    parsed = []
    for source in sources:
        if isinstance(source, Mapping) and source.get("shortname"):
            parsed.append(Source(shortname=str(source["shortname"])))
        elif isinstance(source, Mapping) and source.get("survey_id") and source.get("question_id"):
            parsed.append(Source(survey_id=str(source["survey_id"]), question_id=str(source["question_id"])))
        else:
            raise MappingError(f"{attribute}: source {source!r} needs a shortname, or a survey_id and a question_id")
    return tuple(parsed)


def _bounds(attribute: str, kind: str, spec: Mapping[str, Any]) -> tuple[float | None, float | None]:
    low_key, high_key = ("min_age", "max_age") if kind == "birth_year" else ("min", "max")
    try:
        low = float(spec[low_key]) if low_key in spec else None
        high = float(spec[high_key]) if high_key in spec else None
    except (TypeError, ValueError):
        raise MappingError(f"{attribute}: {low_key}/{high_key} must be numbers") from None
    return low, high


def _match_key(text: str) -> str:
    """Answer text for matching: Unicode-composed, case-folded, straight quotes, single spaces."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.casefold().split())


def question_shortnames(survey: Mapping[str, Any]) -> dict[str, str]:
    """Question id -> shortname for every question (grid rows included) of a survey definition."""
    names: dict[str, str] = {}
    for page in survey.get("pages") or []:
        _collect_shortnames(page.get("questions") or [], names)
    return names


def _collect_shortnames(questions: Iterable[Any], names: dict[str, str]) -> None:
    for question in questions:
        if not isinstance(question, Mapping):
            continue
        if question.get("shortname"):
            names[str(question["id"])] = str(question["shortname"])
        _collect_shortnames(question.get("sub_questions") or [], names)


def normalize_profile(
    response: SurveyResponse,
    mapping: ProfileMapping,
    *,
    shortnames: Mapping[str, str] | None = None,
    as_of: dt.date,
) -> NormalizedProfile:
    """Profile attributes from one response; `shortnames` from `question_shortnames(survey)`."""
    profile: dict[str, Any] = {}
    problems: list[ProfileProblem] = []
    for question_id, answer in response.answers.items():
        if not answer.is_answered:
            continue
        shortname = (shortnames or {}).get(question_id)
        for rule in mapping.rules_for(response.survey_id, question_id, shortname):
            values, problem = _apply(rule, answer, as_of)
            if problem is not None:
                problems.append(problem)
            for attribute, value in values.items():
                _set_once(profile, problems, attribute, value, question_id)
    return NormalizedProfile(profile, tuple(problems))


def _set_once(
    profile: dict[str, Any], problems: list[ProfileProblem], attribute: str, value: Any, question_id: str
) -> None:
    """First answer wins; a different answer to the same attribute in one response is reported."""
    if attribute not in profile:
        profile[attribute] = value
    elif profile[attribute] != value:
        problems.append(
            ProfileProblem(attribute, question_id, None, "conflicts with the answer to another question; kept that one")
        )


def _apply(rule: AttributeRule, answer: Answer, as_of: dt.date) -> tuple[dict[str, Any], ProfileProblem | None]:
    text = _single_text(answer)
    try:
        if rule.kind == "birth_year":
            return _birth_year(rule, text, as_of)
        if rule.kind == "choice":
            values = _choice(rule, text)
        elif rule.kind == "multi":
            values = _multi(rule, answer)
        elif rule.kind == "number":
            values = _number(rule, text)
        else:
            values = {rule.attribute: text.strip()}
        _check_allowed(rule, values.get(rule.attribute))
        return values, None
    except _Rejected as rejected:
        code = rejected.option_id or answer.option_id
        return rejected.partial, ProfileProblem(rule.attribute, answer.question_id, code, rejected.reason)


class _Rejected(Exception):
    def __init__(self, reason: str, partial: dict[str, Any] | None = None, option_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial or {}
        self.option_id = option_id


def _check_allowed(rule: AttributeRule, value: Any) -> None:
    if rule.allowed is None or value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if str(item) not in rule.allowed:
            raise _Rejected(f"the answer is not an allowed value ({', '.join(sorted(rule.allowed))})")


def _outside(rule: AttributeRule, number: float) -> bool:
    return (rule.minimum is not None and number < rule.minimum) or (rule.maximum is not None and number > rule.maximum)


def _bound(limit: float | None) -> str:
    return "none" if limit is None else f"{limit:g}"


def _single_text(answer: Answer) -> str:
    if answer.value is not None:
        return answer.value
    return next(iter(answer.selected.values())) if len(answer.selected) == 1 else ""


def _recoded(rule: AttributeRule, text: str, option_id: str | None = None) -> str | None:
    key = _match_key(text)
    if key not in rule.recode:
        raise _Rejected("the answer has no recode in profile_mapping.yaml", option_id=option_id)
    return rule.recode[key]


def _choice(rule: AttributeRule, text: str) -> dict[str, Any]:
    value = _recoded(rule, text)
    return {} if value is None else {rule.attribute: value}


def _multi(rule: AttributeRule, answer: Answer) -> dict[str, Any]:
    texts: Sequence[tuple[str | None, str]] = list(answer.selected.items()) or (
        [(answer.option_id, answer.value)] if answer.value else []
    )
    values: list[str] = []
    for option_id, text in texts:
        value = _recoded(rule, text, option_id)
        if value is not None and value not in values:
            values.append(value)
    return {rule.attribute: values} if values else {}


def _birth_year(rule: AttributeRule, text: str, as_of: dt.date) -> tuple[dict[str, Any], ProfileProblem | None]:
    match = YEAR_PATTERN.match(text)
    if match is None:
        raise _Rejected("the answer is not a four-digit year")
    year = int(match[1])
    age = as_of.year - year
    if _outside(rule, age):
        raise _Rejected(
            f"the birth year gives an age outside min_age {_bound(rule.minimum)} / max_age {_bound(rule.maximum)}"
        )
    values: dict[str, Any] = {"birth_year": year, "age": age}
    if age < AGE_BAND_LOWER_BOUNDS[0]:
        raise _Rejected(f"the age is below the youngest band {AGE_BANDS[0]}; age_band left out", values)
    band_index = sum(1 for lower in AGE_BAND_LOWER_BOUNDS if age >= lower) - 1
    return {**values, "age_band": AGE_BANDS[band_index]}, None


def _number(rule: AttributeRule, text: str) -> dict[str, Any]:
    try:
        number = float(text.strip())
    except ValueError:
        raise _Rejected("the answer is not a number") from None
    if _outside(rule, number):
        raise _Rejected(f"the answer is outside min {_bound(rule.minimum)} / max {_bound(rule.maximum)}")
    return {rule.attribute: int(number) if number.is_integer() else number}
