"""Amazon SES (v2), and the SQS queue of its events, as Dagster resources."""

from __future__ import annotations

import hashlib
import hmac

import boto3
import dagster as dg
from botocore.config import Config
from pydantic import Field

from panel_pipeline.mailer.ses import SesGateway, SesSettings
from panel_pipeline.mailer.sqs import SqsQueue


class AwsServiceResource(dg.ConfigurableResource):
    """An AWS service in one region. Credentials come from boto3's default chain (a role, or AWS_*
    variables) unless given here, which only the local endpoints do."""

    region_name: str = Field(description="AWS region, e.g. eu-west-2.")
    endpoint_url: str | None = Field(default=None, description="A local endpoint instead of AWS.")
    aws_access_key_id: str | None = Field(default=None, description="Only for the local endpoint.")
    aws_secret_access_key: str | None = Field(default=None, description="Only for the local endpoint.")

    def session(self) -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            region_name=self.region_name,
        )


class SesResource(AwsServiceResource):
    """SES v2: stored templates and bulk sends."""

    from_address: str = Field(description="Verified sender, e.g. 'Panel <hello@panel.example>'.")
    configuration_set: str | None = Field(default=None, description="Configuration set that publishes send events.")
    max_send_rate: float | None = Field(default=None, description="Recipients per second; default: the account's.")
    unsubscribe_url: str = Field(
        description="One-click unsubscribe link for bulk mail; `{user}` and `{token}` are filled per recipient."
    )
    unsubscribe_secret: str = Field(description="Signs the unsubscribe tokens; set it from an environment variable.")

    def unsubscribe_link(self, user_key: str) -> str:
        token = hmac.new(self.unsubscribe_secret.encode(), user_key.encode(), hashlib.sha256).hexdigest()[:32]
        return self.unsubscribe_url.format(user=user_key, token=token)

    def gateway(self) -> SesGateway:
        settings = SesSettings(
            region_name=self.region_name,
            from_address=self.from_address,
            configuration_set=self.configuration_set,
            endpoint_url=self.endpoint_url,
            max_send_rate=self.max_send_rate,
            template_calls_per_second=20.0 if self.endpoint_url else 1.0,
        )
        return SesGateway(settings, session=self.session())


class SqsResource(AwsServiceResource):
    """The SQS queue subscribed to the SNS topic that the SES configuration set publishes events to."""

    queue_url: str = Field(description="The queue's URL, e.g. https://sqs.eu-west-2.amazonaws.com/<account>/panel-ses-events.")
    wait_seconds: int = Field(default=5, ge=1, le=20, description="Long-poll wait of each receive; a drain ends after one empty wait.")

    def queue(self) -> SqsQueue:
        # Short connect timeout so an unreachable queue costs a sensor tick seconds, not minutes;
        # the read timeout must outlast the long poll.
        config = Config(connect_timeout=3, read_timeout=self.wait_seconds + 10, retries={"mode": "standard", "max_attempts": 2})
        client = self.session().client("sqs", endpoint_url=self.endpoint_url, config=config)
        return SqsQueue(client, self.queue_url, self.wait_seconds)
