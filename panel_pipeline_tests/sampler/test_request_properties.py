"""Property tests over `samples` documents: generated requests, valid and mutated into nonsense.

Each document is either accepted by `parse_sample_request` and then drawable (`select` on a small
synthetic panel, the exclusions' date arithmetic, the Mongo filter and the written-back result
encodable as BSON, the invitation's data fills its template), or refused with a SampleRequestError
whose every message starts with a field path. Never another exception: one would be retried three
times by the queue instead of failing at once with a reason.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import bson
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.database import Database

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler.quotas import select
from panel_pipeline.sampler.requests import (
    NUMERIC_BOUNDS,
    SampleRequest,
    SampleRequestError,
    built_templates,
    mongo_filter,
    parse_sample_request,
)
from panel_pipeline.sampler.store import excluded_user_ids
from panel_pipeline.shared.contract import PROFILE_CATEGORIES
from panel_pipeline.shared.templates import check_recipient_data, escape_for_html

FIELDS = (
    "name",
    "survey_id",
    "size",
    "tolerance",
    "seed",
    "preset",
    "filters",
    "quotas",
    "exclude",
    "expected_response_rate",
    "dynamic",
    "closes_at",
    "mailing",
    "missing",
)
MESSAGE = re.compile(r"^(?P<field>[a-z_]+)(?:\.\S.*)?: \S")  # a top-level field, maybe a path below it, then the reason
PANEL = generate_profiles(400, seed=11, as_of_year=2026)
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
SEEN: Counter[str] = Counter()
INVITATION_DATA = {
    "survey_name": "Omnibus",
    "duration_minutes": 10,
    "points": 100,
    "survey_url": "https://survey.example/s/1",
}

CATEGORICAL = sorted(PROFILE_CATEGORIES)
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.datetimes()
    | st.builds(ObjectId)
    | st.sampled_from(["$where", "$gt", "18-24", "Scotland", "default", "new_survey", "|"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["$in", "$gt", "gender", "default"]), children, max_size=3
        )
    ),
    max_leaves=6,
)


@st.composite
def shares(draw: Callable, values: tuple[str, ...]) -> dict[str, float]:
    chosen = draw(st.lists(st.sampled_from(values), min_size=1, max_size=len(values), unique=True))
    weights = [draw(st.integers(min_value=1, max_value=5)) for _ in chosen]
    return {value: weight / sum(weights) for value, weight in zip(chosen, weights, strict=True)}


@st.composite
def condition(draw: Callable, field: str) -> Any:
    if field in NUMERIC_BOUNDS:
        low, high = NUMERIC_BOUNDS[field]
        operator = draw(st.sampled_from(["$gte", "$lte", "$gt", "$lt", "$eq", "$ne", "$in", "$nin"]))
        number = st.integers(min_value=low, max_value=high)
        return {
            operator: draw(st.lists(number, min_size=1, max_size=3)) if operator in ("$in", "$nin") else draw(number)
        }
    values = PROFILE_CATEGORIES[field]
    operator = draw(st.sampled_from(["$eq", "$ne", "$in", "$nin", "shorthand"]))
    if operator == "shorthand":
        return draw(st.sampled_from(values))
    if operator in ("$in", "$nin"):
        return {operator: draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))}
    return {operator: draw(st.sampled_from(values))}


@st.composite
def valid_request(draw: Callable) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": draw(st.text(min_size=1, max_size=20).filter(str.strip)),
        "survey_id": draw(st.integers(min_value=1, max_value=10**9) | st.from_regex(r"\A[0-9]{1,9}\Z")),
        "size": draw(st.integers(min_value=1, max_value=300)),
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "tolerance": st.floats(min_value=0.1, max_value=100),
        "seed": st.integers(min_value=0, max_value=2**63 - 1),
        "preset": st.just("uk_nat_rep"),
        "dynamic": st.booleans(),
        "closes_at": st.datetimes(timezones=st.just(dt.UTC)),
        "filters": st.lists(
            st.sampled_from(sorted(PROFILE_CATEGORIES) + ["age", "birth_year"]), min_size=1, max_size=2, unique=True
        ).flatmap(lambda fields: st.fixed_dictionaries({field: condition(field) for field in fields})),
        "quotas": st.lists(st.sampled_from(CATEGORICAL), min_size=1, max_size=2, unique=True).flatmap(
            lambda fields: st.fixed_dictionaries({field: shares(PROFILE_CATEGORIES[field]) for field in fields})
        ),
        "exclude": st.fixed_dictionaries(
            {},
            optional={
                "invited_within_days": st.integers(0, 3650),
                "completed_surveys": st.lists(
                    st.integers(1, 2**63 - 1) | st.from_regex(r"\A[0-9]{1,19}\Z"), max_size=3
                ),
            },
        ),
        "expected_response_rate": st.floats(min_value=0.01, max_value=1)
        | st.sampled_from(CATEGORICAL).flatmap(
            lambda field: st.fixed_dictionaries(
                {field: st.fixed_dictionaries({value: st.floats(0.05, 1) for value in PROFILE_CATEGORIES[field]})}
            )
        )
        | st.fixed_dictionaries(
            {"region": st.fixed_dictionaries({"Wales": st.floats(0.05, 1)}), "default": st.floats(0.05, 1)}
        ),
        "mailing": st.just({"template": "new_survey", "default_data": INVITATION_DATA}),
        "missing": st.sampled_from(["include", "exclude"]),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            document[key] = draw(strategy)
    return document


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_request(draw: Callable) -> dict[str, Any]:
    """A valid request with one to three places replaced by junk, deleted, or given an unknown key."""
    document = json.loads(
        json.dumps(draw(valid_request()), default=str)
    )  # a deep copy (closes_at becomes text: a mutation too)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths)) if paths else ("size",)
        parent: Any = document
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "unknown_key"]))
        if action == "delete" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif action == "unknown_key" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(junk)
        else:
            parent[path[-1]] = draw(junk | st.sampled_from([-1, 0, 10**7, 2**64, 1e308, float("nan"), True, "", "200"]))
    return document


def check(document: dict[str, Any], db: Database) -> None:
    try:
        request = parse_sample_request(document)
    except SampleRequestError as refused:
        SEEN["refused"] += 1
        assert refused.messages
        for message in refused.messages:
            match = MESSAGE.match(message)
            assert match, message
            assert match["field"] in FIELDS, message
        return
    SEEN["accepted"] += 1
    drawable(request, db)


def drawable(request: SampleRequest, db: Database) -> None:
    result = select(PANEL, request)
    bson.encode({"result": result.to_document(), "seed_used": result.seed, "filter": mongo_filter(request, NOW.year)})
    excluded_user_ids(db, request, NOW)  # the exclusions' date arithmetic and queries, on the real mongod
    if request.mailing is not None:
        data = {"first_name": "Ann", "unsubscribe_url": "https://panel.example/u", **request.mailing.default_data}
        assert check_recipient_data(built_templates()[request.mailing.template], data) == []
        json.dumps(escape_for_html(data), allow_nan=False)


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    # `db` is read-only here (the queries run on an empty database), so sharing it across examples is fine.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(valid_request())
def test_generated_valid_requests_are_accepted_and_drawable(mongo_db: Database, document: dict[str, Any]) -> None:
    SEEN["valid generated"] += 1
    check(document, mongo_db)


@PROPERTY_SETTINGS
@given(mutated_request())
def test_mutated_requests_are_drawable_or_refused_naming_a_field(mongo_db: Database, document: dict[str, Any]) -> None:
    SEEN["mutated generated"] += 1
    check(document, mongo_db)


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), junk, max_size=8))
def test_documents_of_pure_junk_are_refused_naming_a_field(mongo_db: Database, document: dict[str, Any]) -> None:
    SEEN["junk generated"] += 1
    check(document, mongo_db)


def test_report_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this file: how many documents the properties above generated and refused."""
    generated = SEEN["valid generated"] + SEEN["mutated generated"] + SEEN["junk generated"]
    with capsys.disabled():
        print(
            f"\nsamples documents: {generated} generated ({SEEN['valid generated']} valid, "
            f"{SEEN['mutated generated']} mutated, {SEEN['junk generated']} junk); "
            f"{SEEN['accepted']} accepted and drawn, {SEEN['refused']} refused naming a field"
        )
    if generated:
        assert SEEN["accepted"] + SEEN["refused"] == generated
