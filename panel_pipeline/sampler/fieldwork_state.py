"""A sample's fieldwork now: its cells, its members' accounting, closing and weights, as the
`fieldwork_state` document the pipeline keeps on the sample (pure; no Mongo, no Dagster).

Invariants:

- The cells are the request's targets (preset and quotas, as the draw read them) less the targets
  the draw dropped, each sized from the request's size less the share of the sample the draw found
  missing that target's attribute (`result.missing`): fieldwork fills what the draw planned.
- Members' rates: the request's own `expected_response_rate` when it sets one, else the learned
  rates' per-member prediction, else 1 (`rates_for_request`'s order); the curve is the learned one,
  or the typical curve of an online panel (most completes in 24-48 hours) before anything was learned.
- Soft cells (fieldwork.py) close at their target until `soft_cells_reopened_at`, then at their cap;
  once reopened they stay so.
- Once closed, fieldwork stays closed: `closed_at` and `closed_reason` are those of the first
  closing, and a cell's `closed_at` is the first time it was seen closed (kept across runs).
- Weights are computed once, at the closing, and written only when raking converged within the
  request's `weight_bounds`; otherwise `weights.status` and `weights.message` say what failed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from panel_pipeline.sampler import fieldwork
from panel_pipeline.sampler.requests import CELL_SEPARATOR, SampleRequest
from panel_pipeline.sampler.response_rates import CompletionCurve, LearnedResponseRates, completion_curve
from panel_pipeline.sampler.targets import Target, request_targets
from panel_pipeline.sampler.weighting import weight_completes
from panel_pipeline.shared.contract import FIELDWORK_CLOSED, FIELDWORK_OPEN

PANEL_RATES_ID = "panel"  # the response_rates document learned from the whole panel
LEARNED = "learned"
REQUEST = "request"


@dataclass(frozen=True)
class FieldworkUpdate:
    """What one look at a sample's fieldwork writes: the state, its completers' completion times,
    and their weights (only when fieldwork closed now with converged weights); `cell_members` is
    what the accounting counted (each member's category per target, which the fieldwork chart counts
    by, and the fieldwork columns)."""

    state: dict[str, Any]
    accounting: fieldwork.CellAccounting
    cell_members: pd.DataFrame
    completed_at: dict[str, dt.datetime]
    weights: dict[str, float] | None


def sample_targets(request: SampleRequest, result: Mapping[str, Any]) -> tuple[Target, ...]:
    """The targets the draw drew to: the request's, less the ones it dropped."""
    dropped = {entry["target"] for entry in result.get("dropped_targets", [])}
    return tuple(target for target in request_targets(request) if target.key not in dropped)


def sample_cells(request: SampleRequest, result: Mapping[str, Any], targets: Sequence[Target]) -> pd.DataFrame:
    missing = {entry["target"]: float(entry["pct"]) / 100.0 for entry in result.get("missing", [])}
    return fieldwork.cell_targets(targets, request.size, missing, request.tolerance)


def member_rates(
    request: SampleRequest, learned: LearnedResponseRates | None, profiles: pd.DataFrame
) -> tuple[np.ndarray, str]:
    """Each member's expected response rate, and where it comes from (`request` or `learned`)."""
    if learned is not None and not request.gives_response_rate:
        return learned.predict(profiles), LEARNED
    rates = request.expected_response_rate
    if not rates.fields:
        return np.full(len(profiles), float(rates.rate_for(()))), REQUEST
    lowest = min([*rates.rates.values(), *([rates.default] if rates.default is not None else [])])
    cells = profiles[list(rates.fields)].astype(object).itertuples(index=False, name=None)
    return np.array([rates.rates.get(tuple(cell), rates.default or lowest) for cell in cells], dtype=float), REQUEST


def default_curve() -> CompletionCurve:
    """Before anything was learned: the typical curve of an online panel (response_rates.TYPICAL_CURVE_SHARES)."""
    return completion_curve(np.zeros(0), np.zeros(0))


def update_fieldwork(
    request: SampleRequest,
    document: Mapping[str, Any],
    members: pd.DataFrame,
    learned: LearnedResponseRates | None,
    now: dt.datetime,
) -> FieldworkUpdate:
    """The sample's fieldwork after its members' completions (`members`: store.fieldwork_members)."""
    if request.fieldwork is None:
        raise ValueError("the sample has no fieldwork (`fieldwork: false`, or no mailing)")
    result = document.get("result") or {}
    targets = sample_targets(request, result)
    cells = sample_cells(request, result, targets)
    categories = fieldwork.member_categories(members, targets)
    frame = pd.concat([categories, members[[c for c in fieldwork.MEMBER_COLUMNS if c in members]]], axis=1)
    rates, source = member_rates(request, learned, members)
    curve = learned.curve if learned is not None else default_curve()
    before = document.get("fieldwork_state") or {}
    reopened_at = soft_cells_reopened_at(request, targets, before, now)
    accounting = fieldwork.account_cells(
        cells,
        frame,
        now=now,
        rates=rates,
        curve=curve,
        clock=request.fieldwork.clock,
        soft_cells_reopened=reopened_at is not None,
    )
    close_at = request.fieldwork.closes_at(_as_utc(document.get("drawn_at")) or now, now)
    was_closed = before.get("status") == FIELDWORK_CLOSED
    reason = (
        before.get("closed_reason")
        if was_closed
        else fieldwork.closing_reason(
            accounting, now, close_at, request.size, hard_target=targets[0].key if targets else None
        )
    )
    completers = members.index[members["completed_at"].notna()]
    completed_at = {
        str(uid): pd.Timestamp(at).to_pydatetime()
        for uid, at in zip(completers, members.loc[completers, "completed_at"], strict=True)
    }
    state = {
        **accounting.to_document(),
        "status": FIELDWORK_CLOSED if reason else FIELDWORK_OPEN,
        "target_completes": int(cells.groupby("target")["target_completes"].sum().max())
        if len(cells)
        else request.size,
        "waves": int(pd.to_numeric(members["wave"], errors="coerce").max())
        if members["wave"].notna().any()
        else int(accounting.invited > 0),
        "closed_cells": closed_cells(accounting, before, now),
        "over_tolerance": over_tolerance(accounting, request.tolerance),
        "tolerance_pp": request.tolerance,
        "close_at": close_at,
        "rates": source,
        "updated_at": now,
    }
    if reopened_at is not None and len(cells):
        state["soft_cells_reopened_at"] = reopened_at
    weights: dict[str, float] | None = None
    if reason:
        state["closed_at"] = _as_utc(before.get("closed_at")) if was_closed else now
        state["closed_reason"] = reason
        if was_closed and "weights" in before:
            state["weights"] = before["weights"]
        else:
            state["weights"], weights = closing_weights(request, targets, categories.loc[completers])
    return FieldworkUpdate(state, accounting, frame, completed_at, weights)


def soft_cells_reopened_at(
    request: SampleRequest, targets: Sequence[Target], before: Mapping[str, Any], now: dt.datetime
) -> dt.datetime | None:
    """Since when the soft cells close at their cap rather than their target (None: at their target):
    kept from the state before; else now, if the sample has no top-ups (dynamic, or in one wave) or
    its last top-up found a short hard cell nobody to invite (`fieldwork.stranded_hard_cells`)."""
    reopened = _as_utc(before.get("soft_cells_reopened_at"))
    if reopened is not None:
        return reopened
    if request.fieldwork is None or not request.fieldwork.waves or request.dynamic:
        return now
    last_cells = (before.get("last_top_up") or {}).get("by_cell") or []
    if targets and last_cells and fieldwork.stranded_hard_cells(pd.DataFrame(last_cells), targets[0].key):
        return now
    return None


def over_tolerance(accounting: fieldwork.CellAccounting, tolerance_pp: float) -> list[dict[str, Any]]:
    """`[{target, category, over_target_pp}]`: the cells over target by more than the tolerance."""
    over = accounting.over_tolerance(tolerance_pp)
    return [
        {"target": str(target), "category": str(category), "over_target_pp": round(float(pp), 3)}
        for target, category, pp in zip(
            over["target"], over["category"], over["over_target_pp"].to_numpy(dtype=float), strict=True
        )
    ]


def closed_cells(
    accounting: fieldwork.CellAccounting, before: Mapping[str, Any], now: dt.datetime
) -> list[dict[str, Any]]:
    """`[{target, category, closed_at}]`, each cell's first closing kept from the state before."""
    first = {(cell["target"], cell["category"]): cell.get("closed_at") for cell in before.get("closed_cells", [])}
    return [
        {"target": target, "category": category, "closed_at": _as_utc(first.get((target, category))) or now}
        for target, category in accounting.closed_cells
    ]


def closing_weights(
    request: SampleRequest, targets: Sequence[Target], categories: pd.DataFrame
) -> tuple[dict[str, Any], dict[str, float] | None]:
    """The weights' summary for `fieldwork_state.weights`, and each completer's weight when converged.
    A sample without targets (filters only) has nothing to rake to: every complete weighs 1."""
    if not targets:
        n = len(categories)
        summary = {
            "status": "converged",
            "message": "no targets to weight to: every complete weighs 1",
            "iterations": 0,
            "effective_sample_size": float(n),
            "design_effect": 1.0,
            "max_weight": 1.0,
            "min_weight": 1.0,
            "completes": n,
        }
        return summary, dict.fromkeys((str(uid) for uid in categories.index), 1.0)
    shares = {
        target.key: {CELL_SEPARATOR.join(cell): share for cell, share in target.shares.items()} for target in targets
    }
    columns = {key: categories[key].to_numpy(dtype=object) for key in shares}
    bounds = request.fieldwork.weight_bounds if request.fieldwork else (0.2, 5.0)
    result = weight_completes(columns, shares, bounds)
    summary = {**result.to_document(), "completes": len(categories)}
    if result.weights is None:
        return summary, None
    return summary, {str(uid): round(float(w), 6) for uid, w in zip(categories.index, result.weights, strict=True)}


def _as_utc(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
