"""The local SES endpoint's account-level suppression list (answered by the proxy, in memory), over
real HTTP with real boto3's sesv2 client: the paths, query and body it serialises are SES v2's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from panel_pipeline.local.ses_proxy import SesFaultProxy

# Nothing is forwarded for the suppression list: no emulator needs to run behind the proxy.
NO_UPSTREAM = "http://127.0.0.1:9"
JANUARY = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def running_proxy() -> Iterator[SesFaultProxy]:
    running = SesFaultProxy(NO_UPSTREAM)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def proxy(running_proxy: SesFaultProxy) -> SesFaultProxy:
    """The proxy with an empty suppression list and no requests counted."""
    running_proxy.reset()
    return running_proxy


@pytest.fixture
def sesv2(proxy: SesFaultProxy) -> Any:
    return boto3.client(
        "sesv2",
        endpoint_url=proxy.url,
        region_name="eu-west-2",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}),
    )


def error_code(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return raised.value.response["Error"]["Code"]


def listed(sesv2: Any, **kwargs: Any) -> list[str]:
    return [
        entry["EmailAddress"]
        for entry in sesv2.list_suppressed_destinations(**kwargs)["SuppressedDestinationSummaries"]
    ]


def test_put_get_and_delete_one_address(sesv2, proxy):
    sesv2.put_suppressed_destination(EmailAddress="Ann+x@panel.example", Reason="BOUNCE")
    sesv2.put_suppressed_destination(EmailAddress="ann+x@panel.example", Reason="COMPLAINT")  # again: replaced

    found = sesv2.get_suppressed_destination(EmailAddress="ANN+X@panel.example")["SuppressedDestination"]
    assert (found["Reason"], found["Attributes"]) == ("COMPLAINT", {})
    assert isinstance(found["LastUpdateTime"], dt.datetime)
    sesv2.delete_suppressed_destination(EmailAddress="ann+x@panel.example")

    assert error_code(sesv2.get_suppressed_destination, EmailAddress="ann+x@panel.example") == "NotFoundException"
    assert error_code(sesv2.delete_suppressed_destination, EmailAddress="ann+x@panel.example") == "NotFoundException"
    assert proxy.requests()["PUT /v2/email/suppression/addresses"] == 2
    assert proxy.requests()["DELETE /v2/email/suppression/addresses/{EmailAddress}"] == 2  # counted without it


def test_a_reason_ses_does_not_know_is_a_bad_request(sesv2):
    # botocore does not check enum values: the request reaches the endpoint, which refuses it as SES does.
    assert error_code(sesv2.put_suppressed_destination, EmailAddress="a@panel.example", Reason="SPAM") == (
        "BadRequestException"
    )


def test_the_list_filters_by_time_and_reason_and_pages_in_order(sesv2, proxy):
    proxy.suppress("old@panel.example", "COMPLAINT", at=JANUARY)
    for day in range(1, 6):
        proxy.suppress(f"b{day}@panel.example", "BOUNCE", at=JANUARY + dt.timedelta(days=day))

    assert listed(sesv2, Reasons=["COMPLAINT"]) == ["old@panel.example"]
    assert listed(sesv2, StartDate=JANUARY + dt.timedelta(days=2), EndDate=JANUARY + dt.timedelta(days=4)) == [
        "b2@panel.example",
        "b3@panel.example",
    ]
    first = sesv2.list_suppressed_destinations(PageSize=4)
    proxy.suppress("new@panel.example")  # added between pages: last, no page shifts
    rest = sesv2.list_suppressed_destinations(PageSize=4, NextToken=first["NextToken"])
    pages = [entry["EmailAddress"] for page in (first, rest) for entry in page["SuppressedDestinationSummaries"]]
    assert pages == ["old@panel.example", *(f"b{day}@panel.example" for day in range(1, 6)), "new@panel.example"]
    assert "NextToken" not in rest


def test_a_bad_token_or_page_size_is_refused(sesv2):
    assert error_code(sesv2.list_suppressed_destinations, NextToken="not-a-token") == "InvalidNextTokenException"
    assert error_code(sesv2.list_suppressed_destinations, PageSize=1001) == "BadRequestException"


def test_reset_empties_the_list(sesv2, proxy):
    proxy.suppress("a@panel.example")
    proxy.reset()
    assert listed(sesv2) == []
    assert proxy.suppression_list.entries() == []
