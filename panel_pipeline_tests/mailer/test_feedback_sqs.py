"""SES events published to SNS reach the `ses_feedback` asset through SQS (the local SNS/SQS server over real HTTP, real
boto3, the real mongod): members are bounced or unsubscribed and suppressed from the next mailing."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.ses_events import SnsEventPublisher
from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.local.sns_sqs import aws_client, ensure_feedback_path
from panel_pipeline.mailer.assets import mailings, ses_feedback
from panel_pipeline.mailer.report import MEMBER_PLACEHOLDER, who_got_what_query
from panel_pipeline.mailer.resources import SesResource, SqsResource
from panel_pipeline.mailer.sensors import ses_feedback_sensor
from panel_pipeline.mailer.store import recipient_key_for
from panel_pipeline_tests.mailer.conftest import SURVEY
from panel_pipeline_tests.mailer.ses_events import bounce, complaint, event, sns_envelope, tags
from panel_pipeline_tests.mongosh import run_mongosh
from panel_pipeline_tests.waiting import feedback_runs_since, wait_for

pytestmark = pytest.mark.stack


@pytest.fixture
def feedback_path(local_sns_sqs):
    """A topic and queue of this test's own; redelivery after 1 s instead of SQS's 30 s."""
    path = ensure_feedback_path(local_sns_sqs.url, name=f"ses-events-{uuid.uuid4().hex[:8]}")
    aws_client("sqs", local_sns_sqs.url).set_queue_attributes(
        QueueUrl=path.queue_url, Attributes={"VisibilityTimeout": "1"}
    )
    return path


@pytest.fixture
def sqs(local_sns_sqs, feedback_path):
    return SqsResource(
        queue_url=feedback_path.queue_url,
        topic_arn=feedback_path.topic_arn,
        region_name="eu-west-2",
        endpoint_url=local_sns_sqs.url,
        wait_seconds=1,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


@pytest.fixture
def resources(resources, sqs):
    """The mailer's resources (conftest.py) and the SQS queue of this test's own."""
    return {**resources, "sqs": sqs}


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def publish(local_sns_sqs, feedback_path):
    """What SES's event destination does: each event as one SNS message."""
    sns = aws_client("sns", local_sns_sqs.url)

    def publish_events(*events):
        for ses_event in events:
            sns.publish(TopicArn=feedback_path.topic_arn, Message=json.dumps(ses_event))

    return publish_events


def drain(instance, resources):
    result = dg.materialize([ses_feedback], instance=instance, resources=resources, raise_on_error=False)
    (materialization,) = result.asset_materializations_for_node("ses_feedback") if result.success else [None]
    return result, materialization


def members(db, *emails):
    return db.users.insert_many([{"email": e, "first_name": "Ann", "status": "active"} for e in emails]).inserted_ids


def metadata_values(materialization):
    return {key: value.value for key, value in materialization.metadata.items()}


def test_bounces_and_complaints_arrive_through_sqs_and_suppress_the_members(
    instance, resources, mongo_db, publish, local_ses, capfd
):
    ann, bob, cat = members(mongo_db, "ann@panel.example", "bob@panel.example", "cat@panel.example")
    earlier = ObjectId()
    publish(
        event("Send", "ann@panel.example", tags(earlier, ann)),
        bounce("ann@panel.example", tags(earlier, ann)),
        complaint("bob@panel.example", tags(earlier, recipient_key_for(None, "bob@panel.example"))),
        bounce("cat@panel.example", tags(earlier, cat), bounce_type="Transient"),
    )
    tick = ses_feedback_sensor(dg.build_sensor_context(instance=instance, resources={"sqs": resources["sqs"]}))
    assert len(tick.run_requests) == 1

    result, materialization = drain(instance, resources)
    assert result.success
    assert metadata_values(materialization) == {
        "messages_read": 4,
        "messages_deleted": 4,
        "messages_ignored": 0,
        "messages_untrusted": 0,
        "events_stored": 4,
        "events_by_type": {"Bounce": 2, "Complaint": 1, "Send": 1},
        "members_bounced": 1,
        "members_unsubscribed": 1,
        "mailings_reported": 1,  # one mailing id among the tags, though no such `mailings` document
        "dagster/row_count": 4,
    }
    statuses = {user["_id"]: user["status"] for user in mongo_db.users.find()}
    assert statuses == {ann: "bounced", bob: "unsubscribed", cat: "active"}
    assert mongo_db.mail_events.count_documents({}) == 4

    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [{"user_id": ann}, {"user_id": bob}, {"user_id": cat}],
        }
    ).inserted_id
    local_ses.clear()
    instance.add_dynamic_partitions("mailings", [str(mailing_id)])
    assert dg.materialize([mailings], partition_key=str(mailing_id), instance=instance, resources=resources).success
    ledger = {
        row["user_id"]: (row["status"], row.get("error")) for row in mongo_db.mail_log.find({"mailing_id": mailing_id})
    }
    assert ledger == {
        ann: ("suppressed", "member status is bounced"),
        bob: ("suppressed", "member status is unsubscribed"),
        cat: ("sent", None),
    }
    assert [email["destination"]["to"] for email in local_ses.emails()] == [["cat@panel.example"]]

    logged = " ".join(str(entry.user_message) + str(entry.dagster_event) for entry in instance.all_logs(result.run_id))
    output = capfd.readouterr()
    for text in (logged, output.out, output.err, str(materialization.metadata), str(list(mongo_db.mail_events.find()))):
        assert "@" not in text


@pytest.fixture
def publishing_ses(local_ses, local_sns_sqs, feedback_path):
    """The local SES endpoint as the stack runs it (the proxy publishing SES's events), to this test's topic."""
    publisher = SnsEventPublisher(local_sns_sqs.url, feedback_path.topic_arn)
    proxy = SesFaultProxy(local_ses.url, publish=publisher)
    proxy.start()
    yield proxy
    proxy.stop()
    publisher.close()


def waiting_messages(local_sns_sqs, feedback_path):
    attributes = aws_client("sqs", local_sns_sqs.url).get_queue_attributes(
        QueueUrl=feedback_path.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def test_a_mailings_report_counts_what_ses_said_once_and_shows_on_its_partition(
    instance, resources, mongo_db, mongo_uri, publishing_ses, publish, local_sns_sqs, feedback_path
):
    recipients = members(
        mongo_db,
        "ann@panel.example",
        "bob@panel.example",
        "bounce@simulator.amazonses.com",
        "complaint@simulator.amazonses.com",
    )
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [{"user_id": user_id} for user_id in recipients],
        }
    ).inserted_id
    key = str(mailing_id)
    settings = {
        **resources["ses"].model_dump(),
        "endpoint_url": publishing_ses.url,
        "configuration_set": "panel-events",
    }
    run_resources = {**resources, "ses": SesResource(**settings)}
    instance.add_dynamic_partitions("mailings", [key])
    sent = dg.materialize([mailings], partition_key=key, instance=instance, resources=run_resources)
    assert sent.success
    assert metadata_values(sent.asset_materializations_for_node("mailings")[0])["report_sent"] == 4

    # 4 Send, 3 Delivery (SES's complaint box accepts the mail, then complains), 1 Bounce, 1 Complaint
    wait_for(lambda: waiting_messages(local_sns_sqs, feedback_path) == 9, timeout=30, what="SES's 9 events in SQS")
    result, materialization = drain(instance, run_resources)
    assert (
        metadata_values(materialization)["events_stored"],
        metadata_values(materialization)["mailings_reported"],
    ) == (
        9,
        1,
    )
    report = mongo_db.mailings.find_one({"_id": mailing_id})["report"]
    assert report["counts"] == {"delivered": 3, "bounced_permanent": 1, "complained": 1}
    assert report["sent"] == 4
    rates = report["rates"]
    assert (rates["delivered_rate"], rates["bounced_permanent_rate"], rates["complained_rate"]) == (0.75, 0.25, 0.25)
    (observation,) = result.asset_observations_for_node("ses_feedback")
    assert (observation.asset_key, observation.partition) == (dg.AssetKey("mailings"), key)
    observed = metadata_values(observation)
    assert (observed["report_delivered"], observed["report_bounced_permanent"], observed["report_complained"]) == (
        3,
        1,
        1,
    )
    assert observed["report_bounced_permanent_rate"] == 0.25
    assert observed["report_chart"].startswith("![SES events per hour](data:image/svg+xml;base64,")
    assert f'ObjectId("{key}")' in observed["who_got_what"]
    assert "@" not in str(observed)

    # The metadata's who-got-what query, run in mongosh as an operator would, for the member whose mail bounced.
    query = observed["who_got_what"].split("```js\n")[1].split("\n```")[0]
    assert query == who_got_what_query(key)
    answer = run_mongosh(mongo_uri, mongo_db.name, query.replace(MEMBER_PLACEHOLDER, str(recipients[2])))
    assert (answer["row"]["status"], answer["row"]["recipient_key"]) == ("sent", str(recipients[2]))
    assert {event["event_type"]: event.get("bounce_type") for event in answer["events"]} == {
        "Send": None,
        "Bounce": "Permanent",
    }
    assert "@" not in json.dumps(answer, default=str)
    stranger = run_mongosh(mongo_uri, mongo_db.name, query.replace(MEMBER_PLACEHOLDER, str(ObjectId())))
    assert stranger == {"row": None, "events": []}

    publish(*[e for e in publishing_ses.events() if e["eventType"] != "Send"])  # SQS and SNS deliver again
    _, again = drain(instance, run_resources)
    assert (metadata_values(again)["events_stored"], metadata_values(again)["mailings_reported"]) == (0, 0)
    assert mongo_db.mailings.find_one({"_id": mailing_id})["report"]["counts"] == report["counts"]

    finished = dg.materialize([mailings], partition_key=key, instance=instance, resources=run_resources)
    (rematerialized,) = finished.asset_materializations_for_node("mailings")
    assert metadata_values(rematerialized)["report_delivered"] == 3, "the mailing's page shows its report"


def test_redelivered_and_duplicate_events_change_nothing_twice(instance, resources, mongo_db, publish):
    (ann,) = members(mongo_db, "ann@panel.example")
    bounced = bounce("ann@panel.example", tags(ObjectId(), ann))
    publish(bounced, bounced)  # SNS may deliver one event twice
    _, first = drain(instance, resources)
    assert metadata_values(first)["events_stored"] == 1 and metadata_values(first)["members_bounced"] == 1
    changed_at = mongo_db.users.find_one({"_id": ann})["status_changed_at"]

    publish(bounced)  # and again later
    _, again = drain(instance, resources)
    assert (metadata_values(again)["events_stored"], metadata_values(again)["members_bounced"]) == (0, 0)
    assert mongo_db.users.find_one({"_id": ann})["status_changed_at"] == changed_at
    assert mongo_db.mail_events.count_documents({}) == 1


def test_a_bounce_sent_straight_to_the_queue_is_untrusted_counted_and_deleted(
    instance, resources, mongo_db, publish, local_sns_sqs, feedback_path
):
    """Anyone who may send to the queue could forge a bounce; only the topic's envelopes are applied."""
    (ann,) = members(mongo_db, "ann@panel.example")
    sqs = aws_client("sqs", local_sns_sqs.url)
    forged = bounce("ann@panel.example", tags(ObjectId(), ann))
    sqs.send_message(QueueUrl=feedback_path.queue_url, MessageBody=json.dumps(forged))  # a raw event
    sqs.send_message(
        QueueUrl=feedback_path.queue_url,
        MessageBody=sns_envelope(forged, topic_arn="arn:aws:sns:eu-west-2:123456789012:other"),
    )
    publish(bounce("ann@panel.example", None))  # from the topic, but not tagged as our mail is
    _, materialization = drain(instance, resources)
    values = metadata_values(materialization)
    assert (
        values["messages_read"],
        values["messages_deleted"],
        values["messages_untrusted"],
        values["events_stored"],
    ) == (3, 3, 3, 0)
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"


def test_a_message_is_deleted_only_once_applied(instance, resources, mongo_db, publish, local_sns_sqs, feedback_path):
    """The store fails after the message was read: `users` refuses every write (a validator no
    document passes), so applying the bounce fails and the message must still be in SQS."""
    (ann,) = members(mongo_db, "ann@panel.example")
    publish(bounce("ann@panel.example", tags(ObjectId(), ann)))
    mongo_db.command("collMod", "users", validator={"$expr": False}, validationAction="error")
    failed, _ = drain(instance, resources)
    assert not failed.success
    (failure,) = [event for event in failed.all_events if event.is_step_failure]
    assert "Document failed validation" in str(failure.step_failure_data.error), (
        "it failed applying the event, not before reading"
    )

    def waiting(attribute):
        return int(
            aws_client("sqs", local_sns_sqs.url).get_queue_attributes(
                QueueUrl=feedback_path.queue_url, AttributeNames=[attribute]
            )["Attributes"][attribute]
        )

    assert waiting("ApproximateNumberOfMessages") + waiting("ApproximateNumberOfMessagesNotVisible") == 1, (
        "the message stays in the queue"
    )
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"

    mongo_db.command("collMod", "users", validator={})
    wait_for(
        lambda: waiting("ApproximateNumberOfMessages") == 1,
        timeout=30,
        what="the message visible again (1 s visibility timeout)",
    )
    result, materialization = drain(instance, resources)
    assert result.success and metadata_values(materialization)["members_bounced"] == 1
    assert mongo_db.users.find_one({"_id": ann})["status"] == "bounced"


def test_the_sensor_skips_an_empty_or_unreachable_queue(instance, sqs):
    empty = ses_feedback_sensor(dg.build_sensor_context(instance=instance, resources={"sqs": sqs}))
    assert not empty.run_requests and empty.skip_reason.skip_message == "no SES events waiting"

    secret = "s3cr3t-key-material"
    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = SqsResource(
        queue_url=f"{dead}/123456789012/ses-events",
        topic_arn="arn:aws:sns:eu-west-2:123456789012:ses-events",
        region_name="eu-west-2",
        endpoint_url=dead,
        aws_access_key_id="local",
        aws_secret_access_key=secret,
    )
    tick = ses_feedback_sensor(dg.build_sensor_context(instance=instance, resources={"sqs": unreachable}))
    message = tick.skip_reason.skip_message
    assert not tick.run_requests and "unreachable (EndpointConnectionError)" in message
    assert secret not in message and "127.0.0.1" not in message


def test_the_sensor_waits_while_a_feedback_run_is_under_way(instance, sqs, publish):
    publish(event("Send", "ann@panel.example", tags(ObjectId(), ObjectId())))
    instance.add_run(
        dg.DagsterRun(job_name="ses_feedback_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    )
    tick = ses_feedback_sensor(dg.build_sensor_context(instance=instance, resources={"sqs": sqs}))
    assert not tick.run_requests and "already under way" in tick.skip_reason.skip_message


@pytest.mark.slow
def test_under_the_daemon_a_published_bounce_bounces_the_member(dagster_dev, mongo_client, local_sns_sqs):
    """The sensor (every 30 s) sees the message and its run applies it: the whole path under `dagster dev`."""
    db = mongo_client.panel
    since = dt.datetime.now(dt.UTC)
    member_id = db.users.insert_one(
        {"email": f"daemon-{uuid.uuid4().hex[:6]}@panel.example", "status": "active"}
    ).inserted_id
    path = ensure_feedback_path(local_sns_sqs.url)
    published = time.monotonic()
    aws_client("sns", local_sns_sqs.url).publish(
        TopicArn=path.topic_arn, Message=json.dumps(bounce("daemon@panel.example", tags(ObjectId(), member_id)))
    )
    wait_for(
        lambda: db.users.find_one({"_id": member_id, "status": "bounced"}),
        timeout=120,
        what="the member bounced",
        explain=dagster_dev.activity,
    )
    print(f"published -> member bounced under the daemon: {time.monotonic() - published:.1f} s")
    runs = feedback_runs_since(dagster_dev, since)
    assert {(run.status, run.tags["panel/part"]) for run in runs} == {(dg.DagsterRunStatus.SUCCESS, "ses_feedback")}


def sent_ago(ses_event: dict, hours: float) -> dict:
    """The event about a message SES accepted `hours` ago."""
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    ses_event["mail"]["timestamp"] = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return ses_event


def test_soft_bounces_through_sqs_bounce_a_member_at_three_in_30_days_and_a_delivery_starts_again(
    instance, resources, mongo_db, publish
):
    (dan,) = members(mongo_db, "dan@panel.example")

    def transient(hours: float) -> dict:
        return sent_ago(bounce("dan@panel.example", tags(ObjectId(), dan), bounce_type="Transient"), hours)

    delivered = sent_ago(event("Delivery", "dan@panel.example", tags(ObjectId(), dan)), 50)
    publish(transient(24 * 40), transient(72), transient(60), delivered, transient(30), transient(20))
    result, materialization = drain(instance, resources)
    assert result.success and metadata_values(materialization)["members_bounced"] == 0
    assert mongo_db.users.find_one({"_id": dan})["status"] == "active", "40 days ago is out; two since the delivery"

    publish(transient(1))
    result, materialization = drain(instance, resources)
    assert result.success and metadata_values(materialization)["members_bounced"] == 1
    user = mongo_db.users.find_one({"_id": dan})
    assert (user["status"], user["status_reason"]) == ("bounced", "SES bounce Transient: 3 in 30 days")
