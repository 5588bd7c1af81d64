"""SesGateway over real HTTP with real boto3: aws-ses-v2-local behind the fault proxy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from bson import ObjectId

from panel_pipeline.local.ses_proxy import (
    SesFaultProxy,
    daily_quota_exceeded,
    entry_statuses,
    lost_answer,
    throttling,
)
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.mailer.ses import (
    NOT_BUILT,
    BulkRecipient,
    BulkSend,
    SendEventsNotPublished,
    SendStatus,
    SesGateway,
)
from panel_pipeline.shared.privacy import redact
from panel_pipeline.shared.templates import EmailTemplate, escape_for_html
from panel_pipeline_tests.clock import ManualClock
from panel_pipeline_tests.mailer.conftest import CONFIGURATION_SET, local_session

MAILING_ID = "65f000000000000000000001"


def _recipients(template: EmailTemplate, count: int, **overrides: object) -> list[BulkRecipient]:
    recipients = []
    for index in range(count):
        data = {**template.example_data, **overrides, "unsubscribe_url": f"https://panel.example.org/u/{index}"}
        recipients.append(
            BulkRecipient(f"user{index}", f"person{index}@example.org", escape_for_html(data), data["unsubscribe_url"])
        )
    return recipients


def _send(
    gateway: SesGateway,
    template: EmailTemplate,
    count: int,
    batch_id: str = "batch1",
    bulk: bool = True,
    **data: object,
):
    name = gateway.ensure_template(template)
    return gateway.send_batch(BulkSend(MAILING_ID, batch_id, name, _recipients(template, count, **data), bulk))


def test_batch_size_and_rate_come_from_get_account(make_gateway: Callable[..., SesGateway]) -> None:
    gateway = make_gateway(max_send_rate=None)
    assert gateway.send_quota().max_send_rate == 14.0
    assert (gateway.send_rate, gateway.batch_size) == (14.0, 14)
    assert make_gateway(max_send_rate=500).batch_size == 50


def test_templates_are_stored_once_under_their_versioned_name(
    make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer, templates: dict[str, EmailTemplate]
) -> None:
    gateway = make_gateway()
    template = templates["welcome"]
    assert gateway.ensure_template(template) == template.ses_name
    assert gateway.ensure_template(template) == template.ses_name
    assert list(ses_server.templates()) == [template.ses_name]


def test_bulk_send_delivers_each_recipient_with_tags_and_unsubscribe_headers(
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    result = _send(make_gateway(), templates["new_survey"], 3)
    assert [entry.outcome for entry in result.entries] == [SendStatus.SENT] * 3
    emails = sorted(ses_server.emails(), key=lambda email: email["destination"]["to"][0])
    assert [email["destination"]["to"] for email in emails] == [[f"person{i}@example.org"] for i in range(3)]
    headers = {header["name"]: header["value"] for header in emails[1]["headers"]}
    assert headers == {
        "List-Unsubscribe": "<https://panel.example.org/u/1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    request = ses_proxy.calls()[0].request
    assert request["ConfigurationSetName"] == CONFIGURATION_SET
    assert request["DefaultEmailTags"] == [
        {"Name": "mailing", "Value": MAILING_ID},
        {"Name": "batch", "Value": "batch1"},
    ]
    assert [entry["ReplacementTags"] for entry in request["BulkEmailEntries"]] == [
        [{"Name": "recipient", "Value": f"user{i}"}] for i in range(3)
    ]


def test_the_survey_reminder_renders_in_ses_with_its_closing_date(
    make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer, templates: dict[str, EmailTemplate]
) -> None:
    """The local SES renders strictly (a missing variable fails the send), as SES drops such mail."""
    result = _send(make_gateway(), templates["survey_reminder"], 1, closes_on="Friday 14 June")
    assert [entry.outcome for entry in result.entries] == [SendStatus.SENT]
    (email,) = ses_server.emails()
    assert email["subject"] == "Reminder: Your views on local bus services closes on Friday 14 June (150 points)"
    assert "Friday 14 June" in email["body"]["html"] and "https://panel.example.org/u/0" in email["body"]["text"]


def test_transactional_send_has_no_unsubscribe_headers(
    make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer, templates: dict[str, EmailTemplate]
) -> None:
    result = _send(make_gateway(), templates["password_recovery"], 2, bulk=False)
    assert result.counts() == {"sent": 2}
    assert all(not email.get("headers") for email in ses_server.emails())


def test_html_injection_in_a_first_name_arrives_escaped(
    make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer, templates: dict[str, EmailTemplate]
) -> None:
    _send(make_gateway(), templates["new_survey"], 1, first_name='<img src=x onerror="alert(1)">Eve & Co')
    (email,) = ses_server.emails()
    assert "Hi &lt;img src=x onerror=&quot;alert(1)&quot;&gt;Eve &amp; Co," in email["body"]["html"]
    assert "<img" not in email["body"]["html"]
    assert 'Hi <img src=x onerror="alert(1)">Eve & Co,' in email["body"]["text"]


def test_throttling_answer_retries_everyone_and_sends_nothing(
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    ses_proxy.inject(throttling())
    result = _send(make_gateway(), templates["new_survey"], 5)
    assert result.counts() == {"retry": 5}
    assert result.entries[0].ses_status == "TooManyRequestsException"
    assert ses_server.emails() == []
    assert len(ses_proxy.calls()) == 1, "botocore must not retry a send call by itself"


def test_daily_quota_answer_pauses_the_batch(
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    ses_proxy.inject(daily_quota_exceeded())
    result = _send(make_gateway(), templates["new_survey"], 4)
    assert result.counts() == {"pause": 4}
    assert ses_server.emails() == []


def test_each_entry_is_classified_on_its_own(
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    ses_proxy.inject(
        entry_statuses(
            {1: "ACCOUNT_THROTTLED", 2: "ACCOUNT_DAILY_QUOTA_EXCEEDED", 3: "MESSAGE_REJECTED", 4: "TRANSIENT_FAILURE"}
        )
    )
    result = _send(make_gateway(), templates["new_survey"], 6)
    assert [entry.outcome for entry in result.entries] == [
        SendStatus.SENT,
        SendStatus.RETRY,
        SendStatus.PAUSE,
        SendStatus.FAILED,
        SendStatus.RETRY,
        SendStatus.SENT,
    ]
    assert result.entries[3].error == "injected MESSAGE_REJECTED"
    assert sorted(email["destination"]["to"][0] for email in ses_server.emails()) == [
        "person0@example.org",
        "person5@example.org",
    ]


def test_lost_answer_is_unknown_and_never_sent_twice(
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    ses_proxy.inject(lost_answer())
    result = _send(make_gateway(), templates["new_survey"], 10)
    assert result.counts() == {"unknown": 10}
    assert len(ses_server.emails()) == 10, "accepted once, and botocore did not re-send it"
    assert len(ses_proxy.calls()) == 1


def test_missing_variable_fails_only_that_entry_on_the_strict_server(
    make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer, templates: dict[str, EmailTemplate]
) -> None:
    template = templates["new_survey"]
    gateway = make_gateway()
    recipients = _recipients(template, 3)
    broken = {key: value for key, value in recipients[1].template_data.items() if key != "first_name"}
    recipients[1] = BulkRecipient("user1", "person1@example.org", broken, "https://panel.example.org/u/1")
    result = gateway.send_batch(BulkSend(MAILING_ID, "b", gateway.ensure_template(template), recipients))
    assert [entry.outcome for entry in result.entries] == [SendStatus.SENT, SendStatus.FAILED, SendStatus.SENT]
    assert len(ses_server.emails()) == 2


def test_batches_are_checked_before_anything_is_sent(
    make_gateway: Callable[..., SesGateway], ses_proxy: SesFaultProxy, templates: dict[str, EmailTemplate]
) -> None:
    gateway = make_gateway(max_send_rate=20)
    template = templates["new_survey"]
    with pytest.raises(ValueError, match="batch size 20"):
        gateway.send_batch(BulkSend(MAILING_ID, "b", "t", _recipients(template, 21)))
    with pytest.raises(ValueError, match="tag values"):
        gateway.send_batch(BulkSend(MAILING_ID, "b", "t", [BulkRecipient("a@b", "a@b.org", {}, "https://u")]))
    no_link = gateway.send_batch(BulkSend(MAILING_ID, "b", "t", [BulkRecipient("k", "a@b.org", {}, None)]))
    assert no_link.counts() == {"failed": 1} and "unsubscribe link" in no_link.entries[0].error, "fails alone, unsent"
    assert ses_proxy.calls() == []


def test_sending_is_paced_at_the_send_rate_in_recipients_per_second() -> None:
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    gateway = SesGateway(local_session(), from_address="p@example.org", max_send_rate=10, clock=clock)
    assert gateway.batch_size == 10
    for _ in range(3):
        gateway.wait_for_send_capacity(10)
    assert clock.monotonic() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        gateway.wait_for_send_capacity(11)


def test_redact_removes_addresses_and_links() -> None:
    text = "Email address is not verified: Jo.Smith+x@Example.org; see https://x.test/reset?token=abc"
    assert redact(text) == "Email address is not verified: <email>; see <url>"


def test_an_entry_that_cannot_be_built_fails_alone_and_nothing_is_sent_for_it(
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    template = templates["new_survey"]
    gateway = make_gateway()
    recipients = _recipients(template, 5)
    recipients[1] = BulkRecipient(
        "user1",
        "person1@example.org",
        {**recipients[1].template_data, "closes_at": dt.datetime(2025, 1, 6)},
        "https://panel.example.org/u/1",
    )
    recipients[2] = BulkRecipient(
        "user2",
        "person2@example.org",
        {**recipients[2].template_data, "ref": {"id": ObjectId()}},
        "https://panel.example.org/u/2",
    )
    recipients[3] = BulkRecipient(
        "user3", "person3@example.org", recipients[3].template_data, "https://panel.example.org/ü/3"
    )
    recipients[4] = BulkRecipient("user4", 12345, recipients[4].template_data, "https://panel.example.org/u/4")  # type: ignore[arg-type]
    result = gateway.send_batch(BulkSend(MAILING_ID, "b", gateway.ensure_template(template), recipients))
    assert [entry.outcome for entry in result.entries] == [SendStatus.SENT] + [SendStatus.FAILED] * 4
    errors = [entry.error for entry in result.entries[1:]]
    assert errors[0] == "not sent: template data: data.closes_at is a datetime, not a JSON value"
    assert errors[1] == "not sent: template data: data.ref.id is a ObjectId, not a JSON value"
    assert (
        errors[2] == "not sent: SES would refuse the entry: "
        "entry.ReplacementHeaders.0.Value has characters SES does not allow there"
    )
    assert errors[3].startswith(
        "not sent: SES would refuse the entry: Invalid type for parameter Destination.ToAddresses[0]"
    )
    assert {entry.ses_status for entry in result.entries[1:]} == {NOT_BUILT}
    assert [call.request["BulkEmailEntries"][0]["Destination"]["ToAddresses"] for call in ses_proxy.calls()] == [
        ["person0@example.org"]
    ]
    assert [email["destination"]["to"] for email in ses_server.emails()] == [["person0@example.org"]]


def test_a_batch_refused_for_one_bad_address_is_split_and_only_that_recipient_fails(
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    ses_proxy.refuse_address("person5@example.org", "Illegal address")
    result = _send(make_gateway(), templates["new_survey"], 12)
    outcomes = [entry.outcome for entry in result.entries]
    assert outcomes == [SendStatus.SENT] * 5 + [SendStatus.FAILED] + [SendStatus.SENT] * 6
    assert result.entries[5].error == "SES refused this recipient: Illegal address"
    assert sorted(email["destination"]["to"][0] for email in ses_server.emails()) == sorted(
        f"person{i}@example.org" for i in range(12) if i != 5
    )
    refused = [call for call in ses_proxy.calls() if call.fault == "BadRequestException"]
    assert [len(call.request["BulkEmailEntries"]) for call in refused] == [12, 6, 3, 2, 1], (
        "halved down to the bad entry"
    )


def test_a_batch_refused_even_entry_by_entry_is_paused_not_failed(
    make_gateway: Callable[..., SesGateway],
    ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate],
) -> None:
    for i in range(3):
        ses_proxy.refuse_address(f"person{i}@example.org", "Missing final '@domain'")
    result = _send(make_gateway(), templates["new_survey"], 3)
    assert result.counts() == {"pause": 3}
    assert "the request itself is wrong" in result.entries[0].error
    assert ses_server.emails() == []


def test_the_configuration_set_must_publish_send_events(
    make_gateway: Callable[..., SesGateway],
    ses_proxy: SesFaultProxy,
) -> None:
    make_gateway().check_send_events_published()  # the local set publishes SEND (and more) to SNS
    sns = {"TopicArn": "arn:aws:sns:eu-west-2:000000000000:panel-ses-events"}
    for destinations in (
        [],
        [
            {
                "Name": "bounces-only",
                "Enabled": True,
                "MatchingEventTypes": ["BOUNCE", "COMPLAINT"],
                "SnsDestination": sns,
            }
        ],
        [{"Name": "off", "Enabled": False, "MatchingEventTypes": ["SEND"], "SnsDestination": sns}],
    ):
        ses_proxy.set_event_destinations(CONFIGURATION_SET, destinations)
        with pytest.raises(
            SendEventsNotPublished,
            match=f"configuration set '{CONFIGURATION_SET}' has no enabled SNS event destination matching SEND",
        ):
            make_gateway().check_send_events_published()


def test_a_local_endpoint_without_configuration_sets_is_not_checked(ses_server: LocalSesServer) -> None:
    gateway = SesGateway(
        local_session(), from_address="p@example.org", configuration_set=CONFIGURATION_SET, endpoint_url=ses_server.url
    )
    gateway.check_send_events_published()
