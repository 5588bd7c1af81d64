"""Amazon SES (v2), and the SQS queue of its events, as Dagster resources.

Settings are checked when a run or tick builds the resource (pydantic validators), so a wrong
setting stops a run before any mail: an empty unsubscribe secret, an unsubscribe URL without its
`{user}` and `{token}` placeholders or outside the link policy, no allowed link host, an empty
event topic. The messages never repeat a secret.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import dagster as dg
from botocore.config import Config
from pydantic import ConfigDict, Field, field_validator, model_validator

from panel_pipeline.mailer.breaker import MIN_WINDOW_SENDS, AccountMonitor, BreakerPolicy
from panel_pipeline.mailer.dispatch import DispatchPolicy
from panel_pipeline.mailer.feedback import SoftBouncePolicy
from panel_pipeline.mailer.ses import TEMPLATE_CALLS_PER_SECOND, SesGateway, sesv2_client
from panel_pipeline.mailer.sqs import SqsQueue
from panel_pipeline.mailer.suppression import SesSuppressionList
from panel_pipeline.mailer.unsubscribe import DEFAULT_KEY_VERSION, KEY_VERSION, unsubscribe_token
from panel_pipeline.mailer.validation import LinkPolicy

LOCAL_TEMPLATE_CALLS_PER_SECOND = 20.0  # a local endpoint has no 1 call/s limit
TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$")


class AwsServiceResource(dg.ConfigurableResource):
    """An AWS service in one region. Credentials come from boto3's default chain (a role, or AWS_*
    variables) unless given here, which only the local endpoints do."""

    # A validation error must not print the settings it was given: they include secrets.
    model_config = ConfigDict(hide_input_in_errors=True)

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
    concurrent_batches: int = Field(
        default=2, description="SES batches in flight at once (their sum stays at the send rate): see dispatch.py."
    )
    unsubscribe_url: str = Field(
        description="One-click unsubscribe link for bulk mail; `{user}` and `{token}` are filled per recipient."
    )
    unsubscribe_secret: str = Field(description="Signs the unsubscribe tokens; set it from an environment variable.")
    unsubscribe_key_version: str = Field(
        default=DEFAULT_KEY_VERSION,
        description="Names the secret in each token (v1, v2, ...); change it with the secret.",
    )
    link_hosts: str = Field(
        description="Comma-separated hosts that links in our e-mail (survey_url, reset_url, ...) may point at; "
        "`*.example.org` allows its subdomains. The unsubscribe URL's host is always allowed."
    )
    allow_http_links: bool = Field(
        default=False, description="Allow http:// links as well as https://; the local run only."
    )
    recipient_lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a worker holds a claimed batch of recipients before another may take it.",
    )
    quota_pause_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="After SES's daily-quota or sending-paused answer, try the mailing again this much later.",
    )
    event_silence_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How far past an attempt SES's Send events must reach before its silence means 'not accepted' "
        "(SNS and SQS do not keep their order).",
    )

    suppression_calls_per_second: float = Field(
        default=1.0,
        gt=0,
        description="Pace of the account suppression-list calls (Put/List/DeleteSuppressedDestination); "
        "SES allows about 1 per second by default.",
    )
    suppression_calls_per_run: int = Field(
        default=3000,
        ge=1,
        description="Suppression-list calls one ses_suppression_sync run makes at most (50 minutes at 1/s, "
        "inside the hourly schedule); the rest is left for the next run.",
    )
    breaker_window_sends: int = Field(
        default=1000,
        ge=MIN_WINDOW_SENDS,
        description="The circuit breaker judges a bulk mailing over its last this many sends SES accepted "
        "(mailer/breaker.py).",
    )
    breaker_bounce_rate: float = Field(
        default=0.04, gt=0, lt=1, description="A bulk mailing pauses itself when its bounce rate passes this."
    )
    breaker_complaint_rate: float = Field(
        default=0.0008, gt=0, lt=1, description="A bulk mailing pauses itself when its complaint rate passes this."
    )
    account_check_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often a sending run reads the account's enforcement status and reputation metrics.",
    )
    cloudwatch_endpoint_url: str | None = Field(
        default=None,
        description="A local CloudWatch for the account's reputation metrics; with a local SES endpoint and none "
        "here they are not read.",
    )

    @model_validator(mode="before")
    @classmethod
    def _settings_are_usable(cls, data: Any) -> Any:
        """Runs when a run or tick builds the resource from resolved values; an `EnvVar` not yet
        resolved (the definitions loading) is left for then."""
        if not isinstance(data, dict):
            return data
        secret, url, hosts = (data.get(name) for name in ("unsubscribe_secret", "unsubscribe_url", "link_hosts"))
        if _resolved(secret) and not str(secret).strip():
            raise ValueError("unsubscribe_secret is empty: set PANEL_UNSUBSCRIBE_SECRET")
        if _resolved(hosts) and not _hosts(str(hosts)):
            raise ValueError("link_hosts names no host: set PANEL_LINK_HOSTS (comma-separated)")
        if _resolved(url) and ("{user}" not in str(url) or "{token}" not in str(url)):
            raise ValueError("unsubscribe_url: needs the placeholders {user} and {token}")
        if _resolved(url) and _resolved(hosts) and hosts:
            allow_http = bool(data.get("allow_http_links", False))
            problem = _policy(str(url), str(hosts), allow_http).problem(str(url).format(user="0", token="0"))
            if problem:
                raise ValueError(f"unsubscribe_url: {problem}")
        version = data.get("unsubscribe_key_version", DEFAULT_KEY_VERSION)
        if _resolved(version) and not KEY_VERSION.fullmatch(str(version)):
            raise ValueError("unsubscribe_key_version: looks like v1, v2, ...")
        return data

    def unsubscribe_link(self, member_id: str) -> str:
        """The member's signed one-click link (scheme: docs/contract.md, `mailer/unsubscribe.py`)."""
        token = unsubscribe_token(member_id, self.unsubscribe_secret, self.unsubscribe_key_version)
        return self.unsubscribe_url.format(user=quote(member_id, safe=""), token=quote(token, safe=""))

    def link_policy(self) -> LinkPolicy:
        """Where links in our e-mail may point: `link_hosts` and the unsubscribe URL's own host."""
        return _policy(self.unsubscribe_url, self.link_hosts, self.allow_http_links)

    def dispatch_policy(self) -> DispatchPolicy:
        return DispatchPolicy(
            lease_seconds=self.recipient_lease_seconds,
            pause_seconds=self.quota_pause_seconds,
            event_silence=dt.timedelta(seconds=self.event_silence_seconds),
            senders=self.concurrent_batches,
        )

    def breaker_policy(self) -> BreakerPolicy:
        return BreakerPolicy(
            window_sends=self.breaker_window_sends,
            max_bounce_rate=self.breaker_bounce_rate,
            max_complaint_rate=self.breaker_complaint_rate,
            account_check_seconds=self.account_check_seconds,
        )

    def account_monitor(self, gateway: SesGateway) -> AccountMonitor:
        """The account's standing for the breaker: GetAccount through `gateway`, and the reputation
        metrics from CloudWatch (in the region, or at `cloudwatch_endpoint_url`)."""
        cloudwatch = None
        if self.cloudwatch_endpoint_url or not self.endpoint_url:
            config = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 3})
            cloudwatch = self.session().client("cloudwatch", endpoint_url=self.cloudwatch_endpoint_url, config=config)
        return AccountMonitor(gateway.account, cloudwatch, self.breaker_policy())

    def gateway(self) -> SesGateway:
        """The gateway on these settings (the session carries region and credentials)."""
        return SesGateway(
            self.session(),
            from_address=self.from_address,
            configuration_set=self.configuration_set,
            endpoint_url=self.endpoint_url,
            max_send_rate=self.max_send_rate,
            template_calls_per_second=LOCAL_TEMPLATE_CALLS_PER_SECOND
            if self.endpoint_url
            else TEMPLATE_CALLS_PER_SECOND,
        )

    def suppression_list(self) -> SesSuppressionList:
        """The account's suppression list, paced to `suppression_calls_per_second`; calls retried by
        botocore (putting or deleting twice is harmless)."""
        client = sesv2_client(self.session(), self.endpoint_url, total_max_attempts=3)
        return SesSuppressionList(client, self.suppression_calls_per_second, self.suppression_calls_per_run)


class SqsResource(AwsServiceResource):
    """The SQS queue subscribed to the SNS topic that the SES configuration set publishes events to."""

    queue_url: str = Field(
        description="The queue's URL, e.g. https://sqs.eu-west-2.amazonaws.com/<account>/panel-ses-events."
    )
    topic_arn: str = Field(
        description="The SNS topic the SES configuration set publishes to; a message from any other topic is dropped."
    )
    wait_seconds: int = Field(
        default=5, ge=1, le=20, description="Long-poll wait of each receive; a drain ends after one empty wait."
    )
    soft_bounce_limit: int = Field(
        default=3,
        ge=1,
        description="This many transient bounces (within the window, none delivered since) bounce a member.",
    )
    soft_bounce_window_days: float = Field(
        default=30.0, gt=0, description="The window, in days of send time, that transient bounces are counted in."
    )

    def soft_bounce_policy(self) -> SoftBouncePolicy:
        return SoftBouncePolicy(self.soft_bounce_limit, dt.timedelta(days=self.soft_bounce_window_days))

    def queue(self) -> SqsQueue:
        # Short connect timeout so an unreachable queue costs a sensor tick seconds, not minutes;
        # the read timeout must outlast the long poll.
        config = Config(
            connect_timeout=3, read_timeout=self.wait_seconds + 10, retries={"mode": "standard", "max_attempts": 2}
        )
        client = self.session().client("sqs", endpoint_url=self.endpoint_url, config=config)
        return SqsQueue(client, self.queue_url, self.wait_seconds, self.topic_arn)

    @field_validator("topic_arn", mode="before")
    @classmethod
    def _topic_is_an_arn(cls, topic_arn: Any) -> Any:
        if _resolved(topic_arn) and not TOPIC_ARN.fullmatch(str(topic_arn)):
            raise ValueError(
                "topic_arn: not an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>); set SES_EVENTS_TOPIC_ARN"
            )
        return topic_arn


def _resolved(value: Any) -> bool:
    """False for an `EnvVar` the definitions name but a run has not resolved yet."""
    return value is not None and not isinstance(value, dg.EnvVar)


def _hosts(hosts: str) -> list[str]:
    return [host.strip().lower() for host in hosts.split(",") if host.strip()]


def _policy(unsubscribe_url: str, link_hosts: str, allow_http: bool) -> LinkPolicy:
    own_host = urlsplit(unsubscribe_url.format(user="0", token="0")).hostname or ""
    return LinkPolicy.of([*_hosts(link_hosts), own_host], allow_http=allow_http)
