"""Quota selection: integer completes per profile cell, then a seeded random draw inside cells.

Pure numpy/scipy; no Mongo, no Dagster. The steps, for a panel DataFrame (one row per member,
profile fields as columns, index = member id) and a list of `Target`s:

0. Missing values: a member with no value for a target's attribute (`missing: "include"`, the
   default) stays eligible in the target's "missing" category: the target's shares apply among the
   members who have the value, and the missing category is held at its share of the placeable
   members, so the member still counts towards every other target. `missing: "exclude"` leaves
   such members out. A target no eligible member can be classified on is dropped for the draw, and
   the result says why (`DroppedTarget`). A value in none of the target's cells (gender `other`
   against age x gender, a derived age band "under 18") is not missing: that member cannot be placed.
1. Cells: members (eligible, and placeable on every target) are grouped by the cross of
   their target categories (and of the response-rate fields, if rates are per cell).
   Capacity of a cell = members x expected response rate (expected completes it can give).
2. Fractional plan: the cell table is raked to the target margins (so the plan keeps the
   panel's own joint structure rather than piling everyone into a few cells). If that is not
   possible within the capacities, an LP (HiGHS) finds the allocation closest to the targets
   (minimax, then total absolute deviation) and the table is raked to those achievable margins.
3. Controlled rounding: floors plus a MILP choosing which cells get one more complete so every
   margin stays as close as possible to its target (a local search instead for large tables, and
   for the rare small one HiGHS ends in a solve error on); ties are broken at random in proportion
   to the fractional parts, so integer plans stay unbiased for the joint structure.
4. Invitations per cell = ceil(completes / response rate), drawn uniformly at random inside
   the cell with a seeded generator (the seed used is returned, so any draw can be replayed
   on the same panel rows in the same order).

When the request cannot be met within `tolerance_pp`, the result has status "infeasible" and
reports per target category what was requested, available, achievable and short, and what
raking the planned sample back to the targets would cost (largest weight, Kish ESS).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from panel_pipeline.sampler.requests import CELL_SEPARATOR, MissingPolicy, ResponseRates, SampleRequest, filter_mask
from panel_pipeline.sampler.targets import Target, request_targets
from panel_pipeline.sampler.weighting import (
    design_effect,
    kish_effective_sample_size,
    rake,
    rake_with_cap,
)
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

WEIGHT_CAP = 5.0
PLAN_TOLERANCE = 1e-9  # largest margin error (as a share) for a fractional plan to count as exact
SOLVER_TIME_LIMIT_SECONDS = 20.0
EXACT_ROUNDING_MAX_CELLS = 300  # above this, controlled rounding uses local search: MILPs stall
MAX_SWAPS = 20_000
# A category is short when it misses at least half a complete: a shortfall that rounds to one or more.
SHORT_FROM_COMPLETES = 0.5
# Field codes below a value's index in PROFILE_CATEGORIES[field]:
NO_VALUE = -1  # the attribute is absent (or unreadable)
OUTSIDE_CONTRACT = -2  # a value, but none of the contract's (a derived age under 18)
NOT_PLACEABLE = -1  # target code: the member has values but they are in none of the target's cells


@dataclass(frozen=True)
class CategoryReport:
    """Target versus plan for one target category (e.g. region = Scotland)."""

    target: str
    category: str
    target_pct: float
    achieved_pct: float
    deviation_pp: float
    requested: float  # size x target share, in completes
    available: int  # eligible members in the category
    capacity: float  # expected completes they could give (members x response rate)
    allocated: int  # planned completes
    shortfall: float  # max(0, requested - allocated)

    @property
    def is_short(self) -> bool:
        return self.shortfall >= SHORT_FROM_COMPLETES


@dataclass(frozen=True)
class MissingReport:
    """How much of one target's attribute is missing: among the eligible placeable members, and
    in the planned sample (the target's shares apply to the rest)."""

    target: str
    members: int
    completes: int
    pct: float  # of the planned completes


@dataclass(frozen=True)
class DroppedTarget:
    """A target left out of the draw because no eligible member can be classified on it."""

    target: str
    reason: str


@dataclass(frozen=True)
class WeightingCost:
    """What raking the planned completes back to the targets would cost."""

    max_weight: float
    effective_sample_size: float
    design_effect: float
    reaches_targets: bool
    capped_max_weight: float
    capped_effective_sample_size: float
    capped_max_deviation_pp: float  # residual deviation with weights capped at WEIGHT_CAP


@dataclass(frozen=True)
class SelectionResult:
    status: Literal["ok", "infeasible"]
    size_requested: int
    completes_planned: int
    expected_completes: float
    seed: int
    tolerance_pp: float
    max_deviation_pp: float
    row_positions: np.ndarray  # positions (iloc) of the invited members in the panel
    member_ids: np.ndarray  # panel.index values of the invited members
    categories: tuple[CategoryReport, ...]
    cells: pd.DataFrame  # per cell: field values, available, response_rate, capacity, completes, invites
    weighting_cost: WeightingCost
    unclassified_members: int  # eligible members who cannot be placed (a value outside a target's cells, ...)
    missing: tuple[MissingReport, ...] = ()  # per target drawn to
    dropped_targets: tuple[DroppedTarget, ...] = ()

    @property
    def invited(self) -> int:
        return len(self.row_positions)

    @property
    def shortfalls(self) -> tuple[CategoryReport, ...]:
        return tuple(report for report in self.categories if report.is_short)

    def summary(self) -> str:
        """One paragraph a project manager can act on."""
        head = (
            f"{self.status}: {self.completes_planned} of {self.size_requested} completes planned "
            f"({self.invited} invitations); largest deviation from target {self.max_deviation_pp:.2f} pp "
            f"(tolerance {self.tolerance_pp:g} pp)."
        )
        head = " ".join([head, *(f"{dropped.reason}." for dropped in self.dropped_targets)])
        gaps = [report for report in self.missing if report.completes]
        if gaps:
            shown = ", ".join(f"{report.target} {report.pct:.1f}%" for report in gaps)
            head += f" Missing values in the sample: {shown} (each target's shares apply among the rest)."
        if self.status == "ok":
            return head
        cost = self.weighting_cost
        worst = sorted(self.shortfalls, key=lambda report: -report.shortfall)[:5]
        short = "; ".join(
            f"{report.target}={report.category}: {report.allocated} of {report.requested:.0f} "
            f"({report.available} eligible members, capacity {report.capacity:.0f})"
            for report in worst
        )
        return (
            f"{head} Short: {short or 'overall size'}. Weighting back to target would need weights up to "
            f"{cost.max_weight:.1f} and leave an effective sample of {cost.effective_sample_size:.0f} "
            f"(design effect {cost.design_effect:.2f}); capping weights at {WEIGHT_CAP:g} leaves "
            f"{cost.capped_max_deviation_pp:.2f} pp off target."
        )

    def to_document(self) -> dict[str, Any]:
        """JSON/BSON-ready report to write back onto the `samples` document."""
        return {
            "status": self.status,
            "size_requested": self.size_requested,
            "completes_planned": self.completes_planned,
            "invited": self.invited,
            "expected_completes": round(self.expected_completes, 1),
            "seed": self.seed,
            "tolerance_pp": self.tolerance_pp,
            "max_deviation_pp": round(self.max_deviation_pp, 3),
            "unclassified_members": self.unclassified_members,
            "composition": [_rounded(report.__dict__) for report in self.categories],
            "missing": [_rounded(report.__dict__) for report in self.missing],
            "dropped_targets": [dict(dropped.__dict__) for dropped in self.dropped_targets],
            "weighting_cost": _rounded(self.weighting_cost.__dict__),
            "message": self.summary(),
        }


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: round(float(value), 3) if isinstance(value, float | np.floating) else value
        for key, value in values.items()
    }


def panel_fields(request: SampleRequest) -> tuple[str, ...]:
    """The profile fields `select` reads for a request: its targets', response-rate cells' and filters'."""
    targets = request_targets(request)
    fields = {field for target in targets for field in target.fields}
    fields |= set(request.expected_response_rate.fields) | {condition.field for condition in request.filters}
    return tuple(sorted(fields))


def select(panel: pd.DataFrame, request: SampleRequest, eligible: np.ndarray | None = None) -> SelectionResult:
    """Select the request's sample from `panel`; `eligible` marks members left after exclusions.

    The request's filters are applied here too (idempotent if the panel was loaded with them).
    """
    mask = filter_mask(panel, request.filters)
    if eligible is not None:
        mask &= np.asarray(eligible, dtype=bool)
    return select_members(
        panel,
        request_targets(request),
        request.size,
        eligible=mask,
        seed=request.seed,
        tolerance_pp=request.tolerance,
        response_rates=request.expected_response_rate,
        missing=request.missing,
    )


def select_members(
    panel: pd.DataFrame,
    targets: Sequence[Target],
    size: int,
    *,
    eligible: np.ndarray | None = None,
    seed: int | None = None,
    tolerance_pp: float = 1.0,
    response_rates: ResponseRates | None = None,
    missing: MissingPolicy = "include",
) -> SelectionResult:
    """Plan `size` completes matching `targets` and draw the invitations from `panel`."""
    rates = response_rates or ResponseRates(default=1.0)
    used_seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else seed
    rng = np.random.default_rng(used_seed)
    mask = np.ones(len(panel), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    field_codes = _field_codes(panel, {field for target in targets for field in target.fields} | set(rates.fields))
    plan = plan_targets(field_codes, targets, mask, missing)
    table = build_cells(field_codes, plan, rates, mask)
    completes = plan_completes(table, plan.targets, size, rng)
    invites = np.minimum(table.counts, np.ceil(completes / table.response_rates - 1e-9)).astype(np.int64)
    chosen = table.member_rows[draw_within_cells(rng, table.member_cell, table.counts, invites)]
    categories = _category_reports(table, plan.targets, completes, size)
    max_deviation = max((abs(report.deviation_pp) for report in categories), default=0.0)
    status: Literal["ok", "infeasible"] = (
        "ok" if completes.sum() == size and max_deviation <= tolerance_pp else "infeasible"
    )
    return SelectionResult(
        status=status,
        size_requested=size,
        completes_planned=int(completes.sum()),
        expected_completes=float(np.sum(invites * table.response_rates)),
        seed=used_seed,
        tolerance_pp=tolerance_pp,
        max_deviation_pp=max_deviation,
        row_positions=chosen,
        member_ids=panel.index.to_numpy()[chosen],
        categories=categories,
        cells=_cell_frame(table, plan.targets, completes, invites),
        weighting_cost=weighting_cost(table.categories, [target.share_array() for target in plan.targets], completes),
        unclassified_members=table.unclassified,
        missing=_missing_reports(table, plan, completes),
        dropped_targets=plan.dropped,
    )


# --- 0. missing values -------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanTarget:
    """A target as the plan sees it: its cells, plus a "missing" category (index len(cells)) held at
    `missing_share` of the completes when some placeable members lack the attribute."""

    target: Target
    missing_share: float = 0.0

    @property
    def key(self) -> str:
        return self.target.key

    @property
    def categories(self) -> int:
        return len(self.target.cells) + (1 if self.missing_share > 0 else 0)

    def share_array(self) -> np.ndarray:
        shares = self.target.share_array() * (1.0 - self.missing_share)
        return np.append(shares, self.missing_share) if self.missing_share > 0 else shares


@dataclass(frozen=True)
class Plan:
    targets: tuple[PlanTarget, ...]
    codes: tuple[np.ndarray, ...]  # per target, each member's category (NOT_PLACEABLE: none)
    placeable: np.ndarray  # eligible members with a category in every target
    missing_members: tuple[int, ...]  # per target, placeable members in its missing category
    dropped: tuple[DroppedTarget, ...]


def plan_targets(
    field_codes: dict[str, np.ndarray], targets: Sequence[Target], eligible: np.ndarray, missing: MissingPolicy
) -> Plan:
    """The targets the draw can use on these eligible members, each member's category in each, and
    the targets dropped because no eligible member can be classified on them."""
    dropped: list[DroppedTarget] = []
    kept: list[Target] = []
    all_codes: dict[str, np.ndarray] = {}
    for target in targets:
        code = _target_codes(field_codes, target)
        in_cells = (code >= 0) & (code < len(target.cells))
        # With nobody eligible there is nothing to classify: the reason is the filters or exclusions.
        if in_cells[eligible].any() or not eligible.any():
            kept.append(target)
            all_codes[target.key] = code if missing == "include" else np.where(in_cells, code, NOT_PLACEABLE)
        else:
            dropped.append(DroppedTarget(target.key, _unclassifiable_reason(field_codes, target, eligible)))
    while True:
        codes = [all_codes[target.key] for target in kept]
        placeable = eligible & np.all([code >= 0 for code in codes], axis=0) if codes else eligible.copy()
        missing_members = [
            int(np.count_nonzero(code[placeable] == len(target.cells)))
            for code, target in zip(codes, kept, strict=True)
        ]
        placed = int(np.count_nonzero(placeable))
        # Everyone placeable lacks it (the members who have it cannot be placed on another target).
        unanswered = [index for index, count in enumerate(missing_members) if placed and count == placed]
        if not unanswered:
            break
        for index in unanswered:
            key = kept[index].key
            dropped.append(
                DroppedTarget(
                    key,
                    f"none of the members who can be placed on the other targets has answered {_answers(kept[index])}: "
                    f"the {key} target was left out of this draw",
                )
            )
        kept = [target for index, target in enumerate(kept) if index not in unanswered]
    shares = [count / placed if placed else 0.0 for count in missing_members]
    return Plan(
        targets=tuple(PlanTarget(target, share) for target, share in zip(kept, shares, strict=True)),
        codes=tuple(codes),
        placeable=placeable,
        missing_members=tuple(missing_members),
        dropped=tuple(dropped),
    )


def _unclassifiable_reason(field_codes: dict[str, np.ndarray], target: Target, eligible: np.ndarray) -> str:
    """Why no eligible member can be classified on `target`, in words a project manager can act on."""
    left_out = f"the {target.key} target was left out of this draw"
    unanswered = [field for field in target.fields if not (field_codes[field][eligible] != NO_VALUE).any()]
    if unanswered:
        return f"no member has answered {' or '.join(_answer_name(field) for field in unanswered)}: {left_out}"
    answered = eligible & np.all([field_codes[field] != NO_VALUE for field in target.fields], axis=0)
    if not answered.any():
        return f"no member has answered {_answers(target)} together: {left_out}"
    cells = ", ".join(CELL_SEPARATOR.join(cell) for cell in target.cells)
    return (
        f"none of the {int(answered.sum())} members who answered {_answers(target)} is in the target's "
        f"categories ({cells}): {left_out}"
    )


def _answers(target: Target) -> str:
    return " and ".join(_answer_name(field) for field in target.fields)


def _answer_name(field: str) -> str:
    """The question a member answers for `field` (age_band is derived from birth_year)."""
    return "birth_year (age_band)" if field == "age_band" else field


def _missing_reports(table: CellTable, plan: Plan, completes: np.ndarray) -> tuple[MissingReport, ...]:
    planned = max(int(completes.sum()), 1)
    reports = []
    for target, codes, members in zip(plan.targets, table.categories, plan.missing_members, strict=True):
        missing_completes = int(completes[codes == len(target.target.cells)].sum())
        reports.append(MissingReport(target.key, members, missing_completes, 100.0 * missing_completes / planned))
    return tuple(reports)


# --- 1. cells --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellTable:
    member_rows: np.ndarray  # panel positions of the placeable eligible members
    member_cell: np.ndarray  # their cell index
    counts: np.ndarray  # members per cell
    categories: list[np.ndarray]  # per target: each cell's category index in target.cells
    response_rates: np.ndarray  # per cell
    unclassified: int

    @property
    def capacity(self) -> np.ndarray:
        return self.counts * self.response_rates


def build_cells(
    field_codes: dict[str, np.ndarray], plan: Plan, rates: ResponseRates, eligible: np.ndarray
) -> CellTable:
    dimensions = plan.codes
    sizes = [target.categories for target in plan.targets]
    rate_codes, rate_cells = _rate_codes(field_codes, rates, len(eligible))
    rows = np.flatnonzero(plan.placeable)
    keys = np.ravel_multi_index([codes[rows] for codes in dimensions] + [rate_codes[rows]], sizes + [len(rate_cells)])
    unique_keys, member_cell = np.unique(keys, return_inverse=True)
    decoded = np.unravel_index(unique_keys, sizes + [len(rate_cells)])
    return CellTable(
        member_rows=rows,
        member_cell=member_cell.astype(np.int64),
        counts=np.bincount(member_cell, minlength=len(unique_keys)).astype(float),
        categories=[np.asarray(codes, dtype=np.int64) for codes in decoded[:-1]],
        response_rates=np.array([rates.rate_for(rate_cells[code]) for code in decoded[-1]], dtype=float),
        unclassified=int(np.count_nonzero(eligible)) - len(rows),
    )


def _field_codes(panel: pd.DataFrame, fields: set[str]) -> dict[str, np.ndarray]:
    """Index of each member's value in PROFILE_CATEGORIES[field]; NO_VALUE when absent,
    OUTSIDE_CONTRACT for a value that is none of the field's."""
    absent = sorted(fields - set(panel.columns))
    if absent:
        raise KeyError(f"panel has no column(s) {', '.join(absent)}")
    codes: dict[str, np.ndarray] = {}
    for field in fields:
        column = panel[field]
        values = pd.Index(PROFILE_CATEGORIES[field])
        if isinstance(column.dtype, pd.CategoricalDtype):
            # Map the few categories, then every member through its category code.
            known = values.get_indexer(pd.Index(column.cat.categories.astype(object)))
            by_category = np.append(np.where(known >= 0, known, OUTSIDE_CONTRACT), NO_VALUE)
            codes[field] = by_category[column.cat.codes.to_numpy()].astype(np.int64)
        else:
            known = values.get_indexer(pd.Index(column.astype(object))).astype(np.int64)
            codes[field] = np.where(column.isna().to_numpy(), NO_VALUE, np.where(known >= 0, known, OUTSIDE_CONTRACT))
    return codes


def _combined_codes(field_codes: dict[str, np.ndarray], fields: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mixed-radix code of the crossed values, and whether every value was present."""
    sizes = [len(PROFILE_CATEGORIES[field]) for field in fields]
    valid = np.all([field_codes[field] >= 0 for field in fields], axis=0)
    combined = np.ravel_multi_index([np.where(valid, field_codes[field], 0) for field in fields], sizes)
    return combined, valid


def _target_codes(field_codes: dict[str, np.ndarray], target: Target) -> np.ndarray:
    """Each member's index in target.cells; NOT_PLACEABLE if their values are in none of them; a
    member lacking a value whose other values could be in a cell gets len(target.cells), the
    target's missing category."""
    sizes = [len(PROFILE_CATEGORIES[field]) for field in target.fields]
    lookup = np.full(math.prod(sizes), NOT_PLACEABLE, dtype=np.int64)
    for index, cell in enumerate(target.cells):
        position = [PROFILE_CATEGORIES[field].index(value) for field, value in zip(target.fields, cell, strict=True)]
        lookup[np.ravel_multi_index(position, sizes)] = index
    combined, valid = _combined_codes(field_codes, target.fields)
    codes = np.where(valid, lookup[combined], NOT_PLACEABLE)
    lacking = np.zeros(len(codes), dtype=bool)
    could_fit = np.ones(len(codes), dtype=bool)
    for slot, field in enumerate(target.fields):
        # Indexed by field code + 2: OUTSIDE_CONTRACT, NO_VALUE, then the field's values.
        fits = np.zeros(len(PROFILE_CATEGORIES[field]) + 2, dtype=bool)
        fits[NO_VALUE + 2] = True
        fits[[PROFILE_CATEGORIES[field].index(cell[slot]) + 2 for cell in target.cells]] = True
        could_fit &= fits[field_codes[field] + 2]
        lacking |= field_codes[field] == NO_VALUE
    return np.where(lacking & could_fit, len(target.cells), codes)


def _rate_codes(
    field_codes: dict[str, np.ndarray], rates: ResponseRates, members: int
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Per member, an index into the returned list of rate cells (index 0 = no values: default)."""
    if not rates.fields:
        return np.zeros(members, dtype=np.int64), [()]
    combined, valid = _combined_codes(field_codes, rates.fields)
    cells = [()] + list(itertools.product(*(PROFILE_CATEGORIES[field] for field in rates.fields)))
    return np.where(valid, combined + 1, 0), cells


# --- 2. fractional plan ------------------------------------------------------------------------


def plan_completes(table: CellTable, targets: Sequence[PlanTarget], size: int, rng: np.random.Generator) -> np.ndarray:
    """Integer completes per cell: as close to the targets as capacities allow, summing to
    min(size, total capacity)."""
    # A cell expected to give fewer than one complete cannot be planned a whole one.
    capacity = np.floor(table.capacity + 1e-9)
    total = min(size, int(capacity.sum()))
    if total == 0:
        return np.zeros(len(capacity), dtype=np.int64)
    sizes = [target.categories for target in targets]
    membership = _membership(table.categories, sizes, len(capacity))
    wanted = total * np.concatenate([target.share_array() for target in targets]) if targets else np.zeros(0)
    fractional = fractional_plan(table.counts, capacity, table.categories, sizes, membership, wanted, total)
    return round_plan(fractional, capacity, membership, membership @ fractional, rng)


def _membership(categories: list[np.ndarray], sizes: list[int], cells: int) -> sparse.csr_matrix:
    """Rows: every target category (targets stacked); columns: cells; 1 where the cell belongs."""
    offsets = np.cumsum([0] + sizes[:-1])
    rows = (
        np.concatenate([codes + offset for codes, offset in zip(categories, offsets, strict=True)])
        if categories
        else np.zeros(0, dtype=np.int64)
    )
    columns = np.tile(np.arange(cells), len(categories))
    return sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(sum(sizes), cells))


def fractional_plan(
    counts: np.ndarray,
    capacity: np.ndarray,
    categories: list[np.ndarray],
    sizes: Sequence[int],
    membership: sparse.csr_matrix,
    wanted: np.ndarray,
    total: int,
) -> np.ndarray:
    """Completes per cell (fractional): the panel's cell table raked to the targets, or, when the
    capacities do not allow that, raked to the closest achievable margins."""
    proportional = counts * total / counts.sum()
    if not categories:
        return _scale_within_capacity(proportional, capacity, total)
    shares = _split(wanted / total, sizes)
    raked = rake(categories, shares, proportional, tolerance=PLAN_TOLERANCE)
    if raked.converged and np.all(raked.weights <= capacity + 1e-9):
        return raked.weights
    closest = closest_allocation(capacity, membership, wanted, total)
    achievable = _split((membership @ closest) / total, sizes)
    upper = np.divide(capacity, proportional, out=np.zeros_like(capacity), where=proportional > 0)
    bounded = rake(categories, achievable, proportional, upper=upper, tolerance=PLAN_TOLERANCE)
    # rake applies its bounds only when it iterates: margins already met return the start unbounded.
    return bounded.weights if bounded.converged and np.all(bounded.weights <= capacity + 1e-9) else closest


def _split(stacked: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Cut a vector over all stacked target categories back into one array per target."""
    return np.split(stacked, np.cumsum(sizes)[:-1])


def _scale_within_capacity(proportional: np.ndarray, capacity: np.ndarray, total: int) -> np.ndarray:
    """No targets: proportional to membership, with the excess over capacity moved elsewhere."""
    plan = np.minimum(proportional, capacity)
    while plan.sum() < total - 1e-9:
        room = capacity - plan
        plan = np.minimum(capacity, plan + room * (total - plan.sum()) / room.sum())
    return plan


def closest_allocation(
    capacity: np.ndarray, membership: sparse.csr_matrix, wanted: np.ndarray, total: int
) -> np.ndarray:
    """LP: completes per cell within capacity summing to `total`, minimising first the largest and
    then the summed absolute deviation of every target category from `wanted`."""
    plan = _solve_deviation_problem(membership, wanted, total, capacity, np.zeros(len(capacity)), integral=False)
    if plan is None:
        raise RuntimeError("quota allocation failed: the solver found no allocation within the cells' capacities")
    return np.clip(plan, 0, capacity)


def _solve_deviation_problem(
    membership: sparse.csr_matrix,
    wanted: np.ndarray,
    total: int,
    upper: np.ndarray,
    cell_cost: np.ndarray,
    *,
    integral: bool,
) -> np.ndarray | None:
    """min K * max_k |d_k| + sum_k |d_k| + cell_cost . x  subject to  sum x = total,
    membership @ x - wanted = d, 0 <= x <= upper (x integer if `integral`); returns x, or None when
    HiGHS gives none (on rare inputs it ends in "Solve error", and a rerun can succeed).

    Variables are [x (cells), d+ (K), d- (K), z] with d = d+ - d- and d+, d- <= z."""
    categories, cells = membership.shape
    identity = sparse.identity(categories, format="csr")
    no_cells = sparse.csr_matrix((categories, cells))
    no_categories = sparse.csr_matrix((categories, categories))
    ones_column = sparse.csr_matrix(np.ones((categories, 1)))
    sum_row = sparse.hstack([sparse.csr_matrix(np.ones((1, cells))), sparse.csr_matrix((1, 2 * categories + 1))])
    margins = sparse.hstack([membership, -identity, identity, sparse.csr_matrix((categories, 1))])
    minimax = sparse.vstack(
        [
            sparse.hstack([no_cells, identity, no_categories, -ones_column]),
            sparse.hstack([no_cells, no_categories, identity, -ones_column]),
        ]
    )
    constraints = [
        LinearConstraint(sum_row.tocsr(), total, total),
        LinearConstraint(margins.tocsr(), wanted, wanted),
        LinearConstraint(minimax.tocsr(), -np.inf, 0),
    ]
    cost = np.concatenate([cell_cost, np.ones(2 * categories), [float(categories)]])
    integrality = np.concatenate([np.full(cells, 1 if integral else 0), np.zeros(2 * categories + 1)])
    solution = milp(
        cost,
        constraints=constraints,
        integrality=integrality,
        bounds=Bounds(0, np.concatenate([upper, np.full(2 * categories + 1, np.inf)])),
        options={"time_limit": SOLVER_TIME_LIMIT_SECONDS, "mip_rel_gap": 1e-6},
    )
    return None if solution.x is None else solution.x[:cells]


# --- 3. controlled rounding --------------------------------------------------------------------


def round_plan(
    fractional: np.ndarray,
    capacity: np.ndarray,
    membership: sparse.csr_matrix,
    margin_targets: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Integer completes within (integer) `capacity`: floors, plus one more in the cells chosen to
    keep every target category as close as possible to `margin_targets`."""
    whole = np.floor(fractional + 1e-9)
    room = capacity - whole
    remainder = round(float(fractional.sum() - whole.sum()))
    if remainder <= 0:
        return whole.astype(np.int64)
    parts = np.clip(fractional - whole, 0.0, 1.0)
    candidates = np.flatnonzero((parts > 1e-9) & (room >= 1))
    if len(candidates) < remainder:
        candidates = np.flatnonzero(room >= 1)
    priority = _random_priority(rng, parts[candidates])
    residual = margin_targets - membership @ whole
    whole[candidates] += _choose_extra_completes(membership[:, candidates], residual, remainder, priority)
    return whole.astype(np.int64)


def _random_priority(rng: np.random.Generator, parts: np.ndarray) -> np.ndarray:
    """Ranks in [0, 1) of Efraimidis-Spirakis keys: taking the highest first is sampling without
    replacement with probability proportional to the fractional parts."""
    keys = np.log(rng.random(len(parts))) / np.maximum(parts, 1e-12)
    ranks = np.empty(len(parts))
    ranks[np.argsort(keys)] = np.arange(len(parts))
    return ranks / max(len(parts), 1)


def _choose_extra_completes(
    membership: sparse.csr_matrix, residual: np.ndarray, remainder: int, priority: np.ndarray
) -> np.ndarray:
    """Which cells get one extra complete (0/1 per cell), `remainder` of them in all."""
    cells = membership.shape[1]
    by_priority = np.zeros(cells)
    by_priority[np.argsort(-priority)[:remainder]] = 1
    if membership.shape[0] == 0:
        return by_priority
    if cells <= EXACT_ROUNDING_MAX_CELLS:
        # The priority bonus totals less than half a complete, so it only ever breaks ties.
        bonus = -0.5 * priority / remainder
        exact = _solve_deviation_problem(membership, residual, remainder, np.ones(cells), bonus, integral=True)
        if exact is not None:
            return np.round(exact)
    # Large tables, and the rare small one the MILP fails on: local search from the priority order.
    return _improve_by_swaps(membership, residual, by_priority, priority)


def _improve_by_swaps(
    membership: sparse.csr_matrix, residual: np.ndarray, chosen: np.ndarray, priority: np.ndarray
) -> np.ndarray:
    """Local search for large cell tables: move one extra complete from one cell to another while
    that lowers the sum of squared margin gaps (exact MILPs on tens of thousands of cells take
    tens of seconds; this takes milliseconds and ends within a complete or so of the optimum)."""
    chosen = chosen.copy()
    by_cell = membership.T.tocsr()
    tie_break = 1e-6 * priority
    gap = membership @ chosen - residual
    for _ in range(MAX_SWAPS):
        add_cost = np.where(chosen == 0, by_cell @ (2 * gap + 1) - tie_break, np.inf)
        remove_cost = np.where(chosen == 1, by_cell @ (1 - 2 * gap) + tie_break, np.inf)
        added, removed = int(np.argmin(add_cost)), int(np.argmin(remove_cost))
        new_gap = gap + membership[:, added].toarray().ravel() - membership[:, removed].toarray().ravel()
        if np.sum(new_gap**2) >= np.sum(gap**2) - 1e-9:
            break
        chosen[added], chosen[removed], gap = 1, 0, new_gap
    return chosen


# --- 4. draw and reports -----------------------------------------------------------------------


def draw_within_cells(
    rng: np.random.Generator, member_cell: np.ndarray, counts: np.ndarray, invites: np.ndarray
) -> np.ndarray:
    """Positions (into member_cell) of `invites[c]` members drawn uniformly at random from each cell c."""
    order = np.argsort(member_cell + rng.random(len(member_cell)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    sorted_cells = member_cell[order]
    rank = np.arange(len(order)) - starts[sorted_cells]
    return np.sort(order[rank < invites[sorted_cells]])


def _category_reports(
    table: CellTable, targets: Sequence[PlanTarget], completes: np.ndarray, size: int
) -> tuple[CategoryReport, ...]:
    """Per target category: shares among the planned completes who have the target's values."""
    reports: list[CategoryReport] = []
    for target, codes in zip(targets, table.categories, strict=True):
        bins = target.categories
        available = np.bincount(codes, weights=table.counts, minlength=bins)
        capacity = np.bincount(codes, weights=table.capacity, minlength=bins)
        allocated = np.bincount(codes, weights=completes, minlength=bins)
        answered = max(float(allocated[: len(target.target.cells)].sum()), 1.0)
        for index, (cell, share) in enumerate(target.target.shares.items()):
            achieved_pct = 100.0 * allocated[index] / answered
            requested = size * (1.0 - target.missing_share) * share
            reports.append(
                CategoryReport(
                    target=target.key,
                    category=CELL_SEPARATOR.join(cell),
                    target_pct=100.0 * share,
                    achieved_pct=achieved_pct,
                    deviation_pp=achieved_pct - 100.0 * share,
                    requested=requested,
                    available=int(available[index]),
                    capacity=float(capacity[index]),
                    allocated=int(allocated[index]),
                    shortfall=max(0.0, requested - allocated[index]),
                )
            )
    return tuple(reports)


def weighting_cost(categories: list[np.ndarray], shares: list[np.ndarray], completes: np.ndarray) -> WeightingCost:
    """Rake the planned completes (one row per cell, `completes` persons each) to the targets."""
    used = completes > 0
    if not categories or not used.any():
        total = float(completes.sum())
        return WeightingCost(1.0, total, 1.0, True, 1.0, total, 0.0)
    codes = [category[used] for category in categories]
    persons = completes[used].astype(float)
    free = rake_with_cap(codes, shares, persons)
    capped = rake_with_cap(codes, shares, persons, cap=WEIGHT_CAP)
    return WeightingCost(
        max_weight=float(free.weights.max()),
        effective_sample_size=kish_effective_sample_size(free.weights, persons),
        design_effect=design_effect(free.weights, persons),
        reaches_targets=free.converged,
        capped_max_weight=float(capped.weights.max()),
        capped_effective_sample_size=kish_effective_sample_size(capped.weights, persons),
        capped_max_deviation_pp=capped.max_margin_error_pp,
    )


def _cell_frame(
    table: CellTable, targets: Sequence[PlanTarget], completes: np.ndarray, invites: np.ndarray
) -> pd.DataFrame:
    """One row per cell; a target's fields are None in its missing category."""
    columns: dict[str, Any] = {}
    for target, codes in zip(targets, table.categories, strict=True):
        fields = target.target.fields
        values = np.array([*target.target.cells, (None,) * len(fields)], dtype=object)[codes]
        for position, field in enumerate(fields):
            columns[field] = values[:, position]
    columns |= {
        "available": table.counts.astype(np.int64),
        "response_rate": table.response_rates,
        "capacity": table.capacity,
        "completes": completes,
        "invites": invites,
    }
    return pd.DataFrame(columns)


# --- 5. a request that places nobody -----------------------------------------------------------


def nobody_placed_reason(
    panel: pd.DataFrame, request: SampleRequest, eligible: np.ndarray, result: SelectionResult
) -> str:
    """Why `select` placed nobody, naming the filter, exclusion or target that leaves nobody, in
    words a project manager can act on."""
    mask = (
        filter_mask(panel, request.filters) & np.asarray(eligible, dtype=bool)
        if len(panel)
        else np.zeros(0, dtype=bool)
    )
    filters = ", ".join(sorted({f"filters.{condition.field}" for condition in request.filters}))
    if not mask.any():
        if len(panel) == 0 or not filter_mask(panel, request.filters).any():
            where = f"the filters ({filters})" if filters else "the request"
            return f"no active member matches {where}: nobody can be placed; widen the filters"
        return (
            f"all {int(filter_mask(panel, request.filters).sum())} active members matching the filters are left out by "
            "exclude (invited_within_days, completed_surveys): nobody can be placed; relax the exclusions"
        )
    who = "active member matching the filters" if filters else "active member"
    dropped = {target.target for target in result.dropped_targets}
    kept = [target.key for target in request_targets(request) if target.key not in dropped]
    if result.unclassified_members >= int(mask.sum()):
        remedy = (
            'drop one of these targets, or remove "missing": "exclude" so members missing a value are kept'
            if request.missing == "exclude"
            else "drop one of these targets"
        )
        return f"no {who} has a value in every target at once ({', '.join(kept)}): nobody can be placed; {remedy}"
    return (
        f"the {int(mask.sum()) - result.unclassified_members} placeable members are expected to give less than one "
        "complete per cell at the expected_response_rate: raise expected_response_rate, or widen the filters"
    )
