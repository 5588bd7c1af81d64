"""The circuit breaker's cost and reach: a 10,000-recipient bulk mailing sent by the Mailer's dispatch
loop through the local SES endpoint (aws-ses-v2-local behind the project's proxy) at 200 recipients/s,
with SES's events (Send, Delivery, Bounce) taking production's path: the proxy publishes them to SNS
(the local SNS/SQS server), and a feed in a process of its own drains the subscribed SQS queue with the
ses_feedback runs' own `drain` (up to 100 messages stored once in one transaction, counted in the
mailing's report, the member bounced).

1. Throughput (recipients/s) with the report and the breakers on (the feed storing and counting every
   event, the account read, the mailing's last 1,000 sends judged after each batch), as a ratio to the
   same mailing with them off (the events published all the same, as SES does, but nobody drains
   them: the lease renewal alone). Target >= 0.97.
2. Reach: the same mailing with 6% of its recipients bouncing. A watcher notes the SES calls made by
   the moment the stored events first pass 4% over the last 1,000 sends; the figure is the calls made
   after that until the dispatch loop stopped for the pause. Target <= 2 batches.

Each run measures off, on, on, off and takes the ratio of the sums; `--load` keeps one core busy
throughout (a busy loop), as another tenant of shared cores would.

`python -m benchmarks.breaker_bench [--runs 3] [--recipients N] [--load]`
"""

import argparse
import contextlib
import math
import multiprocessing
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import boto3
import pymongo
from bson import ObjectId

from benchmarks._mongo import throwaway_mongod
from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.ses_events import NO_FEEDBACK, FeedbackShares, SnsEventPublisher
from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.local.sns_sqs import LocalSnsSqs, aws_client, ensure_feedback_path
from panel_pipeline.mailer.breaker import AccountMonitor, BreakerPolicy, MailingBreaker, guarded, mailing_trip_reason
from panel_pipeline.mailer.control import hold
from panel_pipeline.mailer.dispatch import MailingRecipient, plan_recipients, send_mailing
from panel_pipeline.mailer.feedback import FeedbackStore, drain
from panel_pipeline.mailer.ses import SesGateway
from panel_pipeline.mailer.sqs import SqsQueue
from panel_pipeline.mailer.store import MailingControls, MailingReports, MailLedger
from panel_pipeline.queue.store import QueuePolicy, WorkQueue
from panel_pipeline.shared.templates import load_templates

RECIPIENTS = 10_000
SEND_RATE = 200.0
POLICY = BreakerPolicy()
OWNER = "bench-run"


def feed(mongo_uri: str, database: str, sns_sqs_url: str, stop: Any) -> None:
    """The ses_feedback runs' work in a process of its own: drain the queue until `stop` is set, then
    what is left."""
    with pymongo.MongoClient(mongo_uri, tz_aware=True) as client:
        db = client[database]
        store = FeedbackStore(db.mail_events, db.users, MailingReports(db.mailings, db.mail_log, db.mail_events))
        store.ensure_indexes()
        path = ensure_feedback_path(sns_sqs_url)
        queue = SqsQueue(aws_client("sqs", sns_sqs_url), path.queue_url, wait_seconds=1, topic_arn=path.topic_arn)
        while not stop.is_set():
            drain(queue, store)
        drain(queue, store)


def new_mailing(db, ledger: MailLedger, gateway: SesGateway, recipients: int) -> tuple[ObjectId, str, WorkQueue]:
    template = load_templates()["new_survey"]
    mailing_id = db.mailings.insert_one({"processed": False, "kind": "bulk", "template": "new_survey"}).inserted_id
    queue = WorkQueue(db.mailings, QueuePolicy(lease_seconds=300))
    queue.claim(mailing_id, OWNER)
    shared = {key: template.example_data[key] for key in ("survey_name", "duration_minutes", "points", "survey_url")}
    members = [
        MailingRecipient(f"member{i}@panel.example", {"first_name": f"M{i}"}, user_id=ObjectId())
        for i in range(recipients)
    ]
    ledger.add_recipients(mailing_id, plan_recipients(template, members, shared, bulk=True))
    return mailing_id, gateway.ensure_template(template), queue


def link(user_id: str) -> str:
    return f"https://panel.example/unsubscribe?user={user_id}&token=t"


class Stack:
    """mongod, the local SES endpoint and its proxy publishing every call's events to the local SNS
    topic whose SQS queue the feed drains."""

    def __enter__(self) -> "Stack":
        with contextlib.ExitStack() as started:  # a part that fails to start stops those before it
            self.client, self.mongo_uri = started.enter_context(throwaway_mongod())
            ses = LocalSesServer(port=free_port(), max_send_rate=SEND_RATE)
            ses.start()
            started.callback(ses.stop)
            self.sns_sqs = LocalSnsSqs(port=free_port())
            self.sns_sqs.start()
            started.callback(self.sns_sqs.stop)
            publisher = SnsEventPublisher(self.sns_sqs.url, ensure_feedback_path(self.sns_sqs.url).topic_arn)
            started.callback(publisher.close)
            self.proxy = SesFaultProxy(ses.url, publish=publisher)
            self.proxy.start()
            started.callback(self.proxy.stop)
            self._running = started.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.close()

    def gateway(self) -> SesGateway:
        session = boto3.session.Session(aws_access_key_id="l", aws_secret_access_key="l", region_name="eu-west-2")
        return SesGateway(session, from_address="Panel <panel@example.org>", endpoint_url=self.proxy.url)


def measure(recipients: int, breaker_on: bool, bounce: float) -> dict[str, float]:
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    with Stack() as stack:
        db = stack.client[f"bench_{int(time.time())}"]
        ledger = MailLedger(db.mail_log, db.mail_events)
        ledger.ensure_indexes()
        reports = MailingReports(db.mailings, db.mail_log, db.mail_events)
        reports.ensure_indexes()
        gateway = stack.gateway()
        mailing_id, template_name, queue = new_mailing(db, ledger, gateway, recipients)
        stack.proxy.set_feedback(FeedbackShares(bounce=bounce) if bounce else NO_FEEDBACK)
        keep_alive = partial(hold, queue, mailing_id, OWNER)
        feeder = None
        if breaker_on:
            mailing = db.mailings.find_one({"_id": mailing_id})
            breaker = MailingBreaker(reports, MailingControls(db.mailings), mailing, POLICY)
            keep_alive = guarded(keep_alive, AccountMonitor(gateway.account, None, POLICY), breaker)
            feeder = spawn.Process(target=feed, args=(stack.mongo_uri, db.name, stack.sns_sqs.url, stop))
            feeder.start()
        crossed: dict[str, int] = {}
        watching = threading.Event()
        watcher = threading.Thread(target=watch, args=(reports, mailing_id, stack.proxy, crossed, watching))
        if bounce:
            watcher.start()
        started = time.monotonic()
        report = send_mailing(
            ledger, gateway, mailing_id, template_name, OWNER, keep_alive=keep_alive, unsubscribe_link=link
        )
        elapsed = time.monotonic() - started
        calls_at_stop = len(stack.proxy.calls())
        watching.set()
        if bounce:
            watcher.join()
        if feeder is not None:
            stop.set()
            feeder.join(timeout=300)
        sent = report.outcomes["sent"]
        figures = {"sent": float(sent), "seconds": elapsed, "rate": sent / elapsed}
        if bounce:
            figures["paused"] = float(report.stopped_for == "pause")
            # The watcher must have seen the mark passed: a run where it did not measured no reach.
            figures["batches_after_crossing"] = float(calls_at_stop - crossed["calls"]) if crossed else float("nan")
        return figures


def watch(reports: MailingReports, mailing_id: ObjectId, proxy: SesFaultProxy, crossed: dict, done) -> None:
    """Note the SES calls made when the stored events first pass the mark (the calls counted before
    the read, so a pass seen late is charged to the breaker, not forgiven). It looks once more after
    the sending stopped, so a mark the breaker saw first is still noted."""
    while True:
        stopped = done.is_set()
        calls = len(proxy.calls())
        if mailing_trip_reason(reports.recent_feedback(mailing_id, POLICY.window_sends), POLICY):
            crossed["calls"] = calls
            return
        if stopped:
            return
        time.sleep(0.02)


def spread(values: list[float]) -> str:
    measured = [value for value in values if not math.isnan(value)]
    unmeasured = f"; {len(values) - len(measured)} runs not measured" if len(measured) < len(values) else ""
    if not measured:
        return f"not measured{unmeasured}"
    return f"median {statistics.median(measured):.3f} (min {min(measured):.3f}, max {max(measured):.3f}){unmeasured}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recipients", type=int, default=RECIPIENTS)
    parser.add_argument("--load", action="store_true", help="hold one of the cores with a busy loop throughout")
    args = parser.parse_args()
    ratios, batches = [], []
    with busy_core() if args.load else contextlib.nullcontext():
        for run in range(1, args.runs + 1):
            # off, on, on, off: the machine's speed drifts over minutes on shared cores, and this
            # order cancels a steady drift from the ratio
            off_first = measure(args.recipients, breaker_on=False, bounce=0.0)
            on = [measure(args.recipients, breaker_on=True, bounce=0.0) for _ in range(2)]
            off_last = measure(args.recipients, breaker_on=False, bounce=0.0)
            tripped = measure(args.recipients, breaker_on=True, bounce=0.06)
            off_rates, on_rates = [off_first["rate"], off_last["rate"]], [figures["rate"] for figures in on]
            ratios.append(sum(on_rates) / sum(off_rates))
            batches.append(tripped["batches_after_crossing"])
            print(
                f"run {run}: off {' / '.join(f'{rate:.1f}' for rate in off_rates)}/s, "
                f"on {' / '.join(f'{rate:.1f}' for rate in on_rates)}/s, ratio {ratios[-1]:.3f}; "
                f"6% bounces: paused={bool(tripped['paused'])} after {tripped['sent']:.0f} sent, "
                f"{tripped['batches_after_crossing']:.0f} SES calls after the mark was passed",
                flush=True,
            )
    print(f"\nthroughput with the report and breakers / without (target >= 0.97): {spread(ratios)}")
    print(f"SES calls from the mark passed to the pause (target <= 2): {spread(batches)}")


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """Another tenant of the shared cores: a process that keeps one of them busy."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


if __name__ == "__main__":
    main()
