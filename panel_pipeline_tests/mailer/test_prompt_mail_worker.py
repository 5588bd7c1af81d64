"""The standing workers under the real daemon: a password e-mail and a new Scottish member's
invitation go out through worker runs (no run per e-mail), and a worker killed mid-window loses
nothing and sends nothing twice: its successor, or the polling backstop, sends what comes next."""

import datetime as dt
import os
import signal
from collections import Counter

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.queue.worker import serving_worker
from panel_pipeline_tests.waiting import run_worker_pid, wait_for

UTC = dt.UTC
SURVEY = {
    "survey_name": "Scotland tracker",
    "duration_minutes": 5,
    "points": 50,
    "survey_url": "https://survey.example/s/1",
}
pytestmark = [pytest.mark.slow, pytest.mark.stack]


def password_email(db, tag: str) -> ObjectId:
    return db.mailings.insert_one(
        {
            "processed": False,
            "created_at": dt.datetime.now(UTC),
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "email": f"reset-{tag}@panel.example",
                    "data": {
                        "first_name": "R",
                        "reset_url": "https://panel.example/reset?token=t",
                        "expires_in_minutes": 60,
                    },
                }
            ],
        }
    ).inserted_id


def sent_by(db, mailing_id) -> str | None:
    """The run that completed the mailing, once it is done and its one recipient was sent."""
    mailing = db.mailings.find_one({"_id": mailing_id, "processed": True, "status": "done"})
    if mailing and db.mail_log.count_documents({"mailing_id": mailing_id, "status": "sent"}) == 1:
        return mailing["run_id"]
    return None


def job_of(dagster_dev, run_id: str) -> str:
    with dagster_dev.instance() as instance:
        return instance.get_run_by_id(run_id).job_name


def test_prompt_mail_goes_through_the_standing_workers(dagster_dev, mongo_client, local_ses):
    db = mongo_client.panel
    worker = wait_for(
        lambda: serving_worker(db, "prompt_mail", dt.datetime.now(UTC)),
        what="a mail worker",
        explain=dagster_dev.activity,
    )
    mailing_id = password_email(db, "worker")
    run_id = wait_for(lambda: sent_by(db, mailing_id), what="the password e-mail sent", explain=dagster_dev.activity)
    assert run_id == worker["owner"] and job_of(dagster_dev, run_id) == "prompt_mail_worker_job"

    # A new member of an open dynamic sample: the updater worker places her, the mail worker invites her.
    now = dt.datetime.now(UTC)
    sample_id = db.samples.insert_one(
        {
            "name": "Scotland tracker (worker test)",
            "survey_id": "1",
            "size": 100,
            "dynamic": True,
            "open": True,
            "filters": {"region": {"$in": ["Scotland"]}},
            "processed": True,
            "status": "done",
            "processed_at": now,
            "drawn_at": now,
            "mailing": {"template": "new_survey", "default_data": SURVEY},
        }
    ).inserted_id
    user_id = db.users.insert_one(
        {
            "email": "morag.worker@panel.example",
            "first_name": "Morag",
            "status": "active",
            "created_at": dt.datetime.now(UTC),
            "profile": {"region": "Scotland", "gender": "female"},
        }
    ).inserted_id
    member = wait_for(
        lambda: db.sample_members.find_one(
            {"sample_id": sample_id, "user_id": user_id, "mailing_id": {"$exists": True}}
        ),
        what="the newcomer placed",
        explain=dagster_dev.activity,
    )
    invitation = member["mailing_id"]
    run_id = wait_for(lambda: sent_by(db, invitation), what="the newcomer's invitation", explain=dagster_dev.activity)
    assert db.mailings.find_one({"_id": invitation})["delivery"] == "prompt"
    assert job_of(dagster_dev, run_id) == "prompt_mail_worker_job"
    with (
        dagster_dev.instance() as instance
    ):  # the invitation is still its `mailings` partition, materialized by the worker
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("mailings"), asset_partitions=[str(invitation)]), limit=1
        ).records
        assert [record.run_id for record in records] == [run_id]
        updates = instance.fetch_materializations(dg.AssetKey("dynamic_sample_updates"), limit=5).records
        assert any(job_of(dagster_dev, record.run_id) == "dynamic_samples_worker_job" for record in updates)


def test_a_killed_worker_loses_nothing_and_sends_nothing_twice(dagster_dev, mongo_client, local_ses):
    db = mongo_client.panel
    worker = wait_for(
        lambda: serving_worker(db, "prompt_mail", dt.datetime.now(UTC)),
        what="a mail worker",
        explain=dagster_dev.activity,
    )
    with dagster_dev.instance() as instance:
        pid = wait_for(lambda: run_worker_pid(instance, worker["owner"]), what="the worker's pid")
    os.kill(pid, signal.SIGKILL)
    mailing_ids = [password_email(db, f"after-kill-{n}") for n in range(5)]  # while nobody serves
    runs = {
        mailing_id: wait_for(lambda m=mailing_id: sent_by(db, m), what="each e-mail sent", explain=dagster_dev.activity)
        for mailing_id in mailing_ids
    }
    assert worker["owner"] not in runs.values()
    sent = Counter(
        row["mailing_id"] for row in db.mail_log.find({"mailing_id": {"$in": mailing_ids}, "status": "sent"})
    )
    assert sent == Counter(dict.fromkeys(mailing_ids, 1))
    addresses = Counter(
        email["destination"]["to"][0] for email in local_ses.emails() if "after-kill" in email["destination"]["to"][0]
    )
    assert addresses == Counter({f"reset-after-kill-{n}@panel.example": 1 for n in range(5)})
    successor = wait_for(
        lambda: (
            (slot := serving_worker(db, "prompt_mail", dt.datetime.now(UTC)))
            and slot["owner"] != worker["owner"]
            and slot
        ),
        what="a new mail worker serving",
        explain=dagster_dev.activity,
    )
    assert job_of(dagster_dev, successor["owner"]) == "prompt_mail_worker_job"
