"""The Extractor's assets: SurveyGizmo responses by submission day, the users' profiles derived
from them, and survey completions from the transactions queue."""

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
from bson import ObjectId
from pydantic import Field

from panel_pipeline.extractor import review, store
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
from panel_pipeline.extractor.transactions import Transaction, TransactionError, parse_transaction, response_deadline
from panel_pipeline.shared.partitions import response_day_partitions
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline.queue.store import FAILED, LeaseLost, Postpone, RequestRejected, WorkQueue, process_document
from panel_pipeline.shared.clock import utc_now

UK = ZoneInfo("Europe/London")
# Each day's pull reaches an hour into its neighbours: responses submitted around midnight, or
# whose timestamps moved with an edit, are caught by whichever run comes next (upserts are idempotent).
WINDOW_OVERLAP = dt.timedelta(hours=1)
SHOWN_QUARANTINED = 20


def day_of(moment: dt.datetime) -> str:
    return moment.astimezone(UK).strftime("%Y-%m-%d")


@dg.asset(
    partitions_def=response_day_partitions,
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
    partitions_def=response_day_partitions,
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
    of an unknown member is quarantined; an answer the mapping cannot place is counted by question
    and answer code (never its text) in the metadata."""
    db = mongo.db()
    mapping = load_profile_mapping()
    now = utc_now()
    shortnames = store.survey_shortnames(db)
    answers, unknown = [], []
    unmapped: Counter[review.UnmappedKey] = Counter()
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
            unmapped.update(review.unmapped_key(problem) for problem in normalized.problems)
            answers.append(store.ProfileAnswer(user_id, response.id, response.submitted_at, normalized.profile))
    changed = store.apply_profiles(db, answers, now)
    return dg.MaterializeResult(
        metadata={
            "responses_applied": len(answers),
            "users_changed": changed,
            "unknown_members": len(unknown),
            "unmapped_answers": sum(unmapped.values()),
            # By question and answer code with counts: never the answer's text (vote answers are special-category data).
            "unmapped_examples": dg.MetadataValue.md(
                review.markdown_table(("attribute", "question", "answer code", "problem", "responses"), review.unmapped_rows(unmapped, SHOWN_QUARANTINED))
            ),
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
    response_wait_minutes: float = Field(
        default=30.0, ge=0.0,
        description="How long after a transaction's created_at a response SurveyGizmo does not list yet is waited for "
        "(Alchemer: a new response can take minutes to appear in the API); after it the transaction fails naming the response.",
    )
    response_retry_minutes: float = Field(
        default=2.0, gt=0.0,
        description="Wait between looks for a response not listed yet (more than the API's 60 s cache of identical GETs).",
    )


@dg.asset(group_name="extractor", kinds={"python", "mongodb"}, deps=[users], tags={"panel/part": "completions"})
def survey_completions(
    context: dg.AssetExecutionContext, config: CompletionBatch, mongo: MongoResource, surveygizmo: SurveyGizmoResource
) -> dg.MaterializeResult:
    """Survey completions from the `transactions` queue, a batch per run: each transaction's response
    is fetched from SurveyGizmo, stored with the raw responses, and when the survey is a profile
    survey it updates that member's profile at once. A transaction whose ids are not SurveyGizmo ids,
    whose member does not exist, or whose survey SurveyGizmo does not know fails alone at once, with
    a message naming the field. A response SurveyGizmo does not list yet is looked for again
    (postponed, no attempt used) until `response_wait_minutes` after the transaction's `created_at`,
    then fails naming it. A transient error schedules its retry."""
    db = mongo.db()
    client = surveygizmo.client()
    queue = mongo.work_queue("transactions")
    batch = CompletionContext(
        db=db, client=client, mapping=load_profile_mapping(), profile_surveys=set(surveygizmo.survey_ids()),
        shortnames=store.survey_shortnames(db), wait=dt.timedelta(minutes=config.response_wait_minutes),
        retry_every=dt.timedelta(minutes=config.response_retry_minutes),
    )
    outcomes: Counter[str] = Counter()
    for document_id in config.document_ids:
        status = settle_transaction(queue, ObjectId(document_id), context.run.run_id, batch)
        if status == "retry":
            context.log.warning(f"transaction {document_id}: transient error, retried later")
        outcomes[status] += 1
    metadata = {f"transactions_{status}": n for status, n in sorted(outcomes.items())}
    if outcomes["retry"]:
        raise dg.Failure(description=f"{outcomes['retry']} transaction(s) hit transient errors and will be retried; {dict(outcomes)}", metadata=metadata)
    return dg.MaterializeResult(metadata=metadata)


@dataclass
class CompletionContext:
    """What every transaction of one batch shares; `shortnames` fills up as surveys are fetched."""

    db: Any
    client: SurveyGizmoClient
    mapping: Any
    profile_surveys: set[str]
    shortnames: dict[str, dict[str, str]]
    wait: dt.timedelta
    retry_every: dt.timedelta


def settle_transaction(queue: WorkQueue, doc_id: ObjectId, owner: str, batch: CompletionContext) -> str:
    """Claim one transaction and finish it: `done`, `failed` (the document is wrong: at once),
    `postponed` (its response is not listed yet), `retry` (a transient error), `lease_lost`, or `skipped`."""
    try:
        return process_document(queue, doc_id, owner, lambda doc: complete_transaction(batch, doc)).status
    except LeaseLost:
        return "lease_lost"
    except Exception:  # released by process_document: for a retry, or failed once its attempts are used up
        failed = queue.collection.find_one({"_id": doc_id, "status": FAILED}, {"_id": 1})
        return FAILED if failed else "retry"


def complete_transaction(batch: CompletionContext, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the transaction, fetch and store its response, and update the member's profile from
    a profile survey. Raises RequestRejected naming the field for a document that can never succeed."""
    try:
        transaction = parse_transaction(doc)
    except TransactionError as invalid:
        raise RequestRejected(str(invalid)) from invalid
    if batch.db.users.find_one({"_id": transaction.user_id}, {"_id": 1}) is None:
        raise RequestRejected(f"user_id: no member {transaction.user_id}")
    survey_id, response_id = transaction.survey_id, transaction.response_id
    try:
        record = batch.client.get_response(survey_id, response_id)
    except SurveyGizmoNotFound as missing:
        raise _not_found(batch, transaction) from missing
    try:
        response = parse_response(record, survey_id, batch.client.account_zone)
    except MalformedResponse as bad:
        raise RequestRejected(f"response_id: response {response_id} is malformed: {review.without_values(bad.reason)}") from bad
    now = utc_now()
    store.upsert_raw(batch.db, [response], day_of, now)
    if survey_id not in batch.profile_surveys:
        return {"profile_updated": False}
    if not batch.shortnames.get(survey_id):
        batch.shortnames[survey_id] = question_shortnames(batch.client.get_survey(survey_id))
    normalized = normalize_profile(response, batch.mapping, shortnames=batch.shortnames[survey_id], as_of=now.date())
    answer = store.ProfileAnswer(transaction.user_id, response.id, response.submitted_at, normalized.profile)
    return {"profile_updated": bool(store.apply_profiles(batch.db, [answer], now))}


def _not_found(batch: CompletionContext, transaction: Transaction) -> Exception:
    """A 404 for the response: an unknown survey fails at once; an unknown response is waited for."""
    survey_id, response_id = transaction.survey_id, transaction.response_id
    if survey_id not in batch.profile_surveys:
        try:
            batch.client.get_survey(survey_id)
        except SurveyGizmoNotFound:
            return RequestRejected(f"survey_id: no survey {survey_id} in SurveyGizmo")
    deadline = response_deadline(transaction, batch.wait)
    now = utc_now()
    if now >= deadline:
        waited = (now - transaction.created_at).total_seconds() / 60
        return RequestRejected(f"response_id: no response {response_id} in survey {survey_id}, {waited:.0f} minutes after the transaction was created")
    return Postpone(
        f"response_id: response {response_id} not in survey {survey_id} yet; looking again until {deadline.isoformat(timespec='seconds')}",
        min(now + batch.retry_every, deadline),
    )


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    """Cells pass through `review.without_values`: a reason's quoted values (answers, records) never show."""
    return review.markdown_table(header, rows)
