from collections import Counter

import pandas as pd

from panel_pipeline.sampler.requests import parse_sample_request
from panel_pipeline.updater.dynamic import DynamicSample, place_changed_members


def request(**fields):
    return parse_sample_request({"name": "dyn", "survey_id": "1", "size": 4, "dynamic": True, **fields})


def people(*rows):
    return pd.DataFrame([r[1] for r in rows], index=[r[0] for r in rows])


def test_matching_members_join_until_the_size_is_reached():
    sample = DynamicSample("s", request(filters={"region": {"$in": ["Scotland"]}}), frozenset({"m1", "m2"}))
    changed = people(
        ("a", {"region": "Scotland", "gender": "female"}),
        ("b", {"region": "London", "gender": "male"}),
        ("c", {"region": "Scotland", "gender": "male"}),
        ("d", {"region": "Scotland", "gender": "male"}),
    )
    placement = place_changed_members(changed, sample)
    assert placement.joining == ("a", "c")
    assert placement.no_room == ("d",)
    assert placement.full


def test_quota_cells_cap_who_joins():
    sample = DynamicSample(
        "s",
        request(quotas={"gender": {"female": 0.5, "male": 0.5}}),
        frozenset({"m1"}),
        {"gender": Counter({("female",): 1})},
    )
    changed = people(
        ("a", {"gender": "female"}), ("b", {"gender": "male"}), ("c", {"gender": "female"}), ("d", {"gender": "other"})
    )
    placement = place_changed_members(changed, sample)
    assert placement.joining == ("a", "b")
    assert placement.no_room == ("c", "d")


def test_members_who_stop_matching_are_reported_not_removed():
    sample = DynamicSample("s", request(filters={"region": {"$eq": "Scotland"}}), frozenset({"m1", "m2"}))
    changed = people(("m1", {"region": "Wales"}), ("m2", {"region": "Scotland"}))
    placement = place_changed_members(changed, sample)
    assert placement.stopped_qualifying == ("m1",)
    assert placement.qualifying_again == ("m2",)
    assert placement.joining == ()
