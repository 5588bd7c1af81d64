"""The local SNS/SQS server keeps SQS's at-least-once contract, over real HTTP with real boto3: a received
message is hidden until its visibility timeout, then delivered again; only its latest receipt handle
deletes it; long polls answer when a message arrives; what it does not serve is refused by name."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.sns_sqs import FeedbackPath, aws_client, ensure_feedback_path
from panel_pipeline.local.sns_sqs_server import serve


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = serve("127.0.0.1", free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def path(url: str) -> FeedbackPath:
    path = ensure_feedback_path(url, name=f"q-{uuid.uuid4().hex[:8]}")
    aws_client("sqs", url).set_queue_attributes(QueueUrl=path.queue_url, Attributes={"VisibilityTimeout": "1"})
    return path


def counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


def test_a_message_not_deleted_comes_back_and_only_its_latest_handle_deletes_it(url, path):
    sns, sqs = aws_client("sns", url), aws_client("sqs", url)
    sns.publish(TopicArn=path.topic_arn, Message=json.dumps({"eventType": "Send"}))
    assert counts(sqs, path.queue_url) == (1, 0), "published means receivable"

    (first,) = sqs.receive_message(QueueUrl=path.queue_url, WaitTimeSeconds=0)["Messages"]
    envelope = json.loads(first["Body"])
    assert (envelope["Type"], envelope["TopicArn"], json.loads(envelope["Message"])) == (
        "Notification",
        path.topic_arn,
        {"eventType": "Send"},
    )
    assert counts(sqs, path.queue_url) == (0, 1)
    assert "Messages" not in sqs.receive_message(QueueUrl=path.queue_url, WaitTimeSeconds=0), "hidden while in flight"

    (again,) = sqs.receive_message(QueueUrl=path.queue_url, WaitTimeSeconds=5)["Messages"]  # after its 1 s
    assert again["MessageId"] == first["MessageId"] and again["ReceiptHandle"] != first["ReceiptHandle"]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"

    sqs.delete_message(QueueUrl=path.queue_url, ReceiptHandle=first["ReceiptHandle"])
    assert counts(sqs, path.queue_url) == (0, 1), "a stale handle deletes nothing (and is no error, as in SQS)"
    answer = sqs.delete_message_batch(
        QueueUrl=path.queue_url, Entries=[{"Id": "a", "ReceiptHandle": again["ReceiptHandle"]}]
    )
    assert [entry["Id"] for entry in answer["Successful"]] == ["a"]
    assert counts(sqs, path.queue_url) == (0, 0)


def test_a_long_poll_answers_when_a_message_arrives(url, path):
    sns, sqs = aws_client("sns", url), aws_client("sqs", url)
    received: list[dict[str, Any]] = []
    poll = threading.Thread(
        target=lambda: received.extend(
            sqs.receive_message(QueueUrl=path.queue_url, WaitTimeSeconds=20).get("Messages", [])
        )
    )
    poll.start()
    entries = [{"Id": "1", "Message": "one"}, {"Id": "2", "Message": "two"}]
    sns.publish_batch(TopicArn=path.topic_arn, PublishBatchRequestEntries=entries)
    poll.join()
    assert received, "the waiting receive got what was published"
    assert counts(sqs, path.queue_url)[0] + len(received) == 2


def test_raw_delivery_purge_and_refusals_by_name(url):
    sns, sqs = aws_client("sns", url), aws_client("sqs", url)
    name = f"raw-{uuid.uuid4().hex[:8]}"
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    sns.publish(TopicArn=topic_arn, Message="as it is")
    (message,) = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    assert message["Body"] == "as it is"

    sqs.send_message(QueueUrl=queue_url, MessageBody="x")
    sqs.purge_queue(QueueUrl=queue_url)
    assert counts(sqs, queue_url) == (0, 0)

    with pytest.raises(ClientError, match="does not exist"):
        sqs.get_queue_attributes(QueueUrl=f"{url}/123456789012/no-such-queue", AttributeNames=["All"])
    with pytest.raises(ClientError, match="Topic does not exist"):
        sns.publish(TopicArn=f"{topic_arn}-gone", Message="x")
    with pytest.raises(ClientError, match="does not serve ChangeMessageVisibility"):
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle="a#b", VisibilityTimeout=0)
    with pytest.raises(ClientError, match="DelaySeconds"):
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", DelaySeconds=5)
