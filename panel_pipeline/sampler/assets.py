"""The Sampler's asset: one partition per sample request, drawn from the users table."""

from collections.abc import Mapping
from typing import Any

import dagster as dg
from bson import ObjectId

from panel_pipeline.partitions import sample_requests
from panel_pipeline.queue.resources import MongoResource
from panel_pipeline.queue.store import RequestRejected, process_document, utc_now
from panel_pipeline.sampler import invitations, members
from panel_pipeline.sampler.composition_chart import composition_svg, markdown_image
from panel_pipeline.sampler.quotas import SelectionResult, select
from panel_pipeline.sampler.requests import SampleRequestError, parse_sample_request

TOLERANCE_CHECK = "composition_within_tolerance"


class RedrawConfig(dg.Config):
    """Changes an analyst can make when re-materialising a sample from the UI (recorded on the sample)."""

    seed: int | None = None
    size: int | None = None
    quotas: dict[str, dict[str, float]] | None = None
    tolerance: float | None = None


@dg.asset(
    partitions_def=sample_requests,
    deps=[dg.AssetDep("users", partition_mapping=dg.AllPartitionMapping())],
    group_name="sampler",
    kinds={"python", "mongodb"},
    check_specs=[dg.AssetCheckSpec(TOLERANCE_CHECK, asset="samples", description="Every target category within the request's tolerance")],
    tags={"panel/part": "sampler"},
)
def samples(context: dg.AssetExecutionContext, config: RedrawConfig, mongo: MongoResource):
    """A sample for one request (partition = the `samples` document's `_id`): active members who match
    its filters and exclusions, drawn to its quotas (or the `uk_nat_rep` preset) with a seeded draw,
    written to `sample_members`. The first run takes the request from the queue; re-materialising a
    processed request re-draws it (optionally with another seed, size or quotas, recorded on the
    request), replacing members not yet invited and keeping those invited or queued for an invitation."""
    db = mongo.db()
    members.ensure_indexes(db)
    sample_id = ObjectId(context.partition_key)
    run_id = context.run.run_id
    queue = mongo.work_queue("samples")
    document = db.samples.find_one({"_id": sample_id})
    if document is None:
        raise dg.Failure(description=f"no samples document with _id {sample_id}")

    if document.get("processed"):
        result = redraw(db, document, config, run_id)
    else:
        drawn: dict[str, Any] = {}

        def work(doc: Mapping[str, Any]) -> Mapping[str, Any]:
            drawn["result"] = draw(db, doc, run_id)
            return drawn["result"][1]

        outcome = process_document(queue, sample_id, run_id, work)
        if outcome.status == "failed":
            raise dg.Failure(description=f"sample request rejected: {outcome.error}")
        if outcome.status == "skipped":
            context.log.info("the request is claimed by another run; nothing to do")
            return dg.MaterializeResult(metadata={"skipped": True})
        result = drawn["result"][0]
    invitations.stamp_pending_invitations(db, sample_id)
    invitations.create_missing_mailings(db, utc_now())
    return materialization(result)


def draw(db, document: Mapping[str, Any], run_id: str, changes: Mapping[str, Any] | None = None) -> tuple[SelectionResult, dict[str, Any]]:
    """Validate, select and write members; the returned fields are written back on the request."""
    try:
        request = parse_sample_request({**document, **(changes or {})})
    except SampleRequestError as invalid:
        raise RequestRejected(str(invalid)) from invalid
    now = utc_now()
    sample_id = document["_id"]
    panel = members.load_panel(db, request, now.year)
    kept = members.kept_members(db, sample_id)
    excluded = members.excluded_user_ids(db, request, now) | kept
    if len(kept) >= request.size:
        raise RequestRejected(
            f"size: all {len(kept)} members are invited or queued for an invitation, so there is nothing to re-draw; "
            "ask for a larger size to add members"
        )
    if kept:
        # Invited members stay; the rest of the size is drawn around them (to the same targets).
        request = request.model_copy(update={"size": request.size - len(kept)})
    result = select(panel, request, members.eligibility(panel, excluded))
    written = members.replace_members(db, sample_id, [str(uid) for uid in result.member_ids], now)
    write_back = {
        "result": result.to_document(),
        "members": written["members"],
        "seed_used": result.seed,
        "drawn_at": now,
        "drawn_by_run": run_id,
    }
    if request.dynamic:
        write_back["open"] = True
    return result, write_back


def redraw(db, document: Mapping[str, Any], config: RedrawConfig, run_id: str) -> SelectionResult:
    """Re-draw a processed request; a failed request stays failed (its error says what to fix)."""
    if document.get("status") != "done":
        raise dg.Failure(description=f"the request is {document.get('status')}: {document.get('error', 'no error recorded')}")
    changes = {key: value for key, value in config.model_dump().items() if value is not None}
    try:
        result, write_back = draw(db, document, run_id, changes)
    except RequestRejected as invalid:
        raise dg.Failure(description=f"re-draw rejected: {invalid}") from invalid
    db.samples.update_one(
        {"_id": document["_id"]},
        {
            "$set": write_back,
            "$push": {"redraws": {"run_id": run_id, "at": write_back["drawn_at"], "changes": changes, "seed": result.seed}},
        },
    )
    return result


def materialization(result: SelectionResult) -> dg.MaterializeResult:
    passed = bool(result.max_deviation_pp <= result.tolerance_pp and result.completes_planned == result.size_requested)
    composition = markdown_image(composition_svg(result.categories, result.tolerance_pp))
    return dg.MaterializeResult(
        metadata={
            "status": result.status,
            "completes_planned": int(result.completes_planned),
            "invitations": int(result.invited),
            "largest_deviation_pp": dg.MetadataValue.float(round(float(result.max_deviation_pp), 3)),
            "seed": int(result.seed),
            "effective_sample_size": dg.MetadataValue.float(round(float(result.weighting_cost.effective_sample_size), 1)),
            "composition_chart": dg.MetadataValue.md(composition),
            "target_vs_achieved": dg.MetadataValue.md(composition_table(result)),
            "summary": dg.MetadataValue.text(result.summary()),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=TOLERANCE_CHECK,
                passed=passed,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "largest_deviation_pp": dg.MetadataValue.float(round(float(result.max_deviation_pp), 3)),
                    "tolerance_pp": dg.MetadataValue.float(float(result.tolerance_pp)),
                    "cells_short": len(result.shortfalls),
                },
            )
        ],
    )


def composition_table(result: SelectionResult) -> str:
    lines = ["| target | category | target % | achieved % | deviation pp | shortfall |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r.target} | {r.category} | {r.target_pct:.2f} | {r.achieved_pct:.2f} | {r.deviation_pp:+.2f} | {r.shortfall:.0f} |"
        for r in result.categories
    ]
    return "\n".join(lines)
