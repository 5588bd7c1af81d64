"""Bounded raking (iterative proportional fitting) and weighting-cost measures.

`rake` adjusts weights so that each variable's weighted shares match its marginal targets,
cycling over the variables (Deming-Stephan). Each unit's adjustment factor g = weight / base
weight can be bounded (a weight cap, or a per-cell capacity when raking a table of cells);
bounds are enforced by truncation after each step, and `converged` says whether the margins were
still met. One step is a `numpy.bincount` plus a gather, so a million units and five variables
take a fraction of a second. `kish_effective_sample_size` and `design_effect` measure what the
weights cost in precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_TOLERANCE = 1e-7
DEFAULT_MAX_ITERATIONS = 1000


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
