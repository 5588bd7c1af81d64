"""Mailer fixtures: aws-ses-v2-local behind the fault proxy (real HTTP, real boto3), and the ledger
on the real mongod."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import boto3
import pytest
from pymongo.database import Database

from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.mailer.ses import SesGateway
from panel_pipeline.mailer.store import MailLedger
from panel_pipeline.shared.templates import EmailTemplate, load_templates

FROM_ADDRESS = "UK Opinion Panel <panel@example.org>"
CONFIGURATION_SET = "panel-events"


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
