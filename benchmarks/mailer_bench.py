"""Mailer throughput and transactional latency under the local run (`dagster dev`, the project's
dagster.yaml, as `make run` starts it): a 10,000-recipient bulk mailing with the account's max send
rate at 200/s on the local SES endpoint, and password-recovery e-mails inserted while it runs.

Reports achieved recipients/s as a ratio of the configured rate (target >= 0.95), SendBulkEmail calls
made against the floor ceil(N/50), and insert -> accepted-by-SES latency of the password e-mails
(p50, p95). SES is aws-ses-v2-local behind the project's recording proxy, so every call is counted."""

import argparse
import datetime as dt
import math
import statistics
import tempfile
import time
from pathlib import Path

from bson import ObjectId

from benchmarks import updater_latency
from benchmarks._mongo import throwaway_mongod
from panel_pipeline.local.dagster_dev import DagsterDev
from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.local.sns_sqs import LocalSnsSqs, ensure_feedback_path
from panel_pipeline.local.stack import pipeline_environment
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo

UTC = dt.UTC
RECIPIENTS = 10_000
SEND_RATE = 200.0
SES_BATCH = 50
PASSWORD_EVERY_SECONDS = 2.0
SURVEY = {
    "survey_name": "Winter omnibus",
    "duration_minutes": 12,
    "points": 150,
    "survey_url": "https://survey.example/s/9",
}


def wait_for(predicate, timeout: float = 300.0, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(poll)
    raise TimeoutError("gave up waiting")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def seed_bulk_mailing(db, recipients: int) -> ObjectId:
    """`recipients` active members in a sample, and the mailing that invites them all."""
    now = dt.datetime.now(UTC)
    user_ids = db.users.insert_many(
        [
            {"email": f"member{i}@panel.example", "first_name": f"Member{i}", "status": "active", "created_at": now}
            for i in range(recipients)
        ]
    ).inserted_ids
    sample_id = db.samples.insert_one({"name": "bench", "processed": True, "status": "done"}).inserted_id
    db.sample_members.insert_many(
        [{"sample_id": sample_id, "user_id": uid, "added_at": now, "invited_at": None} for uid in user_ids]
    )
    return db.mailings.insert_one(
        {
            "processed": False,
            "created_at": now,
            "kind": "bulk",
            "template": "new_survey",
            "sample_id": sample_id,
            "default_data": SURVEY,
        }
    ).inserted_id


def insert_password_email(db, number: int, pause: float = 0.0) -> ObjectId:
    time.sleep(pause)
    return db.mailings.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "email": f"reset{number}@panel.example",
                    "data": {
                        "first_name": "R",
                        "reset_url": f"https://panel.example/reset?token=t{number}",
                        "expires_in_minutes": 60,
                    },
                }
            ],
        }
    ).inserted_id


def accepted_after(db, mailing_id: ObjectId) -> float:
    """Seconds from a mailing's insert to SES accepting its e-mail (both stamped on this machine's clock)."""
    row = wait_for(lambda: db.mail_log.find_one({"mailing_id": mailing_id, "status": "sent"}, {"sent_at": 1}))
    return (row["sent_at"] - db.mailings.find_one({"_id": mailing_id})["created_at"]).total_seconds()


# Today's design: polling sensors, one SES batch in flight; the new one: standing workers, two batches.
DESIGNS = {
    "polling": {"PANEL_STANDING_WORKERS": "off", "PANEL_MAIL_CONCURRENT_BATCHES": "1"},
    "workers": {"PANEL_STANDING_WORKERS": "on", "PANEL_MAIL_CONCURRENT_BATCHES": "2"},
}
IDLE_PASSWORDS = 20
SCOTTISH_TRIALS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole comparison this many times")
    parser.add_argument("--recipients", type=int, default=RECIPIENTS)
    parser.add_argument("--design", choices=sorted(DESIGNS), action="append", help="only these (default: both)")
    args = parser.parse_args()
    designs = {name: DESIGNS[name] for name in args.design or DESIGNS}
    figures: dict[str, list[dict[str, float]]] = {design: [] for design in designs}
    for run in range(1, args.runs + 1):
        for design, settings in designs.items():
            print(f"\n--- run {run}, {design} ---", flush=True)
            figures[design].append(measure(settings, args.recipients))
    summarize(figures)


def measure(design: dict[str, str], recipients: int) -> dict[str, float]:
    """One design on a fresh stack: passwords with no bulk running, the bulk with passwords during it,
    then new Scottish members of an open dynamic sample; returns the headline figures."""
    with (
        throwaway_mongod() as (client, uri),
        LocalSesServer(port=free_port(), max_send_rate=SEND_RATE) as ses,
        LocalSurveyGizmo() as sg,
        LocalSnsSqs(port=free_port()) as sns_sqs,
        tempfile.TemporaryDirectory(prefix="panel-dagster-") as home,
    ):
        ensure_feedback_path(sns_sqs.url)
        proxy = SesFaultProxy(ses.url)
        proxy.start()
        db = client.panel
        environment = pipeline_environment(uri, proxy.url, sg.base_url, sns_sqs.url) | design
        server = DagsterDev(Path(home), environment)
        server.start()
        try:
            accepted_after(db, insert_password_email(db, 0))  # warm-up: template sync, first imports
            idle = [insert_password_email(db, 1000 + n, pause=PASSWORD_EVERY_SECONDS) for n in range(IDLE_PASSWORDS)]
            idle_latencies = [accepted_after(db, mailing_id) for mailing_id in idle]
            bulk_id = seed_bulk_mailing(db, recipients)
            inserted = time.monotonic()
            passwords = []
            while not db.mailings.find_one({"_id": bulk_id, "processed": True}, {"_id": 1}):
                passwords.append(insert_password_email(db, len(passwords) + 1))
                time.sleep(PASSWORD_EVERY_SECONDS)
            done = time.monotonic()
            latencies = [accepted_after(db, mailing_id) for mailing_id in passwords]
            scottish = scottish_newcomers(db)
            with server.instance() as instance:
                stages = [stage_times(instance, db, mailing_id) for mailing_id in passwords]
        finally:
            server.stop()
            proxy.stop()
        achieved = report(db, bulk_id, proxy, latencies, done - inserted, recipients)
        print(
            f"password-recovery e-mails with no bulk running, one every {PASSWORD_EVERY_SECONDS:.0f} s: "
            f"p50 {percentile(idle_latencies, 0.5):.2f} s, p95 {percentile(idle_latencies, 0.95):.2f} s"
        )
        report_stages(stages)
        report_batches(db, bulk_id)
        print(
            f"new Scottish member -> invitation accepted by SES ({len(scottish)} trials): "
            f"p50 {percentile(scottish, 0.5):.2f} s, p95 {percentile(scottish, 0.95):.2f} s"
        )
    return {
        "bulk ratio": achieved / SEND_RATE,
        "password p50 during bulk (s)": percentile(latencies, 0.5),
        "password p95 during bulk (s)": percentile(latencies, 0.95),
        "password p50 idle (s)": percentile(idle_latencies, 0.5),
        "password p95 idle (s)": percentile(idle_latencies, 0.95),
        "newcomer p50 (s)": percentile(scottish, 0.5),
        "newcomer p95 (s)": percentile(scottish, 0.95),
    }


def scottish_newcomers(db) -> list[float]:
    """Insert -> invitation accepted by SES for new members of an open `region = Scotland` dynamic sample."""
    updater_latency.open_scotland_sample(db)
    updater_latency.trial(db, 0)  # warm-up
    return [updater_latency.trial(db, number)["total"] for number in range(1, SCOTTISH_TRIALS + 1)]


def summarize(figures: dict[str, list[dict[str, float]]]) -> None:
    """Each figure per design: every run's value, and the spread (min-max) across runs."""
    print("\n=== summary (each run's figure; spread = max - min) ===")
    names = list(next(iter(figures.values()))[0])
    for name in names:
        cells = []
        for design, runs in figures.items():
            values = [run[name] for run in runs]
            cells.append(f"{design}: {' / '.join(f'{v:.3g}' for v in values)} (spread {max(values) - min(values):.3g})")
        print(f"{name:<32} " + "; ".join(cells))
    ratios = {name: [w[name] / p[name] for p, w in zip(*figures.values(), strict=True)] for name in names}
    print(
        "standing workers / polling, per run: "
        + "; ".join(f"{n} {' / '.join(f'{r:.2f}' for r in v)}" for n, v in ratios.items())
    )


def report(
    db, bulk_id: ObjectId, proxy: SesFaultProxy, latencies: list[float], insert_to_done: float, recipients: int
) -> float:
    rows = list(db.mail_log.find({"mailing_id": bulk_id}, {"status": 1, "attempt_started_at": 1, "sent_at": 1}))
    sent = [row for row in rows if row["status"] == "sent"]
    first_attempt = min(row["attempt_started_at"] for row in sent)
    bulk = db.mailings.find_one({"_id": bulk_id})
    last_sent = max(row["sent_at"] for row in sent)
    sending_seconds = (last_sent - first_attempt).total_seconds()
    # The first batch goes at once (the bucket starts full), so the rate counts the recipients after it.
    achieved = (len(sent) - SES_BATCH) / sending_seconds
    bulk_calls = sum(
        1 for call in proxy.calls() if call.request.get("DefaultEmailTags") and _tag(call, "mailing") == str(bulk_id)
    )
    floor = math.ceil(recipients / SES_BATCH)
    print(
        f"bulk mailing: {len(sent):,} of {recipients:,} sent; insert -> done {insert_to_done:.1f} s "
        f"(insert -> first SES call {(first_attempt - bulk['created_at']).total_seconds():.1f} s, "
        f"sending {sending_seconds:.1f} s)"
    )
    print(
        f"achieved {achieved:.1f} recipients/s of the configured {SEND_RATE:.0f}/s: "
        f"ratio {achieved / SEND_RATE:.3f} (target >= 0.95)"
    )
    print(f"SendBulkEmail calls: {bulk_calls} (floor ceil(N/50) = {floor}; ratio {bulk_calls / floor:.2f})")
    print(
        f"password-recovery e-mails inserted every {PASSWORD_EVERY_SECONDS:.0f} s during the bulk send: "
        f"{len(latencies)}; insert -> accepted by SES "
        f"p50 {percentile(latencies, 0.5):.1f} s, p95 {percentile(latencies, 0.95):.1f} s, max {max(latencies):.1f} s, "
        f"mean {statistics.mean(latencies):.1f} s"
    )
    return achieved


STAGES = (
    "sensor saw it, run created",
    "run dequeued",
    "run process up, code loaded",
    "step started",
    "mailing claimed",
    "SES call made",
    "SES accepted",
)


def stage_times(instance, db, mailing_id: ObjectId) -> dict[str, float]:
    """Seconds from the insert to each stage of the run that sent the e-mail (Dagster's own event times)."""
    import dagster as dg

    mailing = db.mailings.find_one({"_id": mailing_id})
    row = db.mail_log.find_one({"mailing_id": mailing_id, "status": "sent"})
    inserted = mailing["created_at"].timestamp()
    run = instance.get_run_record_by_id(mailing["run_id"])
    events = {
        record.event_log_entry.dagster_event_type: record.event_log_entry.timestamp
        for record in instance.get_records_for_run(mailing["run_id"], limit=200).records
        if record.event_log_entry.dagster_event_type
        in (dg.DagsterEventType.RUN_STARTING, dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START)
    }
    moments = [
        run.create_timestamp.timestamp(),
        events.get(dg.DagsterEventType.RUN_STARTING),
        events.get(dg.DagsterEventType.RUN_START),
        events.get(dg.DagsterEventType.STEP_START),
        mailing["claimed_at"].timestamp(),
        row["attempt_started_at"].timestamp(),
        row["sent_at"].timestamp(),
    ]
    # A standing worker's run started before the insert: only the stages after it count.
    return {
        stage: moment - inserted
        for stage, moment in zip(STAGES, moments, strict=True)
        if moment is not None and moment >= inserted
    }


def report_stages(stages: list[dict[str, float]]) -> None:
    print("where a password e-mail's time goes (seconds after its insert; p50 / p95):")
    for stage in STAGES:
        values = [s[stage] for s in stages if stage in s]
        if values:
            print(f"  {stage:<30} {percentile(values, 0.5):6.2f} / {percentile(values, 0.95):6.2f}")


def report_batches(db, bulk_id: ObjectId) -> None:
    """Where the bulk's time goes, batch by batch: the SES call, and the gap until the next batch's call."""
    batches = list(
        db.mail_log.aggregate(
            [
                {"$match": {"mailing_id": bulk_id, "status": "sent"}},
                {"$group": {"_id": "$batch_id", "start": {"$min": "$attempt_started_at"}, "end": {"$max": "$sent_at"}}},
                {"$sort": {"start": 1}},
            ]
        )
    )
    calls = [(b["end"] - b["start"]).total_seconds() for b in batches]
    pairs = list(zip(batches, batches[1:], strict=False))
    gaps = [(later["start"] - earlier["end"]).total_seconds() for earlier, later in pairs]
    periods = [(later["start"] - earlier["start"]).total_seconds() for earlier, later in pairs]
    ideal = SES_BATCH / SEND_RATE
    late = [p - ideal for p in periods if p > ideal * 1.02]
    print(
        f"bulk batches: {len(batches)}; period p50 {percentile(periods, 0.5):.3f} s "
        f"p95 {percentile(periods, 0.95):.3f} s "
        f"max {max(periods):.3f} s (ideal {ideal:.3f}); SES call p50 {percentile(calls, 0.5):.3f} s "
        f"p95 {percentile(calls, 0.95):.3f} s; call end -> next call p50 {percentile(gaps, 0.5):.3f} s "
        f"p95 {percentile(gaps, 0.95):.3f} s; {len(late)} batches late, {sum(late):.1f} s lost in all"
    )


def _tag(call, name: str) -> str | None:
    return next((tag["Value"] for tag in call.request.get("DefaultEmailTags", []) if tag["Name"] == name), None)


if __name__ == "__main__":
    main()
