"""Latency under the local run: a new Scottish member inserted -> added to the open dynamic
`region = Scotland` sample -> invitation accepted by the local SES endpoint; p50 and p95 over 20
trials, with where the time goes. A real daemon (`dagster dev`, as `make run` starts it)."""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg

from benchmarks._mongo import throwaway_mongod
from panel_pipeline.local.dagster_dev import DagsterDev
from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.local.sns_sqs import LocalSnsSqs, ensure_feedback_path
from panel_pipeline.local.stack import pipeline_environment
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo

UTC = dt.UTC
TRIALS = 20
SURVEY = {
    "survey_name": "Scotland tracker",
    "duration_minutes": 5,
    "points": 50,
    "survey_url": "https://survey.example/s/1",
}


def wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise TimeoutError("gave up waiting")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def open_scotland_sample(db) -> None:
    """The open dynamic `region = Scotland` sample new members join, with its invitation."""
    db.samples.insert_one(
        {
            "name": "Scotland tracker",
            "survey_id": "1",
            "size": 10_000,
            "dynamic": True,
            "open": True,
            "filters": {"region": {"$in": ["Scotland"]}},
            "processed": True,
            "status": "done",
            "processed_at": dt.datetime.now(UTC),
            "drawn_at": dt.datetime.now(UTC),
            "mailing": {"template": "new_survey", "default_data": SURVEY},
        }
    )


def trial(db, number: int) -> dict[str, float]:
    inserted = dt.datetime.now(UTC)
    user_id = db.users.insert_one(
        {
            "email": f"scot{number}@panel.example",
            "first_name": "Morag",
            "status": "active",
            "created_at": inserted,
            "profile": {"region": "Scotland", "gender": "female"},
        }
    ).inserted_id
    member = wait_for(lambda: db.sample_members.find_one({"user_id": user_id, "mailing_id": {"$exists": True}}))
    mailing = wait_for(lambda: db.mailings.find_one({"_id": member["mailing_id"]}))
    sent = wait_for(lambda: db.mail_log.find_one({"user_id": user_id, "status": "sent"}))
    return {
        "total": (sent["sent_at"] - inserted).total_seconds(),
        "insert -> member added": (member["added_at"] - inserted).total_seconds(),
        "member added -> mailing queued": (mailing["created_at"] - member["added_at"]).total_seconds(),
        "mailing queued -> SES accepted": (sent["sent_at"] - mailing["created_at"]).total_seconds(),
    }


def run_phases(instance: dg.DagsterInstance, job_name: str) -> dict[str, float]:
    """Median queued -> started -> finished of a job's successful runs (Dagster's own timestamps)."""
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.SUCCESS]))
    launch = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    work = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    return {"create -> start": statistics.median(launch), "start -> end": statistics.median(work)}


def main() -> None:
    with (
        throwaway_mongod() as (client, uri),
        LocalSesServer(port=free_port(), max_send_rate=200.0) as ses,
        LocalSurveyGizmo() as sg,
        LocalSnsSqs(port=free_port()) as sns_sqs,
    ):
        ensure_feedback_path(sns_sqs.url)
        db = client.panel
        open_scotland_sample(db)
        with tempfile.TemporaryDirectory(prefix="panel-dagster-") as home:
            server = DagsterDev(Path(home), pipeline_environment(uri, ses.url, sg.base_url, sns_sqs.url))
            server.start()
            try:
                trial(db, 0)  # warm-up: template sync, first imports
                results = [trial(db, number) for number in range(1, TRIALS + 1)]
                with server.instance() as instance:
                    phases = {job: run_phases(instance, job) for job in ("dynamic_sample_updates_job", "mailing_job")}
            finally:
                server.stop()
    for name in results[0]:
        values = [r[name] for r in results]
        print(f"{name:<32} p50 {percentile(values, 0.5):5.1f} s   p95 {percentile(values, 0.95):5.1f} s")
    for job, values in phases.items():
        print(
            f"{job:<32} run queued -> started {values['create -> start']:.1f} s, "
            f"started -> finished {values['start -> end']:.1f} s (medians)"
        )


if __name__ == "__main__":
    main()
