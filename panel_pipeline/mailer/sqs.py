"""The SQS queue subscribed to the SES event topic, on plain boto3 (no Dagster)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from panel_pipeline.mailer.feedback import QueueMessage


class SqsQueue:
    """Long-polled receives, batch deletes and the visible-message count of one queue; `topic_arn`
    is the SNS topic whose messages the drain applies (any other is dropped)."""

    def __init__(self, client: Any, queue_url: str, wait_seconds: int, topic_arn: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self.wait_seconds = wait_seconds
        self.topic_arn = topic_arn

    def receive(self, max_messages: int, wait: bool = True) -> list[QueueMessage]:
        answer = self.client.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=self.wait_seconds if wait else 0
        )
        return [QueueMessage(message["ReceiptHandle"], message["Body"]) for message in answer.get("Messages", [])]

    def delete(self, receipt_handles: Sequence[str]) -> int:
        """Delete these messages (at most 10); returns how many SQS confirmed. One it did not
        delete is delivered again, and applying it again changes nothing."""
        entries = [{"Id": str(index), "ReceiptHandle": handle} for index, handle in enumerate(receipt_handles)]
        answer = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        return len(answer.get("Successful", []))

    def waiting(self) -> int:
        """Messages ready to be received now (SQS's approximate count)."""
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])
