"""Response rates learned from the panel's own past invitations, and the time-to-complete curve.

Input: one row per past invitation (`age_band`, `gender`, `region`, `social_grade`, any of them
missing; `invited_at`; `completed_at` or NaT), and the time `now` at which the history was read.
Pure numpy/pandas: no Mongo, no Dagster. Invariants:

- A complete counts when it came within `RESPONSE_WINDOW_HOURS` (168 h, the curve's last point) of
  its invitation; "the rate" is completes within that window per invitation.
- Censoring: an invitation younger than the window has not had its chance yet. The curve is
  estimated only from invitations old enough to be fully observed; every invitation then counts
  as `curve.share_by(its age)` of one invitation (its exposure), so a survey sent yesterday neither
  drags the rates down nor is thrown away.
- Shrinkage (empirical Bayes, a beta prior centred on the overall rate with `prior_strength`
  pseudo-invitations, 100 by default): a cell's rate is (completes + k r) / (exposure + k), so a
  cell with a handful of invitations sits near the overall rate and one with thousands keeps its own.
- Prediction (how the dimensions combine): rate = overall x f_age_gender x f_region x f_grade,
  a multiplicative (log-linear) model fitted by backfitting: each factor is its cell's completes over
  the completes the other factors predict there, shrunk toward 1 with the same prior strength. So a
  region is not credited with the response of the older members who happen to live there (the naive
  product of marginal rates counts age twice). A member missing a dimension gets factor 1 in it.
  Predictions are clipped to [MIN_PREDICTED_RATE, MAX_PREDICTED_RATE].
- `to_document()` is plain JSON (no numpy types, no dates but ISO strings); `from_document` reverses it.
- A request's own `expected_response_rate` wins over the learned rates (`rates_for_request`).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from panel_pipeline.sampler.requests import CELL_SEPARATOR, ResponseRates, SampleRequest, split_key
from panel_pipeline.shared.clock import REAL_TIME, FieldworkClock
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

RATE_DIMENSIONS: tuple[str, ...] = ("age_band|gender", "region", "social_grade")
RATE_FIELDS: tuple[str, ...] = ("age_band", "gender", "region", "social_grade")
CURVE_HOURS: tuple[int, ...] = (1, 2, 4, 8, 12, 24, 48, 72, 120, 168)
RESPONSE_WINDOW_HOURS = CURVE_HOURS[-1]
# Before the panel's own history says otherwise: most completes of an online panel invitation arrive
# in the first 24-48 hours, with a long tail (../shared/research/fieldwork.md), as shares by CURVE_HOURS.
TYPICAL_CURVE_SHARES: tuple[float, ...] = (0.04, 0.08, 0.16, 0.30, 0.42, 0.65, 0.85, 0.92, 0.97, 1.0)
DEFAULT_PRIOR_STRENGTH = 100.0  # pseudo-invitations at the overall rate
MIN_PREDICTED_RATE = 0.005
MAX_PREDICTED_RATE = 0.95
BACKFIT_ROUNDS = 25


@dataclass(frozen=True)
class CellRate:
    """One cell of one dimension (e.g. region = London)."""

    dimension: str
    cell: str
    invitations: int
    exposure: float  # invitations weighted by how much of the window each has had
    completes: int
    raw_rate: float  # completes / exposure (0 with no exposure)
    rate: float  # shrunk toward the overall rate
    factor: float  # the cell's factor in the multiplicative prediction


@dataclass(frozen=True)
class CompletionCurve:
    """Cumulative share of the eventual (within-window) completes by each hour since invitation."""

    hours: tuple[int, ...]
    shares: tuple[float, ...]
    fully_observed_invitations: int  # the invitations the curve was estimated from

    def share_by(self, hours: float | np.ndarray) -> np.ndarray:
        """Share of eventual completes in by `hours` (linear between the points, 0 at 0, 1 after the window)."""
        return np.interp(np.asarray(hours, dtype=float), (0.0, *self.hours), (0.0, *self.shares), right=1.0)


@dataclass(frozen=True)
class LearnedResponseRates:
    overall_rate: float
    invitations: int
    completes: int
    prior_strength: float
    as_of: dt.datetime
    cells: tuple[CellRate, ...]
    curve: CompletionCurve

    def cell(self, dimension: str, cell: str) -> CellRate:
        for rate in self.cells:
            if rate.dimension == dimension and rate.cell == cell:
                return rate
        raise KeyError(f"{dimension}={cell}")

    def factors(self, dimension: str) -> dict[str, float]:
        return {rate.cell: rate.factor for rate in self.cells if rate.dimension == dimension}

    def predict(self, profiles: pd.DataFrame) -> np.ndarray:
        """Predicted response rate of each member (profile fields as columns; missing values allowed)."""
        rates = np.full(len(profiles), self.overall_rate)
        for dimension in RATE_DIMENSIONS:
            factors = self.factors(dimension)
            keys = _cell_keys(profiles, split_key(dimension))
            rates *= keys.map(factors).fillna(1.0).to_numpy(dtype=float)
        return np.clip(rates, MIN_PREDICTED_RATE, MAX_PREDICTED_RATE)

    def as_request_rates(self) -> ResponseRates:
        """The same predictions as a request's rate table over every cell of RATE_FIELDS (so
        `quotas.select_members` sizes invitations with them); members missing a field get the
        overall rate (the table's default)."""
        cells = list(itertools.product(*(PROFILE_CATEGORIES[field] for field in RATE_FIELDS)))
        frame = pd.DataFrame(cells, columns=list(RATE_FIELDS))
        predicted = self.predict(frame)
        return ResponseRates(
            default=float(np.clip(self.overall_rate, MIN_PREDICTED_RATE, MAX_PREDICTED_RATE)),
            fields=RATE_FIELDS,
            rates={cell: float(rate) for cell, rate in zip(cells, predicted, strict=True)},
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "overall_rate": self.overall_rate,
            "invitations": self.invitations,
            "completes": self.completes,
            "prior_strength": self.prior_strength,
            "as_of": self.as_of.isoformat(),
            "window_hours": RESPONSE_WINDOW_HOURS,
            "cells": [dict(rate.__dict__) for rate in self.cells],
            "curve": {
                "hours": list(self.curve.hours),
                "shares": list(self.curve.shares),
                "fully_observed_invitations": self.curve.fully_observed_invitations,
            },
        }

    @staticmethod
    def from_document(document: Mapping[str, Any]) -> LearnedResponseRates:
        curve = document["curve"]
        return LearnedResponseRates(
            overall_rate=float(document["overall_rate"]),
            invitations=int(document["invitations"]),
            completes=int(document["completes"]),
            prior_strength=float(document["prior_strength"]),
            as_of=dt.datetime.fromisoformat(document["as_of"]),
            cells=tuple(CellRate(**cell) for cell in document["cells"]),
            curve=CompletionCurve(
                tuple(int(hour) for hour in curve["hours"]),
                tuple(float(share) for share in curve["shares"]),
                int(curve["fully_observed_invitations"]),
            ),
        )


def learn_response_rates(
    invitations: pd.DataFrame,
    now: dt.datetime,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
    clock: FieldworkClock = REAL_TIME,
) -> LearnedResponseRates:
    """Rates per cell, the multiplicative prediction's factors and the curve, from past invitations;
    delays in fieldwork hours, read on `clock` (FieldworkSettings)."""
    invited_hours = clock.hours_at(invitations["invited_at"])
    age_hours = np.maximum(clock.hours_at(now)[0] - invited_hours, 0.0)
    delay_hours = clock.hours_at(invitations["completed_at"]) - invited_hours  # NaN where no complete
    with np.errstate(invalid="ignore"):
        completed = ~np.isnan(delay_hours) & (delay_hours <= RESPONSE_WINDOW_HOURS) & (delay_hours >= 0)
    curve = completion_curve(age_hours, np.where(completed, delay_hours, np.nan))
    exposure = np.minimum(curve.share_by(np.minimum(age_hours, RESPONSE_WINDOW_HOURS)), 1.0)
    exposure = np.where(completed, np.maximum(exposure, 1e-9), exposure)  # a complete was exposed
    completes = completed.astype(float)
    overall = float(completes.sum() / exposure.sum()) if exposure.sum() > 0 else 0.0
    codes = {dimension: _cell_codes(invitations, split_key(dimension)) for dimension in RATE_DIMENSIONS}
    factors = _backfit(codes, completes, exposure, overall, prior_strength)
    cells = [
        cell
        for dimension, (code, names) in codes.items()
        for cell in _cell_rates(
            dimension, code, names, completes, exposure, overall, prior_strength, factors[dimension]
        )
    ]
    return LearnedResponseRates(
        overall_rate=overall,
        invitations=len(invitations),
        completes=int(completes.sum()),
        prior_strength=prior_strength,
        as_of=pd.Timestamp(now).tz_convert("UTC").to_pydatetime(),
        cells=tuple(cells),
        curve=curve,
    )


def completion_curve(age_hours: np.ndarray, delay_hours: np.ndarray) -> CompletionCurve:
    """The curve from the invitations at least a window old (all of them if none is: the curve
    is then biased toward quick completes, and `fully_observed_invitations` is 0)."""
    observed = age_hours >= RESPONSE_WINDOW_HOURS
    fully_observed = int(observed.sum())
    delays = delay_hours[observed] if fully_observed else delay_hours
    delays = delays[~np.isnan(delays)]
    if len(delays) == 0:
        return CompletionCurve(CURVE_HOURS, TYPICAL_CURVE_SHARES, fully_observed)
    shares = tuple(float(np.mean(delays <= hour)) for hour in CURVE_HOURS)
    return CompletionCurve(CURVE_HOURS, shares, fully_observed)


def rates_for_request(request: SampleRequest, learned: LearnedResponseRates | None) -> ResponseRates:
    """The rates that size a request's invitations: its own `expected_response_rate` when it gives
    one, else the learned rates, else the request default (1.0: one invitation per complete)."""
    if request.gives_response_rate or learned is None:
        return request.expected_response_rate
    return learned.as_request_rates()


def _cell_keys(frame: pd.DataFrame, fields: Sequence[str]) -> pd.Series:
    """Each row's cell ("18-24|male"), NaN where any field is missing or not one of its values."""
    columns = [
        frame[field].astype(object) if field in frame else pd.Series(np.nan, index=frame.index) for field in fields
    ]
    valid = np.all(
        [column.isin(PROFILE_CATEGORIES[field]).to_numpy() for column, field in zip(columns, fields, strict=True)],
        axis=0,
    )
    joined = columns[0].astype(str)
    for column in columns[1:]:
        joined = joined + CELL_SEPARATOR + column.astype(str)
    return joined.where(valid, np.nan)


def _cell_codes(frame: pd.DataFrame, fields: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Each row's index into the cells present (-1 where a value is missing), and those cells."""
    categorical = pd.Categorical(_cell_keys(frame, fields))
    return categorical.codes.astype(np.int64), [str(cell) for cell in categorical.categories]


def _backfit(
    codes: Mapping[str, tuple[np.ndarray, list[str]]],
    completes: np.ndarray,
    exposure: np.ndarray,
    overall: float,
    prior: float,
) -> dict[str, np.ndarray]:
    """Factors of rate = overall x prod f_d[cell], each refitted in turn to its cells' completes
    (on the joint cells of the dimensions, a few hundred rows however long the history)."""
    factors = {dimension: np.ones(len(cells)) for dimension, (_, cells) in codes.items()}
    if overall <= 0:
        return factors
    shifted = [code + 1 for code, _ in codes.values()]  # 0: missing
    joint = np.ravel_multi_index(shifted, [len(cells) + 1 for _, cells in codes.values()])
    groups, group_of = np.unique(joint, return_inverse=True)
    completes = np.bincount(group_of.ravel(), weights=completes, minlength=len(groups))
    exposure = np.bincount(group_of.ravel(), weights=exposure, minlength=len(groups))
    decoded = np.unravel_index(groups, [len(cells) + 1 for _, cells in codes.values()])
    codes = {
        dimension: (group_code - 1, cells)
        for (dimension, (_, cells)), group_code in zip(codes.items(), decoded, strict=True)
    }
    for _ in range(BACKFIT_ROUNDS):
        for dimension, (code, cells) in codes.items():
            others = overall * exposure
            for other, (other_code, _) in codes.items():
                if other != dimension:
                    others = others * _factor_of(other_code, factors[other])
            has = code >= 0
            observed = np.bincount(code[has], weights=completes[has], minlength=len(cells))
            expected = np.bincount(code[has], weights=others[has], minlength=len(cells))
            pseudo = prior * overall
            factors[dimension] = (observed + pseudo) / (expected + pseudo)
    return factors


def _factor_of(code: np.ndarray, factors: np.ndarray) -> np.ndarray:
    return np.where(code >= 0, np.append(factors, 1.0)[code], 1.0)


def _cell_rates(
    dimension: str,
    code: np.ndarray,
    names: list[str],
    completes: np.ndarray,
    exposure: np.ndarray,
    overall: float,
    prior: float,
    factors: np.ndarray,
) -> list[CellRate]:
    has = code >= 0
    invitations = np.bincount(code[has], minlength=len(names))
    cell_exposure = np.bincount(code[has], weights=exposure[has], minlength=len(names))
    cell_completes = np.bincount(code[has], weights=completes[has], minlength=len(names))
    return [
        CellRate(
            dimension=dimension,
            cell=name,
            invitations=int(invitations[index]),
            exposure=float(cell_exposure[index]),
            completes=int(round(cell_completes[index])),
            raw_rate=float(cell_completes[index] / cell_exposure[index]) if cell_exposure[index] > 0 else 0.0,
            rate=float((cell_completes[index] + prior * overall) / (cell_exposure[index] + prior)),
            factor=float(factors[index]),
        )
        for index, name in enumerate(names)
    ]
