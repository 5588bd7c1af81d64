"""Checks beside each sample's fieldwork (partition = the sample's `_id`), read from the
`fieldwork_state` the last `sample_fieldwork` run wrote."""

import dagster as dg
from bson import ObjectId

from panel_pipeline.sampler import store
from panel_pipeline.sampler.fieldwork_state import FIELDWORK_CLOSED
from panel_pipeline.shared.metadata import table
from panel_pipeline.shared.partitions import sample_request_partitions
from panel_pipeline.shared.resources import MongoResource

CONVERGED = "converged"


@dg.asset_check(
    asset="sample_fieldwork",
    partitions_def=sample_request_partitions,
    description="No cell over its target completes by more than the request's tolerance (pp of its target's total)",
)
def cells_within_tolerance(context: dg.AssetCheckExecutionContext, mongo: MongoResource) -> dg.AssetCheckResult:
    state = store.fieldwork_state_of(mongo.db(), ObjectId(context.partition_key))
    over = state.get("over_tolerance", [])
    return dg.AssetCheckResult(
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "tolerance_pp": dg.MetadataValue.float(float(state.get("tolerance_pp", 0.0))),
            "cells_over": table(
                ["target", "category", "over target pp"],
                [(cell["target"], cell["category"], cell["over_target_pp"]) for cell in over],
            ),
        },
    )


@dg.asset_check(
    asset="sample_fieldwork",
    partitions_def=sample_request_partitions,
    description="Once fieldwork closed: raking the completes to the targets converged within the weight bounds",
)
def weights_converged(context: dg.AssetCheckExecutionContext, mongo: MongoResource) -> dg.AssetCheckResult:
    state = store.fieldwork_state_of(mongo.db(), ObjectId(context.partition_key))
    if state.get("status") != FIELDWORK_CLOSED:
        return dg.AssetCheckResult(
            passed=True, metadata={"status": "fieldwork open: the completes are weighted when it closes"}
        )
    weights = state.get("weights") or {}
    return dg.AssetCheckResult(
        passed=weights.get("status") == CONVERGED,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "status": str(weights.get("status")),
            "message": dg.MetadataValue.text(str(weights.get("message", ""))),
            "design_effect": dg.MetadataValue.float(float(weights.get("design_effect", 1.0))),
            "effective_sample_size": dg.MetadataValue.float(float(weights.get("effective_sample_size", 0.0))),
        },
    )
