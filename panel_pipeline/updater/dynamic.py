"""Which changed members join which open dynamic samples: pure pandas, no Mongo, no Dagster.

A dynamic sample keeps its request's filters and quota targets. A changed member joins when they
match the filters and, for every target, their cell still has room: room = the cell's share of
the sample size (rounded up) minus the members it already has. A member in no cell of a target
(e.g. gender `other` against an age x gender target) cannot be placed and is left out, as the
sampler does. Members are taken in the order they changed, so the earliest joiners fill a cell; a
backlog comes in pages, and each page finds the sample as the pages before left it (`with_joiners`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from panel_pipeline.sampler.requests import SampleRequest, filter_mask
from panel_pipeline.sampler.targets import Target, request_targets

Cell = tuple[str, ...]


@dataclass(frozen=True)
class DynamicSample:
    """An open dynamic sample: its request, and how many members each target cell already has."""

    sample_id: str
    request: SampleRequest
    member_ids: frozenset[str]
    filled: Mapping[str, Counter[Cell]] = field(default_factory=dict)
    drawn_at: dt.datetime | None = None  # when the Sampler read the panel: it considered everyone before

    @property
    def targets(self) -> tuple[Target, ...]:
        return request_targets(self.request)

    @property
    def room_left(self) -> int:
        return self.request.size - len(self.member_ids)


@dataclass(frozen=True)
class Placement:
    """The outcome for one sample: who joins, and who qualified on filters but found no room."""

    sample_id: str
    joining: tuple[str, ...]
    no_room: tuple[str, ...]
    stopped_qualifying: tuple[str, ...]
    qualifying_again: tuple[str, ...]
    full: bool
    filled: Mapping[str, Counter[Cell]] = field(default_factory=dict)  # members per cell, joiners included


def cell_of(profile: Mapping[Any, Any] | pd.Series, target: Target) -> Cell | None:
    cell = tuple(str(profile.get(name)) if profile.get(name) is not None else "" for name in target.fields)
    return cell if cell in target.shares else None


def filled_cells(profiles: pd.DataFrame, targets: Sequence[Target]) -> dict[str, Counter[Cell]]:
    """Members per cell of each target, from the profiles of a sample's current members."""
    rows = profiles.to_dict("records")
    return {
        target.key: Counter(cell for row in rows if (cell := cell_of(row, target)) is not None) for target in targets
    }


def place_changed_members(changed: pd.DataFrame, sample: DynamicSample) -> Placement:
    """Who of `changed` (index = user id, profile fields as columns, in change order) joins `sample`."""
    matches = filter_mask(changed, sample.request.filters)
    members = changed.index.isin(list(sample.member_ids))
    candidates = changed[matches & ~members]
    caps = {target.key: _cell_caps(target, sample.request.size) for target in sample.targets}
    filled = {key: Counter(sample.filled.get(key, Counter())) for key in caps}
    joining: list[str] = []
    no_room: list[str] = []
    for user_id, row in candidates.iterrows():
        cells = {target.key: cell_of(row, target) for target in sample.targets}
        fits = len(joining) < sample.room_left and all(
            cell is not None and filled[key][cell] < caps[key][cell] for key, cell in cells.items()
        )
        if not fits:
            no_room.append(str(user_id))
            continue
        joining.append(str(user_id))
        for key, cell in cells.items():
            filled[key][cell] += 1  # type: ignore[index]  # `fits` above proved every cell is not None
    full = len(joining) >= sample.room_left
    stopped = tuple(str(user_id) for user_id in changed.index[members & ~matches])
    again = tuple(str(user_id) for user_id in changed.index[members & matches])
    return Placement(sample.sample_id, tuple(joining), tuple(no_room), stopped, again, full, filled)


def with_joiners(sample: DynamicSample, placement: Placement) -> DynamicSample:
    """The sample as the next page of changes finds it: the joiners are members and fill their cells."""
    return replace(sample, member_ids=sample.member_ids | frozenset(placement.joining), filled=placement.filled)


def _cell_caps(target: Target, size: int) -> dict[Cell, int]:
    return {cell: math.ceil(share * size - 1e-9) for cell, share in target.shares.items()}
