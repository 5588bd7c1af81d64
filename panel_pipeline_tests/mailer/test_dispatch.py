"""End to end without Dagster: plan, ledger on a real mongod, real boto3 over HTTP to aws-ses-v2-local."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable

import pytest
from bson import ObjectId

from panel_pipeline.local.ses_proxy import (
    SesFaultProxy,
    daily_quota_exceeded,
    lost_answer,
    no_fault,
    throttling,
)
from panel_pipeline.local.ses_server import LocalSesServer
from panel_pipeline.mailer.dispatch import (
    DispatchPolicy,
    MailingRecipient,
    plan_recipients,
    send_mailing,
)
from panel_pipeline.mailer.ledger import (
    FAILED,
    PENDING,
    SENT,
    UNKNOWN,
    MailLedger,
    send_event_from_ses,
)
from panel_pipeline.mailer.ses import SesGateway
from panel_pipeline.mailer.templates import EmailTemplate

FAST = DispatchPolicy(backoff_base_seconds=0.05, backoff_cap_seconds=0.2, max_wait_seconds=5)


def _invitees(count: int, start: int = 0) -> list[MailingRecipient]:
    return [
        MailingRecipient(
            f"Panelist{i}@Example.org",
            {"first_name": f"Name{i}", "unsubscribe_url": f"https://panel.example.org/unsubscribe?u={i}&sig=SECRET{i}"},
            user_id=ObjectId(),
        )
        for i in range(start, start + count)
    ]


def _setup(ledger: MailLedger, gateway: SesGateway, template: EmailTemplate, recipients: list[MailingRecipient]) -> tuple[ObjectId, str]:
    mailing = ObjectId()
    shared = {key: template.example_data[key] for key in ("survey_name", "duration_minutes", "points", "survey_url")}
    ledger.add_recipients(mailing, plan_recipients(template, recipients, shared, bulk=True))
    return mailing, gateway.ensure_template(template)


def _deliveries(server: LocalSesServer) -> Counter[str]:
    return Counter(address for email in server.emails() for address in email["destination"]["to"])


@pytest.mark.slow
def test_a_thousand_recipients_are_each_sent_once(
    ledger: MailLedger, make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer, templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=2000)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(1000))
    report = send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST)
    assert (report.batches, report.outcomes) == (20, Counter(sent=1000))
    deliveries = _deliveries(ses_server)
    assert len(deliveries) == 1000 and set(deliveries.values()) == {1}
    assert ledger.mailing_done(mailing)
    assert ledger.collection.count_documents({"mailing_id": mailing, "status": SENT, "ses_message_id": {"$regex": "^ses-"}}) == 1000


def test_lost_answer_is_reconciled_from_send_events_without_a_duplicate(
    ledger: MailLedger, make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy, templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=50)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(120))
    ses_proxy.inject(no_fault(), lost_answer())
    report = send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST)
    assert report.outcomes == Counter(sent=70, unknown=50)
    assert ledger.counts(mailing)[UNKNOWN] == 50 and not ledger.mailing_done(mailing)

    again = send_mailing(ledger, gateway, mailing, name, owner="w2", policy=FAST)
    assert again.batches == 0, "unknown rows are never re-sent blindly"

    events = [event for raw in ses_proxy.send_events() if (event := send_event_from_ses(raw))]
    assert ledger.reconcile(events)[SENT] == 50
    assert ledger.mailing_done(mailing)
    deliveries = _deliveries(ses_server)
    assert len(deliveries) == 120 and set(deliveries.values()) == {1}


def test_throttled_batches_back_off_and_then_go(
    ledger: MailLedger, make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy, templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=50)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(60))
    ses_proxy.inject(throttling(), throttling())
    report = send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST)
    assert report.outcomes["sent"] == 60 and report.outcomes["retry"] >= 60
    assert [call.fault for call in ses_proxy.calls()][:2] == ["TooManyRequestsException"] * 2
    assert ledger.mailing_done(mailing)
    assert set(_deliveries(ses_server).values()) == {1} and len(_deliveries(ses_server)) == 60
    assert ledger.collection.count_documents({"attempts": {"$gte": 2}}) >= 50


def test_daily_quota_pauses_the_mailing_until_later(
    ledger: MailLedger, make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer,
    ses_proxy: SesFaultProxy, templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway(max_send_rate=50)
    mailing, name = _setup(ledger, gateway, templates["new_survey"], _invitees(80))
    ses_proxy.inject(no_fault(), daily_quota_exceeded())
    report = send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST)
    assert report.outcomes == Counter(sent=50, pause=30)
    assert report.paused_until is not None and report.pause_reason == "Daily message quota exceeded."
    assert ledger.counts(mailing)[PENDING] == 30 and not ledger.mailing_done(mailing)
    assert send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST).batches == 0
    assert len(ses_server.emails()) == 50


def test_recipients_missing_a_variable_fail_alone(
    ledger: MailLedger, make_gateway: Callable[..., SesGateway], ses_server: LocalSesServer, templates: dict[str, EmailTemplate],
) -> None:
    gateway = make_gateway()
    invitees = _invitees(4)
    invitees[1] = MailingRecipient("nameless@example.org", {"unsubscribe_url": "https://panel.example.org/u"}, user_id=ObjectId())
    invitees[2] = MailingRecipient("nolink@example.org", {"first_name": "Null", "unsubscribe_url": None}, user_id=ObjectId())
    mailing, name = _setup(ledger, gateway, templates["new_survey"], invitees)
    send_mailing(ledger, gateway, mailing, name, owner="w1", policy=FAST)
    failed = {row["email"]: row["error"] for row in ledger.collection.find({"status": FAILED})}
    assert failed == {
        "nameless@example.org": "missing template data: first_name",
        "nolink@example.org": "missing template data: unsubscribe_url",
    }
    assert sorted(_deliveries(ses_server)) == ["panelist0@example.org", "panelist3@example.org"]
    assert ledger.mailing_done(mailing)


def test_logs_carry_no_address_link_or_token(
    ledger: MailLedger, make_gateway: Callable[..., SesGateway], ses_proxy: SesFaultProxy,
    templates: dict[str, EmailTemplate], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="panel_pipeline")
    gateway = make_gateway(max_send_rate=50)
    template = templates["password_recovery"]
    mailing = ObjectId()
    resets = [
        MailingRecipient(f"Reset{i}@Example.org", {"first_name": "R", "reset_url": f"https://panel.example.org/reset?token=TOKEN{i}", "expires_in_minutes": 60})
        for i in range(70)
    ]
    ledger.add_recipients(mailing, plan_recipients(template, resets, bulk=False))
    ses_proxy.inject(throttling(), lost_answer(), daily_quota_exceeded())
    send_mailing(ledger, gateway, mailing, gateway.ensure_template(template), owner="w1", bulk=False, policy=FAST)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "quota" in logged and "unknown" in logged, "the test must see the fault paths log"
    assert not re.search(r"@|token|https?://", logged, re.IGNORECASE), logged
