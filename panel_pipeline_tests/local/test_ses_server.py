"""aws-ses-v2-local under LocalSesServer, and the fault proxy in front of it, over real HTTP with real boto3."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from panel_pipeline.local.mongod import free_port, port_in_use
from panel_pipeline.local.ses_proxy import SesFaultProxy, lost_answer, throttling
from panel_pipeline.local.ses_server import LocalSesServer

TEMPLATE = {"Subject": "Hi {{first_name}}", "Html": "<p>{{first_name}}</p>", "Text": "{{first_name}}"}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalSesServer]:
    with LocalSesServer(port=free_port(), max_send_rate=20, max_24_hour_send=1000) as running:
        yield running


def _client(url: str) -> Any:
    return boto3.client(
        "sesv2",
        endpoint_url=url,
        region_name="eu-west-2",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}),
    )


def _entry(index: int, headers: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Destination": {"ToAddresses": [f"p{index}@example.org"]},
        "ReplacementEmailContent": {
            "ReplacementTemplate": {"ReplacementTemplateData": f'{{"first_name": "P{index}"}}'}
        },
    }
    if headers:
        entry["ReplacementHeaders"] = [{"Name": "List-Unsubscribe", "Value": f"<https://x.test/u/{index}>"}]
    return entry


def _bulk(client: Any, count: int, headers: bool = True) -> dict[str, Any]:
    return client.send_bulk_email(
        FromEmailAddress="panel@example.org",
        DefaultContent={"Template": {"TemplateName": "t", "TemplateData": "{}"}},
        BulkEmailEntries=[_entry(i, headers) for i in range(count)],
    )


def test_start_is_idempotent_and_thread_safe_and_stop_frees_the_port() -> None:
    local = LocalSesServer(port=free_port())
    threads = [threading.Thread(target=local.start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert local.is_running() and port_in_use(local.port)
    assert local.stop() is True and local.stop() is False
    assert not port_in_use(local.port)


def test_web_ui_get_account_templates_and_store(server: LocalSesServer) -> None:
    server.clear()
    with urllib.request.urlopen(server.url + "/") as page:
        assert b"<html" in page.read().lower()
    client = _client(server.url)
    assert client.get_account()["SendQuota"] == {"Max24HourSend": 1000.0, "MaxSendRate": 20.0, "SentLast24Hours": 0.0}
    client.create_email_template(TemplateName="t", TemplateContent=TEMPLATE)
    result = _bulk(client, 2)
    assert [entry["Status"] for entry in result["BulkEmailEntryResults"]] == ["SUCCESS", "SUCCESS"]
    emails = server.emails()
    assert [email["subject"] for email in emails] == ["Hi P0", "Hi P1"]
    assert emails[0]["headers"] == [{"name": "List-Unsubscribe", "value": "<https://x.test/u/0>"}]
    assert list(server.templates()) == ["t"]
    server.clear()
    assert server.emails() == [] and server.templates() == {}


def test_strict_rendering_fails_a_missing_variable_but_not_a_null(server: LocalSesServer) -> None:
    """Why the Python data check exists: the emulator (like SES) cannot be relied on for null values."""
    server.clear()
    client = _client(server.url)
    client.create_email_template(TemplateName="t", TemplateContent=TEMPLATE)
    entries = [
        {
            "Destination": {"ToAddresses": ["a@example.org"]},
            "ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": "{}"}},
        },
        {
            "Destination": {"ToAddresses": ["b@example.org"]},
            "ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": '{"first_name": null}'}},
        },
    ]
    result = client.send_bulk_email(
        FromEmailAddress="panel@example.org",
        DefaultContent={"Template": {"TemplateName": "t", "TemplateData": "{}"}},
        BulkEmailEntries=entries,
    )
    assert [entry["Status"] for entry in result["BulkEmailEntryResults"]] == ["FAILED", "SUCCESS"]


def test_proxy_adds_the_50_entry_limit_faults_and_a_request_record(server: LocalSesServer) -> None:
    server.clear()
    proxy = SesFaultProxy(server.url)
    proxy.start()
    try:
        client = _client(proxy.url)
        client.create_email_template(TemplateName="t", TemplateContent=TEMPLATE)
        with pytest.raises(ClientError) as too_many:
            _bulk(client, 51)
        assert too_many.value.response["Error"]["Code"] == "BadRequestException"
        proxy.inject(throttling(), lost_answer())
        with pytest.raises(client.exceptions.TooManyRequestsException):
            _bulk(client, 1)
        with pytest.raises(ConnectionClosedError):
            _bulk(client, 3, headers=False)
        assert len(server.emails()) == 3, "the dropped answer's mail was accepted"
        assert [call.answered for call in proxy.calls()] == [True, False]
        assert [event["mail"]["messageId"] for event in proxy.send_events()] == [
            email["messageId"] for email in server.emails()
        ]
    finally:
        proxy.stop()
