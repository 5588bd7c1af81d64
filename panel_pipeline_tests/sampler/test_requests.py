"""Sample request validation, the Mongo filter built from it, and its in-memory twin."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest
from pymongo.database import Database

from panel_pipeline.sampler import store
from panel_pipeline.sampler.requests import (
    FieldworkSettings,
    SampleRequestError,
    filter_mask,
    mongo_filter,
    parse_sample_request,
)

BASE: dict[str, Any] = {"name": "Scotland omnibus", "survey_id": "123456", "size": 1000}
INVITATION_DATA: dict[str, Any] = {
    "survey_name": "Omnibus",
    "duration_minutes": 10,
    "points": 100,
    "survey_url": "https://survey.example/s/1",
}


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
            quotas={
                "gender": {"female": 0.51, "male": 0.49},
                "age_band|gender": {"18-24|female": 0.5, "18-24|male": 0.5},
            },
            exclude={"invited_within_days": 7, "completed_surveys": ["123456"]},
            expected_response_rate={"age_band": {"18-24": 0.06}, "default": 0.2},
            dynamic=True,
            mailing={"template": "new_survey", "default_data": INVITATION_DATA},
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
    pytest.param(
        {"region": {"$function": {"body": "x"}}}, "filters.region: unknown operator $function", id="$function"
    ),
    pytest.param({"region": {"$regex": "^Sc"}}, "filters.region: unknown operator $regex", id="$regex"),
    pytest.param({"region": {"$exists": True}}, "filters.region: unknown operator $exists", id="$exists"),
    pytest.param({"email": {"$eq": "a@b.c"}}, "filters.email: unknown field email", id="unknown-field"),
    pytest.param({"profile.region": "Wales"}, "filters.'profile.region': unknown field", id="dotted-path"),
    pytest.param({"region": {"$in": [1]}}, "filters.region.$in: must be a string", id="wrong-type"),
    pytest.param({"region": {"$in": "Scotland"}}, "filters.region.$in: must be a non-empty list", id="in-not-list"),
    pytest.param({"region": {"$in": []}}, "filters.region.$in: must be a non-empty list", id="in-empty"),
    pytest.param({"region": {"$eq": {"$gt": ""}}}, "filters.region.$eq: must be a string", id="nested-operator"),
    pytest.param({"region": {"$in": [{"$ne": "Wales"}]}}, "filters.region.$in: must be a string", id="nested-in-list"),
    pytest.param({"region": "Narnia"}, "filters.region.$eq: unknown value 'Narnia'", id="unknown-value"),
    pytest.param({"region": ["Wales"]}, "filters.region.$eq: must be a string", id="list-shorthand"),
    pytest.param(
        {"region": {"$gt": "London"}}, "filters.region.$gt: $gt needs a numeric field", id="order-on-category"
    ),
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
        pytest.param({"size": 0}, "size: must be a whole number from 1 to 1000000, got 0", id="size"),
        pytest.param({"tolerance": -1}, "tolerance:", id="tolerance"),
        pytest.param({"preset": "world"}, "preset:", id="preset"),
        pytest.param({"missing": "drop"}, 'missing: must be "include" or "exclude", got \'drop\'', id="missing"),
        pytest.param({"missing": True}, 'missing: must be "include" or "exclude", got True', id="missing-bool"),
        pytest.param(
            {"quotas": {"gender": {"female": 0.6, "male": 0.6}}}, "quotas.gender: shares must sum to 1", id="quota-sum"
        ),
        pytest.param(
            {"quotas": {"gender": {"nonbinary": 1.0}}},
            "quotas.gender.nonbinary: unknown gender value",
            id="quota-value",
        ),
        pytest.param(
            {"quotas": {"shoe_size": {"9": 1.0}}}, "quotas.shoe_size: unknown field shoe_size", id="quota-field"
        ),
        pytest.param(
            {"quotas": {"age_band|gender": {"18-24": 1.0}}},
            "quotas.age_band|gender.18-24: needs 2 values",
            id="quota-cell",
        ),
        pytest.param(
            {"expected_response_rate": 0}, "expected_response_rate: rate must be a number in (0, 1]", id="rate"
        ),
        pytest.param(
            {"expected_response_rate": {"region": {"Wales": 2}}},
            "expected_response_rate.region.Wales: rate",
            id="cell-rate",
        ),
        pytest.param({"exclude": {"invited_within_days": 7, "bounced": True}}, "exclude.bounced:", id="exclude-extra"),
    ],
)
def test_other_invalid_fields_are_named(fields: dict[str, Any], message: str) -> None:
    assert message in rejection(request_with(**fields))


OUT_OF_TYPE_OR_RANGE = [
    pytest.param({"size": "200"}, "size: must be a whole number from 1 to 1000000, got '200'", id="size-text"),
    pytest.param({"size": True}, "size: must be a whole number from 1 to 1000000, got True", id="size-true"),
    pytest.param({"size": -5}, "size: must be a whole number from 1 to 1000000, got -5", id="size-negative"),
    pytest.param({"size": 10**9}, "size: must be a whole number from 1 to 1000000, got 1000000000", id="size-absurd"),
    pytest.param({"size": 20.5}, "size: must be a whole number", id="size-fraction"),
    pytest.param(
        {"seed": -1}, "seed: must be a whole number from 0 to 9223372036854775807, got -1", id="seed-negative"
    ),
    pytest.param({"seed": 2**64}, "seed: must be a whole number from 0 to", id="seed-past-int64"),
    pytest.param({"seed": "42"}, "seed: must be a whole number", id="seed-text"),
    pytest.param(
        {"tolerance": "1"}, "tolerance: must be a number of percentage points in (0, 100]", id="tolerance-text"
    ),
    pytest.param({"tolerance": float("nan")}, "tolerance: must be a number", id="tolerance-nan"),
    pytest.param({"dynamic": "yes"}, "dynamic: must be true or false, got 'yes'", id="dynamic-text"),
    pytest.param({"dynamic": 1}, "dynamic: must be true or false, got 1", id="dynamic-one"),
    pytest.param({"closes_at": "2026-12-31"}, "closes_at: must be a date", id="closes-at-text"),
    pytest.param({"name": ["x"]}, "name: must be non-empty text", id="name-list"),
    pytest.param({"name": "x" * 201}, "name: at most 200 characters", id="name-long"),
    pytest.param({"survey_id": -3}, "survey_id: must be a survey id", id="survey-id-negative"),
    pytest.param({"survey_id": "12 OR 1=1"}, "survey_id: must be a survey id", id="survey-id-spaces"),
    pytest.param(
        {"exclude": {"completed_surveys": ["9" * 19]}},
        "exclude.completed_surveys.0: must be a survey id",
        id="completed-past-int64",
    ),
    pytest.param(
        {"exclude": {"invited_within_days": 10**7}},
        "exclude.invited_within_days: must be a whole number from 0 to 3650, got 10000000",
        id="days-absurd",
    ),
    pytest.param(
        {"exclude": {"invited_within_days": "7"}}, "exclude.invited_within_days: must be a whole number", id="days-text"
    ),
    pytest.param({"exclude": [7]}, "exclude: must be an object", id="exclude-list"),
    pytest.param(
        {"exclude": {"completed_surveys": "123"}},
        "exclude.completed_surveys: must be a list of survey ids",
        id="completed-text",
    ),
    pytest.param(
        {"exclude": {"completed_surveys": ["1", None]}},
        "exclude.completed_surveys.1: must be a survey id",
        id="completed-null",
    ),
    pytest.param(
        {"quotas": {"gender": {"female": 0.5, " female ": 0.5}}},
        "quotas.gender.' female ': the same cell as 'female'",
        id="quota-repeated-cell",
    ),
    pytest.param(
        {"quotas": {"age_band|gender|region|education|vote_2024": {"18-24|female|Wales|other|green": 1}}},
        "quotas.age_band|gender|region|education|vote_2024: crosses 5 fields; at most 4",
        id="quota-too-crossed",
    ),
    pytest.param(
        {"expected_response_rate": {"region": {"Wales": 0.3}}},
        "expected_response_rate.region: no rate for 11 cell(s) (North East, North West, "
        "Yorkshire and The Humber, East Midlands, West Midlands, …) and no default",
        id="rate-table-without-default",
    ),
]


@pytest.mark.parametrize(("fields", "message"), OUT_OF_TYPE_OR_RANGE)
def test_wrong_types_and_ranges_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    assert message in rejection(request_with(**fields))


def test_a_whole_float_is_a_whole_number() -> None:
    """JSON numbers may arrive as doubles: 200.0 is the size 200."""
    assert parse_sample_request(request_with(size=200.0, seed=7.0)).size == 200


def test_a_rate_table_listing_every_cell_needs_no_default() -> None:
    rates = {"gender": {"female": 0.2, "male": 0.3, "other": 0.25, "prefer_not_to_say": 0.4}}
    request = parse_sample_request(request_with(expected_response_rate=rates))
    assert request.expected_response_rate.rate_for(("male",)) == 0.3
    assert request.expected_response_rate.rate_for(()) == 0.2  # no gender recorded: the lowest rate


def test_a_default_alone_is_one_overall_rate() -> None:
    assert (
        parse_sample_request(request_with(expected_response_rate={"default": 0.3})).expected_response_rate.rate_for(
            ("x",)
        )
        == 0.3
    )


def test_targets_crossing_more_cells_than_an_index_holds_are_refused() -> None:
    keys = [
        "age_band|gender|region|education",
        "vote_2019|vote_2024|region|education",
        "social_grade|eu_ref_vote|region|age_band",
    ]
    quotas = {key: {"|".join(_first_values(key)): 1.0} for key in keys}
    quotas |= {"|".join(reversed(key.split("|"))): {"|".join(reversed(_first_values(key))): 1.0} for key in keys}
    assert "quotas: the targets cross too many cells" in rejection(request_with(quotas=quotas))


def _first_values(key: str) -> list[str]:
    from panel_pipeline.shared.contract import PROFILE_CATEGORIES

    return [PROFILE_CATEGORIES[field][0] for field in key.split("|")]


INVITATIONS = [
    pytest.param("new_survey", "mailing: must be an object with template and default_data", id="not-an-object"),
    pytest.param(
        {"template": "no_such", "default_data": INVITATION_DATA},
        "mailing.template: unknown template 'no_such'; built: new_survey",
        id="unknown-template",
    ),
    pytest.param(
        {"template": ["new_survey"], "default_data": INVITATION_DATA},
        "mailing.template: must be a template name (text), got list",
        id="template-list",
    ),
    pytest.param({"template": {"$ne": 1}}, "mailing.template: must be a template name", id="template-object"),
    pytest.param(
        {"template": "new_survey", "default_data": "x"},
        "mailing.default_data: must be an object of template variables",
        id="data-text",
    ),
    pytest.param(
        {"template": "new_survey", "default_data": {k: v for k, v in INVITATION_DATA.items() if k != "points"}},
        "mailing.default_data: template new_survey needs points, missing (or null) in the default data",
        id="missing-variable",
    ),
    pytest.param(
        {"template": "new_survey", "default_data": {**INVITATION_DATA, "points": None}},
        "needs points",
        id="null-variable",
    ),
    pytest.param({"template": "new_survey"}, "needs duration_minutes, points, survey_name, survey_url", id="no-data"),
    pytest.param(
        {"template": "new_survey", "default_data": {**INVITATION_DATA, "html": {}}},
        "mailing.default_data.html: is set by the Mailer",
        id="reserved-html",
    ),
    pytest.param(
        {"template": "new_survey", "default_data": {**INVITATION_DATA, "unsubscribe_url": "https://evil.example"}},
        "mailing.default_data.unsubscribe_url: is set by the Mailer",
        id="own-unsubscribe-link",
    ),
    pytest.param(
        {"template": "new_survey", "default_data": {**INVITATION_DATA, "when": dt.datetime(2026, 1, 1)}},
        "mailing.default_data.when: must be text, a number, true/false, a list or an object, got datetime",
        id="not-json",
    ),
    pytest.param(
        {"template": "new_survey", "default_data": {**INVITATION_DATA, "points": float("inf")}},
        "mailing.default_data.points: must be a finite number",
        id="infinite",
    ),
    pytest.param(
        {"template": "new_survey", "default_data": INVITATION_DATA, "data": {}}, "mailing.data:", id="unknown-key"
    ),
]


@pytest.mark.parametrize(("mailing", "message"), INVITATIONS)
def test_an_invitation_that_cannot_be_sent_is_refused_before_the_draw(mailing: Any, message: str) -> None:
    assert message in rejection(request_with(mailing=mailing))


def test_per_member_variables_need_not_be_in_the_default_data() -> None:
    request = parse_sample_request(request_with(mailing={"template": "new_survey", "default_data": INVITATION_DATA}))
    assert request.mailing is not None and request.mailing.template == "new_survey"
    assert "first_name" not in INVITATION_DATA


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SampleRequestError) as caught:
        parse_sample_request({"name": "x", "size": -1, "filters": {"region": {"$regex": "x"}}})
    assert len(caught.value.messages) == 3  # survey_id missing, size, filters


def test_mongo_filter_is_on_profile_fields_and_active_members_only() -> None:
    request = parse_sample_request(
        request_with(
            filters={"region": {"$in": ["Scotland", "Wales"]}, "age": {"$gte": 18, "$lte": 34}, "gender": "female"}
        )
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
    {"gender": "male", "birth_year": 1990, "age_band": "18-24"},  # a stale stored band: 35 in 2025
    {"birth_year": 2012},  # under 18
    {"birth_year": 1950, "age_band": "65-74"},  # 75 in 2025
]
FILTER_CASES = [
    {"region": {"$in": ["Scotland", "Wales"]}},
    {"region": {"$nin": ["Scotland"]}},
    {"region": {"$ne": "London"}},
    {"gender": "female", "age": {"$lt": 40}},
    {"age": {"$gte": 30, "$lte": 70}},
    {"birth_year": {"$gt": 1990}},
    {"age_band": "35-44"},
    {"age_band": {"$in": ["18-24", "75+"]}},
    {"age_band": {"$nin": ["25-34", "35-44"]}},
    {"age_band": {"$ne": "75+"}, "age": {"$gte": 20}},
    {"age_band": {"$eq": "65-74"}},
]


@pytest.mark.parametrize("filters", FILTER_CASES, ids=[str(case) for case in FILTER_CASES])
def test_filter_mask_agrees_with_mongo(mongo_db: Database, filters: dict[str, Any]) -> None:
    mongo_db.users.insert_many(
        [{"n": index, "status": "active", "profile": profile} for index, profile in enumerate(MEMBERS)]
    )
    mongo_db.users.insert_one({"n": 99, "status": "deleted", "profile": MEMBERS[0]})
    request = parse_sample_request(request_with(filters=filters))
    from_mongo = sorted(document["n"] for document in mongo_db.users.find(mongo_filter(request, as_of_year=2025)))
    panel = store.profiles_frame([{"_id": index, "profile": profile} for index, profile in enumerate(MEMBERS)], 2025)
    assert from_mongo == list(np.flatnonzero(filter_mask(panel, request.filters)))


def test_an_age_band_filter_reads_birth_year_never_a_stored_band() -> None:
    request = parse_sample_request(request_with(filters={"age_band": {"$in": ["18-24", "75+"]}}))
    assert mongo_filter(request, as_of_year=2025) == {
        "status": "active",
        "$or": [{"profile.birth_year": {"$lte": 2007, "$gte": 2001}}, {"profile.birth_year": {"$lte": 1950}}],
    }


def test_a_refusal_quotes_no_address_or_link() -> None:
    """The message is stored on the request and logged: a wrong value that is an address stays out."""
    message = rejection(
        request_with(survey_id="jo.bloggs@example.org", mailing={"template": "https://x.example/t?token=abc"})
    )
    assert "survey_id: must be a survey id" in message and "mailing.template: unknown template" in message
    assert "bloggs" not in message and "x.example" not in message


def test_a_set_filter_names_each_value_once() -> None:
    request = parse_sample_request(request_with(filters={"region": {"$in": ["Wales", "Wales", "Scotland", "Wales"]}}))
    assert mongo_filter(request, as_of_year=2025)["profile.region"] == {"$in": ["Wales", "Scotland"]}


def test_the_largest_numeric_survey_id_accepted_can_be_queried(mongo_db: Database) -> None:
    """Completed surveys are matched as text and as numbers: an accepted id must fit BSON's int64."""
    from panel_pipeline.sampler.store import excluded_user_ids

    largest = str(2**63 - 1)
    mongo_db.transactions.insert_one({"user_id": "u1", "survey_id": int(largest)})
    request = parse_sample_request(request_with(exclude={"completed_surveys": [largest]}))
    assert excluded_user_ids(mongo_db, request, dt.datetime.now(dt.UTC)) == {"u1"}


def test_missing_values_are_included_unless_the_request_excludes_them() -> None:
    assert parse_sample_request(request_with()).missing == "include"
    assert parse_sample_request(request_with(missing=None)).missing == "include"
    assert parse_sample_request(request_with(missing="exclude")).missing == "exclude"


def test_fieldwork_settings_default_with_an_invitation_and_parse_when_given() -> None:
    assert parse_sample_request(BASE).fieldwork is None
    invited = request_with(mailing={"template": "new_survey", "default_data": INVITATION_DATA})
    defaults = parse_sample_request(invited).fieldwork
    assert defaults == FieldworkSettings()
    assert (defaults.waves, defaults.reminder_after_hours, defaults.max_reminders) == (True, 48.0, 1)
    assert (defaults.first_wave_share, defaults.weight_bounds, defaults.top_up_every_hours) == (0.7, (0.2, 5.0), 12.0)
    assert parse_sample_request(invited | {"fieldwork": False}).fieldwork is None
    close_at = dt.datetime(2025, 7, 1)
    given = parse_sample_request(
        request_with(fieldwork={"close_at": close_at, "waves": False, "max_reminders": 2, "weight_bounds": [0.3, 4]})
    ).fieldwork
    assert given is not None
    assert given.close_at == close_at.replace(tzinfo=dt.UTC) and given.waves is False
    assert (given.max_reminders, given.weight_bounds) == (2, (0.3, 4.0))


@pytest.mark.parametrize(
    ("fieldwork", "message"),
    [
        ({"reminder_after_hours": 0}, "fieldwork.reminder_after_hours: must be a number of hours from 1 to 1440"),
        ({"reminder_after_hours": "48"}, "fieldwork.reminder_after_hours: must be a number of hours"),
        ({"max_reminders": 1.5}, "fieldwork.max_reminders: must be a whole number from 0 to 5"),
        ({"waves": "yes"}, "fieldwork.waves: must be true or false"),
        ({"close_at": "2025-07-01"}, "fieldwork.close_at: must be a date"),
        ({"first_wave_share": 0}, "fieldwork.first_wave_share: must be a share in (0, 1]"),
        ({"weight_bounds": [2, 5]}, "fieldwork.weight_bounds: must satisfy 0 <= lowest <= 1 <= highest"),
        ({"weight_bounds": 5}, "fieldwork.weight_bounds: must be [lowest, highest]"),
        ({"top_up_every_hours": 0}, "fieldwork.top_up_every_hours: must be a number of hours above 0"),
        ({"reminders": 1}, "fieldwork.reminders: unknown setting"),
        ("soon", "fieldwork: must be an object of fieldwork settings or true/false"),
    ],
)
def test_a_wrong_fieldwork_setting_is_named(fieldwork: Any, message: str) -> None:
    assert message in rejection(request_with(fieldwork=fieldwork))


def test_a_request_gives_its_own_response_rate_only_when_it_sets_one() -> None:
    assert not parse_sample_request(BASE).gives_response_rate
    assert not parse_sample_request(request_with(expected_response_rate=None)).gives_response_rate
    assert parse_sample_request(request_with(expected_response_rate=0.2)).gives_response_rate
