"""The local SES event path on the local SNS/SQS server over real HTTP: topic, queue and subscription, and the SES proxy
(and the local SES entry point) publishing SES's events into it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.config import Config

from panel_pipeline.local import stack
from panel_pipeline.local.mongod import free_port, port_in_use
from panel_pipeline.local.ses_events import FeedbackShares, RecordedCall, SnsEventPublisher, ses_events
from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.local.sns_sqs import (
    aws_client,
    ensure_feedback_path,
    local_queue_url,
    local_topic_arn,
)
from panel_pipeline.local.sns_sqs_server import LOCAL_PUBLISH_PATH
from panel_pipeline.mailer.feedback import unwrap_sqs_body

TEMPLATE = {"Subject": "Hi {{first_name}}", "Html": "<p>{{first_name}}</p>", "Text": "{{first_name}}"}
ADDRESSES = ["ann@panel.example", "bounce@simulator.amazonses.com", "complaint+x@simulator.amazonses.com"]


def test_the_path_is_set_up_once_however_often_it_is_asked(local_sns_sqs):
    name = f"events-{uuid.uuid4().hex[:8]}"
    first, second = (
        ensure_feedback_path(local_sns_sqs.url, name=name),
        ensure_feedback_path(local_sns_sqs.url, name=name),
    )
    assert first == second
    assert (first.topic_arn, first.queue_url) == (
        local_topic_arn(name=name),
        local_queue_url(local_sns_sqs.url, name=name),
    )
    sns, sqs = aws_client("sns", local_sns_sqs.url), aws_client("sqs", local_sns_sqs.url)
    (subscription,) = sns.list_subscriptions_by_topic(TopicArn=first.topic_arn)["Subscriptions"]
    assert subscription["Protocol"] == "sqs"
    assert (
        sns.get_subscription_attributes(SubscriptionArn=subscription["SubscriptionArn"])["Attributes"][
            "RawMessageDelivery"
        ]
        == "false"
    )
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["Policy"])["Attributes"]["Policy"]
    )
    assert policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"] == first.topic_arn


def test_the_local_stack_points_at_the_path_it_sets_up():
    environment = stack.local_environment()
    assert environment["SQS_ENDPOINT_URL"] == "http://127.0.0.1:8007"
    assert environment["SES_EVENTS_QUEUE_URL"] == local_queue_url(environment["SQS_ENDPOINT_URL"])
    (service,) = [s for s in stack.background_services() if s.name == "sns_sqs"]
    assert service.port == stack.SNS_SQS_PORT and service.set_up is not None
    (ses,) = [s for s in stack.background_services() if s.name == "ses"]
    assert environment["SES_EVENTS_TOPIC_ARN"] in ses.command
    assert ses.command[ses.command.index("--feedback") + 1] == stack.SES_FEEDBACK == "", "none unless asked for"


def _send(url: str, addresses: list[str], template: str) -> None:
    ses = boto3.client(
        "sesv2",
        endpoint_url=url,
        region_name="eu-west-2",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}),
    )
    ses.create_email_template(TemplateName=template, TemplateContent=TEMPLATE)
    ses.send_bulk_email(
        FromEmailAddress="panel@example.org",
        DefaultContent={"Template": {"TemplateName": template, "TemplateData": "{}"}},
        DefaultEmailTags=[{"Name": "mailing", "Value": "m1"}, {"Name": "batch", "Value": "b1"}],
        ConfigurationSetName="panel-events",
        BulkEmailEntries=[
            {
                "Destination": {"ToAddresses": [address]},
                "ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": '{"first_name": "P"}'}},
                "ReplacementTags": [{"Name": "recipient", "Value": f"r{index}"}],
            }
            for index, address in enumerate(addresses)
        ],
    )


def _receive_events(sqs: Any, queue_url: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            assert json.loads(message["Body"])["Type"] == "Notification", "raw delivery is off: an SNS envelope"
            events.append(unwrap_sqs_body(message["Body"], json.loads(message["Body"])["TopicArn"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return events


def test_the_ses_proxy_publishes_send_delivery_bounce_and_complaint_events_to_sns(local_ses, local_sns_sqs):
    path = ensure_feedback_path(local_sns_sqs.url, name=f"events-{uuid.uuid4().hex[:8]}")
    publisher = SnsEventPublisher(local_sns_sqs.url, path.topic_arn)
    proxy = SesFaultProxy(local_ses.url, publish=publisher)
    proxy.start()
    try:
        _send(proxy.url, ADDRESSES, f"t-{uuid.uuid4().hex[:8]}")
    finally:
        proxy.stop()
        publisher.close()
    events = _receive_events(aws_client("sqs", local_sns_sqs.url), path.queue_url, 7)
    assert sorted(e["eventType"] for e in events) == [
        "Bounce",
        "Complaint",
        "Delivery",  # ann's
        "Delivery",  # SES's complaint box accepts the message, then complains
        "Send",
        "Send",
        "Send",
    ]
    assert sorted(map(json.dumps, events)) == sorted(map(json.dumps, proxy.events()))
    (bounce,) = [e for e in events if e["eventType"] == "Bounce"]
    assert bounce["bounce"]["bounceType"] == "Permanent"
    assert bounce["mail"]["tags"] == {
        "mailing": ["m1"],
        "batch": ["b1"],
        "recipient": ["r1"],
        "ses:configuration-set": ["panel-events"],
    }
    assert len(proxy.send_events()) == 3
    (ann_delivered, _) = [e for e in events if e["eventType"] == "Delivery"]
    assert ann_delivered["delivery"]["smtpResponse"].startswith("250") and ann_delivered["mail"]["tags"]["recipient"]


def _post_local_publish(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url + LOCAL_PUBLISH_PATH, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_local_publish_path_delivers_as_publish_and_refuses_an_unknown_topic_or_a_wrong_body(local_sns_sqs):
    path = ensure_feedback_path(local_sns_sqs.url, name=f"events-{uuid.uuid4().hex[:8]}")
    messages = [json.dumps({"eventType": "Send", "n": n}) for n in range(3)]
    status, answer = _post_local_publish(
        local_sns_sqs.url, json.dumps({"TopicArn": path.topic_arn, "Messages": messages}).encode()
    )
    assert status == 200 and len(set(answer["MessageIds"])) == 3
    sqs = aws_client("sqs", local_sns_sqs.url)
    received = sqs.receive_message(QueueUrl=path.queue_url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(unwrap_sqs_body(m["Body"], path.topic_arn)["n"] for m in received) == [0, 1, 2]

    unknown = json.dumps({"TopicArn": path.topic_arn + "-gone", "Messages": messages}).encode()
    assert _post_local_publish(local_sns_sqs.url, unknown) == (
        404,
        {"code": "NotFound", "message": "Topic does not exist"},
    )
    status, answer = _post_local_publish(local_sns_sqs.url, b'{"Messages": []}')
    assert (status, answer["code"]) == (400, "InvalidParameter") and "TopicArn" in answer["message"]


def test_feedback_shares_draw_bounces_complaints_opens_and_clicks_the_same_each_time():
    shares = FeedbackShares(bounce=0.02, transient=0.03, complaint=0.01, open=0.3, click=0.1)
    entries = [{"Destination": {"ToAddresses": [f"m{index}@panel.example"]}} for index in range(2000)]
    results = [{"Status": "SUCCESS", "MessageId": f"0102-{index:06d}"} for index in range(2000)]
    call = RecordedCall({"BulkEmailEntries": entries}, None, results)
    events = ses_events(call, shares)
    assert events == ses_events(call, shares), "drawn from the message ids: the same events each time"
    assert [e["eventType"] for e in ses_events(call)].count("Delivery") == 2000, "no shares: every message delivered"
    kinds = Counter(
        f"{e['eventType']}/{e['bounce']['bounceType']}" if e["eventType"] == "Bounce" else e["eventType"]
        for e in events
    )
    assert kinds["Send"] == 2000
    assert kinds["Delivery"] + kinds["Bounce/Permanent"] + kinds["Bounce/Transient"] == 2000, "one outcome each"
    delivered = kinds["Delivery"]
    assert kinds["Bounce/Permanent"] == pytest.approx(40, abs=15)
    assert kinds["Bounce/Transient"] == pytest.approx(60, abs=20)
    assert kinds["Complaint"] == pytest.approx(0.01 * delivered, abs=10)
    assert kinds["Open"] == pytest.approx(0.3 * delivered, abs=60)
    assert kinds["Click"] == pytest.approx(0.1 * delivered, abs=40)
    bounced = {e["mail"]["messageId"] for e in events if e["eventType"] == "Bounce"}
    engaged = {e["mail"]["messageId"] for e in events if e["eventType"] in ("Open", "Click", "Complaint")}
    assert not bounced & engaged, "a bounced message is neither opened nor clicked nor complained about"


def test_feedback_shares_are_read_from_text_and_a_wrong_one_names_the_variable():
    assert FeedbackShares.parse("") == FeedbackShares()
    assert FeedbackShares.parse(" open=0.3, click=0.1 ") == FeedbackShares(open=0.3, click=0.1)
    assert FeedbackShares.parse(str(FeedbackShares(bounce=0.02, transient=0.5))) == FeedbackShares(0.02, 0.5)
    for wrong, says in (
        ("opens=0.3", "'opens' is not one of"),
        ("open=lots", "open needs a number from 0 to 1"),
        ("click=2", "click needs a number from 0 to 1"),
        ("bounce=0.6,transient=0.5", "add up to more than 1"),
    ):
        with pytest.raises(ValueError, match=says) as raised:
            FeedbackShares.parse(wrong)
        assert "PANEL_LOCAL_SES_FEEDBACK" in str(raised.value)


def test_the_local_ses_entry_point_publishes_to_the_topic_it_is_given(local_sns_sqs):
    path = ensure_feedback_path(local_sns_sqs.url, name=f"events-{uuid.uuid4().hex[:8]}")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "panel_pipeline.local.ses_server",
            "--port",
            str(port),
            "--sns-topic-arn",
            path.topic_arn,
            "--sns-endpoint-url",
            local_sns_sqs.url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_in_use(port):
            assert server.poll() is None and time.monotonic() < deadline, "the local SES endpoint did not start"
            time.sleep(0.1)
        _send(f"http://127.0.0.1:{port}", ADDRESSES[1:2], f"t-{uuid.uuid4().hex[:8]}")
        events = _receive_events(aws_client("sqs", local_sns_sqs.url), path.queue_url, 2)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert sorted(e["eventType"] for e in events) == ["Bounce", "Send"]  # SES's bounce box: no Delivery
