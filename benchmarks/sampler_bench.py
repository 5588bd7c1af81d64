"""Sampler benchmark: 2,000 UK nat rep completes from a skewed 1,000,000-member synthetic panel.

Compares, on the same panel and targets (uk_nat_rep: age x gender interlocked, region, social
grade, education, 2024 vote):
  * quota selection (`panel_pipeline.sampler.quotas.select`), timed without any Mongo load;
  * (a) a simple random draw of 2,000;
  * (b) raking the whole panel with weightipy (and with our numpy raking) instead of selecting.
For each: largest deviation from target (pp) and Kish ESS after raking to the targets.
Pass marks: deviation <= 0.5 pp, ESS >= 1,900, selection <= 2 s.

Run: python benchmarks/sampler_bench.py [--members N] [--size N] [--seed N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import weightipy

from benchmarks._mongo import throwaway_mongod
from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler import store
from panel_pipeline.sampler.quotas import select
from panel_pipeline.sampler.requests import parse_sample_request
from panel_pipeline.sampler.targets import Target, request_targets
from panel_pipeline.sampler.weighting import (
    design_effect,
    kish_effective_sample_size,
    rake,
)

MAX_DEVIATION_PP = 0.5
MIN_ESS = 1_900
MAX_SELECTION_SECONDS = 2.0


def target_codes(frame: pd.DataFrame, targets: Sequence[Target]) -> list[np.ndarray]:
    """Each row's category index per target (-1 if outside the target's cells)."""
    codes = []
    for target in targets:
        keys = (
            frame[list(target.fields)].astype(str).agg("|".join, axis=1)
            if len(target.fields) > 1
            else frame[target.fields[0]].astype(str)
        )
        codes.append(pd.Index(["|".join(cell) for cell in target.cells]).get_indexer(keys).astype(np.int64))
    return codes


def max_deviation_pp(codes: list[np.ndarray], targets: Sequence[Target], weights: np.ndarray | None = None) -> float:
    weights = np.ones(len(codes[0])) if weights is None else weights
    deviations = [
        np.abs(
            np.bincount(variable, weights=weights, minlength=len(target.cells)) / weights.sum() - target.share_array()
        ).max()
        for variable, target in zip(codes, targets, strict=True)
    ]
    return 100.0 * float(max(deviations))


def ess_after_raking(codes: list[np.ndarray], targets: Sequence[Target]) -> tuple[float, float]:
    weights = rake(codes, [target.share_array() for target in targets]).weights
    return kish_effective_sample_size(weights), float(weights.max())


def weightipy_rake(frame: pd.DataFrame, targets: Sequence[Target]) -> np.ndarray:
    """weightipy has no interlocked targets in a flat scheme, so age x gender becomes one column."""
    data = pd.DataFrame({target.key: code for target, code in zip(targets, target_codes(frame, targets), strict=True)})
    scheme = weightipy.scheme_from_dict(
        {target.key: {index: 100 * share for index, share in enumerate(target.share_array())} for target in targets},
        rim_params={"convcrit": 1e-9, "max_iterations": 1000},
    )
    return weightipy.weight_dataframe(data, scheme)["weights"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    started = time.perf_counter()
    panel = generate_profiles(args.members, seed=args.seed, as_of_year=2025)
    print(f"synthetic panel: {len(panel):,} members in {time.perf_counter() - started:.2f} s")
    request = parse_sample_request(
        {"name": "bench", "survey_id": "0", "size": args.size, "preset": "uk_nat_rep", "seed": args.seed}
    )
    targets = request_targets(request)
    panel_codes = target_codes(panel, targets)
    classified = np.all([code >= 0 for code in panel_codes], axis=0)
    print(
        f"raw panel max deviation from target: {max_deviation_pp([c[classified] for c in panel_codes], targets):.2f} pp"
    )

    select(panel, request)  # warm-up (imports, HiGHS initialisation)
    started = time.perf_counter()
    result = select(panel, request)
    selection_seconds = time.perf_counter() - started
    chosen_codes = [code[result.row_positions] for code in panel_codes]
    quota_dev = max_deviation_pp(chosen_codes, targets)
    quota_ess, quota_max_w = ess_after_raking(chosen_codes, targets)

    rng = np.random.default_rng(args.seed)
    random_rows = rng.choice(np.flatnonzero(classified), size=args.size, replace=False)
    random_codes = [code[random_rows] for code in panel_codes]
    random_dev = max_deviation_pp(random_codes, targets)
    random_ess, random_max_w = ess_after_raking(random_codes, targets)

    classified_panel = panel[classified]
    started = time.perf_counter()
    reference_weights = weightipy_rake(classified_panel, targets)
    weightipy_seconds = time.perf_counter() - started
    classified_codes = [code[classified] for code in panel_codes]
    started = time.perf_counter()
    our_weights = rake(classified_codes, [target.share_array() for target in targets]).weights
    numpy_seconds = time.perf_counter() - started
    panel_deff = design_effect(reference_weights)
    weighted_dev = max_deviation_pp(classified_codes, targets, reference_weights)
    agreement = float(np.abs(our_weights - reference_weights).max())

    print(f"\n{'method':<46}{'max dev (pp)':>14}{'ESS':>10}{'max w':>8}{'seconds':>10}")
    print(
        f"{'quota selection (ours)':<46}{quota_dev:>14.3f}{quota_ess:>10.1f}"
        f"{quota_max_w:>8.2f}{selection_seconds:>10.3f}"
    )
    print(f"{'(a) simple random draw, raked':<46}{random_dev:>14.3f}{random_ess:>10.1f}{random_max_w:>8.2f}{'':>10}")
    print(
        f"{'(b) whole panel raked with weightipy':<46}{weighted_dev:>14.3f}{args.size / panel_deff:>10.1f}"
        f"{reference_weights.max():>8.2f}{weightipy_seconds:>10.3f}"
    )
    print(f"{'    same with our numpy raking':<46}{'':>14}{'':>10}{our_weights.max():>8.2f}{numpy_seconds:>10.3f}")
    print(
        f"\n(b) ESS is the panel design effect ({panel_deff:.3f}) applied to {args.size:,}: what a 2,000 sample drawn "
        f"at random and weighted like the panel would keep. Our raking vs weightipy: max |diff| {agreement:.2e}."
    )
    print(
        f"ratios: deviation random/quota {random_dev / max(quota_dev, 1e-9):.0f}x; ESS quota/random "
        f"{quota_ess / random_ess:.2f}x, quota/(b) {quota_ess * panel_deff / args.size:.2f}x; "
        f"raking time weightipy/numpy {weightipy_seconds / numpy_seconds:.1f}x"
    )
    print(f"result: {result.summary()}")
    with_mongo_seconds = time_with_mongo(panel, request)
    print(
        f"selection including the load of the panel from Mongo: {with_mongo_seconds:.2f} s "
        f"(the load is {with_mongo_seconds - selection_seconds:.2f} s of it)"
    )
    checks = {
        f"max deviation <= {MAX_DEVIATION_PP} pp": quota_dev <= MAX_DEVIATION_PP,
        f"ESS >= {MIN_ESS:,}": quota_ess >= MIN_ESS,
        f"selection <= {MAX_SELECTION_SECONDS} s": selection_seconds <= MAX_SELECTION_SECONDS,
    }
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")


def time_with_mongo(panel: pd.DataFrame, request) -> float:
    """The same request, loading the eligible panel from a real mongod as the asset does."""
    with throwaway_mongod() as (client, _uri):
        db = client.bench
        records = panel.astype(object).to_dict("records")
        for start in range(0, len(records), 50_000):
            db.users.insert_many(
                [
                    {"status": "active", "profile": {k: v for k, v in row.items() if v is not None}}
                    for row in records[start : start + 50_000]
                ],
                ordered=False,
            )
        started = time.perf_counter()
        loaded = store.load_panel(db, request, 2025)
        select(loaded, request)
        return time.perf_counter() - started


if __name__ == "__main__":
    main()
