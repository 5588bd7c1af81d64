"""The local AWS services besides SES, each in a subprocess: SNS and SQS (`sns_sqs_server.py`, ours:
moto's SQS slows with the depth of a queue) and CloudWatch (moto), and the SES event path set up on them.

Production delivers SES events as: configuration set -> SNS topic -> SQS queue (raw message delivery
off, so each SQS body is an SNS envelope). `ensure_feedback_path` builds the same topic, queue and
subscription, idempotently, on any SNS/SQS endpoint; the local servers accept the dummy credentials `local`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import boto3

from panel_pipeline.local.child_process import ChildProcessServer
from panel_pipeline.local.mongod import port_in_use
from panel_pipeline.local.sns_sqs_server import ACCOUNT

REGION = "eu-west-2"
EVENTS_NAME = "panel-ses-events"  # the topic's and the queue's
START_TIMEOUT_SECONDS = 20.0
LOCAL_AWS_KEY = "local"  # the access key id and secret the local servers accept (any would do)


class LocalAwsServerError(RuntimeError):
    """A local AWS server did not start; the message says where to look."""


@dataclass(frozen=True)
class FeedbackPath:
    topic_arn: str
    queue_url: str


def local_topic_arn(region: str = REGION, name: str = EVENTS_NAME) -> str:
    return f"arn:aws:sns:{region}:{ACCOUNT}:{name}"


def local_queue_url(endpoint_url: str, name: str = EVENTS_NAME) -> str:
    return f"{endpoint_url}/{ACCOUNT}/{name}"


def sns_sqs_server_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "panel_pipeline.local.sns_sqs_server", "--host", host, "--port", str(port)]


def cloudwatch_server_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]


def aws_client(service: Literal["sns", "sqs", "cloudwatch"], endpoint_url: str, region: str = REGION) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=LOCAL_AWS_KEY,
        aws_secret_access_key=LOCAL_AWS_KEY,
    )


def ensure_feedback_path(endpoint_url: str, region: str = REGION, name: str = EVENTS_NAME) -> FeedbackPath:
    """Create the SNS topic and the SQS queue called `name`, the queue policy that lets the topic
    send to it, and the subscription; calling it again changes nothing."""
    sns, sqs = aws_client("sns", endpoint_url, region), aws_client("sqs", endpoint_url, region)
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(_queue_policy(queue_arn, topic_arn))})
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "false"})
    return FeedbackPath(topic_arn, queue_url)


def _queue_policy(queue_arn: str, topic_arn: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }


class _LocalAwsServer(ChildProcessServer):
    """A local AWS endpoint in a subprocess, up once its port answers."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _spawn(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._command(), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_in_use(self.port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise LocalAwsServerError(f"{self.log_name} did not start on {self.url}; see {self.log_file_path}")
            time.sleep(0.05)


@dataclass
class LocalSnsSqs(_LocalAwsServer):
    """Start/stop the local SNS and SQS endpoint on `host:port`."""

    port: int = 8007
    host: str = "127.0.0.1"
    log_path: Path | None = None
    log_name = "sns-sqs-server"

    def _command(self) -> list[str]:
        return sns_sqs_server_command(self.host, self.port)


@dataclass
class LocalCloudWatch(_LocalAwsServer):
    """Start/stop `moto.server` on `host:port`, for CloudWatch (the SES account's reputation metrics)."""

    port: int = 8009
    host: str = "127.0.0.1"
    log_path: Path | None = None
    log_name = "moto-cloudwatch"

    def _command(self) -> list[str]:
        return cloudwatch_server_command(self.host, self.port)
