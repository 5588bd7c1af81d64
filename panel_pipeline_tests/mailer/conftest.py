"""Mailer fixtures: aws-ses-v2-local behind the fault proxy (real HTTP, real boto3), the ledger on the
real mongod, and the resources the mailer's assets run with."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from pymongo.database import Database

from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.mailer.resources import SesResource
from panel_pipeline.mailer.ses import SesGateway
from panel_pipeline.mailer.store import MailLedger
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline.shared.templates import EmailTemplate, load_templates

FROM_ADDRESS = "UK Opinion Panel <panel@example.org>"
CONFIGURATION_SET = "panel-events"
# The data of a new_survey invitation.
SURVEY = {
    "survey_name": "Bus services",
    "duration_minutes": 12,
    "points": 150,
    "survey_url": "https://survey.example/s/1",
}


def local_session() -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="eu-west-2")


@pytest.fixture(scope="session")
def ses_server() -> Iterator[LocalSesServer]:
    server = LocalSesServer(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ses_proxy_session(ses_server: LocalSesServer) -> Iterator[SesFaultProxy]:
    proxy = SesFaultProxy(ses_server.url)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def ses_proxy(ses_server: LocalSesServer, ses_proxy_session: SesFaultProxy) -> SesFaultProxy:
    """The proxy with no faults queued, no calls recorded, and an empty mail store behind it."""
    ses_server.clear()
    ses_proxy_session.reset()
    return ses_proxy_session


@pytest.fixture
def make_gateway(ses_proxy: SesFaultProxy) -> Callable[..., SesGateway]:
    def make(max_send_rate: float | None = 1000.0) -> SesGateway:
        return SesGateway(
            local_session(),
            from_address=FROM_ADDRESS,
            configuration_set=CONFIGURATION_SET,
            endpoint_url=ses_proxy.url,
            max_send_rate=max_send_rate,
            template_calls_per_second=50.0,
        )

    return make


@pytest.fixture(scope="session")
def templates() -> dict[str, EmailTemplate]:
    return load_templates()


@pytest.fixture
def ledger(mongo_db: Database) -> MailLedger:
    mail_log = MailLedger(mongo_db["mail_log"], mongo_db["mail_events"])
    mail_log.ensure_indexes()
    return mail_log


@pytest.fixture
def resources(mongo_uri: str, mongo_db: Database, local_ses: LocalSesServer) -> dict[str, Any]:
    """The mailer's assets' resources: Mongo on this test's database, SES on the session's local server with
    its mail store emptied."""
    local_ses.clear()
    return {
        "mongo": MongoResource(uri=mongo_uri, database=mongo_db.name),
        "ses": SesResource(
            region_name="eu-west-2",
            from_address="Panel <panel@example.org>",
            endpoint_url=local_ses.url,
            aws_access_key_id="local",
            aws_secret_access_key="local",
            unsubscribe_url="https://panel.example/unsubscribe?user={user}&token={token}",
            unsubscribe_secret="s",
            link_hosts="survey.example,panel.example,x",
        ),
    }
