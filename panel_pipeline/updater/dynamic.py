"""Which changed members join which open dynamic samples: pure pandas, no Mongo, no Dagster.

A dynamic sample keeps its request's filters and the quota targets its first draw kept. Newcomers
are placed as that draw placed members (`sampler.quotas`):

- A target the draw dropped (`result.dropped_targets`: nobody could be classified on it) does not
  apply to newcomers either.
- With `missing: "include"` (the default), a member lacking a kept target's attribute (no value, or
  one outside the contract's) whose other values could be in one of its cells is in the target's
  missing category (`MISSING`), and counts towards every other target as usual. The category's
  share is the draw's (`result.missing`: completes / size, or pct / 100); the target's own shares
  apply to the rest. With `"exclude"` such a member cannot join.
- A member with a value in none of a target's cells (gender `other` against age x gender, a derived
  band "under 18") cannot be placed and is left out, as in the draw.

A changed member joins when they match the filters and, for every target, their category still has
room: room = the category's share of the sample size (rounded up) minus the members it already has
(current members are counted the same way, missing category included). Members are taken in the
order they changed, so the earliest joiners fill a cell; a backlog comes in pages, and each page
finds the sample as the pages before left it (`with_joiners`).

A dynamic sample with fieldwork and at least one cell is placed by its fieldwork accounting instead
(its `size` is the completes wanted, not the members): a newcomer joins when none of their cells is
closed (`fieldwork_state.closed_cells`) and at least one still needs completes (`need` >= MIN_NEED)
after what its members are expected to bring. The needs are the state's `by_cell.need` (the cells'
target completes before its first look) less the expected rate of every member the state did not
count yet (not invited by its `updated_at`: joined since, or stamped and not yet sent); each joiner
lowers the need of each of their cells by their own expected rate (`fieldwork_state.member_rates`).
Such a sample is never "full" here: it closes when its fieldwork closes.

The contact budget holds at every dynamic add: a newcomer who would join but is at or over the
budget (`over_budget`) is held back instead, and counted per cell.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from panel_pipeline.sampler.fieldwork import MIN_NEED, member_categories
from panel_pipeline.sampler.fieldwork_state import member_rates, sample_cells
from panel_pipeline.sampler.requests import CELL_SEPARATOR, MissingPolicy, SampleRequest, filter_mask
from panel_pipeline.sampler.response_rates import LearnedResponseRates
from panel_pipeline.sampler.targets import Target, request_targets

Cell = tuple[str, ...]
MISSING: Cell = ()  # a target's missing category: no real cell is empty
CellKey = tuple[str, str]  # (target key, category) as fieldwork_state.by_cell names a cell


@dataclass(frozen=True)
class FirstDraw:
    """What the Sampler's draw decided that newcomers must follow: the targets it dropped, and per
    kept target the share of the sample in its missing category."""

    dropped_targets: frozenset[str] = frozenset()
    missing_shares: Mapping[str, float] = field(default_factory=dict)


def first_draw_of(result: Mapping[str, Any], size: int) -> FirstDraw:
    """From the result the Sampler wrote back on the sample (`SelectionResult.to_document()`)."""
    dropped = frozenset(str(entry["target"]) for entry in result.get("dropped_targets") or [])
    shares = {str(entry["target"]): _missing_share(entry, size) for entry in result.get("missing") or []}
    return FirstDraw(dropped, shares)


def _missing_share(entry: Mapping[str, Any], size: int) -> float:
    if entry.get("completes") is not None and size > 0:
        return float(entry["completes"]) / size
    return float(entry.get("pct") or 0.0) / 100.0


@dataclass(frozen=True)
class FieldworkRoom:
    """What a dynamic sample with fieldwork still needs: completes per cell after what its members are
    expected to bring, its closed cells, and the learned rates (None: the request's own rate, or 1)."""

    need: Mapping[CellKey, float]
    closed: frozenset[CellKey] = frozenset()
    learned: LearnedResponseRates | None = None


@dataclass(frozen=True)
class DynamicSample:
    """An open dynamic sample: its request, and how many members each target cell already has."""

    sample_id: str
    request: SampleRequest
    member_ids: frozenset[str]
    filled: Mapping[str, Counter[Cell]] = field(default_factory=dict)
    drawn_at: dt.datetime | None = None  # when the Sampler read the panel: it considered everyone before
    first_draw: FirstDraw = field(default_factory=FirstDraw)
    fieldwork: FieldworkRoom | None = None  # None: placed by member counts against `size`
    holds_back: bool = False  # newcomers are held back at the contact budget now (their count is kept)

    @property
    def targets(self) -> tuple[Target, ...]:
        """The request's targets less those the first draw dropped."""
        return tuple(
            target for target in request_targets(self.request) if target.key not in self.first_draw.dropped_targets
        )

    def missing_share(self, target: Target) -> float:
        """The share of the sample in `target`'s missing category (0 with `missing: "exclude"`)."""
        if self.request.missing != "include":
            return 0.0
        return min(max(self.first_draw.missing_shares.get(target.key, 0.0), 0.0), 1.0)

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
    held_back: Mapping[str, tuple[CellKey, ...]] = field(default_factory=dict)  # over the budget: their cells
    need: Mapping[CellKey, float] = field(default_factory=dict)  # with fieldwork: the needs after the joiners

    @property
    def held_back_by_cell(self) -> Counter[CellKey]:
        return Counter(key for keys in self.held_back.values() for key in keys)


def cell_of(profile: Mapping[Any, Any] | pd.Series, target: Target, missing: MissingPolicy) -> Cell | None:
    """The member's cell of `target`; MISSING if they lack a value (with `missing: "include"`) and
    their other values could be in a cell; None if they cannot be placed on it."""
    values = tuple(_value(profile, name) for name in target.fields)
    if None not in values:
        cell = tuple(str(value) for value in values)
        return cell if cell in target.shares else None
    could_fit = all(
        value is None or any(cell[slot] == str(value) for cell in target.cells) for slot, value in enumerate(values)
    )
    return MISSING if missing == "include" and could_fit else None


def _value(profile: Mapping[Any, Any] | pd.Series, name: str) -> Any:
    value = profile.get(name)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def cells_of(
    profile: Mapping[Any, Any] | pd.Series, targets: Sequence[Target], missing: MissingPolicy
) -> dict[str, Cell | None]:
    """The member's cell of each target, by target key."""
    return {target.key: cell_of(profile, target, missing) for target in targets}


def cell_keys(cells: Mapping[str, Cell | None]) -> tuple[CellKey, ...]:
    """The fieldwork cells (target key, category) a member counts towards: none for a missing category."""
    return tuple((key, CELL_SEPARATOR.join(cell)) for key, cell in cells.items() if cell)


def filled_cells(profiles: pd.DataFrame, targets: Sequence[Target], missing: MissingPolicy) -> dict[str, Counter[Cell]]:
    """Members per cell of each target (MISSING included), from the profiles of a sample's current members."""
    rows = profiles.to_dict("records")
    return {
        target.key: Counter(cell for row in rows if (cell := cell_of(row, target, missing)) is not None)
        for target in targets
    }


def fieldwork_room(
    sample: DynamicSample,
    state: Mapping[str, Any],
    result: Mapping[str, Any],
    uncounted: pd.DataFrame,
    learned: LearnedResponseRates | None,
) -> FieldworkRoom | None:
    """The room of a dynamic sample with fieldwork from its `fieldwork_state` and the draw's
    `result`; None without fieldwork or without cells (then placed by member counts). `uncounted`:
    the profiles of the members the state did not count yet (not invited by its `updated_at`)."""
    request = sample.request
    if request.fieldwork is None:
        return None
    cells = sample_cells(request, result, sample.targets)
    if cells.empty:
        return None
    stated = {(str(row["target"]), str(row["category"])): float(row["need"]) for row in state.get("by_cell") or []}
    need = {
        (str(target), str(category)): stated.get((str(target), str(category)), float(wanted))
        for target, category, wanted in zip(cells["target"], cells["category"], cells["target_completes"], strict=True)
    }
    rates = pd.Series(expected_rates(request, learned, uncounted), index=uncounted.index)
    categories = member_categories(uncounted, sample.targets)
    for target in sample.targets:
        for category, expected in rates.groupby(categories[target.key]).sum().items():
            need[(target.key, str(category))] -= float(expected)
    closed = frozenset((str(cell["target"]), str(cell["category"])) for cell in state.get("closed_cells") or [])
    return FieldworkRoom(need, closed, learned)


def expected_rates(request: SampleRequest, learned: LearnedResponseRates | None, profiles: pd.DataFrame) -> np.ndarray:
    """Each member's expected response rate, as fieldwork predicts it."""
    return member_rates(request, learned, profiles)[0] if len(profiles) else np.zeros(0)


def candidates(changed: pd.DataFrame, sample: DynamicSample) -> pd.DataFrame:
    """Who of `changed` could join `sample`: matching its filters, not yet members."""
    matches = filter_mask(changed, sample.request.filters)
    return changed[matches & ~changed.index.isin(list(sample.member_ids))]


def place_changed_members(
    changed: pd.DataFrame, sample: DynamicSample, over_budget: frozenset[str] = frozenset()
) -> Placement:
    """Who of `changed` (index = user id, profile fields as columns, in change order) joins `sample`;
    those in `over_budget` who would join are held back instead."""
    matches = filter_mask(changed, sample.request.filters)
    members = changed.index.isin(list(sample.member_ids))
    newcomers = candidates(changed, sample)
    room = sample.fieldwork
    caps = {
        target.key: _cell_caps(target, sample.request.size, sample.missing_share(target)) for target in sample.targets
    }
    filled = {key: Counter(sample.filled.get(key, Counter())) for key in caps}
    need = dict(room.need) if room else {}
    rates = expected_rates(sample.request, room.learned, newcomers) if room else np.zeros(len(newcomers))
    joining: list[str] = []
    no_room: list[str] = []
    held_back: dict[str, tuple[CellKey, ...]] = {}
    for (user_id, row), rate in zip(newcomers.iterrows(), rates, strict=True):
        cells = cells_of(row, sample.targets, sample.request.missing)
        if room is None:
            fits = len(joining) < sample.room_left and all(
                cell is not None and filled[key][cell] < caps[key].get(cell, 0) for key, cell in cells.items()
            )
        else:
            fits = _fieldwork_fits(cells, float(rate), room.closed, need)
        if not fits:
            no_room.append(str(user_id))
        elif str(user_id) in over_budget:
            held_back[str(user_id)] = cell_keys(cells)
        else:
            joining.append(str(user_id))
            for key, cell in cells.items():
                filled[key][cell] += 1  # type: ignore[index]  # `fits` above proved every cell is not None
            for cell_key in cell_keys(cells) if room else ():
                need[cell_key] -= float(rate)
    full = room is None and len(joining) >= sample.room_left
    stopped = tuple(str(user_id) for user_id in changed.index[members & ~matches])
    again = tuple(str(user_id) for user_id in changed.index[members & matches])
    return Placement(sample.sample_id, tuple(joining), tuple(no_room), stopped, again, full, filled, held_back, need)


def _fieldwork_fits(
    cells: Mapping[str, Cell | None], rate: float, closed: frozenset[CellKey], need: Mapping[CellKey, float]
) -> bool:
    """Placeable on every target, none of their cells closed, and one of them still short."""
    keys = cell_keys(cells)
    return (
        rate > 0
        and all(cell is not None for cell in cells.values())
        and not any(key in closed for key in keys)
        and any(need.get(key, 0.0) >= MIN_NEED for key in keys)
    )


def with_joiners(sample: DynamicSample, placement: Placement) -> DynamicSample:
    """The sample as the next page of changes finds it: the joiners are members and fill their cells."""
    room = replace(sample.fieldwork, need=placement.need) if sample.fieldwork else None
    return replace(
        sample,
        member_ids=sample.member_ids | frozenset(placement.joining),
        filled=placement.filled,
        fieldwork=room,
        holds_back=sample.holds_back or bool(placement.held_back),
    )


def _cell_caps(target: Target, size: int, missing_share: float) -> dict[Cell, int]:
    """Members each category may hold: the draw's missing share of `size`, and the target's shares
    of the rest, each rounded up."""
    caps = {cell: math.ceil(share * (1.0 - missing_share) * size - 1e-9) for cell, share in target.shares.items()}
    return {**caps, MISSING: math.ceil(missing_share * size - 1e-9)}
