"""Cancel, pause and resume: the mailings asset over real HTTP to the local SES endpoint, the control
job and sensor in process, on a real mongod."""

import threading
from collections import Counter

import dagster as dg
import pytest

from panel_pipeline.mailer.assets import mailings
from panel_pipeline.mailer.jobs import mailing_control_job
from panel_pipeline.mailer.resources import SesResource
from panel_pipeline.mailer.sensors import (
    mailing_control_sensor,
    mailings_queue_sensor,
    transactional_mail_queue_sensor,
)
from panel_pipeline_tests.mailer.conftest import SURVEY
from panel_pipeline_tests.mailer.test_assets import send_transactional
from panel_pipeline_tests.waiting import wait_for

SEND_RATE = 25  # recipients a second: one batch of 25 a second, so a control lands mid-send
CONTROL_OP = "apply_mailing_control"


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def paced(resources):
    """The mailer's resources with SES paced to SEND_RATE."""
    return {**resources, "ses": SesResource(**{**resources["ses"].model_dump(), "max_send_rate": SEND_RATE})}


def members(db, count):
    return db.users.insert_many(
        [{"email": f"member{i}@panel.example", "first_name": f"M{i}", "status": "active"} for i in range(count)]
    ).inserted_ids


def bulk_mailing(db, user_ids, **fields):
    return db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [{"user_id": uid} for uid in user_ids],
            **fields,
        }
    ).inserted_id


def send(instance, resources, mailing_id):
    key = str(mailing_id)
    instance.add_dynamic_partitions("mailings", [key])
    return dg.materialize([mailings], partition_key=key, instance=instance, resources=resources, raise_on_error=False)


def control(instance, mongo, **config):
    """A run of mailing_control_job, as the Launchpad or the sensor starts it."""
    return mailing_control_job.execute_in_process(
        run_config={"ops": {CONTROL_OP: {"config": config}}},
        resources={"mongo": mongo},
        instance=instance,
        raise_on_error=False,
    )


def refusal(result):
    assert not result.success
    return result.failure_data_for_node(CONTROL_OP).user_failure_data.description


def tick(sensor, instance, mongo):
    return sensor(dg.build_sensor_context(instance=instance, resources={"mongo": mongo}))


def rows(db, mailing_id):
    counted = Counter(row["status"] for row in db.mail_log.find({"mailing_id": mailing_id}))
    return dict(counted)


def deliveries(local_ses):
    return Counter(address for email in local_ses.emails() for address in email["destination"]["to"])


def when_sent(db, mailing_id, then):
    """A thread that waits for the mailing's first sent row, then calls `then` (what the backend or an
    operator does mid-send), keeping how many rows were sent at that moment."""
    seen = {}

    def watch():
        wait_for(lambda: db.mail_log.count_documents({"mailing_id": mailing_id, "status": "sent"}), 60, "a sent row")
        seen["sent"] = db.mail_log.count_documents({"mailing_id": mailing_id, "status": "sent"})
        seen["result"] = then()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, seen


def test_a_cancel_set_mid_send_stops_within_one_batch_and_leaves_the_rest_cancelled(
    instance, paced, mongo_db, local_ses
):
    mailing_id = bulk_mailing(mongo_db, members(mongo_db, 200))
    thread, seen = when_sent(
        mongo_db,
        mailing_id,
        lambda: mongo_db.mailings.update_one(
            {"_id": mailing_id}, {"$set": {"control": "cancel", "control_by": "backend", "control_reason": "typo"}}
        ),
    )
    result = send(instance, paced, mailing_id)
    thread.join()
    assert result.success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    sent = doc["counts"]["sent"]
    # Each of the two senders finishes at most the batch it is in once the control is written.
    assert seen["sent"] <= sent <= seen["sent"] + 2 * SEND_RATE < 200
    assert (doc["processed"], doc["status"]) == (True, "cancelled") and "control" not in doc
    assert rows(mongo_db, mailing_id) == {"sent": sent, "cancelled": 200 - sent}
    assert doc["last_control"]["outcome"] == f"cancelled: {sent} sent, {200 - sent} not mailed, 0 unknown"
    assert doc["last_control"]["by"] == "backend" and doc["last_control"]["run_id"] == result.run_id
    mailed = deliveries(local_ses)
    assert len(mailed) == sent and set(mailed.values()) == {1}
    assert mongo_db.mail_log.count_documents({"mailing_id": mailing_id, "data": {"$exists": True}}) == 0
    assert result.asset_materializations_for_node("mailings")[0].metadata["recipients_cancelled"].value == 200 - sent


def test_a_pause_mid_send_then_resume_mails_each_remaining_recipient_exactly_once(instance, paced, mongo_db, local_ses):
    mongo = paced["mongo"]
    mailing_id = bulk_mailing(mongo_db, members(mongo_db, 100))
    # The operator's run, from the Launchpad while the mailing is being sent (its own instance: it runs beside).
    thread, seen = when_sent(
        mongo_db,
        mailing_id,
        lambda: mailing_control_job.execute_in_process(
            run_config={
                "ops": {CONTROL_OP: {"config": {"mailing_id": str(mailing_id), "action": "pause", "reason": "x"}}}
            },
            resources={"mongo": mongo},
        ),
    )
    first = send(instance, paced, mailing_id)
    thread.join()
    assert first.success and seen["result"].success
    assert "holds the mailing and applies it within one batch" in seen["result"].output_for_node(CONTROL_OP)
    paused = mongo_db.mailings.find_one({"_id": mailing_id})
    assert (paused["processed"], paused["status"], paused["paused_reason"]) == (
        False,
        "paused",
        "paused by operator: x",
    )
    sent_before = rows(mongo_db, mailing_id)["sent"]
    assert seen["sent"] <= sent_before <= seen["sent"] + 2 * SEND_RATE < 100
    assert rows(mongo_db, mailing_id) == {"sent": sent_before, "pending": 100 - sent_before}
    assert tick(mailings_queue_sensor, instance, mongo).run_requests == []  # paused: claimable by nobody

    resumed = control(instance, mongo, mailing_id=str(mailing_id), action="resume", requested_by="Sam")
    assert resumed.success and resumed.output_for_node(CONTROL_OP) == "resumed: claimable now"
    (request,) = tick(mailings_queue_sensor, instance, mongo).run_requests
    assert request.partition_key == str(mailing_id) and request.run_key == f"mailings:{mailing_id}:2"
    assert send(instance, paced, mailing_id).success
    done = mongo_db.mailings.find_one({"_id": mailing_id})
    assert (done["status"], done["counts"]["sent"]) == ("done", 100)
    assert done["last_control"]["action"] == "resume" and done["last_control"]["by"] == "Sam"
    mailed = deliveries(local_ses)
    assert len(mailed) == 100 and set(mailed.values()) == {1}


def test_controls_of_a_mailing_no_run_holds_are_run_by_the_sensor(instance, resources, mongo_db, local_ses):
    mongo = resources["mongo"]
    reason = "as jane.doe@example.com asked, see https://panel.example/r?token=ab12"  # the backend's words
    mailing_id = bulk_mailing(
        mongo_db, members(mongo_db, 3), control="pause", control_by="backend", control_reason=reason
    )
    held_id = bulk_mailing(mongo_db, [], control="cancel")
    mongo.work_queue("mailings").claim(held_id, "a-sending-run")  # its run applies its control itself

    (request,) = tick(mailing_control_sensor, instance, mongo).run_requests
    assert request.run_key == f"mailings:{mailing_id}:control:0:0"
    assert request.tags == {"panel/queue": "mailings", "panel/document_id": str(mailing_id)}
    assert request.run_config["ops"][CONTROL_OP]["config"]["from_document"] is True
    paused = mailing_control_job.execute_in_process(
        run_config=request.run_config, resources={"mongo": mongo}, instance=instance
    )
    assert paused.output_for_node(CONTROL_OP) == "paused"
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    redacted = "as <email> asked, see <url>"
    assert (doc["status"], doc["paused_reason"], doc["controls_applied"]) == (
        "paused",
        f"paused by backend: {redacted}",
        1,
    )
    assert doc["last_control"]["reason"] == redacted  # what the backend wrote, no address or link kept
    assert tick(mailing_control_sensor, instance, mongo).run_requests == []
    assert [r.partition_key for r in tick(mailings_queue_sensor, instance, mongo).run_requests] == []

    mongo_db.mailings.update_one({"_id": mailing_id}, {"$set": {"control": "cancel"}})
    (request,) = tick(mailing_control_sensor, instance, mongo).run_requests
    assert request.run_key == f"mailings:{mailing_id}:control:1:1"
    mailing_control_job.execute_in_process(run_config=request.run_config, resources={"mongo": mongo}, instance=instance)
    cancelled = mongo_db.mailings.find_one({"_id": mailing_id})
    assert (cancelled["processed"], cancelled["status"]) == (True, "cancelled")
    assert cancelled["counts"]["sent"] == 0 and local_ses.emails() == []

    mongo_db.mailings.update_one({"_id": mailing_id}, {"$set": {"control": "resume"}})
    (request,) = tick(mailing_control_sensor, instance, mongo).run_requests
    refused = mailing_control_job.execute_in_process(
        run_config=request.run_config, resources={"mongo": mongo}, instance=instance, raise_on_error=False
    )
    assert refusal(refused) == "resume refused: the mailing was cancelled, and a cancelled mailing cannot be resumed"
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert doc["status"] == "cancelled" and "control" not in doc
    assert doc["last_control"]["outcome"].startswith("refused: the mailing was cancelled")
    assert tick(mailing_control_sensor, instance, mongo).run_requests == []


def test_a_control_set_before_the_run_claims_it_stops_the_mailing_before_anything_is_sent(
    instance, resources, mongo_db, local_ses
):
    mongo = resources["mongo"]
    cancelled_id = bulk_mailing(mongo_db, members(mongo_db, 3), control="cancel")
    assert send(instance, resources, cancelled_id).success
    doc = mongo_db.mailings.find_one({"_id": cancelled_id})
    assert (doc["status"], doc["last_control"]["outcome"]) == (
        "cancelled",
        "cancelled: 0 sent, 0 not mailed, 0 unknown",
    )

    # Transactional mail takes controls alike: paused before it is sent, then resumed and sent once.
    mongo_db.users.insert_one({"email": "reset@panel.example", "first_name": "R", "status": "active"})
    reset_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {
                    "email": "reset@panel.example",
                    "data": {"reset_url": "https://panel.example/r", "expires_in_minutes": 60},
                }
            ],
            "control": "pause",
        }
    ).inserted_id
    assert send_transactional(instance, resources).success
    assert mongo_db.mailings.find_one({"_id": reset_id})["status"] == "paused" and local_ses.emails() == []
    assert control(instance, mongo, mailing_id=str(reset_id), action="resume").success
    assert send_transactional(instance, resources).success
    assert mongo_db.mailings.find_one({"_id": reset_id})["status"] == "done"
    assert list(deliveries(local_ses).items()) == [("reset@panel.example", 1)]
    assert tick(transactional_mail_queue_sensor, instance, mongo).run_requests == []


def test_wrong_config_and_refused_controls_fail_the_run_naming_the_field(instance, resources, mongo_db):
    mongo = resources["mongo"]
    mailing_id = bulk_mailing(mongo_db, [])
    wrong = [
        (
            {"mailing_id": "nope", "action": "pause"},
            "mailing_id: not a mailings document id (24 hex digits); got 'nope'",
        ),
        ({"mailing_id": str(mailing_id), "action": "stop"}, "action: must be one of cancel, pause, resume; got 'stop'"),
        ({"mailing_id": "0" * 24, "action": "pause"}, f"mailing_id: no mailings document {'0' * 24}"),
        (
            {"mailing_id": str(mailing_id), "action": "resume"},
            "resume refused: the mailing is not paused (status queued): nothing to resume",
        ),
    ]
    for config, message in wrong:
        assert refusal(control(instance, mongo, **config)) == message
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert "control" not in doc and doc["controls_applied"] == 1  # only the refused resume was written

    mongo_db.mailings.update_one({"_id": mailing_id}, {"$set": {"control": "stop", "control_by": "ops@panel.example"}})
    (request,) = tick(mailing_control_sensor, instance, mongo).run_requests
    refused = mailing_control_job.execute_in_process(
        run_config=request.run_config, resources={"mongo": mongo}, instance=instance, raise_on_error=False
    )
    assert refusal(refused) == "stop refused: control: must be one of cancel, pause, resume; got 'stop'"
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert "status" not in doc and doc["last_control"]["action"] == "stop" and "control" not in doc
    logs = "\n".join(str(event.user_message) for event in instance.all_logs(refused.run_id))
    assert "ops@panel.example" not in logs
