"""The Updater's asset: dynamic samples kept current as members join or change their profile."""

import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.queue.worker import WorkerSlot, serving_worker
from panel_pipeline.sampler import store as sampler_store
from panel_pipeline.shared import invitations
from panel_pipeline.shared.clock import utc_now
from panel_pipeline.shared.contacts import DEFAULT_CONTACTS_PER_WEEK, recent_contacts
from panel_pipeline.shared.contract import PIPELINE_STATE
from panel_pipeline.shared.metadata import OWNERS, row_count, table
from panel_pipeline.shared.resources import ContactBudget, MongoResource
from panel_pipeline.updater import store
from panel_pipeline.updater.dynamic import (
    CellKey,
    DynamicSample,
    Placement,
    candidates,
    place_changed_members,
    with_joiners,
)

DYNAMIC_SAMPLES_DUTY = "dynamic_samples"


@dg.asset(
    group_name="updater",
    owners=OWNERS,
    kinds={"python", "mongodb"},
    deps=[
        dg.AssetDep("users", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("survey_completions"),
        dg.AssetDep("samples", partition_mapping=dg.AllPartitionMapping()),
    ],
)
def dynamic_sample_updates(
    context: dg.AssetExecutionContext, mongo: MongoResource, contact_budget: ContactBudget
) -> dg.MaterializeResult:
    """Adds members who joined or changed since the last run to every open dynamic sample whose
    filters they match and whose quota cells have room (with fieldwork: whose cells still need
    completes and none is closed), and queues their invitation (one `mailings` document per batch,
    made exactly once, for prompt delivery). A newcomer at the contact budget (survey contacts in 7
    days, across samples) is held back, counted per sample and cell here and on the sample
    (`dynamic_held_back`). The standing updater worker
    (dynamic_samples_worker_job) does this within about a second of a member's change and records a
    materialization here per update; while none serves, member_changes_sensor runs this asset. Cost
    follows the members that changed, not the panel: changes are read through indexes on
    `profile_updated_at` and `created_at` from a cursor kept in `pipeline_state`, in pages of
    (change time, `_id`) order until caught up; the cursor moves after each page's writes, so a
    backlog of any size is read once, none skipped. One update at a time: it holds the worker slot."""
    db = mongo.db()
    slot = WorkerSlot(db[PIPELINE_STATE], DYNAMIC_SAMPLES_DUTY, context.run.run_id)
    if not slot.take(utc_now()):
        serving = serving_worker(db, DYNAMIC_SAMPLES_DUTY, utc_now())
        owner = serving["owner"] if serving else "another run"
        context.log.info(f"the dynamic samples are kept current by {owner}: nothing for this run to do")
        return dg.MaterializeResult(metadata={"served_by": dg.MetadataValue.text(str(owner))})
    try:
        report = update_dynamic_samples(db, contact_budget.contacts_per_week, keep_alive=slot.renew)
    finally:
        slot.release()
    context.log.info(report.summary())
    return dg.MaterializeResult(metadata=report.metadata())


@dataclass
class UpdateReport:
    changed: int
    pages: int
    totals: dict[str, "SampleTotals"]
    mailings: list[ObjectId]
    closed: list[str]
    cursor: dt.datetime

    @property
    def members_added(self) -> int:
        return sum(t.added for t in self.totals.values())

    @property
    def members_held_back(self) -> int:
        return sum(t.held_back for t in self.totals.values())

    def summary(self) -> str:
        return (
            f"{self.changed} changed member(s) in {self.pages} page(s), {len(self.totals)} open dynamic "
            f"sample(s), {self.members_added} added, {self.members_held_back} held back by the contact budget"
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "changed_members": self.changed,
            "pages": self.pages,
            "open_dynamic_samples": len(self.totals),
            "members_added": self.members_added,
            "members_held_back": self.members_held_back,
            "invitation_mailings": dg.MetadataValue.json([str(m) for m in self.mailings]),
            "closed_samples": dg.MetadataValue.json(self.closed),
            "per_sample": per_sample_table(self.totals),
            "held_back_by_cell": held_back_table(self.totals),
            "cursor": dg.MetadataValue.text(self.cursor.isoformat()),
            **row_count(self.members_added),
        }


def update_dynamic_samples(
    db: Database, contacts_per_week: int = DEFAULT_CONTACTS_PER_WEEK, keep_alive: Callable[[], bool] = lambda: True
) -> UpdateReport:
    """One update of every open dynamic sample from the cursor until caught up (`keep_alive` is
    called after each page: the caller's hold on the updater's slot); a newcomer with
    `contacts_per_week` survey contacts or more in the last 7 days is held back."""
    store.ensure_indexes(db)
    now = utc_now()
    newest_at_start = store.latest_change(db)
    cursor = store.read_cursor(db) or store.first_cursor(db, now)
    samples, closed = store.open_dynamic_samples(db, now)
    totals = {sample.sample_id: SampleTotals() for sample in samples}
    mailings: list[ObjectId] = []
    changed_count = pages = 0
    for page in store.changed_member_pages(db, cursor, now.year):
        pages += 1
        changed_count += len(page.profiles)
        still_open = []
        for sample in samples:
            placement = update_sample(db, sample, page, now, totals[sample.sample_id], contacts_per_week)
            if placement.full:
                store.close_sample(db, ObjectId(sample.sample_id), "its size was reached", now)
                closed.append(sample.sample_id)
            else:
                still_open.append(with_joiners(sample, placement))
        samples = still_open
        mailings += invitations.create_missing_mailings(db, now)
        cursor = max(cursor, page.newest_change)
        store.write_cursor(db, cursor)  # after the page's writes: a crash re-reads this page, never skips it
        keep_alive()
    # Caught up: changes of members left out (not active) need no second look either.
    cursor = max(cursor, min(newest_at_start, now)) if newest_at_start else cursor
    store.write_cursor(db, cursor)
    return UpdateReport(changed_count, pages, totals, mailings, closed, cursor)


@dataclass
class SampleTotals:
    added: int = 0
    no_room: int = 0
    excluded: int = 0
    stopped: int = 0
    held_back: int = 0
    held_back_by_cell: Counter[CellKey] = field(default_factory=Counter)


def update_sample(
    db: Database,
    sample: DynamicSample,
    page: store.ChangedMembers,
    now: dt.datetime,
    totals: SampleTotals,
    contacts_per_week: int,
) -> Placement:
    """One page of changed members placed into one sample, written, and its newcomers stamped for an
    invitation; in a sample with a mailing, those at the contact budget are held back and recorded."""
    newly_changed = page.since(sample.drawn_at) if sample.drawn_at else page.profiles
    # The request's exclusions hold for newcomers as for the draw; members stay members.
    excluded = sampler_store.excluded_user_ids(db, sample.request, now, among=newly_changed.index) - sample.member_ids
    considered = newly_changed.drop(index=list(excluded))
    # Joining a sample without an invitation contacts nobody, so the budget holds back nobody there.
    held = (
        over_budget(db, candidates(considered, sample), now, contacts_per_week)
        if sample.request.mailing is not None
        else frozenset()
    )
    placement = place_changed_members(considered, sample, held)
    totals.added += store.add_members(db, sample.sample_id, placement.joining, now)
    store.hold_back(db, sample.sample_id, placement.held_back, now)
    if sample.holds_back:
        store.release_held_back(db, sample.sample_id, placement.joining)
    if sample.holds_back or placement.held_back:
        store.write_held_back_summary(db, sample.sample_id, now)
    store.mark_qualification(db, sample.sample_id, placement.stopped_qualifying, False, now)
    store.mark_qualification(db, sample.sample_id, placement.qualifying_again, True, now)
    invitations.stamp_pending_invitations(db, ObjectId(sample.sample_id), prompt=True)
    totals.no_room += len(placement.no_room)
    totals.excluded += len(excluded)
    totals.stopped += len(placement.stopped_qualifying)
    totals.held_back += len(placement.held_back)
    totals.held_back_by_cell.update(placement.held_back_by_cell)
    return placement


def over_budget(db: Database, newcomers: pd.DataFrame, now: dt.datetime, contacts_per_week: int) -> frozenset[str]:
    """The newcomers with `contacts_per_week` survey contacts or more in the last 7 days, any sample."""
    contacts = recent_contacts(db, [ObjectId(user_id) for user_id in newcomers.index], now)
    return frozenset(str(user_id) for user_id in newcomers.index[contacts >= contacts_per_week])


def per_sample_table(totals: dict[str, SampleTotals]) -> dg.TableMetadataValue:
    return table(
        ["sample", "added", "no room", "excluded", "stopped qualifying", "held back (contact budget)"],
        [(sample_id, t.added, t.no_room, t.excluded, t.stopped, t.held_back) for sample_id, t in totals.items()],
    )


def held_back_table(totals: dict[str, SampleTotals]) -> dg.TableMetadataValue:
    """The newcomers this update held back at the contact budget, per sample and cell."""
    return table(
        ["sample", "target", "category", "held back"],
        [
            (sample_id, target, category, count)
            for sample_id, t in totals.items()
            for (target, category), count in sorted(t.held_back_by_cell.items())
        ],
    )
