"""The panel as the Sampler loads it from the real mongod: the same members, values and draw as
reading every profile whole."""

import numpy as np
import pandas as pd
from pymongo import ASCENDING

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler import store
from panel_pipeline.sampler.quotas import panel_fields, select
from panel_pipeline.sampler.requests import mongo_filter, parse_sample_request
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

YEAR = 2025


def insert_panel(db, size: int) -> None:
    profiles = generate_profiles(size, seed=7, as_of_year=YEAR).astype(object).to_dict("records")
    db.users.insert_many(
        [
            {"status": "active", "profile": {key: value for key, value in profile.items() if value is not None}}
            for profile in profiles
        ]
    )


def whole_profiles(db, request) -> pd.DataFrame:
    """The straightforward reading: every matching profile decoded whole."""
    docs = list(db.users.find(mongo_filter(request, YEAR), {"profile": 1}).sort("_id", ASCENDING))
    return store.profiles_frame(docs, YEAR)


def test_the_loaded_panel_matches_the_whole_profiles_and_draws_the_same_sample(mongo_db):
    insert_panel(mongo_db, 3_000)
    mongo_db.users.update_one({"profile.gender": "male"}, {"$unset": {"profile.social_grade": ""}})
    mongo_db.users.update_one({"profile.gender": "female"}, {"$set": {"profile.education": "not a category"}})
    mongo_db.users.insert_one({"status": "unsubscribed", "profile": {"gender": "female"}})
    request = parse_sample_request(
        {
            "name": "t",
            "survey_id": "1",
            "size": 300,
            "preset": "uk_nat_rep",
            "seed": 3,
            "filters": {"age": {"$gte": 25}, "region": {"$nin": ["London"]}},
        }
    )
    loaded = store.load_panel(mongo_db, request, YEAR)
    expected = whole_profiles(mongo_db, request)
    assert list(loaded.columns) == list(panel_fields(request)) and "age" in loaded.columns
    assert loaded.index.equals(expected.index)
    for field in loaded.columns:
        if field in PROFILE_CATEGORIES:
            known = expected[field].where(expected[field].isin(PROFILE_CATEGORIES[field]))
            assert (
                loaded[field]
                .astype(object)
                .where(loaded[field].notna())
                .equals(known.astype(object).where(known.notna()))
            ), field
        else:
            np.testing.assert_array_equal(loaded[field].to_numpy(dtype=float), expected[field].to_numpy(dtype=float))
    assert list(select(loaded, request).member_ids) == list(select(expected, request).member_ids)


def test_a_value_of_the_wrong_type_is_read_as_missing_not_a_crash(mongo_db):
    insert_panel(mongo_db, 500)
    odd = mongo_db.users.find_one({}, sort=[("_id", ASCENDING)])["_id"]
    mongo_db.users.update_one(
        {"_id": odd}, {"$set": {"profile.region": ["not", "a", "string"], "profile.education": 3}}
    )
    request = parse_sample_request({"name": "t", "survey_id": "1", "size": 50, "preset": "uk_nat_rep", "seed": 3})
    loaded = store.load_panel(mongo_db, request, YEAR)
    assert loaded.loc[[str(odd)], ["region", "education"]].isna().all(axis=None)
    gaps = {report.target: report.members for report in select(loaded, request).missing}
    assert gaps["region"] == gaps["education"] == 1
    excluding = request.model_copy(update={"missing": "exclude"})
    assert str(odd) not in select(loaded, excluding).member_ids


def test_age_band_is_derived_from_birth_year_never_read(mongo_db):
    mongo_db.users.insert_many(
        [
            {"status": "active", "profile": {"gender": "female", "birth_year": YEAR - 30, "age_band": "75+"}},
            {"status": "active", "profile": {"gender": "male", "birth_year": YEAR - 80}},
            {"status": "active", "profile": {"gender": "male", "birth_year": YEAR - 16}},
            {"status": "active", "profile": {"gender": "female", "age_band": "25-34"}},
        ]
    )
    request = parse_sample_request({"name": "t", "survey_id": "1", "size": 2, "quotas": {"age_band": {"25-34": 1}}})
    loaded = store.load_panel(mongo_db, request, YEAR)
    whole = whole_profiles(mongo_db, request)
    assert list(loaded["age_band"].astype(object).where(loaded["age_band"].notna(), None)) == [
        "25-34",
        "75+",
        "under 18",
        None,
    ]
    assert list(whole["age_band"]) == list(loaded["age_band"].astype(object).where(loaded["age_band"].notna(), None))


def test_an_empty_panel_loads_as_an_empty_frame(mongo_db):
    request = parse_sample_request({"name": "t", "survey_id": "1", "size": 10, "preset": "uk_nat_rep"})
    loaded = store.load_panel(mongo_db, request, YEAR)
    assert loaded.empty and list(loaded.columns) == list(panel_fields(request))
