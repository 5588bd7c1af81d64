"""Resource selection per environment: the only place where local and production differ.

Both read addresses and secrets from the same environment variables through `dg.EnvVar`, resolved
when a run or tick starts and never stored in run config, and AWS credentials from boto3's default
chain (a role, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY). They differ only in endpoints, the link
policy and the test timings. PANEL_ENV=local expects the local stack's addresses and demo
credentials, which the local run and the tests' stacks set (local/stack.py `pipeline_environment`);
production code never imports the local stack. PANEL_ENV must be set: a deployment that forgot it
fails to load instead of running on the local resources.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from panel_pipeline.extractor.resources import SurveyGizmoResource
from panel_pipeline.mailer.resources import SesResource, SqsResource
from panel_pipeline.sampler.resources import CompletesFiles, FieldworkTiming
from panel_pipeline.shared.resources import ContactBudget, MongoResource, StandingWorkers

ENVIRONMENTS = ("local", "production")
# The local run's links: its own machine and the reserved example domains its demo data uses.
LOCAL_LINK_HOSTS = "localhost,127.0.0.1,*.example,*.example.org"


# Tests on the local stack shorten the mailer's waits (an hour's quota pause, minutes of leases)
# to seconds, and the breaker's window to its least, through these; unset, the local run is as
# production.
LOCAL_MAIL_TIMINGS = {
    "recipient_lease_seconds": "PANEL_MAIL_RECIPIENT_LEASE_SECONDS",
    "quota_pause_seconds": "PANEL_MAIL_PAUSE_SECONDS",
    "event_silence_seconds": "PANEL_MAIL_EVENT_SILENCE_SECONDS",
    "breaker_window_sends": "PANEL_MAIL_BREAKER_WINDOW_SENDS",
}


def standing_workers() -> StandingWorkers:
    """On unless PANEL_STANDING_WORKERS=off (the benchmarks switch them off to measure the polling path)."""
    return StandingWorkers(enabled=os.environ.get("PANEL_STANDING_WORKERS", "on").strip().lower() != "off")


def local_fieldwork_timing() -> FieldworkTiming:
    """The local run's fieldwork: a pass per sample every PANEL_FIELDWORK_PASS_SECONDS (30), in
    fieldwork time PANEL_FIELDWORK_TIME_SCALE times faster than wall time (the stack sets its
    respondent simulator's scale, so the pipeline and the simulated respondents agree), or on a
    stepped clock with PANEL_FIELDWORK_CLOCK=stepped (the fieldwork daemon test)."""
    clock = os.environ.get("PANEL_FIELDWORK_CLOCK") or "scaled"
    if clock not in ("scaled", "stepped"):
        raise ValueError(f"PANEL_FIELDWORK_CLOCK must be scaled or stepped, got {clock!r}")
    return FieldworkTiming(
        pass_seconds=float(os.environ.get("PANEL_FIELDWORK_PASS_SECONDS") or 30),
        time_scale=float(os.environ.get("PANEL_FIELDWORK_TIME_SCALE") or 1),
        clock="stepped" if clock == "stepped" else "scaled",
    )


def local_mail_timings() -> dict[str, Any]:
    settings = {field: float(os.environ[name]) for field, name in LOCAL_MAIL_TIMINGS.items() if os.environ.get(name)}
    if "breaker_window_sends" in settings:
        settings["breaker_window_sends"] = int(settings["breaker_window_sends"])
    return settings


def local_resources() -> dict[str, Any]:
    return {
        "mongo": MongoResource(uri=dg.EnvVar("MONGO_URI"), database="panel"),
        "surveygizmo": SurveyGizmoResource(
            api_token=dg.EnvVar("SURVEYGIZMO_API_TOKEN"),
            api_token_secret=dg.EnvVar("SURVEYGIZMO_API_TOKEN_SECRET"),
            base_url=dg.EnvVar("SURVEYGIZMO_BASE_URL"),
            account_time_zone="America/New_York",
            profile_survey_ids=dg.EnvVar("SURVEYGIZMO_PROFILE_SURVEY_IDS"),
        ),
        "ses": SesResource(
            region_name="eu-west-2",
            from_address="UK Panel <panel@example.org>",
            configuration_set="panel-events",
            endpoint_url=dg.EnvVar("SES_ENDPOINT_URL"),
            cloudwatch_endpoint_url=dg.EnvVar("CLOUDWATCH_ENDPOINT_URL"),
            unsubscribe_url="http://localhost:4200/unsubscribe?user={user}&token={token}",
            unsubscribe_secret=dg.EnvVar("PANEL_UNSUBSCRIBE_SECRET"),
            link_hosts=LOCAL_LINK_HOSTS,
            allow_http_links=True,
            **local_mail_timings(),
        ),
        "sqs": SqsResource(
            queue_url=dg.EnvVar("SES_EVENTS_QUEUE_URL"),
            topic_arn=dg.EnvVar("SES_EVENTS_TOPIC_ARN"),
            region_name="eu-west-2",
            endpoint_url=dg.EnvVar("SQS_ENDPOINT_URL"),
            wait_seconds=1,
        ),
        "workers": standing_workers(),
        "fieldwork_timing": local_fieldwork_timing(),
        "contact_budget": ContactBudget(),
        "completes_files": CompletesFiles(directory=dg.EnvVar("PANEL_COMPLETES_DIR")),
    }


def production_resources() -> dict[str, Any]:
    return {
        "mongo": MongoResource(uri=dg.EnvVar("MONGO_URI"), database=dg.EnvVar("MONGO_DATABASE")),
        "surveygizmo": SurveyGizmoResource(
            api_token=dg.EnvVar("SURVEYGIZMO_API_TOKEN"),
            api_token_secret=dg.EnvVar("SURVEYGIZMO_API_TOKEN_SECRET"),
            region=dg.EnvVar("SURVEYGIZMO_REGION"),
            profile_survey_ids=dg.EnvVar("SURVEYGIZMO_PROFILE_SURVEY_IDS"),
        ),
        "ses": SesResource(
            region_name=dg.EnvVar("SES_REGION"),
            from_address=dg.EnvVar("SES_FROM_ADDRESS"),
            configuration_set=dg.EnvVar("SES_CONFIGURATION_SET"),
            unsubscribe_url=dg.EnvVar("PANEL_UNSUBSCRIBE_URL"),
            unsubscribe_secret=dg.EnvVar("PANEL_UNSUBSCRIBE_SECRET"),
            link_hosts=dg.EnvVar("PANEL_LINK_HOSTS"),
        ),
        "sqs": SqsResource(
            queue_url=dg.EnvVar("SES_EVENTS_QUEUE_URL"),
            topic_arn=dg.EnvVar("SES_EVENTS_TOPIC_ARN"),
            region_name=dg.EnvVar("SES_REGION"),
        ),
        "workers": standing_workers(),
        "fieldwork_timing": FieldworkTiming(),
        "contact_budget": ContactBudget(),
        "completes_files": CompletesFiles(directory=dg.EnvVar("PANEL_COMPLETES_DIR")),
    }


def resources_for(environment: str) -> dict[str, Any]:
    if environment not in ENVIRONMENTS:
        raise ValueError(f"PANEL_ENV must be one of {', '.join(ENVIRONMENTS)}, not {environment!r}")
    return local_resources() if environment == "local" else production_resources()


class EnvironmentNotSet(RuntimeError):
    """PANEL_ENV is missing: which resources to use is never guessed."""


def current_environment() -> str:
    environment = os.environ.get("PANEL_ENV", "").strip()
    if not environment:
        raise EnvironmentNotSet(
            "PANEL_ENV is not set: set PANEL_ENV=production for a deployment; the local run (`make run`) "
            "sets PANEL_ENV=local"
        )
    return environment
