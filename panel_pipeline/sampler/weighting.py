"""Bounded raking (iterative proportional fitting) and weighting-cost measures.

`rake` adjusts weights so that each variable's weighted shares match its marginal targets,
cycling over the variables (Deming-Stephan). Each unit's adjustment factor g = weight / base
weight can be bounded (a weight cap, or a per-cell capacity when raking a table of cells);
bounds are enforced by truncation after each step, and `converged` says whether the margins were
still met. One step is a `numpy.bincount` plus a gather, so a million units and five variables
take a fraction of a second. `kish_effective_sample_size` and `design_effect` measure what the
weights cost in precision.

`weight_completes` is fieldwork's closing step: rake the completes to the sample's marginal targets
with weights held within `bounds` (relative to a mean of 1). Weights are returned only when raking
met every target within `WEIGHTING_TOLERANCE_PP` with every weight inside the bounds (checked on the
returned weights, not assumed from the arguments: weighting libraries have shipped bounds that were
silently ignored); otherwise the status says which target category missed and by how much. A
member missing a target's value is held at the completes' own missing share in that target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

DEFAULT_TOLERANCE = 1e-7
DEFAULT_MAX_ITERATIONS = 1000
WEIGHTING_TOLERANCE_PP = 0.01
WEIGHTING_MAX_ITERATIONS = 2000
DEFAULT_WEIGHT_BOUNDS = (0.2, 5.0)


@dataclass(frozen=True)
class RakeResult:
    weights: np.ndarray
    converged: bool
    iterations: int
    max_margin_error: float  # largest |weighted share - target share| over every category

    @property
    def max_margin_error_pp(self) -> float:
        return 100.0 * self.max_margin_error


def rake(
    codes: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    base_weights: np.ndarray | None = None,
    *,
    lower: float | np.ndarray = 0.0,
    upper: float | np.ndarray = np.inf,
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> RakeResult:
    """Rake `base_weights` (default 1) so each variable's weighted shares equal its target shares.

    codes[v] holds each unit's category index (0..K_v-1) for variable v; targets[v] the K_v target
    shares (summing to 1). Weights keep the base total. `lower`/`upper` bound g = weight / base
    weight (scalars or per-unit arrays).
    """
    base = np.ones(len(codes[0])) if base_weights is None else np.asarray(base_weights, dtype=float)
    total = base.sum()
    target_totals = [np.asarray(shares, dtype=float) * total for shares in targets]
    weights = base.copy()
    error = _max_margin_error(codes, target_totals, weights, total)
    iteration = 0
    while error > tolerance and iteration < max_iterations:
        iteration += 1
        for variable_codes, wanted in zip(codes, target_totals, strict=True):
            current = np.bincount(variable_codes, weights=weights, minlength=len(wanted))
            factors = np.divide(wanted, current, out=np.zeros_like(wanted), where=current > 0)
            weights *= factors[variable_codes]
        weights = np.clip(weights, lower * base, upper * base)
        error = _max_margin_error(codes, target_totals, weights, total)
    return RakeResult(weights=weights, converged=error <= tolerance, iterations=iteration, max_margin_error=error)


def _max_margin_error(
    codes: Sequence[np.ndarray], target_totals: Sequence[np.ndarray], weights: np.ndarray, total: float
) -> float:
    errors = [
        np.abs(np.bincount(variable_codes, weights=weights, minlength=len(wanted)) - wanted).max()
        for variable_codes, wanted in zip(codes, target_totals, strict=True)
    ]
    return float(max(errors) / total) if total > 0 else 0.0


def rake_with_cap(
    codes: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    frequencies: np.ndarray | None = None,
    *,
    cap: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> RakeResult:
    """Unit weights with mean 1 (over `frequencies` persons per row, default 1 each), capped at
    `cap` times the mean. Returned weights are per person, not per row."""
    persons = np.ones(len(codes[0])) if frequencies is None else np.asarray(frequencies, dtype=float)
    upper = np.inf if cap is None else cap
    result = rake(codes, targets, persons, upper=upper, tolerance=tolerance, max_iterations=max_iterations)
    per_person = np.divide(result.weights, persons, out=np.zeros_like(result.weights), where=persons > 0)
    return RakeResult(per_person, result.converged, result.iterations, result.max_margin_error)


def kish_effective_sample_size(weights: np.ndarray, frequencies: np.ndarray | None = None) -> float:
    """(sum w)^2 / sum w^2, counting each row `frequencies` times (default once)."""
    counts = np.ones_like(weights, dtype=float) if frequencies is None else np.asarray(frequencies, dtype=float)
    squares = float(np.sum(counts * weights**2))
    return float(np.sum(counts * weights)) ** 2 / squares if squares > 0 else 0.0


def design_effect(weights: np.ndarray, frequencies: np.ndarray | None = None) -> float:
    """Kish's design effect due to weighting: n / ESS = 1 + CV^2 of the weights."""
    persons = float(len(weights) if frequencies is None else np.sum(frequencies))
    ess = kish_effective_sample_size(weights, frequencies)
    return persons / ess if ess > 0 else float("inf")


WeightingStatus = Literal["converged", "not_converged", "no_completes"]


@dataclass(frozen=True)
class WeightingResult:
    """The closing weights, or why there are none (`weights` is None unless converged)."""

    status: WeightingStatus
    weights: np.ndarray | None
    iterations: int
    bounds: tuple[float, float]
    max_miss_pp: float  # largest |weighted share - target share| after raking, pp
    failed_target: str | None  # the target of that largest miss when not converged
    failed_category: str | None
    effective_sample_size: float
    design_effect: float
    max_weight: float
    min_weight: float
    message: str

    def to_document(self) -> dict[str, Any]:
        """`fieldwork_state.weights` (JSON-able; the weights themselves go on sample_members)."""
        return {
            "status": self.status,
            "iterations": self.iterations,
            "bounds": list(self.bounds),
            "max_miss_pp": round(self.max_miss_pp, 4),
            "failed_target": self.failed_target,
            "failed_category": self.failed_category,
            "effective_sample_size": round(self.effective_sample_size, 1),
            "design_effect": round(self.design_effect, 4),
            "max_weight": round(self.max_weight, 4),
            "min_weight": round(self.min_weight, 4),
            "message": self.message,
        }


def weight_completes(
    categories: Mapping[str, np.ndarray],
    targets: Mapping[str, Mapping[str, float]],
    bounds: tuple[float, float] = DEFAULT_WEIGHT_BOUNDS,
    *,
    tolerance_pp: float = WEIGHTING_TOLERANCE_PP,
    max_iterations: int = WEIGHTING_MAX_ITERATIONS,
) -> WeightingResult:
    """Rake the completes to `targets` ({target: {category: share}}); `categories[target]` holds each
    complete's category (None/NaN: missing). Weights have mean 1 and lie within `bounds`."""
    low, high = bounds
    keys = list(targets)
    completes = len(next(iter(categories.values()))) if categories else 0
    if completes == 0:
        return _unweighted("no_completes", 0, bounds, "no completes to weight")
    codes, shares, labels = [], [], []
    for key in keys:
        code, share, label = _target_codes(np.asarray(categories[key], dtype=object), targets[key])
        codes.append(code)
        shares.append(share)
        labels.append(label)
    result = rake(codes, shares, lower=low, upper=high, tolerance=tolerance_pp / 100.0, max_iterations=max_iterations)
    weights = result.weights
    achieved = [
        np.bincount(code, weights=weights, minlength=len(share)) / weights.sum()
        for code, share in zip(codes, shares, strict=True)
    ]
    misses = [np.abs(got - share) for got, share in zip(achieved, shares, strict=True)]
    worst_target = int(np.argmax([miss.max() for miss in misses]))
    # Within that target, name the category furthest below its share: the cell to fill.
    worst_category = int(np.argmax(shares[worst_target] - achieved[worst_target]))
    max_miss_pp = 100.0 * float(misses[worst_target].max())
    within_bounds = bool(weights.min() >= low - 1e-9 and weights.max() <= high + 1e-9)
    ess = kish_effective_sample_size(weights)
    if max_miss_pp <= tolerance_pp and within_bounds:
        return WeightingResult(
            status="converged",
            weights=weights,
            iterations=result.iterations,
            bounds=bounds,
            max_miss_pp=max_miss_pp,
            failed_target=None,
            failed_category=None,
            effective_sample_size=ess,
            design_effect=design_effect(weights),
            max_weight=float(weights.max()),
            min_weight=float(weights.min()),
            message=f"converged in {result.iterations} iterations; weights {weights.min():.2f} to {weights.max():.2f}",
        )
    target, category = keys[worst_target], labels[worst_target][worst_category]
    wanted = 100.0 * float(shares[worst_target][worst_category])
    short_pp = wanted - 100.0 * float(achieved[worst_target][worst_category])
    return WeightingResult(
        status="not_converged",
        weights=None,
        iterations=result.iterations,
        bounds=bounds,
        max_miss_pp=max_miss_pp,
        failed_target=target,
        failed_category=category,
        effective_sample_size=ess,
        design_effect=design_effect(weights),
        max_weight=float(weights.max()),
        min_weight=float(weights.min()),
        message=(
            f"raking did not reach the targets within weights {low:g} to {high:g}: {target}={category} is "
            f"{short_pp:.2f} pp short of its {wanted:.1f}% target after {result.iterations} iterations; "
            "no weights written (widen fieldwork.weight_bounds, or fill that cell)"
        ),
    )


def _target_codes(values: np.ndarray, shares: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Codes over the target's categories plus a missing category held at its own share."""
    labels = list(shares)
    index = {label: position for position, label in enumerate(labels)}
    code = np.array([index.get(value, -1) if isinstance(value, str) else -1 for value in values], dtype=np.int64)
    missing_share = float(np.mean(code < 0))
    wanted = np.array([shares[label] for label in labels], dtype=float)
    wanted = wanted / wanted.sum() * (1.0 - missing_share)
    if missing_share > 0:
        code = np.where(code < 0, len(labels), code)
        return code, np.append(wanted, missing_share), [*labels, "missing"]
    return code, wanted, labels


def _unweighted(status: WeightingStatus, completes: int, bounds: tuple[float, float], message: str) -> WeightingResult:
    return WeightingResult(status, None, 0, bounds, 0.0, None, None, float(completes), 1.0, 1.0, 1.0, message)
