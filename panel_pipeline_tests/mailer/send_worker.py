"""A mail worker in a process of its own, for the SIGKILL test: it sends one mailing until it is
done, has nothing claimable, or is killed. `python -m panel_pipeline_tests.mailer.send_worker ...`"""

import argparse
import datetime as dt
import os

import boto3
import pymongo
from bson import ObjectId

from panel_pipeline.mailer.dispatch import DispatchPolicy, send_mailing
from panel_pipeline.mailer.ses import SesGateway
from panel_pipeline.mailer.store import MailLedger


def main() -> None:
    parser = argparse.ArgumentParser()
    for option in (
        "--mongo-uri",
        "--database",
        "--mailing",
        "--template",
        "--ses-url",
        "--from-address",
        "--configuration-set",
    ):
        parser.add_argument(option, required=True)
    parser.add_argument("--max-send-rate", type=float, required=True)
    parser.add_argument("--lease-seconds", type=float, required=True)
    parser.add_argument("--event-silence-seconds", type=float, required=True)
    args = parser.parse_args()
    session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="eu-west-2")
    gateway = SesGateway(
        session,
        from_address=args.from_address,
        configuration_set=args.configuration_set,
        endpoint_url=args.ses_url,
        max_send_rate=args.max_send_rate,
        template_calls_per_second=50.0,
    )
    policy = DispatchPolicy(
        lease_seconds=args.lease_seconds,
        backoff_base_seconds=0.05,
        backoff_cap_seconds=0.2,
        max_wait_seconds=5,
        event_silence=dt.timedelta(seconds=args.event_silence_seconds),
    )
    with pymongo.MongoClient(args.mongo_uri, tz_aware=True) as client:
        db = client[args.database]
        ledger = MailLedger(db.mail_log, db.mail_events)
        send_mailing(
            ledger,
            gateway,
            ObjectId(args.mailing),
            args.template,
            owner=f"worker-{os.getpid()}",
            policy=policy,
            unsubscribe_link=lambda user_id: f"https://panel.example.org/unsubscribe?u={user_id}&sig=SECRET",
        )


if __name__ == "__main__":
    main()
