"""Checks beside the users table: attribute coverage, values outside the contract, quarantine."""

import dagster as dg

from panel_pipeline.extractor import review, store
from panel_pipeline.shared.metadata import table
from panel_pipeline.shared.resources import MongoResource

MINIMUM_COVERAGE = 0.5
SHOWN_REASONS = 10


@dg.asset_check(asset="users", description="Share of active members with each profile attribute")
def profile_coverage(mongo: MongoResource) -> dg.AssetCheckResult:
    active, coverage = store.profile_coverage(mongo.db())
    return dg.AssetCheckResult(
        passed=bool(active) and min(coverage.values()) >= MINIMUM_COVERAGE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "active_members": active,
            "coverage": table(
                ("attribute", "coverage"), [(field, f"{share:.1%}") for field, share in coverage.items()]
            ),
        },
    )


@dg.asset_check(asset="users", description="No profile value outside the contract's allowed values")
def profile_values_allowed(mongo: MongoResource) -> dg.AssetCheckResult:
    outside = store.profile_values_outside(mongo.db())
    return dg.AssetCheckResult(
        passed=not any(outside.values()), metadata={f"outside_{f}": n for f, n in outside.items()}
    )


@dg.asset_check(asset="users", description="Responses waiting in quarantine (malformed, unknown member)")
def quarantined_responses(mongo: MongoResource) -> dg.AssetCheckResult:
    db = mongo.db()
    count = store.quarantine_count(db)
    # Reasons quote what was wrong with a record: shown without its values.
    reasons = table(("reason", "responses"), review.shown_rows(store.quarantine_reasons(db, SHOWN_REASONS)))
    return dg.AssetCheckResult(
        passed=count == 0, severity=dg.AssetCheckSeverity.WARN, metadata={"quarantined": count, "reasons": reasons}
    )
