"""Checks beside the users table: attribute coverage, values outside the contract, quarantine."""

import dagster as dg

from panel_pipeline.extractor import review, store
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

MINIMUM_COVERAGE = 0.5


@dg.asset_check(asset="users", description="Share of active members with each profile attribute")
def profile_coverage(mongo: MongoResource) -> dg.AssetCheckResult:
    db = mongo.db()
    active = db.users.count_documents({"status": "active"})
    coverage = {
        field: (db.users.count_documents({"status": "active", f"profile.{field}": {"$ne": None}}) / active if active else 0.0)
        for field in PROFILE_CATEGORIES
    }
    table = "\n".join(["| attribute | coverage |", "|---|---|", *(f"| {f} | {c:.1%} |" for f, c in coverage.items())])
    return dg.AssetCheckResult(
        passed=bool(active) and min(coverage.values()) >= MINIMUM_COVERAGE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"active_members": active, "coverage": dg.MetadataValue.md(table)},
    )


@dg.asset_check(asset="users", description="No profile value outside the contract's allowed values")
def profile_values_allowed(mongo: MongoResource) -> dg.AssetCheckResult:
    db = mongo.db()
    outside = {
        field: db.users.count_documents({f"profile.{field}": {"$exists": True, "$nin": [*values, None]}})
        for field, values in PROFILE_CATEGORIES.items()
    }
    return dg.AssetCheckResult(passed=not any(outside.values()), metadata={f"outside_{f}": n for f, n in outside.items()})


@dg.asset_check(asset="users", description="Responses waiting in quarantine (malformed, unknown member)")
def quarantined_responses(mongo: MongoResource) -> dg.AssetCheckResult:
    db = mongo.db()
    count = db[store.QUARANTINE].count_documents({})
    reasons = db[store.QUARANTINE].aggregate([{"$group": {"_id": "$reason", "n": {"$sum": 1}}}, {"$sort": {"n": -1}}, {"$limit": 10}])
    table = "\n".join(["| reason | responses |", "|---|---|", *(f"| {review.without_values(str(r['_id']))} | {r['n']} |" for r in reasons)])
    return dg.AssetCheckResult(passed=count == 0, severity=dg.AssetCheckSeverity.WARN, metadata={"quarantined": count, "reasons": dg.MetadataValue.md(table)})
