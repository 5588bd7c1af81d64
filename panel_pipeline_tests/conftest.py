"""Shared fixtures: one real mongod (single-node replica set) per test session, a fresh database per test."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
from pymongo.database import Database

from panel_pipeline.local.dagster_dev import DagsterDev
from panel_pipeline.local.mongod import LocalMongod, free_port
from panel_pipeline.local.profile_survey import PROFILE_SURVEY
from panel_pipeline.local.ses_events import SnsEventPublisher
from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.local.sns_sqs import LocalCloudWatch, LocalSnsSqs, ensure_feedback_path
from panel_pipeline.local.stack import pipeline_environment
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo
from panel_pipeline_tests.waiting import DAEMON_FEEDBACK

ROOT = Path(__file__).resolve().parents[1]
# The tests load the definitions with the local resources, as `make run` does; outside
# these two a missing PANEL_ENV is an error (panel_pipeline/resources.py).
os.environ.setdefault("PANEL_ENV", "local")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the session's daemon (`dagster_dev`) last: once it starts it polls until the session
    ends, and the tests that start a stack of their own (the bad day) should not share the cores with it."""
    items.sort(key=lambda item: "dagster_dev" in getattr(item, "fixturenames", ()))


def pytest_configure(config: pytest.Config) -> None:
    """Give SIGINT its default handler back when the shell started pytest in the background.

    A shell without job control starts a background command (make test's second session) with SIGINT
    ignored, and Dagster maps SIGTERM to SIGINT's handler: every process a test started would then ignore
    `terminate()` and the test would wait for it forever.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def profile_columns() -> list[str]:
    """The columns of a synthetic panel (generate_profiles), in order: what a member's `profile` holds."""
    return [
        "gender",
        "birth_year",
        "age",
        "age_band",
        "region",
        "social_grade",
        "education",
        "vote_2019",
        "vote_2024",
        "eu_ref_vote",
    ]


@pytest.fixture(scope="session")
def mongod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMongod]:
    server = LocalMongod(data_dir=Path(tmp_path_factory.mktemp("mongod")), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri(mongod: LocalMongod) -> str:
    return mongod.uri


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[pymongo.MongoClient]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def mongo_db(mongo_client: pymongo.MongoClient) -> Iterator[Database]:
    """A database of its own for each test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


@pytest.fixture(scope="session")
def local_surveygizmo() -> Iterator[LocalSurveyGizmo]:
    """The SurveyGizmo-compatible server with the demo profile survey and no responses yet."""
    server = LocalSurveyGizmo()
    server.add_survey(PROFILE_SURVEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_ses() -> Iterator[LocalSesServer]:
    with LocalSesServer(port=free_port(), max_send_rate=200.0) as server:
        yield server


@pytest.fixture(scope="session")
def local_sns_sqs() -> Iterator[LocalSnsSqs]:
    """The local SNS and SQS; tests make topics and queues of their own names on it."""
    with LocalSnsSqs(port=free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def local_cloudwatch() -> Iterator[LocalCloudWatch]:
    """moto's CloudWatch: the SES account's reputation metrics a test puts there."""
    with LocalCloudWatch(port=free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def daemon_ses(local_ses: LocalSesServer, local_sns_sqs: LocalSnsSqs) -> Iterator[SesFaultProxy]:
    """The SES endpoint the daemon sends through, as the local stack runs it (`ses_server --sns-topic-arn`):
    the fault proxy in front of `local_ses`, publishing SES's events (Send, and the mailbox
    simulator's Bounce and Complaint) to the local event topic, which `ses_feedback` drains."""
    publisher = SnsEventPublisher(local_sns_sqs.url, ensure_feedback_path(local_sns_sqs.url).topic_arn)
    proxy = SesFaultProxy(local_ses.url, publish=publisher, feedback=DAEMON_FEEDBACK)
    proxy.start()
    yield proxy
    proxy.stop()
    publisher.close()


@pytest.fixture(scope="session")
def dagster_dev(
    tmp_path_factory: pytest.TempPathFactory,
    mongo_uri: str,
    local_surveygizmo: LocalSurveyGizmo,
    daemon_ses: SesFaultProxy,
    local_sns_sqs: LocalSnsSqs,
    local_cloudwatch: LocalCloudWatch,
) -> Iterator[DagsterDev]:
    """The whole pipeline under a real daemon, as `make run` starts it, on the session's local stack
    (Mongo database `panel`), SES events flowing back through SNS and SQS."""
    completes = tmp_path_factory.mktemp("completes")
    environment = pipeline_environment(
        mongo_uri, daemon_ses.url, local_surveygizmo.base_url, local_sns_sqs.url, local_cloudwatch.url, completes
    ) | {
        "PANEL_FIELDWORK_PASS_SECONDS": "10",
        "PANEL_FIELDWORK_CLOCK": "stepped",  # moved on by test_fieldwork_daemon only
        "PANEL_MAIL_BREAKER_WINDOW_SENDS": "200",  # the breaker's least window: test_breaker_daemon
    }
    server = DagsterDev(Path(tmp_path_factory.mktemp("dagster_home")), environment)
    server.start()
    yield server
    server.stop()
