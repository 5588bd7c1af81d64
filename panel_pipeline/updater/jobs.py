"""The Updater's jobs: one run brings every open dynamic sample up to date with the changed members;
the standing worker does the same within about a second of each change, for a window at a time."""

import dagster as dg

from panel_pipeline.queue.worker import Doorbell, WorkerSlot, serve
from panel_pipeline.shared.contract import PIPELINE_STATE, USERS
from panel_pipeline.shared.resources import ContactBudget, MongoResource
from panel_pipeline.updater import store
from panel_pipeline.updater.assets import (
    DYNAMIC_SAMPLES_DUTY,
    dynamic_sample_updates,
    update_dynamic_samples,
)

dynamic_sample_updates_job = dg.define_asset_job(
    "dynamic_sample_updates_job",
    selection=dg.AssetSelection.assets(dynamic_sample_updates),
    executor_def=dg.in_process_executor,
    tags={"panel/part": "updater"},
)

MEMBER_WRITES = [{"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}]


class WorkerWindow(dg.Config):
    serve_seconds: float = 600.0


@dg.op(tags={"panel/part": "dynamic_samples_worker"})
def serve_dynamic_samples(
    context: dg.OpExecutionContext, config: WorkerWindow, mongo: MongoResource, contact_budget: ContactBudget
) -> None:
    """The standing updater worker: for `serve_seconds`, brings the open dynamic samples up to date
    whenever a member joins or changes (woken by a change stream on `users`), so a newcomer's
    invitation is queued within about a second. Each update is a materialization of
    `dynamic_sample_updates` in this run; it holds the updater's slot, so no other update runs meanwhile."""
    db = mongo.db()
    slot = WorkerSlot(db[PIPELINE_STATE], DYNAMIC_SAMPLES_DUTY, context.run.run_id)

    def step() -> int:
        if store.unseen_change(db) is None:
            return 0
        report = update_dynamic_samples(db, contact_budget.contacts_per_week, keep_alive=slot.renew)
        context.log_event(dg.AssetMaterialization(asset_key="dynamic_sample_updates", metadata=report.metadata()))
        return report.changed

    report = serve(slot, step, Doorbell(db[USERS], MEMBER_WRITES), config.serve_seconds)
    (context.log.warning if report.lost_slot else context.log.info)(f"served: {report.summary()} (changed members)")


@dg.job(executor_def=dg.in_process_executor, tags={"panel/part": "dynamic_samples_worker"})
def dynamic_samples_worker_job() -> None:
    """A standing worker for the dynamic samples, kept running by dynamic_samples_worker_sensor."""
    serve_dynamic_samples()
