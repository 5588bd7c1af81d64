"""Fieldwork: from the first invitation to closing, cell by cell (pure; no Mongo, no Dagster).

A sample's cells are its marginal target categories (`target`, `category`, `target_completes`,
`cap`: `cell_targets`). Its members are one row each: their category per target
(a column named by the target key, e.g. "age_band|gender" = "18-24|male"; None = missing, counted
in none of that target's categories), and MEMBER_COLUMNS (`invited_at`, `completed_at`, ...).
Invariants:

- A cell is full when its completes plus the respondents still in the survey reach its target (as
  Decipher counts), and closed when they reach its cap; a member is in the survey (`in_progress`)
  when flagged so, or when their Partial response moved on within IN_SURVEY_HOURS fieldwork hours
  (`partial_at`; an interview takes minutes, so one older than that was abandoned); a closed cell
  gets no more invitations or reminders, and its members are screened out at survey entry. Every
  member counts toward each of its categories, so a member is invitable only if none of its cells
  is closed.
- The first target is the sample's hard quota (uk_nat_rep: age x gender): its cells close once full.
  The other targets' cells are soft: they too close once full while top-ups can still reach what the
  hard cells need, and at their `cap`, their target plus half the request's tolerance (in points of
  the target's total; the other half is for respondents who enter before the next pass closes the
  cell), once reopened: from the first top-up that found a short hard cell nobody to invite
  (`stranded_hard_cells`: late in a small sample each man of 45-54 left can be in some full
  marginal cell), and from the start in a sample without top-ups. Raking corrects the overrun. A
  cell's `cap` in the accounting is where it closes now.
- Expected completes use the predicted per-member rates and the time-to-complete curve: by now
  (sum of rate x curve share at the invitation's age) and to come (for an invited member not yet in:
  P(later | not yet) = r(1-F)/(1-rF)); rates are scaled per cell by observed/expected by now (shrunk
  with OBSERVED_PRIOR_COMPLETES), so a cell responding worse than predicted asks for more.
- The first wave gives each member a chance of invitation such that the expected completes per cell
  are `first_wave_share` of its target: the members' expected completes raked to those needs (the
  panel's joint structure kept, as quotas.py plans), rounded at random per joint cell. Top-ups ask
  for `first_wave_share` of what each cell still needs and choose member by member, tightest cells
  first, taking a member when what they add to cells that need completes outweighs OVERFILL_COSTS
  times what they add to cells that do not (strict, then looser passes). Raking does not fit top-ups:
  their needs do not agree on one total across targets once some cells are ahead.
- Reminders go only to invited members who have not completed, are not in the survey, are active,
  were invited (or last reminded) at least `reminder_after_hours` ago, have had fewer than
  `max_reminders`, and whose cells are all open and at least one still short; in a sample with
  top-ups, short of what the members still invitable into it could give (its fresh sample runs
  out: the last top-up's `invitable_completes` under its need), as Sample Ninja reminds only when a
  segment runs short. A reminder goes to someone who let one invitation pass: it lifts completes by
  a modest share and costs unsubscribes, so a fresh invitation is the better contact while there is
  one to make (fieldwork_bench: reminding every short cell took 0.5 x the oracle's invitations in
  extra contacts and saved 3% of the invitations).
- The contact budget (invitations plus reminders in 7 days, across samples) is a mask the caller
  applies at draw, top-up, reminder and dynamic add; held-back members are counted per cell.
- Fieldwork closes at `close_at`, when every cell is full, or when every hard cell is (no member
  placed in the hard target can come in any more) (`closing_reason`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from panel_pipeline.sampler.quotas import draw_within_cells
from panel_pipeline.sampler.requests import CELL_SEPARATOR, FieldworkSettings
from panel_pipeline.sampler.response_rates import CompletionCurve
from panel_pipeline.sampler.targets import Target
from panel_pipeline.sampler.weighting import rake
from panel_pipeline.shared.clock import REAL_TIME, FieldworkClock
from panel_pipeline.shared.contacts import DEFAULT_CONTACTS_PER_WEEK

# Member columns (sample_members fields); the optional ones default as listed.
INVITED_AT = "invited_at"  # NaT: not invited
COMPLETED_AT = "completed_at"  # NaT: no complete
REMINDED_AT = "reminded_at"  # the last reminder, NaT if none
REMINDERS = "reminders"  # optional, 0
WAVE = "wave"  # optional
IN_PROGRESS = "in_progress"  # optional, False: started the survey, not yet finished
PARTIAL_AT = "partial_at"  # optional, NaT: when the member's Partial survey response last moved on
SCREENED_OUT = "screened_out"  # optional, False: turned away at entry (a closed cell); never completes
ACTIVE = "active"  # optional, True: users.status is active
MEMBER_COLUMNS: tuple[str, ...] = (
    INVITED_AT,
    COMPLETED_AT,
    REMINDED_AT,
    REMINDERS,
    WAVE,
    IN_PROGRESS,
    PARTIAL_AT,
    SCREENED_OUT,
    ACTIVE,
)

OBSERVED_PRIOR_COMPLETES = 10.0  # pseudo-completes at the predicted rate when blending in the observed one
# Per target, pass by pass: at 1 a member adding to a cell that needs nothing is taken only if it
# adds as much to every other cell; later passes accept more overfill for the cells still short, the
# last any: a member's cells that need nothing are then all soft cells under their cap (a full hard
# cell is closed, and nobody in a closed cell is invitable).
OVERFILL_COSTS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.0)
# A soft cell closes at its target plus this share of the tolerance: respondents who enter between a
# cell reaching its cap and the pass that lists it in closed_cells may use the rest.
SOFT_SHARE_OF_TOLERANCE = 0.5
MIN_NEED = 0.5  # a cell is short when it needs at least half a complete more
MAX_RATE = 0.99
IN_SURVEY_HOURS = 2.0  # a Partial response that has not moved on for this long was abandoned


# --- cells ---------------------------------------------------------------------------------------


def cell_targets(
    targets: Sequence[Target],
    completes: int,
    missing_shares: Mapping[str, float] | None = None,
    tolerance_pp: float = 0.0,
) -> pd.DataFrame:
    """The sample's cells: target, category, target_completes = completes x (1 - the target's missing
    share, from the draw's `result.missing`) x share, rounded by largest remainder within each target,
    and cap: the completes at which the cell closes (its target in the first target, the hard quota;
    its target plus half of `tolerance_pp`, in points of its target's total, in the others).

    From the shares, not from the draw's per-cell plan: with rates below 1 the plan's capacities can
    leave low-responding cells short, and fieldwork is there to fill them."""
    rows: list[tuple[str, str, int, int]] = []
    for position, target in enumerate(targets):
        answered = completes * (1.0 - (missing_shares or {}).get(target.key, 0.0))
        exact = target.share_array() * answered
        whole = np.floor(exact)
        extra = int(round(answered - whole.sum()))
        whole[np.argsort(-(exact - whole), kind="stable")[:extra]] += 1
        allowance = (
            0 if position == 0 else int(np.floor(SOFT_SHARE_OF_TOLERANCE * tolerance_pp / 100.0 * whole.sum() + 1e-9))
        )
        rows.extend(
            (target.key, CELL_SEPARATOR.join(cell), int(count), int(count) + allowance)
            for cell, count in zip(target.cells, whole, strict=True)
        )
    return pd.DataFrame(rows, columns=["target", "category", "target_completes", "cap"])


def member_categories(profiles: pd.DataFrame, targets: Sequence[Target]) -> pd.DataFrame:
    """Per target key, each member's category ("18-24|male"); None when a value is missing or the
    values are in none of the target's cells."""
    columns: dict[str, Any] = {}
    for target in targets:
        parts = [profiles[field].astype(object) for field in target.fields]
        joined = parts[0].astype(str)
        for part in parts[1:]:
            joined = joined + CELL_SEPARATOR + part.astype(str)
        cells = {CELL_SEPARATOR.join(cell) for cell in target.cells}
        present = np.all([part.notna().to_numpy() for part in parts], axis=0)
        columns[target.key] = joined.astype(object).where(present & joined.isin(cells).to_numpy(), None)
    return pd.DataFrame(columns, index=profiles.index)


def placeable(profiles: pd.DataFrame, targets: Sequence[Target]) -> np.ndarray:
    """Members a sample can place: for every target, values that are in one of its cells or missing
    (a value in none of them, such as gender `other` against age x gender, cannot be placed, as in
    quotas.py). Pools for waves and top-ups hold only placeable members."""
    categories = member_categories(profiles, targets)
    mask = np.ones(len(profiles), dtype=bool)
    for target in targets:
        answered = np.all([profiles[field].notna().to_numpy() for field in target.fields], axis=0)
        mask &= ~answered | categories[target.key].notna().to_numpy()
    return mask


def category_codes(cells: pd.DataFrame, members: pd.DataFrame) -> np.ndarray:
    """members x targets: each member's row in `cells` for each target (-1: none)."""
    targets = list(dict.fromkeys(cells["target"]))
    codes = np.full((len(members), len(targets)), -1, dtype=np.int64)
    for slot, target in enumerate(targets):
        rows = np.flatnonzero((cells["target"] == target).to_numpy())
        if target not in members:
            continue
        found = pd.Index(cells["category"].to_numpy()[rows]).get_indexer(members[target].astype(object))
        codes[:, slot] = np.where(found >= 0, rows[np.maximum(found, 0)], -1)
    return codes


@dataclass(frozen=True)
class CellAccounting:
    """The sample's cells now: one row per cell with target_completes, cap, completes, in_progress,
    invited, observed_rate, expected_by_now, behind_curve, projected, need, full, closed, over_target_pp."""

    cells: pd.DataFrame
    completes: int
    invited: int
    in_progress: int
    reminders: int

    @property
    def closed_cells(self) -> list[tuple[str, str]]:
        closed = self.cells[self.cells["closed"]]
        return list(zip(closed["target"], closed["category"], strict=True))

    @property
    def every_cell_full(self) -> bool:
        return bool(self.cells["full"].all())

    @property
    def invitations_per_complete(self) -> float:
        return self.invited / self.completes if self.completes else float("inf")

    def over_tolerance(self, tolerance_pp: float) -> pd.DataFrame:
        """Cells whose completes exceed their target by more than `tolerance_pp` points of their target's
        total (the "no cell over target by more than its tolerance" check)."""
        return self.cells[self.cells["over_target_pp"] > tolerance_pp]

    @property
    def short_cells(self) -> pd.DataFrame:
        return self.cells[~self.cells["full"] & (self.cells["need"] >= MIN_NEED)]

    def to_document(self) -> dict[str, Any]:
        """`fieldwork_state` fields (JSON-able): completes, invited, in_progress, reminders, by_cell, closed_cells."""
        cells = self.cells
        expected = cells["expected_by_now"].to_numpy(dtype=float)
        by_cell = [
            {
                "target": str(target),
                "category": str(category),
                "target_completes": int(wanted),
                "cap": int(cap),
                "completes": int(done),
                "invited": int(invited),
                "in_progress": int(in_survey),
                "observed_response_rate": round(float(rate), 4),
                "expected_by_now": None if np.isnan(by_now) else round(float(by_now), 1),
                "need": round(float(need), 1),
                "full": bool(full),
                "closed": bool(closed),
                "over_target_pp": round(float(over), 3),
            }
            for target, category, wanted, cap, done, invited, in_survey, rate, by_now, need, full, closed, over in zip(
                cells["target"],
                cells["category"],
                cells["target_completes"].to_numpy(dtype=np.int64),
                cells["cap"].to_numpy(dtype=np.int64),
                cells["completes"].to_numpy(dtype=np.int64),
                cells["invited"].to_numpy(dtype=np.int64),
                cells["in_progress"].to_numpy(dtype=np.int64),
                cells["observed_rate"].to_numpy(dtype=float),
                expected,
                cells["need"].to_numpy(dtype=float),
                cells["full"].to_numpy(dtype=bool),
                cells["closed"].to_numpy(dtype=bool),
                cells["over_target_pp"].to_numpy(dtype=float),
                strict=True,
            )
        ]
        return {
            "completes": self.completes,
            "invited": self.invited,
            "invitations_per_complete": round(self.invitations_per_complete, 3) if self.completes else None,
            "in_progress": self.in_progress,
            "reminders": self.reminders,
            "by_cell": by_cell,
            "closed_cells": [{"target": target, "category": category} for target, category in self.closed_cells],
        }


def account_cells(
    cells: pd.DataFrame,
    members: pd.DataFrame,
    *,
    now: dt.datetime | None = None,
    rates: np.ndarray | None = None,
    curve: CompletionCurve | None = None,
    clock: FieldworkClock = REAL_TIME,
    soft_cells_reopened: bool = True,
) -> CellAccounting:
    """Count each cell's completes, invitations and respondents in the survey; with `now`, the
    members' predicted `rates` and the `curve`, also what each cell should have by now and what it
    still needs (target - completes - in progress - completes still to come). The curve is in
    fieldwork hours, read on `clock` (FieldworkSettings). Cells close at their `cap`;
    without `soft_cells_reopened`, at their target."""
    codes = category_codes(cells, members)
    state = _member_state(members if now is None else with_partials_in_survey(members, now, clock))
    n_cells = len(cells)
    target_completes = cells["target_completes"].to_numpy(dtype=float)
    completes = _per_cell(codes, state.completed, n_cells)
    in_progress = _per_cell(codes, state.in_progress, n_cells)
    invited = _per_cell(codes, state.invited, n_cells)
    full = completes + in_progress >= target_completes
    cap = cells["cap"].to_numpy(dtype=float) if "cap" in cells and soft_cells_reopened else target_completes
    closed = completes + in_progress >= cap
    expected_by_now = np.full(n_cells, np.nan)
    to_come = np.zeros(n_cells)
    if now is not None and rates is not None and curve is not None:
        expected_by_now, to_come = _expected_completes(
            codes, state, members, now, np.asarray(rates), curve, n_cells, clock
        )
    projected = np.minimum(completes + in_progress + to_come, np.maximum(target_completes, completes + in_progress))
    frame = (
        cells[["target", "category", "target_completes"]]
        .reset_index(drop=True)
        .assign(
            cap=cap.astype(np.int64),
            completes=completes.astype(np.int64),
            in_progress=in_progress.astype(np.int64),
            invited=invited.astype(np.int64),
            observed_rate=np.divide(completes, invited, out=np.zeros(n_cells), where=invited > 0),
            expected_by_now=expected_by_now,
            behind_curve=~np.isnan(expected_by_now) & (completes + in_progress < expected_by_now),
            projected=projected,
            need=np.where(full, 0.0, target_completes - projected),
            full=full,
            closed=closed,
            over_target_pp=100.0 * (completes - target_completes) / _target_totals(cells),
        )
    )
    return CellAccounting(
        cells=frame,
        completes=int(state.completed.sum()),
        invited=int(state.invited.sum()),
        in_progress=int(state.in_progress.sum()),
        reminders=int(state.reminders.sum()),
    )


def _target_totals(cells: pd.DataFrame) -> np.ndarray:
    """Per cell, its target's total target completes (at least 1)."""
    totals = cells.groupby("target", sort=False)["target_completes"].transform("sum").to_numpy(dtype=float)
    return np.maximum(totals, 1.0)


@dataclass(frozen=True)
class _MemberState:
    invited: np.ndarray
    completed: np.ndarray
    in_progress: np.ndarray
    pending: np.ndarray  # invited, not completed, not in the survey, not screened out, active
    reminders: np.ndarray
    active: np.ndarray


def _member_state(members: pd.DataFrame) -> _MemberState:
    invited = members[INVITED_AT].notna().to_numpy()
    completed = members[COMPLETED_AT].notna().to_numpy()
    in_progress = _flag(members, IN_PROGRESS, False) & ~completed
    screened = _flag(members, SCREENED_OUT, False)
    active = _flag(members, ACTIVE, True)
    reminders = (
        members[REMINDERS].fillna(0).to_numpy(dtype=np.int64)
        if REMINDERS in members
        else members.get(REMINDED_AT, pd.Series(pd.NaT, index=members.index)).notna().to_numpy().astype(np.int64)
    )
    pending = invited & ~completed & ~in_progress & ~screened & active
    return _MemberState(invited, completed, in_progress, pending, reminders, active)


def with_partials_in_survey(members: pd.DataFrame, now: dt.datetime, clock: FieldworkClock) -> pd.DataFrame:
    """`in_progress` also for members whose Partial response moved on within IN_SURVEY_HOURS."""
    if PARTIAL_AT not in members:
        return members
    recent = clock.hours_since(members[PARTIAL_AT], now) <= IN_SURVEY_HOURS  # NaN (no Partial): False
    return members.assign(**{IN_PROGRESS: _flag(members, IN_PROGRESS, False) | recent})


def _flag(members: pd.DataFrame, column: str, default: bool) -> np.ndarray:
    if column not in members:
        return np.full(len(members), default)
    return members[column].fillna(default).to_numpy(dtype=bool)


def _per_cell(codes: np.ndarray, weights: np.ndarray, n_cells: int) -> np.ndarray:
    """Sum of `weights` (per member) over each cell's members."""
    total = np.zeros(n_cells)
    for slot in range(codes.shape[1]):
        has = codes[:, slot] >= 0
        total += np.bincount(codes[has, slot], weights=np.asarray(weights, dtype=float)[has], minlength=n_cells)
    return total


def _expected_completes(
    codes: np.ndarray,
    state: _MemberState,
    members: pd.DataFrame,
    now: dt.datetime,
    rates: np.ndarray,
    curve: CompletionCurve,
    n_cells: int,
    clock: FieldworkClock,
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: completes expected by now from the invited, and completes still to come."""
    age = np.nan_to_num(clock.hours_since(members[INVITED_AT], now), nan=0.0)
    share = curve.share_by(np.maximum(age, 0.0))
    expected_by_now = _per_cell(codes, np.where(state.invited, rates * share, 0.0), n_cells)
    observed = _per_cell(codes, state.completed | state.in_progress, n_cells)
    ratio = (observed + OBSERVED_PRIOR_COMPLETES) / (expected_by_now + OBSERVED_PRIOR_COMPLETES)
    adjusted = np.minimum(rates * member_rate_adjustment(codes, ratio), MAX_RATE)
    later = adjusted * (1.0 - share) / np.maximum(1.0 - adjusted * share, 1e-9)
    return expected_by_now, _per_cell(codes, np.where(state.pending, later, 0.0), n_cells)


def member_rate_adjustment(codes: np.ndarray, cell_ratio: np.ndarray) -> np.ndarray:
    """Per member: the geometric mean of its cells' observed/expected ratios (1 with no cell)."""
    logs = np.where(codes >= 0, np.log(np.append(cell_ratio, 1.0)[codes]), 0.0)
    counted = np.maximum((codes >= 0).sum(axis=1), 1)
    return np.exp(logs.sum(axis=1) / counted)


def cell_rate_adjustment(accounting: CellAccounting) -> np.ndarray:
    """Per cell: observed (completes + in progress) over expected by now, shrunk; 1 before any expectation."""
    cells = accounting.cells
    expected = np.nan_to_num(cells["expected_by_now"].to_numpy(dtype=float), nan=0.0)
    observed = (cells["completes"] + cells["in_progress"]).to_numpy(dtype=float)
    return (observed + OBSERVED_PRIOR_COMPLETES) / (expected + OBSERVED_PRIOR_COMPLETES)


# --- invitations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invitations:
    """Who to invite: `positions` into the pool, and per cell the need and the completes expected."""

    positions: np.ndarray
    # target, category, need, invitations, expected_completes, and invitable_completes: the completes
    # expected were every member invitable into the cell invited (NaN when nobody was looked for)
    cells: pd.DataFrame
    expected_completes: float

    @property
    def count(self) -> int:
        return len(self.positions)


def first_wave(
    cells: pd.DataFrame,
    pool: pd.DataFrame,
    rates: np.ndarray,
    settings: FieldworkSettings,
    rng: np.random.Generator,
    eligible: np.ndarray | None = None,
) -> Invitations:
    """The first wave: members expected to give `first_wave_share` of each cell's target (all of it
    when the request asks for no waves). `pool`: the eligible panel's categories (member_categories)."""
    share = settings.first_wave_share if settings.waves else 1.0
    need = share * cells["target_completes"].to_numpy(dtype=float)
    codes = category_codes(cells, pool)
    rates = np.asarray(rates, dtype=float)
    allowed = np.ones(len(pool), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    allowed &= (codes >= 0).any(axis=1) & (rates > 0)
    members = np.flatnonzero(allowed)
    fractions = invitation_fractions(codes[members], rates[members], need, cells)
    positions = members[_draw_by_joint_cell(codes[members], rates[members], fractions, rng)]
    return _invitations(cells, need, codes, rates, positions, _per_cell(codes[members], rates[members], len(cells)))


def invitation_fractions(codes: np.ndarray, rates: np.ndarray, need: np.ndarray, cells: pd.DataFrame) -> np.ndarray:
    """Each member's chance of an invitation such that the expected completes per cell are `need`:
    the members' expected completes raked to the needs (bounded so no chance exceeds 1). Margins
    that agree on one total (a first wave's) are met exactly when the panel allows; raking keeps the
    panel's own joint structure (quotas.py plans the same way)."""
    targets = list(dict.fromkeys(cells["target"]))
    first_rows = np.flatnonzero((cells["target"] == targets[0]).to_numpy())
    total = float(need[first_rows].sum())
    if total <= 0 or len(rates) == 0:
        return np.zeros(len(rates))
    variable_codes, shares = [], []
    for slot, target in enumerate(targets):
        rows = np.flatnonzero((cells["target"] == target).to_numpy())
        local = np.full(len(cells) + 1, len(rows))  # members with no category in this target: one more
        local[rows] = np.arange(len(rows))
        code = local[codes[:, slot]]
        lacking_share = float(np.sum(rates[code == len(rows)]) / rates.sum())
        wanted = need[rows] / max(need[rows].sum(), 1e-12) * (1.0 - lacking_share)
        variable_codes.append(code)
        shares.append(np.append(wanted, lacking_share))
    scale = total / rates.sum()  # expected completes if everyone were invited at one common chance
    result = rake(variable_codes, shares, rates * scale, upper=1.0 / scale, tolerance=1e-6, max_iterations=200)
    return np.clip(result.weights / rates, 0.0, 1.0)


def _draw_by_joint_cell(
    codes: np.ndarray, rates: np.ndarray, fractions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Positions drawn so each joint cell (members with the same categories and rate, hence the same
    chance) gets its summed chances as a count, rounded at random, drawn uniformly within the cell."""
    _, rate_code = np.unique(rates, return_inverse=True)
    _, member_cell = np.unique(np.column_stack([codes, rate_code.ravel()]), axis=0, return_inverse=True)
    member_cell = member_cell.ravel()
    counts = np.bincount(member_cell)
    expected = np.bincount(member_cell, weights=fractions, minlength=len(counts))
    whole = np.floor(expected)
    invites = np.minimum(counts, whole + (rng.random(len(expected)) < expected - whole)).astype(np.int64)
    return draw_within_cells(rng, member_cell, counts.astype(np.int64), invites)


def top_up(
    accounting: CellAccounting,
    pool: pd.DataFrame,
    rates: np.ndarray,
    settings: FieldworkSettings,
    rng: np.random.Generator,
    eligible: np.ndarray | None = None,
) -> Invitations:
    """Invitations for the cells still short (`accounting` made with rates and curve), never into a
    closed cell; the pool's rates are scaled by each cell's observed/expected ratio. With waves, each
    top-up asks for `first_wave_share` of what a cell still needs (at least one complete's worth), so
    the waves close in on the target instead of overshooting it into screen-outs."""
    cells = accounting.cells
    short = cells["need"].to_numpy(dtype=float)
    share = settings.first_wave_share if settings.waves else 1.0
    need = np.where(short >= MIN_NEED, np.maximum(share * short, np.minimum(short, 1.0)), 0.0)
    pool_codes = category_codes(cells, pool)
    adjusted = np.minimum(np.asarray(rates) * member_rate_adjustment(pool_codes, cell_rate_adjustment(accounting)), 1)
    if not need.any():
        return _no_invitations(cells, need)
    return choose_invitations(
        cells, need, cells["closed"].to_numpy(dtype=bool), pool, adjusted, rng, eligible, codes=pool_codes
    )


def stranded_hard_cells(top_up_cells: pd.DataFrame, hard_target: str) -> list[str]:
    """The categories of `hard_target` that a top-up (`Invitations.cells`: target, category, need,
    invitations) found short and could invite nobody for: every invitable member they need is in a
    closed cell."""
    stranded = (
        (top_up_cells["target"] == hard_target)
        & (top_up_cells["need"].to_numpy(dtype=float) >= MIN_NEED)
        & (top_up_cells["invitations"].to_numpy(dtype=np.int64) == 0)
    )
    return [str(category) for category in top_up_cells.loc[stranded, "category"]]


def choose_invitations(
    cells: pd.DataFrame,
    need: np.ndarray,
    closed: np.ndarray,
    pool: pd.DataFrame,
    rates: np.ndarray,
    rng: np.random.Generator,
    eligible: np.ndarray | None = None,
    codes: np.ndarray | None = None,
) -> Invitations:
    """Members of `pool` whose expected completes (their `rates`) fill `need` per cell: taken one at
    a time, tightest cells first, while what they add where completes are needed outweighs
    OVERFILL_COSTS times what they add where none are; never a member of a closed cell."""
    codes = category_codes(cells, pool) if codes is None else codes
    rates = np.asarray(rates, dtype=float)
    allowed = np.ones(len(pool), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).copy()
    allowed &= ~np.any(np.where(codes >= 0, np.append(closed, False)[codes], False), axis=1)
    allowed &= (codes >= 0).any(axis=1) & (rates > 0)
    candidates = np.flatnonzero(allowed)
    capacity = _per_cell(codes[candidates], rates[candidates], len(cells))
    tightness = np.divide(need, capacity, out=np.where(need > 0, np.inf, 0.0), where=capacity > 0)
    member_tightness = np.max(np.where(codes[candidates] >= 0, np.append(tightness, 0.0)[codes[candidates]], 0), axis=1)
    # Members of the tightest cell first, in random order among equals.
    order = candidates[np.lexsort((rng.random(len(candidates)), -member_tightness))]
    member_cells, member_rates, remaining = codes[order].tolist(), rates[order].tolist(), need.tolist()
    taken: set[int] = set()
    # Strict first (a member must not add to any cell that needs nothing), then looser passes over
    # the members not yet taken, for the cells the strict pass could not reach.
    for overfill_cost in OVERFILL_COSTS:
        taken |= _greedy_take(member_cells, member_rates, remaining, overfill_cost * codes.shape[1], taken)
    chosen = sorted(taken)
    positions = np.sort(order[np.asarray(chosen, dtype=np.int64)]) if chosen else np.zeros(0, dtype=np.int64)
    return _invitations(cells, need, codes, rates, positions, capacity)


def _invitations(
    cells: pd.DataFrame,
    need: np.ndarray,
    codes: np.ndarray,
    rates: np.ndarray,
    positions: np.ndarray,
    invitable_completes: np.ndarray,
) -> Invitations:
    invited = np.zeros(len(codes), dtype=bool)
    invited[positions] = True
    return Invitations(
        positions=positions,
        cells=cells[["target", "category"]]
        .reset_index(drop=True)
        .assign(
            need=need,
            invitations=_per_cell(codes, invited, len(cells)).astype(np.int64),
            expected_completes=_per_cell(codes, np.where(invited, rates, 0.0), len(cells)),
            invitable_completes=invitable_completes,
        ),
        expected_completes=float(rates[positions].sum()),
    )


def _greedy_take(
    member_cells: list[list[int]], rates: list[float], remaining: list[float], overfill_cost: float, skip: set[int]
) -> set[int]:
    """Indices of the members taken, in the given order, `remaining` updated in place (plain Python
    lists: this is the hot loop)."""
    left = sum(value for value in remaining if value > 0)
    taken: set[int] = set()
    for index, (member, rate) in enumerate(zip(member_cells, rates, strict=True)):
        if left < MIN_NEED:
            break
        if index in skip:
            continue
        gain = 0.0
        for cell in member:
            if cell >= 0:
                room = remaining[cell]
                gain += min(room, rate) if room > 0 else 0.0
                gain -= overfill_cost * (rate - room if rate > room > 0 else rate if room <= 0 else 0.0)
        if gain <= 0:
            continue
        taken.add(index)
        for cell in member:
            if cell >= 0:
                before = max(remaining[cell], 0.0)
                remaining[cell] -= rate
                left -= before - max(remaining[cell], 0.0)
    return taken


def _no_invitations(cells: pd.DataFrame, need: np.ndarray) -> Invitations:
    empty = (
        cells[["target", "category"]]
        .reset_index(drop=True)
        .assign(need=need, invitations=0, expected_completes=0.0, invitable_completes=np.nan)
    )
    return Invitations(np.zeros(0, dtype=np.int64), empty, 0.0)


# --- reminders, budget, closing ----------------------------------------------------------------------


def reminder_candidates(
    members: pd.DataFrame,
    accounting: CellAccounting,
    now: dt.datetime,
    settings: FieldworkSettings,
    allowed: np.ndarray | None = None,
    invitable_completes: np.ndarray | None = None,
) -> np.ndarray:
    """Mask of members to remind now (see the module docstring); `allowed`: the contact budget's mask;
    `invitable_completes`: per cell of the accounting, what every member still invitable into it
    could give (the last top-up's look; NaN where it did not look), None for a sample without top-ups."""
    state = _member_state(with_partials_in_survey(members, now, settings.clock))
    since_invited = settings.hours_since(members[INVITED_AT], now)
    since_reminded = (
        settings.hours_since(members[REMINDED_AT], now) if REMINDED_AT in members else np.full(len(members), np.nan)
    )
    last_contact = np.where(np.isnan(since_reminded), since_invited, since_reminded)
    cells = accounting.cells
    codes = category_codes(cells, members)
    closed = np.append(cells["closed"].to_numpy(dtype=bool), False)
    need = cells["need"].to_numpy(dtype=float)
    short = ~cells["closed"].to_numpy(dtype=bool) & (need >= MIN_NEED)
    if invitable_completes is not None:
        with np.errstate(invalid="ignore"):
            short &= np.asarray(invitable_completes, dtype=float) < need
    short = np.append(short, False)
    in_closed_cell = np.any(np.where(codes >= 0, closed[codes], False), axis=1)
    in_short_cell = np.any(np.where(codes >= 0, short[codes], False), axis=1)
    with np.errstate(invalid="ignore"):
        due = last_contact >= settings.reminder_after_hours
    mask = state.pending & due & (state.reminders < settings.max_reminders) & ~in_closed_cell & in_short_cell
    return mask if allowed is None else mask & np.asarray(allowed, dtype=bool)


@dataclass(frozen=True)
class BudgetCheck:
    """Who may be contacted once more, and who is held back (in all and per cell)."""

    allowed: np.ndarray
    held_back: int
    held_back_by_cell: pd.DataFrame  # target, category, held_back

    def to_document(self) -> dict[str, Any]:
        return {
            "held_back": self.held_back,
            "by_cell": [
                {"target": str(target), "category": str(category), "held_back": int(held)}
                for target, category, held in zip(
                    self.held_back_by_cell["target"],
                    self.held_back_by_cell["category"],
                    self.held_back_by_cell["held_back"].to_numpy(dtype=np.int64),
                    strict=True,
                )
                if held
            ],
        }


def contact_budget(
    contacts_last_7_days: np.ndarray,
    cells: pd.DataFrame,
    members: pd.DataFrame,
    budget: int = DEFAULT_CONTACTS_PER_WEEK,
    considered: np.ndarray | None = None,
) -> BudgetCheck:
    """Members whose survey contacts (invitations plus reminders, any sample) in the last 7 days
    leave room for one more under `budget`; the held back among `considered` (default all) per cell."""
    contacts = np.asarray(contacts_last_7_days, dtype=np.int64)
    allowed = contacts < budget
    held = ~allowed if considered is None else ~allowed & np.asarray(considered, dtype=bool)
    per_cell = _per_cell(category_codes(cells, members), held, len(cells)).astype(np.int64)
    return BudgetCheck(
        allowed=allowed,
        held_back=int(held.sum()),
        held_back_by_cell=cells[["target", "category"]].reset_index(drop=True).assign(held_back=per_cell),
    )


def closing_reason(
    accounting: CellAccounting,
    now: dt.datetime,
    close_at: dt.datetime,
    wanted: int | None = None,
    hard_target: str | None = None,
) -> str | None:
    """Why fieldwork closes now ("every cell is full", "every hard cell is full", "the completes
    wanted are in", "close_at reached"), or None while it stays open. Once every cell of the hard
    target is full (closed: it closes at its target), no member placed in it can come in any more,
    so the soft cells still short cannot fill: closing then spares the wait for close_at (raking
    corrects what they lack). A sample without cells (filters only) is full when its completes
    reach `wanted` (its size), never merely because it has no cell to fill."""
    cells = accounting.cells
    if len(cells) == 0:
        if wanted is not None and accounting.completes >= wanted:
            return "the completes wanted are in"
    elif accounting.every_cell_full:
        return "every cell is full"
    elif hard_target is not None and cells.loc[cells["target"] == hard_target, "full"].all():
        return "every hard cell is full"
    if now >= close_at:
        return "close_at reached"
    return None
