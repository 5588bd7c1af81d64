"""The Extractor's assets: SurveyGizmo responses by submission day, the users' profiles derived
from them, and survey completions from the transactions queue."""

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
from bson import ObjectId
from pydantic import Field

from panel_pipeline.extractor import store
from panel_pipeline.extractor.deletions import plan_deletions, refusal
from panel_pipeline.extractor.normalize import (
    load_profile_mapping,
    normalize_profile,
    question_shortnames,
)
from panel_pipeline.extractor.resources import SurveyGizmoResource
from panel_pipeline.extractor.responses import (
    MalformedResponse,
    SurveyResponse,
    parse_response,
)
from panel_pipeline.extractor.surveygizmo import SurveyGizmoClient, SurveyGizmoNotFound
from panel_pipeline.partitions import response_days
from panel_pipeline.queue.resources import MongoResource
from panel_pipeline.queue.store import RequestRejected, process_document, utc_now

UK = ZoneInfo("Europe/London")
# Each day's pull reaches an hour into its neighbours: responses submitted around midnight, or
# whose timestamps moved with an edit, are caught by whichever run comes next (upserts are idempotent).
WINDOW_OVERLAP = dt.timedelta(hours=1)
SHOWN_QUARANTINED = 20


def day_of(moment: dt.datetime) -> str:
    return moment.astimezone(UK).strftime("%Y-%m-%d")


@dg.asset(
    partitions_def=response_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="extractor",
    kinds={"python", "mongodb"},
    pool="surveygizmo",
    tags={"panel/part": "extractor"},
)
def surveygizmo_responses(context: dg.AssetExecutionContext, mongo: MongoResource, surveygizmo: SurveyGizmoResource) -> dg.MaterializeResult:
    """Raw SurveyGizmo responses of the profile surveys, by the UK day they were submitted on,
    upserted into `sg_responses` keyed by (survey id, response id). A run pulls its days (a backfill
    pulls its whole range in one paged query) with an hour's overlap either side, so re-runs,
    backfills and late or edited responses converge on the same data. Malformed records go to
    `sg_quarantine` with the reason, and the run goes on."""
    db = mongo.db()
    store.ensure_indexes(db)
    client = surveygizmo.client()
    window = context.partition_time_window
    now = utc_now()
    quarantined: list[tuple[str, str]] = []  # the first SHOWN_QUARANTINED, for the metadata
    quarantined_count = 0

    def parsed_responses() -> Iterator[SurveyResponse]:
        nonlocal quarantined_count
        for survey_id in surveygizmo.survey_ids():
            remember_survey(db, client, survey_id, now)
            for record in client.list_responses(survey_id, window.start - WINDOW_OVERLAP, window.end + WINDOW_OVERLAP):
                try:
                    yield parse_response(record, survey_id, client.account_zone)
                except MalformedResponse as bad:
                    response_id = str(record.get("id", "?")) if isinstance(record, Mapping) else "?"
                    store.quarantine(db, survey_id, response_id, context.partition_key_range.start, str(bad), record if isinstance(record, Mapping) else {"value": record}, now)
                    quarantined_count += 1
                    if len(quarantined) < SHOWN_QUARANTINED:
                        quarantined.append((f"{survey_id}:{response_id}", str(bad)))

    # Streamed: written a chunk at a time as the pages come, so a backfill holds one chunk, not its range.
    written = store.upsert_raw(db, parsed_responses(), day_of, now)
    context.log.info(f"{written.total} responses, {quarantined_count} quarantined, {client.calls_made} API calls")
    return dg.MaterializeResult(
        metadata={
            "window": f"{window.start.isoformat()} .. {window.end.isoformat()} (+/- {WINDOW_OVERLAP})",
            "responses": written.total,
            "inserted": written.inserted,
            "changed": written.changed,
            "unchanged": written.unchanged,
            "quarantined": quarantined_count,
            "quarantined_examples": dg.MetadataValue.md(_table(("response", "reason"), quarantined)),
            "api_calls": client.calls_made,
            "retry_wait_seconds": round(client.retry_wait_seconds, 1),
        }
    )


def remember_survey(db, client: SurveyGizmoClient, survey_id: str, now: dt.datetime) -> None:
    """Keep the survey's question shortnames, which the profile mapping is written against."""
    shortnames = question_shortnames(client.get_survey(survey_id))
    db.sg_surveys.replace_one({"_id": survey_id}, {"shortnames": shortnames, "fetched_at": now}, upsert=True)


@dg.asset(
    partitions_def=response_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[surveygizmo_responses],
    group_name="extractor",
    kinds={"python", "mongodb"},
    tags={"panel/part": "extractor"},
)
def users(context: dg.AssetExecutionContext, mongo: MongoResource) -> dg.MaterializeResult:
    """`users.profile`: the profile attributes of the contract, derived from the day's complete
    responses through the declarative mapping in profile_mapping.yaml (answer text to contract
    values, birth year to age and age band). Each attribute keeps the newest answer, so days applied
    in any order give the same profiles; `profile_updated_at` moves when a value changes. A response
    of an unknown member is quarantined; an answer the mapping cannot place is reported."""
    db = mongo.db()
    mapping = load_profile_mapping()
    now = utc_now()
    shortnames = store.survey_shortnames(db)
    answers, problems, unknown = [], [], []
    for day in context.partition_keys:
        raws = store.raw_records(db, day)
        for raw, user_id in zip(raws, store.find_members(db, raws), strict=True):
            response = parse_response(raw["record"], raw["survey_id"], UK)
            if response.status.lower() != "complete" or response.is_test_data:
                continue
            if user_id is None:
                reason = f"unknown member (panel id {raw.get('panel_id') or 'missing'}, contact id {raw.get('contact_id') or 'missing'})"
                store.quarantine(db, raw["survey_id"], raw["response_id"], day, reason, raw["record"], now)
                unknown.append((raw["_id"], reason))
                continue
            normalized = normalize_profile(response, mapping, shortnames=shortnames.get(raw["survey_id"], {}), as_of=now.date())
            problems += [(raw["_id"], str(problem)) for problem in normalized.problems]
            answers.append(store.ProfileAnswer(user_id, response.id, response.submitted_at, normalized.profile))
    changed = store.apply_profiles(db, answers, now)
    return dg.MaterializeResult(
        metadata={
            "responses_applied": len(answers),
            "users_changed": changed,
            "unknown_members": len(unknown),
            "unmapped_answers": len(problems),
            "unmapped_examples": dg.MetadataValue.md(_table(("response", "problem"), problems[:SHOWN_QUARANTINED])),
        }
    )


class DeletionSweepConfig(dg.Config):
    max_deleted_share: float = Field(
        default=0.1, ge=0.0, le=1.0,
        description="Most of a survey's live responses one sweep may mark deleted; raise it to apply a purge that was meant.",
    )


@dg.asset(
    deps=[surveygizmo_responses],
    group_name="extractor",
    kinds={"python", "mongodb"},
    pool="surveygizmo",
    tags={"panel/part": "extractor"},
)
def surveygizmo_deletions(
    context: dg.AssetExecutionContext, config: DeletionSweepConfig, mongo: MongoResource, surveygizmo: SurveyGizmoResource
) -> dg.MaterializeResult:
    """Responses deleted in SurveyGizmo, marked in `sg_responses`: per profile survey, every id
    SurveyGizmo still lists (submitted before the sweep began; 500 a page) is compared with the
    stored ones. A stored response missing from the listing gets `deleted_at`, so `users` leaves it
    out when its day is materialised again; one listed again loses it. A listing that does not add
    up, or that would delete more than `max_deleted_share` of a survey, is refused for that survey
    and fails the run (see extractor/deletions.py)."""
    db = mongo.db()
    client = surveygizmo.client()
    cutoff = utc_now()
    rows, refused, days = [], [], set()
    totals = {"checked": 0, "listed": 0, "newly_deleted": 0, "restored": 0, "listed_not_stored": 0}
    for survey_id in surveygizmo.survey_ids():
        listing = client.list_response_ids(survey_id, cutoff)
        stored = store.stored_responses(db, survey_id, cutoff)
        plan = plan_deletions(stored, listing.ids)
        reason = refusal(plan, listing, live=sum(not s.deleted for s in stored), max_share=config.max_deleted_share)
        if reason is not None:
            context.log.error(f"survey {survey_id}: {reason}")
            refused.append((survey_id, reason))
            continue
        deleted = store.mark_deleted(db, survey_id, plan.newly_deleted, cutoff)
        restored = store.mark_restored(db, survey_id, plan.restored)
        days |= plan.days
        counts = {"checked": plan.checked, "listed": len(listing.ids), "newly_deleted": deleted, "restored": restored, "listed_not_stored": plan.not_stored}
        totals = {key: totals[key] + counts[key] for key in totals}
        rows.append((survey_id, ", ".join(f"{key} {value}" for key, value in counts.items())))
    metadata = {
        **totals,
        "api_calls": client.calls_made,
        "surveys": dg.MetadataValue.md(_table(("survey", "responses"), rows)),
        "days_to_rematerialize": dg.MetadataValue.json(sorted(days)),
        "refused": dg.MetadataValue.md(_table(("survey", "reason"), refused)),
    }
    if refused:
        raise dg.Failure(description=f"deletion sweep refused for {len(refused)} survey(s): {refused[0][1]}", metadata=metadata)
    return dg.MaterializeResult(metadata=metadata)


class CompletionBatch(dg.Config):
    document_ids: list[str]


@dg.asset(group_name="extractor", kinds={"python", "mongodb"}, deps=[users], tags={"panel/part": "completions"})
def survey_completions(
    context: dg.AssetExecutionContext, config: CompletionBatch, mongo: MongoResource, surveygizmo: SurveyGizmoResource
) -> dg.MaterializeResult:
    """Survey completions from the `transactions` queue, a batch per run: each transaction's response
    is fetched from SurveyGizmo, stored with the raw responses, and when the survey is a profile
    survey it updates that member's profile at once. An unknown survey or response fails that
    transaction alone with a message saying which; a transient error schedules its retry."""
    db = mongo.db()
    client = surveygizmo.client()
    queue = mongo.work_queue("transactions")
    mapping = load_profile_mapping()
    profile_surveys = set(surveygizmo.survey_ids())
    shortnames = store.survey_shortnames(db)
    outcomes: dict[str, int] = {}
    transient = 0
    for document_id in config.document_ids:
        try:
            outcome = process_document(
                queue, ObjectId(document_id), context.run.run_id,
                lambda doc: complete_transaction(db, client, mapping, profile_surveys, shortnames, doc),
            )
        except Exception as exc:  # already released for a retry by process_document
            context.log.warning(f"transaction {document_id}: {type(exc).__name__}, retried later")
            transient += 1
            continue
        outcomes[outcome.status] = outcomes.get(outcome.status, 0) + 1
    if transient:
        raise dg.Failure(description=f"{transient} transaction(s) hit transient errors and will be retried; {outcomes}")
    return dg.MaterializeResult(metadata={f"transactions_{status}": n for status, n in outcomes.items()})


def complete_transaction(
    db, client: SurveyGizmoClient, mapping, profile_surveys: set[str], shortnames: dict[str, dict[str, str]], doc: Mapping[str, Any]
) -> dict[str, Any]:
    """Fetch and store the transaction's response; update the member's profile from a profile
    survey. `shortnames` (by survey id) is the batch's, filled from SurveyGizmo for a survey the
    raw extract has not stored yet."""
    survey_id, response_id = str(doc.get("survey_id", "")), str(doc.get("response_id", ""))
    if not survey_id or not response_id:
        raise RequestRejected("survey_id and response_id: both are required")
    try:
        record = client.get_response(survey_id, response_id)
    except SurveyGizmoNotFound as missing:
        raise RequestRejected(f"response_id: no response {response_id} in survey {survey_id}") from missing
    try:
        response = parse_response(record, survey_id, client.account_zone)
    except MalformedResponse as bad:
        raise RequestRejected(f"response_id: response {response_id} is malformed: {bad}") from bad
    now = utc_now()
    store.upsert_raw(db, [response], day_of, now)
    if survey_id not in profile_surveys:
        return {"profile_updated": False}
    if not shortnames.get(survey_id):
        shortnames[survey_id] = question_shortnames(client.get_survey(survey_id))
    normalized = normalize_profile(response, mapping, shortnames=shortnames[survey_id], as_of=now.date())
    changed = store.apply_profiles(db, [store.ProfileAnswer(doc["user_id"], response.id, response.submitted_at, normalized.profile)], now)
    return {"profile_updated": bool(changed)}


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    if not rows:
        return "none"
    return "\n".join([f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {a} | {b.replace('|', '/')} |" for a, b in rows)])
