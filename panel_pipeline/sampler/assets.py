"""The Sampler's assets: one partition per sample request, drawn from the users table; the
response rates learned from the panel's past invitations; each sample's fieldwork and its
completes file; and the directory of samples by name.

Inside the claim, in this order: draw and write the members (the lease renewed first), save the
write-back fields on the request (under the lease), stamp the members and create the invitation,
then complete. So a crash at any point leaves nothing lost: a later claim that finds the draw saved
(`drawn_by_run` on an unprocessed request) does not draw again, it finishes the invitation and
completes. A request that places nobody is failed with what leaves nobody; a partly filled one is
done with its `shortfall`.

A request with fieldwork is drawn with `fieldwork_state: {status: open}` (the open-fieldwork sensor
reads that, through a partial index); `sample_fieldwork` rewrites the state from the members'
completions (the pure work is sampler/fieldwork_state.py) until it closes, and then never reopens.
`sample_completes` follows it in the same run (the fieldwork job selects both) and rewrites the
sample's completes file from what it stamped. Every materialization of a sample names it
(`sample_labels`: `sample_name`, `survey_id`), and `sample_directory` lists the newest samples by
name with their partition keys, because the partition list shows only ObjectIds.

A sample fielded in waves is drawn as its first wave, and while open each pass may add a top-up wave
(sampler/waves.py), in this order: the state computed, the wave's members upserted, the sample's
waiting members invited, the state written. Members added and not mailed yet count as invited, so a
pass that crashed anywhere in between is finished by the next one without a second wave.
"""

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import dagster as dg
import pandas as pd
from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.queue.store import SKIPPED, RequestRejected, WorkQueue, process_document
from panel_pipeline.sampler import reminders, store, waves
from panel_pipeline.sampler.completes import PREVIEW_ROWS, completes_table, target_fields
from panel_pipeline.sampler.composition_chart import composition_svg
from panel_pipeline.sampler.fieldwork_chart import (
    cell_series,
    completes_over_time_svg,
    completion_curve_svg,
    rates_svg,
)
from panel_pipeline.sampler.fieldwork_state import (
    FIELDWORK_OPEN,
    FieldworkUpdate,
    sample_targets,
    update_fieldwork,
)
from panel_pipeline.sampler.quotas import CategoryReport, SelectionResult, nobody_placed_reason, select
from panel_pipeline.sampler.requests import SampleRequest, SampleRequestError, on_fieldwork_clock, parse_sample_request
from panel_pipeline.sampler.resources import CompletesFiles, FieldworkTiming
from panel_pipeline.sampler.response_rates import RATE_DIMENSIONS, LearnedResponseRates, learn_response_rates
from panel_pipeline.shared import invitations
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.contract import DONE, FAILED, SAMPLES
from panel_pipeline.shared.metadata import OWNERS, markdown_image, row_count, table
from panel_pipeline.shared.mongo import as_utc
from panel_pipeline.shared.partitions import sample_request_partitions
from panel_pipeline.shared.privacy import redact
from panel_pipeline.shared.resources import ContactBudget, MongoResource

TOLERANCE_CHECK = "composition_within_tolerance"
DRAW_FIELDS = ("result", "members", "shortfall", "seed_used", "drawn_at", "drawn_by_run", "open", "fieldwork_state")
RATE_WINDOW_DAYS = 180  # the invitations the response rates are learned from
DIRECTORY_SAMPLES = 200  # the newest samples sample_directory lists (older ones: the Runs page's name tag)


class RedrawConfig(dg.Config):
    """Changes an analyst can make when re-materialising a sample from the UI (recorded on the sample)."""

    seed: int | None = None
    size: int | None = None
    quotas: dict[str, dict[str, float]] | None = None
    tolerance: float | None = None


@dg.asset(
    partitions_def=sample_request_partitions,
    deps=[dg.AssetDep("users", partition_mapping=dg.AllPartitionMapping())],
    group_name="sampler",
    owners=OWNERS,
    kinds={"python", "mongodb"},
    check_specs=[
        dg.AssetCheckSpec(
            TOLERANCE_CHECK, asset="samples", description="Every target category within the request's tolerance"
        )
    ],
    tags={"panel/part": "sampler"},
)
def samples(
    context: dg.AssetExecutionContext, config: RedrawConfig, mongo: MongoResource, contact_budget: ContactBudget
) -> dg.MaterializeResult:
    """A sample for one request (partition = the `samples` document's `_id`): active members who match
    its filters and exclusions and have room in the contact budget, drawn to its quotas (or the
    `uk_nat_rep` preset) with a seeded draw (a sample fielded in waves: its first wave), written to
    `sample_members`. The first run takes the request from the queue; re-materialising a
    processed request re-draws it (optionally with another seed, size or quotas, recorded on the
    request), replacing members not yet invited and keeping those invited or queued for an invitation."""
    db = mongo.db()
    store.ensure_indexes(db)
    sample_id = ObjectId(context.partition_key)
    run_id = context.run.run_id
    queue = mongo.work_queue(SAMPLES)
    document = db.samples.find_one({"_id": sample_id})
    if document is None:
        raise dg.Failure(description=f"no samples document with _id {sample_id}")

    if document.get("processed"):
        report, write_back = redraw(db, document, config, run_id, contact_budget.contacts_per_week)
        invitations.invite_sample(db, sample_id, utc_now(), context.log)
    else:
        drawn: dict[str, Any] = {}

        def work(doc: Mapping[str, Any]) -> Mapping[str, Any]:
            drawn["report"], drawn["write_back"] = draw_once(db, queue, doc, run_id, contact_budget.contacts_per_week)
            invitations.invite_sample(db, sample_id, utc_now(), context.log)
            return drawn["write_back"]

        outcome = process_document(queue, sample_id, run_id, work)
        if outcome.status == FAILED:
            raise dg.Failure(description=f"sample request rejected: {outcome.error}")
        if outcome.status == SKIPPED:
            context.log.info("the request is claimed by another run; nothing to do")
            return dg.MaterializeResult(metadata={"skipped": True, **sample_labels(document)})
        report, write_back = drawn["report"], drawn["write_back"]
    # Invitations other runs left pending (a crash, a sample fixed since): each fails alone.
    invitations.create_missing_mailings(db, utc_now(), log=context.log)
    return materialization(report, int(write_back["members"]), document)


def draw_once(
    db: Database, queue: WorkQueue, document: Mapping[str, Any], run_id: str, budget: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The draw of a claimed request and its write-back fields, saved on the request before any
    invitation is made; a request an earlier claim already drew is not drawn again."""
    if document.get("drawn_by_run"):
        return dict(document["result"]), {field: document[field] for field in DRAW_FIELDS if field in document}
    _, write_back = draw(db, document, run_id, budget, before_writing=lambda: queue.renew(document["_id"], run_id))
    queue.save_progress(document["_id"], run_id, write_back)
    return dict(write_back["result"]), write_back


def draw(
    db: Database,
    document: Mapping[str, Any],
    run_id: str,
    budget: int,
    changes: Mapping[str, Any] | None = None,
    before_writing: Callable[[], None] = lambda: None,
) -> tuple[SelectionResult, dict[str, Any]]:
    """Validate, select and write members; the returned fields are written back on the request.
    A sample with a mailing draws only members with room in the contact budget (`budget` contacts
    in 7 days; the held back in `result.held_back`); one fielded in waves draws its first wave
    (sampler/waves.py). `before_writing` runs between the selection and the first write (the queue
    renews its lease)."""
    try:
        request = parse_sample_request({**document, **(changes or {})})
    except SampleRequestError as invalid:
        raise RequestRejected(str(invalid)) from invalid
    now = utc_now()
    sample_id = document["_id"]
    learned = store.learned_response_rates(db) if waves.sized_for_completes(request) else None
    panel = store.load_panel(db, waves.sizing_request(request, learned), now.year)
    kept = store.kept_members(db, sample_id)
    excluded = store.excluded_user_ids(db, request, now) | kept
    if len(kept) >= request.size:
        raise RequestRejected(
            f"size: all {len(kept)} members are invited or queued for an invitation, so there is nothing to re-draw; "
            "ask for a larger size to add members"
        )
    if kept:
        # Invited members stay; the rest of the size is drawn around them (to the same targets).
        request = request.model_copy(update={"size": request.size - len(kept)})
    eligible = store.eligibility(panel, excluded)
    held_back = None
    if request.mailing is not None:
        held_back = waves.draw_budget(panel, request, store.panel_contacts(db, panel, eligible, now), eligible, budget)
        eligible &= held_back.allowed
    if waves.uses_waves(request):
        result = waves.first_wave_selection(panel, request, eligible, learned)
    else:
        result = select(panel, waves.sizing_request(request, learned), eligible)
    if result.invited == 0 and not request.dynamic:  # a dynamic sample waits for newcomers, its shortfall says how many
        raise RequestRejected(nobody_placed_reason(panel, request, eligible, result))
    before_writing()
    wave = 1 if request.fieldwork is not None else None
    written = store.replace_members(db, sample_id, [str(uid) for uid in result.member_ids], now, wave)
    report = result.to_document()
    if held_back is not None:
        report["held_back"] = held_back.to_document()
    write_back = {
        "result": report,
        "members": written["members"],
        "shortfall": shortfall(result),
        "seed_used": result.seed,
        "drawn_at": now,
        "drawn_by_run": run_id,
    }
    if request.dynamic:
        write_back["open"] = True
    if request.fieldwork is not None and "fieldwork_state" not in document:
        budget_state = {} if held_back is None else {"held_back": held_back.to_document()}
        # The default close_at (a length in fieldwork time) is the first fieldwork pass's to write:
        # it reads fieldwork time at the pipeline's FieldworkTiming, which the draw does not.
        close_at = {} if request.fieldwork.close_at is None else {"close_at": request.fieldwork.close_at}
        write_back["fieldwork_state"] = {"status": FIELDWORK_OPEN, **close_at, **budget_state}
    return result, write_back


def redraw(
    db: Database, document: Mapping[str, Any], config: RedrawConfig, run_id: str, budget: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Re-draw a processed request: its report and the fields written back on it. A failed request
    stays failed (its error says what to fix)."""
    if document.get("status") != DONE:
        raise dg.Failure(
            description=f"the request is {document.get('status')}: {document.get('error', 'no error recorded')}"
        )
    changes = {key: value for key, value in config.model_dump().items() if value is not None}
    try:
        result, write_back = draw(db, document, run_id, budget, changes)
    except RequestRejected as invalid:
        raise dg.Failure(description=f"re-draw rejected: {invalid}") from invalid
    db.samples.update_one(
        {"_id": document["_id"]},
        {
            "$set": write_back,
            "$push": {
                "redraws": {"run_id": run_id, "at": write_back["drawn_at"], "changes": changes, "seed": result.seed}
            },
        },
    )
    return dict(write_back["result"]), write_back


def shortfall(result: SelectionResult) -> dict[str, Any]:
    """What a partly filled sample misses: completes overall, and per target category short."""
    return {
        "completes": int(result.size_requested - result.completes_planned),
        "categories": [
            {
                "target": r.target,
                "category": r.category,
                "requested": round(r.requested, 1),
                "allocated": r.allocated,
                "short": round(r.shortfall, 1),
            }
            for r in result.shortfalls
        ],
    }


def sample_labels(document: Mapping[str, Any]) -> dict[str, str]:
    """What names a sample in the UI, on every materialization of it: its name (redacted, as any text
    the pipeline shows) and its survey."""
    return {
        "sample_name": redact(str(document.get("name") or "unnamed")),
        "survey_id": str(document.get("survey_id") or "none"),
    }


def materialization(report: Mapping[str, Any], member_count: int, document: Mapping[str, Any]) -> dg.MaterializeResult:
    """From the result as written on the request (`SelectionResult.to_document()`), so a run that
    finishes an earlier claim's draw shows the same; `member_count` is the sample's `sample_members`."""
    categories = [CategoryReport(**entry) for entry in report["composition"]]
    deviation, tolerance = float(report["max_deviation_pp"]), float(report["tolerance_pp"])
    passed = bool(deviation <= tolerance and report["completes_planned"] == report["size_requested"])
    composition = markdown_image(composition_svg(categories, tolerance), alt="composition: target (grey) vs achieved")
    return dg.MaterializeResult(
        metadata={
            **sample_labels(document),
            "status": report["status"],
            "completes_planned": int(report["completes_planned"]),
            "invitations": int(report["invited"]),
            "largest_deviation_pp": dg.MetadataValue.float(round(deviation, 3)),
            "seed": int(report["seed"]),
            "effective_sample_size": dg.MetadataValue.float(
                round(float(report["weighting_cost"]["effective_sample_size"]), 1)
            ),
            "composition_chart": dg.MetadataValue.md(composition),
            "target_vs_achieved": composition_table(categories),
            "summary": dg.MetadataValue.text(report["message"]),
            "missing_values": missing_table(report.get("missing", [])),
            "dropped_targets": dg.MetadataValue.text(
                "; ".join(dropped["reason"] for dropped in report.get("dropped_targets", [])) or "none"
            ),
            "held_back_by_contact_budget": int((report.get("held_back") or {}).get("held_back", 0)),
            **row_count(member_count),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=TOLERANCE_CHECK,
                passed=passed,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "largest_deviation_pp": dg.MetadataValue.float(round(deviation, 3)),
                    "tolerance_pp": dg.MetadataValue.float(tolerance),
                    "cells_short": sum(report.is_short for report in categories),
                },
            )
        ],
    )


def composition_table(categories: list[CategoryReport]) -> dg.TableMetadataValue:
    return table(
        ["target", "category", "target %", "achieved %", "deviation pp", "shortfall"],
        [
            (
                r.target,
                r.category,
                round(r.target_pct, 2),
                round(r.achieved_pct, 2),
                round(r.deviation_pp, 2),
                round(r.shortfall),
            )
            for r in categories
        ],
    )


def missing_table(missing: list[Mapping[str, Any]]) -> dg.TableMetadataValue:
    """Per target: eligible members without its value, and their share of the sample."""
    return table(
        ["target", "members missing", "completes missing", "% of sample"],
        [
            (entry["target"], int(entry["members"]), int(entry["completes"]), round(float(entry["pct"]), 2))
            for entry in missing
        ],
    )


# --- response rates and fieldwork -------------------------------------------------------------------


@dg.asset(
    deps=["survey_completions", dg.AssetDep("samples", partition_mapping=dg.AllPartitionMapping())],
    group_name="sampler",
    owners=OWNERS,
    kinds={"python", "mongodb"},
    tags={"panel/part": "sampler"},
)
def response_rates(
    context: dg.AssetExecutionContext, mongo: MongoResource, fieldwork_timing: FieldworkTiming
) -> dg.MaterializeResult:
    """Response rates learned from the panel's own invitations of the last RATE_WINDOW_DAYS days
    (sample members with `invited_at`, completed when the member has a transaction of the sample's
    survey): per cell of age band x gender, region and social grade, shrunk toward the overall rate,
    with the time-to-complete curve. Stored in `response_rates`; fieldwork sizes invitations with
    them when a request gives no `expected_response_rate`."""
    db = mongo.db()
    store.ensure_indexes(db)
    now = utc_now()
    history = store.invitation_history(db, now - dt.timedelta(days=RATE_WINDOW_DAYS), now.year)
    learned = learn_response_rates(history, now, clock=fieldwork_timing.fieldwork_clock(db))
    store.save_response_rates(db, learned.to_document(), now)
    context.log.info(f"learned from {learned.invitations} invitations and {learned.completes} completes")
    return dg.MaterializeResult(metadata=rates_metadata(learned))


def rates_metadata(learned: LearnedResponseRates) -> dict[str, Any]:
    tables = {
        f"rates_{dimension.replace('|', '_x_')}": table(
            ["cell", "invitations", "completes", "raw rate %", "shrunk rate %"],
            [
                (cell.cell, cell.invitations, cell.completes, round(100 * cell.raw_rate, 2), round(100 * cell.rate, 2))
                for cell in learned.cells
                if cell.dimension == dimension
            ],
        )
        for dimension in RATE_DIMENSIONS
    }
    return {
        "overall_rate_pct": dg.MetadataValue.float(round(100 * learned.overall_rate, 2)),
        "invitations": learned.invitations,
        "completes": learned.completes,
        "window_days": RATE_WINDOW_DAYS,
        "rates_chart": dg.MetadataValue.md(
            markdown_image(
                rates_svg(learned.cells, learned.overall_rate),
                alt="response rate per cell: shrunk (bar), raw (red), overall (dashed)",
            )
        ),
        "completion_curve_chart": dg.MetadataValue.md(
            markdown_image(completion_curve_svg(learned.curve), alt="share of completes by hours since invitation")
        ),
        **tables,
        "completion_curve": table(
            ["hours since invitation", "share of completes in %"],
            [
                (hour, round(100 * share, 1))
                for hour, share in zip(learned.curve.hours, learned.curve.shares, strict=True)
            ],
        ),
        "curve_from_invitations": learned.curve.fully_observed_invitations,
    }


@dg.asset(
    partitions_def=sample_request_partitions,
    deps=["samples", "response_rates"],
    group_name="sampler",
    owners=OWNERS,
    kinds={"python", "mongodb"},
    tags={"panel/part": "sampler"},
)
def sample_fieldwork(
    context: dg.AssetExecutionContext,
    mongo: MongoResource,
    contact_budget: ContactBudget,
    fieldwork_timing: FieldworkTiming,
) -> dg.MaterializeResult:
    """One sample's fieldwork (partition = the sample's `_id`): its members' completions (their first
    transaction of the sample's survey) counted per target cell against the cells' target completes,
    with the learned rates (or the request's own) and the completion curve; writes
    `fieldwork_state` on the sample (full cells in `closed_cells`) and `completed_at` on its
    completers, and closes fieldwork when every cell is full or at `close_at`, with the weights.
    While open, a sample fielded in waves gets a top-up wave when one is due (sampler/waves.py):
    members for the cells still short, within the contact budget, added and invited; and the due
    non-completers of cells still short are reminded, within the contact budget (sampler/reminders.py)."""
    db = mongo.db()
    store.ensure_fieldwork_indexes(db)
    sample_id = ObjectId(context.partition_key)
    document = db.samples.find_one({"_id": sample_id})
    if document is None:
        raise dg.Failure(description=f"no samples document with _id {sample_id}")
    if document.get("status") != DONE or not document.get("drawn_at"):
        raise dg.Failure(description=f"sample {sample_id} is not drawn yet (status {document.get('status')})")
    try:
        request = on_fieldwork_clock(parse_sample_request(document), fieldwork_timing.fieldwork_clock(db))
    except SampleRequestError as invalid:
        raise dg.Failure(description=f"sample {sample_id}: {invalid}") from invalid
    if request.fieldwork is None:
        raise dg.Failure(description=f"sample {sample_id} has no fieldwork (`fieldwork: false`, or no mailing)")
    now = utc_now()
    mailed = request.mailing is not None
    members = store.fieldwork_members(db, sample_id, request.survey_id, now.year, mailed=mailed)
    learned = store.learned_response_rates(db)
    update = update_fieldwork(request, document, members, learned, now)
    top_up, top_up_note = top_up_wave(db, request, document, update, members, learned, contact_budget, now)
    if mailed and waves.uses_waves(request):  # this pass's wave, or one a crashed pass added and did not invite
        invitations.invite_sample(db, sample_id, now, context.log)
    before = document.get("fieldwork_state") or {}
    update = replace(update, state=waves.state_with_waves(update.state, before, members, top_up, now))
    stamped = store.write_fieldwork(db, sample_id, update.state, update.completed_at, update.weights)
    context.log.info(
        f"{update.state['completes']} completes ({stamped} new); fieldwork {update.state['status']}; {top_up_note}"
    )
    reminder_round = reminders.remind(
        db, sample_id, request, members, update, now, contact_budget.contacts_per_week, context.log
    )
    return dg.MaterializeResult(
        metadata=fieldwork_metadata(update, document)
        | waves_metadata(update, top_up_note)
        | reminder_metadata(reminder_round)
    )


def top_up_wave(
    db: Database,
    request: SampleRequest,
    document: Mapping[str, Any],
    update: FieldworkUpdate,
    members: pd.DataFrame,
    learned: LearnedResponseRates | None,
    budget: ContactBudget,
    now: dt.datetime,
) -> tuple[waves.TopUp | None, str]:
    """A top-up wave when one is due: eligible non-members (the draw's filters and exclusions) for
    the cells still short, added as the next wave (idempotent upserts); and what this pass did."""
    drawn_at = as_utc(document["drawn_at"])
    not_due = waves.top_up_not_due(request, update, members, drawn_at, document.get("fieldwork_state") or {}, now)
    if not_due:
        return None, f"no top-up: {not_due}"
    panel = store.load_panel(db, waves.sizing_request(request, learned), now.year)
    eligible = store.eligibility(panel, store.excluded_user_ids(db, request, now) | set(members.index))
    contacts = store.panel_contacts(db, panel, eligible, now)
    seed = int(document.get("seed_used") or 0)
    top_up = waves.plan_top_up(
        request,
        document.get("result") or {},
        update,
        members,
        panel,
        eligible,
        contacts,
        budget.contacts_per_week,
        learned,
        seed,
    )
    added = store.add_members(db, document["_id"], [str(uid) for uid in top_up.member_ids], now, top_up.wave)
    held = top_up.budget.held_back
    return top_up, f"top-up wave {top_up.wave}: {added} members added ({held} held back by the contact budget)"


def waves_metadata(update: FieldworkUpdate, top_up_note: str) -> dict[str, Any]:
    """The waves as the UI shows them: members per wave, this pass's top-up, the budget's held back."""
    state = update.state
    held = state.get("held_back") or {}
    return {
        "waves": int(state.get("waves") or 0),
        "top_up": dg.MetadataValue.text(top_up_note),
        "members_by_wave": table(
            ["wave", "added at", "members"],
            [(w["wave"], w["added_at"].isoformat() if w["added_at"] else "", w["members"]) for w in state["by_wave"]],
        ),
        "held_back_by_contact_budget": int(held.get("held_back", 0)),
        "held_back_by_cell": table(
            ["target", "category", "held back"],
            [(c["target"], c["category"], c["held_back"]) for c in held.get("by_cell", [])],
        ),
    }


def reminder_metadata(reminder_round: reminders.ReminderRound | None) -> dict[str, Any]:
    """This pass's reminders: members reminded now, and those the contact budget held back (per cell)."""
    if reminder_round is None:
        return {"reminded_now": 0, "reminders_held_back": 0}
    held_back = reminder_round.budget.to_document()
    return {
        "reminded_now": reminder_round.reminded,
        "reminders_held_back": held_back["held_back"],
        "reminders_held_back_by_cell": table(
            ["target", "category", "held back"],
            [(cell["target"], cell["category"], cell["held_back"]) for cell in held_back["by_cell"]],
        ),
    }


def soft_cells_closing(state: Mapping[str, Any]) -> str:
    """Where the cells after the first target close now, in words (fieldwork_state.soft_cells_reopened_at)."""
    reopened = state.get("soft_cells_reopened_at")
    if reopened is None:
        return "their target (until a top-up finds a short hard cell nobody to invite)"
    return f"their cap, target plus half the tolerance (since {reopened.isoformat()})"


def fieldwork_metadata(update: FieldworkUpdate, document: Mapping[str, Any]) -> dict[str, Any]:
    state, cells = update.state, update.accounting.cells
    per_complete = state.get("invitations_per_complete")
    return {
        **sample_labels(document),
        "completes_over_time": dg.MetadataValue.md(fieldwork_chart(update, document)),
        "status": state["status"],
        "completes": state["completes"],
        "target_completes": state["target_completes"],
        "invited": state["invited"],
        "reminders_sent": state["reminders"],
        "invitations_per_complete": dg.MetadataValue.float(float(per_complete)) if per_complete else "no completes yet",
        "closed_cells": dg.MetadataValue.text(
            ", ".join(f"{cell['target']}={cell['category']}" for cell in state["closed_cells"]) or "none"
        ),
        "closing": state.get("closed_reason") or f"open until {state['close_at'].isoformat()}",
        "soft_cells_close_at": soft_cells_closing(state),
        "rates_from": state["rates"],
        "completes_vs_target": table(
            ["target", "category", "target completes", "completes", "invited", "still needed", "closed"],
            zip(
                cells["target"],
                cells["category"],
                cells["target_completes"].astype(int),
                cells["completes"].astype(int),
                cells["invited"].astype(int),
                cells["need"].astype(float).round(1),
                cells["closed"].astype(bool),
                strict=True,
            ),
        ),
        **weights_metadata(state.get("weights") or {}),
        **row_count(state["completes"]),
    }


def weights_metadata(weights: Mapping[str, Any]) -> dict[str, Any]:
    """The weights' summary (fieldwork_state.weights) once fieldwork closed: status, what it says,
    the effective sample size, design effect, largest weight and raking iterations."""
    if not weights:
        return {"weights": "computed when fieldwork closes"}
    summary: dict[str, Any] = {
        "weights": dg.MetadataValue.text(str(weights.get("message", ""))),
        "weights_status": str(weights.get("status")),
        "weights_iterations": int(weights.get("iterations", 0)),
    }
    for field in ("effective_sample_size", "design_effect", "max_weight"):
        if isinstance(weights.get(field), int | float):
            summary[f"weights_{field}"] = dg.MetadataValue.float(float(weights[field]))
    return summary


def fieldwork_chart(update: FieldworkUpdate, document: Mapping[str, Any]) -> str:
    """Completes per cell against target, from the draw to now (or the closing)."""
    state = update.state
    end = state.get("closed_at") or state["updated_at"]
    drawn_at = document.get("drawn_at")
    start = as_utc(drawn_at) if isinstance(drawn_at, dt.datetime) else end
    series = cell_series(update.accounting.cells, update.cell_members, update.completed_at)
    return markdown_image(
        completes_over_time_svg(series, start, end), alt="completes per cell over time against target (dashed)"
    )


# --- what an analyst downloads and searches ----------------------------------------------------------


@dg.asset(
    partitions_def=sample_request_partitions,
    deps=["sample_fieldwork"],
    group_name="sampler",
    owners=OWNERS,
    kinds={"python", "mongodb", "csv"},
    tags={"panel/part": "sampler"},
)
def sample_completes(
    context: dg.AssetExecutionContext, mongo: MongoResource, completes_files: CompletesFiles
) -> dg.MaterializeResult:
    """One sample's completers (partition = the sample's `_id`) as a CSV file an analyst downloads
    (its path in the metadata): user_id, the profile fields the sample's targets use, wave,
    invited_at, completed_at and weight (empty until fieldwork closed with converged weights); no
    address or name. Rewritten whole, atomically, after every fieldwork pass (the fieldwork job
    selects both), from the completions `sample_fieldwork` stamped on `sample_members`."""
    db = mongo.db()
    sample_id = ObjectId(context.partition_key)
    document = db.samples.find_one({"_id": sample_id})
    if document is None:
        raise dg.Failure(description=f"no samples document with _id {sample_id}")
    try:
        request = parse_sample_request(document)
    except SampleRequestError as invalid:
        raise dg.Failure(description=f"sample {sample_id}: {invalid}") from invalid
    fields = target_fields(sample_targets(request, document.get("result") or {}))
    completes = completes_table(store.completed_members(db, sample_id, utc_now().year), fields)
    path = completes_files.write(sample_id, completes)
    context.log.info(f"{len(completes)} completes written for sample {sample_id}")
    state = document.get("fieldwork_state") or {}
    preview = completes.head(PREVIEW_ROWS).astype(object)
    return dg.MaterializeResult(
        metadata={
            **sample_labels(document),
            "path": dg.MetadataValue.path(str(path)),
            "fieldwork": str(state.get("status", "none")),
            "weights": dg.MetadataValue.text(
                (state.get("weights") or {}).get("message", "written when fieldwork closes with converged weights")
            ),
            "columns": dg.MetadataValue.text(", ".join(completes.columns)),
            "preview": table(list(completes.columns), preview.where(preview.notna(), None).itertuples(index=False)),
            **row_count(len(completes)),
        }
    )


@dg.asset(
    deps=[
        dg.AssetDep("samples", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("sample_fieldwork", partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="sampler",
    owners=OWNERS,
    kinds={"python", "mongodb"},
    tags={"panel/part": "sampler"},
    output_required=False,
)
def sample_directory(context: dg.AssetExecutionContext, mongo: MongoResource) -> Iterator[dg.MaterializeResult]:
    """The newest DIRECTORY_SAMPLES samples by name, each with its partition key (the `samples`
    document's `_id`), survey, request status and fieldwork status, so an analyst finds "Omnibus
    wave 12" without knowing its ObjectId. Looked at by every sample and fieldwork run (their jobs
    select it), materialised only when the list changed (a `fingerprint` of its rows), so the
    event log does not keep a copy per fieldwork pass."""
    rows = directory_rows(store.recent_samples(mongo.db(), DIRECTORY_SAMPLES))
    fingerprint = hashlib.sha1(repr(rows).encode()).hexdigest()[:16]
    last = context.instance.get_latest_materialization_event(context.asset_key)
    listed = last.asset_materialization.metadata if last and last.asset_materialization else {}
    if listed.get("fingerprint") == dg.MetadataValue.text(fingerprint):
        context.log.info("the sample directory is unchanged")
        return
    yield dg.MaterializeResult(
        metadata={
            "samples": table(["name", "partition key", "survey", "status", "fieldwork", "created"], rows),
            "listed": len(rows),
            "fingerprint": dg.MetadataValue.text(fingerprint),
        }
    )


def directory_rows(docs: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for doc in docs:
        labels, created = sample_labels(doc), doc.get("created_at")
        rows.append(
            (
                labels["sample_name"],
                str(doc["_id"]),
                labels["survey_id"],
                str(doc.get("status") or "pending"),
                str((doc.get("fieldwork_state") or {}).get("status", "none")),
                as_utc(created).isoformat() if isinstance(created, dt.datetime) else "",
            )
        )
    return rows
