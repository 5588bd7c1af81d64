from collections import Counter
from dataclasses import replace

import pandas as pd

from panel_pipeline.sampler.requests import parse_sample_request
from panel_pipeline.updater.dynamic import (
    MISSING,
    DynamicSample,
    fieldwork_room,
    filled_cells,
    first_draw_of,
    place_changed_members,
)


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


VOTE = {"labour": 0.5, "conservative": 0.5}


def test_a_newcomer_missing_vote_2024_joins_the_missing_category_until_its_room_is_used():
    # The first draw put 2 of 10 in the vote target's missing category: room for 2, one already taken.
    sample = DynamicSample(
        "s",
        request(size=10, quotas={"vote_2024": VOTE, "gender": {"female": 0.5, "male": 0.5}}),
        frozenset({"m1"}),
        {"vote_2024": Counter({MISSING: 1}), "gender": Counter({("female",): 1})},
        first_draw=first_draw_of(
            {"missing": [{"target": "vote_2024", "members": 40, "completes": 2, "pct": 20.0}]}, 10
        ),
    )
    changed = people(
        ("a", {"gender": "female", "vote_2024": None}),
        ("b", {"gender": "male", "vote_2024": None}),
        ("c", {"gender": "male", "vote_2024": "labour"}),
        ("d", {"gender": None, "vote_2024": "labour"}),  # the draw had nobody missing gender: no room
    )
    placement = place_changed_members(changed, sample)
    assert placement.joining == ("a", "c")
    assert placement.no_room == ("b", "d")
    assert placement.filled["vote_2024"] == Counter({MISSING: 2, ("labour",): 1})
    assert placement.filled["gender"] == Counter({("female",): 2, ("male",): 1})


def test_the_kept_cells_share_the_rest_of_the_sample():
    # Half the draw had no vote: each party's cell holds half of the other half.
    sample = DynamicSample(
        "s",
        request(size=8, quotas={"vote_2024": VOTE}),
        frozenset(),
        first_draw=first_draw_of({"missing": [{"target": "vote_2024", "pct": 50.0}]}, 8),
    )
    changed = people(*((f"l{i}", {"vote_2024": "labour"}) for i in range(4)))
    assert place_changed_members(changed, sample).joining == ("l0", "l1")


def test_a_value_in_no_cell_is_not_missing():
    sample = DynamicSample(
        "s",
        request(size=10, quotas={"age_band|gender": {"18-24|female": 0.5, "18-24|male": 0.5}}),
        frozenset(),
        first_draw=first_draw_of({"missing": [{"target": "age_band|gender", "completes": 5}]}, 10),
    )
    changed = people(
        ("no_band", {"age_band": None, "gender": "female"}),
        ("other", {"age_band": None, "gender": "other"}),
        ("under_18", {"age_band": "under 18", "gender": None}),
    )
    placement = place_changed_members(changed, sample)
    assert placement.joining == ("no_band",)
    assert placement.no_room == ("other", "under_18")


def test_a_target_the_first_draw_dropped_does_not_stop_a_newcomer():
    sample = DynamicSample(
        "s",
        request(size=4, quotas={"vote_2024": VOTE, "gender": {"female": 0.5, "male": 0.5}}),
        frozenset(),
        first_draw=first_draw_of({"dropped_targets": [{"target": "vote_2024", "reason": "nobody answered"}]}, 4),
    )
    changed = people(("a", {"gender": "female", "vote_2024": None}), ("b", {"gender": "male", "vote_2024": "green"}))
    placement = place_changed_members(changed, sample)
    assert placement.joining == ("a", "b")
    assert set(placement.filled) == {"gender"}


def test_exclude_keeps_members_missing_a_target_attribute_out():
    sample = DynamicSample(
        "s",
        request(size=10, missing="exclude", quotas={"vote_2024": VOTE}),
        frozenset(),
        first_draw=first_draw_of({"missing": [{"target": "vote_2024", "completes": 2}]}, 10),
    )
    changed = people(("a", {"vote_2024": None}), ("b", {"vote_2024": "labour"}))
    placement = place_changed_members(changed, sample)
    assert placement.joining == ("b",)
    assert placement.no_room == ("a",)


def test_current_members_are_counted_into_the_missing_category():
    targets = DynamicSample("s", request(quotas={"vote_2024": VOTE}), frozenset()).targets
    members = people(("m1", {"vote_2024": None}), ("m2", {"vote_2024": "labour"}), ("m3", {"vote_2024": "snp"}))
    assert filled_cells(members, targets, "include") == {"vote_2024": Counter({MISSING: 1, ("labour",): 1})}
    assert filled_cells(members, targets, "exclude") == {"vote_2024": Counter({("labour",): 1})}


GENDER = {"gender": {"female": 0.5, "male": 0.5}}
NOBODY = pd.DataFrame(columns=["gender"])  # no uncounted members (their profiles, as the store reads them)


def fieldwork_request(**fields):
    return request(size=10, quotas=GENDER, expected_response_rate=0.5, fieldwork=True, **fields)


def test_with_fieldwork_newcomers_fill_cells_still_short_and_none_joins_a_closed_one():
    sample = DynamicSample("s", fieldwork_request(), frozenset({"m1"}))
    state = {
        "by_cell": [
            {"target": "gender", "category": "female", "need": 1.0},
            {"target": "gender", "category": "male", "need": 0.0},
        ],
        "closed_cells": [{"target": "gender", "category": "male"}],
    }
    room = fieldwork_room(sample, state, {}, NOBODY, None)
    changed = people(*((f"f{i}", {"gender": "female"}) for i in range(3)), ("m", {"gender": "male"}))
    placement = place_changed_members(changed, replace(sample, fieldwork=room))
    assert placement.joining == ("f0", "f1")  # each brings half a complete: 1.0 -> 0.5 -> 0.0
    assert placement.no_room == ("f2", "m")
    assert placement.need[("gender", "female")] == 0.0
    assert not placement.full  # size is the completes wanted: fieldwork closes such a sample, not a count


def test_with_fieldwork_the_members_the_state_did_not_count_use_up_need():
    sample = DynamicSample("s", fieldwork_request(), frozenset({"n1", "n2"}))
    state = {"by_cell": [{"target": "gender", "category": "female", "need": 2.0}]}
    uncounted = people(("n1", {"gender": "female"}), ("n2", {"gender": "female"}))
    room = fieldwork_room(sample, state, {}, uncounted, None)
    assert room is not None and room.need == {("gender", "female"): 1.0, ("gender", "male"): 5.0}


def test_before_the_first_fieldwork_look_the_need_is_the_cells_target():
    room = fieldwork_room(DynamicSample("s", fieldwork_request(), frozenset()), {"status": "open"}, {}, NOBODY, None)
    assert room is not None and room.need == {("gender", "female"): 5.0, ("gender", "male"): 5.0}


def test_without_cells_or_without_fieldwork_members_are_counted_against_the_size():
    no_cells = DynamicSample("s", request(fieldwork=True), frozenset())
    no_fieldwork = DynamicSample("s", request(quotas=GENDER), frozenset())
    assert fieldwork_room(no_cells, {}, {}, NOBODY, None) is None
    assert fieldwork_room(no_fieldwork, {}, {}, NOBODY, None) is None


def test_a_newcomer_over_the_contact_budget_is_held_back_and_takes_no_room():
    sample = DynamicSample("s", request(size=2, quotas=GENDER), frozenset())
    changed = people(("a", {"gender": "female"}), ("b", {"gender": "female"}), ("c", {"gender": "male"}))
    placement = place_changed_members(changed, sample, over_budget=frozenset({"a"}))
    assert placement.joining == ("b", "c")
    assert placement.held_back == {"a": (("gender", "female"),)}
    assert placement.held_back_by_cell == Counter({("gender", "female"): 1})
