"""Sample request validation, the Mongo filter built from it, and its in-memory twin."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pymongo.database import Database

from panel_pipeline.sampler.requests import (
    SampleRequestError,
    filter_mask,
    mongo_filter,
    parse_sample_request,
)

BASE: dict[str, Any] = {"name": "Scotland omnibus", "survey_id": "123456", "size": 1000}


def request_with(**fields: Any) -> dict[str, Any]:
    return BASE | fields


def rejection(document: dict[str, Any]) -> str:
    with pytest.raises(SampleRequestError) as caught:
        parse_sample_request(document)
    return str(caught.value)


def test_a_minimal_request_gets_the_contract_defaults() -> None:
    request = parse_sample_request(BASE | {"_id": "x", "processed": False, "survey_id": 123456})
    assert request.tolerance == 1.0
    assert request.survey_id == "123456"
    assert request.expected_response_rate.rate_for(()) == 1.0
    assert request.filters == () and request.quotas == {} and request.dynamic is False


def test_a_full_request_parses() -> None:
    request = parse_sample_request(
        request_with(
            tolerance=0.5,
            seed=42,
            preset="uk_nat_rep",
            filters={"region": {"$in": ["Scotland"]}, "age": {"$gte": 18, "$lte": 34}},
            quotas={"gender": {"female": 0.51, "male": 0.49}, "age_band|gender": {"18-24|female": 0.5, "18-24|male": 0.5}},
            exclude={"invited_within_days": 7, "completed_surveys": ["123456"]},
            expected_response_rate={"age_band": {"18-24": 0.06}, "default": 0.2},
            dynamic=True,
            mailing={"template": "invite"},
        )
    )
    assert len(request.filters) == 3
    assert request.exclude.invited_within_days == 7
    assert request.expected_response_rate.rate_for(("18-24",)) == 0.06
    assert request.expected_response_rate.rate_for(("25-34",)) == 0.2


REJECTED_FILTERS = [
    pytest.param({"$where": "this.points > 0"}, "filters.$where: operator $where is not allowed", id="$where"),
    pytest.param({"$expr": {"$gt": ["$points", 0]}}, "filters.$expr: operator $expr is not allowed", id="$expr"),
    pytest.param({"$or": [{"region": "Wales"}]}, "filters.$or: operator $or is not allowed", id="$or"),
    pytest.param({"region": {"$where": "1"}}, "filters.region: unknown operator $where", id="field-$where"),
    pytest.param({"region": {"$function": {"body": "x"}}}, "filters.region: unknown operator $function", id="$function"),
    pytest.param({"region": {"$regex": "^Sc"}}, "filters.region: unknown operator $regex", id="$regex"),
    pytest.param({"region": {"$exists": True}}, "filters.region: unknown operator $exists", id="$exists"),
    pytest.param({"email": {"$eq": "a@b.c"}}, "filters.email: unknown field email", id="unknown-field"),
    pytest.param({"profile.region": "Wales"}, "filters.profile.region: unknown field", id="dotted-path"),
    pytest.param({"region": {"$in": [1]}}, "filters.region.$in: must be a string", id="wrong-type"),
    pytest.param({"region": {"$in": "Scotland"}}, "filters.region.$in: must be a non-empty list", id="in-not-list"),
    pytest.param({"region": {"$in": []}}, "filters.region.$in: must be a non-empty list", id="in-empty"),
    pytest.param({"region": {"$eq": {"$gt": ""}}}, "filters.region.$eq: must be a string", id="nested-operator"),
    pytest.param({"region": {"$in": [{"$ne": "Wales"}]}}, "filters.region.$in: must be a string", id="nested-in-list"),
    pytest.param({"region": "Narnia"}, "filters.region.$eq: unknown value 'Narnia'", id="unknown-value"),
    pytest.param({"region": ["Wales"]}, "filters.region.$eq: must be a string", id="list-shorthand"),
    pytest.param({"region": {"$gt": "London"}}, "filters.region.$gt: $gt needs a numeric field", id="order-on-category"),
    pytest.param({"age": {"$gte": "18"}}, "filters.age.$gte: must be a whole number", id="age-string"),
    pytest.param({"age": {"$gte": True}}, "filters.age.$gte: must be a whole number", id="age-bool"),
    pytest.param({"age": {"$gte": 18.5}}, "filters.age.$gte: must be a whole number", id="age-fraction"),
    pytest.param({"age": {"$lte": 400}}, "filters.age.$lte: 400 is outside", id="age-range"),
    pytest.param({"region": {}}, "filters.region: empty condition", id="empty-condition"),
    pytest.param(["region"], "filters: must be an object", id="not-an-object"),
]


@pytest.mark.parametrize(("filters", "message"), REJECTED_FILTERS)
def test_rejected_filter_names_the_field(filters: Any, message: str) -> None:
    assert message in rejection(request_with(filters=filters))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"size": 0}, "size: Input should be greater than 0", id="size"),
        pytest.param({"tolerance": -1}, "tolerance:", id="tolerance"),
        pytest.param({"preset": "world"}, "preset:", id="preset"),
        pytest.param({"quotas": {"gender": {"female": 0.6, "male": 0.6}}}, "quotas.gender: shares must sum to 1", id="quota-sum"),
        pytest.param({"quotas": {"gender": {"nonbinary": 1.0}}}, "quotas.gender.nonbinary: unknown gender value", id="quota-value"),
        pytest.param({"quotas": {"shoe_size": {"9": 1.0}}}, "quotas.shoe_size: unknown field shoe_size", id="quota-field"),
        pytest.param({"quotas": {"age_band|gender": {"18-24": 1.0}}}, "quotas.age_band|gender.18-24: needs 2 values", id="quota-cell"),
        pytest.param({"expected_response_rate": 0}, "expected_response_rate: rate must be a number in (0, 1]", id="rate"),
        pytest.param({"expected_response_rate": {"region": {"Wales": 2}}}, "expected_response_rate.region.Wales: rate", id="cell-rate"),
        pytest.param({"exclude": {"invited_within_days": 7, "bounced": True}}, "exclude.bounced:", id="exclude-extra"),
    ],
)
def test_other_invalid_fields_are_named(fields: dict[str, Any], message: str) -> None:
    assert message in rejection(request_with(**fields))


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SampleRequestError) as caught:
        parse_sample_request({"name": "x", "size": -1, "filters": {"region": {"$regex": "x"}}})
    assert len(caught.value.messages) == 3  # survey_id missing, size, filters


def test_mongo_filter_is_on_profile_fields_and_active_members_only() -> None:
    request = parse_sample_request(
        request_with(filters={"region": {"$in": ["Scotland", "Wales"]}, "age": {"$gte": 18, "$lte": 34}, "gender": "female"})
    )
    assert mongo_filter(request, as_of_year=2025) == {
        "status": "active",
        "profile.region": {"$in": ["Scotland", "Wales"]},
        "profile.birth_year": {"$lte": 2007, "$gte": 1991},
        "profile.gender": {"$eq": "female"},
    }


def test_conflicting_conditions_on_one_path_are_combined_with_and() -> None:
    request = parse_sample_request(request_with(filters={"age": {"$gte": 30}, "birth_year": {"$lte": 1990}}))
    assert mongo_filter(request, as_of_year=2025) == {
        "$and": [{"status": "active"}, {"profile.birth_year": {"$lte": 1995}}, {"profile.birth_year": {"$lte": 1990}}]
    }


MEMBERS = [
    {"region": "Scotland", "gender": "female", "birth_year": 1995},
    {"region": "Wales", "gender": "male", "birth_year": 1960},
    {"region": "London", "gender": "female", "birth_year": 2001},
    {"region": None, "gender": "other", "birth_year": 1980},
    {"gender": "female"},
]
FILTER_CASES = [
    {"region": {"$in": ["Scotland", "Wales"]}},
    {"region": {"$nin": ["Scotland"]}},
    {"region": {"$ne": "London"}},
    {"gender": "female", "age": {"$lt": 40}},
    {"age": {"$gte": 30, "$lte": 70}},
    {"birth_year": {"$gt": 1990}},
]


@pytest.mark.parametrize("filters", FILTER_CASES, ids=[str(case) for case in FILTER_CASES])
def test_filter_mask_agrees_with_mongo(mongo_db: Database, filters: dict[str, Any]) -> None:
    mongo_db.users.insert_many([{"n": index, "status": "active", "profile": profile} for index, profile in enumerate(MEMBERS)])
    mongo_db.users.insert_one({"n": 99, "status": "deleted", "profile": MEMBERS[0]})
    request = parse_sample_request(request_with(filters=filters))
    from_mongo = sorted(document["n"] for document in mongo_db.users.find(mongo_filter(request, as_of_year=2025)))
    panel = pd.DataFrame(MEMBERS)
    panel["age"] = 2025 - panel["birth_year"]
    assert from_mongo == list(np.flatnonzero(filter_mask(panel, request.filters)))
