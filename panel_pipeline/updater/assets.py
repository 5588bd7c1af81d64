"""The Updater's asset: dynamic samples kept current as members join or change their profile."""

import dagster as dg
from bson import ObjectId

from panel_pipeline.queue.resources import MongoResource
from panel_pipeline.queue.store import utc_now
from panel_pipeline.sampler import invitations, members
from panel_pipeline.updater import store
from panel_pipeline.updater.dynamic import place_changed_members


@dg.asset(
    group_name="updater",
    kinds={"python", "mongodb"},
    deps=[
        dg.AssetDep("users", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("survey_completions"),
        dg.AssetDep("samples", partition_mapping=dg.AllPartitionMapping()),
    ],
)
def dynamic_sample_updates(context: dg.AssetExecutionContext, mongo: MongoResource) -> dg.MaterializeResult:
    """Adds members who joined or changed since the last run to every open dynamic sample whose
    filters they match and whose quota cells have room, and queues their invitation (one `mailings`
    document per batch, made exactly once). Cost follows the members that changed, not the panel:
    changes are read through indexes on `profile_updated_at` and `created_at` from a cursor kept in
    `pipeline_state`, which moves only after the run's writes are done."""
    db = mongo.db()
    store.ensure_indexes(db)
    now = utc_now()
    changed = store.changed_members(db, store.read_cursor(db) or store.first_cursor(db, now), now.year)
    samples, closed = store.open_dynamic_samples(db, now)
    rows = []
    for sample in samples:
        newly_changed = changed.since(sample.drawn_at) if sample.drawn_at else changed.profiles
        # The request's exclusions hold for newcomers as for the draw; members stay members.
        excluded = members.excluded_user_ids(db, sample.request, now, among=newly_changed.index) - sample.member_ids
        placement = place_changed_members(newly_changed.drop(index=list(excluded)), sample)
        added = store.add_members(db, sample.sample_id, placement.joining, now)
        store.mark_qualification(db, sample.sample_id, placement.stopped_qualifying, False, now)
        store.mark_qualification(db, sample.sample_id, placement.qualifying_again, True, now)
        invitations.stamp_pending_invitations(db, ObjectId(sample.sample_id))
        if placement.full:
            store.close_sample(db, ObjectId(sample.sample_id), "its size was reached", now)
            closed.append(sample.sample_id)
        rows.append((sample.sample_id, added, len(placement.no_room), len(excluded), len(placement.stopped_qualifying)))
    mailings = invitations.create_missing_mailings(db, now)
    store.write_cursor(db, changed.newest_change)
    context.log.info(f"{len(changed.profiles)} changed member(s), {len(samples)} open dynamic sample(s)")
    return dg.MaterializeResult(
        metadata={
            "changed_members": len(changed.profiles),
            "open_dynamic_samples": len(samples),
            "members_added": sum(row[1] for row in rows),
            "invitation_mailings": dg.MetadataValue.json([str(m) for m in mailings]),
            "closed_samples": dg.MetadataValue.json(closed),
            "per_sample": dg.MetadataValue.md(_table(rows)),
            "cursor": dg.MetadataValue.text(changed.newest_change.isoformat()),
        }
    )


def _table(rows: list[tuple[str, int, int, int, int]]) -> str:
    lines = ["| sample | added | no room | excluded | stopped qualifying |", "|---|---|---|---|---|"]
    lines += [f"| {sample} | {added} | {no_room} | {excluded} | {stopped} |" for sample, added, no_room, excluded, stopped in rows]
    return "\n".join(lines)
