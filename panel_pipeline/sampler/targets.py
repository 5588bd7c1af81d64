"""Population targets: the packaged UK table, the `uk_nat_rep` preset and a request's targets.

A `Target` is a set of shares over the values of one profile field (a marginal target) or over
crossed values of several fields (interlocked cells, e.g. age_band x gender). `uk_targets.csv`
(package data) holds the UK adult shares with their sources; `uk_nat_rep` interlocks age x gender
and keeps region, social grade, education and 2024 vote marginal, as the research recommends.

Past-vote shares are shares of *adults* (with a did_not_vote category), not of votes cast, and are
not adjusted for false recall or population change; review them before relying on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd

from panel_pipeline.sampler.requests import CELL_SEPARATOR, Condition, SampleRequest, age_range, split_key
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

UK_NAT_REP_TARGETS: tuple[str, ...] = ("age_band|gender", "region", "social_grade", "education", "vote_2024")
OLDEST_AGE = 120


@dataclass(frozen=True)
class Target:
    """Shares (summing to 1) over cells of `fields`; each cell is a tuple of values."""

    fields: tuple[str, ...]
    shares: Mapping[tuple[str, ...], float]

    @property
    def key(self) -> str:
        return CELL_SEPARATOR.join(self.fields)

    @property
    def cells(self) -> list[tuple[str, ...]]:
        return list(self.shares)

    def share_array(self) -> np.ndarray:
        return np.array(list(self.shares.values()), dtype=float)

    @staticmethod
    def from_shares(key: str, shares: Mapping[str, float]) -> Target:
        """From the request/CSV form: key "age_band|gender", cells "18-24|male" (renormalised)."""
        total = sum(shares.values())
        return Target(split_key(key), {split_key(cell): share / total for cell, share in shares.items()})

    def restricted_to(self, allowed: Mapping[str, frozenset[str]]) -> Target | None:
        """The target over cells whose values are all allowed, renormalised; None if none are."""
        kept = {
            cell: share
            for cell, share in self.shares.items()
            if all(
                value in allowed.get(field, frozenset([value])) for field, value in zip(self.fields, cell, strict=True)
            )
        }
        total = sum(kept.values())
        if total <= 0:
            return None
        return Target(self.fields, {cell: share / total for cell, share in kept.items()})


@cache
def load_target_table() -> pd.DataFrame:
    """The packaged UK target table (one row per target category, with its source)."""
    with resources.files("panel_pipeline.sampler").joinpath("data/uk_targets.csv").open(encoding="utf-8") as handle:
        return pd.read_csv(handle, dtype={"category": str})


def packaged_target(key: str) -> Target:
    rows = load_target_table().query("target == @key")
    if rows.empty:
        raise KeyError(f"no packaged target {key!r}")
    return Target.from_shares(key, dict(zip(rows["category"], rows["share_pct"], strict=True)))


def preset_targets(preset: str) -> tuple[Target, ...]:
    if preset != "uk_nat_rep":
        raise KeyError(f"unknown preset {preset!r}")
    return tuple(packaged_target(key) for key in UK_NAT_REP_TARGETS)


def request_targets(request: SampleRequest) -> tuple[Target, ...]:
    """The preset's targets overridden or extended by the request's quotas, restricted to the
    values the request's filters let in (a Scotland-only request keeps the national age x gender
    shares but its region target becomes Scotland 100%)."""
    by_key = {target.key: target for target in (preset_targets(request.preset) if request.preset else ())}
    by_key.update({key: Target.from_shares(key, shares) for key, shares in request.quotas.items()})
    allowed = allowed_values(request.filters)
    restricted = (target.restricted_to(allowed) for target in by_key.values())
    return tuple(target for target in restricted if target is not None)


def allowed_values(filters: Sequence[Condition]) -> dict[str, frozenset[str]]:
    """Per categorical field, the values that can pass `filters` (age filters act on age bands)."""
    allowed: dict[str, frozenset[str]] = {}
    for field, values in PROFILE_CATEGORIES.items():
        passing = frozenset(value for value in values if _value_can_pass(field, value, filters))
        if passing != frozenset(values):
            allowed[field] = passing
    return allowed


def _value_can_pass(field: str, value: str, filters: Sequence[Condition]) -> bool:
    if field == "age_band":
        ages = _ages_in_band(value)
        age_filters = [condition for condition in filters if condition.field == "age"]
        passing_ages = [age for age in ages if all(_passes(age, condition) for condition in age_filters)]
        if not passing_ages:
            return False
    return all(_passes(value, condition) for condition in filters if condition.field == field)


def _ages_in_band(band: str) -> range:
    youngest, oldest = age_range(band)
    return range(youngest, (OLDEST_AGE if oldest is None else oldest) + 1)


def _passes(value: str | int, condition: Condition) -> bool:
    wanted = condition.value
    match condition.operator:
        case "$eq":
            return value == wanted
        case "$ne":
            return value != wanted
        case "$in":
            return value in wanted  # type: ignore[operator]  # the operator fixes the value's type: a tuple for sets, a number for order
        case "$nin":
            return value not in wanted  # type: ignore[operator]  # the operator fixes the value's type: a tuple for sets, a number for order
        case "$gt":
            return value > wanted  # type: ignore[operator]  # the operator fixes the value's type: a tuple for sets, a number for order
        case "$gte":
            return value >= wanted  # type: ignore[operator]  # the operator fixes the value's type: a tuple for sets, a number for order
        case "$lt":
            return value < wanted  # type: ignore[operator]  # the operator fixes the value's type: a tuple for sets, a number for order
        case "$lte":
            return value <= wanted  # type: ignore[operator]  # the operator fixes the value's type: a tuple for sets, a number for order
    raise AssertionError(condition.operator)
