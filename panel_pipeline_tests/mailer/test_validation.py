"""The pure checks on a mailing document, links, addresses and data; the unsubscribe token; the
SES/SQS resource settings refused at start-up; PANEL_ENV required."""

from __future__ import annotations

import datetime as dt
import re

import dagster as dg
import pytest
from bson import Binary, ObjectId
from pydantic import ValidationError

from panel_pipeline.mailer.resources import SesResource, SqsResource
from panel_pipeline.mailer.unsubscribe import unsubscribe_token, verify_unsubscribe_token
from panel_pipeline.mailer.validation import (
    DataProblem,
    LinkPolicy,
    address_problem,
    check_mailing,
    json_data,
    mailing_data,
)
from panel_pipeline.queue.store import RequestRejected
from panel_pipeline.resources import EnvironmentNotSet, current_environment

TEMPLATES = ("new_survey", "survey_reminder", "password_recovery", "welcome", "points_registered", "paid")
UTC = dt.UTC


def rejected(mailing) -> str:
    with pytest.raises(RequestRejected) as refusal:
        check_mailing(mailing, TEMPLATES)
    return str(refusal.value)


def good(**fields):
    return {"template": "welcome", "kind": "transactional", "recipients": [{"email": "a@panel.example"}], **fields}


@pytest.mark.parametrize(
    "template, expected",
    [
        (None, "template: required"),
        (["new_survey"], "template: must be a string, not list"),  # unhashable: was a TypeError, retried 3x
        ({"name": "x"}, "template: must be a string, not dict"),
        (7, "template: must be a string, not int"),
        ("nope", "template: no template 'nope'; known: new_survey, paid"),
    ],
)
def test_a_wrong_template_is_refused_naming_it(template, expected):
    assert rejected(good(template=template)).startswith(expected)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"kind": "newsletter"}, "kind: must be"),
        ({"default_data": "x"}, "default_data: must be an object, not str"),
        ({"default_data": {"html": {"x": 1}}}, "default_data.html: reserved"),
        ({"default_data": {"when": {"raw": b"\x00"}}}, "default_data.when.raw: a bytes is not JSON"),
        ({"default_data": {"n": float("nan")}}, "default_data.n: nan is not a number"),
        ({"default_data": {"ann@panel.example": b""}}, "default_data[<a key like an address>]: a bytes is not JSON"),
        ({"recipients": {"email": "a@panel.example"}}, "recipients: must be a list, not dict"),
        ({"recipients": ["a@panel.example"]}, "recipients.0: must be an object with a user_id or an email, not str"),
        ({"recipients": [{"email": "a@panel.example"}, {"data": {}}]}, "recipients.1: give a user_id or an email"),
        ({"recipients": [{"user_id": "ann@panel.example"}]}, "recipients.0.user_id: '<email>' is not an id"),
        ({"recipients": [{"email": ["a@panel.example"]}]}, "recipients.0.email: must be a string, not list"),
        ({"recipients": [], "sample_id": "x"}, "sample_id: 'x' is not an id"),
        ({"recipients": [], "reminder_for_sample": 7}, "reminder_for_sample: "),
        ({"recipients": []}, "recipients: the mailing lists no recipients and no sample_id"),
    ],
)
def test_a_wrong_field_is_refused_naming_it_and_never_repeats_an_address(fields, expected):
    message = rejected(good(**fields))
    assert message.startswith(expected), message
    assert "@" not in message


def test_a_well_formed_document_an_invitation_and_a_reminder_pass():
    check_mailing(
        good(default_data={"profile_survey_url": "https://survey.example/p", "at": dt.datetime(2026, 1, 1)}), TEMPLATES
    )
    check_mailing(
        {"template": "new_survey", "kind": "bulk", "invitation_for_sample": ObjectId(), "recipient_count": 3}, TEMPLATES
    )
    check_mailing(
        {"template": "survey_reminder", "kind": "bulk", "reminder_for_sample": ObjectId(), "recipient_count": 3},
        TEMPLATES,
    )


def test_bson_values_become_json_and_others_are_named_by_their_path():
    when = dt.datetime(2026, 11, 23, 9, 30)  # pymongo gives naive UTC
    member = ObjectId()
    assert json_data({"when": when, "day": dt.date(2026, 11, 23), "id": member, "list": [when]}, "data") == {
        "when": "2026-11-23T09:30:00+00:00",
        "day": "2026-11-23",
        "id": str(member),
        "list": ["2026-11-23T09:30:00+00:00"],
    }
    with pytest.raises(DataProblem, match=r"^recipients\.3\.data\.items\.1\.blob: a Binary is not JSON"):
        mailing_data({"items": [{}, {"blob": Binary(b"x")}]}, "recipients.3.data")
    with pytest.raises(DataProblem, match=r"^data: key 1 is not a string"):
        json_data({1: "x"}, "data")


@pytest.mark.parametrize(
    "address", ["ann@panel.example", "a.b+tag@sub.panel.example", "bounce@simulator.amazonses.com"]
)
def test_ordinary_addresses_pass(address):
    assert address_problem(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ann",
        "@panel.example",
        "ann@",
        "ann@panel",
        "ann@@panel.example",
        "an n@panel.example",
        "ann@panel..example",
        "ann@-panel.example",
        ".ann@panel.example",
        "ann.@panel.example",
        "ann@panel.example\n",
        "ann@1.2.3.4",
        "a" * 65 + "@panel.example",
        "ann@" + "a" * 250 + ".example",
        "<ann@panel.example>",
        "ann@pänel.example",
    ],
)
def test_invalid_addresses_are_refused_without_repeating_them(address):
    problem = address_problem(address)
    assert problem and (not address or address not in problem)


POLICY = LinkPolicy.of(["survey.example", "*.panel.example"])


@pytest.mark.parametrize(
    "url",
    [
        "https://survey.example/s/1?panelist=a&sig=b",
        "https://www.panel.example/reset?token=x",
        "https://SURVEY.example:8443/s",
    ],
)
def test_links_to_allowed_hosts_pass(url):
    assert POLICY.problem(url) is None


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://survey.example/s", "link must be https"),
        ("javascript:alert(1)", "link must be https"),
        ("//survey.example/s", "link must be https"),
        ("https://evil.example/s", "not in the allowed link hosts"),
        ("https://survey.example.evil.example/s", "not in the allowed link hosts"),
        ("https://panel.example/s", "not in the allowed link hosts"),  # *.panel.example is its subdomains only
        ("https://survey.example@evil.example/", "user name or password"),
        ("https://user:pw@survey.example/", "user name or password"),
        ('https://survey.example/s"><script>', "quote, < or >"),
        ("https://survey.example/a b", "whitespace"),
        ("https://survey.example/\x07", "control character"),
        ("https://survey.example:99999/", "not a valid link"),
        (["https://survey.example/"], "must be a string"),
    ],
)
def test_other_links_are_refused_without_repeating_them(url, expected):
    problem = POLICY.problem(url)
    assert problem and expected in problem
    assert "survey.example" not in problem and "evil" not in problem


def test_http_is_allowed_only_where_the_policy_says_so():
    local = LinkPolicy.of(["localhost"], allow_http=True)
    assert local.problem("http://localhost:4200/x") is None and local.problem("ftp://localhost/x")


# --- the unsubscribe token ------------------------------------------------------------------------


def test_the_token_follows_the_documented_scheme_and_verifies():
    import hashlib
    import hmac

    member = str(ObjectId())
    token = unsubscribe_token(member, "k1", "v1")
    expected = hmac.new(b"k1", f"unsubscribe:v1:{member}".encode(), hashlib.sha256).hexdigest()
    assert token == f"v1.{expected}"
    assert verify_unsubscribe_token(token, member, {"v1": "k1"})


@pytest.mark.parametrize(
    "change", ["other member", "other secret", "other version", "tampered", "truncated", "not ascii", "no version"]
)
def test_a_wrong_token_does_not_verify(change):
    member = str(ObjectId())
    token = unsubscribe_token(member, "k1", "v1")
    secrets = {"v1": "k1", "v2": "k2"}
    bad = {
        "other member": (token, str(ObjectId()), secrets),
        "other secret": (token, member, {"v1": "k2"}),
        "other version": ("v2." + token.split(".", 1)[1], member, secrets),
        "tampered": (token[:-1] + ("0" if token[-1] != "0" else "1"), member, secrets),
        "truncated": (token[:20], member, secrets),
        "not ascii": (token[:-1] + "é", member, secrets),
        "no version": (token.split(".", 1)[1], member, secrets),
    }[change]
    assert not verify_unsubscribe_token(*bad)


def test_an_empty_secret_makes_no_token():
    with pytest.raises(ValueError, match="empty"):
        unsubscribe_token(str(ObjectId()), "")


# --- resource settings ----------------------------------------------------------------------------

SES = {
    "region_name": "eu-west-2",
    "from_address": "Panel <panel@panel.example>",
    "link_hosts": "survey.example",
    "unsubscribe_url": "https://panel.example/unsubscribe?user={user}&token={token}",
    "unsubscribe_secret": "a-real-secret-value",
}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"unsubscribe_secret": ""}, "unsubscribe_secret is empty"),
        ({"unsubscribe_secret": "   "}, "unsubscribe_secret is empty"),
        ({"link_hosts": " , "}, "link_hosts names no host"),
        ({"unsubscribe_url": "https://panel.example/unsubscribe?user={user}"}, "needs the placeholders"),
        (
            {"unsubscribe_url": "http://panel.example/u?user={user}&token={token}"},
            "unsubscribe_url: link must be https",
        ),
        ({"unsubscribe_key_version": "first"}, "unsubscribe_key_version"),
    ],
)
def test_unusable_ses_settings_are_refused_when_the_resource_is_built(change, expected):
    with pytest.raises(ValidationError) as refusal:
        SesResource(**{**SES, **change})
    assert expected in str(refusal.value)
    assert "a-real-secret-value" not in str(refusal.value)


def test_an_empty_secret_from_the_environment_stops_the_run_before_anything(monkeypatch):
    monkeypatch.setenv("TEST_UNSUBSCRIBE_SECRET", "")
    ran = []

    @dg.asset
    def needs_ses(ses: SesResource) -> None:
        ran.append(ses)

    resource = SesResource(**{**SES, "unsubscribe_secret": dg.EnvVar("TEST_UNSUBSCRIBE_SECRET")})  # loading is fine
    result = dg.materialize([needs_ses], resources={"ses": resource}, raise_on_error=False)
    assert not result.success and not ran
    failure = next(event for event in result.all_events if event.event_type_value == "RESOURCE_INIT_FAILURE")
    assert "unsubscribe_secret is empty" in str(failure.event_specific_data.error)


def test_the_signed_link_fills_the_url_and_the_policy_allows_its_host():
    ses = SesResource(**SES)
    member = str(ObjectId())
    link = ses.unsubscribe_link(member)
    user, token = re.search(r"user=([0-9a-f]{24})&token=(v1\.[0-9a-f]{64})$", link).groups()
    assert user == member and verify_unsubscribe_token(token, member, {"v1": SES["unsubscribe_secret"]})
    assert ses.link_policy().problem("https://panel.example/anything") is None
    assert ses.link_policy().problem("https://survey.example/s") is None


@pytest.mark.parametrize(
    "topic", ["", "panel-ses-events", "arn:aws:sqs:eu-west-2:123456789012:q", "arn:aws:sns:eu-west-2:12:t"]
)
def test_the_event_topic_must_be_an_sns_topic_arn(topic):
    with pytest.raises(ValidationError, match="topic_arn"):
        SqsResource(queue_url="https://sqs.eu-west-2.amazonaws.com/1/q", region_name="eu-west-2", topic_arn=topic)


def test_panel_env_unset_is_an_error_naming_it(monkeypatch):
    monkeypatch.delenv("PANEL_ENV", raising=False)
    with pytest.raises(EnvironmentNotSet, match="PANEL_ENV is not set"):
        current_environment()
    monkeypatch.setenv("PANEL_ENV", "production")
    assert current_environment() == "production"
