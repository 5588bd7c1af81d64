"""Wrong mailings through the real assets (local SES over HTTP, real mongod): refused at once naming
the field, bad recipients failed alone before any SES call, the signed unsubscribe link only, and
AWS admin errors redacted."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
from bson import ObjectId

from panel_pipeline.local.mongod import free_port
from panel_pipeline.mailer.assets import email_templates, mailings, transactional_mail
from panel_pipeline.mailer.resources import SesResource
from panel_pipeline.mailer.sensors import transactional_mail_queue_sensor
from panel_pipeline.mailer.ses import SesAdminError
from panel_pipeline.mailer.unsubscribe import verify_unsubscribe_token
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline.shared.templates import load_templates

SURVEY = {
    "survey_name": "Bus services",
    "duration_minutes": 12,
    "points": 150,
    "survey_url": "https://survey.example/s/1",
}
SECRET = "unsubscribe-secret-for-tests"


def ses_resource(url: str) -> SesResource:
    return SesResource(
        region_name="eu-west-2",
        from_address="Panel <panel@example.org>",
        endpoint_url=url,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        link_hosts="survey.example",
        unsubscribe_url="https://panel.example/unsubscribe?user={user}&token={token}",
        unsubscribe_secret=SECRET,
    )


@pytest.fixture
def resources(mongo_uri, mongo_db, local_ses):
    local_ses.clear()
    return {"mongo": MongoResource(uri=mongo_uri, database=mongo_db.name), "ses": ses_resource(local_ses.url)}


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def send(instance, resources, mailing_id):
    instance.add_dynamic_partitions("mailings", [str(mailing_id)])
    return dg.materialize(
        [mailings], partition_key=str(mailing_id), instance=instance, resources=resources, raise_on_error=False
    )


def members(db, *names):
    return db.users.insert_many(
        [{"email": f"{n.lower()}@panel.example", "first_name": n, "status": "active"} for n in names]
    ).inserted_ids


@pytest.mark.parametrize(
    "template, expected",
    [
        (["new_survey"], "template: must be a string, not list"),
        ({"$in": ["new_survey"]}, "template: must be a string, not dict"),
        ("newsletter", "template: no template 'newsletter'"),
    ],
)
def test_a_wrong_template_fails_the_mailing_on_its_first_attempt(
    instance, resources, mongo_db, local_ses, template, expected
):
    (ann,) = members(mongo_db, "Ann")
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": template,
            "default_data": SURVEY,
            "recipients": [{"user_id": ann}],
        }
    ).inserted_id
    assert not send(instance, resources, mailing_id).success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert (doc["processed"], doc["status"], doc["attempts"]) == (True, "failed", 1)
    assert doc["error"].startswith(expected)
    assert local_ses.emails() == [] and mongo_db.mail_log.count_documents({}) == 0


def test_a_default_data_value_that_is_not_json_fails_the_mailing_naming_the_key(instance, resources, mongo_db):
    (ann,) = members(mongo_db, "Ann")
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": {**SURVEY, "logo": b"\x89PNG"},
            "recipients": [{"user_id": ann}],
        }
    ).inserted_id
    assert not send(instance, resources, mailing_id).success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert (doc["status"], doc["attempts"], doc["error"]) == (
        "failed",
        1,
        "default_data.logo: a bytes is not JSON; give a string, number, true/false, list or object",
    )


def test_bad_recipients_fail_alone_before_any_ses_call_and_duplicates_are_counted(
    instance, resources, mongo_db, local_ses
):
    ann, bob = members(mongo_db, "Ann", "Bob")
    mongo_db.users.insert_one({"email": "broken@@panel.example", "first_name": "X", "status": "active"})
    broken = mongo_db.users.find_one({"email": "broken@@panel.example"})["_id"]
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [
                {
                    "user_id": ann,
                    "data": {"unsubscribe_url": "https://evil.example/phish"},
                },  # cannot replace the signed link
                {"user_id": broken},
                {"user_id": bob, "data": {"survey_url": "https://evil.example/s/1"}},
                {"email": " ANN@panel.example"},  # Ann again
            ],
        }
    ).inserted_id
    assert send(instance, resources, mailing_id).success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert doc["status"] == "done" and doc["expansion"]["duplicates"] == 1
    assert {k: v for k, v in doc["counts"].items() if v} == {"sent": 1, "failed": 2}
    failed = {row["user_id"]: row["error"] for row in mongo_db.mail_log.find({"status": "failed"})}
    assert failed == {
        broken: "recipients.1.user_id: the member's address: not a valid e-mail address (the part before the @)",
        bob: "data.survey_url: link points at a host that is not in the allowed link hosts",
    }
    (email,) = local_ses.emails()
    assert email["destination"]["to"] == ["ann@panel.example"]
    (header,) = (
        [h["value"] for h in email["headers"] if h["name"] == "List-Unsubscribe"]
        if isinstance(email.get("headers"), list)
        else [v for k, v in (email.get("headers") or {}).items() if k == "List-Unsubscribe"]
    )
    link = header.strip("<>")
    query = parse_qs(urlsplit(link).query)
    assert urlsplit(link).hostname == "panel.example" and query["user"] == [str(ann)]
    assert verify_unsubscribe_token(query["token"][0], str(ann), {"v1": SECRET})
    assert link in email["body"]["text"] and "evil.example" not in json.dumps(email)
    assert query["token"][0] not in json.dumps(
        list(
            mongo_db.mail_log.find(
                {},
                {
                    "_id": 0,
                    "mailing_id": 0,
                    "user_id": 0,
                    "created_at": 0,
                    "updated_at": 0,
                    "sent_at": 0,
                    "attempt_started_at": 0,
                    "lease_until": 0,
                    "retry_at": 0,
                },
            )
        ),
        default=str,
    )


def test_an_invitation_naming_its_members_by_mailing_id_is_sent_to_them(instance, resources, mongo_db, local_ses):
    ann, bob, cat = members(mongo_db, "Ann", "Bob", "Cat")
    sample_id, mailing_id = ObjectId(), ObjectId()
    mongo_db.sample_members.insert_many(
        [{"sample_id": sample_id, "user_id": uid, "mailing_id": mailing_id, "invited_at": None} for uid in (ann, bob)]
    )
    mongo_db.sample_members.insert_one(
        {"sample_id": sample_id, "user_id": cat, "invited_at": None}
    )  # not this invitation's
    mongo_db.mailings.insert_one(
        {
            "_id": mailing_id,
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "invitation_for_sample": sample_id,
            "recipient_count": 2,
        }
    )
    assert send(instance, resources, mailing_id).success
    assert sorted(e["destination"]["to"][0] for e in local_ses.emails()) == ["ann@panel.example", "bob@panel.example"]
    assert {m["user_id"] for m in mongo_db.sample_members.find({"invited_at": {"$ne": None}})} == {ann, bob}


class RefusingSes(BaseHTTPRequestHandler):
    """An SES endpoint that refuses every call with a message holding an address and a token."""

    def _refuse(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {
                "message": "Account of owner@panel.example refused; "
                "request token 0123456789abcdef0123456789abcdef01234567"
            }
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-amzn-ErrorType", "BadRequestException")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, format, *args):  # noqa: A002
        return


@pytest.fixture
def refusing_ses():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), RefusingSes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_aws_errors_of_account_and_template_calls_are_redacted(refusing_ses, instance, capfd):
    gateway = ses_resource(refusing_ses).gateway()
    template = load_templates()["welcome"]
    for call in (gateway.send_quota, lambda: gateway.ensure_template(template)):
        with pytest.raises(SesAdminError) as refused:
            call()
        assert (
            str(refused.value)
            == "BadRequestException: BadRequestException: Account of <email> refused; request token <token>"
        )
        assert refused.value.__cause__ is None and refused.value.__suppress_context__

    result = dg.materialize(
        [email_templates], instance=instance, resources={"ses": ses_resource(refusing_ses)}, raise_on_error=False
    )
    assert not result.success
    logged = json.dumps(
        [str(entry.user_message) + str(entry.dagster_event) for entry in instance.all_logs(result.run_id)]
    )
    captured = capfd.readouterr()
    for text in (logged, captured.out, captured.err):
        assert "owner@panel.example" not in text and "0123456789abcdef0123456789abcdef" not in text
    assert "SesAdminError" in logged


def test_a_transactional_mailing_with_a_wrong_recipient_list_fails_alone(instance, resources, mongo_db, local_ses):
    members(mongo_db, "Ann")
    good = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "transactional",
            "template": "welcome",
            "default_data": {"profile_survey_url": "https://survey.example/p"},
            "recipients": [{"email": "ann@panel.example"}],
        }
    ).inserted_id
    wrong = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "transactional",
            "template": "welcome",
            "recipients": {"email": "ann@panel.example"},
        }
    ).inserted_id
    tick = transactional_mail_queue_sensor(
        dg.build_sensor_context(instance=instance, resources={"mongo": resources["mongo"]})
    )
    (request,) = tick.run_requests
    assert dg.materialize(
        [transactional_mail], run_config=request.run_config, instance=instance, resources=resources
    ).success
    statuses = {doc["_id"]: (doc["status"], doc.get("error"), doc["attempts"]) for doc in mongo_db.mailings.find()}
    assert statuses[good][0] == "done"
    assert statuses[wrong] == ("failed", "recipients: must be a list, not dict", 1)
