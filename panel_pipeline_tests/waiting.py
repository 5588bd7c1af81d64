"""Small helpers shared by the tests that drive a real daemon: a test waits for what it asserts.

A queue document is written `processed: true` inside its run, before the run itself ends, so a test
that asserts a run's status waits for the run to finish first (`finished_runs`)."""

import time
from collections.abc import Callable
from typing import TypeVar

import dagster as dg

T = TypeVar("T")


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


def finished_runs(dagster_dev, what: str, timeout: float = 180.0, **filters) -> list[dg.DagsterRun]:
    """Wait until at least one run matches `filters` (`dg.RunsFilter` fields: run_ids, job_name,
    created_after, tags...) and every run that does has finished (success, failure or cancelled);
    return them, newest first."""
    wanted = dg.RunsFilter(**filters)
    expected = len(set(filters.get("run_ids") or ())) or 1

    def all_finished() -> list[dg.DagsterRun] | None:
        runs = instance.get_runs(filters=wanted)
        return runs if len(runs) >= expected and all(run.is_finished for run in runs) else None

    with dagster_dev.instance() as instance:
        return wait_for(all_finished, timeout=timeout, what=f"{what}: runs finished", explain=dagster_dev.activity)


def statuses(runs: list[dg.DagsterRun]) -> dict[str, dg.DagsterRunStatus]:
    return {run.run_id: run.status for run in runs}


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process executing the run's step (queue jobs run in-process)."""
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type_value == "STEP_START" and event.pid:
            return int(event.pid)
    return None
