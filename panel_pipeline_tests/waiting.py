"""Small helpers shared by the tests that drive a real daemon: a test waits for what it asserts.

A queue document is written `processed: true` inside its run, before the run itself ends, so a test
that asserts a run's status waits for the run to finish first (`finished_runs`)."""

import datetime as dt
import time
from collections.abc import Callable
from typing import TypeVar

import dagster as dg

from panel_pipeline.local.ses_events import FeedbackShares
from panel_pipeline.mailer.feedback import MAX_SECONDS_PER_DRAIN
from panel_pipeline.queue.sensors import WORKER_TAG

T = TypeVar("T")
# What the daemon tests' SES endpoint publishes: Send, Bounce and Complaint events, no Delivery events.
# Delivery events would double the feed's work on the 2 shared cores, and none of these tests reads them
# (test_feedback_sqs's report test does, on its own proxy).
DAEMON_FEEDBACK = FeedbackShares(delivery=0.0)


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 180.0,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll until `predicate` returns something truthy, and return it; on timeout, fail with what
    `explain` says of the state of things (e.g. the daemon's latest runs and sensor ticks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{explain()}" if explain else ""))


def serving(run: dg.DagsterRun) -> bool:
    """A standing worker's run still in its window (it ends by itself, minutes later)."""
    return WORKER_TAG in run.tags and run.status == dg.DagsterRunStatus.STARTED


def finished_runs(dagster_dev, what: str, timeout: float = 180.0, **filters) -> list[dg.DagsterRun]:
    """Wait until at least one run matches `filters` (`dg.RunsFilter` fields: run_ids, job_name,
    created_after, tags...) and every run that does has finished (success, failure or cancelled),
    or is a standing worker still serving; return them, newest first."""
    wanted = dg.RunsFilter(**filters)
    expected = len(set(filters.get("run_ids") or ())) or 1

    def all_finished() -> list[dg.DagsterRun] | None:
        runs = instance.get_runs(filters=wanted)
        return runs if len(runs) >= expected and all(run.is_finished or serving(run) for run in runs) else None

    with dagster_dev.instance() as instance:
        return wait_for(all_finished, timeout=timeout, what=f"{what}: runs finished", explain=dagster_dev.activity)


def feedback_runs_since(dagster_dev, since: dt.datetime) -> list[dg.DagsterRun]:
    """The ses_feedback runs that may have applied what SES published after `since`, once finished: a
    run may have started before then, draining what earlier tests left (a drain lasts at most
    MAX_SECONDS_PER_DRAIN)."""
    started_by = since - dt.timedelta(seconds=MAX_SECONDS_PER_DRAIN + 30)
    return finished_runs(dagster_dev, "the feedback runs", job_name="ses_feedback_job", created_after=started_by)


def statuses(runs: list[dg.DagsterRun]) -> dict[str, dg.DagsterRunStatus]:
    """Each run's status, a serving standing worker's counted as SUCCESS (nothing has failed in it)."""
    return {run.run_id: dg.DagsterRunStatus.SUCCESS if serving(run) else run.status for run in runs}


def materialized_since(dagster_dev, asset: str, since: float, what: str) -> list[dg.DagsterRun]:
    """Wait for a materialization of `asset` recorded after `since` (epoch seconds) and for the runs
    that recorded them to finish (or to be standing workers still serving); return those runs."""
    with dagster_dev.instance() as instance:

        def recorded() -> list[str]:
            records = instance.fetch_materializations(dg.AssetKey(asset), limit=20).records
            return sorted({record.run_id for record in records if record.timestamp >= since})

        run_ids = wait_for(recorded, what=f"{what}: {asset} materialized", explain=dagster_dev.activity)
    return finished_runs(dagster_dev, what, run_ids=run_ids)


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process executing the run's step (queue jobs run in-process)."""
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type_value == "STEP_START" and event.pid:
            return int(event.pid)
    return None
