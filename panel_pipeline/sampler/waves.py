"""Fieldwork waves: the draw's first wave and the fieldwork pass's top-up waves, with the contact
budget at both (pure; no Mongo, no Dagster). sampler/fieldwork.py chooses the members; this module
decides over whom, and when.

Invariants:

- A sample whose fieldwork has `waves` (and is not dynamic: a dynamic sample's newcomers come
  through the Updater; and has targets: cells to count) is drawn as a first wave:
  `fieldwork.first_wave` over the eligible members, so each cell's expected completes are
  `first_wave_share` of its target, at the rates fieldwork accounts with
  (`fieldwork_state.member_rates`: the request's own, else the learned ones). The draw's report
  (composition, missing values, dropped targets, shortfall) is `quotas.select`'s plan sized at
  those rates; only its invitations are replaced by the wave's.
- Both waves use the cells the fieldwork pass counts (`sample_targets` / `sample_cells` of the
  draw's result), so the first wave fills what the pass accounts.
- A top-up is due when fieldwork is open with waves, the sample has a mailing, the latest wave was
  added at least `top_up_every_hours` ago (its members' earliest `added_at`; the draw for wave 1),
  and some open cell still needs at least `fieldwork.MIN_NEED` completes beyond those expected to
  come (the need `fieldwork.top_up` acts on: a cell one complete short, with a fifth of one still
  expected, is topped up rather than left short until close_at).
  All of it is read from the sample's members, so a pass that crashed after adding a wave sees it.
- Waves invite only members the draw could: eligible (filters, exclusions), placeable, not yet in
  the sample, and with room in the contact budget (`contacts_per_week`); a top-up never invites into
  a closed cell. Members held back by the budget are counted per cell.
- Members added but not mailed yet count as invited from their `added_at` (store.fieldwork_members),
  so a re-run of a pass never tops up the same need twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from panel_pipeline.sampler import fieldwork
from panel_pipeline.sampler.fieldwork_state import (
    FIELDWORK_OPEN,
    FieldworkUpdate,
    member_rates,
    sample_cells,
    sample_targets,
)
from panel_pipeline.sampler.quotas import SelectionResult, select
from panel_pipeline.sampler.requests import SampleRequest, filter_mask
from panel_pipeline.sampler.response_rates import LearnedResponseRates, rates_for_request
from panel_pipeline.sampler.targets import Target, request_targets
from panel_pipeline.shared.mongo import as_utc


def uses_waves(request: SampleRequest) -> bool:
    """Fielded in waves: fieldwork with `waves`, not dynamic, and targets to count cells by (a sample
    without targets is drawn in one, as `select` sizes it)."""
    return (
        request.fieldwork is not None
        and request.fieldwork.waves
        and not request.dynamic
        and bool(request_targets(request))
    )


def sized_for_completes(request: SampleRequest) -> bool:
    """Its invitations are sized for completes at the learned rates when it gives no rate of its own:
    a sample that invites (a `mailing`) or is fielded, drawn in waves or in one. A list of members
    (neither) is sized in members; a dynamic sample's newcomers come through the Updater."""
    return (request.mailing is not None or request.fieldwork is not None) and not request.dynamic


def sizing_request(request: SampleRequest, learned: LearnedResponseRates | None) -> SampleRequest:
    """The request as the draw plans it: its own rates, else the learned ones as its rate table (so
    `load_panel` reads the rate fields and `select` sizes invitations and reports capacities at them)."""
    if learned is None or request.gives_response_rate:
        return request
    return request.model_copy(update={"expected_response_rate": rates_for_request(request, learned)})


def pool_mask(
    panel: pd.DataFrame, request: SampleRequest, targets: Sequence[Target], eligible: np.ndarray
) -> np.ndarray:
    """Members a wave may invite: eligible, matching the filters, placeable on `targets` (with
    `missing: "exclude"`, having every target's value)."""
    mask = np.asarray(eligible, dtype=bool) & filter_mask(panel, request.filters) & fieldwork.placeable(panel, targets)
    if request.missing == "exclude":
        mask &= fieldwork.member_categories(panel, targets).notna().all(axis=1).to_numpy()
    return mask


def draw_budget(
    panel: pd.DataFrame, request: SampleRequest, contacts: np.ndarray, eligible: np.ndarray, budget: int
) -> fieldwork.BudgetCheck:
    """The contact budget at the draw: who among the eligible may be invited, the held back per
    cell of the request's targets (`contacts`: each panel member's survey contacts in 7 days)."""
    targets = request_targets(request)
    cells = fieldwork.cell_targets(targets, request.size)
    return fieldwork.contact_budget(
        contacts, cells, fieldwork.member_categories(panel, targets), budget, considered=eligible
    )


def first_wave_selection(
    panel: pd.DataFrame, request: SampleRequest, eligible: np.ndarray, learned: LearnedResponseRates | None
) -> SelectionResult:
    """The draw of a sample with waves: select()'s report, with the first wave as its invitations."""
    assert request.fieldwork is not None
    result = select(panel, sizing_request(request, learned), eligible)
    document = result.to_document()
    targets = sample_targets(request, document)
    cells = sample_cells(request, document, targets)
    rates, _ = member_rates(request, learned, panel)
    wave = fieldwork.first_wave(
        cells,
        fieldwork.member_categories(panel, targets),
        rates,
        request.fieldwork,
        np.random.default_rng(result.seed),
        pool_mask(panel, request, targets, eligible),
    )
    return dataclasses.replace(
        result,
        row_positions=wave.positions,
        member_ids=panel.index.to_numpy()[wave.positions],
        expected_completes=wave.expected_completes,
    )


# --- top-ups ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopUp:
    """One top-up wave: who to add (user ids as str), what it asked for per cell, who the budget held back."""

    wave: int
    member_ids: np.ndarray
    invitations: fieldwork.Invitations
    budget: fieldwork.BudgetCheck

    def to_document(self, at: dt.datetime) -> dict[str, Any]:
        cells = self.invitations.cells
        return {
            "wave": self.wave,
            "at": at,
            "invitations": self.invitations.count,
            "expected_completes": round(self.invitations.expected_completes, 1),
            "by_cell": [
                {
                    "target": str(target),
                    "category": str(category),
                    "need": round(float(need), 1),
                    "invitations": int(n),
                    "invitable_completes": None if np.isnan(invitable) else round(float(invitable), 1),
                }
                for target, category, need, n, invitable in zip(
                    cells["target"],
                    cells["category"],
                    cells["need"].to_numpy(dtype=float),
                    cells["invitations"].to_numpy(dtype=np.int64),
                    cells["invitable_completes"].to_numpy(dtype=float),
                    strict=True,
                )
                if need > 0 or n > 0
            ],
        }


def invitable_completes(request: SampleRequest, state: Mapping[str, Any], cells: pd.DataFrame) -> np.ndarray | None:
    """Per cell of `cells` (an accounting's), what the members still invitable into it could give, as
    the last top-up look (`state.last_top_up`) found; NaN for a cell it did not look at, or before any
    look. None for a sample not fielded in waves: it has no top-ups to fill a cell instead."""
    if not uses_waves(request):
        return None
    looked = {
        (cell["target"], cell["category"]): cell.get("invitable_completes")
        for cell in (state.get("last_top_up") or {}).get("by_cell", [])
    }
    found = [
        looked.get((target, category)) for target, category in zip(cells["target"], cells["category"], strict=True)
    ]
    return np.array([np.nan if value is None else float(value) for value in found])


def wave_number(members: pd.DataFrame) -> int:
    """The sample's latest wave (1 for members drawn before waves were numbered)."""
    waves = pd.to_numeric(members["wave"], errors="coerce")
    return int(waves.max()) if waves.notna().any() else 1


def latest_wave(members: pd.DataFrame, drawn_at: dt.datetime) -> tuple[int, dt.datetime]:
    """The sample's latest wave and when it was added (the draw's time for wave 1)."""
    wave = wave_number(members)
    if wave <= 1:
        return 1, drawn_at
    in_wave = (pd.to_numeric(members["wave"], errors="coerce") == wave).to_numpy()
    added = pd.to_datetime(members.loc[in_wave, "added_at"], utc=True).min()
    return wave, drawn_at if pd.isna(added) else added.to_pydatetime()


def top_up_not_due(
    request: SampleRequest,
    update: FieldworkUpdate,
    members: pd.DataFrame,
    drawn_at: dt.datetime,
    before: Mapping[str, Any],
    now: dt.datetime,
) -> str | None:
    """Why no top-up goes out now, or None when one is due (the module docstring's rule). A look
    that found nobody to add (`before.last_top_up`) also waits `top_up_every_hours` for the next."""
    if not uses_waves(request) or request.fieldwork is None:
        return "the sample is not fielded in waves"
    if request.mailing is None:
        return "the sample has no mailing to invite with"
    if update.state["status"] != FIELDWORK_OPEN:
        return "fieldwork is closed"
    wave, added = latest_wave(members, drawn_at)
    last_look = (before.get("last_top_up") or {}).get("at")
    if isinstance(last_look, dt.datetime):
        added = max(added, as_utc(last_look))
    next_at = request.fieldwork.clock.wall_after(added, request.fieldwork.top_up_every_hours, now)
    if now < next_at:
        hours = request.fieldwork.top_up_every_hours
        return f"wave {wave} (or the last look) is under {hours:g} h old; next look from {next_at:%Y-%m-%d %H:%M} UTC"
    cells = update.accounting.cells
    if not (~cells["closed"] & (cells["need"] >= fieldwork.MIN_NEED)).any():
        return f"no open cell needs {fieldwork.MIN_NEED:g} complete more than those expected to come"
    return None


def plan_top_up(
    request: SampleRequest,
    result: Mapping[str, Any],
    update: FieldworkUpdate,
    members: pd.DataFrame,
    panel: pd.DataFrame,
    eligible: np.ndarray,
    contacts: np.ndarray,
    budget: int,
    learned: LearnedResponseRates | None,
    seed: int,
) -> TopUp:
    """The next wave over `panel` (eligible after exclusions; `contacts` aligned with it), for the
    cells `update` finds short, never into a closed one, within the budget."""
    assert request.fieldwork is not None
    targets = sample_targets(request, result)
    pool = fieldwork.member_categories(panel, targets)
    considered = pool_mask(panel, request, targets, eligible) & ~panel.index.isin(members.index)
    check = fieldwork.contact_budget(contacts, update.accounting.cells, pool, budget, considered=considered)
    wave = wave_number(members) + 1
    rates, _ = member_rates(request, learned, panel)
    rng = np.random.default_rng([seed, wave])
    invitations = fieldwork.top_up(update.accounting, pool, rates, request.fieldwork, rng, considered & check.allowed)
    return TopUp(wave, panel.index.to_numpy()[invitations.positions], invitations, check)


def state_with_waves(
    state: Mapping[str, Any],
    before: Mapping[str, Any],
    members: pd.DataFrame,
    top_up: TopUp | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """`fieldwork_state` with its waves: `by_wave` (`[{wave, added_at, members}]`, from the members
    plus this pass's top-up), `waves` (the latest), and `last_top_up` and `held_back` (the latest
    budget check: the draw's until the first top-up) carried over when this pass made no top-up."""
    waves = pd.to_numeric(members["wave"], errors="coerce").fillna(1).astype(int).to_numpy()
    added = pd.to_datetime(members["added_at"], utc=True)
    by_wave = []
    for wave in sorted(set(waves.tolist())):
        first = added[waves == wave].min()
        by_wave.append(
            {
                "wave": wave,
                "added_at": None if pd.isna(first) else first.to_pydatetime(),
                "members": int((waves == wave).sum()),
            }
        )
    updated = {**state, **{key: before[key] for key in ("last_top_up", "held_back") if key in before}}
    if top_up is not None:
        updated["last_top_up"] = top_up.to_document(now)
        updated["held_back"] = top_up.budget.to_document()
        if len(top_up.member_ids):
            by_wave.append({"wave": top_up.wave, "added_at": now, "members": len(top_up.member_ids)})
            updated["waves"] = top_up.wave
    updated["by_wave"] = by_wave
    return updated
